"""Run `python3 -m xenvlan ARGS` inside the nested Dom0 over SSH (paramiko, pinned host key).

Output streams live, the exit code comes back, Ctrl-C is forwarded (SIGINT to the remote
xenvlan), input files named by options (`--lab F`) are copied in and output files
(`--report F`) copied back to the host path given.
"""

from __future__ import annotations

import logging
import os
import posixpath
import select
import shlex
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import paramiko

from xenvlan.errors import GuestError
from xenvlan.guest.image.build import GUEST_IMAGE_ENV
from xenvlan.guest.keys import load_pkey, public_pkey
from xenvlan.host.run import pid_alive
from xenvlan.host.sandbox.xen.vm import SHARE_MOUNTS, VmState
from xenvlan.paths import captures_dir
from xenvlan.timeouts import TIMEOUT_SCALE_ENV

#: Options whose value is a file xenvlan reads / writes.
INPUT_OPTIONS: frozenset[str] = frozenset({"--lab", "--kernel", "--initrd", "--capabilities"})
OUTPUT_OPTIONS: frozenset[str] = frozenset({"--report"})
REMOTE_IO = "/tmp/xenvlan-io"
SITE_DIR = "/opt/xenvlan/site"
GUEST_IMAGE_DIR = SHARE_MOUNTS["xvimg"]
#: Guest images copied in after boot (the host's image changed since `sandbox start`).
UPLOADED_IMAGES = "/var/cache/xenvlan/images"
IMAGE_FILES: tuple[str, ...] = ("meta.json", "bzImage", "vmlinux", "initrd.gz")
#: $XENVLAN_TIMEOUT_SCALE inside the Dom0 unless the caller sets one: guests nested under TCG.
DOM0_TIMEOUT_SCALE = "6"
SRC_DIR = SHARE_MOUNTS["xvsrc"]
#: The fork server (`zygote.py`, run by path from the shared checkout) and its socket.
ZYGOTE_SCRIPT = posixpath.join(SRC_DIR, "xenvlan/host/sandbox/xen/zygote.py")
ZYGOTE_SOCKET = "/run/xenvlan/zygote.sock"
ZYGOTE_LOG = "/run/xenvlan/zygote.log"
#: The libvirt URI of the Dom0's Xen driver.
XEN_URI = "xen:///system"


#: How the Dom0's python3 finds xenvlan (the shared checkout) and its wheels.
DOM0_PYTHON_ENV: dict[str, str] = {
    "PYTHONPATH": f"{SRC_DIR}:{SITE_DIR}",
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclass(frozen=True)
class ExecResult:
    """A finished remote command."""

    exit_status: int
    stdout: str
    stderr: str


@dataclass
class Plan:
    """A remote xenvlan invocation: rewritten argv plus the files to move."""

    argv: list[str]
    uploads: list[tuple[Path, str]] = field(default_factory=list)  # (host, remote)
    downloads: list[tuple[str, Path]] = field(default_factory=list)  # (remote, host)


def plan_args(args: list[str], run_id: str, cwd: Path | None = None) -> Plan:
    """Rewrite file options to paths under the remote I/O dir and list what to copy."""
    base = Path(cwd or Path.cwd())
    rdir = posixpath.join(REMOTE_IO, run_id)
    plan = Plan(argv=[])
    i = 0
    n = 0

    def remote_for(value: str) -> str:
        nonlocal n
        n += 1
        # Its own directory keeps the file's name, so siblings named after it (a report's
        # `<stem>-captures/`) and the report's relative links to them match on the host.
        return posixpath.join(rdir, str(n), Path(value).name or "file")

    while i < len(args):
        a = args[i]
        if a == "--":
            plan.argv += args[i:]
            break
        opt, eq, value = a.partition("=")
        if opt in INPUT_OPTIONS or opt in OUTPUT_OPTIONS:
            if not eq:
                if i + 1 >= len(args):
                    plan.argv.append(a)
                    break
                value = args[i + 1]
                i += 1
            host = value if os.path.isabs(value) else str(base / value)
            remote = remote_for(value)
            if opt in INPUT_OPTIONS:
                plan.uploads.append((Path(host), remote))
            else:
                plan.downloads.append((remote, Path(host)))
            plan.argv += [opt, remote]
        else:
            plan.argv.append(a)
        i += 1
    return plan


def remote_command(
    argv: list[str],
    pidfile: str,
    env: dict[str, str] | None = None,
    guest_image: str = GUEST_IMAGE_DIR,
) -> str:
    """The shell line run in the Dom0: record the shell's pid, then exec xenvlan (all quoted).

    xenvlan runs through the fork server's client (about 1 s instead of 10-20 s of imports);
    with no server it execs `python3 -m xenvlan` itself.
    """
    full_env = {
        **DOM0_PYTHON_ENV,
        # Dom0 has no apt lists and no route out: `up`/`repro` boot the host-built image.
        GUEST_IMAGE_ENV: guest_image,
        "XENVLAN_NO_SANDBOX": "1",  # the Dom0's xenvlan never re-execs anywhere
        TIMEOUT_SCALE_ENV: os.environ.get(TIMEOUT_SCALE_ENV) or DOM0_TIMEOUT_SCALE,
        "COLUMNS": os.environ.get("COLUMNS", "132"),
        **(env or {}),
    }
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(full_env.items()))
    return (
        f"mkdir -p -m 700 {shlex.quote(posixpath.dirname(pidfile))} && "
        f"echo $$ > {shlex.quote(pidfile)} && cd /tmp && "
        f"exec env {assigns} python3 -S {ZYGOTE_SCRIPT} client {ZYGOTE_SOCKET} {shlex.join(argv)}"
    )


