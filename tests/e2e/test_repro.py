"""`repro` on the real lab: emulated legacy cliff found and removed, port-mtu explained, host
restored exactly, the HTML report rendered by a real headless browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e


def _host_state(env: Env) -> dict[str, str]:
    """The sandbox namespace's knobs, rules and MTUs, read with the system tools (not xenvlan)."""

    def run(*argv: str) -> str:
        res = env.in_netns(*argv)
        assert res.returncode == 0, res.stderr
        return res.stdout

    import re

    counters = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")
    return {
        "sysctl": run("sysctl", "net.bridge"),
        "iptables": counters.sub(
            "", "\n".join(ln for ln in run("iptables-save").splitlines() if not ln.startswith("#"))
        ),
        "nft": counters.sub("", run("nft", "list", "ruleset")),
        "links": re.sub(r"state \S+", "", run("ip", "-o", "link", "show")),
    }


TRACE_STATE = (
    "{ mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; }"
    " && cd /sys/kernel/tracing && ls instances"
    " && cat tracing_on current_tracer set_event events/skb/kfree_skb/enable"
)


def _trace_state() -> str:
    """The kernel's global tracing state, read in a private mount namespace of the test's own."""
    res = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", TRACE_STATE],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_repro_emulated_legacy_vlan(sandbox: Env, tmp_path: Path) -> None:
    env = sandbox
    env.xjson("up")  # repro reuses a running lab, so the host state can be read around it
    try:
        trace_before = _trace_state()
        before = _host_state(env)
        report = tmp_path / "repro.html"
        res = env.xenvlan("repro", "--emulate", "legacy-vlan", "--json", "--report", str(report))
        doc = json.loads(res.stdout)
        after = _host_state(env)
        trace_after = _trace_state()
    finally:
        env.xenvlan("down")
    assert doc["scenario"] == "legacy-vlan" and doc["emulated"] is True
    # The seed's boundary, exactly: -s 1476 (IP 1504) passes, -s 1477 (IP 1505) does not.
    assert doc["before"]["largest_passing"] == 1476
    assert doc["before"]["smallest_failing"] == 1477
    assert doc["before"]["verdict"]["code"] == "legacy-vlan-double-subtract"
    assert doc["after"]["smallest_failing"] is None
    assert doc["after"]["verdict"]["code"] == "no-cliff"
    assert doc["verdict"]["code"] == "cliff-removed"
    assert doc["fix"]["method"] == "call-iptables"
    assert [c["after"] for c in doc["fix"]["changes"]] == ["0"]
    assert doc["restored"] is True and doc["restore_diff"] == []
    assert {a["kind"] for a in doc["fix"]["reverted"]} == {"sysctl", "iptables_chain"}
    # The diagnosis still says this kernel is not itself affected.
    codes = {f["code"] for f in doc["diagnosis"]["findings"]}
    assert "legacy-vlan-bug" not in codes
    assert set(doc["timings"]) >= {"up", "sweep-before", "fix", "sweep-after", "revert"}
    # Checked independently of xenvlan's own snapshot.
    assert after == before
    assert trace_after == trace_before, "the kernel's global tracing state changed"
    # Where the packet died, from the kernel: the emulation's rule, never the real old bug.
    (edge,) = doc["before"]["evidence"]
    fail, ok = edge["failing"], edge["passing"]
    assert (fail["size"], fail["ip_length"], ok["size"]) == (1477, 1505, 1476)
    assert fail["traced"] is True, edge["notice"]
    assert any(d["reason"] == "NETFILTER_DROP" and d["count"] > 0 for d in fail["drops"])
    assert "standing in for br_dev_queue_push_xmit of 2.6.17-2.6.34" in fail["culprit"]
    assert fail["ip"].get("IpReasmOKs", 0) > 0, "conntrack reassembled the fragments"
    assert ok["culprit"] is None
    capture = Path(fail["capture"])
    assert capture.is_relative_to(tmp_path / "repro-captures"), "captures are kept by the report"
    assert capture.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a", "not a pcapng file"
    assert "br_dev_queue_push_xmit" in doc["before"]["verdict"]["text"]
    assert not doc["after"].get("evidence"), "nothing fails after the fix: nothing to replay"
    _check_report(report, tmp_path)


def test_repro_narrow_fix_and_teardown(sandbox: Env) -> None:
    """From nothing: repro brings the lab up, uses the narrow fix, and takes everything down."""
    env = sandbox
    res = env.xenvlan(
        "repro",
        "--emulate",
        "legacy-vlan",
        "--method",
        "vlan-tagged",
        "--from",
        "1400",
        "--to",
        "1600",
        "--json",
    )
    doc = json.loads(res.stdout)
    assert doc["before"]["smallest_failing"] == 1477
    assert doc["after"]["smallest_failing"] is None
    assert doc["verdict"]["code"] == "cliff-removed"
    assert doc["restored"] is True
    assert "down" in doc["timings"]
    names = env.in_netns("virsh", "-q", "-c", "qemu:///system", "list", "--all", "--name")
    assert names.stdout.strip() == ""


def test_repro_port_mtu_explained(sandbox: Env) -> None:
    env = sandbox
    res = env.xenvlan("repro", "--scenario", "port-mtu", "--json")
    doc = json.loads(res.stdout)
    assert doc["emulated"] is False
    edges = {(m["bridge_netfilter"], m["df"]): m["sweep"] for m in doc["matrix"]}
    assert set(edges) == {(True, "do"), (True, "dont"), (False, "do"), (False, "dont")}
    # A plain bridge forwards tagged frames up to port MTU + 4 bytes of IP, DF or not.
    assert edges[(False, "do")]["largest_passing"] == 1376
    assert edges[(False, "dont")]["largest_passing"] == 1376
    # bridge-netfilter: DF set is held to the MTU itself; DF cleared gets refragmented.
    assert edges[(True, "do")]["largest_passing"] == 1372
    assert edges[(True, "dont")]["largest_passing"] == 1472
    assert doc["verdict"]["code"] == "brnf-refragments"
    assert "refragmented" in doc["verdict"]["text"]
    assert doc["restored"] is True
    # The kernel names the plain bridge's drop: the port MTU check of br_dev_queue_push_xmit.
    (edge,) = edges[(False, "do")]["evidence"]
    assert edge["failing"]["culprit"] == "br_dev_queue_push_xmit", edge
    assert "br_dev_queue_push_xmit" in doc["verdict"]["text"]


def _check_report(report: Path, tmp_path: Path) -> None:
    html = report.read_text()
    assert "EMULATED" in html and "<svg" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (scripts/test.sh installs it)")
    profile = tempfile.mkdtemp(dir=tmp_path)
    res = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = res.stdout
    assert res.returncode == 0, res.stderr[-500:]
    # The browser parsed the page: the charts and their series are in the rendered DOM.
    assert dom.count('class="chart"') == 2
    assert dom.count('class="path"') >= 2, "the drop point is drawn for the failing edge"
    assert "standing in for" in dom
    assert dom.count('class="series"') >= 4
    assert 'id="restored">yes<' in dom
    assert "cliff-removed" in dom
