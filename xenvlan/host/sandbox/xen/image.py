"""The nested Xen Dom0 image: hypervisor, Dom0 kernel + initramfs, ext4 root; built and cached.

Everything is downloaded on the host at build time (apt, pip); the Dom0 itself never has a route
out. The root image is made without loop mounts (`mmdebstrap` into a directory, then
`mke2fs -d`) and booted read-only behind QEMU's `snapshot=on`, so the cache never changes.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from xenvlan.errors import ImageError
from xenvlan.guest.image.apt import download_deb, resolve_kernel_package
from xenvlan.guest.image.build import find_modules_dir
from xenvlan.guest.image.cpio import CpioEntry, pack_newc
from xenvlan.guest.image.modules import module_closure, read_module
from xenvlan.host.run import run_checked
from xenvlan.lock import waiting_lock
from xenvlan.paths import cache_dir

BUILDER_VERSION = "3"
XEN_PACKAGE = "xen-hypervisor-4.17-amd64"
#: Debian packages of the Dom0 root (their dependencies come along, recommends do not).
DOM0_PACKAGES: tuple[str, ...] = (
    "xen-utils-4.17",
    "xen-utils-common",
    "libvirt-daemon",
    "libvirt-daemon-driver-xen",
    "libvirt-daemon-system",
    "libvirt-clients",
    "python3",
    "python3-libvirt",
    "iproute2",
    "bridge-utils",
    "kmod",
    "procps",
    "iputils-ping",
    "dnsmasq-base",
    "iptables",
    "nftables",
    "openssh-server",
    "openssh-sftp-server",
    "busybox-static",
    "dropbear-bin",
    "e2fsprogs",
    "util-linux",
)
#: xenvlan's Python dependencies that bookworm ships too old; wheels for Dom0's CPython 3.11.
PIP_REQUIREMENTS: tuple[str, ...] = (
    "paramiko>=3.0",
    "typer>=0.12",
    "cryptography>=41",
    "pyroute2>=0.7",
    "rich>=13",
    "jinja2>=3.1",
)
PIP_PLATFORMS: tuple[str, ...] = (
    "manylinux2014_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
)
DOM0_PYTHON = "3.11"
#: Loaded by the Dom0 initramfs (plus their modules.dep closure) to reach the ext4 root.
INITRAMFS_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
#: Module trees a Dom0 in QEMU never loads; pruned to keep the image small.
PRUNED_MODULE_DIRS: tuple[str, ...] = (
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/iio",
    "kernel/drivers/bluetooth",
    "kernel/drivers/scsi",
    "kernel/drivers/hid",
    "kernel/drivers/input",
    "kernel/drivers/usb",
    "kernel/drivers/isdn",
    "kernel/drivers/mtd",
    "kernel/net/bluetooth",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/sound",
)
DPKG_EXCLUDES: tuple[str, ...] = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
)
CPU_MODEL = "xenvlan-qemu64-nosep"
ROOT_FREE_MIB = 512
RC_PATH = "usr/lib/xenvlan/dom0-rc"
INITRAMFS_INIT = b"""#!/bin/busybox sh
# xenvlan Dom0 initramfs: load the root's block/ext4 modules, mount /dev/vda, switch root.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "XENVLAN-DOM0 initramfs $(cut -d' ' -f1 /proc/uptime)" >/dev/console
kver="$(uname -r)"
while read -r m; do
    [ -n "$m" ] && insmod "/lib/modules/$kver/$m"
