"""A private tracing instance for kfree_skb, journaled: mount, mkdir, enable, read, remove.

Only files under ``instances/xenvlan-<lab>`` are ever written; the global trace state
(``tracing_on``, ``current_tracer``, ``set_event``, ``events/*/enable``, other instances) is
never touched. Two journal kinds, each recorded before its change:

- ``tracefs_mount``: tracefs was not mounted and xenvlan mounted it (key: the mount point;
  original: the mount namespace). Revert unmounts it in that mount namespace, or reports
  ``gone`` when that namespace has died (``ip netns exec`` gives every xenvlan command a
  private one, whose mounts vanish with it).
- ``trace_instance``: the instance did not exist (key: its name). An instance is global to the
  kernel, so revert removes it through any tracefs mount, mounting a temporary one if needed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenvlan.errors import HostChangeError
from xenvlan.evidence.key import TrafficKey
from xenvlan.evidence.trace import Kallsyms
from xenvlan.host.journal import HostJournal, JournalEntry
from xenvlan.host.run import run

TRACEFS = Path("/sys/kernel/tracing")
KIND_MOUNT = "tracefs_mount"
KIND_INSTANCE = "trace_instance"
INSTANCE_RE = re.compile(r"^xenvlan-[a-z][a-z0-9-]{0,30}$")
BUFFER_KB = 256  # per CPU; a few probes make a few dozen events
EVENT = "events/skb/kfree_skb"


class TracingUnavailable(HostChangeError):
    """Kernel drop tracing cannot be used here (no tracefs, no permission, old kernel)."""


def instance_name(lab: str) -> str:
    """``xenvlan-<lab>``."""
    name = f"xenvlan-{lab}"
    if not INSTANCE_RE.match(name):
        raise TracingUnavailable(f"lab name {lab!r} makes no valid tracing instance name")
    return name


def mount_ns(pid: str = "self") -> int | None:
    """The inode of a process's mount namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def tracefs_mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """Mount points of tracefs in that mountinfo (``/sys/kernel/tracing`` first)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split()[:1] == ["tracefs"] and len(fields) >= 5:
            found.append(Path(fields[4].replace("\\040", " ")))
    return sorted(found, key=lambda p: (p != TRACEFS, str(p)))


def find_tracefs() -> Path | None:
    """A tracefs mount of this mount namespace, or None."""
    mounts = tracefs_mounts()
    return mounts[0] if mounts else None


def _mount(path: Path) -> None:
    res = run(["mount", "-t", "tracefs", "nodev", str(path)])
    if not res.ok:
        raise TracingUnavailable(f"cannot mount tracefs on {path}: {res.last_line()}")


def _umount(path: Path, mnt_ns_of: int | None = None) -> None:
    argv = ["umount", str(path)]
    if mnt_ns_of is not None:
        argv = ["nsenter", f"--mount=/proc/{mnt_ns_of}/ns/mnt", "--", *argv]
    res = run(argv)
    if not res.ok:
        raise HostChangeError(f"cannot unmount tracefs {path}: {res.last_line()}")


@contextlib.contextmanager
def temporary_tracefs() -> Iterator[Path]:
    """A tracefs mounted on a private temporary directory, unmounted and removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="xenvlan-tracefs-"))
    try:
        _mount(tmp)
        try:
            yield tmp
        finally:
            _umount(tmp)
    finally:
        with contextlib.suppress(OSError):
            tmp.rmdir()


def ensure_mounted(journal: HostJournal) -> Path:
    """A tracefs mount point: the existing one, or /sys/kernel/tracing mounted (journaled)."""
    found = find_tracefs()
    if found is not None:
        return found
    if not TRACEFS.is_dir():
        raise TracingUnavailable(f"{TRACEFS} does not exist (kernel without tracefs)")
    journal.record(
        KIND_MOUNT, str(TRACEFS), {"mnt_ns": mount_ns(), "pid": os.getpid()}, note="kfree_skb"
    )
    _mount(TRACEFS)
    return TRACEFS


def _write(path: Path, value: str) -> None:
    try:
        with path.open("w") as f:
            f.write(value)
    except OSError as exc:
        raise TracingUnavailable(f"cannot write {path}: {exc.strerror}") from None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


KALLSYMS = Path("/proc/kallsyms")


def kallsyms(path: Path = KALLSYMS) -> Kallsyms | None:
    """The kernel's text symbols, or None when unreadable or hidden (kptr_restrict)."""
    text = _read(path)
    return (Kallsyms(text) or None) if text else None


