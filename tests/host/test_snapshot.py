"""The "host restored exactly" claim: a real change is reported, and repro then exits 5."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenvlan.errors import HostChangeError
from xenvlan.host.snapshot import diff
from xenvlan.repro import run as repro_run
from xenvlan.repro.run import ReproCode, ReproResult, ReproVerdict


def test_diff_names_every_changed_value() -> None:
    before = {"bridge_sysctls": {"bridge-nf-call-iptables": "1"}, "iptables": "A", "same": 1}
    after = {"bridge_sysctls": {"bridge-nf-call-iptables": "0"}, "iptables": "B", "same": 1}
    lines = diff(before, after)
    assert "bridge_sysctls.bridge-nf-call-iptables: '1' -> '0'" in lines
    assert "iptables changed" in lines
    assert diff(before, before) == []


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"xvtest-snap-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "add", "sa", "type", "veth", "peer", "name", "sb"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


CHANGE = textwrap.dedent(
    """
    import json, subprocess, sys
    from xenvlan.host.snapshot import diff, snapshot
    before = snapshot(journal_dir=None)
    subprocess.run(["ip", "link", "set", "sa", "mtu", "1400"], check=True)
    changed = diff(before, snapshot(journal_dir=None))
    subprocess.run(["ip", "link", "set", "sa", "mtu", "1500"], check=True)
    print(json.dumps({"changed": changed, "restored": diff(before, snapshot(journal_dir=None))}))
    """
)


def test_a_real_host_change_is_reported(netns: str, tmp_path: Path) -> None:
    env = dict(os.environ, XENVLAN_STATE_DIR=str(tmp_path / "state"))
    res = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", CHANGE],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert "link_mtus.sa: 1500 -> 1400" in doc["changed"]
    assert doc["restored"] == []


def test_repro_exits_5_when_the_host_is_not_restored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from xenvlan.cli import repro as cli_repro

    monkeypatch.setenv("XENVLAN_RUN_DIR", str(tmp_path / "run"))
    result = ReproResult(
        scenario="legacy-vlan", emulated=True, lab="seed", environment={}, restored=False,
        restore_diff=["bridge_sysctls.bridge-nf-call-iptables: '0' -> '1'"],
        verdict=ReproVerdict(ReproCode.CLIFF_REMOVED, "test"),
    )  # fmt: skip
    monkeypatch.setattr(repro_run, "run", lambda *_a, **_k: result)
    with pytest.raises(SystemExit) as exc:
        cli_repro.repro_cmd(json_out=True)
    assert exc.value.code == HostChangeError.exit_code == 5
