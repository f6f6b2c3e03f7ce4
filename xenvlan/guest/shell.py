"""What running a shell command in a guest looks like, whoever carries it (SSH, a namespace)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    """Outcome of one shell command run in a guest (or a namespace)."""

    exit_status: int
    stdout: str
    stderr: str


class GuestShell(Protocol):
    """Runs a ``/bin/sh`` command line in the guest and returns its result."""

    def __call__(self, command: str, *, timeout: float) -> CommandResult: ...
