"""Keys: formats and modes, and a real dropbear serving the generated host key on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xenvlan.errors import GuestError
from xenvlan.guest.keys import (
    ClientKey,
    HostKey,
    ensure_client_key,
    generate_host_key,
    load_pkey,
    public_pkey,
)
from xenvlan.guest.session import GuestAddress, GuestSession

DROPBEAR = Path("/usr/sbin/dropbear")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_client_key_modes_and_format(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    key = ensure_client_key(d)
    assert _mode(d) == 0o700
    assert _mode(key.path) == 0o600
    assert key.path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.public_openssh.startswith("ssh-ed25519 AAAA")
    loaded = serialization.load_ssh_private_key(key.path.read_bytes(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    pkey = load_pkey(key.path)
    assert isinstance(pkey, paramiko.Ed25519Key)
    assert f"{pkey.get_name()} {pkey.get_base64()}" == " ".join(key.public_openssh.split()[:2])
    assert not list(d.glob(".*")), "no temp files left behind"


def test_client_key_is_reused(tmp_path: Path) -> None:
    first = ensure_client_key(tmp_path)
    first.path.chmod(0o644)
    second = ensure_client_key(tmp_path)
    assert second == first
    assert _mode(second.path) == 0o600


def test_corrupt_client_key_is_an_image_error(tmp_path: Path) -> None:
    (tmp_path / "id_ed25519").write_text("garbage\n")
    with pytest.raises(GuestError, match="cannot read client key"):
        ensure_client_key(tmp_path)


def test_public_pkey_rejects_other_types() -> None:
    with pytest.raises(GuestError):
        public_pkey("ssh-rsa AAAAB3NzaC1yc2E")
    with pytest.raises(GuestError):
        public_pkey("ssh-ed25519 !!!notbase64")


needs_dropbear = pytest.mark.skipif(
    not DROPBEAR.exists() or shutil.which("dropbearkey") is None, reason="dropbear not installed"
)


@needs_dropbear
def test_host_key_files(tmp_path: Path) -> None:
    hk = generate_host_key(tmp_path / "lab", "g1")
    assert hk.dropbear_path == tmp_path / "lab" / "g1_ed25519_host_key"
    assert _mode(hk.dropbear_path) == 0o600
    assert _mode(tmp_path / "lab") == 0o700
    assert hk.public_openssh.startswith("ssh-ed25519 ") and len(hk.public_openssh.split()) == 2
    out = subprocess.run(
        ["dropbearkey", "-y", "-f", str(hk.dropbear_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert hk.public_openssh in out
    other = generate_host_key(tmp_path / "lab", "g2")
    assert other.public_openssh != hk.public_openssh
    with pytest.raises(GuestError):
        generate_host_key(tmp_path, "../evil")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Runs inside a private mount namespace: a tmpfs hides the host's /root, so the test's
# authorized_keys never touches the real /root/.ssh.
_NS_SCRIPT = """set -e
mount -t tmpfs -o mode=0700 tmpfs /root
mkdir -m 0700 /root/.ssh
cp "$1" /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
exec /usr/sbin/dropbear -F -E -s -r "$2" -p "$3"
"""


@pytest.fixture
def dropbear_server(tmp_path: Path) -> Iterator[tuple[int, HostKey, ClientKey]]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    client = ensure_client_key(tmp_path / "client")
    host = generate_host_key(tmp_path / "host", "loop")
    auth = tmp_path / "authorized_keys"
    auth.write_text(client.public_openssh + "\n")
    port = _free_port()
    log = (tmp_path / "dropbear.log").open("wb")
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", _NS_SCRIPT, "sh"]
    argv += [str(auth), str(host.dropbear_path), f"127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dropbear exited: {(tmp_path / 'dropbear.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("dropbear did not listen within 10 s")
                time.sleep(0.05)
        yield port, host, client
    finally:
        proc.terminate()  # unshare execs sh which execs dropbear: this PID is dropbear
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _client(port: int, pinned: paramiko.PKey) -> paramiko.SSHClient:
    c = paramiko.SSHClient()
    c.get_host_keys().add(f"[127.0.0.1]:{port}", pinned.get_name(), pinned)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    return c


@needs_dropbear
def test_dropbear_serves_host_key_and_accepts_client_key(
    dropbear_server: tuple[int, HostKey, ClientKey],
) -> None:
    port, host, client = dropbear_server
    c = _client(port, public_pkey(host.public_openssh))
    try:
        c.connect(
            "127.0.0.1",
            port=port,
            username="root",
            pkey=load_pkey(client.path),
            allow_agent=False,
            look_for_keys=False,
            timeout=10,
        )
        _, out, _ = c.exec_command("echo ok", timeout=10)
        assert out.read().decode().strip() == "ok"
        assert out.channel.recv_exit_status() == 0
    finally:
        c.close()


@needs_dropbear
def test_wrong_pinned_host_key_is_refused(
    dropbear_server: tuple[int, HostKey, ClientKey], tmp_path: Path
) -> None:
    port, _host, client = dropbear_server
    wrong = generate_host_key(tmp_path / "other", "wrong")
    c = _client(port, public_pkey(wrong.public_openssh))
    try:
        with pytest.raises(paramiko.BadHostKeyException):
            c.connect(
                "127.0.0.1",
                port=port,
                username="root",
                pkey=load_pkey(client.path),
                allow_agent=False,
                look_for_keys=False,
                timeout=10,
            )
    finally:
        c.close()


# The safeguard itself, through GuestSession (what every lab command uses), not a test client.


@needs_dropbear
def test_guest_session_connects_only_with_the_pinned_host_key(
    dropbear_server: tuple[int, HostKey, ClientKey], tmp_path: Path
) -> None:
    port, host, client = dropbear_server
    key = load_pkey(client.path)
    right = GuestSession(GuestAddress("loop", "127.0.0.1", host.public_openssh, port=port), key)
    with right.connect(10) as s:
        assert s.check("echo pinned").strip() == "pinned"
    other = generate_host_key(tmp_path / "other", "other")
    wrong = GuestSession(GuestAddress("loop", "127.0.0.1", other.public_openssh, port=port), key)
    with pytest.raises(GuestError, match="not the pinned one"):
        wrong.connect(5)
