"""diagnose and fix on the real two-guest lab, inside the test's sandbox namespace."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e


def _knobs(env: Env) -> dict[str, str]:
    """Every bridge knob of the namespace, read with sysctl and /sys (not xenvlan)."""
    out = env.in_netns("sysctl", "net.bridge").stdout
    knobs = dict(line.split(" = ") for line in out.strip().splitlines())
    per_bridge = env.in_netns(
        "sh", "-c", 'for f in /sys/class/net/*/bridge/nf_call_*; do echo "$f $(cat "$f")"; done'
    ).stdout
    for line in per_bridge.strip().splitlines():
        path, value = line.rsplit(" ", 1)
        knobs[path] = value
    return knobs


def test_diagnose_knows_the_lab(sandbox: Env, seed_lab: dict) -> None:  # type: ignore[type-arg]
    doc = sandbox.xjson("diagnose")
    bridges = {b["name"]: b for b in doc["bridges"]}
    assert "virbr0" in bridges
    ports = {p["name"]: p for p in bridges["virbr0"]["ports"]}
    for g in seed_lab["guests"]:
        port = ports[g["host_port"]]
        assert port["mtu"] == 1500 and port["kind"] == "tap"
        assert port["lab_guest"] == f"seed/{g['name']}"
    # The namespace's real knobs, and conntrack in use by libvirt's NAT rules.
    real = _knobs(sandbox)
    for name, value in doc["sysctls"].items():
        assert real[f"net.bridge.{name}"] == value
    assert doc["conntrack"]["in_use"] is True
    assert doc["healthy"] is True


def test_fix_apply_revert_restores_exactly(sandbox: Env, seed_lab: dict) -> None:  # type: ignore[type-arg]
    env = sandbox
    before = _knobs(env)
    for method in ("call-iptables", "call-all", "vlan-tagged"):
        if method == "vlan-tagged":
            # Needs the knob at 1 to have something to fix: set it outside xenvlan first.
            env.in_netns("sysctl", "-q", "-w", "net.bridge.bridge-nf-filter-vlan-tagged=1")
            start = _knobs(env)
        else:
            start = before
        applied = env.xjson("fix", "apply", "--method", method)
        assert applied["changes"], applied
        now = _knobs(env)
        for c in applied["changes"]:
            assert now[f"net.bridge.{c['name'].removeprefix('net.bridge.')}"] == "0"
        status = env.xjson("fix", "status")
        assert status["pending"] is True
        env.xenvlan("fix", "revert")
        assert _knobs(env) == start, method
        assert env.xjson("fix", "status")["pending"] is False
        if method == "vlan-tagged":
            env.in_netns("sysctl", "-q", "-w", "net.bridge.bridge-nf-filter-vlan-tagged=0")
    assert _knobs(env) == before
    # Refusals: one line, non-zero, nothing changed.
    for argv, code in (
        (["fix", "apply", "--method", "bogus"], 2),
        (["fix", "apply", "--method", "vlan-tagged"], 5),  # already 0
    ):
        res = env.xenvlan(*argv, check=False)
        assert res.returncode == code, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and re.match(r"xenvlan: error: ", lines[0]), res.stderr
    assert _knobs(env) == before
    assert (
        not list((env.state_dir / "journal").glob("*.json"))
        if (env.state_dir / "journal").exists()
        else True
    )
