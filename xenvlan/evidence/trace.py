"""Parse `skb:kfree_skb` lines of a tracefs `trace` file into typed drop events (pure).

A line looks like (kernel 6.18, default options)::

    ping-10295   [001] ..s1.   249.349119: kfree_skb: skbaddr=000000009b17b63e \
rx_sk=0000000000000000 protocol=2048 location=br_dev_queue_push_xmit+0x46/0x200 \
reason: NOT_SPECIFIED

The task name may hold spaces and dashes (``CPU 0/TCG-4242``); with ``options/record-tgid`` a
``(tgid)`` column follows the pid. Kernels before 5.17 print no ``reason:``; before 6.x the
location is printed with ``%p`` (6.1: ``location=ffffffffc047f6b6`` once the instance's
``options/hash-ptr`` is off); such an address is named from ``/proc/kallsyms`` (`Kallsyms`), and
a hashed one is kept as printed, with no function.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

_LINE = re.compile(
    r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>\S{4,6})\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>kfree_skb):\s+(?P<body>.*?)\s*$"
)
_FIELD = re.compile(r"(?P<key>[a-z_]+)=(?P<value>\S+)")
_REASON = re.compile(r"\breason:\s*(?P<reason>[A-Z0-9_]+)")
_ADDRESS = re.compile(r"^(?:0x)?(?P<addr>[0-9a-f]{16})$")
_SYMBOL = re.compile(r"^(?P<func>[A-Za-z_.$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?:\s*\[\w+\])?$")

# Frees that are not the drop itself: the frag_list children of a dropped reassembled skb.
COLLATERAL = frozenset({"skb_release_data"})
# Frees of the host's own sockets and local delivery (an echo reply also offered to ICMP
# datagram sockets: ping_rcv NO_SOCKET; a TCP socket torn down: sk_stream_kill_queues): never
# where a bridged frame dies, even when they run in a lab's QEMU thread.
LOCAL_PREFIXES = ("tcp_", "udp", "sk_", "__sk_", "sock_", "unix_", "inet_", "raw_", "ping_")
# Frees after a successful delivery: 6.1's netback frees every skb it copied into a guest with
# kfree_skb (later kernels: consume_skb), the passing size's evidence included.
DELIVERED_FUNCS = frozenset({"xenvif_rx_copy_flush"})
NETFILTER_FUNCS = frozenset({"nf_hook_slow", "nft_do_chain", "ipt_do_table", "ebt_do_table"})


@dataclass(frozen=True)
class KfreeSkb:
    """One `skb:kfree_skb` event."""

    comm: str
    pid: int
    cpu: int
    timestamp: float
    protocol: int | None
    location: str  # as printed: ``br_dev_queue_push_xmit+0x46/0x200`` or an address
    function: str | None  # ``br_dev_queue_push_xmit``; None when only an address was printed
    reason: str | None  # ``NOT_SPECIFIED``; None on kernels without drop reasons
    skbaddr: str | None = None

    @property
    def collateral(self) -> bool:
        """A free that follows another drop (fragments of a dropped reassembled datagram)."""
        return self.function in COLLATERAL

    @property
    def local(self) -> bool:
        """A free in local delivery, socket teardown or after delivery (not a forwarding drop)."""
        return self.function is not None and (
            self.function.startswith(LOCAL_PREFIXES) or self.function in DELIVERED_FUNCS
        )


#: The largest offset into a symbol believed (beyond it the address is outside any function).
MAX_SYMBOL_OFFSET = 1 << 20


class Kallsyms:
    """Text symbols of ``/proc/kallsyms`` (kernel and modules), looked up by address."""

    def __init__(self, text: str) -> None:
        syms: dict[int, str] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[1] not in ("t", "T"):
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if addr:  # kptr_restrict prints zeros: nothing to look up
                syms.setdefault(addr, parts[2])
        self._addrs = sorted(syms)
        self._names = [syms[a] for a in self._addrs]

    def __bool__(self) -> bool:
        return bool(self._addrs)

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(function, offset) of the text symbol holding `addr`, or None."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or addr - self._addrs[i] > MAX_SYMBOL_OFFSET:
            return None
        return self._names[i], addr - self._addrs[i]


def raw_address(location: str) -> int | None:
    """The address of a location printed as a bare 64-bit hex pointer, else None."""
    m = _ADDRESS.match(location)
    return int(m["addr"], 16) if m else None


def parse_line(line: str, symbols: Kallsyms | None = None) -> KfreeSkb | None:
    """One event from one line; None for headers, other events and garbage.

    `symbols` names a raw address; pass it only when pointers are printed unhashed.
    """
    m = _LINE.match(line)
    if m is None:
        return None
    body = m["body"]
    fields = {f["key"]: f["value"] for f in _FIELD.finditer(body)}
    location = fields.get("location")
    if location is None:
        return None
    sym = _SYMBOL.match(location)
    function = sym["func"] if sym else None
    addr = raw_address(location) if symbols is not None and function is None else None
    if addr is not None and symbols is not None and (found := symbols.lookup(addr)):
        function, offset = found
        location = f"{function}+{offset:#x}"
    reason = _REASON.search(body)
    proto = fields.get("protocol")
    return KfreeSkb(
        comm=m["comm"].strip(),
        pid=int(m["pid"]),
        cpu=int(m["cpu"]),
        timestamp=float(m["ts"]),
        protocol=int(proto) if proto is not None and proto.isdigit() else None,
        location=location,
        function=function,
        reason=reason["reason"] if reason else None,
        skbaddr=fields.get("skbaddr"),
    )


def parse_trace(text: str, symbols: Kallsyms | None = None) -> list[KfreeSkb]:
    """Every kfree_skb event of a `trace` file's text, in order."""
    return [ev for line in text.splitlines() if (ev := parse_line(line, symbols)) is not None]


def needs_symbols(text: str) -> bool:
    """Whether any event's location is a bare address (then `Kallsyms` can name it)."""
    return any(raw_address(ev.location) is not None for ev in parse_trace(text))


@dataclass(frozen=True)
class DropCount:
    """Drops at one (function, reason), counted."""

    function: str
    reason: str | None
    count: int
    collateral: bool = False

    def to_json(self) -> dict[str, object]:
        """As JSON: ``{"function", "reason", "count"}`` (+ ``collateral`` when true)."""
        doc: dict[str, object] = {
            "function": self.function,
            "reason": self.reason,
            "count": self.count,
        }
        return doc | ({"collateral": True} if self.collateral else {})


def select(
    events: Iterable[KfreeSkb],
    *,
    protocols: Iterable[int] | None = (ETH_P_IP, ETH_P_8021Q, ETH_P_8021AD),
    pids: Iterable[int] | None = None,
    keep_local: bool = False,
) -> list[KfreeSkb]:
    """The events of the lab's traffic: protocol and pid filters (None = any), local left out."""
    protos = None if protocols is None else set(protocols)
    pid_set = None if pids is None else set(pids)
    return [
        ev
        for ev in events
        if (protos is None or ev.protocol in protos)
        and (pid_set is None or ev.pid in pid_set)
        and (keep_local or not ev.local)
    ]


def count_drops(events: Iterable[KfreeSkb]) -> list[DropCount]:
    """Aggregate by (function, reason): real drops first (most first), collateral frees last."""
    counts: Counter[tuple[str, str | None]] = Counter(
        (ev.function or ev.location, ev.reason) for ev in events
    )
    drops = [DropCount(f, r, n, f in COLLATERAL) for (f, r), n in counts.items()]
    return sorted(drops, key=lambda d: (d.collateral, -d.count, d.function, d.reason or ""))
