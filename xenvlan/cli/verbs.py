"""The list of verb modules; each exposes register(app). A verb that fails to import is an
error (never a silently missing command)."""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("sandbox", "image", "up", "status", "ssh", "down", "sweep", "diagnose", "fix", "repro")

MODULES: list[ModuleType] = [importlib.import_module(f"xenvlan.cli.{name}") for name in NAMES]
