"""The journal of host changes: originals recorded (atomically) before any write, exact revert.

Every host change xenvlan makes goes through `HostJournal`: record the original first, then change.
A crash (even kill -9) between the two leaves a journal whose revert rewrites the original, which
is harmless when the change never happened. One journal per network namespace, keyed by the inode
of /proc/self/ns/net; a journal from another namespace is refused. Recording a key twice keeps the
first original, so a second `apply` never forgets what the host looked like before the first.
Entries recorded inside `on_behalf_of(lab)` carry the lab's name, so `xenvlan down` can finish
the job of a killed `repro` (`revert_lab`) without touching a manual `fix apply`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xenvlan import fault, paths
from xenvlan.errors import BusyError, HostChangeError
from xenvlan.host.netlink import link_mtu, set_link_mtu
from xenvlan.host.netns import NetnsIdentity, current_netns
from xenvlan.host.run import Ran, run
from xenvlan.host.sysctl import read_value, write_value
from xenvlan.lock import try_lock

FORMAT_VERSION = 1


@dataclass
class JournalEntry:
    """One recorded original: `kind` selects the reverter, `key` names the object."""

    kind: str
    key: str
    original: Any
    note: str = ""
    lab: str = ""  # the lab on whose behalf it was recorded ("" for a manual `fix apply`)

    def to_json(self) -> dict[str, Any]:
        doc = {"kind": self.kind, "key": self.key, "original": self.original, "note": self.note}
        return doc | ({"lab": self.lab} if self.lab else {})


@dataclass(frozen=True)
class RevertAction:
    """What revert did for one entry: restored, unchanged, removed or gone (object vanished)."""

    kind: str
    key: str
    original: Any
    result: str


Reverter = Callable[[JournalEntry], str]
_ON_BEHALF_OF: ContextVar[str] = ContextVar("xenvlan_journal_lab", default="")


@contextlib.contextmanager
def on_behalf_of(lab: str) -> Iterator[None]:
    """Tag every entry recorded in this block with `lab` (see `HostJournal.revert_lab`)."""
    token = _ON_BEHALF_OF.set(lab)
    try:
        yield
    finally:
        _ON_BEHALF_OF.reset(token)


def reverters() -> dict[str, Reverter]:
    """Every journal kind and its reverter (`host/kinds.py`, loaded on first use: the kinds'
    modules import this one), so a revert works whatever the process imported before."""
    from xenvlan.host.kinds import REVERTERS

    return REVERTERS


def register_reverter(kind: str, reverter: Reverter) -> None:
    """Add a kind at run time (tests); xenvlan's own kinds are declared in `host/kinds.py`."""
    reverters()[kind] = reverter