def zygote_command(
    env: dict[str, str] | None = None,
    python: str = "python3",
    script: str = ZYGOTE_SCRIPT,
    sock: str = ZYGOTE_SOCKET,
    log: str = ZYGOTE_LOG,
) -> str:
    """The shell line that starts the fork server in the background (it lives as long as the VM).

    Only the server is backgrounded, every descriptor redirected: the SSH channel closes at once.
    Its pid goes to `SOCKET.pid`: clients wait for a server that is still importing.
    """
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted((env or DOM0_PYTHON_ENV).items()))
    return (
        f"cd /tmp || exit 1; nohup env {assigns} {shlex.quote(python)} {shlex.quote(script)} "
        f"serve {shlex.quote(sock)} > {shlex.quote(log)} 2>&1 < /dev/null & "
        f"echo $! > {shlex.quote(sock + '.pid')}"
    )


class Dom0Session:
    """One SSH connection to the Dom0 on its loopback port; only the pinned host key passes."""

    def __init__(self, state: VmState) -> None:
        self.state = state
        self._client: paramiko.SSHClient | None = None

    def connect(
        self, *, deadline_s: float = 30.0, alive: Callable[[], bool] | None = None
    ) -> Dom0Session:
        """Connect, retrying until the deadline (or until `alive()` says QEMU died)."""
        pinned = public_pkey(self.state.host_key)
        pkey = load_pkey(Path(self.state.client_key))
        end = time.monotonic() + deadline_s
        last = "no attempt"
        # Refused banners while sshd boots are expected: keep paramiko's thread quiet.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        attempt = 0
        while True:
            # Until the Dom0's NIC is up, slirp's forward swallows the SYN and paramiko waits the
            # whole banner timeout: start short (the first attempt was a 60 s wait), then grow in
            # case a loaded Dom0's sshd is just slow to greet.
            banner_s = min(60.0, 10.0 + 5.0 * attempt)
            attempt += 1
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.get_host_keys().add(f"[127.0.0.1]:{self.state.port}", pinned.get_name(), pinned)
            try:
                client.connect(
                    "127.0.0.1",
                    port=self.state.port,
                    username="root",
                    pkey=pkey,
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=5,
                    banner_timeout=banner_s,
                    auth_timeout=60,
                )
                transport = client.get_transport()
                if transport is not None:
                    transport.set_keepalive(15)
                    if isinstance(transport.sock, socket.socket):
                        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._client = client
                return self
            except paramiko.BadHostKeyException:
                client.close()
                raise GuestError(
                    "the Dom0 presented another SSH host key than the pinned one"
                ) from None
            except paramiko.AuthenticationException as exc:
                client.close()
                raise GuestError(f"Dom0 SSH key authentication failed: {exc}") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                last = str(exc) or type(exc).__name__
            if alive is not None and not alive():
                raise GuestError("QEMU exited before the Dom0's sshd answered")
            if time.monotonic() >= end:
                raise GuestError(f"no SSH from the Dom0 within {deadline_s:.0f}s (last: {last})")
            time.sleep(0.5)

    @property
    def client(self) -> paramiko.SSHClient:
        """The connected client."""
        if self._client is None:
            raise GuestError("Dom0 session is not connected")
        return self._client

    def exec(self, command: str, *, timeout: float = 60.0) -> ExecResult:
        """Run a shell line (the caller quotes) and collect its output."""
        try:
            _in, out, err = self.client.exec_command(command, timeout=timeout)
            _in.close()
            stdout = out.read().decode("utf-8", "replace")
            stderr = err.read().decode("utf-8", "replace")
            status = out.channel.recv_exit_status()
        except TimeoutError:
            raise GuestError(f"Dom0: `{command[:60]}` did not finish in {timeout:.0f}s") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestError(f"Dom0 SSH failed: {exc!r}") from None
        return ExecResult(status, stdout, stderr)

    def stream(
        self,
        command: str,
        *,
        stdout: BinaryIO,
        stderr: BinaryIO,
        on_interrupt: Callable[[], None] | None = None,
    ) -> int:
        """Run a shell line, copying its output live; Ctrl-C calls `on_interrupt`, then waits."""
        chan = self.client.get_transport().open_session()  # type: ignore[union-attr]
        chan.exec_command(command)
        chan.shutdown_write()
        interrupted = 0
        while True:
            try:
                while True:
                    if chan.recv_ready():
                        stdout.write(chan.recv(65536))
                        stdout.flush()
                    elif chan.recv_stderr_ready():
                        stderr.write(chan.recv_stderr(65536))
                        stderr.flush()
                    elif chan.exit_status_ready() and not (
                        chan.recv_ready() or chan.recv_stderr_ready()
                    ):
                        break
                    else:
                        select.select([chan], [], [], 0.2)
                status = chan.recv_exit_status()
                break
            except KeyboardInterrupt:
                interrupted += 1
                if interrupted > 2:  # third Ctrl-C: stop waiting, leave the remote to itself
                    chan.close()
                    return 130
                if on_interrupt is not None:
                    on_interrupt()
        chan.close()
        return status if status >= 0 else 255

    def put(self, host: Path, remote: str) -> None:
        """Copy a host file into the Dom0 (SFTP), creating its directory."""
        try:
            with self.client.open_sftp() as sftp:
                _mkdirs(sftp, posixpath.dirname(remote))
                sftp.put(str(host), remote)
        except OSError as exc:
            raise GuestError(f"cannot copy {host} into the Dom0: {exc}") from None

    def get(self, remote: str, host: Path) -> bool:
        """Copy a Dom0 file to the host; False when it does not exist."""
        try:
            with self.client.open_sftp() as sftp:
                try:
                    sftp.stat(remote)
                except FileNotFoundError:
                    return False
                host.parent.mkdir(parents=True, exist_ok=True)
                tmp = host.with_name(f".{host.name}.part")
                sftp.get(remote, str(tmp))
                os.replace(tmp, host)
                return True
        except OSError as exc:
            raise GuestError(f"cannot copy {remote} out of the Dom0: {exc}") from None

    def get_dir(self, remote: str, host: Path) -> int:
        """Copy a Dom0 directory tree to `host`; how many files (0: no such directory)."""

        def copy(sftp: paramiko.SFTPClient, src: str, dst: Path) -> int:
            dst.mkdir(parents=True, exist_ok=True)
            n = 0
            for entry in sorted(sftp.listdir_attr(src), key=lambda e: e.filename):
                child = posixpath.join(src, entry.filename)
                if stat.S_ISDIR(entry.st_mode or 0):
                    n += copy(sftp, child, dst / entry.filename)
                elif stat.S_ISREG(entry.st_mode or 0):
                    sftp.get(child, str(dst / entry.filename))
                    n += 1
            return n

        try:
            with self.client.open_sftp() as sftp:
                try:
                    sftp.stat(remote)
                except FileNotFoundError:
                    return 0
                return copy(sftp, remote, host)
        except OSError as exc:
            raise GuestError(f"cannot copy {remote} out of the Dom0: {exc}") from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Dom0Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _mkdirs(sftp: paramiko.SFTPClient, path: str) -> None:
    parts = [p for p in path.split("/") if p]
    cur = ""
    for p in parts:
        cur += "/" + p
        try:
            sftp.stat(cur)
        except FileNotFoundError:
            sftp.mkdir(cur, 0o700)


