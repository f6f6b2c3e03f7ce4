"""Fault injection for tests: `XENVLAN_FAULT=POINT:ACTION[,POINT:ACTION...]`.

Named points in `up` and `repro` call `point(name)`; unless the variable names that point,
nothing happens. Actions: `kill` (SIGKILL self: no cleanup at all), `int` (SIGINT self, as
Ctrl-C), `term` (SIGTERM self), `error` (raise a XenvlanError), `wait` (create
`$XENVLAN_FAULT_GATE.reached`, then block until `$XENVLAN_FAULT_GATE` exists). `POINT@N` acts
on the Nth arrival only (`mid-sweep@2`: the sweep after the fix).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from xenvlan.errors import XenvlanError

ENV = "XENVLAN_FAULT"
GATE_ENV = "XENVLAN_FAULT_GATE"
ACTIONS = ("kill", "int", "term", "error", "wait")
#: Every point, in the order a `repro` from nothing reaches them.
POINTS = (
    "after-journal",  # every journal record: the original is on disk, the change not yet made
    "after-define",
    "after-start",
    "after-vlan",
    "after-up",
    "after-emulate",
    "after-fix",
    "mid-sweep",
)


class InjectedFault(XenvlanError):
    """The `error` action."""


_arrivals: dict[str, int] = {}


def _wanted(name: str) -> str | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    _arrivals[name] = n = _arrivals.get(name, 0) + 1
    for item in spec.split(","):
        where, _sep, action = item.strip().partition(":")
        where, _at, nth = where.partition("@")
        if where == name and (not nth or nth == str(n)):
            return action or "kill"
    return None


def point(name: str) -> None:
    """A named fault point: act when `XENVLAN_FAULT` asks for it, else return at once."""
    action = _wanted(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action in ("int", "term"):
        os.kill(os.getpid(), signal.SIGINT if action == "int" else signal.SIGTERM)
        time.sleep(1.0)  # the handler runs in the main thread at the next bytecode
    elif action == "error":
        raise InjectedFault(f"injected fault at {name}")
    elif action == "wait":
        gate = Path(os.environ.get(GATE_ENV, "/nonexistent/xenvlan-gate"))
        gate.with_name(gate.name + ".reached").write_text(f"{name} pid {os.getpid()}\n")
        while not gate.exists():
            time.sleep(0.05)
    else:
        raise InjectedFault(f"{ENV}: unknown action {action!r} at {name} (one of {ACTIONS})")
