"""Shared CLI plumbing: consoles, lab-file loading, JSON output, sandbox entry."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from xenvlan import spec as spec_mod

# Wide enough for the tables when piped to a file or a log (rich would assume 80 columns).
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "132"))
out = Console(highlight=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else _WIDTH)


def progress(msg: str) -> None:
    """A progress line on stderr (stdout stays clean for --json)."""
    err.print(f"[dim]»[/dim] {escape(msg)}")


def load_lab(path: Path | None) -> spec_mod.LabSpec:
    """The lab file, or the seed lab when none is given."""
    return spec_mod.load(path) if path else spec_mod.seed()


def print_json(data: Any) -> None:
    """JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
