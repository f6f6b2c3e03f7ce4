"""Identity of the network namespace the current process runs in."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

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
    return NetnsIdentity(os.stat("/proc/self/ns/net").st_ino, _cookie(), _boot_id())
