"""Read-only counters: per-port link stats (netlink) and IP fragment counters (/proc/net/snmp).

Both act on the calling process's network namespace, or on a named one (``/run/netns/NAME``)
joined by a short-lived thread (`host.netns.run_in`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from xenvlan.errors import HostChangeError
from xenvlan.host import netns
from xenvlan.host.netlink import open_netlink

T = TypeVar("T")
SNMP_KEYS = ("ReasmReqds", "ReasmOKs", "ReasmFails", "FragOKs", "FragFails", "FragCreates")
STAT_KEYS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")


in_netns = netns.run_in


@dataclass(frozen=True)
class PortStats:
    """One link's counters at one moment."""

    port: str
    ifindex: int
    mtu: int | None
    counters: dict[str, int]

    def delta(self, later: PortStats) -> dict[str, int]:
        """``later - self`` for every counter."""
        return {k: later.counters.get(k, 0) - self.counters.get(k, 0) for k in STAT_KEYS}


def _port_stats(ports: Iterable[str]) -> dict[str, PortStats]:
    out: dict[str, PortStats] = {}
    with open_netlink() as ipr:
        for port in ports:
            links = ipr.link("get", ifname=port)
            if not links:
                continue
            link = links[0]
            stats = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS") or {}
            mtu = link.get_attr("IFLA_MTU")
            out[port] = PortStats(
                port,
                int(link["index"]),
                int(mtu) if mtu is not None else None,
                {k: int(stats.get(k, 0)) for k in STAT_KEYS},
            )
    return out


def port_stats(ports: Iterable[str], netns: str | None = None) -> dict[str, PortStats]:
    """Link counters of `ports` (missing ports are left out)."""
    names = list(ports)
    try:
        return in_netns(netns, lambda: _port_stats(names))
    except OSError as exc:  # NetlinkError is an OSError
        raise HostChangeError(f"netlink stats of {', '.join(names)}: {exc}") from None


def parse_snmp(text: str) -> dict[str, int]:
    """The ``Ip:`` counters of /proc/net/snmp text."""
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Ip:")]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0], rows[1], strict=False) if v.lstrip("-").isdigit()}


def ip_counters(netns: str | None = None) -> dict[str, int]:
    """IP reassembly/fragmentation counters of a namespace, keyed ``IpReasmOKs`` etc."""

    def read() -> str:
        return Path("/proc/thread-self/net/snmp").read_text()

    try:
        ip = parse_snmp(in_netns(netns, read))
    except OSError as exc:
        raise HostChangeError(f"cannot read /proc/net/snmp: {exc.strerror}") from None
    return {f"Ip{k}": ip[k] for k in SNMP_KEYS if k in ip}


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """``after - before`` for keys present in both."""
    return {k: after[k] - before[k] for k in before if k in after}
