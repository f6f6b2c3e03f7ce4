"""The list of verb modules; each exposes register(app)."""

from __future__ import annotations

from types import ModuleType


def _load() -> list[ModuleType]:
    import importlib

    names = ["sandbox", "image", "up", "status", "ssh", "down", "sweep", "diagnose", "fix", "repro"]
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(f"xenvlan.cli.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"xenvlan.cli.{name}":
                raise
    return modules


MODULES = _load()
