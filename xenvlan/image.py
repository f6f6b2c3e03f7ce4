"""The guest image: a Debian kernel plus a tiny busybox/dropbear initramfs, built and cached.

No disk image: the kernel deb is fetched with `apt-get download`, the userspace (busybox-static,
dropbear, iputils ping) is copied from the host, and everything lands in one gzip newc cpio.
Per-guest secrets (SSH host key, authorized_keys) are appended later as a small uncompressed
cpio overlay by `write_guest_initrd`.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from xenvlan.errors import ImageError
from xenvlan.paths import cache_dir
from xenvlan.proc import run_checked

BUILDER_VERSION = "1"
KERNEL_METAPACKAGE = "linux-image-amd64"
#: Modules wanted in the guest; their modules.dep closure is packed, built-ins are skipped.
#: virtio_rng lets dropbear start at once when the domain has <rng model="virtio">.
MODULES: tuple[str, ...] = ("virtio_net", "virtio_pci", "virtio_rng", "xen-netfront", "8021q")
#: Host packages whose binaries are copied into the initramfs (versions feed the cache key).
USERSPACE_PACKAGES: tuple[str, ...] = ("busybox-static", "dropbear-bin", "iputils-ping")
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
PING = Path("/usr/bin/ping")
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
MODULE_LIST = "etc/xenvlan/modules"
XEN_ELFNOTE_PHYS32_ENTRY = 18

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    """A bootable kernel + base initramfs (no per-guest secrets)."""

    kernel: Path  # what to boot (vmlinux if available, else bzImage)
    bzimage: Path
    vmlinux: Path | None
    initrd: Path  # base initramfs (gzip cpio)
    kernel_version: str  # e.g. "6.1.0-28-amd64"
    kernel_config: dict[str, str] = field(hash=False)  # selected CONFIG_* values
    key: str  # cache hash


# --------------------------------------------------------------------------- helpers


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def init_script() -> bytes:
    """The guest /init shipped as package data."""
    return resources.files("xenvlan").joinpath("guest/init").read_bytes()


def resolve_kernel_package(override: str | None = None) -> tuple[str, str]:
    """(package, candidate version) of the concrete kernel image package."""
    pkg = override
    if pkg is None:
        out = run_checked(["apt-cache", "depends", KERNEL_METAPACKAGE], "apt-cache depends")
        found = re.findall(r"Depends:\s+(linux-image-\S+)", out)
        if not found:
            raise ImageError(f"apt-cache depends {KERNEL_METAPACKAGE}: no linux-image dependency")
        pkg = found[0]
    out = run_checked(["apt-cache", "policy", pkg], f"apt-cache policy {pkg}")
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        raise ImageError(f"kernel package {pkg} has no installable candidate (apt-get update?)")
    return pkg, m.group(1)


def host_package_versions(packages: tuple[str, ...] = USERSPACE_PACKAGES) -> dict[str, str]:
    """Installed versions of the userspace packages copied into the image."""
    out = run_checked(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n", *packages],
        "dpkg-query -W " + " ".join(packages),
    )
    versions: dict[str, str] = {}
    for line in out.splitlines():
        name, version, status = [*line.split("\t"), "", ""][:3]
        if status == "installed":
            versions[name.split(":")[0]] = version
    missing = [p for p in packages if p not in versions]
    if missing:
        raise ImageError(f"host packages not installed: {' '.join(missing)} (apt-get install them)")
    return versions


def image_key(inputs: dict[str, object]) -> str:
    """Cache hash over every build input."""
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


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
        out = _decompress_any(bzimage[off:])
        if out is not None and out[:4] == b"\x7fELF":
            return out
    return None


def _decompress_any(data: bytes) -> bytes | None:
    """Decompress one stream at the start of `data`, ignoring trailing bytes."""
    try:
        if data[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
        if data[:3] == b"\x1f\x8b\x08":
            return zlib.decompressobj(wbits=31).decompress(data)
        if data[:3] == b"\x5d\x00\x00":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
        if data[:4] == b"\x28\xb5\x2f\xfd":
            proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=False)
            return proc.stdout or None
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


# --------------------------------------------------------------------------- modules


def _mod_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_closure(modules_dep: str, builtin: str, wanted: tuple[str, ...] = MODULES) -> list[str]:
    """Paths (relative to the modules dir) of `wanted` and their deps, dependencies first."""
    deps: dict[str, list[str]] = {}
    path_of: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        name = _mod_name(path)
        path_of[name] = path
        deps[name] = [_mod_name(d) for d in rest.split()]
    builtins = {_mod_name(ln) for ln in builtin.split()}
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in done or name in builtins:
            return
        if name in stack:
            raise ImageError(f"module dependency cycle: {' -> '.join((*stack, name))}")
        if name not in path_of:
            raise ImageError(f"kernel module {name} is neither in modules.dep nor built in")
        for dep in deps[name]:
            visit(dep, (*stack, name))
        done.add(name)
        order.append(path_of[name])

    for want in wanted:
        visit(want.replace("-", "_"), ())
    return order


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes; .ko.xz/.ko.zst/.ko.gz are decompressed for busybox insmod."""
    data = path.read_bytes()
    if path.suffix == ".ko":
        return data
    out = _decompress_any(data)
    if out is None or out[:4] != b"\x7fELF":
        raise ImageError(f"cannot decompress kernel module {path.name}")
    return out


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


