"""One mutating command per lab at a time: an fcntl lock file under the run directory."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from xenvlan.errors import BusyError, SpecError
from xenvlan.paths import ensure_private_dir, run_dir
from xenvlan.spec import NAME_RE


@contextmanager
def lab_lock(lab: str) -> Iterator[None]:
    """Hold the lab's lock for the block, or raise BusyError at once if another holds it."""
    if not NAME_RE.match(lab):  # the name becomes a path: no "../", no "/"
        raise SpecError(f"lab name {lab[:40]!r} must match ^[a-z][a-z0-9-]{{0,30}}$")
    locks = ensure_private_dir(run_dir() / "locks")
    path = locks / f"{lab}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise BusyError(f"lab {lab} busy: {holder} holds {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)
