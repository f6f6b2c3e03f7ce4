"""A fork server for the nested Dom0: pay the third-party imports once, not once per command.

Under TCG a PV Dom0 spends 10-20 s importing paramiko, pyroute2, libvirt and typer for every
`xenvlan` command. `serve` (started in the Dom0 after boot) imports them once and forks a child
per request; `client` (what each remote command execs, with `python3 -S`, so it costs about a
second) hands the server its argv, environment, working directory and its stdin/stdout/stderr
(SCM_RIGHTS), forwards SIGINT/SIGTERM/SIGHUP to the child and exits with the child's status.
The child imports xenvlan itself fresh, so a changed checkout or environment is always seen.
When no server answers, the client simply execs `python3 -m xenvlan` (same result, slower).

Run by path, never imported through the xenvlan package: stdlib only.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import NoReturn

#: Imported once by the server (everything slow that xenvlan's verbs need, nothing of xenvlan's).
PRELOAD: tuple[str, ...] = (
    "paramiko",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "pyroute2",
    "libvirt",
    "typer",
    "typer._adapters",  # typer imports these (pydantic among them) at run time, ~2.4 s
    "typer.rich_utils",
    "pydantic",
    "rich.console",
    "rich.table",
    "rich.markdown",
    "rich.syntax",
    "rich.traceback",
    "rich.panel",
    "rich.pretty",
    "pygments.lexers",
    "jinja2",
    "zoneinfo",
    "gzip",
    "secrets",
    "html",
    "runpy",
    "xml.etree.ElementTree",
    "concurrent.futures",
    "ipaddress",
    "tomllib",
)
#: The module a request runs (`python3 -m MODULE ARGV`); tests point it at a probe module.
MODULE = os.environ.get("XENVLAN_ZYGOTE_MODULE", "xenvlan")
_HEADER = struct.Struct("!I")
_MAX_REQUEST = 1 << 20
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_code(wait_status: int) -> int:
    """A shell-style exit code from a wait status (128+N for a signal)."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def encode_request(argv: list[str], env: dict[str, str], cwd: str) -> bytes:
    """A length-prefixed JSON request."""
    body = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
    return _HEADER.pack(len(body)) + body


def decode_request(data: bytes) -> tuple[list[str], dict[str, str], str]:
    """The inverse of `encode_request` (ValueError on anything malformed)."""
    obj = json.loads(data)
    argv, env, cwd = obj["argv"], obj["env"], obj["cwd"]
    if not (
        isinstance(argv, list)
        and all(isinstance(a, str) for a in argv)
        and isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        and isinstance(cwd, str)
    ):
        raise ValueError("malformed request")
    return argv, env, cwd


# -- client ---------------------------------------------------------------------------------------


def _fallback(argv: list[str]) -> NoReturn:
    os.execvp(sys.executable, [sys.executable, "-m", MODULE, *argv])


def pid_file(path: str) -> str:
    """Where the starting server's pid is (written by its start line, removed at its exit)."""
    return f"{path}.pid"


def wait_for_server(path: str, deadline_s: float = 90.0) -> None:
    """While a server is still importing (its pid alive, no socket yet), wait for its socket:
    a command run meanwhile would otherwise pay the same imports, competing for the CPU."""
    end = time.monotonic() + deadline_s
    while not os.path.exists(path) and time.monotonic() < end:
        try:
            with open(pid_file(path)) as f:
                os.kill(int(f.read().strip()), 0)
        except (OSError, ValueError):
            return  # no server starting (or it died): run without it
        time.sleep(0.2)


def client(path: str, argv: list[str]) -> NoReturn:
    """Run `xenvlan ARGV` through the server at `path` (or directly when none answers)."""
    wait_for_server(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        _fallback(argv)  # no server (yet): nothing ran
    try:
        req = encode_request(argv, dict(os.environ), os.getcwd())
        sent = socket.send_fds(sock, [req[:4096]], [0, 1, 2])
        sock.sendall(req[sent:])
        reader = sock.makefile("rb")
        first = reader.readline().split()
    except OSError as exc:
        print(f"xenvlan: error: the Dom0's fork server failed: {exc}", file=sys.stderr)
        os._exit(255)
    if len(first) != 2 or first[0] != b"pid":
        _fallback(argv)  # the server refused the request before forking: nothing ran
    child = int(first[1])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            line = reader.readline().split()
        except InterruptedError:
            continue
        if len(line) == 2 and line[0] == b"exit":
            os._exit(int(line[1]))
        if not line:
            print("xenvlan: error: the Dom0's fork server went away", file=sys.stderr)
            os._exit(255)


# -- server ---------------------------------------------------------------------------------------


def _recv_request(conn: socket.socket) -> tuple[list[str], dict[str, str], str, list[int]]:
    msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 3)
    try:
        if len(fds) != 3 or len(msg) < _HEADER.size:
            raise ValueError("a request carries three descriptors and a header")
        (size,) = _HEADER.unpack_from(msg)
        if size > _MAX_REQUEST:
            raise ValueError("request too large")
        body = bytearray(msg[_HEADER.size :])
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated request")
            body += chunk
        argv, env, cwd = decode_request(bytes(body))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return argv, env, cwd, fds


def _child(argv: list[str], env: dict[str, str], cwd: str, fds: list[int]) -> NoReturn:
    """In the forked child: become `python3 -m xenvlan ARGV` and exit as it would."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    code = 1
    try:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["xenvlan", *argv]
        sys.path.insert(0, cwd)  # as `python3 -m` does
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code & 0xFF)


def serve(path: str) -> int:
    """Preload, listen on `path` (0600), fork a child per request; runs until killed."""
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if threading.active_count() != 1:
        print("zygote: a preloaded module started a thread; not serving", file=sys.stderr)
        with contextlib.suppress(OSError):
            os.unlink(pid_file(path))
        return 3
    tmp = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(tmp)
    finally:
        os.umask(old)
    listener.listen(16)
    os.replace(tmp, path)
    me, ino = os.getpid(), os.stat(path).st_ino

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"zygote: serving on {path} (pid {me})", flush=True)
    try:
        _loop(listener)
    finally:
        if os.getpid() == me:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == ino:  # not a newer server's
                    os.unlink(path)
                    os.unlink(pid_file(path))
    return 0


def _loop(listener: socket.socket) -> None:
    children: dict[int, socket.socket] = {}
    while True:
        ready, _, _ = select.select([listener], [], [], 0.2)
        if ready:
            conn, _addr = listener.accept()
            conn.settimeout(10)  # a silent client cannot stall the server for long
            try:
                argv, env, cwd, fds = _recv_request(conn)
            except (OSError, ValueError) as exc:
                print(f"zygote: bad request: {exc}", file=sys.stderr, flush=True)
                conn.close()
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                _child(argv, env, cwd, fds)
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                conn.sendall(b"pid %d\n" % pid)
            children[pid] = conn
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid)
            with contextlib.suppress(OSError):
                conn.sendall(b"exit %d\n" % exit_code(status))
            conn.close()


def main(args: list[str]) -> int:
    """`serve SOCKET` or `client SOCKET ARGV...`."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # run by path: its directory is not an import root
    if len(args) >= 2 and args[0] == "serve":
        return serve(args[1])
    if len(args) >= 2 and args[0] == "client":
        client(args[1], args[2:])
    print("usage: zygote.py serve SOCKET | client SOCKET ARGV...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
