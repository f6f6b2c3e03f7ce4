"""Fault hook, lab-tagged journal entries, lock-file hygiene and SIGTERM unwinding (no libvirt)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xenvlan import fault
from xenvlan.errors import BusyError
from xenvlan.host.journal import HostJournal, on_behalf_of, pending_labs, revert_lab_changes
from xenvlan.lock import lab_lock


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XENVLAN_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XENVLAN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(fault.ENV, raising=False)
    monkeypatch.setattr(fault, "_arrivals", {})
    return tmp_path


# -- fault points ---------------------------------------------------------------------------


def test_fault_point_is_inert_without_the_variable(dirs: Path) -> None:
    for name in fault.POINTS:
        fault.point(name)


def test_fault_error_and_nth_arrival(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fault.ENV, "after-up:error,mid-sweep@2:error")
    fault.point("after-define")
    with pytest.raises(fault.InjectedFault, match="after-up"):
        fault.point("after-up")
    fault.point("mid-sweep")  # first arrival: nothing
    with pytest.raises(fault.InjectedFault, match="mid-sweep"):
        fault.point("mid-sweep")


def test_fault_unknown_action_is_one_line(dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fault.ENV, "after-up:explode")
    with pytest.raises(fault.InjectedFault, match="unknown action 'explode'"):
        fault.point("after-up")


@pytest.mark.parametrize(
    ("action", "code"), [("kill", -signal.SIGKILL), ("int", 130), ("term", 143)]
)
def test_fault_signals_through_the_cli_entry(dirs: Path, action: str, code: int) -> None:
    """kill dies at once; int and term unwind (finally blocks run) with 130/143."""
    script = (
        "import sys\n"
        "from xenvlan.cli import _terminate\n"
        "import signal\n"
        "signal.signal(signal.SIGTERM, _terminate)\n"
        "from xenvlan import fault\n"
        "try:\n"
        "    fault.point('after-fix')\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
        "finally:\n"
        "    print('unwound', flush=True)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, fault.ENV: f"after-fix:{action}"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == code, res.stderr
    assert ("unwound" in res.stdout) == (action != "kill")


def test_fault_wait_blocks_until_the_gate(dirs: Path) -> None:
    gate = dirs / "gate"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from xenvlan import fault; fault.point('after-define')"],
        env={**os.environ, fault.ENV: "after-define:wait", fault.GATE_ENV: str(gate)},
    )
    try:
        reached = gate.with_name("gate.reached")
        deadline = time.monotonic() + 20
        while not reached.exists():
            assert time.monotonic() < deadline, "never reached the gate"
            time.sleep(0.05)
        assert f"after-define pid {proc.pid}" in reached.read_text()
        time.sleep(0.3)
        assert proc.poll() is None, "did not wait at the gate"
        gate.touch()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- journal entries on behalf of a lab --------------------------------------------------------


def test_lab_tagged_entries_revert_alone(dirs: Path) -> None:
    jdir = dirs / "state" / "journal"
    lab_knob, manual_knob = dirs / "lab-knob", dirs / "manual-knob"
    lab_knob.write_text("1\n")
    manual_knob.write_text("1\n")
    with HostJournal.open(jdir) as j:
        j.record_sysctl(manual_knob, note="manual fix apply")
        manual_knob.write_text("0\n")
        with on_behalf_of("seed"):
            j.record_sysctl(lab_knob, note="repro")
        lab_knob.write_text("0\n")
    data = json.loads(HostJournal.path_for(jdir).read_text())
    assert [e.get("lab") for e in data["entries"]] == [None, "seed"]
    assert pending_labs(jdir) == {"seed"}
    assert revert_lab_changes("other", jdir) == []
    actions = revert_lab_changes("seed", jdir)
    assert [(a.key, a.result) for a in actions] == [(str(lab_knob), "restored")]
    assert lab_knob.read_text() == "1\n"
    assert manual_knob.read_text() == "0\n", "a manual fix is not the lab's to revert"
    assert pending_labs(jdir) == set()
    with HostJournal.open(jdir) as j:
        assert [e.key for e in j.entries] == [str(manual_knob)]
        j.revert_all()
    assert not jdir.exists() or not any(jdir.iterdir())


def test_tag_is_scoped_to_the_block(dirs: Path) -> None:
    knob = dirs / "knob"
    knob.write_text("1\n")
    with on_behalf_of("seed"):
        pass
    with HostJournal.open(dirs / "j") as j:
        j.record_sysctl(knob)
        assert j.entries[0].lab == ""
        j.revert_all()


# -- lock files -------------------------------------------------------------------------------


def test_lock_leaves_nothing_when_the_lab_is_not_up(dirs: Path) -> None:
    run = dirs / "run"
    with lab_lock("seed"):
        assert (run / "locks" / "seed.lock").exists()
    assert not run.exists(), list(run.rglob("*"))


def test_lock_file_stays_while_the_lab_is_up(dirs: Path) -> None:
    run = dirs / "run"
    (run / "labs" / "seed").mkdir(parents=True)
    with lab_lock("seed"):
        pass
    assert (run / "locks" / "seed.lock").exists()


def test_lock_refused_holder_removes_nothing(dirs: Path) -> None:
    with lab_lock("seed"):
        with pytest.raises(BusyError, match="lab seed busy"), lab_lock("seed"):
            pytest.fail("entered a held lock")
        assert (dirs / "run" / "locks" / "seed.lock").exists()


def test_lock_retries_when_the_file_was_replaced(dirs: Path) -> None:
    """A holder that locked an unlinked inode must not think it holds the lock."""
    path = dirs / "run" / "locks" / "seed.lock"
    with lab_lock("seed"):
        stale = os.open(path, os.O_RDWR)
    # The first holder removed the file on release; the stale fd names a dead inode.
    assert not path.exists()
    with lab_lock("seed"):
        assert path.exists()
        import fcntl

        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the dead inode locks freely...
        with pytest.raises(BusyError), lab_lock("seed"):  # ...but the live path is held
            pytest.fail("two holders")
    os.close(stale)


def test_still_linked_detects_a_replaced_file(dirs: Path) -> None:
    from xenvlan.lock import _still_linked

    path = dirs / "f"
    path.write_text("")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _still_linked(fd, path)
        path.unlink()
        assert not _still_linked(fd, path)
        path.write_text("")  # a new inode at the same path
        assert not _still_linked(fd, path)
    finally:
        os.close(fd)


HOLD = (
    "import sys\nfrom xenvlan.lock import lab_lock\n"
    "with lab_lock('seed'):\n    print('held', flush=True)\n    sys.stdin.readline()\n"
)


@pytest.mark.parametrize("verb", ["apply", "revert"])
def test_fix_refused_while_a_lab_command_runs(dirs: Path, verb: str) -> None:
    env = {**os.environ, "XENVLAN_NO_SANDBOX": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        res = subprocess.run(
            [sys.executable, "-m", "xenvlan", "fix", verb, "--proc-root", str(dirs / "proc")]
            if verb == "apply"
            else [sys.executable, "-m", "xenvlan", "fix", verb],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == BusyError.exit_code == 6, res.stderr
        assert res.stderr.splitlines() == [res.stderr.strip()]
        assert "lab seed busy" in res.stderr and "Traceback" not in res.stderr
        assert not (dirs / "state").exists(), "a refused fix must not create a journal"
    finally:
        holder.kill()
        holder.wait()


def test_private_dirs_made_with_their_parents_are_all_0700(tmp_path: Path) -> None:
    from xenvlan.paths import ensure_private_dir

    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    old = os.umask(0o022)
    try:
        leaf = ensure_private_dir(existing / "run" / "labs" / "seed")
    finally:
        os.umask(old)
    for d in (leaf, leaf.parent, leaf.parent.parent):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert existing.stat().st_mode & 0o777 == 0o755, "an existing parent is not ours to chmod"
