"""Time the nested Xen sandbox: Dom0 image, Dom0 boot, and xenvlan verbs run inside the Dom0.

Prints one row per step with the issue's target where there is one (image cached: start
<= 45 s, `up` of two PV guests <= 40 s, whole `repro` <= 120 s). Each verb runs as a user's
command does (one SSH session, the Dom0's fork server), its output kept out of the table.

Usage (root): python bench/xen.py [--pvh] [--keep]   (stops the Dom0 at the end unless --keep)
"""

from __future__ import annotations

import argparse
import io
import sys
import time

from xenvlan.host.sandbox.xen import image as dom0image
from xenvlan.host.sandbox.xen import remote, vm

#: Step -> target seconds (issue 12, on 2 cores under TCG, image cached).
TARGETS: dict[str, float] = {
    "sandbox start": 45.0,
    "up --xen-mode pv": 40.0,
    "repro --emulate legacy-vlan": 120.0,
}


def main() -> int:
    """Run the sequence and print the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--pvh", action="store_true", help="also time a PVH up/down")
    ap.add_argument("--keep", action="store_true", help="leave the Dom0 running")
    args = ap.parse_args()
    rows: list[tuple[str, float, str]] = []

    def step(name: str, fn: object) -> object:
        t = time.monotonic()
        out = fn() if callable(fn) else None
        rows.append((name, time.monotonic() - t, "" if out is None else str(out)[:50]))
        return out

    step("dom0 image (cached or built)", lambda: dom0image.ensure_dom0_image().key)
    state = step("sandbox start", vm.start)
    assert isinstance(state, vm.VmState)
    for k, v in sorted(state.timings.items(), key=lambda kv: kv[1]):
        rows.append((f"  boot: {k}", v, "s from QEMU start" if k != "images" else ""))
    runs = [
        ("status (no lab: the per-command cost)", ["status"]),
        ("up --xen-mode pv", ["up", "--xen-mode", "pv", "--json"]),
        (
            "ssh a -- ping -c 2 11.11.4.30",
            ["ssh", "a", "--", "/usr/bin/ping", "-c", "2", "11.11.4.30"],
        ),
        ("repro --emulate legacy-vlan", ["repro", "--emulate", "legacy-vlan", "--json"]),
        ("repro --scenario port-mtu", ["repro", "--scenario", "port-mtu", "--json"]),
        ("down", ["down"]),
    ]
    if args.pvh:
        runs += [
            ("up --xen-mode pvh", ["up", "--xen-mode", "pvh", "--json"]),
            ("down (pvh)", ["down"]),
        ]
    try:
        for name, argv in runs:
            sink = io.BytesIO()
            step(
                name,
                lambda argv=argv, sink=sink: (
                    f"exit {remote.run(argv, state=state, stdout=sink, stderr=sink)}"
                ),
            )
    finally:
        if not args.keep:
            step("sandbox stop", vm.stop)
    print(f"{'step':40} {'seconds':>8} {'target':>7}  note")
    for name, secs, note in rows:
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if secs <= target else "OVER")
        tgt = f"{target:7.0f}" if target is not None else " " * 7
        print(f"{name:40} {secs:8.1f} {tgt}  {verdict} {note}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