# --------------------------------------------------------------------------- userspace


def _ldd(binary: Path) -> list[Path]:
    """Shared libraries + dynamic loader of `binary`, as paths on the host."""
    out = run_checked(["ldd", str(binary)], f"ldd {binary}")
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


def _base_tree(init: bytes) -> _Tree:
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


def _add_userspace(t: _Tree) -> None:
    t.file(str(BUSYBOX), BUSYBOX.read_bytes(), 0o755)
    t.copy_binary(DROPBEAR)
    t.copy_binary(PING)
    applets = run_checked([str(BUSYBOX), "--list-full"], "busybox --list-full").split()
    for applet in applets:
        depth = applet.count("/")
        t.symlink(applet, "../" * depth + str(BUSYBOX).lstrip("/"))
    t.symlink("bin/sh", "busybox")


# --------------------------------------------------------------------------- build


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _download_deb(pkg: str, version: str, debs: Path, progress: Progress | None) -> Path:
    """`apt-get download pkg=version` into the cache, run in the namespace the user started in."""
    safe_version = version.replace(":", "%3a")
    dest = debs / f"{pkg}_{safe_version}_amd64.deb"
    if dest.exists():
        return dest
    debs.mkdir(parents=True, exist_ok=True)
    _say(progress, f"downloading {pkg} {version}")
    with tempfile.TemporaryDirectory(dir=debs, prefix=".dl.") as tmp:
        argv, fds = fetch_argv(["apt-get", "download", f"{pkg}={version}"])
        run_checked(argv, f"apt-get download {pkg}", cwd=Path(tmp), pass_fds=fds)
        found = list(Path(tmp).glob("*.deb"))
        if len(found) != 1:
            raise ImageError(f"apt-get download {pkg}: expected one .deb, found {len(found)}")
        os.replace(found[0], dest)
    return dest


def fetch_argv(argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
    """`argv` made to run in the user's own network namespace (downloads never run in a sandbox).

    A command re-executed into the sandbox carries an inherited handle on the namespace it was
    started in (`sandbox.ORIGIN_NETNS_FD_ENV`); the fetch then runs there through `nsenter`.
    Inside a sandbox namespace without that handle, fetching is refused: it has no route out.
    """
    from xenvlan import sandbox

    fd = sandbox.origin_netns_fd()
    if fd is not None:
        return ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *argv], (fd,)
    if sandbox.inside_sandbox():
        raise ImageError(
            f"{argv[0]} {argv[1]}: refused inside the sandbox namespace (no route out); "
            "run `xenvlan image build` outside it"
        )
    return argv, ()


def _cached_debs(debs: Path) -> list[tuple[str, str, Path]]:
    """(package, version, path) of every kernel deb already downloaded, newest first."""
    found: list[tuple[str, str, Path]] = []
    for deb in debs.glob("linux-image-*_amd64.deb"):
        parts = deb.name[: -len("_amd64.deb")].split("_")
        if len(parts) == 2:
            found.append((parts[0], parts[1].replace("%3a", ":"), deb))
    return sorted(found, key=lambda t: t[2].stat().st_mtime_ns, reverse=True)


