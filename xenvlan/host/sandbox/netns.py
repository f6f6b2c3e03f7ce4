"""A private libvirtd for bare machines: virtlogd + libvirtd inside a network namespace.

virbr0, dnsmasq, NAT and the bridge-netfilter sysctls then live in that namespace, with no route
out. xenvlan commands enter the namespace by themselves while the sandbox runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from xenvlan.errors import HostChangeError, HypervisorError
from xenvlan.host import netns
from xenvlan.host.netns import NETNS_DIR
from xenvlan.host.run import pid_alive, run, run_checked
from xenvlan.paths import ensure_private_dir, run_dir

DEFAULT_NETNS = "xenvlan-sbx"
LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
#: Set on a command re-executed into the sandbox: an inherited fd on the namespace it came from.
ORIGIN_NETNS_FD_ENV = "XENVLAN_ORIGIN_NETNS_FD"


@dataclass
class SandboxState:
    """What the sandbox started and made, so `stop` ends exactly that."""

    netns: str
    virtlogd_pid: int | None = None
    libvirtd_pid: int | None = None
    made_dirs: list[str] | None = None


def state_file() -> Path:
    """Where the running sandbox is recorded."""
    return run_dir() / "sandbox" / "state.json"


def load_state() -> SandboxState | None:
    """The running sandbox, or None."""
    try:
        data = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    return SandboxState(**data)


def _save(state: SandboxState) -> None:
    path = state_file()
    ensure_private_dir(path.parent)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, path)


def socket_alive(path: Path = LIBVIRT_SOCK) -> bool:
    """Whether a libvirtd answers on the system socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _run(argv: list[str]) -> None:
    run_checked(argv, " ".join(argv), error=HostChangeError)


def _pid_from(path: Path, deadline: float) -> int:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            text = path.read_text().strip()
            if text.isdigit():
                return int(text)
        except OSError:
            pass
        time.sleep(0.05)
    raise HypervisorError(f"daemon did not write its pid file {path}")


def start(netns: str = DEFAULT_NETNS, *, deadline_s: float = 60.0) -> SandboxState:
    """Create the namespace and start virtlogd + libvirtd in it; idempotent when already up."""
    if os.geteuid() != 0:
        raise HostChangeError("the sandbox needs root (network namespaces, libvirtd)")
    existing = load_state()
    if existing and pid_alive(existing.libvirtd_pid) and socket_alive():
        return existing
    if existing:
        stop()
    if socket_alive():
        raise HypervisorError(
            f"a libvirtd already answers on {LIBVIRT_SOCK}: use it directly (no sandbox needed)"
        )
    sbx = ensure_private_dir(run_dir() / "sandbox")
    state = SandboxState(netns=netns, made_dirs=[])
    for d in (
        Path("/var/log/libvirt"),
        Path("/var/lib/libvirt"),
        Path("/var/cache/libvirt"),
        Path("/run/libvirt"),
        Path("/etc/libvirt/qemu"),
    ):
        if not d.exists():
            d.mkdir(parents=True)
            assert state.made_dirs is not None
            state.made_dirs.append(str(d))
    if (NETNS_DIR / netns).exists():
        raise HostChangeError(f"network namespace {netns} exists already and is not the sandbox's")
    _save(state)  # journal first: a crash from here on is finished by `stop`
    try:
        _run(["ip", "netns", "add", netns])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        for f in ("virtlogd.pid", "libvirtd.pid"):
            (sbx / f).unlink(missing_ok=True)
        _run(["virtlogd", "-d", "--pid-file", str(sbx / "virtlogd.pid")])
        state.virtlogd_pid = _pid_from(sbx / "virtlogd.pid", 10)
        _save(state)
        _run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "libvirtd",
                "-d",
                "--pid-file",
                str(sbx / "libvirtd.pid"),
            ]
        )
        state.libvirtd_pid = _pid_from(sbx / "libvirtd.pid", 10)
        _save(state)
        end = time.monotonic() + deadline_s
        while not socket_alive():
            if not pid_alive(state.libvirtd_pid):
                raise HypervisorError(
                    "libvirtd exited at start (see /var/log/libvirt/libvirtd.log; "
                    "scripts/bootstrap.sh creates the users/groups its QEMU driver needs)"
                )
            if time.monotonic() > end:
                raise HypervisorError(f"libvirtd did not answer within {deadline_s:.0f}s")
            time.sleep(0.1)
        _wait_qemu_driver(deadline_s)
    except BaseException:
        stop()
        raise
    return state


def _wait_qemu_driver(deadline_s: float) -> None:
    """libvirtd's first start probes QEMU for a few seconds; wait until it answers."""
    import libvirt

    end = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < end:
        try:
            conn = libvirt.open("qemu:///system")
            conn.getCapabilities()
            conn.close()
            return
        except libvirt.libvirtError as exc:
            last = str(exc)
            time.sleep(0.2)
    raise HypervisorError(f"libvirt's QEMU driver did not answer: {last}")


def _terminate(pid: int | None, name: str) -> None:
    if not pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def stop() -> list[str]:
    """Remove every xenvlan object in the sandbox's libvirt, stop its daemons, drop the netns."""
    state = load_state()
    if state is None:
        return []
    done: list[str] = []
    if pid_alive(state.libvirtd_pid) and socket_alive():
        done += _clean_libvirt()
    _terminate(state.libvirtd_pid, "libvirtd")
    _terminate(state.virtlogd_pid, "virtlogd")
    if (NETNS_DIR / state.netns).exists():
        run(["ip", "netns", "del", state.netns])
        done.append(f"netns {state.netns}")
    for made in reversed(state.made_dirs or []):
        run(["rm", "-rf", "--one-file-system", made])
    sbx = state_file().parent
    for f in ("state.json", "virtlogd.pid", "libvirtd.pid", "state.tmp"):
        (sbx / f).unlink(missing_ok=True)
    for d in (sbx, run_dir()):
        with contextlib.suppress(OSError):
            d.rmdir()
    return done


def _clean_libvirt() -> list[str]:
    """Tear down every xenvlan lab still present in the sandbox's libvirtd."""
    import libvirt

    from xenvlan import lab

    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        return []
    try:
        out: list[str] = []
        for name in lab.labs_present(conn):
            out += lab.down_lab(conn, name)
        return out
    finally:
        conn.close()


def inside_sandbox() -> bool:
    """Whether this process lives in the running sandbox's namespace."""
    state = load_state()
    return state is not None and netns.current_is(state.netns)


def origin_netns_fd() -> int | None:
    """The inherited fd on the namespace a re-executed command was started in, if any."""
    raw = os.environ.get(ORIGIN_NETNS_FD_ENV, "")
    return int(raw) if raw.isdigit() and netns.is_handle(int(raw)) else None
