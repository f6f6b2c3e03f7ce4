"""HostJournal on plain temp files: first originals kept, atomic, idempotent, crash-safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xenvlan.errors import BusyError, HostChangeError
from xenvlan.fault import ENV as FAULT_ENV
from xenvlan.host.journal import HostJournal, JournalEntry, register_reverter
from xenvlan.host.netns import current_netns

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def knob(tmp_path: Path) -> Path:
    path = tmp_path / "knob"
    path.write_text("1\n")
    return path


def test_record_then_revert_restores(tmp_path: Path, knob: Path) -> None:
    jdir = tmp_path / "j"
    with HostJournal.open(jdir) as j:
        assert j.record_sysctl(knob) == "1"
        knob.write_text("0\n")
        assert j.path.exists()
        assert oct(j.path.stat().st_mode & 0o777) == "0o600"
        data = json.loads(j.path.read_text())
        assert data["netns"]["inode"] == current_netns().inode
        assert data["entries"][0]["original"] == "1"
    with HostJournal.open(jdir) as j:
        actions = j.revert_all()
    assert [a.result for a in actions] == ["restored"]
    assert knob.read_text() == "1\n"
    assert not HostJournal.path_for(jdir).exists()
    assert [p.name for p in jdir.iterdir() if not p.name.endswith(".lock")] == []
    with HostJournal.open(jdir) as j:  # idempotent
        assert j.revert_all() == []


def test_second_record_keeps_first_original(tmp_path: Path, knob: Path) -> None:
    with HostJournal.open(tmp_path) as j:
        j.record_sysctl(knob)
        knob.write_text("0\n")
    with HostJournal.open(tmp_path) as j:
        assert j.record_sysctl(knob) == "1"  # the first original, not the current 0
        assert len(j.entries) == 1
        j.revert_all()
    assert knob.read_text() == "1\n"


def test_foreign_namespace_journal_is_refused(tmp_path: Path, knob: Path) -> None:
    with HostJournal.open(tmp_path) as j:
        j.record_sysctl(knob)
        path = j.path
    data = json.loads(path.read_text())
    data["netns"]["inode"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(HostChangeError, match="belongs to network namespace inode") as err:
        HostJournal.open(tmp_path)
    assert "\n" not in str(err.value)
    assert json.loads(path.read_text()) == data  # untouched


def test_recreated_namespace_is_refused(tmp_path: Path, knob: Path) -> None:
    here = current_netns()
    if here.cookie is None or here.boot_id is None:
        pytest.skip("no SO_NETNS_COOKIE on this kernel")
    with HostJournal.open(tmp_path) as j:
        j.record_sysctl(knob)
        path = j.path
    data = json.loads(path.read_text())
    data["netns"]["cookie"] = here.cookie + 1000
    path.write_text(json.dumps(data))
    with pytest.raises(HostChangeError, match="no longer exists"):
        HostJournal.open(tmp_path)


def test_corrupt_journal(tmp_path: Path) -> None:
    HostJournal.path_for(tmp_path).write_text("{not json")
    with pytest.raises(HostChangeError, match="corrupt"):
        HostJournal.open(tmp_path)


def test_lock_refuses_concurrent_use(tmp_path: Path) -> None:
    with HostJournal.open(tmp_path), pytest.raises(BusyError):
        HostJournal.open(tmp_path)


def test_files_created_and_changed(tmp_path: Path) -> None:
    new = tmp_path / "etc" / "new.conf"
    old = tmp_path / "etc" / "old.conf"
    new.parent.mkdir()
    old.write_text("mine\n")
    old.chmod(0o640)
    with HostJournal.open(tmp_path / "j") as j:
        j.record_file(new)
        j.record_file(old)
        new.write_text("x\n")
        old.write_text("theirs\n")
        old.chmod(0o644)
        results = {Path(a.key).name: a.result for a in j.revert_all()}
    assert results == {"new.conf": "removed", "old.conf": "restored"}
    assert not new.exists()
    assert old.read_text() == "mine\n" and old.stat().st_mode & 0o777 == 0o640


def test_unknown_and_custom_kinds(tmp_path: Path) -> None:
    with HostJournal.open(tmp_path) as j, pytest.raises(HostChangeError, match="no reverter"):
        j.record("nonesuch", "k", 1)
    seen: list[JournalEntry] = []

    def revert(entry: JournalEntry) -> str:
        seen.append(entry)
        return "restored"

    register_reverter("test-kind", revert)
    with HostJournal.open(tmp_path) as j:
        assert j.record("test-kind", "k", {"a": 1})
        assert not j.record("test-kind", "k", {"a": 2})
        j.revert_all()
    assert [e.original for e in seen] == [{"a": 1}]


def test_kill_between_journal_and_write(tmp_path: Path, knob: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from xenvlan.host.journal import HostJournal\n"
        "from xenvlan.host.sysctl import write_value\n"
        "j = HostJournal.open(Path(sys.argv[1])); p = Path(sys.argv[2])\n"
        "j.record_sysctl(p); write_value(p, '0')\n"
    )
    env = {**os.environ, FAULT_ENV: "after-journal:kill", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "j"), str(knob)], env=env)
    assert done.returncode == -signal.SIGKILL
    assert knob.read_text() == "1\n"  # the write never happened
    path = HostJournal.path_for(tmp_path / "j")
    assert json.loads(path.read_text())["entries"][0]["original"] == "1"
    with HostJournal.open(tmp_path / "j") as j:  # the lock died with the process
        assert [a.result for a in j.revert_all()] == ["unchanged"]
    assert not path.exists() and knob.read_text() == "1\n"
