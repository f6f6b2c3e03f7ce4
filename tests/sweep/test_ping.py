"""Ping parsing on recorded real outputs, argv building, and the batching prober on loopback."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from xenvlan.errors import GuestError, SpecError
from xenvlan.guest.shell import CommandResult
from xenvlan.sweep.ping import (
    DETECT_COMMAND,
    GuestProber,
    PingResult,
    PingTool,
    parse_detect,
    parse_ping,
    ping_argv,
)

DATA = Path(__file__).parents[1] / "data" / "ping"


def recorded(name: str) -> tuple[dict[str, str], str]:
    """Header fields and the raw output of one recorded file."""
    head, _, body = (DATA / f"{name}.txt").read_text().partition("# ---\n")
    fields = {}
    for line in head.splitlines():
        key, _, value = line.removeprefix("# ").partition(": ")
        fields[key] = value
    return fields, body


def size_of(fields: dict[str, str]) -> int:
    argv = shlex.split(fields["argv"])
    return int(argv[argv.index("-s") + 1])


# name -> (sent, received, rtt_avg_ms, error, local_error)
EXPECTED: dict[str, tuple[int, int, float | None, str | None, bool]] = {
    "iputils-ok-loopback": (3, 3, 0.011, None, False),
    "iputils-ok": (3, 3, 0.052, None, False),
    "iputils-ok-fragmented": (3, 3, 0.027, None, False),
    "iputils-partial": (3, 2, 0.033, None, False),
    "iputils-loss": (3, 0, None, None, False),
    "iputils-loss-frac-w": (3, 0, None, None, False),
    "iputils-loss-deadline": (99, 0, None, None, False),
    "iputils-local-msgsize": (3, 0, None, "local: message too long, mtu=1500", True),
    "iputils-frag-needed": (3, 0, None, "frag-needed mtu=1400", False),
    "iputils-host-unreachable": (7, 0, None, "unreachable", False),
    "iputils-net-unreachable": (0, 0, None, "network-unreachable", True),
    "iputils-old-ok": (3, 3, 0.442, None, False),
    "iputils-old-loss": (3, 0, None, None, False),
    "iputils-old-local-msgsize": (3, 0, None, "local: message too long, mtu=1500", True),
    "busybox-ok": (3, 3, 0.044, None, False),
    "busybox-ok-fragmented": (3, 3, 0.056, None, False),
    "busybox-partial": (3, 2, 0.039, None, False),
    "busybox-loss": (3, 0, None, None, False),
    "busybox-loss-sigint": (3, 0, None, None, False),
    "busybox-frag-needed": (3, 2, 0.159, None, False),
    "busybox-host-unreachable": (3, 0, None, None, False),
    "busybox-net-unreachable": (0, 0, None, "network-unreachable", True),
    "busybox-issue-ok": (3, 3, 0.512, None, False),
}


def test_every_recorded_file_has_an_expectation() -> None:
    assert {p.stem for p in DATA.glob("*.txt")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_recorded(name: str) -> None:
    fields, body = recorded(name)
    size = size_of(fields)
    sent, received, rtt, error, local = EXPECTED[name]
    assert parse_ping(body, size) == PingResult(size, sent, received, rtt, error, local)


def test_parse_reply_lines_without_summary() -> None:
    out = (
        "PING 10.0.0.2 (10.0.0.2) 1476(1504) bytes of data.\n"
        "1484 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.500 ms\n"
        "1484 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.300 ms\n"
        "1484 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.300 ms (DUP!)\n"
    )
    assert parse_ping(out, 1476) == PingResult(1476, 2, 2, 0.4, None, False)


def test_parse_tiny_payload_and_ipg_line() -> None:
    out = (
        "PING 127.0.0.1 (127.0.0.1) 0(28) bytes of data.\n"
        "8 bytes from 127.0.0.1: icmp_seq=1 ttl=64\n\n"
        "--- 127.0.0.1 ping statistics ---\n"
        "1 packets transmitted, 1 received, 0% packet loss, time 0ms\n"
    )
    assert parse_ping(out, 0) == PingResult(0, 1, 1, None, None, False)
    ipg = "rtt min/avg/max/mdev = 0.003/0.006/0.009/0.003 ms, ipg/ewma 0.028/0.008 ms"
    assert parse_ping(ipg, 56).rtt_avg_ms == 0.006


def test_parse_remote_net_unreachable_is_not_local() -> None:
    out = "From 10.0.0.254 icmp_seq=1 Destination Net Unreachable\n"
    r = parse_ping(out, 100)
    assert (r.error, r.local_error, r.passed) == ("net-unreachable", False, False)


def test_ping_argv_iputils() -> None:
    argv = ping_argv(
        "iputils", "10.0.0.2", 1477, count=3, timeout_s=0.25, interval_s=0.002, df="do",
        ping_path="/usr/bin/ping",
    )  # fmt: skip
    assert argv == [
        "/usr/bin/ping", "-n", "-c", "3", "-s", "1477", "-i", "0.002", "-W", "0.25",
        "-M", "do", "10.0.0.2",
    ]  # fmt: skip


def test_ping_argv_whole_seconds_for_busybox_and_old_iputils() -> None:
    bb = ping_argv("busybox", "h", 10, count=2, timeout_s=0.3, interval_s=None, df=None,
                   ping_path="/bin/busybox")  # fmt: skip
    assert bb == ["/bin/busybox", "ping", "-c", "2", "-s", "10", "-W", "1", "h"]
    old = ping_argv("iputils", "h", 10, count=2, timeout_s=1.5, interval_s=0.2, df=None,
                    ping_path="ping", fractional_timeout=False)  # fmt: skip
    assert old[old.index("-W") + 1] == "2"


@pytest.mark.parametrize(
    ("impl", "size", "df"), [("busybox", 10, "do"), ("iputils", 65508, None), ("iputils", -1, None)]
)
def test_ping_argv_rejects(impl: str, size: int, df: str | None) -> None:
    with pytest.raises(SpecError):
        ping_argv(impl, "h", size, count=1, timeout_s=1, interval_s=None, df=df,  # type: ignore[arg-type]
                  ping_path="ping")  # fmt: skip


def test_parse_detect() -> None:
    new = parse_detect("impl iputils\nping from iputils 20221126\nuid 0\n")
    assert new == PingTool("iputils", "/usr/bin/ping", 20221126, True, 0.002)
    old = parse_detect("impl iputils\nping utility, iputils-s20161105\nuid 1000\n")
    assert old == PingTool("iputils", "/usr/bin/ping", 20161105, False, 0.2)
    assert parse_detect("impl busybox busybox\nuid 0\n").impl == "busybox"
    with pytest.raises(GuestError):
        parse_detect("impl none\nuid 0\n")


def local_runner(command: str, *, timeout: float) -> CommandResult:
    """Runs the batch on this host, as a guest would: /bin/sh -c."""
    p = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout,
                       check=False)  # fmt: skip
    return CommandResult(p.returncode, p.stdout, p.stderr)


needs_ping = pytest.mark.skipif(
    not (Path("/usr/bin/ping").exists() and os.geteuid() == 0), reason="needs root and iputils"
)


@needs_ping
def test_prober_detects_and_batches_on_loopback() -> None:
    # A DF mode needs iputils -M, so detection must pick iputils even when busybox is there.
    prober = GuestProber(local_runner, "127.0.0.1", timeout_s=1.0, df="want")
    sizes = [0, 56, 1472, 1473, 9000, 65507]
    results = prober.probe(sizes, count=[2, 1, 2, 1, 2, 3])
    assert prober.tool.impl == "iputils"
    assert [r.size for r in results] == sizes
    assert [r.sent for r in results] == [2, 1, 2, 1, 2, 3], results
    assert all(r.passed for r in results), results
    assert prober.commands == 2  # one detection, one batch


def test_detection_prefers_busybox_without_df() -> None:
    both = "impl iputils\nping from iputils 20221126\nimpl busybox busybox\nuid 0\n"
    assert parse_detect(both).impl == "busybox"
    assert parse_detect(both).path == "busybox"
    assert parse_detect(both, df="do").impl == "iputils"
    assert parse_detect(both, df="do").version == 20221126
    # only busybox: returned even with a DF mode (the prober then refuses the DF mode)
    assert parse_detect("impl busybox ping\nuid 0\n", df="do").impl == "busybox"


@needs_ping
def test_detect_command_runs_in_sh() -> None:
    out = local_runner(DETECT_COMMAND, timeout=10).stdout
    assert "impl iputils" in out and "uid " in out
    assert parse_detect(out, df="want").impl == "iputils"
    if shutil.which("busybox"):
        assert parse_detect(out).impl == "busybox"


def test_batch_counts_per_size_and_one_watchdog() -> None:
    prober = GuestProber(local_runner, "h", impl="busybox", timeout_s=0.3)
    cmd = prober.batch_command([10, 20, 30], [1, 3, 1])
    assert cmd.count("kill -INT") == 1
    assert "kill -INT $p0 $p1 $p2" in cmd
    assert "-c 3 -s 20 -i 0.002 -W 1" in cmd and "-c 1 -s 30 -i 0.002 -W 1" in cmd
    assert "cat 0 1 2" in cmd
    with pytest.raises(SpecError):
        prober.batch_command([10, 20], [1])
    iputils = GuestProber(local_runner, "h", impl="iputils", timeout_s=0.3)
    assert "kill" not in iputils.batch_command([10], 1)  # fractional -W: no watchdog


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
@needs_ping
def test_busybox_batch_with_watchdog_on_loopback() -> None:
    """busybox -W is whole seconds, so the batch arms a SIGINT watchdog (see the netns test)."""
    prober = GuestProber(local_runner, "127.0.0.1", impl="busybox", ping_path="busybox",
                         timeout_s=0.3)  # fmt: skip
    cmd = prober.batch_command([56], 3)
    assert "kill -INT" in cmd
    t0 = time.monotonic()
    (r,) = prober.probe([56], count=3)
    assert r.received == 3
    assert time.monotonic() - t0 < 0.9  # returns when ping does, not when the watchdog fires


def test_prober_rejects_df_with_busybox() -> None:
    with pytest.raises(SpecError):
        GuestProber(local_runner, "h", impl="busybox", df="do")


def test_prober_reports_broken_batch() -> None:
    def broken(command: str, *, timeout: float) -> CommandResult:
        return CommandResult(127, "", "sh: mktemp: not found")

    prober = GuestProber(broken, "h", impl="iputils")
    with pytest.raises(GuestError, match="mktemp"):
        prober.probe([1, 2], count=1)


def test_batch_quotes_every_argument() -> None:
    prober = GuestProber(local_runner, "10.0.0.2; rm -rf /", impl="iputils")
    cmd = prober.batch_command([100], 1)
    assert "'10.0.0.2; rm -rf /'" in cmd
