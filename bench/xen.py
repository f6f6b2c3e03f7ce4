"""Time the nested Xen sandbox: image, Dom0 boot, and xenvlan commands run inside the Dom0.

Usage (root): python bench/xen.py [--pvh] [--keep]   (prints a table; stops the Dom0 at the end)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from xenvlan.host.sandbox.xen import image as dom0image
from xenvlan.host.sandbox.xen import remote, vm

LAB = Path(__file__).resolve().parents[1] / "examples" / "seed.toml"


def slow_lab(dest: Path) -> Path:
    """The seed lab with readiness timeouts sized for guests nested under TCG."""
    text = LAB.read_text()
    for key, value in (("define", 120), ("boot", 300), ("ssh", 180)):
        text = "\n".join(
            f"{key} = {value}" if ln.split("=")[0].strip() == key else ln
            for ln in text.splitlines()
        )
    dest.write_text(text + "\n")
    return dest


def main() -> int:
    """Run the sequence and print one row per step."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--pvh", action="store_true", help="also time a PVH up/down")
    ap.add_argument("--keep", action="store_true", help="leave the Dom0 running")
    args = ap.parse_args()
    rows: list[tuple[str, float, str]] = []

    def step(name: str, fn: object) -> object:
        t = time.monotonic()
        out = fn() if callable(fn) else None
        rows.append((name, time.monotonic() - t, "" if out is None else str(out)[:60]))
        return out

    step("dom0 image (cached or built)", lambda: dom0image.ensure_dom0_image().key)
    state = step("sandbox start (virsh answers)", vm.start)
    assert isinstance(state, vm.VmState)
    for k, v in sorted(state.timings.items(), key=lambda kv: kv[1]):
        rows.append((f"  boot: {k}", v, "s from QEMU start" if k != "images" else ""))
    lab = slow_lab(Path("/tmp/xenvlan-bench-lab.toml"))
    runs = [
        ("python3 -m xenvlan --help", ["--help"]),
        ("up (pv)", ["up", "--lab", str(lab), "--connect", remote.XEN_URI, "--xen-mode", "pv"]),
        ("sweep", ["sweep", "--json"]),
        ("repro --emulate legacy-vlan", ["repro", "--emulate", "legacy-vlan", "--json"]),
        ("down", ["down", "--all"]),
    ]
    if args.pvh:
        runs += [
            (
                "up (pvh)",
                ["up", "--lab", str(lab), "--connect", remote.XEN_URI, "--xen-mode", "pvh"],
            ),
            ("down (pvh)", ["down", "--all"]),
        ]
    try:
        for name, argv in runs:
            step(name, lambda argv=argv: f"exit {remote.run(argv, state=state)}")
    finally:
        if not args.keep:
            step("sandbox stop", vm.stop)
    print(f"{'step':38} {'seconds':>8}  note", file=sys.stderr)
    for name, secs, note in rows:
        print(f"{name:38} {secs:8.1f}  {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
