"""diagnose on recorded trees (tests/data/dom0) and the pure parsing/classification helpers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from xenvlan.cli import diagnose as diagnose_cli
from xenvlan.host import diagnose
from xenvlan.host.inspect import kernel_info, parse_release, read_conntrack, read_snmp

DATA = Path(__file__).parents[1] / "data" / "dom0"


@pytest.mark.parametrize(
    ("release", "band"),
    [
        ("2.6.16.60-0.21-xen", "no-refrag"),
        ("2.6.17", "vlan-refrag-bug"),
        ("2.6.18-398.el5xen", "vlan-refrag-bug"),
        ("2.6.34.15", "vlan-refrag-bug"),
        ("2.6.35", "fixed"),
        ("3.10.0-1160.el7.x86_64", "fixed"),
        ("3.18.0", "separate-module"),
        ("4.19.0-27-amd64", "separate-module"),
        ("5.3", "per-netns"),
        ("6.18.44-fc-v669", "per-netns"),
    ],
)
def test_kernel_bands(release: str, band: str) -> None:
    assert kernel_info(release).band == band


def test_parse_release() -> None:
    assert parse_release("2.6.18-398.el5xen") == (2, 6, 18)
    assert parse_release("6.1") == (6, 1, 0)


def test_healthy_host_says_so() -> None:
    d = diagnose(recording=DATA / "modern-healthy")
    assert d.healthy and d.worst == "info"
    assert d.findings[0].code == "healthy"
    data = d.to_json()
    assert data["br_netfilter"] is True
    assert data["sysctls"]["bridge-nf-call-iptables"] == "0"
    (br,) = data["bridges"]
    assert br["name"] == "virbr0"
    assert [(p["name"], p["kind"], p["mtu"]) for p in br["ports"]] == [
        ("vnet0", "tap", 1500),
        ("vnet1", "tap", 1500),
    ]
    json.dumps(data)


def test_no_br_netfilter() -> None:
    d = diagnose(recording=DATA / "no-br-netfilter")
    assert d.healthy
    assert "br-netfilter-absent" in d.codes()
    assert d.facts.sysctls == {}
    assert d.facts.modules["br_netfilter"].state != "built-in or loaded"
    assert "bridged-netfilter" not in d.codes()


def test_modern_mtu_mismatch_with_nat_is_reversed_cliff() -> None:
    d = diagnose(recording=DATA / "modern-mtu-nat")
    assert d.worst == "warn"
    (f,) = [f for f in d.findings if f.code == "port-mtu-mismatch"]
    assert "refragmented" in f.title and "vnet1 (veth, MTU 1400)" in f.evidence
    assert d.facts.conntrack.in_use
    assert any("nat" in e for e in d.facts.conntrack.evidence)


def test_rhel5_original_bug_is_critical() -> None:
    d = diagnose(recording=DATA / "rhel5-xen-2.6.18", lab_ports={"vif3.0": "a", "vif4.0": "b"})
    assert d.worst == "critical"
    (f,) = [f for f in d.findings if f.code == "legacy-vlan-refrag"]
    assert f.title == "legacy VLAN refragmentation bug: IP length > MTU+4 dropped"
    assert any("1504 passes, 1505 dropped" in e for e in f.evidence)
    assert "vlan-tagged" in f.recommendation and "call-iptables" in f.recommendation
    assert d.facts.modules["nf_conntrack"].state == "loaded"  # ip_conntrack alias
    assert d.facts.snmp["ReasmOKs"] == 6
    ports = {p["name"]: p for p in d.to_json()["bridges"][0]["ports"]}
    assert ports["vif3.0"]["kind"] == "vif" and ports["vif3.0"]["lab_guest"] == "a"


def _copy(tmp_path: Path, case: str) -> Path:
    dest = tmp_path / case
    shutil.copytree(DATA / case, dest)
    return dest


def test_rhel5_without_vlan_filtering_is_fine(tmp_path: Path) -> None:
    tree = _copy(tmp_path, "rhel5-xen-2.6.18")
    (tree / "proc/sys/net/bridge/bridge-nf-filter-vlan-tagged").write_text("0\n")
    assert "legacy-vlan-refrag" not in diagnose(recording=tree).codes()


def test_rhel5_without_conntrack_is_latent(tmp_path: Path) -> None:
    tree = _copy(tmp_path, "rhel5-xen-2.6.18")
    mods = (tree / "proc/modules").read_text().splitlines()
    keep = [
        m for m in mods if not m.startswith(("ip_conntrack", "ip_nat", "ipt_MASQ", "iptable_nat"))
    ]
    (tree / "proc/modules").write_text("\n".join(keep) + "\n")
    (tree / "proc/sys/net/ipv4/netfilter/ip_conntrack_count").unlink()
    (tree / "proc/net/ip_tables_names").write_text("filter\n")
    meta = json.loads((tree / "host.json").read_text())
    meta["iptables_nat"] = None
    (tree / "host.json").write_text(json.dumps(meta))
    d = diagnose(recording=tree)
    assert "legacy-vlan-refrag-latent" in d.codes() and d.worst == "warn"


def test_kernel_release_is_injectable() -> None:
    old = diagnose(recording=DATA / "rhel5-xen-2.6.18", kernel_release="2.6.16.60")
    assert "legacy-no-refrag" in old.codes()
    new = diagnose(recording=DATA / "rhel5-xen-2.6.18", kernel_release="3.10.0")
    assert new.worst != "critical" and "bridged-netfilter" in new.codes()


def test_missing_lab_port_is_a_warning() -> None:
    d = diagnose(recording=DATA / "modern-healthy", lab_ports={"vnet0": "a", "vnet9": "b"})
    assert "lab-port" in d.codes() and "lab-port-missing" in d.codes()
    assert not d.healthy


def test_nft_bridge_family_ct_rule() -> None:
    ruleset = {
        "nftables": [
            {"table": {"family": "bridge", "name": "f"}},
            {
                "rule": {
                    "family": "bridge",
                    "table": "f",
                    "chain": "fw",
                    "expr": [
                        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}}
                    ],
                }
            },
        ]
    }
    ct = read_conntrack(Path("/nonexistent"), ruleset, None)
    assert ct.in_use and ct.bridge_family
    d = diagnose(recording=DATA / "modern-healthy")
    assert not read_conntrack(DATA / "modern-healthy/proc", {"nftables": []}, None).in_use
    assert d.facts.conntrack.count == 0


def test_iptables_nft_xt_conntrack_counts() -> None:
    rule = {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD",
                     "expr": [{"xt": {"type": "match", "name": "conntrack"}}]}}  # fmt: skip
    assert read_conntrack(Path("/nonexistent"), {"nftables": [rule]}, None).in_use


def test_snmp_counters() -> None:
    snmp = read_snmp(DATA / "rhel5-xen-2.6.18/proc")
    assert snmp == {
        "ReasmReqds": 12,
        "ReasmOKs": 6,
        "ReasmFails": 0,
        "FragOKs": 0,
        "FragFails": 0,
        "FragCreates": 0,
    }


def test_cli_diagnose_from_recording_json() -> None:
    app = typer.Typer()
    diagnose_cli.register(app)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    res = CliRunner().invoke(app, ["diagnose", "--from", str(DATA / "rhel5-xen-2.6.18"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["worst"] == "critical"


def test_cli_diagnose_human_output() -> None:
    app = typer.Typer()
    diagnose_cli.register(app)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["diagnose", "--from", str(DATA / "modern-healthy")])
    assert res.exit_code == 0, res.output
    assert "healthy" in res.stdout and "vnet0" in res.stdout
