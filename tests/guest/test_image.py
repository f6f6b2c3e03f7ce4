"""The guest image: real build from the Debian kernel deb, cpio contents, cache, and a real boot."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

import xenvlan.guest.image.apt as apt_mod
import xenvlan.guest.image.build as image_mod
from tests.conftest import Built, needs_build
from xenvlan.errors import ImageError
from xenvlan.guest.image.build import (
    MODULE_LIST,
    GuestImage,
    ensure_image,
    image_from_files,
    write_guest_initrd,
)
from xenvlan.guest.image.cpio import CpioEntry, pack_newc, parse_newc, read_initrd
from xenvlan.guest.image.kernel import extract_vmlinux, has_pvh_note
from xenvlan.guest.image.modules import module_closure
from xenvlan.guest.keys import (
    ClientKey,
    HostKey,
    ensure_client_key,
    generate_host_key,
    load_pkey,
    public_pkey,
)

QEMU = shutil.which("qemu-system-x86_64")
# --------------------------------------------------------------------------- pure units


def test_newc_roundtrip() -> None:
    entries = [
        CpioEntry("d", stat.S_IFDIR | 0o700),
        CpioEntry("d/f", stat.S_IFREG | 0o600, b"hello"),
        CpioEntry("l", stat.S_IFLNK | 0o777, b"d/f"),
        CpioEntry("c", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    ]
    blob = pack_newc(entries)
    assert len(blob) % 512 == 0
    parsed, end = parse_newc(blob)
    assert parsed == entries
    assert blob[end:].strip(b"\0") == b""


def test_newc_is_readable_by_cpio_tool(tmp_path: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("cpio not installed")
    blob = pack_newc(
        [CpioEntry("a", stat.S_IFDIR | 0o755), CpioEntry("a/b", stat.S_IFREG | 0o640, b"x" * 5)]
    )
    subprocess.run(["cpio", "-idm", "--quiet"], input=blob, cwd=tmp_path, check=True)
    assert (tmp_path / "a" / "b").read_bytes() == b"xxxxx"
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o640


def test_module_closure_orders_dependencies_first_and_skips_builtins() -> None:
    dep = (
        "kernel/net/8021q/8021q.ko: kernel/net/802/garp.ko kernel/net/802/stp.ko "
        "kernel/net/802/mrp.ko kernel/net/llc/llc.ko\n"
        "kernel/net/802/garp.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n"
        "kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n"
        "kernel/net/802/mrp.ko:\n"
        "kernel/net/llc/llc.ko:\n"
        "kernel/drivers/net/xen-netfront.ko.xz:\n"
        "kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko\n"
    )
    builtin = "kernel/drivers/virtio/virtio.ko\n"
    order = module_closure(dep, builtin, ("virtio_net", "xen_netfront", "8021q"))
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == [
        "virtio_net.ko",
        "xen-netfront.ko.xz",
        "llc.ko",
        "stp.ko",
        "garp.ko",
        "mrp.ko",
        "8021q.ko",
    ]
    with pytest.raises(ImageError, match="nonexistent"):
        module_closure(dep, builtin, ("nonexistent",))
    with pytest.raises(ImageError, match="cycle"):
        module_closure("a.ko: b.ko\nb.ko: a.ko\n", "", ("a",))


def test_extract_vmlinux_synthetic_gzip_payload() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 8
    blob = b"MZ" + b"\0" * 1000 + gzip.compress(elf) + b"\0\0\0\0trailer"
    assert extract_vmlinux(blob) == elf
    assert extract_vmlinux(b"MZ" + b"\0" * 100 + gzip.compress(b"not an elf")) is None


def test_image_from_files(tmp_path: Path) -> None:
    k, i = tmp_path / "k", tmp_path / "i"
    k.write_bytes(b"\x7fELF" + b"\0" * 64)
    i.write_bytes(b"070701")
    img = image_from_files(k, i)
    assert img.kernel == k and img.vmlinux == k and img.initrd == i
    assert img.key.startswith("byo-") and img.kernel_config == {}
    with pytest.raises(ImageError, match="no such file"):
        image_from_files(tmp_path / "missing", i)


# --------------------------------------------------------------------------- real build


@needs_build
def test_image_contains_userspace(built: Built) -> None:
    e = built.entries
    for path in ("init", "bin/busybox", "usr/sbin/dropbear", "usr/bin/ping", "etc/passwd"):
        assert stat.S_ISREG(e[path].mode), path
    assert e["init"].data == image_mod.init_script()
    assert e["init"].mode & 0o111
    assert e["bin/sh"].data in (b"busybox", b"../bin/busybox")
    assert stat.S_ISCHR(e["dev/console"].mode) and e["dev/console"].rdev == (5, 1)
    assert e["etc/passwd"].data.startswith(b"root:x:0:0:root:/root:/bin/sh")
    assert b"/bin/sh" in e["etc/shells"].data
    for binary in ("/usr/sbin/dropbear", "/usr/bin/ping"):
        ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        for lib in re.findall(r"(/\S+) \(0x", ldd):
            assert lib.lstrip("/") in e, f"{binary} needs {lib}"
    # Busybox applets are symlinks, but the real iputils ping wins at /usr/bin/ping.
    assert stat.S_ISLNK(e["sbin/ip"].mode) and stat.S_ISLNK(e["sbin/vconfig"].mode)


@needs_build
def test_image_modules_in_dependency_order(built: Built) -> None:
    e = built.entries
    kver = built.image.kernel_version
    listed = e[MODULE_LIST].data.decode().split()
    names = [re.sub(r"\.ko$", "", p.rsplit("/", 1)[1]).replace("-", "_") for p in listed]
    for want in ("virtio_net", "virtio_pci", "xen_netfront", "8021q", "garp", "mrp", "stp", "llc"):
        assert want in names
    seen: set[str] = set()
    for path, name in zip(listed, names, strict=True):
        data = e[f"lib/modules/{kver}/{path}"].data
        assert data[:4] == b"\x7fELF", "modules are stored uncompressed for busybox insmod"
        m = re.search(rb"depends=([\w,-]*)\0", data)
        deps = [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []
        missing = [d for d in deps if d not in seen]
        assert not missing, f"{name} listed before its dependencies {missing}"
        seen.add(name)


@needs_build
def test_image_kernel_and_metadata(built: Built) -> None:
    img = built.image
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", img.kernel_version)
    assert img.vmlinux is not None and img.kernel == img.vmlinux
    assert img.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert has_pvh_note(img.vmlinux), "vmlinux lacks XEN_ELFNOTE_PHYS32_ENTRY"
    assert img.bzimage.read_bytes()[0x202:0x206] == b"HdrS"
    assert image_mod.bzimage_version(img.bzimage.read_bytes()) == img.kernel_version
    cfg = img.kernel_config
    assert cfg["XEN_PVH"] == "y" and cfg["PVH"] == "y" and cfg["XEN_PV"] == "y"
    assert cfg["VLAN_8021Q"] in ("y", "m") and cfg["XEN_NETDEV_FRONTEND"] in ("y", "m")


@needs_build
def test_image_boots_under_xen_by_its_configuration(built: Built) -> None:
    """Evidence for Xen PV/PVH/HVM without a Xen host (see README, "Running on a real Xen Dom0")."""
    img, cfg = built.image, built.image.kernel_config
    assert (cfg["XEN_PV"], cfg["XEN_PVH"], cfg["PVH"]) == ("y", "y", "y")
    assert cfg["HVC_XEN"] == "y", "console=hvc0 must work before any module is loaded"
    assert cfg["SERIAL_8250_CONSOLE"] == "y", "console=ttyS0 (Xen HVM, QEMU)"
    assert img.vmlinux is not None and has_pvh_note(img.vmlinux), "PVH boots the ELF entry"
    listed = built.entries[MODULE_LIST].data.decode().split()
    if cfg["XEN_NETDEV_FRONTEND"] == "m":
        assert "kernel/drivers/net/xen-netfront.ko" in listed
    assert "kernel/net/8021q/8021q.ko" in listed


@needs_build
def test_cache_reused_and_rebuilt_on_init_change(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    mtime = built.image.initrd.stat().st_mtime_ns
    again = ensure_image(cache=built.cache)
    assert again == built.image
    assert again.initrd.stat().st_mtime_ns == mtime, "cached image was rebuilt"

    changed = image_mod.init_script() + b"# changed\n"
    monkeypatch.setattr(image_mod, "init_script", lambda: changed)
    rebuilt = ensure_image(cache=built.cache)
    assert rebuilt.key != built.image.key
    init = {e.name: e for e in read_initrd(rebuilt.initrd.read_bytes())}["init"]
    assert init.data == changed
    assert built.image.initrd.exists(), "other images stay in the cache"
    shutil.rmtree(rebuilt.initrd.parent)


@needs_build
def test_package_queries_are_memoised(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_image(cache=built.cache)  # writes the memo if an earlier test did not

    def no_apt(_override: str | None = None) -> tuple[str, str]:
        raise AssertionError("apt-cache asked although apt/dpkg state did not change")

    monkeypatch.setattr(apt_mod, "resolve_kernel_package", no_apt)
    assert ensure_image(cache=built.cache) == built.image


@needs_build
def test_concurrent_builds_build_once(built: Built, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    for deb in (built.cache / "debs").glob("*.deb"):
        os.link(deb, cache / "debs" / deb.name)  # no second download
    messages: list[str] = []
    results: list[GuestImage] = []

    def worker() -> None:
        results.append(ensure_image(cache=cache, progress=messages.append))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert sum(m.startswith("built image") for m in messages) == 1, messages
    assert not [p for p in (cache / "images").iterdir() if p.name.startswith(".build-")]


@needs_build
def test_guest_initrd_overlay(built: Built, tmp_path: Path) -> None:
    client = ensure_client_key(tmp_path / "c")
    host = generate_host_key(tmp_path / "h", "g")
    dest = write_guest_initrd(
        built.image,
        tmp_path / "out" / "g.initrd",
        host_key=host.dropbear_path,
        authorized_key=client.public_openssh,
    )
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    blob = dest.read_bytes()
    base = built.image.initrd.read_bytes()
    assert blob.startswith(base)
    entries = {e.name: e for e in read_initrd(blob)}
    hk = entries["etc/dropbear/dropbear_ed25519_host_key"]
    assert hk.data == host.dropbear_path.read_bytes() and stat.S_IMODE(hk.mode) == 0o600
    ak = entries["root/.ssh/authorized_keys"]
    assert ak.data.decode() == client.public_openssh + "\n" and stat.S_IMODE(ak.mode) == 0o600
    assert stat.S_IMODE(entries["root/.ssh"].mode) == 0o700
    assert "init" in entries

    # The overlay starts 4-byte aligned after the gzip member; check it with the cpio tool.
    d = zlib.decompressobj(wbits=31)
    d.decompress(blob)
    overlay = d.unused_data.lstrip(b"\0")
    assert (len(blob) - len(overlay)) % 4 == 0
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=overlay, cwd=out, check=True)
    assert (out / "root/.ssh/authorized_keys").read_text() == client.public_openssh + "\n"
    assert stat.S_IMODE((out / "etc/dropbear/dropbear_ed25519_host_key").stat().st_mode) == 0o600

    with pytest.raises(ImageError):
        write_guest_initrd(
            built.image, tmp_path / "bad", host_key=host.dropbear_path, authorized_key="a\nb"
        )


# --------------------------------------------------------------------------- real boot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Booted:
    port: int
    host: HostKey
    client: ClientKey
    ready_seconds: float
    console: Path


def boot(
    kernel: Path, initrd: Path, workdir: Path, port: int, *, deadline: float = 60.0
) -> tuple[subprocess.Popen[bytes], float]:
    """Start QEMU (TCG) on `kernel` + `initrd`; return it and the seconds until XENVLAN-READY."""
    console = workdir / "console.log"
    argv = [
        QEMU or "qemu-system-x86_64",
        "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 xenvlan.name=t xenvlan.mgmt=10.0.2.15/24 xenvlan.gw=10.0.2.2",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    with console.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        while True:
            text = console.read_bytes()
            if b"XENVLAN-READY name=t ip=10.0.2.15" in text:
                return proc, time.monotonic() - started
            if b"XENVLAN-FAIL" in text or proc.poll() is not None:
                tail = text.decode(errors="replace")[-2000:]
                raise AssertionError(f"guest failed to boot:\n{tail}")
            if time.monotonic() - started > deadline:
                raise AssertionError(f"no XENVLAN-READY within {deadline:.0f} s")
            time.sleep(0.05)
    except BaseException:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def booted(built: Built, tmp_path: Path) -> Iterator[Booted]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    client = ensure_client_key(tmp_path / "client")
    host = generate_host_key(tmp_path / "lab", "t")
    initrd = write_guest_initrd(
        built.image, tmp_path / "t.initrd", host_key=host.dropbear_path,
        authorized_key=client.public_openssh,
    )  # fmt: skip
    port = _free_port()
    proc, seconds = boot(built.image.kernel, initrd, tmp_path, port)
    print(f"\nboot-to-ready ({built.image.kernel.name}, TCG): {seconds:.2f} s")
    try:
        yield Booted(port, host, client, seconds, tmp_path / "console.log")
    finally:
        _stop(proc)


def _ssh(b: Booted) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    pinned = public_pkey(b.host.public_openssh)
    c.get_host_keys().add(f"[127.0.0.1]:{b.port}", pinned.get_name(), pinned)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(
        "127.0.0.1",
        port=b.port,
        username="root",
        pkey=load_pkey(b.client.path),
        allow_agent=False,
        look_for_keys=False,
        timeout=30,
        banner_timeout=30,
        auth_timeout=30,
    )
    return c


def _run(c: paramiko.SSHClient, cmd: str) -> str:
    _, out, err = c.exec_command(cmd, timeout=30)
    text = out.read().decode()
    status = out.channel.recv_exit_status()
    assert status == 0, f"{cmd!r} exited {status}: {err.read().decode()}"
    return text


@pytest.mark.e2e
@needs_build
def test_boot_ssh_vlan_ping(booted: Booted, built: Built) -> None:
    assert booted.ready_seconds < 60
    console = booted.console.read_text(errors="replace")
    assert f"XENVLAN-KERNEL {built.image.kernel_version}" in console
    c = _ssh(booted)
    try:
        assert _run(c, "uname -r").strip() == built.image.kernel_version
        assert _run(c, "hostname").strip() == "t"
        assert "10.0.2.15/24" in _run(c, "ip -4 addr show dev eth0")
        _run(c, "ip link add link eth0 name eth0.3 type vlan id 3")
        _run(c, "vconfig add eth0 5")
        cfg = _run(c, "cat /proc/net/vlan/config")
        assert re.search(r"eth0\.3\s*\|\s*3\s*\|\s*eth0", cfg), cfg
        assert re.search(r"eth0\.5\s*\|\s*5\s*\|\s*eth0", cfg), cfg
        assert "iputils" in _run(c, "/usr/bin/ping -V")
        out = _run(c, "/usr/bin/ping -M do -c 1 -W 5 -s 100 10.0.2.2")
        assert "1 received" in out
    finally:
        c.close()


@pytest.mark.e2e
@needs_build
def test_boot_wrong_host_key_refused(booted: Booted, tmp_path: Path) -> None:
    wrong = generate_host_key(tmp_path / "wrong", "w")
    b = Booted(booted.port, wrong, booted.client, booted.ready_seconds, booted.console)
    with pytest.raises(paramiko.BadHostKeyException):
        _ssh(b).close()


@pytest.mark.e2e
@needs_build
def test_boot_without_overlay_reports_failure_and_stays_up(built: Built, tmp_path: Path) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 not installed")
    console = tmp_path / "console.log"
    argv = [
        QEMU, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
        "-kernel", str(built.image.kernel), "-initrd", str(built.image.initrd),
        "-append", "console=ttyS0 panic=-1 xenvlan.name=f xenvlan.mgmt=10.0.2.15/24",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    with console.open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while b"XENVLAN-FAIL" not in console.read_bytes():
            assert proc.poll() is None, console.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "no XENVLAN-FAIL within 60 s"
            time.sleep(0.05)
        time.sleep(1.5)
        text = console.read_text(errors="replace")
        assert "XENVLAN-FAIL no SSH host key" in text
        assert "XENVLAN-READY" not in text
        assert "Kernel panic" not in text and proc.poll() is None, "PID 1 must stay alive"
    finally:
        _stop(proc)
