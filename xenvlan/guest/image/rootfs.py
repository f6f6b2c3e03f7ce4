"""The initramfs tree: directories, device nodes, /init and the host binaries it copies."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from xenvlan.errors import ImageError
from xenvlan.guest.image.cpio import CpioEntry
from xenvlan.host.run import run_checked

BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
PING = Path("/usr/bin/ping")
# --------------------------------------------------------------------------- userspace


def _ldd(binary: Path) -> list[Path]:
    """Shared libraries + dynamic loader of `binary`, as paths on the host."""
    out = run_checked(["ldd", str(binary)], f"ldd {binary}", error=ImageError)
    libs: list[Path] = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(Path(m.group(1)))
        elif "=> not found" in line:
            raise ImageError(f"{binary}: shared library not found: {line.split()[0]}")
    return libs


class _Tree:
    """An in-memory file tree turned into cpio entries (parents created as needed)."""

    def __init__(self) -> None:
        self.entries: dict[str, CpioEntry] = {}

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        if not path or path in self.entries:
            return
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        self.dir(parent)
        self.entries[path] = CpioEntry(path, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self.dir(path.rsplit("/", 1)[0] if "/" in path else "")
        self.entries[path] = CpioEntry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        if path in self.entries:
            return
        self.dir(path.rsplit("/", 1)[0] if "/" in path else "")
        self.entries[path] = CpioEntry(path, stat.S_IFLNK | 0o777, target.encode())

    def node(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = path.strip("/")
        self.dir(path.rsplit("/", 1)[0])
        self.entries[path] = CpioEntry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def copy_binary(self, host: Path) -> None:
        """Copy an executable and every shared library it needs, at the same paths."""
        self.file(str(host), host.read_bytes(), 0o755)
        for lib in _ldd(host):
            self.file(str(lib), lib.resolve().read_bytes(), 0o755)


def base_tree(init: bytes) -> _Tree:
    t = _Tree()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/xenvlan", "proc", "sys", "dev", "run"):
        t.dir(d)
    t.dir("tmp", 0o1777)
    t.dir("root", 0o700)
    t.dir("root/.ssh", 0o700)
    t.dir("etc/dropbear", 0o700)
    t.symlink("var/run", "../run")
    t.dir("var/log")
    t.node("dev/console", 5, 1)
    t.node("dev/null", 1, 3, 0o666)
    t.file("init", init, 0o755)
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    t.file("etc/group", b"root:x:0:\ntty:x:5:\n")
    t.file("etc/shells", b"/bin/sh\n/bin/ash\n")
    t.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files\n")
    t.file("etc/hosts", b"127.0.0.1 localhost\n")
    t.file("etc/profile", b"export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n")
    return t


def add_userspace(t: _Tree) -> None:
    t.file(str(BUSYBOX), BUSYBOX.read_bytes(), 0o755)
    t.copy_binary(DROPBEAR)
    t.copy_binary(PING)
    applets = run_checked(
        [str(BUSYBOX), "--list-full"], "busybox --list-full", error=ImageError
    ).split()
    for applet in applets:
        depth = applet.count("/")
        t.symlink(applet, "../" * depth + str(BUSYBOX).lstrip("/"))
    t.symlink("bin/sh", "busybox")
