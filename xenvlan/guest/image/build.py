"""The guest image: a Debian kernel plus a tiny busybox/dropbear initramfs, built and cached.

No disk image: the kernel deb is fetched with `apt-get download`, the userspace (busybox-static,
dropbear, iputils ping) is copied from the host, and everything lands in one gzip newc cpio.
Per-guest secrets (SSH host key, authorized_keys) are appended later as a small uncompressed
cpio overlay by `write_guest_initrd`. Offline, a cached image or kernel deb stands in.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from xenvlan.errors import ImageError
from xenvlan.guest.image.apt import Progress, cached_debs, download_deb, package_inputs, say
from xenvlan.guest.image.cpio import CpioEntry, pack_newc
from xenvlan.guest.image.kernel import (
    bzimage_version,
    extract_vmlinux,
    has_pvh_note,
    read_kernel_config,
)
from xenvlan.guest.image.modules import MODULES, module_closure, read_module
from xenvlan.guest.image.rootfs import add_userspace, base_tree
from xenvlan.host.run import run_checked
from xenvlan.lock import waiting_lock
from xenvlan.paths import cache_dir

BUILDER_VERSION = "1"
MODULE_LIST = "etc/xenvlan/modules"
#: A prebuilt image directory to use as is (no apt, no build): how the nested Xen Dom0, which has
#: neither apt lists nor a route out, boots the image the host built and shared with it.
GUEST_IMAGE_ENV = "XENVLAN_GUEST_IMAGE"


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


def init_script() -> bytes:
    """The guest /init shipped as package data."""
    return resources.files("xenvlan").joinpath("guest/init").read_bytes()


def image_key(inputs: dict[str, object]) -> str:
    """Cache hash over every build input."""
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------- build


def find_modules_dir(root: Path) -> Path:
    """The single lib/modules/<version> directory of an extracted kernel package."""
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
        say(progress, f"extracting {deb.name}")
        run_checked(
            ["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}", error=ImageError
        )
        moddir = find_modules_dir(root)
        kver = moddir.name
        vmlinuz = root / "boot" / f"vmlinuz-{kver}"
        config = root / "boot" / f"config-{kver}"
        if not vmlinuz.exists() or not config.exists():
            raise ImageError(f"kernel package lacks boot/vmlinuz-{kver} or boot/config-{kver}")
        if not (moddir / "modules.dep").exists():
            say(progress, "running depmod")
            run_checked(
                ["depmod", "-b", str(moddir.parent.parent.parent), kver], "depmod", error=ImageError
            )
        order = module_closure(
            (moddir / "modules.dep").read_text(),
            (moddir / "modules.builtin").read_text()
            if (moddir / "modules.builtin").exists()
            else "",
        )
        kconfig = read_kernel_config(config)
        if kconfig["XEN_PVH"] == "n" and kconfig["XEN_PV"] == "n":
            say(progress, f"warning: kernel {kver} has neither CONFIG_XEN_PV nor CONFIG_XEN_PVH")

        say(progress, "assembling initramfs")
        tree = base_tree(init)
        add_userspace(tree)
        listed: list[str] = []
        for rel in order:
            plain = re.sub(r"\.(xz|zst|gz)$", "", rel)
            tree.file(f"lib/modules/{kver}/{plain}", read_module(moddir / rel))
            listed.append(plain)
        tree.file(MODULE_LIST, "".join(f"{p}\n" for p in listed).encode())
        cpio = pack_newc([tree.entries[k] for k in sorted(tree.entries)])
        (out_dir / "initrd.gz").write_bytes(gzip.compress(cpio, compresslevel=9, mtime=0))

        bz = vmlinuz.read_bytes()
        shutil.copyfile(vmlinuz, out_dir / "bzImage")
        say(progress, "extracting vmlinux")
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


def prebuilt_image() -> GuestImage | None:
    """The image named by $XENVLAN_GUEST_IMAGE, or None when unset; incomplete is an error."""
    env = os.environ.get(GUEST_IMAGE_ENV)
    if not env:
        return None
    try:
        img = _load(Path(env))
    except (KeyError, TypeError, AttributeError):
        img = None
    if img is None:
        raise ImageError(
            f"{GUEST_IMAGE_ENV}={env} is not a complete guest image "
            "(meta.json, bzImage, initrd.gz and vmlinux when listed)"
        )
    return img


def image_inputs(
    kernel_package: str | None = None, *, memo: Path | None = None
) -> dict[str, object]:
    """Everything the image depends on, hashed into its cache key (`key` included)."""
    packages = package_inputs(kernel_package, memo)
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
    if (given := prebuilt_image()) is not None:
        return given
    root = (cache or cache_dir()) / "images"
    root.mkdir(parents=True, exist_ok=True)
    inputs = image_inputs(kernel_package, memo=None if force else root / ".packages.json")
    key = str(inputs["key"])
    final = root / key
    if not force and (img := _load(final)) is not None:
        return img
    with waiting_lock(root / ".build.lock"):
        if not force and (img := _load(final)) is not None:
            return img  # built by someone else while we waited
        # We hold the build lock: leftovers of a killed build are stale.
        for pattern in (".build-*", ".old-*", ".extract.*"):
            for stale in root.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        try:
            deb = download_deb(
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
        say(progress, f"built image {key} in {time.monotonic() - started:.1f} s")
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
    debs = cached_debs(root.parent / "debs")
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
    if (given := prebuilt_image()) is not None:
        return given, given.initrd.parent
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
