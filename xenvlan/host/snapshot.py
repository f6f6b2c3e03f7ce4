"""A snapshot of the host state xenvlan may change, to prove it was restored exactly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from xenvlan.host.netlink import link_mtus
from xenvlan.host.run import run

COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    res = run(argv)
    lines = [ln for ln in res.stdout.splitlines() if not ln.startswith("#")]
    return COUNTERS.sub("", "\n".join(lines))


def snapshot(journal_dir: Path | None = None) -> dict[str, Any]:
    """Bridge sysctls, per-bridge knobs, firewall rules, link MTUs and pending journals."""
    from xenvlan.evidence.tracefs import global_state
    from xenvlan.host.journal import default_journal_dir

    sysctls = {p.name: _read(p) for p in sorted(Path("/proc/sys/net/bridge").glob("bridge-nf-*"))}
    bridges: dict[str, dict[str, str | None]] = {}
    for br in sorted(Path("/sys/class/net").glob("*/bridge")):
        bridges[br.parent.name] = {k.name: _read(k) for k in sorted(br.glob("nf_call_*"))}
    mtus = link_mtus()
    jdir = journal_dir or default_journal_dir()
    return {
        "bridge_sysctls": sysctls,
        "bridge_knobs": bridges,
        "link_mtus": dict(sorted(mtus.items())),
        "iptables": _run(["iptables-save"]),
        "nft": _run(["nft", "list", "ruleset"]),
        "journals": sorted(p.name for p in jdir.glob("*.json")) if jdir.is_dir() else [],
        "tracing": global_state(),
    }


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human lines naming what differs (empty when identical)."""
    out: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    out.append(f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
        else:
            out.append(f"{key} changed")
    return out