done </etc/modules
root=/dev/vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=*) root="${arg#root=}" ;; esac
done
i=0
while [ ! -b "$root" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /newroot
mount -t ext4 -o ro "$root" /newroot || exec sh
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/busybox init
"""
INITTAB = f"""::sysinit:/{RC_PATH} start
::shutdown:/{RC_PATH} stop
::ctrlaltdel:/bin/busybox poweroff
""".encode()
SSHD_CONFIG = b"""# xenvlan Dom0: key-only root login, host key and authorized keys injected per run.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
HostKey /run/xenvlan/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /run/xenvlan/ssh/authorized_keys
PidFile /run/sshd.pid
Subsystem sftp internal-sftp
AcceptEnv XENVLAN_*
"""  # noqa: E501

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Dom0Image:
    """A bootable nested Dom0: hypervisor ELF, Dom0 kernel, initramfs and raw ext4 root."""

    directory: Path
    xen: Path
    kernel: Path
    initrd: Path
    rootfs: Path
    kernel_version: str
    key: str


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def rc_script() -> bytes:
    """The Dom0 rc script (busybox init's sysinit/shutdown action), shipped as package data."""
    return resources.files("xenvlan.host.sandbox.xen").joinpath("dom0init").read_bytes()


def candidate_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """apt's candidate version of each package (one `apt-cache policy` call)."""
    out = run_checked(["apt-cache", "policy", *packages], "apt-cache policy", error=ImageError)
    return parse_policy(out, packages)


def parse_policy(text: str, packages: tuple[str, ...]) -> dict[str, str]:
    """Candidate versions from `apt-cache policy` output; every package must have one."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and (m := re.match(r"\s+Candidate:\s*(\S+)", line)):
            found[current] = m.group(1)
    missing = [p for p in packages if found.get(p, "(none)") == "(none)"]
    if missing:
        raise ImageError(f"no installable candidate for {' '.join(missing)} (apt-get update?)")
    return {p: found[p] for p in packages}


#: The Dom0's `default` network: Debian's, minus DHCP. Guests take their static address from
#: the kernel command line, and on a network without DHCP `up` makes no reservations: with it,
#: libvirt 9.0 refreshes all of the network's iptables rules on every reservation added or
#: removed, ~8 s each in the nested Dom0 (four per `up`/`down` of two guests).
DOM0_NETWORK_XML = """<network>
  <name>default</name>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'/>
</network>
"""


def dom0_key(inputs: dict[str, object]) -> str:
    """Cache hash over every build input (the `key` field itself excluded)."""
    blob = json.dumps({k: v for k, v in inputs.items() if k != "key"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dom0_inputs(kernel_package: str | None = None) -> dict[str, object]:
    """Everything the Dom0 image depends on, with its cache key under `key`."""
    kpkg, kver = resolve_kernel_package(kernel_package)
    versions = candidate_versions((XEN_PACKAGE, *DOM0_PACKAGES))
    inputs: dict[str, object] = {
        "builder": BUILDER_VERSION,
        "kernel_package": kpkg,
        "kernel_version": kver,
        "packages": versions,
        "pip": list(PIP_REQUIREMENTS),
        "pip_platforms": list(PIP_PLATFORMS),
        "python": DOM0_PYTHON,
        "initramfs_modules": list(INITRAMFS_MODULES),
        "pruned": list(PRUNED_MODULE_DIRS),
        "rc_sha256": hashlib.sha256(rc_script()).hexdigest(),
        "initramfs_init_sha256": hashlib.sha256(INITRAMFS_INIT).hexdigest(),
        "sshd_sha256": hashlib.sha256(SSHD_CONFIG + INITTAB).hexdigest(),
        "network_sha256": hashlib.sha256(DOM0_NETWORK_XML.encode()).hexdigest(),
    }
    inputs["key"] = dom0_key(inputs)
    return inputs


def apt_sources(codename: str | None = None) -> list[str]:
    """One-line `deb URI SUITE COMPONENTS` entries of this machine's sources for its release."""
    codename = codename or _codename()
    lines: list[str] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            lines += _deb822_sources(text, codename)
        elif f.suffix == ".list" or f.name == "sources.list":
            for ln in text.splitlines():
                parts = ln.split("#", 1)[0].split()
                plain = len(parts) >= 4 and parts[0] == "deb" and not parts[1].startswith("[")
                if plain and parts[2].startswith(codename):
                    lines.append(" ".join(parts))
    if not lines:
        raise ImageError(f"no apt source for {codename} in /etc/apt (needed by mmdebstrap)")
    return lines


def _deb822_sources(text: str, codename: str) -> list[str]:
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for ln in para.splitlines():
            if ln.startswith("#") or ":" not in ln:
                continue
            k, v = ln.split(":", 1)
            fields[k.strip().lower()] = v.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                if suite.startswith(codename):
                    out.append(f"deb {uri} {suite} {fields.get('components', 'main')}")
    return out


def _codename() -> str:
    for ln in Path("/etc/os-release").read_text().splitlines():
        if ln.startswith("VERSION_CODENAME="):
            return ln.split("=", 1)[1].strip('"')
    raise ImageError("cannot tell the Debian release from /etc/os-release")


def mmdebstrap_argv(rootfs: Path, sources: list[str], codename: str) -> list[str]:
    """The mmdebstrap command line for the Dom0 root."""
    argv = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--quiet",
        "--include=" + ",".join(DOM0_PACKAGES),
        "--aptopt=APT::Install-Recommends false",
    ]
    for pattern in DPKG_EXCLUDES:
        argv.append(f"--dpkgopt=path-exclude={pattern}")
    argv.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    return [*argv, codename, str(rootfs), *sources]


def pip_argv(target: Path) -> list[str]:
    """pip on the host, installing Dom0's wheels into `target` (no network needed inside)."""
    argv = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--target",
        str(target),
        "--only-binary=:all:",
        "--python-version",
        DOM0_PYTHON,
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for plat in PIP_PLATFORMS:
        argv += ["--platform", plat]
    return [*argv, *PIP_REQUIREMENTS]


def cpu_model_xml(qemu64: str) -> str:
    """libvirt's qemu64 CPU model renamed and without `sep` (Xen hides sep on TCG's AMD CPU)."""
    if "<model name='qemu64'>" not in qemu64:
        raise ImageError("libvirt cpu_map x86_qemu64.xml has no qemu64 model")
    out = qemu64.replace("<model name='qemu64'>", f"<model name='{CPU_MODEL}'>")
    return re.sub(r"\s*<feature name='sep'/>", "", out)


def cpu_index_xml(index: str) -> str:
    """index.xml with the xenvlan model listed right after qemu64."""
    if CPU_MODEL in index:
        return index
    line = "<include filename='x86_qemu64.xml'/>"
    if line not in index:
        raise ImageError("libvirt cpu_map index.xml does not list x86_qemu64.xml")
    return index.replace(line, f"{line}\n    <include filename='x86_{CPU_MODEL}.xml'/>", 1)


def _patch_cpu_map(rootfs: Path) -> None:
    cpu_map = rootfs / "usr/share/libvirt/cpu_map"
    src = cpu_map / "x86_qemu64.xml"
    if not src.exists():
        raise ImageError(f"{src} missing: is libvirt-daemon in the Dom0 root?")
    (cpu_map / f"x86_{CPU_MODEL}.xml").write_text(cpu_model_xml(src.read_text()))
    index = cpu_map / "index.xml"
    index.write_text(cpu_index_xml(index.read_text()))


def _initramfs(moddir: Path) -> bytes:
    """Gzip newc cpio: static busybox, the module closure, the init above."""
    kver = moddir.name
    builtin = moddir / "modules.builtin"
    order = module_closure(
        (moddir / "modules.dep").read_text(),
        builtin.read_text() if builtin.exists() else "",
        INITRAMFS_MODULES,
    )
    entries: list[CpioEntry] = []
    for d in ("bin", "dev", "etc", "proc", "sys", "newroot", "lib", "lib/modules"):
        entries.append(CpioEntry(d, stat.S_IFDIR | 0o755))
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes())
    )
    for applet in (
        "sh",
        "mount",
        "umount",
        "insmod",
        "sleep",
        "cat",
        "cut",
        "mkdir",
        "switch_root",
    ):
        entries.append(CpioEntry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, INITRAMFS_INIT))
    listed: list[str] = []
    made: set[str] = {"lib/modules"}
    for rel in order:
        plain = re.sub(r"\.(xz|zst|gz)$", "", rel)
        parts = f"lib/modules/{kver}/{plain}".split("/")
        for i in range(3, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                made.add(d)
                entries.append(CpioEntry(d, stat.S_IFDIR | 0o755))
        entries.append(CpioEntry("/".join(parts), stat.S_IFREG | 0o644, read_module(moddir / rel)))
        listed.append(plain)
    entries.append(
        CpioEntry("etc/modules", stat.S_IFREG | 0o644, "".join(f"{p}\n" for p in listed).encode())
    )
    return gzip.compress(pack_newc(entries), compresslevel=6, mtime=0)


def _configure_root(rootfs: Path) -> None:
    """Files the Dom0 needs beyond its packages: init, sshd, cpu_map, no stale host keys."""
    rc = rootfs / RC_PATH
    rc.parent.mkdir(parents=True, exist_ok=True)
    rc.write_bytes(rc_script())
    rc.chmod(0o755)
    (rootfs / "etc/inittab").write_bytes(INITTAB)
    (rootfs / "etc/hostname").write_text("dom0\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 dom0\n")
    (rootfs / "etc/ssh/sshd_config").write_bytes(SSHD_CONFIG)
    for old in (rootfs / "etc/ssh").glob("ssh_host_*"):
        old.unlink()  # the only host key is the pinned one injected at boot
    _patch_cpu_map(rootfs)
    # libvirt's `default` network, defined and autostarted (libvirt-daemon-system's postinst
    # would; no daemon runs in the chroot), without DHCP: see DOM0_NETWORK_XML.
    nets = rootfs / "etc/libvirt/qemu/networks"
    nets.mkdir(parents=True, exist_ok=True)
    (nets / "default.xml").write_text(DOM0_NETWORK_XML)
    (nets / "default.xml").chmod(0o600)
    link = nets / "autostart" / "default.xml"
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/etc/libvirt/qemu/networks/default.xml")
    # The Dom0 has no network: apt lists only waste space (mmdebstrap keeps none anyway).
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    for d in (
        "var/lib/xen",
        "var/log/xen/console",
        "var/lib/xenstored",
        "var/log/libvirt",
        "opt/xenvlan/src",
        "var/cache/xenvlan/guest",
        "run/xenvlan",
    ):
        (rootfs / d).mkdir(parents=True, exist_ok=True)


def _dir_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _build(
    out: Path, inputs: dict[str, object], work: Path, progress: Progress | None
) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    debs = cache_dir() / "debs"
    pkgs = inputs["packages"]
    assert isinstance(pkgs, dict)
    xen_deb = download_deb(XEN_PACKAGE, str(pkgs[XEN_PACKAGE]), debs, progress)
    kdeb = download_deb(
        str(inputs["kernel_package"]), str(inputs["kernel_version"]), debs, progress
    )
    timings["download"] = time.monotonic() - t0

    _say(progress, "extracting the Xen hypervisor")
    xdir = work / "xen"
    run_checked(
        ["dpkg-deb", "-x", str(xen_deb), str(xdir)], f"dpkg-deb -x {xen_deb.name}", error=ImageError
    )
    gz = sorted((xdir / "boot").glob("xen-*.gz"))
    if not gz:
        raise ImageError(f"{xen_deb.name} has no boot/xen-*.gz")
    with gzip.open(gz[0], "rb") as src, open(out / "xen", "wb") as dst:
        shutil.copyfileobj(src, dst)

    t = time.monotonic()
    _say(progress, "mmdebstrap of the Dom0 root (takes a minute)")
    rootfs = work / "rootfs"
    codename = _codename()
    argv = mmdebstrap_argv(rootfs, apt_sources(codename), codename)
    run_checked(argv, "mmdebstrap", error=ImageError)
    timings["mmdebstrap"] = time.monotonic() - t

    t = time.monotonic()
    _say(progress, "Dom0 kernel and modules")
    # Not `dpkg-deb -x` into the root: tar would replace the merged-/usr symlink /lib by a
    # directory (the kernel deb ships ./lib/modules), and every dynamic binary would break.
    kroot = work / "kernel"
    run_checked(
        ["dpkg-deb", "-x", str(kdeb), str(kroot)], f"dpkg-deb -x {kdeb.name}", error=ImageError
    )
    src_mod = find_modules_dir(kroot)
    kver = src_mod.name
    for rel in PRUNED_MODULE_DIRS:
        shutil.rmtree(src_mod / rel, ignore_errors=True)
    moddir = rootfs / "usr/lib/modules" / kver
    moddir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src_mod), str(moddir))
    run_checked(["depmod", "-b", str(rootfs), kver], "depmod", error=ImageError)
    shutil.copyfile(kroot / "boot" / f"vmlinuz-{kver}", out / "bzImage")
    (out / "initrd.gz").write_bytes(_initramfs(moddir))
    if not (rootfs / "lib").is_symlink() and (rootfs / "usr/lib").is_dir():
        raise ImageError("the Dom0 root lost its merged-/usr /lib symlink")
    timings["kernel"] = time.monotonic() - t

    t = time.monotonic()
    _say(progress, "pip wheels for Dom0's python3")
    site = rootfs / "opt/xenvlan/site"
    site.mkdir(parents=True, exist_ok=True)
    run_checked(pip_argv(site), "pip install --target (Dom0 wheels)", error=ImageError)
    timings["pip"] = time.monotonic() - t

    _configure_root(rootfs)
    t = time.monotonic()
    used = _dir_bytes(rootfs)
    size_mib = used // (1 << 20) + ROOT_FREE_MIB
    _say(progress, f"mke2fs -d ({used >> 20} MiB of files, {size_mib} MiB image)")
    img = out / "rootfs.ext4"
    run_checked(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "xenvlan-dom0",
            "-E",
            "root_owner=0:0",
            "-d",
            str(rootfs),
            str(img),
            f"{size_mib}M",
        ],
        "mke2fs -d",
        error=ImageError,
    )
    timings["mke2fs"] = time.monotonic() - t
    meta = {
        "key": inputs["key"],
        "inputs": inputs,
        "kernel_version": kver,
        "rootfs_files_bytes": used,
        "rootfs_image_mib": size_mib,
        "timings": timings,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    for p in out.iterdir():
        p.chmod(0o644)
    out.chmod(0o755)
    return timings


def load(directory: Path) -> Dom0Image | None:
    """The image in `directory` when complete, else None."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    img = Dom0Image(
        directory=directory,
        xen=directory / "xen",
        kernel=directory / "bzImage",
        initrd=directory / "initrd.gz",
        rootfs=directory / "rootfs.ext4",
        kernel_version=str(meta.get("kernel_version", "")),
        key=str(meta.get("key", "")),
    )
    if not all(p.is_file() for p in (img.xen, img.kernel, img.initrd, img.rootfs)):
        return None
    return img


#: Host programs the build runs, and the Debian package of each.
BUILD_TOOLS: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "dpkg-deb": "dpkg",
    "depmod": "kmod",
    "apt-cache": "apt",
}


def missing_build_tools(which: Callable[[str], str | None] | None = None) -> list[str]:
    """The Debian packages to install before the Dom0 image can be built (none: empty)."""
    which = which or shutil.which
    return sorted({pkg for tool, pkg in BUILD_TOOLS.items() if which(tool) is None})


def dom0_root(cache: Path | None = None) -> Path:
    """The directory holding Dom0 images, one per key."""
    return (cache or cache_dir()) / "dom0"


def ensure_dom0_image(
    *,
    cache: Path | None = None,
    kernel_package: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> Dom0Image:
    """Return the cached Dom0 image for the current inputs, building it when needed (root only)."""
    root = dom0_root(cache)
    root.mkdir(parents=True, exist_ok=True)
    inputs = dom0_inputs(kernel_package)
    key = str(inputs["key"])
    final = root / key
    if not force and (img := load(final)) is not None:
        return img
    if os.geteuid() != 0:
        raise ImageError("building the Dom0 image needs root (mmdebstrap --mode=root)")
    if missing := missing_build_tools():
        raise ImageError(
            f"building the Dom0 image needs {', '.join(missing)}: "
            f"apt-get install {' '.join(missing)} (or run scripts/bootstrap.sh)"
        )
    with waiting_lock(root / ".build.lock"):
        if not force and (img := load(final)) is not None:
            return img
        for stale in root.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".build-{key}."))
        out = tmp / "out"
        out.mkdir()
        try:
            _build(out, inputs, tmp, progress)
            if final.exists():
                shutil.rmtree(final)
            os.replace(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _say(progress, f"built Dom0 image {key} in {time.monotonic() - started:.1f} s")
    img = load(final)
    if img is None:
        raise ImageError(f"Dom0 image {final} is incomplete right after building it")
    return img
