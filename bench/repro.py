"""Benchmark `xenvlan repro --emulate legacy-vlan`: per-step and total wall time.

Runs in the sandbox (started here, stopped after) unless a libvirtd already answers. The guest
image is built first so the figure is for a cached image, as the target says.
Usage: python3 bench/repro.py [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def xenvlan(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI; fail loudly."""
    res = subprocess.run(
        [sys.executable, "-m", "xenvlan", *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        sys.exit(f"xenvlan {' '.join(args)} failed:\n{res.stderr}")
    return res


def main() -> None:
    """Time repro's steps over --runs runs."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    from xenvlan.host.sandbox import netns as sandbox

    started = False
    if not sandbox.socket_alive():
        xenvlan("sandbox", "start")
        started = True
    steps: dict[str, list[float]] = {}
    try:
        xenvlan("image", "build")
        for _ in range(args.runs):
            t0 = time.monotonic()
            doc = json.loads(xenvlan("repro", "--emulate", "legacy-vlan", "--json").stdout)
            wall = time.monotonic() - t0
            assert doc["verdict"]["code"] == "cliff-removed", doc["verdict"]
            for k, v in doc["timings"].items():
                steps.setdefault(k, []).append(v)
            steps.setdefault("total (wall, incl. CLI start)", []).append(wall)
    finally:
        if started:
            xenvlan("sandbox", "stop")
    print(f"{'step':<32} {'median s':>9} {'min s':>7} {'max s':>7}   ({args.runs} runs)")
    for k, vs in steps.items():
        print(f"{k:<32} {statistics.median(vs):>9.2f} {min(vs):>7.2f} {max(vs):>7.2f}")
    print("target: whole `repro --emulate legacy-vlan` <= 30 s with the guest image cached")


if __name__ == "__main__":
    main()