def refresh_source(session: Dom0Session, state: VmState) -> bool:
    """Let the Dom0 see an edited checkout: remount its share (dropping 9p's cache) when the
    checkout changed since the Dom0 last saw it; True when it did."""
    from xenvlan.host.sandbox.xen import vm

    src = Path(state.src_dir)
    fresh = vm.source_fingerprint(src)  # byte code aside: precompiling leaves it as it is
    if fresh == state.src_fingerprint:
        return False
    vm.precompile(src)
    done = session.exec(
        f"cd / && umount -l {shlex.quote(SRC_DIR)} && "
        f"mount -t 9p -o {shlex.quote(vm.SHARE_OPTIONS)} xvsrc {shlex.quote(SRC_DIR)}",
        timeout=60,
    )
    if done.exit_status != 0:
        raise GuestError(f"cannot remount the checkout in the Dom0: {done.stderr.strip()[-200:]}")
    state.src_fingerprint = fresh
    vm.save_state(state)
    return True


def dom0_image_dir(session: Dom0Session, state: VmState, host_image: Path | None) -> str:
    """Where the Dom0 finds `host_image` (a guest image directory on the host).

    The one shared at `sandbox start` is mounted already; any other (the host rebuilt its image
    since) is copied in once, under its key, over SFTP.
    """
    if host_image is None or (
        state.guest_image_dir and host_image.resolve() == Path(state.guest_image_dir).resolve()
    ):
        return GUEST_IMAGE_DIR
    remote = posixpath.join(UPLOADED_IMAGES, host_image.name)
    done = session.exec(f"test -s {shlex.quote(posixpath.join(remote, 'meta.json'))}", timeout=30)
    if done.exit_status != 0:
        part = remote + ".part"
        session.exec(f"rm -rf {shlex.quote(part)}", timeout=30)
        for name in IMAGE_FILES:
            if (host_image / name).is_file():
                session.put(host_image / name, posixpath.join(part, name))
        session.exec(f"mv {shlex.quote(part)} {shlex.quote(remote)}", timeout=30)
    return remote


