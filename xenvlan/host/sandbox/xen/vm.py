"""The nested Dom0's QEMU: start (journalled), wait for libvirt's Xen driver, status, stop.

QEMU runs daemonized under TCG with the Dom0 root behind `snapshot=on` (the cached image is never
written), one NIC whose only way in is a loopback `hostfwd` to sshd (`restrict=on`: no route
out) and three read-only 9p shares: per-run config (pinned sshd host key, authorized_keys), the
xenvlan checkout, and the guest image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xenvlan.errors import GuestError, HostChangeError, HypervisorError, XenvlanError
from xenvlan.host.run import pid_alive
from xenvlan.paths import ensure_private_dir, run_dir

QEMU = "qemu-system-x86_64"
DEFAULT_MEMORY_MIB = 2048
DEFAULT_DOM0_MIB = 768
DEFAULT_SMP = 2
DOM0_ADDR = "10.0.2.15"
#: Where the rc script in the Dom0 mounts each 9p tag.
#: How the Dom0 mounts each share (dom0init's `share`): cached loosely, so an edited checkout
#: is seen only after a remount (`remote.refresh_source`).
SHARE_OPTIONS = "trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose"
SHARE_MOUNTS: dict[str, str] = {
    "xvcfg": "/run/xenvlan/cfg",
    "xvsrc": "/opt/xenvlan/src",
    "xvimg": "/var/cache/xenvlan/guest",
}
Progress = Callable[[str], None]


@dataclass
class VmState:
    """Everything `stop` needs to end exactly what `start` began; saved before QEMU starts."""

    directory: str
    port: int
    host_key: str  # "ssh-ed25519 AAAA..." the Dom0's sshd presents (pinned)
    client_key: str  # path of xenvlan's Ed25519 client key for the Dom0
    image_dir: str
    src_dir: str
    guest_image_dir: str | None
    memory_mib: int
    qemu_pid: int | None = None
    started_at: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    #: `source_fingerprint` of the checkout as the Dom0 last saw it (its 9p share caches).
    src_fingerprint: str = ""

    @property
    def pidfile(self) -> Path:
        """QEMU's -pidfile."""
        return Path(self.directory) / "qemu.pid"

    @property
    def serial_log(self) -> Path:
        """Xen's com1: the hypervisor's and the Dom0's console (hvc0 goes through Xen)."""
        return Path(self.directory) / "serial.log"

    @property
    def cfg_dir(self) -> Path:
        """The xvcfg share."""
        return Path(self.directory) / "cfg"


@dataclass(frozen=True)
class Capabilities:
    """What the Dom0 reported once libvirt's Xen driver answered."""

    virt_caps: str  # from `xl info`, e.g. "pv hvm hap"
    os_types: list[str]  # libvirt guest os types: xen, xenpvh, hvm


def state_dir() -> Path:
    """Run files of the nested Dom0 (state, keys, serial log)."""
    return run_dir() / "sandbox" / "xen"


def state_file() -> Path:
    """The journal of the running (or half-started) Dom0."""
    return state_dir() / "state.json"


def load_state() -> VmState | None:
    """The recorded Dom0, or None."""
    try:
        data = json.loads(state_file().read_text())
        return VmState(**data)
    except (OSError, ValueError, TypeError):
        return None


def save_state(state: VmState) -> None:
    """Write the state file atomically (0600)."""
    path = state_file()
    ensure_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state.")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _check_path(p: Path) -> str:
    s = str(p)
    if "," in s or " " in s:
        raise HostChangeError(f"{s}: QEMU option paths may contain neither ',' nor ' '")
    return s


