"""Where xenvlan keeps its files: cache (images), state (journals) and run (per-lab) dirs."""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import TypeVar

_P = TypeVar("_P", bound=PurePath)


def cache_dir() -> Path:
    """Guest images and downloaded packages; safe to delete."""
    if env := os.environ.get("XENVLAN_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xenvlan"


def state_dir() -> Path:
    """Journals of host changes; must survive a crash of xenvlan."""
    if env := os.environ.get("XENVLAN_STATE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/xenvlan")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "xenvlan"


def run_dir() -> Path:
    """Per-lab run files (keys, consoles, locks); removed by `down`."""
    if env := os.environ.get("XENVLAN_RUN_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/xenvlan")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / "xenvlan"


def lab_dir(lab: str) -> Path:
    """The run directory of one lab (0700); the name must be a valid lab name."""
    from xenvlan.spec import check_lab_name

    return run_dir() / "labs" / check_lab_name(lab)


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and force mode 0700 on it; parents it has to create are 0700 too.

    Parents that already exist (/run, /tmp, ...) are left as they are.
    """
    missing = []
    p = path.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)  # mkdir's mode is filtered by the umask
    path.mkdir(exist_ok=True)
    path.chmod(0o700)
    return path


def captures_dir(report: _P) -> _P:
    """Where a report's evidence captures go: ``<stem>-captures/`` beside it."""
    return report.with_name(f"{report.stem}-captures")
