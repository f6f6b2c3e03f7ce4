"""Network namespaces: this process's identity, named ones, inherited handles, and running
code inside another one. The one module that reads /proc/*/ns/net or calls setns()."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from xenvlan.errors import HostChangeError

NETNS_DIR = Path("/run/netns")
SELF = "/proc/self/ns/net"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_SO_NETNS_COOKIE = 71  # Linux >= 5.14; a 64-bit id never reused while the system runs


@dataclass(frozen=True)
class NetnsIdentity:
    """The inode of /proc/self/ns/net (the key) plus the netns cookie and boot id (staleness)."""

    inode: int
    cookie: int | None
    boot_id: str | None

    @property
    def key(self) -> str:
        """The journal file stem: `netns-<inode>`."""
        return f"netns-{self.inode}"

    def to_json(self) -> dict[str, int | str | None]:
        return {"inode": self.inode, "cookie": self.cookie, "boot_id": self.boot_id}

    @classmethod
    def from_json(cls, data: object) -> NetnsIdentity:
        if not isinstance(data, dict) or not isinstance(data.get("inode"), int):
            raise ValueError("netns identity lacks an integer 'inode'")
        cookie = data.get("cookie")
        boot_id = data.get("boot_id")
        return cls(
            inode=data["inode"],
            cookie=cookie if isinstance(cookie, int) else None,
            boot_id=boot_id if isinstance(boot_id, str) else None,
        )


def _cookie() -> int | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    return int.from_bytes(raw, "little")


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def current_netns() -> NetnsIdentity:
    """The network namespace of this process (what /proc/sys/net and netlink act on)."""
    return NetnsIdentity(os.stat(SELF).st_ino, _cookie(), _boot_id())


def _same(a: str | Path, b: str | Path) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def current_is(name: str) -> bool:
    """Whether this process lives in the named namespace (`/run/netns/NAME`)."""
    try:
        return _same(SELF, NETNS_DIR / name)
    except OSError:
        return False


def inherited() -> bool:
    """Whether this process runs in its parent's network namespace (nobody chose another)."""
    try:
        return _same(SELF, f"/proc/{os.getppid()}/ns/net")
    except OSError:
        return True


def inheritable_handle() -> int:
    """An inheritable fd on this process's network namespace, for a re-executed child."""
    fd = os.open(SELF, os.O_RDONLY)
    os.set_inheritable(fd, True)
    return fd


def is_handle(fd: int) -> bool:
    """Whether `fd` is open on a network namespace."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("net:[")
    except OSError:
        return False


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def run_in(netns: str | None, fn: Callable[[], T]) -> T:
    """`fn()` in network namespace `netns` (None: here), run in a thread that joined it.

    setns() affects only the calling thread, so the caller's own namespace never changes.
    """
    if netns is None:
        return fn()
    box: dict[str, T | BaseException] = {}

    def target() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["ok"] = fn()
        except BaseException as exc:
            box["err"] = exc

    t = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "err" in box:
        err = box["err"]
        assert isinstance(err, BaseException)
        if isinstance(err, OSError):
            raise HostChangeError(f"network namespace {netns}: {err.strerror or err}") from None
        raise err
    return box["ok"]  # type: ignore[return-value]
