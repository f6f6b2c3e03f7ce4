"""Guarantees that need no libvirt: hostile CLI values, libvirtd away, shell injection through a
real /bin/sh, and no password authentication anywhere.

The CLI runs in a private mount namespace whose /run/libvirt is an empty tmpfs, so any attempt
to reach libvirt fails (exit 3) instead of finding a real daemon: a bad value must be refused
(exit 2) before that, in one line, leaving the run/state/cache directories empty.
"""

from __future__ import annotations

import ast
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xenvlan.guest import vlan
from xenvlan.guest.session import GuestSession
from xenvlan.guest.shell import CommandResult
from xenvlan.sweep.ping import GuestProber

REPO = Path(__file__).resolve().parents[1]
ENTRY = "from xenvlan.cli import main; main()"

needs_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)


def _xenvlan(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a mount namespace where no libvirtd can be reached."""
    env = {
        **os.environ,
        "XENVLAN_RUN_DIR": str(tmp / "run"),
        "XENVLAN_STATE_DIR": str(tmp / "state"),
        "XENVLAN_CACHE_DIR": str(tmp / "cache"),
        "XENVLAN_NO_SANDBOX": "1",
        "HOME": str(tmp / "home"),
        "COLUMNS": "200",
    }
    hide = 'mount -t tmpfs xenvlan-test /run/libvirt 2>/dev/null || true; exec "$@"'
    argv = ["unshare", "-m", "sh", "-c", hide, "sh", sys.executable, "-c", ENTRY, *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def _one_line(res: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenvlan: error: "), res.stderr
    assert res.returncode == code, (res.returncode, res.stderr)
    return lines[0]


def _nothing_made(tmp: Path) -> None:
    made = [p for p in tmp.rglob("*") if p.name != "home"]
    assert made == [], made


HOSTILE_NAMES = [
    "x;reboot",
    "$(touch /tmp/xenvlan-pwned)",
    "`id`",
    "<a/>",
    "a'b",
    '"a"',
    "../../etc",
    "a/b",
    "a\nb",
    "ä",
    "a" * 200,
    "A",
    "",
]
BAD_VALUES = [
    ("sweep", "--from", "-1"),
    ("sweep", "--to", "70000"),
    ("sweep", "--from", "2000", "--to", "1000"),
    ("sweep", "--count", "0"),
    ("sweep", "--count", "100000"),
    ("sweep", "--count", "99999999999999999999999999"),
    ("sweep", "--from", "1e3"),
    ("sweep", "--df", "maybe; reboot"),
    ("sweep", "--path", "../vlan"),
    ("repro", "--port-mtu", "10"),
    ("repro", "--port-mtu", "70000"),
    ("repro", "--from", "-1"),
    ("repro", "--to", "70000"),
    ("repro", "--count", "0"),
    ("repro", "--method", "rm -rf /"),
    ("repro", "--scenario", "host; reboot"),
    ("repro", "--emulate", "legacy-vlan; reboot"),
    ("up", "--xen-mode", "pv;reboot"),
    ("up", "--connect", "qemu:///system?socket=/tmp/x"),
    ("fix", "apply", "--method", "$(reboot)"),
]
NAME_VERBS = [("down", "--name"), ("status", "--name"), ("sweep", "--name"), ("ssh", "--name")]


@needs_unshare
@pytest.mark.parametrize("args", BAD_VALUES, ids=[" ".join(a) for a in BAD_VALUES])
def test_out_of_range_values(tmp_path: Path, args: tuple[str, ...]) -> None:
    _one_line(_xenvlan(tmp_path, *args), 2)
    _nothing_made(tmp_path)


@needs_unshare
@pytest.mark.parametrize("verb", [v for v, _ in NAME_VERBS])
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n)[:20] for n in HOSTILE_NAMES])
def test_hostile_lab_names(tmp_path: Path, verb: str, name: str) -> None:
    extra = ("a", "--", "true") if verb == "ssh" else ()
    line = _one_line(_xenvlan(tmp_path, verb, "--name", name, *extra), 2)
    assert "--name" in line
    _nothing_made(tmp_path)
    assert not Path("/tmp/xenvlan-pwned").exists()


@needs_unshare
@pytest.mark.parametrize("args", [("up",), ("down",), ("status",), ("repro",), ("sweep",)])
def test_libvirtd_not_running(tmp_path: Path, args: tuple[str, ...]) -> None:
    t0 = time.monotonic()
    line = _one_line(_xenvlan(tmp_path, *args), 3)
    assert time.monotonic() - t0 < 20
    assert "cannot connect to libvirt" in line
    assert "is libvirtd running?" in line and "xenvlan sandbox start" in line
    _nothing_made(tmp_path)


# -- injection through a real shell -------------------------------------------------------------

BREAKOUTS = [
    "$(touch {p})",
    "`touch {p}`",
    "eth0;touch {p}",
    "eth0 && touch {p}",
    "eth0|touch {p}",
    "eth0\ntouch {p}",
    "'; touch {p}; '",
    '"; touch {p}; "',
    "$(touch${{IFS}}{p})",
]


def _fake_tools(tmp: Path) -> tuple[Path, Path]:
    """ip/vconfig/ifconfig that only log their argv, one NUL-separated record per call."""
    bin_dir, log = tmp / "bin", tmp / "argv.log"
    bin_dir.mkdir()
    for tool in ("ip", "vconfig", "ifconfig"):
        f = bin_dir / tool
        f.write_text(f'#!/bin/sh\nprintf "%s\\0" {tool} "$@" >> "{log}"\nprintf "\\1" >> "{log}"\n')
        f.chmod(0o755)
    return bin_dir, log


def _run_sh(command: str, path: Path) -> None:
    """Run as a guest would (sh -c), in a scratch cwd: a break-out can only litter the tmp dir."""
    env = {"PATH": f"{path}:/usr/bin:/bin"}
    subprocess.run(
        ["sh", "-c", command], env=env, cwd=path, capture_output=True, timeout=10, check=False
    )


def _logged(log: Path) -> list[list[str]]:
    records = log.read_text().split("\1")
    return [r.rstrip("\0").split("\0") for r in records if r]


@pytest.mark.parametrize("tool", ["ip", "vconfig"])
@pytest.mark.parametrize("template", BREAKOUTS)
def test_vlan_commands_do_not_break_out(tmp_path: Path, tool: str, template: str) -> None:
    pwned = tmp_path / "PWNED"
    parent = template.format(p=pwned)
    bin_dir, log = _fake_tools(tmp_path)
    addr = ipaddress.IPv4Interface("11.11.4.2/24")
    build = vlan.ip_commands if tool == "ip" else vlan.vconfig_commands
    cmds = build(parent, 3, addr)
    _run_sh(" && ".join(cmds), bin_dir)  # exactly what vlan.setup sends to the guest
    assert not pwned.exists(), f"{parent!r} broke out of {cmds}"
    expected = (
        [
            ["ip", "link", "add", "link", parent, "name", f"{parent}.3", "type", "vlan", "id", "3"],
            ["ip", "addr", "add", "11.11.4.2/24", "dev", f"{parent}.3"],
            ["ip", "link", "set", f"{parent}.3", "up"],
        ]
        if tool == "ip"
        else [
            ["vconfig", "add", parent, "3"],
            ["ifconfig", f"{parent}.3", "11.11.4.2", "netmask", "255.255.255.0", "up"],
        ]
    )
    assert _logged(log) == expected
    assert [shlex.split(c) for c in cmds] == expected


@pytest.mark.parametrize("template", BREAKOUTS)
def test_interface_mtu_and_ssh_argv_do_not_break_out(tmp_path: Path, template: str) -> None:
    pwned = tmp_path / "PWNED"
    value = template.format(p=pwned)
    seen: list[str] = []

    def runner(command: str, *, timeout: float) -> CommandResult:
        seen.append(command)
        _run_sh(command, tmp_path)
        return CommandResult(0, "1500\n", "")

    vlan.interface_mtu(runner, value, "a")
    # `xenvlan ssh a -- ARGS`: the argv is joined with shlex.join before it reaches the guest.
    _run_sh(shlex.join(["printf", "%s", value]), tmp_path)
    assert not pwned.exists(), f"{value!r} broke out of {seen}"


def _unused_runner(command: str, *, timeout: float) -> CommandResult:
    raise AssertionError("the batch is run by the test's own shell")


@pytest.mark.parametrize("template", BREAKOUTS)
def test_ping_batch_does_not_break_out(tmp_path: Path, template: str) -> None:
    pwned = tmp_path / "PWNED"
    dst = template.format(p=pwned)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ping.log"
    fake = bin_dir / "ping"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" >> "{log}"\n')
    fake.chmod(0o755)
    prober = GuestProber(_unused_runner, dst, impl="iputils", ping_path=str(fake))
    _run_sh(prober.batch_command([100, 200], 1), bin_dir)
    assert not pwned.exists(), f"{dst!r} broke out of the ping batch"
    calls = log.read_text().split("\0")
    assert calls.count(dst) == 2, calls  # the destination arrives whole, once per size


# -- no password authentication anywhere ---------------------------------------------------------


def test_guest_dropbear_refuses_passwords() -> None:
    init = (REPO / "xenvlan" / "guest" / "init").read_text()
    starts = [ln for ln in init.splitlines() if re.search(r"(^|\s|/)dropbear\s", ln)]
    assert starts, "no dropbear start line found"
    for line in starts:
        assert re.search(r"\s-s(\s|$)", line), f"dropbear without -s: {line}"
    assert not re.search(r"\b(ch)?passwd\b", init), "init must not set passwords"
    image = "".join(p.read_text() for p in (REPO / "xenvlan" / "guest" / "image").glob("*.py"))
    for entry in re.findall(r'b"root:([^:]*):', image):
        assert entry in ("x", "*", "!"), f"root has a password field {entry!r}"
    assert "etc/shadow" not in image


def test_client_never_offers_passwords_agents_or_stray_keys() -> None:
    calls = []
    for path in (REPO / "xenvlan").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            kws = {k.arg: k.value for k in node.keywords}
            for secret in ("password", "passphrase"):  # only "no password" (None) may appear
                v = kws.get(secret)
                assert v is None or (isinstance(v, ast.Constant) and v.value is None), path
            if "pkey" in kws and "username" in kws:
                calls.append((path.name, kws))
    assert calls, "no SSH connect call found"
    for name, kws in calls:
        for flag in ("look_for_keys", "allow_agent"):
            v = kws.get(flag)
            assert isinstance(v, ast.Constant) and v.value is False, f"{name}: {flag}"
    assert GuestSession.connect.__doc__  # the one client: session.GuestSession.connect