@dataclass
class TraceInstance:
    """One private instance with kfree_skb enabled for a window at a time."""

    root: Path
    name: str
    #: The instance prints addresses unhashed (set by `configure` where the option exists).
    raw_pointers: bool = False

    @property
    def path(self) -> Path:
        return self.root / "instances" / self.name

    def _file(self, rel: str) -> Path:
        if not INSTANCE_RE.match(self.name):
            raise HostChangeError(f"refusing to touch tracing instance {self.name!r}")
        return self.path / rel

    def configure(self, key: TrafficKey, buffer_kb: int = BUFFER_KB) -> None:
        """Buffer size, protocol filter and (when the key has tasks) the event pid list."""
        fmt = _read(self._file(f"{EVENT}/format"))
        if fmt is None:
            raise TracingUnavailable("the kernel has no skb:kfree_skb tracepoint")
        if "reason" not in fmt:
            raise TracingUnavailable("this kernel's kfree_skb has no drop reason (< 5.17)")
        _write(self._file("buffer_size_kb"), str(buffer_kb))
        # Kernels printing the location with %p (6.1) hash it; this instance prints it raw, to
        # be named from /proc/kallsyms (the option is the instance's own, gone with it).
        self.raw_pointers = self._file("options/hash-ptr").exists()
        if self.raw_pointers:
            _write(self._file("options/hash-ptr"), "0")
        _write(self._file(f"{EVENT}/filter"), key.filter_expr())
        if key.pids:
            _write(self._file("options/event-fork"), "1")
            _write(self._file("set_event_pid"), key.pid_list())

    def start(self) -> None:
        """Empty the buffer and enable the event."""
        _write(self._file("trace"), "")
        _write(self._file("tracing_on"), "1")
        _write(self._file(f"{EVENT}/enable"), "1")

    def stop(self) -> str:
        """Disable the event; the buffer's text."""
        _write(self._file(f"{EVENT}/enable"), "0")
        return _read(self._file("trace")) or ""


def open_instance(journal: HostJournal, lab: str) -> TraceInstance:
    """Mount tracefs if needed and create ``instances/xenvlan-<lab>``, both journaled."""
    name = instance_name(lab)
    if journal.find(KIND_INSTANCE, name) is not None:
        raise TracingUnavailable(
            f"tracing instance {name} of an earlier run is still journaled: xenvlan down first"
        )
    root = ensure_mounted(journal)
    inst = TraceInstance(root, name)
    if inst.path.exists():
        raise TracingUnavailable(f"tracing instance {inst.path} exists and is not xenvlan's")
    journal.record(KIND_INSTANCE, name, {"existed": False}, note="kfree_skb")
    try:
        inst.path.mkdir()
    except OSError as exc:
        raise TracingUnavailable(f"cannot create {inst.path}: {exc.strerror}") from None
    return inst


@contextlib.contextmanager
def kfree_skb_instance(journal: HostJournal, lab: str, key: TrafficKey) -> Iterator[TraceInstance]:
    """The lab's instance, configured for `key`; removed (and tracefs unmounted) on exit."""
    start = len(journal.entries)
    try:
        inst = open_instance(journal, lab)
        inst.configure(key)
        yield inst
    finally:
        journal.rollback_to(start)


# -- reverters -------------------------------------------------------------------------------


def _remove_instance(root: Path, name: str) -> str:
    path = root / "instances" / name
    if not path.is_dir():
        return "gone"
    for rel, value in ((f"{EVENT}/enable", "0"), ("events/enable", "0"), ("set_event_pid", "")):
        with contextlib.suppress(OSError):
            (path / rel).write_text(value)
    try:
        path.rmdir()
    except OSError as exc:
        raise HostChangeError(f"cannot remove tracing instance {path}: {exc.strerror}") from None
    return "removed"


def revert_instance(entry: JournalEntry) -> str:
    if not INSTANCE_RE.match(entry.key):
        raise HostChangeError(f"journal names a foreign tracing instance {entry.key!r}")
    root = find_tracefs()
    if root is not None:
        return _remove_instance(root, entry.key)
    if not TRACEFS.is_dir():
        return "gone"
    with temporary_tracefs() as tmp:
        return _remove_instance(tmp, entry.key)


def _process_in_mnt_ns(inode: int) -> int | None:
    """A live process in mount namespace `inode`, or None when the namespace is gone."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_ns(entry.name) == inode:
            return int(entry.name)
    return None


def revert_mount(entry: JournalEntry) -> str:
    path = Path(entry.key)
    original: dict[str, Any] = entry.original if isinstance(entry.original, dict) else {}
    ns = original.get("mnt_ns")
    if ns is None or ns == mount_ns():
        if path not in tracefs_mounts():
            return "gone"
        _umount(path)
        return "removed"
    pid = _process_in_mnt_ns(int(ns))
    if pid is None:
        return "gone"  # a private mount namespace that died with its processes
    if path not in tracefs_mounts(Path(f"/proc/{pid}/mountinfo")):
        return "gone"
    if shutil.which("nsenter") is None:
        raise HostChangeError(f"tracefs {path} is mounted in mount namespace {ns}: no nsenter")
    _umount(path, mnt_ns_of=pid)
    return "removed"


# -- the global state, for snapshots ---------------------------------------------------------

GLOBAL_FILES = (
    "tracing_on",
    "current_tracer",
    "set_event",
    "set_event_pid",
    "buffer_size_kb",
    f"{EVENT}/enable",
    f"{EVENT}/filter",
    "options/event-fork",
)


def global_state(root: Path | None = None) -> dict[str, Any]:
    """The global trace state xenvlan must leave as found (and whether tracefs is mounted)."""
    mounts = tracefs_mounts()
    root = root or (mounts[0] if mounts else None)
    state: dict[str, Any] = {"mounts": [str(m) for m in mounts]}
    if root is None:
        return state
    for rel in GLOBAL_FILES:
        text = _read(root / rel)
        state[rel] = None if text is None else text.strip()
    try:
        state["instances"] = sorted(p.name for p in (root / "instances").iterdir())
    except OSError:
        state["instances"] = None
    return state