def run(
    args: list[str],
    *,
    state: VmState | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    guest_image: Path | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run `xenvlan ARGS` in the Dom0; return its exit code (130 after Ctrl-C).

    `guest_image` is the host's guest image directory for `up`/`repro` (default: the one shared
    when the sandbox started).
    """
    from xenvlan.host.sandbox.xen import vm

    state = state or vm.load_state()
    if state is None or not pid_alive(state.qemu_pid):
        raise GuestError("no Xen sandbox runs (start it first)")
    run_id = uuid.uuid4().hex[:12]
    plan = plan_args(args, run_id, cwd)
    for host, _remote in plan.uploads:
        if not host.is_file():
            raise GuestError(f"{host}: no such file")
    rdir = posixpath.join(REMOTE_IO, run_id)
    pidfile = posixpath.join(rdir, "pid")
    with Dom0Session(state).connect(deadline_s=180) as s:
        refresh_source(s, state)
        if plan.downloads:
            parents = sorted({posixpath.dirname(r) for r, _h in plan.downloads})
            s.exec(f"mkdir -p -m 700 {shlex.join(parents)}", timeout=30)
        for host, remote in plan.uploads:
            s.put(host, remote)
        image_dir = dom0_image_dir(s, state, guest_image)

        def interrupt() -> None:
            # A second channel: SIGINT to the remote xenvlan (its shell exec'd into python).
            s.exec(f"kill -INT $(cat {shlex.quote(pidfile)}) 2>/dev/null", timeout=10)

        rc = s.stream(
            remote_command(plan.argv, pidfile, env, image_dir),
            stdout=stdout or sys.stdout.buffer,
            stderr=stderr or sys.stderr.buffer,
            on_interrupt=interrupt,
        )
        for remote, host in plan.downloads:
            s.get(remote, host)
            s.get_dir(str(captures_dir(PurePosixPath(remote))), captures_dir(host))
        if plan.uploads or plan.downloads:  # else it holds the pid file only, gone with the VM
            s.exec(f"rm -rf {shlex.quote(rdir)}", timeout=30)
    return rc
