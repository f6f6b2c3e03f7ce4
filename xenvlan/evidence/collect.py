"""Replay the sizes of one edge while the kernel is watched; never fails for lack of evidence.

Per edge: one private tracing instance (journaled; removed on exit), and per replayed size one
window: counters before, capture and kfree_skb on, `replay(size, probes)`, everything off,
counters after. Without tracing (no tracefs, no permission, old kernel, journal busy) the
counters and the capture are still taken and the evidence carries a one-line notice.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from xenvlan.errors import XenvlanError
from xenvlan.evidence import tracefs
from xenvlan.evidence.capture import Frame, PortCapture, ipv4_of
from xenvlan.evidence.counters import counter_delta, in_netns, ip_counters, port_stats
from xenvlan.evidence.key import TrafficKey, traceable
from xenvlan.evidence.model import EdgeEvidence, EdgeReport, Emulation
from xenvlan.evidence.trace import count_drops, needs_symbols, parse_trace, select
from xenvlan.host.journal import HostJournal
from xenvlan.host.run import run

Replay = Callable[[int, int], object]
"""Send `probes` echo requests of payload `size` from the sender (result ignored)."""

IPPROTO_ICMP = 1


@dataclass(frozen=True)
class EvidencePlan:
    """Where to look: the lab, its ports, the traffic key, the namespace of the bridge."""

    lab: str
    in_port: str | None
    out_port: str | None
    key: TrafficKey
    run_dir: Path
    netns: str | None = None
    src_ip: str | None = None
    dst_ip: str | None = None
    emulation: Emulation | None = None
    probes: int = 2
    capture: bool = True

    @property
    def ports(self) -> list[str]:
        return [p for p in (self.in_port, self.out_port) if p]


def chain_hits(chain: str, netns: str | None = None) -> int | None:
    """Packets counted by the rules of an iptables chain (None when unreadable)."""
    exe = shutil.which("iptables")
    if exe is None:
        return None
    argv = [exe, "-w", "5", "-t", "filter", "-L", chain, "-v", "-x", "-n"]

    res = in_netns(netns, lambda: run(argv))
    if not res.ok:
        return None
    rows = [ln.split() for ln in res.stdout.splitlines()[2:]]
    return sum(int(r[0]) for r in rows if r and r[0].isdigit())


def _count(frames: list[Frame], port: int, outbound: bool, plan: EvidencePlan) -> int:
    n = 0
    for fr in frames:
        if fr.port != port or fr.outbound != outbound:
            continue
        ip = ipv4_of(fr.data)
        if ip is None or ip.proto != IPPROTO_ICMP:
            continue
        if (plan.src_ip and ip.src != plan.src_ip) or (plan.dst_ip and ip.dst != plan.dst_ip):
            continue
        n += 1
    return n


@contextlib.contextmanager
def _tracing(
    plan: EvidencePlan, journal: HostJournal | None
) -> Iterator[tuple[tracefs.TraceInstance | None, str | None]]:
    """The lab's instance (or None and the one-line reason), removed on exit."""
    with contextlib.ExitStack() as stack:
        key, widened = traceable(plan.key)
        try:
            j = journal or stack.enter_context(HostJournal.open())
            inst = stack.enter_context(tracefs.kfree_skb_instance(j, plan.lab, key))
        except XenvlanError as exc:
            yield None, f"kernel drops not traced: {exc}"
            return
        yield inst, widened


def _window(
    plan: EvidencePlan,
    inst: tracefs.TraceInstance | None,
    size: int,
    role: str,
    replay: Replay,
    label: str,
) -> EdgeEvidence:
    t0 = time.monotonic()
    ev = EdgeEvidence(
        size, role, plan.probes, plan.in_port, plan.out_port, emulation=plan.emulation
    )
    notices: list[str] = []
    try:
        ports0 = port_stats(plan.ports, plan.netns)
        ip0 = ip_counters(plan.netns)
    except XenvlanError as exc:
        ports0, ip0 = {}, {}
        notices.append(f"no counters: {exc}")
    hits0 = chain_hits(plan.emulation.chain, plan.netns) if plan.emulation else None
    cap: PortCapture | None = None
    if plan.capture and plan.ports:
        cap = PortCapture(plan.ports, plan.netns)
        try:
            cap.start()
        except XenvlanError as exc:
            cap = None
            notices.append(f"no capture: {exc}")
    text = ""
    try:
        if inst is not None:
            inst.start()
        replay(size, plan.probes)
    finally:
        if inst is not None:
            text = inst.stop()
        frames = cap.stop() if cap is not None else []
    if inst is not None:
        ev.traced = True
        symbols = tracefs.kallsyms() if inst.raw_pointers and needs_symbols(text) else None
        events = parse_trace(text, symbols)
        ev.drops = count_drops(select(events, protocols=plan.key.protocols))
    if cap is not None:
        path = plan.run_dir / "evidence" / f"{label}{size}.pcapng"
        ev.capture = str(cap.write(path))
        if plan.in_port:
            ev.frames_in = _count(frames, 0, False, plan)
        if plan.out_port:
            ev.frames_out = _count(frames, len(plan.ports) - 1, True, plan)
    try:
        ports1 = port_stats(plan.ports, plan.netns) if ports0 else {}
        ip1 = ip_counters(plan.netns) if ip0 else {}
    except XenvlanError as exc:
        ports1, ip1 = {}, {}
        notices.append(f"no counters after: {exc}")
    ev.ports = {p: ports0[p].delta(ports1[p]) for p in ports0 if p in ports1}
    ev.ip = counter_delta(ip0, ip1)
    if plan.emulation is not None and hits0 is not None:
        hits1 = chain_hits(plan.emulation.chain, plan.netns)
        ev.rule_hits = None if hits1 is None else hits1 - hits0
    ev.notice = "; ".join(notices) or None
    ev.elapsed_s = time.monotonic() - t0
    return ev


def collect_edge(
    plan: EvidencePlan,
    failing: int,
    passing: int | None,
    replay: Replay,
    *,
    journal: HostJournal | None = None,
    label: str = "",
) -> EdgeReport:
    """Evidence for the smallest failing size and (for contrast) the largest passing one.

    `journal` is the caller's open journal, if it holds one (the journal lock is exclusive);
    otherwise this namespace's journal is opened for the edge. Captures go to
    ``run_dir/evidence/<label><size>.pcapng``.
    """
    with _tracing(plan, journal) as (inst, notice):
        fail_ev = _window(plan, inst, failing, "failing", replay, label)
        pass_ev = (
            _window(plan, inst, passing, "passing", replay, label) if passing is not None else None
        )
    for ev in (fail_ev, pass_ev):
        if ev is not None and notice:
            ev.notice = "; ".join(n for n in (notice, ev.notice) if n)
    return EdgeReport(fail_ev, pass_ev, notice)
