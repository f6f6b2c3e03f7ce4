"""A lab's life: spec -> plan (pure) -> up -> status -> down; the names callers use."""

from xenvlan.lab.down import down_lab
from xenvlan.lab.model import FAIL_MARK, READY_MARK, GuestInfo, LabStatus, Progress, Timer
from xenvlan.lab.status import (
    check_conflicts,
    collect_status,
    discover_lab_ports,
    labs_present,
    resolve_lab,
    session_for,
)
from xenvlan.lab.up import UpOptions, up, wait_ready

__all__ = [
    "FAIL_MARK",
    "READY_MARK",
    "GuestInfo",
    "LabStatus",
    "Progress",
    "Timer",
    "UpOptions",
    "check_conflicts",
    "collect_status",
    "discover_lab_ports",
    "down_lab",
    "labs_present",
    "resolve_lab",
    "session_for",
    "up",
    "wait_ready",
]