def _find_modules_dir(root: Path) -> Path:
    for base in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if base.is_dir():
            dirs = [d for d in base.iterdir() if d.is_dir()]
            if len(dirs) == 1:
                return dirs[0]
    raise ImageError("kernel package has no single lib/modules/<version> directory")


def _build(
    out_dir: Path, deb: Path, inputs: dict[str, object], init: bytes, progress: Progress | None
) -> None:
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".extract.") as tmp:
        root = Path(tmp)
        _say(progress, f"extracting {deb.name}")
        run_checked(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
        moddir = _find_modules_dir(root)
        kver = moddir.name
        vmlinuz = root / "boot" / f"vmlinuz-{kver}"
        config = root / "boot" / f"config-{kver}"
        if not vmlinuz.exists() or not config.exists():
            raise ImageError(f"kernel package lacks boot/vmlinuz-{kver} or boot/config-{kver}")
        if not (moddir / "modules.dep").exists():
            _say(progress, "running depmod")
            run_checked(["depmod", "-b", str(moddir.parent.parent.parent), kver], "depmod")
        order = module_closure(
            (moddir / "modules.dep").read_text(),
            (moddir / "modules.builtin").read_text()
            if (moddir / "modules.builtin").exists()
            else "",
        )
        kconfig = read_kernel_config(config)
        if kconfig["XEN_PVH"] == "n" and kconfig["XEN_PV"] == "n":
            _say(progress, f"warning: kernel {kver} has neither CONFIG_XEN_PV nor CONFIG_XEN_PVH")

        _say(progress, "assembling initramfs")
        tree = _base_tree(init)
        _add_userspace(tree)
        listed: list[str] = []
        for rel in order:
            plain = re.sub(r"\.(xz|zst|gz)$", "", rel)
            tree.file(f"lib/modules/{kver}/{plain}", _read_module(moddir / rel))
            listed.append(plain)
        tree.file(MODULE_LIST, "".join(f"{p}\n" for p in listed).encode())
        cpio = pack_newc([tree.entries[k] for k in sorted(tree.entries)])
        (out_dir / "initrd.gz").write_bytes(gzip.compress(cpio, compresslevel=9, mtime=0))

        bz = vmlinuz.read_bytes()
        shutil.copyfile(vmlinuz, out_dir / "bzImage")
        _say(progress, "extracting vmlinux")
        elf = extract_vmlinux(bz)
        pvh = False
        if elf is not None:
            (out_dir / "vmlinux").write_bytes(elf)
            pvh = has_pvh_note(out_dir / "vmlinux")
        meta = {
            "key": inputs["key"],
            "inputs": inputs,
            "kernel_version": kver,
            "kernel_config": kconfig,
            "modules": listed,
            "vmlinux": elf is not None,
            "pvh_note": pvh,
            "initrd_bytes": (out_dir / "initrd.gz").stat().st_size,
            "cpio_bytes": len(cpio),
        }
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        for p in out_dir.iterdir():
            p.chmod(0o644)
        out_dir.chmod(0o755)


def _load(image_dir: Path) -> GuestImage | None:
    try:
        meta = json.loads((image_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    bz, initrd = image_dir / "bzImage", image_dir / "initrd.gz"
    vmlinux = image_dir / "vmlinux" if meta.get("vmlinux") else None
    if not bz.exists() or not initrd.exists() or (vmlinux is not None and not vmlinux.exists()):
        return None
    return GuestImage(
        kernel=vmlinux or bz,
        bzimage=bz,
        vmlinux=vmlinux,
        initrd=initrd,
        kernel_version=str(meta["kernel_version"]),
        kernel_config={str(k): str(v) for k, v in meta["kernel_config"].items()},
        key=str(meta["key"]),
    )


#: Files whose change can alter what apt/dpkg report (kernel candidate, installed versions).
PACKAGE_STATE_FILES: tuple[str, ...] = (
    "/var/lib/apt/lists",
    "/var/lib/dpkg/status",
    "/etc/apt/preferences",
    "/etc/apt/preferences.d",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
)


def _package_state_fingerprint() -> list[list[object]]:
    out: list[list[object]] = []
    for name in PACKAGE_STATE_FILES:
        try:
            st = os.stat(name)
        except OSError:
            continue
        out.append([name, st.st_mtime_ns, st.st_size, st.st_ino])
    return out


def _package_inputs(kernel_package: str | None, memo: Path | None) -> dict[str, object]:
    """Kernel package/version and userspace versions; memoised while apt/dpkg state is unchanged.

    Asking apt-cache costs ~0.8 s per call, which every `up` would pay otherwise.
    """
    state = {"override": kernel_package, "fingerprint": _package_state_fingerprint()}
    if memo is not None:
        try:
            saved = json.loads(memo.read_text())
            if saved.get("state") == json.loads(json.dumps(state)):
                return dict(saved["packages"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    pkg, version = resolve_kernel_package(kernel_package)
    packages: dict[str, object] = {
        "kernel_package": pkg,
        "kernel_version": version,
        "userspace": host_package_versions(),
    }
    if memo is not None:
        try:
            fd, tmp = tempfile.mkstemp(dir=memo.parent, prefix=f".{memo.name}.")
            with os.fdopen(fd, "w") as f:
                json.dump({"state": state, "packages": packages}, f)
            os.replace(tmp, memo)
        except OSError:
            pass  # only an optimisation
    return packages


def image_inputs(
    kernel_package: str | None = None, *, memo: Path | None = None
) -> dict[str, object]:
    """Everything the image depends on, hashed into its cache key (`key` included)."""
    packages = _package_inputs(kernel_package, memo)
    inputs: dict[str, object] = {
        "builder": BUILDER_VERSION,
        "kernel_package": packages["kernel_package"],
        "kernel_version": packages["kernel_version"],
        "userspace": packages["userspace"],
        "init_sha256": hashlib.sha256(init_script()).hexdigest(),
        "modules": list(MODULES),
    }
    inputs["key"] = image_key(inputs)
    return inputs


def ensure_image(
    *,
    cache: Path | None = None,
    kernel_package: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> GuestImage:
    """Return the cached guest image for the current inputs, building it when needed."""
    root = (cache or cache_dir()) / "images"
    root.mkdir(parents=True, exist_ok=True)
    inputs = image_inputs(kernel_package, memo=None if force else root / ".packages.json")
    key = str(inputs["key"])
    final = root / key
    if not force and (img := _load(final)) is not None:
        return img
    with _locked(root / ".build.lock"):
        if not force and (img := _load(final)) is not None:
            return img  # built by someone else while we waited
        # We hold the build lock: leftovers of a killed build are stale.
        for pattern in (".build-*", ".old-*", ".extract.*"):
            for stale in root.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        try:
            deb = _download_deb(
                str(inputs["kernel_package"]),
                str(inputs["kernel_version"]),
                root.parent / "debs",
                progress,
            )
        except ImageError as exc:
            fallback = _offline_fallback(root, inputs, exc, progress)
            if isinstance(fallback, GuestImage):
                return fallback
            deb, inputs = fallback
            key = str(inputs["key"])
            final = root / key
            if (img := _load(final)) is not None:
                return img
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".build-{key}."))
        try:
            _build(tmp, deb, inputs, init_script(), progress)
            if final.exists():
                trash = Path(tempfile.mkdtemp(dir=root, prefix=f".old-{key}."))
                os.replace(final, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _say(progress, f"built image {key} in {time.monotonic() - started:.1f} s")
    img = _load(final)
    if img is None:
        raise ImageError(f"image {final} is incomplete right after building it")
    return img


#: Inputs a fallback image may differ in: only the kernel that could not be fetched.
_KERNEL_INPUTS = ("kernel_package", "kernel_version", "key")


def _notice(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(f"notice: {msg}")
    else:
        print(f"xenvlan: notice: {msg}", file=sys.stderr)


def _offline_fallback(
    root: Path, inputs: dict[str, object], exc: ImageError, progress: Progress | None
) -> GuestImage | tuple[Path, dict[str, object]]:
    """When the wanted kernel cannot be fetched: the newest usable cached image, else a cached
    kernel deb to build from (with the inputs that describe it); else `exc`, one line."""
    wanted = f"{inputs['kernel_package']} {inputs['kernel_version']}"
    same = {k: v for k, v in inputs.items() if k not in _KERNEL_INPUTS}
    usable: list[tuple[int, GuestImage, dict[str, object]]] = []
    for meta_path in root.glob("*/meta.json"):
        try:
            old = json.loads(meta_path.read_text()).get("inputs", {})
        except (OSError, ValueError, AttributeError):
            continue
        matches = isinstance(old, dict) and all(old.get(k) == v for k, v in same.items())
        if matches and (img := _load(meta_path.parent)) is not None:
            usable.append((meta_path.stat().st_mtime_ns, img, old))
    if usable:
        _, img, old = max(usable, key=lambda t: t[0])
        _notice(
            progress,
            f"cannot fetch {wanted}; using the cached image of "
            f"{old['kernel_package']} {old['kernel_version']}",
        )
        return img
    debs = _cached_debs(root.parent / "debs")
    if debs:
        pkg, version, deb = debs[0]
        rebuilt: dict[str, object] = {**same, "kernel_package": pkg, "kernel_version": version}
        rebuilt["key"] = image_key(rebuilt)
        _notice(progress, f"cannot fetch {wanted}; building from the cached {pkg} {version}")
        return deb, rebuilt
    raise ImageError(f"{exc} (and no cached image or kernel package to use instead)") from exc


def cached_image(
    *, cache: Path | None = None, kernel_package: str | None = None
) -> tuple[GuestImage | None, Path]:
    """(cached image for the current inputs or None, its directory); builds/writes nothing."""
    inputs = image_inputs(kernel_package, memo=None)
    final = (cache or cache_dir()) / "images" / str(inputs["key"])
    return _load(final), final


def image_from_files(kernel: Path, initrd: Path) -> GuestImage:
    """A GuestImage for a user-supplied kernel (bzImage or ELF vmlinux) and initramfs."""
    for p in (kernel, initrd):
        if not p.is_file():
            raise ImageError(f"{p}: no such file")
    with open(kernel, "rb") as f:
        head = f.read(0x10000)
    is_elf = head[:4] == b"\x7fELF"
    st_k, st_i = kernel.stat(), initrd.stat()
    ident = f"{kernel.resolve()}:{st_k.st_size}:{st_k.st_mtime_ns}:{initrd.resolve()}:"
    ident += f"{st_i.st_size}:{st_i.st_mtime_ns}"
    return GuestImage(
        kernel=kernel,
        bzimage=kernel,
        vmlinux=kernel if is_elf else None,
        initrd=initrd,
        kernel_version=bzimage_version(head) or "unknown",
        kernel_config={},
        key="byo-" + hashlib.sha256(ident.encode()).hexdigest()[:16],
    )


def write_guest_initrd(
    image: GuestImage, dest: Path, *, host_key: Path, authorized_key: str
) -> Path:
    """Write `dest` = base initrd + an uncompressed cpio overlay holding the guest's SSH keys."""
    if not authorized_key.strip() or "\n" in authorized_key.strip():
        raise ImageError("authorized_key must be one OpenSSH public key line")
    try:
        base = image.initrd.read_bytes()
        hostkey_bytes = host_key.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {e.filename}: {e.strerror}") from e
    overlay = pack_newc(
        [
            CpioEntry("etc", stat.S_IFDIR | 0o755),
            CpioEntry("etc/dropbear", stat.S_IFDIR | 0o700),
            CpioEntry(
                "etc/dropbear/dropbear_ed25519_host_key", stat.S_IFREG | 0o600, hostkey_bytes
            ),
            CpioEntry("root", stat.S_IFDIR | 0o700),
            CpioEntry("root/.ssh", stat.S_IFDIR | 0o700),
            CpioEntry(
                "root/.ssh/authorized_keys",
                stat.S_IFREG | 0o600,
                (authorized_key.strip() + "\n").encode(),
            ),
        ]
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base)
            f.write(b"\0" * (-len(base) % 4))  # the next archive must start 4-byte aligned
            f.write(overlay)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
