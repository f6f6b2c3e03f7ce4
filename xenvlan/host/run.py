"""Running host tools (argv lists, never a shell) with one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

from xenvlan.errors import ImageError, XenvlanError


def run_checked(
    argv: list[str],
    what: str,
    *,
    cwd: Path | None = None,
    error: type[XenvlanError] = ImageError,
    pass_fds: tuple[int, ...] = (),
) -> str:
    """Run `argv`; return stdout, or raise `error` with `what` and the tool's last line."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=cwd, check=False, pass_fds=pass_fds
        )
    except OSError as e:
        raise error(f"{what} failed: {e}") from e
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        raise error(f"{what} failed: {lines[-1]}")
    return proc.stdout
