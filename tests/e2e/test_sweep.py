"""The sweep on the real lab: no cliff on a healthy path; a lowered port MTU found exactly."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e


def test_healthy_path_has_no_cliff(sandbox: Env, seed_lab: dict) -> None:  # type: ignore[type-arg]
    doc = sandbox.xjson("sweep")
    assert doc["verdict"]["code"] == "no-cliff", doc["verdict"]
    assert doc["transitions"] == []
    assert doc["smallest_failing"] is None
    assert doc["largest_passing"] == 65507
    assert doc["mtu"] == 1500
    assert doc["path"] == "vlan"
    sizes = {s["size"] for s in doc["samples"]}
    assert {0, 1472, 1476, 1477, 65507} <= sizes


def test_port_mtu_cliff_found_exactly(sandbox: Env, seed_lab: dict) -> None:  # type: ignore[type-arg]
    port_b = next(g["host_port"] for g in seed_lab["guests"] if g["name"] == "b")
    assert sandbox.in_netns("ip", "link", "set", port_b, "mtu", "1400").returncode == 0
    try:
        res = sandbox.xenvlan("sweep", "--from", "1300", "--to", "1600", "--json", "--both")
        there, back = json.loads(res.stdout)
    finally:
        assert sandbox.in_netns("ip", "link", "set", port_b, "mtu", "1500").returncode == 0
    # a -> b leaves through b's port: a bridge forwards a tagged frame up to port MTU + 4
    # bytes of IP (the VLAN header does not count against the MTU), so IP 1404 passes.
    assert there["transitions"] == [{"last_pass": 1376, "first_fail": 1377}]
    assert there["largest_passing"] == 1376 and there["smallest_failing"] == 1377
    assert there["verdict"]["code"] == "path-mtu"
    assert port_b in there["verdict"]["text"]
    # b -> a: the echo *replies* come back through b's port, so the same cliff shows.
    assert back["smallest_failing"] == 1377
    # The untagged management path has the plain limit: IP length = port MTU.
    res = sandbox.xenvlan("sweep", "--path", "mgmt", "--from", "1300", "--to", "1500", "--json")
    assert json.loads(res.stdout)["verdict"]["code"] == "no-cliff"  # MTU restored above
