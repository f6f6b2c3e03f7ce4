"""SSH keys: the client key xenvlan logs in with and the guests' dropbear host keys."""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xenvlan.errors import GuestError
from xenvlan.host.run import run_checked
from xenvlan.paths import ensure_private_dir

CLIENT_KEY_NAME = "id_ed25519"
KEY_COMMENT = "xenvlan"


@dataclass(frozen=True)
class ClientKey:
    """The Ed25519 key xenvlan uses to log in to guests (OpenSSH format, 0600)."""

    path: Path
    public_openssh: str  # "ssh-ed25519 AAAA... xenvlan"


@dataclass(frozen=True)
class HostKey:
    """A guest's SSH host key in dropbear format and its public half for pinning."""

    dropbear_path: Path
    public_openssh: str  # "ssh-ed25519 AAAA..."


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically with `mode` (never readable by others on the way)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _public_line(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return raw.decode("ascii")


def ensure_client_key(directory: Path) -> ClientKey:
    """Return the client key in `directory`, generating it (Ed25519) on first use."""
    ensure_private_dir(directory)
    path = directory / CLIENT_KEY_NAME
    if path.exists():
        try:
            loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as e:
            raise GuestError(f"cannot read client key {path}: {e}") from e
        if not isinstance(loaded, Ed25519PrivateKey):
            raise GuestError(f"client key {path} is not an Ed25519 key")
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        key = loaded
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)
    public = f"{_public_line(key)} {KEY_COMMENT}"
    pub_path = directory / f"{CLIENT_KEY_NAME}.pub"
    if not pub_path.exists() or pub_path.read_text().strip() != public:
        _write_private(pub_path, (public + "\n").encode(), mode=0o644)
    return ClientKey(path=path, public_openssh=public)


def generate_host_key(directory: Path, name: str) -> HostKey:
    """Generate a fresh Ed25519 dropbear host key `<directory>/<name>_ed25519_host_key`."""
    if not name or "/" in name or name.startswith("."):
        raise GuestError(f"invalid host key name {name!r}")
    ensure_private_dir(directory)
    dest = directory / f"{name}_ed25519_host_key"
    with tempfile.TemporaryDirectory(dir=directory, prefix=".hostkey.") as tmp:
        tmp_key = Path(tmp) / "key"
        # dropbearkey creates the file itself (mode 0600) and refuses to overwrite.
        run_checked(
            ["dropbearkey", "-t", "ed25519", "-f", str(tmp_key)],
            "dropbearkey -t ed25519",
            error=GuestError,
        )
        out = run_checked(
            ["dropbearkey", "-y", "-f", str(tmp_key)], "dropbearkey -y", error=GuestError
        )
        public = next((ln for ln in out.splitlines() if ln.startswith("ssh-ed25519 ")), None)
        if public is None:
            raise GuestError("dropbearkey -y printed no ssh-ed25519 public key")
        tmp_key.chmod(0o600)
        os.replace(tmp_key, dest)
    # Keep only "type base64": dropbear appends "user@host" as a comment.
    return HostKey(dropbear_path=dest, public_openssh=" ".join(public.split()[:2]))


def load_pkey(path: Path) -> paramiko.PKey:
    """Load the client key for paramiko."""
    try:
        return paramiko.Ed25519Key.from_private_key_file(str(path))
    except (OSError, paramiko.SSHException) as e:
        raise GuestError(f"cannot load client key {path}: {e}") from e


def public_pkey(public_openssh: str) -> paramiko.PKey:
    """A paramiko public key from an "ssh-ed25519 AAAA..." line, for pinning host keys."""
    parts = public_openssh.split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise GuestError(f"not an ssh-ed25519 public key: {public_openssh[:40]!r}")
    try:
        return paramiko.Ed25519Key(data=base64.b64decode(parts[1], validate=True))
    except (ValueError, paramiko.SSHException) as e:
        raise GuestError(f"bad ssh-ed25519 public key: {e}") from e