def qemu_argv(
    *,
    xen: Path,
    kernel: Path,
    initrd: Path,
    rootfs: Path,
    port: int,
    shares: dict[str, Path],
    serial_log: Path,
    pidfile: Path,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    dom0_mib: int = DEFAULT_DOM0_MIB,
    smp: int = DEFAULT_SMP,
) -> list[str]:
    """The QEMU command line (TCG, daemonized, loopback-only SSH forward, read-only shares)."""
    if not 1 <= port <= 65535:
        raise HostChangeError(f"port {port} out of range")
    if dom0_mib + 256 > memory_mib:
        raise HostChangeError(f"Dom0 {dom0_mib} MiB leaves no room for guests in {memory_mib} MiB")
    xen_cmdline = (
        f"console=com1 com1=115200,8n1 dom0_mem={dom0_mib}M,max:{dom0_mib}M "
        f"dom0_max_vcpus={smp} noreboot bootscrub=false guest_loglvl=all"
    )
    dom0_cmdline = "root=/dev/vda ro console=hvc0 earlyprintk=xen quiet loglevel=4"
    argv = [
        QEMU,
        "-machine", "q35,accel=tcg",
        "-cpu", "qemu64,+svm,+npt",
        "-m", str(memory_mib),
        "-smp", str(smp),
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
        "-daemonize",
        "-pidfile", _check_path(pidfile),
        "-serial", f"file:{_check_path(serial_log)}",
        "-kernel", _check_path(xen),
        "-append", xen_cmdline,
        "-initrd", f"{_check_path(kernel)} {dom0_cmdline},{_check_path(initrd)}",
        "-drive",
        f"file={_check_path(rootfs)},if=virtio,format=raw,snapshot=on,cache=unsafe",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    for i, (tag, path) in enumerate(sorted(shares.items())):
        if tag not in SHARE_MOUNTS:
            raise HostChangeError(f"unknown 9p share tag {tag}")
        argv += [
            "-fsdev",
            f"local,id=fs{i},path={_check_path(path)},security_model=none,readonly=on",
            "-device",
            f"virtio-9p-pci,fsdev=fs{i},mount_tag={tag}",
        ]
    return argv


def write_host_key(cfg: Path) -> str:
    """Generate the Dom0's sshd host key into `cfg` (OpenSSH format); return its public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path = cfg / "ssh_host_ed25519_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return pub.decode("ascii")


def is_our_qemu(pid: int, pidfile: Path) -> bool:
    """Whether `pid` is a QEMU started with our -pidfile (guards against a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(pidfile).encode() in cmdline


def running(state: VmState) -> bool:
    """Whether `state`'s QEMU is ours, alive, and finished booting (libvirt answered)."""
    pid = state.qemu_pid
    return (
        bool(pid)
        and "virsh" in state.timings
        and pid_alive(pid)
        and is_our_qemu(pid or 0, state.pidfile)
    )


def _read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def serial_milestones(text: str) -> dict[str, float]:
    """`XENVLAN-DOM0 <what> t=<uptime>` lines of the serial log as {what: seconds}."""
    out: dict[str, float] = {}
    for m in re.finditer(r"XENVLAN-DOM0 (\S+)(?: \S+)*? t=([0-9.]+)", text):
        out.setdefault(m.group(1), float(m.group(2)))
    return out


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def start(
    *,
    src_dir: Path | None = None,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    deadline_s: float = 240.0,
    with_guest_image: bool = True,
    keep_on_error: bool = False,
    progress: Progress | None = None,
) -> VmState:
    """Boot the nested Dom0 and wait until `virsh -c xen:///system capabilities` answers."""
    from xenvlan.guest.image.build import ensure_image
    from xenvlan.guest.keys import ensure_client_key
    from xenvlan.host.sandbox.xen import image as dom0image

    if os.geteuid() != 0:
        raise HostChangeError("the Xen sandbox needs root (it builds the Dom0 image)")
    existing = load_state()
    if existing is not None:
        if pid_alive(existing.qemu_pid) and port_listening(existing.port):
            return existing
        stop()
    if shutil.which(QEMU) is None:
        raise HostChangeError(f"{QEMU} not found (apt-get install qemu-system-x86)")
    src = (src_dir or Path(__file__).resolve().parents[4]).resolve()
    if not (src / "xenvlan" / "__main__.py").is_file():
        raise HostChangeError(f"{src} is not a xenvlan checkout")
    t0 = time.monotonic()
    image = dom0image.ensure_dom0_image(progress=progress)
    guest_dir: Path | None = None
    if with_guest_image:
        guest_dir = ensure_image(progress=progress).initrd.parent
    t_images = time.monotonic() - t0

    base = ensure_private_dir(state_dir())
    cfg = ensure_private_dir(base / "cfg")
    host_key = write_host_key(cfg)
    client = ensure_client_key(base / "client")
    fd = os.open(cfg / "authorized_keys", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(client.public_openssh + "\n")
    cfg.chmod(0o755)  # 9p with security_model=none reads as the QEMU process (root): fine
    state = VmState(
        directory=str(base),
        port=free_port(),
        host_key=host_key,
        client_key=str(client.path),
        image_dir=str(image.directory),
        src_dir=str(src),
        guest_image_dir=str(guest_dir) if guest_dir else None,
        memory_mib=memory_mib,
        started_at=time.time(),
        timings={"images": round(t_images, 2)},
    )
    shares = {"xvcfg": cfg, "xvsrc": src}
    if guest_dir is not None:
        shares["xvimg"] = guest_dir
    argv = qemu_argv(
        xen=image.xen,
        kernel=image.kernel,
        initrd=image.initrd,
        rootfs=image.rootfs,
        port=state.port,
        shares=shares,
        serial_log=state.serial_log,
        pidfile=state.pidfile,
        memory_mib=memory_mib,
    )
    save_state(state)  # journal first: a crash from here on is finished by `stop`
    try:
        precompile(src)
        state.src_fingerprint = source_fingerprint(src)
        _launch(argv, state)
        state.timings.update(_wait_ready(state, deadline_s, progress))
        save_state(state)
    except BaseException:
        if not keep_on_error:
            stop()
        raise
    return state


def precompile(src: Path) -> None:
    """Byte-compile the checkout on the host (same CPython 3.11) so Dom0 imports skip it."""
    import compileall

    with contextlib.redirect_stdout(None):
        compileall.compile_dir(str(src / "xenvlan"), quiet=2, workers=1)


def source_fingerprint(src: Path) -> str:
    """A hash of every file of the checkout's package (path, size, mtime), byte code aside."""
    h = hashlib.sha256()
    root = src / "xenvlan"
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                h.update(
                    f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
                )
    return h.hexdigest()[:16]


def _launch(argv: list[str], state: VmState) -> None:
    """Start QEMU: with -daemonize its parent returns once the VM runs (pid in -pidfile)."""
    from xenvlan.host.run import run

    state.pidfile.unlink(missing_ok=True)
    t = time.monotonic()
    done = run(argv, timeout=60)
    pid = _read_pid(state.pidfile)
    if pid is not None:
        state.qemu_pid = pid
        save_state(state)
    if not done.ok or pid is None:
        raise HypervisorError(f"{QEMU} did not start: {done.last_line()}")
    state.timings["qemu_start"] = round(time.monotonic() - t, 2)
    state.started_at = time.time()


def _wait_ready(state: VmState, deadline_s: float, progress: Progress | None) -> dict[str, float]:
    """Wait for SSH, then for libvirt's Xen driver, then start the fork server (same SSH
    session); return milestone timings (s from QEMU)."""
    from xenvlan.host.sandbox.xen.remote import Dom0Session

    t0 = time.monotonic()
    end = t0 + deadline_s
    timings: dict[str, float] = {}
    _say(progress, f"waiting for the Dom0's sshd on 127.0.0.1:{state.port}")
    session = Dom0Session(state)
    try:
        session.connect(deadline_s=deadline_s, alive=lambda: pid_alive(state.qemu_pid))
        timings["ssh"] = round(time.monotonic() - t0, 2)
        _say(progress, f"sshd answered after {timings['ssh']:.1f} s; waiting for libvirtd")
        last = ""
        while time.monotonic() < end:
            if not pid_alive(state.qemu_pid):
                raise HypervisorError(f"QEMU exited during boot (see {state.serial_log})")
            try:
                res = session.exec("virsh -c xen:///system capabilities", timeout=60)
            except GuestError as exc:  # a slow Dom0 may time one attempt out
                last = str(exc)
                continue
            if res.exit_status == 0 and "<capabilities>" in res.stdout:
                timings["virsh"] = round(time.monotonic() - t0, 2)
                break
            lines = (res.stderr.strip() or res.stdout.strip()).splitlines()
            last = lines[-1] if lines else f"exit {res.exit_status}"
            time.sleep(0.5)
        else:
            raise HypervisorError(
                f"libvirt's Xen driver did not answer within {deadline_s:.0f}s: {last}"
            )
        # The fork server imports the slow dependencies while the user's first verb is typed.
        from xenvlan.host.sandbox.xen.remote import zygote_command

        session.exec(zygote_command(), timeout=60)
        milestones = serial_milestones(_tail(state.serial_log))
        timings.update({f"dom0_{k}": v for k, v in milestones.items()})
    finally:
        session.close()
    return timings


def capabilities(state: VmState) -> Capabilities:
    """Xen's virt_caps (`xl info`) and libvirt's guest os types, read in the Dom0."""
    from xenvlan.host.sandbox.xen.remote import Dom0Session

    with Dom0Session(state).connect(deadline_s=30) as s:
        info = s.exec("xl info", timeout=30).stdout
        caps = s.exec("virsh -c xen:///system capabilities", timeout=30).stdout
    m = re.search(r"^virt_caps\s*:\s*(.*)$", info, re.M)
    os_types = sorted(set(re.findall(r"<os_type>(\w+)</os_type>", caps)))
    return Capabilities(virt_caps=m.group(1).strip() if m else "", os_types=os_types)


def _tail(path: Path, limit: int = 1 << 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class Status:
    """The Dom0 as seen from the host."""

    running: bool
    qemu_pid: int | None
    port: int | None
    listening: bool
    uptime_s: float | None
    state_dir: str


def status() -> Status:
    """Whether the recorded QEMU runs and its SSH forward listens."""
    state = load_state()
    if state is None:
        return Status(False, None, None, False, None, str(state_dir()))
    running = pid_alive(state.qemu_pid) and is_our_qemu(state.qemu_pid or 0, state.pidfile)
    return Status(
        running=running,
        qemu_pid=state.qemu_pid,
        port=state.port,
        listening=running and port_listening(state.port),
        uptime_s=round(time.time() - state.started_at, 1) if running else None,
        state_dir=state.directory,
    )


def stop(*, graceful_s: float = 10.0) -> list[str]:
    """Shut the Dom0 down (guests destroyed, then QEMU ended by PID) and remove its run files."""
    state = load_state()
    done: list[str] = []
    if state is None:
        if state_dir().exists():
            shutil.rmtree(state_dir(), ignore_errors=True)
        return done
    pid = state.qemu_pid or _read_pid(state.pidfile)
    if pid is not None and pid_alive(pid) and is_our_qemu(pid, state.pidfile):
        if graceful_s > 0 and port_listening(state.port):
            with contextlib.suppress(XenvlanError, OSError):
                from xenvlan.host.sandbox.xen.remote import Dom0Session

                with Dom0Session(state).connect(deadline_s=5) as s:
                    s.exec("/usr/lib/xenvlan/dom0-rc stop", timeout=graceful_s)
        _terminate(pid)
        done.append(f"qemu {pid}")
    shutil.rmtree(state.directory, ignore_errors=True)
    shutil.rmtree(state_dir(), ignore_errors=True)
    for d in (state_dir().parent, run_dir()):
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty: the libvirtd sandbox may live there too
    return done


def _terminate(pid: int) -> None:
    """SIGTERM, then SIGKILL after 10 s; the root image is snapshot=on, nothing to flush."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
    if pid_alive(pid):
        raise HostChangeError(f"QEMU {pid} survived SIGKILL")
