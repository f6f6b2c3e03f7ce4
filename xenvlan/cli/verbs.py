"""The verb modules; each exposes register(app) and registers the command of its own name.
A verb that fails to import is an error (never a silently missing command).

`modules_for(argv)` imports only the verb being run: importing every verb pulls in libvirt,
paramiko, pyroute2 and cryptography, which costs ~1 s natively and ~30 s in a Dom0 nested under
QEMU/TCG. Help, completion and unknown words get every verb.
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("sandbox", "image", "up", "status", "ssh", "down", "sweep", "diagnose", "fix", "repro")


def modules(names: tuple[str, ...] = NAMES) -> list[ModuleType]:
    """Import the named verb modules."""
    return [importlib.import_module(f"xenvlan.cli.{name}") for name in names]


def modules_for(argv: list[str]) -> list[ModuleType]:
    """The verb modules a command line needs: just its verb when it names one, else all."""
    if argv and argv[0] in NAMES:
        return modules((argv[0],))
    return modules()
