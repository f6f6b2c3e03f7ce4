"""The guest kernel: the ELF vmlinux inside a bzImage, its ELF notes (PVH entry), version
string and selected CONFIG_* values.
"""

from __future__ import annotations

import lzma
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from xenvlan.host.run import run_bytes

#: Kernel config options recorded in the image metadata.
CONFIG_KEYS: tuple[str, ...] = (
    "XEN_PV",
    "XEN_PVH",
    "PVH",
    "XEN_NETDEV_FRONTEND",
    "HVC_XEN",
    "VLAN_8021Q",
    "VIRTIO_NET",
    "VIRTIO_PCI",
    "HW_RANDOM_VIRTIO",
    "SERIAL_8250_CONSOLE",
    "DEVTMPFS",
    "RD_GZIP",
    "BRIDGE_NETFILTER",
)
XEN_ELFNOTE_PHYS32_ENTRY = 18

# --------------------------------------------------------------------------- kernel


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage (like scripts/extract-vmlinux), or None."""
    candidates: list[int] = []
    if len(bzimage) > 0x250 and bzimage[0x202:0x206] == b"HdrS":
        setup_sects = bzimage[0x1F1] or 4
        payload_offset = struct.unpack_from("<I", bzimage, 0x248)[0]
        candidates.append((setup_sects + 1) * 512 + payload_offset)
    for magic in (b"\xfd7zXZ\x00", b"\x1f\x8b\x08", b"\x28\xb5\x2f\xfd", b"\x5d\x00\x00"):
        pos = bzimage.find(magic)
        while pos != -1 and len(candidates) < 64:
            candidates.append(pos)
            pos = bzimage.find(magic, pos + 1)
    seen: set[int] = set()
    for off in candidates:
        if off in seen or off >= len(bzimage):
            continue
        seen.add(off)
        out = decompress_any(bzimage[off:])
        if out is not None and out[:4] == b"\x7fELF":
            return out
    return None


def decompress_any(data: bytes) -> bytes | None:
    """Decompress one stream at the start of `data`, ignoring trailing bytes."""
    try:
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
        if data[:3] == b"\x1f\x8b\x08":
            return zlib.decompressobj(wbits=31).decompress(data)
        if data[:3] == b"\x5d\x00\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            return run_bytes(["zstd", "-dcq"], data)
    except (lzma.LZMAError, zlib.error, OSError, EOFError):
        return None
    return None


def elf_notes(elf: bytes) -> Iterator[tuple[str, int, bytes]]:
    """(name, type, desc) of every note in the PT_NOTE segments of a 64-bit LE ELF."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset = struct.unpack_from("<IIQ", elf, phoff + i * phentsize)
        p_filesz = struct.unpack_from("<Q", elf, phoff + i * phentsize + 0x20)[0]
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            pos += 12
            name = elf[pos : pos + namesz].rstrip(b"\0").decode("latin-1")
            pos += (namesz + 3) & ~3
            desc = elf[pos : pos + descsz]
            pos += (descsz + 3) & ~3
            yield name, ntype, desc


def has_pvh_note(vmlinux: Path) -> bool:
    """True when the ELF kernel carries XEN_ELFNOTE_PHYS32_ENTRY (bootable as PVH)."""
    data = vmlinux.read_bytes()
    return any(n == "Xen" and t == XEN_ELFNOTE_PHYS32_ENTRY for n, t, _ in elf_notes(data))


def bzimage_version(data: bytes) -> str | None:
    """The version string from a bzImage setup header (first word, e.g. 6.1.0-28-amd64)."""
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return None
    ptr = struct.unpack_from("<H", data, 0x20E)[0]
    if not ptr:
        return None
    raw = data[ptr + 0x200 : ptr + 0x200 + 256].split(b"\0")[0].decode("latin-1")
    return raw.split()[0] if raw.strip() else None


def read_kernel_config(path: Path, keys: tuple[str, ...] = CONFIG_KEYS) -> dict[str, str]:
    """Selected CONFIG_* values ("y", "m", or "n" when unset) from a kernel config file."""
    values: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"CONFIG_(\w+)=(.*)", line)
        if m:
            values[m.group(1)] = m.group(2).strip('"')
    return {k: values.get(k, "n") for k in keys}
