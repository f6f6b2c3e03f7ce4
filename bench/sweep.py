"""Benchmark: the smart sweep vs a naive 1-byte linear sweep of 1400..1600 on the same path.

For now the path is the network-namespace bridge of tests/test_sweep_netns.py (root needed):
A -- bridge -- B with B's bridge port at MTU 1480 (plain bridge: cliff at payload 1456/1457,
inside the naive range). The naive sweep gets the timeout the smart one derived, so the
comparison is about the search, not the timeout. Run: ``python bench/sweep.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from itertools import pairwise
from pathlib import Path
from types import ModuleType

from rich.console import Console

from xenvlan.ping import GuestProber
from xenvlan.report_sweep import render_sweep
from xenvlan.sweep import SweepOptions, naive_sweep, run_sweep


def _netns_module() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "tests" / "test_sweep_netns.py"
    spec = importlib.util.spec_from_file_location("xenvlan_bench_netns", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port-mtu", type=int, default=1480, help="B's bridge port MTU")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--impl", choices=["iputils", "busybox"], default=None)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root for network namespaces", file=sys.stderr)
        return 2
    ns = _netns_module()
    lab = ns.BridgeLab(f"swb{os.getpid()}")
    console = Console()
    try:
        lab.up()
        lab.bridge_sysctl("bridge-nf-call-iptables", 0)
        lab.set_port_mtu(args.port_mtu)
        path = "busybox" if args.impl == "busybox" else None

        def prober() -> GuestProber:
            return GuestProber(ns.NetnsRunner(lab.a), ns.ADDR_B, impl=args.impl, ping_path=path)

        smart = prober()
        ports = [("pa", 1500), ("pb", args.port_mtu)]
        opts = SweepOptions(count=args.count, path="netns")
        res = run_sweep(smart, opts, src=ns.ADDR_A, dst=ns.ADDR_B, mtu=1500, vlan=False,
                        host_ports=ports)  # fmt: skip
        console.print(render_sweep(res))

        naive = prober()
        naive.timeout_s = res.timeout_s or naive.timeout_s
        naive.probe([56], count=1)  # detection and warm-up outside the timing
        t0 = time.monotonic()
        samples = naive_sweep(naive, 1400, 1600, count=args.count)
        naive_s = time.monotonic() - t0
        naive_edges = [
            (a.size, b.size) if a.passed else (b.size, a.size)
            for a, b in pairwise(samples)
            if a.passed != b.passed
        ]
        smart_edges = [
            (t.last_pass, t.first_fail)
            for t in res.transitions
            if 1400 <= min(t.last_pass, t.first_fail) <= max(t.last_pass, t.first_fail) <= 1600
        ]
        smart_packets = sum(s.sent for s in res.samples)
        naive_packets = sum(s.sent for s in samples)
        console.print()
        console.print(f"{'':24}{'probes':>8}{'packets':>9}{'batches':>9}{'wall s':>9}  range")
        console.print(f"{'smart sweep':24}{res.probes:>8}{smart_packets:>9}{res.rounds:>9}"
                      f"{res.elapsed_s:>9.3f}  {res.lo}..{res.hi}")  # fmt: skip
        console.print(f"{'naive 1-byte sweep':24}{len(samples):>8}{naive_packets:>9}"
                      f"{len(samples):>9}{naive_s:>9.3f}  1400..1600")  # fmt: skip
        console.print(
            f"ratio naive/smart: probes {len(samples) / res.probes:.1f}x, "
            f"wall time {naive_s / res.elapsed_s:.1f}x (smart covers 0..65507, naive 201 sizes)"
        )
        console.print(
            f"transitions (last_pass, first_fail) in 1400..1600: smart {smart_edges}, "
            f"naive {naive_edges}"
        )
        return 0 if smart_edges == naive_edges else 1
    finally:
        lab.down()


if __name__ == "__main__":
    raise SystemExit(main())
