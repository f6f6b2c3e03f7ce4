"""One SSH session per guest (paramiko): pinned host key, quoted command execution."""

from __future__ import annotations

import base64
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paramiko

from xenvlan.errors import GuestError
from xenvlan.guest.shell import CommandResult
from xenvlan.timeouts import scale

MAX_INLINE_COMMAND = 4096


@dataclass(frozen=True)
class GuestAddress:
    """How to reach a guest: name, management IP and its pinned SSH host key."""

    name: str
    host: str
    host_key: str  # "ssh-ed25519 AAAA..."
    port: int = 22


def _pinned(host_key: str) -> paramiko.PKey:
    parts = host_key.split()
    if len(parts) < 2:
        raise GuestError(f"pinned host key {host_key[:30]!r} is not an OpenSSH public key line")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except (ValueError, paramiko.SSHException) as exc:
        raise GuestError(f"pinned host key is unusable: {exc}") from None


@contextlib.contextmanager
def _quiet_paramiko() -> Iterator[None]:
    """Silence paramiko's per-attempt tracebacks ("Error reading SSH protocol banner") while a
    booting guest refuses or drops connections; our own error says what went wrong."""
    logger = logging.getLogger("paramiko")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


class GuestSession:
    """An SSH connection to one guest; refuses any host key but the pinned one."""

    def __init__(self, addr: GuestAddress, key: paramiko.PKey) -> None:
        self.addr = addr
        self._key = key
        self._client: paramiko.SSHClient | None = None

    @property
    def name(self) -> str:
        """The guest's name in the lab."""
        return self.addr.name

    def connect(self, deadline_s: float = 30.0) -> GuestSession:
        """Connect, retrying refused/unreachable until the deadline; a wrong host key is fatal.

        Every timeout here is multiplied by $XENVLAN_TIMEOUT_SCALE.
        """
        with _quiet_paramiko():
            return self._connect(deadline_s)

    def _connect(self, deadline_s: float) -> GuestSession:
        pinned = _pinned(self.addr.host_key)
        factor = scale()
        deadline_s *= factor
        end = time.monotonic() + deadline_s
        last = "no attempt"
        while True:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            target = (
                self.addr.host if self.addr.port == 22 else f"[{self.addr.host}]:{self.addr.port}"
            )
            client.get_host_keys().add(target, pinned.get_name(), pinned)
            remaining = max(1.0, end - time.monotonic())
            try:
                client.connect(
                    self.addr.host,
                    port=self.addr.port,
                    username="root",
                    pkey=self._key,
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=min(5.0 * factor, remaining),
                    banner_timeout=min(10.0 * factor, remaining),
                    auth_timeout=min(10.0 * factor, remaining),
                )
                transport = client.get_transport()
                if transport is not None:
                    transport.set_keepalive(15)
                    if isinstance(transport.sock, socket.socket):
                        # Else every command pays Nagle + delayed ACK: ~56 ms -> ~12 ms.
                        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._client = client
                return self
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise GuestError(
                    f"guest {self.name} ({self.addr.host}) presented host key "
                    f"{exc.key.get_fingerprint().hex()[:16]}..., not the pinned one: "
                    "refusing to connect"
                ) from None
            except paramiko.AuthenticationException as exc:
                client.close()
                raise GuestError(
                    f"guest {self.name}: SSH key authentication failed: {exc}"
                ) from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                last = str(exc) or type(exc).__name__
            if time.monotonic() >= end:
                raise GuestError(
                    f"guest {self.name}: no SSH on {self.addr.host}:{self.addr.port} "
                    f"within {deadline_s:.0f}s (last: {last})"
                )
            time.sleep(0.2)

    def run(self, command: str, *, timeout: float = 30.0) -> CommandResult:
        """Run a shell command line in the guest; the caller quotes its arguments.

        `timeout` is multiplied by $XENVLAN_TIMEOUT_SCALE.
        """
        if self._client is None:
            raise GuestError(f"guest {self.name}: not connected")
        timeout *= scale()
        try:
            if len(command) > MAX_INLINE_COMMAND:
                # dropbear refuses command lines over 9000 bytes: feed long scripts on stdin.
                stdin, stdout, stderr = self._client.exec_command("/bin/sh -s", timeout=timeout)
                stdin.write(command.encode())
                stdin.channel.shutdown_write()
            else:
                _stdin, stdout, stderr = self._client.exec_command(command, timeout=timeout)
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except TimeoutError:
            raise GuestError(
                f"guest {self.name}: command did not finish within {timeout:.0f}s: {command[:80]}"
            ) from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise GuestError(f"guest {self.name}: SSH failed: {exc!r}") from None
        return CommandResult(exit_status=status, stdout=out, stderr=err)

    def check(self, command: str, *, timeout: float = 30.0) -> str:
        """Run and require exit status 0; return stdout."""
        res = self.run(command, timeout=timeout)
        if res.exit_status != 0:
            detail = (res.stderr or res.stdout).strip().splitlines()
            raise GuestError(
                f"guest {self.name}: `{command[:80]}` exited {res.exit_status}"
                + (f": {detail[-1]}" if detail else "")
            )
        return res.stdout

    def __call__(self, command: str, *, timeout: float) -> CommandResult:
        """A GuestShell: lets probes run commands through this session."""
        return self.run(command, timeout=timeout)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> GuestSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
