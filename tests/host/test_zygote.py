"""The Dom0 fork server, run for real on the host with a probe module in place of xenvlan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenvlan.host.sandbox.xen import zygote

SCRIPT = Path(zygote.__file__)
PROBE = textwrap.dedent(
    """
    import os, sys, time
    if sys.argv[1:2] == ["sleep"]:
        print("sleeping", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(42)
    print("argv", sys.argv[1:])
    print("cwd", os.getcwd())
    print("env", os.environ.get("PROBE_VALUE"))
    print("stdin", sys.stdin.read().strip())
    print("version", VERSION)
    print("ppid", os.getppid())
    print("to stderr", file=sys.stderr)
    sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
    """
)


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    pkg = tmp_path / "lib" / "zprobe"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("VERSION = 1\n" + PROBE)
    return pkg


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "lib"),
        "XENVLAN_ZYGOTE_MODULE": "zprobe",
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


@pytest.fixture
def server(tmp_path: Path, probe: Path) -> Iterator[Path]:
    sock = tmp_path / "z.sock"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", str(sock)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("zygote: serving on"), line
        assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o600
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
    assert not sock.exists(), "the server left its socket behind"


def _client(sock: Path, tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-S", str(SCRIPT), "client", str(sock), *argv], tmp_path, **env)


def _run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=_env(tmp_path, **env),
        cwd=tmp_path,
        input="from stdin\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_request_roundtrip_and_malformed_requests() -> None:
    req = zygote.encode_request(["up", "--json"], {"A": "1"}, "/tmp")
    assert zygote.decode_request(req[4:]) == (["up", "--json"], {"A": "1"}, "/tmp")
    for bad in (
        b'{"argv": "up", "env": {}, "cwd": "/"}',
        b'{"argv": [], "env": {"A": 1}, "cwd": "/"}',
    ):
        with pytest.raises(ValueError):
            zygote.decode_request(bad)


def test_exit_code_of_a_signal_is_128_plus_n() -> None:
    assert zygote.exit_code(3 << 8) == 3
    assert zygote.exit_code(signal.SIGKILL) == 128 + signal.SIGKILL


def test_nothing_of_xenvlan_is_preloaded() -> None:
    """Safeguard: each request imports xenvlan fresh, so an edited checkout is always run."""
    assert not [m for m in zygote.PRELOAD if m.split(".")[0] == "xenvlan"]


def test_served_run_is_the_direct_run(server: Path, tmp_path: Path) -> None:
    """argv, cwd, environment, stdin, stdout, stderr and the exit code all go through."""
    served = _client(server, tmp_path, "x y", "--z", PROBE_VALUE="v1", PROBE_EXIT="5")
    direct = _run(
        [sys.executable, "-m", "zprobe", "x y", "--z"], tmp_path, PROBE_VALUE="v1", PROBE_EXIT="5"
    )
    assert served.returncode == direct.returncode == 5

    def same(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if not ln.startswith("ppid ")]

    assert same(served.stdout) == same(direct.stdout)
    assert "argv ['x y', '--z']" in served.stdout and "env v1" in served.stdout
    assert f"cwd {tmp_path}" in served.stdout and "stdin from stdin" in served.stdout
    assert served.stderr == direct.stderr == "to stderr\n"


def test_each_request_imports_the_module_fresh(server: Path, tmp_path: Path, probe: Path) -> None:
    assert "version 1" in _client(server, tmp_path).stdout
    (probe / "__main__.py").write_text("VERSION = 2\n" + PROBE)
    assert "version 2" in _client(server, tmp_path).stdout


def test_ctrl_c_reaches_the_served_child(server: Path, tmp_path: Path) -> None:
    """Safeguard: SIGINT to the client (what the host's Ctrl-C sends) interrupts the command."""
    proc = subprocess.Popen(
        [sys.executable, "-S", str(SCRIPT), "client", str(server), "sleep"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "sleeping"
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42 and "interrupted" in out


def test_without_a_server_the_client_runs_the_module_itself(tmp_path: Path, probe: Path) -> None:
    res = _client(tmp_path / "absent.sock", tmp_path, "a", PROBE_EXIT="3")
    assert res.returncode == 3 and "argv ['a']" in res.stdout


def test_a_bad_request_does_not_stop_the_server(server: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(server))
        s.sendall(b"garbage without descriptors")
    time.sleep(0.3)
    assert _client(server, tmp_path, PROBE_EXIT="0").returncode == 0


def test_the_start_line_returns_at_once_and_leaves_a_server(tmp_path: Path, probe: Path) -> None:
    """Safeguard: the backgrounded server holds no descriptor of the shell (an SSH channel)."""
    from xenvlan.host.sandbox.xen.remote import zygote_command

    sock, log = tmp_path / "z.sock", tmp_path / "z.log"
    line = zygote_command(
        env={"PYTHONPATH": str(tmp_path / "lib"), "XENVLAN_ZYGOTE_MODULE": "zprobe"},
        python=sys.executable,
        script=str(SCRIPT),
        sock=str(sock),
        log=str(log),
    )
    t = time.monotonic()
    subprocess.run(["sh", "-c", line], capture_output=True, timeout=20, check=True)
    assert time.monotonic() - t < 10
    for _ in range(200):
        if "serving on" in log.read_text():
            break
        time.sleep(0.05)
    pid = int(log.read_text().split("(pid ")[1].split(")")[0])
    try:
        assert _client(sock, tmp_path, "x").returncode == 0
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not sock.exists():
            break
        time.sleep(0.05)
    assert not sock.exists()


def test_a_client_waits_for_a_server_still_importing(tmp_path: Path, probe: Path) -> None:
    """Safeguard: a command run right after `sandbox start` uses the server, not the fallback."""
    sock = tmp_path / "z.sock"
    importing = subprocess.Popen(["sleep", "30"])  # stands in for the server's pid while importing
    (tmp_path / "z.sock.pid").write_text(f"{importing.pid}\n")
    client = subprocess.Popen(
        [sys.executable, "-S", str(SCRIPT), "client", str(sock), "x"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(1.0)  # the client has seen no socket, only the pid of a server to come
    server = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", str(sock)],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = client.communicate(timeout=30)
        assert f"ppid {server.pid}" in out, out
    finally:
        server.terminate()
        server.wait(timeout=10)
        importing.kill()
        importing.wait()
    assert not sock.exists()


def test_a_dead_starting_server_is_not_waited_for(tmp_path: Path, probe: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / "z.sock.pid").write_text(dead + "\n")
    t = time.monotonic()
    res = _client(tmp_path / "z.sock", tmp_path, "y")
    assert res.returncode == 0 and "argv ['y']" in res.stdout
    assert time.monotonic() - t < 20
