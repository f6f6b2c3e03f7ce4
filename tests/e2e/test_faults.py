"""Every exit path restores the host: kill -9, SIGINT and SIGTERM at each phase of `up`/`repro`.

The faults are injected at named points (`XENVLAN_FAULT=POINT:ACTION`, xenvlan/fault.py), so each
case is deterministic. After a kill -9 one `xenvlan down` must finish the job (libvirt metadata
plus the lab's journal entries); after SIGINT/SIGTERM nothing at all may be left. Either way the
full host snapshot (tests/e2e/hostsnap.py) must equal the one taken before.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import hostsnap
from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e

REPRO = ("repro", "--emulate", "legacy-vlan")
#: (command, fault point): every phase of `up` alone and of `repro` from nothing.
KILL_POINTS = [
    ("up", "after-define"),
    ("up", "after-start"),
    ("up", "after-vlan"),
    ("repro", "after-up"),
    ("repro", "after-emulate"),
    ("repro", "after-fix"),
    ("repro", "mid-sweep"),  # the sweep before the fix, emulation installed
    ("repro", "mid-sweep@2"),  # the sweep after the fix: emulation and fix both pending
]
#: (command, fault point:action, exit code): Ctrl-C and SIGTERM unwind through every finally.
SIGNAL_CASES = [
    ("up", "after-start:int", 130),
    ("up", "after-vlan:term", 143),
    ("repro", "after-emulate:term", 143),
    ("repro", "after-fix:int", 130),
    ("repro", "mid-sweep:int", 130),
    ("repro", "mid-sweep@2:term", 143),
]


def _argv(cmd: str) -> tuple[str, ...]:
    return REPRO if cmd == "repro" else ("up",)


@pytest.fixture(scope="module")
def clean(sandbox: Env) -> Iterator[dict[str, object]]:
    """The idle sandbox's snapshot (after one plain up/down, so libvirt's own lazily created
    state is part of it); every test must leave the host equal to it."""
    sandbox.xenvlan("up")
    sandbox.xenvlan("down")
    snap = hostsnap.snapshot(sandbox)
    yield snap
    sandbox.xenvlan("down", "--all", check=False)


def _assert_restored(env: Env, before: dict[str, object]) -> None:
    diff = hostsnap.differences(before, hostsnap.snapshot(env))
    assert not diff, "host not restored:\n" + "\n".join(diff)


@pytest.mark.parametrize(("cmd", "point"), KILL_POINTS, ids=[f"{c}-{p}" for c, p in KILL_POINTS])
def test_kill9_then_down_restores_everything(
    sandbox: Env, clean: dict[str, object], cmd: str, point: str
) -> None:
    env = hostsnap.with_vars(sandbox, XENVLAN_FAULT=f"{point}:kill")
    res = env.xenvlan(*_argv(cmd), check=False)
    assert res.returncode == -signal.SIGKILL, res.stderr
    left = hostsnap.differences(clean, hostsnap.snapshot(sandbox))
    assert left, f"kill -9 at {point} left nothing: the fault point was never reached"
    if point in ("after-fix", "mid-sweep@2"):
        # A pending journal: repro refuses to start over it and names the lab and the way out.
        again = sandbox.xenvlan(*REPRO, check=False)
        assert again.returncode == 5, again.stderr
        assert "left by lab seed" in again.stderr and "xenvlan down" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
    done = sandbox.xenvlan("down")  # ONE command finishes the job
    assert "lab seed down" in done.stdout
    if cmd == "repro" and point != "after-up":
        assert "host change" in done.stdout, done.stdout  # the journal was reverted by down
    _assert_restored(sandbox, clean)


@pytest.mark.parametrize(
    ("cmd", "fault", "code"), SIGNAL_CASES, ids=[f"{c}-{f}" for c, f, _ in SIGNAL_CASES]
)
def test_signal_unwinds_and_restores(
    sandbox: Env, clean: dict[str, object], cmd: str, fault: str, code: int
) -> None:
    env = hostsnap.with_vars(sandbox, XENVLAN_FAULT=fault)
    res = env.xenvlan(*_argv(cmd), check=False)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    _assert_restored(sandbox, clean)  # no `down` needed


def test_second_command_on_a_busy_lab_is_refused(
    sandbox: Env, clean: dict[str, object], tmp_path: Path
) -> None:
    """While `up` runs (held at a fault gate), every mutating command says busy and changes
    nothing; afterwards the `up` completes normally."""
    gate = tmp_path / "gate"
    env = hostsnap.with_vars(
        sandbox, XENVLAN_FAULT="after-define:wait", XENVLAN_FAULT_GATE=str(gate)
    )
    proc = hostsnap.popen(env, "up")
    try:
        hostsnap.wait_for(gate.with_name("gate.reached"), proc)
        during = hostsnap.snapshot(sandbox)
        for args in (
            ("down",),
            ("down", "--name", "seed"),
            ("down", "--all"),
            ("up",),
            REPRO,
            ("fix", "apply"),
            ("fix", "revert"),
        ):
            res = sandbox.xenvlan(*args, check=False)
            assert res.returncode == 6, (args, res.returncode, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and "lab seed busy" in lines[0], (args, res.stderr)
        assert not hostsnap.differences(during, hostsnap.snapshot(sandbox))
        gate.touch()
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    sandbox.xenvlan("down")
    _assert_restored(sandbox, clean)


def test_network_vanishing_during_up_rolls_back(
    sandbox: Env, clean: dict[str, object], tmp_path: Path
) -> None:
    """The lab's network is destroyed between define and start: one line, nothing left."""
    gate = tmp_path / "gate"
    env = hostsnap.with_vars(
        sandbox, XENVLAN_FAULT="after-define:wait", XENVLAN_FAULT_GATE=str(gate)
    )
    proc = hostsnap.popen(env, "up")
    try:
        hostsnap.wait_for(gate.with_name("gate.reached"), proc)
        res = sandbox.in_netns(*hostsnap.VIRSH, "net-destroy", "default")
        assert res.returncode == 0, res.stderr
        gate.touch()
        _out, err = proc.communicate(timeout=300)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    errors = [ln for ln in err.splitlines() if ln.startswith("xenvlan: error:")]
    assert len(errors) == 1 and "default" in errors[0] and "Traceback" not in err, err
    _assert_restored(sandbox, clean)
