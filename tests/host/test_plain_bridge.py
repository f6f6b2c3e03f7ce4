"""A lab on an existing plain bridge (a Dom0's `xenbr0`): netlink reads it for real, in a netns."""

from __future__ import annotations

import importlib
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from xenvlan.errors import HypervisorError, SpecError
from xenvlan.spec import from_dict
from xenvlan.virt import connection as hv
from xenvlan.virt import network

up_mod = importlib.import_module("xenvlan.lab.up")  # `xenvlan.lab.up` is also the function
NS = f"xvpb-{os.getpid() % 100000}"
PROBE = (
    "import sys; from xenvlan.host.netlink import bridge_ipv4; "
    "print([bridge_ipv4(n) for n in sys.argv[1:]])"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    _ip("netns", "add", NS)
    try:
        _ip("-n", NS, "link", "add", "xbr0", "type", "bridge")
        _ip("-n", NS, "addr", "add", "10.98.0.1/24", "dev", "xbr0")
        _ip("-n", NS, "link", "add", "xbr1", "type", "bridge")
        _ip("-n", NS, "link", "add", "dum0", "type", "veth", "peer", "name", "dum1")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def test_bridge_ipv4_tells_bridges_and_their_address(netns: str) -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, "xbr0", "xbr1", "dum0", "nope"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == (
        "[(True, IPv4Interface('10.98.0.1/24')), (True, None), (False, None), (False, None)]"
    )


def _choice(domain_type: str) -> hv.Choice:
    return hv.Choice(uri="xen:///system", domain_type=domain_type, xen_mode="pv", reason="t")


def test_xen_guests_attach_to_a_plain_bridge_without_reservations() -> None:
    spec = from_dict({"name": "pb", "network": {"name": "xenbr0-lab", "bridge": "xenbr0"}})
    addr = ipaddress.IPv4Interface("10.99.0.1/24")
    info = up_mod._plain_bridge(spec, _choice("xen"), addr, lambda _m: None)
    assert (info.name, info.bridge, info.address, info.range) == ("", "xenbr0", addr, None)
    assert network.pick_addresses(info, network.leases(None), 2) == ["10.99.0.254", "10.99.0.253"]
    assert network.reserve(None, info, "00:16:3e:00:00:01", "10.99.0.254", "x") is False


def test_a_plain_bridge_refuses_other_guests_and_needs_an_address() -> None:
    spec = from_dict({"name": "pb", "network": {"name": "none-here", "bridge": "xenbr0"}})
    with pytest.raises(SpecError, match="only Xen guests attach to a plain bridge"):
        up_mod._plain_bridge(spec, _choice("qemu"), None, lambda _m: None)
    with pytest.raises(HypervisorError, match="bridge xenbr0 has no IPv4 address"):
        up_mod._plain_bridge(spec, _choice("xen"), None, lambda _m: None)
