"""Every host subprocess goes through here: argv lists (never a shell), one-line errors.

`run` reports what happened and never raises for a non-zero exit; `run_checked` returns stdout
or raises the caller's error class with the tool's last line. A missing tool is exit 127.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from xenvlan.errors import XenvlanError


@dataclass(frozen=True)
class Ran:
    """The outcome of one host command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_line(self) -> str:
        """The tool's last line of complaint (stderr, else stdout), for one-line errors."""
        lines = (self.stderr.strip() or self.stdout.strip() or "no output").splitlines()
        return lines[-1]


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    pass_fds: tuple[int, ...] = (),
    input: str | None = None,
    timeout: float | None = None,
) -> Ran:
    """Run `argv` to completion, capturing text output; a tool that cannot start is exit 127."""
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=cwd,
            check=False,
            pass_fds=pass_fds,
            input=input,
            timeout=timeout,
        )
    except OSError as exc:
        return Ran(tuple(argv), 127, "", f"{argv[0]}: {exc.strerror or exc}")
    except subprocess.TimeoutExpired:
        return Ran(tuple(argv), 124, "", f"{argv[0]}: timed out after {timeout} s")
    return Ran(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def run_checked(
    argv: list[str],
    what: str,
    *,
    error: type[XenvlanError],
    cwd: Path | None = None,
    pass_fds: tuple[int, ...] = (),
) -> str:
    """Run `argv`; return stdout, or raise `error` with `what` and the tool's last line."""
    done = run(argv, cwd=cwd, pass_fds=pass_fds)
    if not done.ok:
        raise error(f"{what} failed: {done.last_line()}")
    return done.stdout


def run_bytes(argv: list[str], data: bytes) -> bytes | None:
    """Feed `data` to a filter (e.g. a decompressor); its stdout, or None when it fails."""
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, check=False)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout else None


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` exists and is not a zombie (the sandboxes' daemons, QEMU)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead: nobody may have reaped it yet
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"
