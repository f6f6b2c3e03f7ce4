"""One mutating command per lab: a second holder, in another process, gets BusyError at once."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenvlan.errors import BusyError, SpecError
from xenvlan.lock import lab_lock

HOLDER = """
import sys
from xenvlan.lock import lab_lock
with lab_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "run"
    monkeypatch.setenv("XENVLAN_RUN_DIR", str(d))
    monkeypatch.setenv("XENVLAN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XENVLAN_CACHE_DIR", str(tmp_path / "cache"))
    return d


@pytest.fixture
def holder(run_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding lab `seed`'s lock until we write a line to it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "seed"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "XENVLAN_RUN_DIR": str(run_dir)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    assert proc.wait(timeout=10) == 0


def test_second_process_is_refused_at_once(holder: subprocess.Popen[str]) -> None:
    t0 = time.monotonic()
    with pytest.raises(BusyError) as info, lab_lock("seed"):
        pytest.fail("entered a lock another process holds")
    assert time.monotonic() - t0 < 2.0, "must not wait for the holder"
    msg = str(info.value)
    assert msg.startswith("lab seed busy: ")
    assert f"pid {holder.pid}" in msg
    assert len(msg.splitlines()) == 1
    assert BusyError.exit_code != 0


def test_lock_is_free_after_the_holder_releases(holder: subprocess.Popen[str]) -> None:
    _release(holder)
    with lab_lock("seed"):
        pass


def test_lock_is_free_after_the_holder_is_killed(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait(timeout=10)
    with lab_lock("seed"):
        pass


def test_other_labs_are_independent(holder: subprocess.Popen[str]) -> None:
    with lab_lock("other"):
        pass


def test_same_process_second_holder_is_refused(run_dir: Path) -> None:
    with lab_lock("seed"), pytest.raises(BusyError), lab_lock("seed"):
        pass


def test_released_on_exception(run_dir: Path) -> None:
    with pytest.raises(RuntimeError), lab_lock("seed"):
        raise RuntimeError("boom")
    with lab_lock("seed"):
        pass


def test_lock_files_are_private(run_dir: Path) -> None:
    with lab_lock("seed"):
        locks = run_dir / "locks"
        assert stat.S_IMODE(locks.stat().st_mode) == 0o700
        f = locks / "seed.lock"
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert f.read_text() == f"pid {os.getpid()}"


@pytest.mark.parametrize("name", ["../escape", "../../../tmp/x", "a/b", "", "A", "a\n", "/abs"])
def test_hostile_lab_names_are_refused(run_dir: Path, tmp_path: Path, name: str) -> None:
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SpecError), lab_lock(name):
        pytest.fail("locked a hostile name")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
