"""newc cpio archives: pack, parse, and read a (possibly multi-member) initramfs."""

from __future__ import annotations

import stat
import zlib
from dataclasses import dataclass

from xenvlan.errors import ImageError

# --------------------------------------------------------------------------- cpio


@dataclass
class CpioEntry:
    """One newc cpio member."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _newc_header(ino: int, e: CpioEntry, namesize: int) -> bytes:
    fields = (
        ino,
        e.mode,
        0,  # uid
        0,  # gid
        1 if not stat.S_ISDIR(e.mode) else 2,  # nlink
        0,  # mtime: reproducible
        len(e.data),
        0,  # devmajor
        0,  # devminor
        e.rdev[0],
        e.rdev[1],
        namesize,
        0,  # check
    )
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pack_newc(entries: list[CpioEntry]) -> bytes:
    """An uncompressed newc cpio archive (with TRAILER!!!, padded to 4 bytes)."""
    out = bytearray()

    def add(ino: int, e: CpioEntry) -> None:
        name = e.name.lstrip("/").encode() + b"\0"
        out.extend(_newc_header(ino, e, len(name)))
        out.extend(name)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(e.data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, e in enumerate(entries, start=1):
        add(ino, e)
    add(0, CpioEntry("TRAILER!!!", 0))
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def parse_newc(data: bytes, pos: int = 0) -> tuple[list[CpioEntry], int]:
    """Parse one newc archive starting at `pos`; return its entries and the end offset."""
    entries: list[CpioEntry] = []
    while True:
        if data[pos : pos + 6] not in (b"070701", b"070702"):
            raise ImageError(f"bad cpio magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries, pos
        entries.append(CpioEntry(name, mode, body, (rmaj, rmin)))


def read_initrd(data: bytes) -> list[CpioEntry]:
    """All members of a (possibly concatenated, gzip/uncompressed) initrd, in order."""
    entries: list[CpioEntry] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        if data[pos : pos + 2] == b"\x1f\x8b":
            d = zlib.decompressobj(wbits=31)
            inner = d.decompress(data[pos:])
            entries.extend(read_initrd(inner))
            pos = len(data) - len(d.unused_data)
            continue
        part, pos = parse_newc(data, pos)
        entries.extend(part)
    return entries
