"""Benchmark `xenvlan up` / `down`: per-phase wall time over a few runs, printed as a table.

Runs in the sandbox (started here, stopped after) unless a libvirtd already answers.
Usage: python3 bench/up.py [--runs 3]
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
        [sys.executable, "-c", "from xenvlan.cli import main; main()", *args],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        sys.exit(f"xenvlan {' '.join(args)} failed:\n{res.stderr}")
    return res


def main() -> None:
    """Time `up` phases and `down` over --runs runs."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from xenvlan.host.sandbox import netns as sandbox

    started = False
    if not sandbox.socket_alive():
        xenvlan("sandbox", "start")
        started = True
    try:
        xenvlan("image", "build")  # cache warm: the targets are for a cached image
        phases: dict[str, list[float]] = {}
        downs: list[float] = []
        for _ in range(args.runs):
            t0 = time.monotonic()
            data = json.loads(xenvlan("up", "--json").stdout)
            wall = time.monotonic() - t0
            for k, v in data["timings"].items():
                phases.setdefault(k, []).append(v)
            phases.setdefault("wall (incl. CLI start)", []).append(wall)
            t0 = time.monotonic()
            xenvlan("down")
            downs.append(time.monotonic() - t0)
        phases["down"] = downs
    finally:
        if started:
            xenvlan("sandbox", "stop")
    print(f"{'phase':<24} {'median s':>9} {'min s':>7} {'max s':>7}   ({args.runs} runs)")
    for k, vs in phases.items():
        print(f"{k:<24} {statistics.median(vs):>9.2f} {min(vs):>7.2f} {max(vs):>7.2f}")
    ready = [a + b for a, b in zip(phases["start"], phases["boot"], strict=True)]
    print(f"{'start+boot (SSH-ready*)':<24} {statistics.median(ready):>9.2f}")
    print("targets: both guests ready <= 10 s after define; whole `up` <= 15 s (image cached)")


if __name__ == "__main__":
    main()