def default_journal_dir() -> Path:
    """`paths.state_dir()/journal` (XENVLAN_STATE_DIR overrides the state dir)."""
    return paths.state_dir() / "journal"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` via temp file + fsync + rename, then fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@dataclass
class HostJournal:
    """The pending changes of one network namespace; use as a context manager (holds a lock)."""

    path: Path
    netns: NetnsIdentity
    entries: list[JournalEntry] = field(default_factory=list)
    created: str = ""
    _lock_fd: int | None = None

    # -- opening -------------------------------------------------------------------------------

    @staticmethod
    def path_for(journal_dir: Path | None = None, netns: NetnsIdentity | None = None) -> Path:
        """Where the journal of `netns` (default: this process's) lives."""
        ns = netns or current_netns()
        return (journal_dir or default_journal_dir()) / f"{ns.key}.json"

    @classmethod
    def load(cls, path: Path) -> HostJournal | None:
        """Read a journal without locking or namespace checks (None when absent)."""
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HostChangeError(f"cannot read journal {path}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            netns = NetnsIdentity.from_json(data["netns"])
            entries = [
                JournalEntry(
                    e["kind"], e["key"], e.get("original"), e.get("note", ""), e.get("lab", "")
                )
                for e in data["entries"]
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HostChangeError(f"journal {path} is corrupt: {exc}") from exc
        return cls(path=path, netns=netns, entries=entries, created=data.get("created", ""))

    @classmethod
    def open(cls, journal_dir: Path | None = None, *, path: Path | None = None) -> HostJournal:
        """Lock and load (or start) the journal of this namespace; refuse a foreign one."""
        here = current_netns()
        path = path or cls.path_for(journal_dir, here)
        try:
            paths.ensure_private_dir(path.parent)
        except OSError as exc:
            raise HostChangeError(f"cannot create {path.parent}: {exc.strerror}") from exc
        lock_fd = try_lock(path.with_name(path.name + ".lock"))
        if lock_fd is None:
            raise BusyError(f"journal {path} is locked by another xenvlan process")
        try:
            loaded = cls.load(path)
            if loaded is not None:
                check_same_netns(loaded, here)
        except BaseException:
            os.close(lock_fd)
            raise
        journal = loaded or cls(path=path, netns=here, created=datetime.now(UTC).isoformat())
        journal._lock_fd = lock_fd
        return journal

    def close(self) -> None:
        """Release the lock; with nothing pending, leave no lock file or empty dir behind."""
        if self._lock_fd is not None:
            if not self.entries and not self.path.exists():
                with contextlib.suppress(OSError):
                    self.path.with_name(self.path.name + ".lock").unlink()
                    if self.path.parent == default_journal_dir():
                        self.path.parent.rmdir()  # only when empty
                        paths.state_dir().rmdir()
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> HostJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording -----------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        return bool(self.entries)

    def find(self, kind: str, key: str) -> JournalEntry | None:
        return next((e for e in self.entries if e.kind == kind and e.key == key), None)

    def record(self, kind: str, key: str, original: Any, note: str = "") -> bool:
        """Durably record `original` for (kind, key) before it is changed.

        Returns False (and keeps the first original) when the key is already journaled.
        """
        if kind not in reverters():
            raise HostChangeError(f"no reverter registered for journal kind {kind!r}")
        if self.find(kind, key) is not None:
            return False
        self.entries.append(JournalEntry(kind, key, original, note, _ON_BEHALF_OF.get()))
        try:
            self._save()
        except OSError as exc:
            self.entries.pop()
            raise HostChangeError(f"cannot write journal {self.path}: {exc.strerror}") from exc
        fault.point("after-journal")
        return True

    def record_sysctl(self, path: Path, note: str = "") -> str:
        """Journal a /proc/sys or /sys value file (also per-bridge knobs); returns its original."""
        value = read_value(path)
        if value is None:
            raise HostChangeError(f"{path} does not exist")
        entry = self.find("sysctl", str(path))
        self.record("sysctl", str(path), value, note)
        return str(entry.original) if entry else value

    def record_link_mtu(self, ifname: str, note: str = "") -> int:
        """Journal the MTU of a link in this namespace; returns its (first) original MTU."""
        mtu = link_mtu(ifname)
        if mtu is None:
            raise HostChangeError(f"no link named {ifname}")
        entry = self.find("link_mtu", ifname)
        self.record("link_mtu", ifname, mtu, note)
        return int(entry.original) if entry else mtu

    def record_nft_table(self, family: str, name: str, note: str = "") -> None:
        """Journal an nftables table xenvlan is about to create; revert deletes it."""
        key = f"{family} {name}"
        if self.find("nft_table", key) is None and _nft_table_exists(family, name):
            raise HostChangeError(f"nft table {key} already exists and is not xenvlan's")
        self.record("nft_table", key, None, note)

    def record_file(self, path: Path, note: str = "") -> None:
        """Journal a regular file (existence, content, mode); revert removes or restores it."""
        try:
            st = path.stat()
            original: dict[str, Any] = {
                "existed": True,
                "mode": st.st_mode & 0o7777,
                "content_b64": base64.b64encode(path.read_bytes()).decode(),
            }
        except FileNotFoundError:
            original = {"existed": False}
        except OSError as exc:
            raise HostChangeError(f"cannot read {path}: {exc.strerror}") from exc
        self.record("file", str(path), original, note)

    # -- reverting -----------------------------------------------------------------------------

    def revert_all(self) -> list[RevertAction]:
        """Restore every original (newest first); removes the journal when done. Idempotent."""
        return self.rollback_to(0)

    def labs(self) -> set[str]:
        """Labs with pending entries."""
        return {e.lab for e in self.entries if e.lab}

    def revert_lab(self, lab: str) -> list[RevertAction]:
        """Revert (newest first) and forget only the entries recorded on behalf of `lab`."""
        actions: list[RevertAction] = []
        for i in reversed(range(len(self.entries))):
            if self.entries[i].lab == lab:
                actions.extend(self._revert_at(i))
        return actions

    def rollback_to(self, count: int) -> list[RevertAction]:
        """Revert and forget the entries recorded after the first `count` (a failed apply)."""
        actions: list[RevertAction] = []
        while len(self.entries) > count:
            actions.extend(self._revert_last())
        return actions

    def _revert_last(self) -> list[RevertAction]:
        return self._revert_at(len(self.entries) - 1)

    def _revert_at(self, index: int) -> list[RevertAction]:
        entry = self.entries[index]
        reverter = reverters().get(entry.kind)
        if reverter is None:
            raise HostChangeError(f"journal {self.path}: unknown kind {entry.kind!r}")
        result = reverter(entry)
        self.entries.pop(index)
        try:
            self._save()
        except OSError as exc:
            raise HostChangeError(f"cannot update journal {self.path}: {exc.strerror}") from exc
        return [RevertAction(entry.kind, entry.key, entry.original, result)]

    def _save(self) -> None:
        if not self.entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
                _fsync_dir(self.path.parent)
            return
        data = {
            "version": FORMAT_VERSION,
            "tool": "xenvlan",
            "created": self.created,
            "netns": self.netns.to_json(),
            "entries": [e.to_json() for e in self.entries],
        }
        atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode())


def check_same_netns(journal: HostJournal, here: NetnsIdentity | None = None) -> None:
    """Refuse (one line) a journal written in another network namespace."""
    here = here or current_netns()
    theirs = journal.netns
    if theirs.inode != here.inode:
        raise HostChangeError(
            f"journal {journal.path} belongs to network namespace inode {theirs.inode}, "
            f"this process runs in {here.inode}; run xenvlan inside that namespace"
        )
    same_boot = theirs.boot_id is not None and theirs.boot_id == here.boot_id
    if same_boot and None not in (theirs.cookie, here.cookie) and theirs.cookie != here.cookie:
        raise HostChangeError(
            f"journal {journal.path} was written in a network namespace that no longer exists "
            f"(netns cookie {theirs.cookie}, now {here.cookie}); check and remove it by hand"
        )


def pending_labs(journal_dir: Path | None = None) -> set[str]:
    """Labs with entries pending in this namespace's journal (no lock taken)."""
    loaded = HostJournal.load(HostJournal.path_for(journal_dir))
    return loaded.labs() if loaded is not None else set()


def revert_lab_changes(lab: str, journal_dir: Path | None = None) -> list[RevertAction]:
    """Revert what was journaled on behalf of `lab` in this namespace (after a crash)."""
    if lab not in pending_labs(journal_dir):
        return []
    with HostJournal.open(journal_dir) as journal:
        return journal.revert_lab(lab)


@contextlib.contextmanager
def journal_for(journal_dir: Path | None = None) -> Iterator[HostJournal]:
    """`with journal_for() as j: j.record_sysctl(p); write_value(p, "0")`."""
    journal = HostJournal.open(journal_dir)
    try:
        yield journal
    finally:
        journal.close()


# -- reverters of the generic kinds (declared in host/kinds.py) ---------------------------------


def revert_sysctl(entry: JournalEntry) -> str:
    path = Path(entry.key)
    now = read_value(path)
    if now is None:
        return "gone"
    if now == entry.original:
        return "unchanged"
    write_value(path, str(entry.original))
    return "restored"


def revert_link_mtu(entry: JournalEntry) -> str:
    now = link_mtu(entry.key)
    if now is None:
        return "gone"
    if now == int(entry.original):
        return "unchanged"
    set_link_mtu(entry.key, int(entry.original))
    return "restored"


def _nft(*args: str) -> Ran:
    done = run(["nft", *args])
    if done.returncode == 127:
        raise HostChangeError("nft is not installed")
    return done


def _nft_table_exists(family: str, name: str) -> bool:
    return _nft("list", "table", family, name).returncode == 0


def revert_nft_table(entry: JournalEntry) -> str:
    family, name = entry.key.split(" ", 1)
    if not _nft_table_exists(family, name):
        return "gone"
    done = _nft("delete", "table", family, name)
    if not done.ok:
        raise HostChangeError(f"cannot delete nft table {entry.key}: {done.last_line()}")
    return "removed"


def revert_file(entry: JournalEntry) -> str:
    path = Path(entry.key)
    original = entry.original
    try:
        if not original.get("existed"):
            if not path.exists():
                return "unchanged"
            path.unlink()
            _fsync_dir(path.parent)
            return "removed"
        content = base64.b64decode(original["content_b64"])
        if path.exists() and path.read_bytes() == content:
            return "unchanged"
        atomic_write(path, content, int(original.get("mode", 0o644)))
    except OSError as exc:
        raise HostChangeError(f"cannot restore {path}: {exc.strerror}") from exc
    return "restored"
