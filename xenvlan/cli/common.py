"""Shared CLI plumbing: consoles, lab-file loading, JSON output, sandbox entry."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from xenvlan import spec as spec_mod

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def progress(msg: str) -> None:
    """A progress line on stderr (stdout stays clean for --json)."""
    err.print(f"[dim]»[/dim] {msg}")


def load_lab(path: Path | None) -> spec_mod.LabSpec:
    """The lab file, or the seed lab when none is given."""
    return spec_mod.load(path) if path else spec_mod.seed()


def print_json(data: Any) -> None:
    """JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def enter_sandbox() -> None:
    """Kept for the verbs' call sites: `main()` already re-ran us inside a running sandbox."""
