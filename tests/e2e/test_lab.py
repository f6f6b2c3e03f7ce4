"""The lab spine for real: two TCG guests on a bridge in a test-made namespace, VLAN inside."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e

VCONFIG_LAB = """
name = "vc"
[vlan]
id = 100
tool = "vconfig"
[[guests]]
name = "left"
vlan_ip = "10.100.0.1/24"
[[guests]]
name = "right"
vlan_ip = "10.100.0.2/24"
memory_mib = 160
"""


def _virsh(env: Env, *args: str) -> str:
    res = env.in_netns("virsh", "-q", "-c", "qemu:///system", *args)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _ping(env: Env, guest: str, dst: str, lab: str) -> str:
    res = env.xenvlan("ssh", "--name", lab, guest, "--", "/usr/bin/ping", "-c", "3", "-W", "3", dst)
    assert re.search(r"3 packets transmitted, 3 received", res.stdout), res.stdout
    return res.stdout


def test_up_ping_status_down(sandbox: Env, tmp_path: Path) -> None:
    env = sandbox
    # The seed lab, no lab file: the sandbox has no network, so xenvlan defines and owns one.
    up = env.xjson("up")
    assert up["lab"] == "seed"
    assert up["domain_type"] == "qemu", up["reason"]  # this machine has no usable KVM
    assert up["bridge"] == "virbr0"
    guests = {g["name"]: g for g in up["guests"]}
    assert set(guests) == {"a", "b"}
    for g in guests.values():
        assert g["state"] == "running"
        assert re.fullmatch(r"vnet\d+", g["host_port"]), g
        assert g["host_port_mtu"] == 1500
        assert g["vlan_if"] == "eth0.3"
    assert guests["a"]["vlan_ip"] == "11.11.4.2/24"
    assert guests["b"]["vlan_ip"] == "11.11.4.30/24"
    assert guests["a"]["vlan_tool"] == "ip"  # auto prefers ip
    assert {"define", "boot", "ssh", "vlan", "total"} <= set(up["timings"])

    # The reservations are on the network, the ports on the bridge (checked outside xenvlan).
    net_xml = _virsh(env, "net-dumpxml", "default")
    for g in guests.values():
        assert f"mac='{g['mac']}'" in net_xml and f"ip='{g['mgmt_ip']}'" in net_xml
    brif = env.in_netns("ip", "-o", "link", "show", "master", "virbr0").stdout
    assert guests["a"]["host_port"] in brif and guests["b"]["host_port"] in brif

    # Over the VLAN, both ways, plus the tagged frames really cross the bridge tagged.
    _ping(env, "a", "11.11.4.30", "seed")
    _ping(env, "b", "11.11.4.2", "seed")
    cfg = env.xenvlan("ssh", "b", "--", "cat", "/proc/net/vlan/config").stdout
    assert re.search(r"eth0\.3\s+\|\s+3\s+\|\s+eth0", cfg)

    # A second lab on the same network: reuses it (reservations only), made with vconfig.
    lab_file = tmp_path / "vc.toml"
    lab_file.write_text(VCONFIG_LAB)
    vc = env.xjson("up", "--lab", str(lab_file))
    assert {g["vlan_tool"] for g in vc["guests"]} == {"vconfig"}
    assert {g["vlan_if"] for g in vc["guests"]} == {"eth0.100"}
    _ping(env, "left", "10.100.0.2", "vc")
    # VLANs isolate: the seed guest cannot reach lab vc's VLAN 100 address.
    res = env.xenvlan(
        "ssh",
        "--name",
        "seed",
        "a",
        "--",
        "/usr/bin/ping",
        "-c",
        "1",
        "-W",
        "1",
        "10.100.0.2",
        check=False,
    )
    assert res.returncode != 0

    status = env.xjson("status", "--name", "seed")
    assert {g["vlan_ip"] for g in status["guests"]} == {"11.11.4.2/24", "11.11.4.30/24"}

    # `down` without a name refuses when two labs are up; one lab's down leaves the other.
    res = env.xenvlan("down", check=False)
    assert res.returncode == 2 and "several labs" in res.stderr
    env.xenvlan("down", "--name", "vc")
    assert "xenvlan-vc-" not in _virsh(env, "list", "--all", "--name")
    net_xml = _virsh(env, "net-dumpxml", "default")
    assert all(g["mac"] not in net_xml for g in vc["guests"])
    _ping(env, "a", "11.11.4.30", "seed")

    env.xenvlan("down")
    assert _virsh(env, "list", "--all", "--name").strip() == ""
    assert _virsh(env, "net-list", "--all", "--name").strip() == ""
    assert not any((env.run_dir / "labs").glob("*")) if (env.run_dir / "labs").exists() else True
    # Idempotent.
    assert "nothing to do" in env.xenvlan("down").stdout


def test_pinned_host_key_refused(sandbox: Env) -> None:
    env = sandbox
    env.xjson("up")
    try:
        code = textwrap.dedent(
            """
            import libvirt, sys
            from xenvlan.virt import connection as hv
            from xenvlan import lab
            from xenvlan.guest import keys
            from xenvlan.errors import GuestError
            conn, choice = hv.open_connection(None)
            st = lab.collect_status(conn, choice, "seed", ssh=False)
            a, b = st.guest("a"), st.guest("b")
            a.host_key = b.host_key   # pin b's key for a: a presents its own
            try:
                lab.session_for("seed", a).connect(10)
            except GuestError as exc:
                print("REFUSED", exc)
                sys.exit(0)
            print("CONNECTED")
            sys.exit(1)
            """
        )
        res = env.in_netns(sys.executable, "-c", code)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "not the pinned one" in res.stdout
    finally:
        env.xenvlan("down")


def test_console_stream_readiness(sandbox: Env) -> None:
    """The Xen PV/PVH readiness path (console read through libvirt), exercised on QEMU."""
    env = sandbox
    env.vars["XENVLAN_CONSOLE"] = "stream"
    try:
        up = env.xjson("up")
    finally:
        del env.vars["XENVLAN_CONSOLE"]
    try:
        xml = _virsh(env, "dumpxml", "xenvlan-seed-a")
        assert "<serial type='pty'>" in xml and "<serial type='file'>" not in xml
        console = (env.run_dir / "labs" / "seed" / "a.console").read_text(errors="replace")
        assert "XENVLAN-READY name=a" in console
        assert up["timings"]["boot"] < 120
        _ping(env, "a", "11.11.4.30", "seed")
    finally:
        env.xenvlan("down")
