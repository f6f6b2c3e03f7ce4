"""Cleanup that a second Ctrl-C cannot cut short: signals are held, then acted on afterwards."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def deferred() -> Iterator[list[int]]:
    """Run the block with SIGINT/SIGTERM/SIGHUP held; the first one held is raised after it.

    Python handlers only run in the main thread, so swapping the handlers is reliable whatever
    other threads (paramiko, thread pools) exist; a blocked mask would not be.
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    got: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        got.append(signum)

    old = {s: signal.getsignal(s) for s in HELD}
    for s in HELD:
        signal.signal(s, hold)
    try:
        yield got
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])
