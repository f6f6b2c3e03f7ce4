"""File locks: one mutating command per lab at a time (a lock file under the run directory),
plus the two generic locks the journal (`try_lock`) and the image cache (`waiting_lock`) use.


The lock file is removed on release when the lab has no run directory (a refused or rolled-back
`up`, a `down`), so a command that changed nothing leaves nothing. Removing a lock file races with
a process that opened it just before: every holder re-checks, after locking, that the path still
names the inode it locked, and retries otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xenvlan.errors import BusyError, SpecError
from xenvlan.paths import ensure_private_dir, lab_dir, run_dir
from xenvlan.spec import NAME_RE


def try_lock(path: Path) -> int | None:
    """An open fd holding an exclusive lock on `path` (created 0600), or None when another
    process holds it. The caller closes the fd to release."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, waiting for whoever holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _still_linked(fd: int, path: os.PathLike[str] | str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def lab_lock(lab: str) -> Iterator[None]:
    """Hold the lab's lock for the block, or raise BusyError at once if another holds it."""
    if not NAME_RE.match(lab):  # the name becomes a path: no "../", no "/"
        raise SpecError(f"lab name {lab[:40]!r} must match ^[a-z][a-z0-9-]{{0,30}}$")
    root_existed = run_dir().exists()
    locks = ensure_private_dir(run_dir() / "locks")
    path = locks / f"{lab}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BusyError(f"lab {lab} busy: {holder} holds {path}") from None
        if _still_linked(fd, path):
            break
        os.close(fd)  # the previous holder removed it meanwhile: lock the new file
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        if not lab_dir(lab).exists():  # the lab is not up: leave no lock file behind
            with contextlib.suppress(OSError):
                path.unlink()
                locks.rmdir()  # only when empty
                if not root_existed:
                    run_dir().rmdir()
        os.close(fd)


def busy_labs() -> list[str]:
    """Labs whose lock another command holds right now (a non-blocking try on each lock file)."""
    locks = run_dir() / "locks"
    busy: list[str] = []
    for path in sorted(locks.glob("*.lock")) if locks.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(path.stem)
        finally:
            os.close(fd)
    return busy


def refuse_while_busy(command: str) -> None:
    """BusyError when a lab command runs: its host changes and ours would interleave."""
    if busy := busy_labs():
        raise BusyError(
            f"lab {', '.join(busy)} busy: a mutating command runs on it; "
            f"`{command}` would interleave with its host changes, retry when it has finished"
        )
