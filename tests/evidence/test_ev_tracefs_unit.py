"""The tracefs manager without touching tracefs: names, mountinfo, reverters' refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenvlan.errors import HostChangeError
from xenvlan.evidence import tracefs
from xenvlan.evidence.counters import parse_snmp
from xenvlan.evidence.key import TrafficKey, qemu_key
from xenvlan.host.journal import HostJournal, JournalEntry

MOUNTINFO = """\
23 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw
45 23 0:13 / /sys/kernel/tracing rw,relatime shared:20 - tracefs nodev rw
46 23 0:7 / /sys/kernel/debug rw,relatime - debugfs debugfs rw
47 46 0:13 / /sys/kernel/debug/tracing rw,relatime - tracefs tracefs rw
"""


def test_mountinfo_prefers_sys_kernel_tracing(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert tracefs.tracefs_mounts(info) == [
        Path("/sys/kernel/tracing"),
        Path("/sys/kernel/debug/tracing"),
    ]
    info.write_text(MOUNTINFO.splitlines()[0] + "\n")
    assert tracefs.tracefs_mounts(info) == []


def test_instance_names() -> None:
    assert tracefs.instance_name("seed") == "xenvlan-seed"
    with pytest.raises(tracefs.TracingUnavailable):
        tracefs.instance_name("../x")


def test_reverters_refuse_foreign_instances() -> None:
    with pytest.raises(HostChangeError, match="foreign tracing instance"):
        tracefs.revert_instance(JournalEntry(tracefs.KIND_INSTANCE, "../../events", None))


def test_mount_of_a_dead_mount_namespace_is_gone() -> None:
    entry = JournalEntry(tracefs.KIND_MOUNT, "/sys/kernel/tracing", {"mnt_ns": 1, "pid": 1})
    assert tracefs.revert_mount(entry) == "gone"


def test_kinds_are_journaled(tmp_path: Path) -> None:
    with HostJournal.open(tmp_path) as journal:
        assert journal.record(tracefs.KIND_INSTANCE, "xenvlan-unit", {"existed": False})
    loaded = HostJournal.load(HostJournal.path_for(tmp_path))
    assert loaded is not None and loaded.entries[0].kind == tracefs.KIND_INSTANCE
    with HostJournal.open(tmp_path) as journal:
        journal.entries = [e for e in journal.entries if e.key != "xenvlan-unit"]
        journal._save()


def test_traffic_key_filter_and_qemu_pids(tmp_path: Path) -> None:
    key = TrafficKey()
    assert key.filter_expr() == "protocol == 2048 || protocol == 33024 || protocol == 34984"
    run = tmp_path / "run"
    run.mkdir()
    proc = tmp_path / "proc"
    for tid in (500, 501, 502):
        (proc / "500" / "task" / str(tid)).mkdir(parents=True)
    (run / "xenvlan-seed-a.pid").write_text("500\n")
    qk = qemu_key(["xenvlan-seed-a"], run_dir=run, proc=proc)
    assert qk.pids == frozenset({500, 501, 502}) and qk.pid_list() == "500 501 502"
    with pytest.raises(HostChangeError, match="no QEMU process found"):
        qemu_key(["xenvlan-seed-b"], run_dir=run, proc=proc)


def test_parse_snmp() -> None:
    text = (
        "Ip: Forwarding DefaultTTL ReasmReqds ReasmOKs FragCreates\n"
        "Ip: 2 64 9 3 10\n"
        "Icmp: InMsgs\nIcmp: 4\n"
    )
    assert parse_snmp(text) == {
        "Forwarding": 2,
        "DefaultTTL": 64,
        "ReasmReqds": 9,
        "ReasmOKs": 3,
        "FragCreates": 10,
    }


def _fake_instance(root: Path, *, hash_option: bool) -> tracefs.TraceInstance:
    inst = tracefs.TraceInstance(root, tracefs.instance_name("hp"))
    (inst.path / "events/skb/kfree_skb").mkdir(parents=True)
    (inst.path / "events/skb/kfree_skb/format").write_text(
        'print fmt: "skbaddr=%p protocol=%u location=%p reason: %s"\n'
    )
    (inst.path / "options").mkdir()
    if hash_option:
        (inst.path / "options/hash-ptr").write_text("1\n")
    return inst


def test_configure_prints_pointers_raw_where_the_kernel_can(tmp_path: Path) -> None:
    """Safeguard: on a %p kernel (6.1) the instance unhashes addresses, so they can be named."""
    inst = _fake_instance(tmp_path / "a", hash_option=True)
    inst.configure(TrafficKey())
    assert inst.raw_pointers and (inst.path / "options/hash-ptr").read_text() == "0"
    old = _fake_instance(tmp_path / "b", hash_option=False)
    old.configure(TrafficKey())
    assert not old.raw_pointers and not (old.path / "options/hash-ptr").exists()


def test_kallsyms_unreadable_or_hidden_is_none(tmp_path: Path) -> None:
    assert tracefs.kallsyms(tmp_path / "absent") is None
    hidden = tmp_path / "kallsyms"
    hidden.write_text("0000000000000000 T kfree_skb_reason\n")
    assert tracefs.kallsyms(hidden) is None
    hidden.write_text("ffffffffc047f670 t br_dev_queue_push_xmit\t[bridge]\n")
    syms = tracefs.kallsyms(hidden)
    assert syms is not None and syms.lookup(0xFFFFFFFFC047F6B6) == ("br_dev_queue_push_xmit", 0x46)
