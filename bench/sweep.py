"""Benchmark: the smart sweep vs a naive 1-byte linear sweep of 1400..1600 on the same path.

Lab mode (the default when a lab is up; ``--lab NAME`` to choose one): on the running lab,
first guest -> second guest over the VLAN, as ``xenvlan sweep`` does (one SSH session per
sender, the guest's own ping). It times the full-range smart sweep (0..65507) in both
directions on the healthy path, lowers the MTU of the receiver's host port (default 1400,
restored in ``finally``), times the full-range smart sweep again in both directions, then runs
the naive sweep (one size per round trip, ``--count`` requests each, the timeout the smart
sweep derived) over 1400..1600 on the same path, and prints probes, packets, round trips and
wall time for both and the ratio. With a port MTU of 1400 the cliff is at payload 1376/1377
(a plain bridge forwards IP up to port MTU + 4 on a tagged path), *below* the naive range: the
naive sweep then sees 201 failing sizes and no transition; ``--port-mtu 1480`` puts the cliff
inside it (1452/1453).

Netns mode (``--netns``, root): A -- bridge -- B in network namespaces with B's bridge port at
``--port-mtu`` (default 1480 there: plain bridge, cliff at payload 1456/1457).

Run: ``python bench/sweep.py [--lab NAME] [--port-mtu N]`` (re-runs itself inside the
sandbox's network namespace when a sandbox is up) or ``python bench/sweep.py --netns``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from types import ModuleType

from rich.console import Console

from xenvlan import lab
from xenvlan.cli.render import render_sweep
from xenvlan.evidence.lab import EvidenceOptions
from xenvlan.sweep import lab as labsweep
from xenvlan.sweep.ping import GuestProber, PingResult
from xenvlan.sweep.search import SweepOptions, SweepResult, naive_sweep, run_sweep

NAIVE_RANGE = (1400, 1600)


def _netns_module() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tests" / "test_sweep_netns.py"
    spec = importlib.util.spec_from_file_location("xenvlan_bench_netns", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _edges(samples: Sequence[PingResult]) -> list[tuple[int, int]]:
    return [
        (a.size, b.size) if a.passed else (b.size, a.size)
        for a, b in pairwise(samples)
        if a.passed != b.passed
    ]


def _smart_edges(res: SweepResult, lo: int, hi: int) -> list[tuple[int, int]]:
    return [
        (t.last_pass, t.first_fail)
        for t in res.transitions
        if lo <= min(t.last_pass, t.first_fail) <= max(t.last_pass, t.first_fail) <= hi
    ]


def _compare(
    console: Console, res: SweepResult, samples: list[PingResult], naive_s: float, rng: str
) -> bool:
    lo, hi = NAIVE_RANGE
    smart_packets = sum(s.sent for s in res.samples)
    naive_packets = sum(s.sent for s in samples)
    console.print()
    console.print(f"{'':24}{'probes':>8}{'packets':>9}{'batches':>9}{'wall s':>9}  range")
    console.print(f"{'smart sweep':24}{res.probes:>8}{smart_packets:>9}{res.rounds:>9}"
                  f"{res.elapsed_s:>9.3f}  {res.lo}..{res.hi}")  # fmt: skip
    console.print(f"{'naive 1-byte sweep':24}{len(samples):>8}{naive_packets:>9}"
                  f"{len(samples):>9}{naive_s:>9.3f}  {rng}")  # fmt: skip
    console.print(
        f"ratio naive/smart: probes {len(samples) / res.probes:.1f}x, packets "
        f"{naive_packets / max(1, smart_packets):.1f}x, wall time {naive_s / res.elapsed_s:.1f}x "
        f"(smart covers {res.lo}..{res.hi}, naive {len(samples)} sizes)"
    )
    smart_edges, naive_edges = _smart_edges(res, lo, hi), _edges(samples)
    console.print(
        f"transitions (last_pass, first_fail) in {rng}: smart {smart_edges}, naive {naive_edges}"
    )
    outside = [(t.last_pass, t.first_fail) for t in res.transitions]
    if outside and not smart_edges:
        console.print(f"the cliff the smart sweep found, {outside}, is outside the naive range")
    return smart_edges == naive_edges


# ---------------------------------------------------------------------------- lab mode


def _reexec_in_sandbox() -> None:
    """Inside a running sandbox's namespace the lab's addresses are reachable: go there."""
    from xenvlan.host import netns
    from xenvlan.host.sandbox import netns as sandbox

    state = sandbox.load_state()
    if state is None or netns.current_is(state.netns):
        return
    if not (netns.NETNS_DIR / state.netns).exists():
        return
    argv = ["ip", "netns", "exec", state.netns, sys.executable, *sys.argv]
    os.execvp("ip", argv)


def _find_lab(name: str | None) -> tuple[lab.LabStatus | None, str | None]:
    """(LabStatus, None) for the lab to use, (None, None) when no lab is up, or (None, error)."""
    import libvirt

    from xenvlan.errors import XenvlanError
    from xenvlan.virt import connection as hv

    try:
        conn, choice = hv.open_connection(None)
    except (XenvlanError, libvirt.libvirtError) as exc:
        return None, None if name is None else f"no libvirt: {exc}"
    try:
        if name is None:
            present = lab.labs_present(conn)
            if not present:
                return None, None
            if len(present) > 1:
                return None, f"labs up: {', '.join(present)}; choose one with --lab"
        return labsweep.lab_status(conn, choice, name), None
    except (XenvlanError, libvirt.libvirtError) as exc:
        return None, str(exc)
    finally:
        conn.close()


def _set_mtu(port: str, mtu: int) -> None:
    subprocess.run(["ip", "link", "set", port, "mtu", str(mtu)], check=True, timeout=20)


def lab_main(args: argparse.Namespace, status: lab.LabStatus) -> int:
    console = Console(width=120)
    names = [g.name for g in status.guests]
    if len(names) != 2:
        console.print(f"lab {status.lab} has {len(names)} guests; the bench needs two")
        return 2
    src, dst = names
    port = status.guest(dst).host_port
    if not port:
        console.print(f"lab {status.lab}: no host port recorded for {dst}")
        return 2
    before = int(Path(f"/sys/class/net/{port}/mtu").read_text().strip())
    opts = SweepOptions(count=args.count)
    console.print(
        f"lab {status.lab}: {src} -> {dst} over the VLAN; receiver's host port {port} "
        f"(MTU {before})"
    )

    def smart(s: str, d: str) -> tuple[SweepResult, float]:
        t0 = time.monotonic()
        with lab.session_for(status.lab, status.guest(s)).connect(15.0) as session:
            res = labsweep.sweep_pair(status, s, d, opts, session)
        return res, time.monotonic() - t0

    timings: list[tuple[str, SweepResult, float]] = []
    for s, d in ((src, dst), (dst, src)):
        res, wall = smart(s, d)
        timings.append((f"healthy {s} -> {d}", res, wall))
    _set_mtu(port, args.port_mtu)
    try:
        fresh, why = _find_lab(status.lab)  # host port MTUs as they are now, for the verdict
        if fresh is None:
            raise RuntimeError(f"lab {status.lab}: {why}")
        status = fresh
        for s, d in ((src, dst), (dst, src)):
            res, wall = smart(s, d)
            timings.append((f"port MTU {args.port_mtu} {s} -> {d}", res, wall))
        cliff = timings[2][1]
        console.print(render_sweep(cliff))
        # The same sweep with kernel evidence: its cost per failing edge (issue 13: <= 1 s).
        t0 = time.monotonic()
        with lab.session_for(status.lab, status.guest(src)).connect(15.0) as session:
            with_ev = labsweep.sweep_pair(
                status, src, dst, SweepOptions(count=args.count, evidence=EvidenceOptions()),
                session,
            )  # fmt: skip
        ev_wall = time.monotonic() - t0
        reports = with_ev.evidence or []
        for rep in reports:
            per_edge = sum(e.elapsed_s or 0.0 for e in (rep.failing, rep.passing) if e)
            console.print(
                f"evidence for edge {rep.failing.size}: {per_edge:.2f} s (target <= 1 s; "
                f"{'traced' if rep.failing.traced else 'counters only'}, "
                f"{'captured' if rep.failing.capture else 'no capture'})"
            )
        console.print(
            f"sweep with evidence {ev_wall:.2f} s vs {timings[2][2]:.2f} s without "
            f"({len(reports)} edge(s))"
        )
        with lab.session_for(status.lab, status.guest(src)).connect(15.0) as session:
            naive = GuestProber(session, (status.guest(dst).vlan_ip or "").split("/")[0])
            naive.timeout_s = cliff.timeout_s or naive.timeout_s
            naive.probe([56], count=1)  # detection and warm-up outside the timing
            t0 = time.monotonic()
            samples = naive_sweep(naive, *NAIVE_RANGE, count=args.count)
            naive_s = time.monotonic() - t0
    finally:
        _set_mtu(port, before)
    console.print()
    console.print(f"{'full range 0..65507':30}{'probes':>8}{'batches':>9}{'sweep s':>9}"
                  f"{'+ssh s':>8}  result")  # fmt: skip
    for label, res, wall in timings:
        edges = [(t.last_pass, t.first_fail) for t in res.transitions]
        console.print(f"{label:30}{res.probes:>8}{res.rounds:>9}{res.elapsed_s:>9.3f}"
                      f"{wall:>8.3f}  {res.verdict.code} {edges or ''}")  # fmt: skip
    console.print(
        "(sweep s: the search, ping detection included; + ssh s: with the SSH connect and the "
        "sender MTU read, as `xenvlan sweep` does per direction)"
    )
    same = _compare(console, cliff, samples, naive_s, f"{NAIVE_RANGE[0]}..{NAIVE_RANGE[1]}")
    return 0 if same else 1


# ---------------------------------------------------------------------------- netns mode


def netns_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("needs root for network namespaces", file=sys.stderr)
        return 2
    ns = _netns_module()
    bl = ns.BridgeLab(f"swb{os.getpid()}")
    console = Console(width=120)
    port_mtu = args.port_mtu or 1480
    try:
        bl.up()
        bl.bridge_sysctl("bridge-nf-call-iptables", 0)
        bl.set_port_mtu(port_mtu)
        path = "busybox" if args.impl == "busybox" else None

        def prober() -> GuestProber:
            return GuestProber(ns.NetnsRunner(bl.a), ns.ADDR_B, impl=args.impl, ping_path=path)

        ports = [("pa", 1500), ("pb", port_mtu)]
        opts = SweepOptions(count=args.count, path="netns")
        res = run_sweep(prober(), opts, src=ns.ADDR_A, dst=ns.ADDR_B, mtu=1500, vlan=False,
                        host_ports=ports)  # fmt: skip
        console.print(render_sweep(res))
        naive = prober()
        naive.timeout_s = res.timeout_s or naive.timeout_s
        naive.probe([56], count=1)  # detection and warm-up outside the timing
        t0 = time.monotonic()
        samples = naive_sweep(naive, *NAIVE_RANGE, count=args.count)
        naive_s = time.monotonic() - t0
        same = _compare(console, res, samples, naive_s, f"{NAIVE_RANGE[0]}..{NAIVE_RANGE[1]}")
        return 0 if same else 1
    finally:
        bl.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lab", help="lab to use (default: the only lab up)")
    ap.add_argument("--netns", action="store_true", help="namespaces instead of a lab")
    ap.add_argument("--port-mtu", type=int, default=None,
                    help="receiver's port MTU (lab: 1400, netns: 1480)")  # fmt: skip
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--impl", choices=["iputils", "busybox"], default=None, help="netns only")
    args = ap.parse_args(argv)
    if args.netns:
        return netns_main(args)
    _reexec_in_sandbox()
    status, why = _find_lab(args.lab)
    if why is not None:
        print(f"bench: {why}", file=sys.stderr)
        return 2
    if status is None:
        print("no lab is up: netns mode", file=sys.stderr)
        return netns_main(args)
    args.port_mtu = args.port_mtu or 1400
    return lab_main(args, status)


if __name__ == "__main__":
    raise SystemExit(main())
