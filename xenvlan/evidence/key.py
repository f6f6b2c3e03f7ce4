"""Which kernel events are the lab's: a protocol filter plus the tasks that carry its frames.

A frame a QEMU/KVM guest sends is written to its tap by a QEMU thread; the host's receive path
(bridge, netfilter, the drop) then runs in that thread's context (``common_pid`` is that TID),
so the threads of the sender's QEMU process, from ``/run/libvirt/qemu/<domain>.pid``, are the
key. With ``options/event-fork`` threads QEMU starts later are followed too. A Xen guest's
frames arrive through netback: its ``vif<domid>.<n>-*`` kthreads, but the NAPI poll that
forwards them runs in softirq, so ``ksoftirqd/*`` and the idle task (pid 0) are added there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xenvlan.errors import HostChangeError
from xenvlan.evidence.trace import ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP

QEMU_RUN_DIR = Path("/run/libvirt/qemu")
DEFAULT_PROTOCOLS = (ETH_P_IP, ETH_P_8021Q, ETH_P_8021AD)


@dataclass(frozen=True)
class TrafficKey:
    """Protocols (``skb->protocol``) and task ids whose kfree_skb events belong to the lab.

    Empty ``pids`` means any task: only the protocol filter and the short probe window apply.
    """

    protocols: tuple[int, ...] = DEFAULT_PROTOCOLS
    pids: frozenset[int] = field(default_factory=frozenset)
    source: str = "protocol only"

    def filter_expr(self) -> str:
        """The event filter (``events/skb/kfree_skb/filter``) for the protocols."""
        return " || ".join(f"protocol == {p}" for p in self.protocols) or "0"

    def pid_list(self) -> str:
        """The ``set_event_pid`` content (empty: every task)."""
        return " ".join(str(p) for p in sorted(self.pids))

    def to_json(self) -> dict[str, object]:
        """As JSON."""
        return {"protocols": list(self.protocols), "pids": sorted(self.pids), "source": self.source}


#: The inode of the initial PID namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h).
PROC_PID_INIT_INO = 0xEFFFFFFC


def in_initial_pid_namespace(ns: Path = Path("/proc/self/ns/pid")) -> bool:
    """Whether our pids are the kernel's own: the tracer's pid filter only knows those."""
    try:
        return os.stat(ns).st_ino == PROC_PID_INIT_INO
    except OSError:
        return True


def traceable(
    key: TrafficKey, *, initial_pidns: bool | None = None
) -> tuple[TrafficKey, str | None]:
    """The key the tracer can apply from here, and a one-line notice when it had to widen it.

    Inside a PID namespace (a container) the lab's pids are not the ids the tracer filters on:
    the filter falls back to the protocols, i.e. every drop of the replay window.
    """
    initial = in_initial_pid_namespace() if initial_pidns is None else initial_pidns
    if not key.pids or initial:
        return key, None
    widened = TrafficKey(key.protocols, frozenset(), "protocol only (inside a PID namespace)")
    return widened, (
        "xenvlan runs inside a PID namespace: kernel drops are filtered by protocol only, "
        "so other traffic dropped during the replay may appear"
    )


def task_ids(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """Every thread id of process `pid` (empty when it is gone)."""
    try:
        return {int(t.name) for t in (proc / str(pid) / "task").iterdir() if t.name.isdigit()}
    except OSError:
        return set()


def qemu_key(
    domains: Iterable[str],
    *,
    run_dir: Path = QEMU_RUN_DIR,
    proc: Path = Path("/proc"),
    protocols: tuple[int, ...] = DEFAULT_PROTOCOLS,
) -> TrafficKey:
    """The threads of the QEMU processes of `domains` (libvirt's pid files)."""
    pids: set[int] = set()
    names = []
    for dom in domains:
        try:
            pid = int((run_dir / f"{dom}.pid").read_text().strip())
        except (OSError, ValueError):
            found = qemu_pid_by_cmdline(dom, proc)
            if found is None:
                raise HostChangeError(f"no QEMU process found for domain {dom}") from None
            pid = found
        tids = task_ids(pid, proc)
        if not tids:
            raise HostChangeError(f"QEMU process {pid} of domain {dom} is not running")
        pids |= tids
        names.append(f"{dom}={pid}")
    return TrafficKey(protocols, frozenset(pids), "qemu threads " + ", ".join(names))


def qemu_pid_by_cmdline(domain: str, proc: Path = Path("/proc")) -> int | None:
    """The QEMU process libvirt started with ``-name guest=<domain>,...`` (no pid file seen)."""
    wanted = (f"guest={domain},".encode(), f"guest={domain}\0".encode())
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes() + b"\0"
        except OSError:
            continue
        if b"qemu" in cmdline.split(b"\0", 1)[0] and any(w in cmdline for w in wanted):
            return int(entry.name)
    return None


_NETBACK = re.compile(r"^vif(?P<domid>\d+)\.\d+")


def netback_key(
    domids: Iterable[int],
    *,
    proc: Path = Path("/proc"),
    protocols: tuple[int, ...] = DEFAULT_PROTOCOLS,
) -> TrafficKey:
    """Xen: the netback kthreads of `domids`, every ksoftirqd, and the idle task (pid 0)."""
    wanted = {str(d) for d in domids}
    pids = {0}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        m = _NETBACK.match(comm)
        if (m and m["domid"] in wanted) or comm.startswith("ksoftirqd/"):
            pids.add(int(entry.name))
    return TrafficKey(protocols, frozenset(pids), f"netback of dom {', '.join(sorted(wanted))}")
