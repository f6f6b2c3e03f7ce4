"""Lab orchestration pieces on libvirt's in-memory test driver (test:///default).

test:///default starts with network `default` on virbr0 (192.168.122.1/24, DHCP .2-.254) and a
running domain `test`. Its state lives as long as this process, so every test removes what it
defined (the `conn` fixture) and uses unique names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import uuid
from pathlib import Path

import libvirt
import pytest

from xenvlan import lab
from xenvlan.errors import GuestError, HypervisorError, SpecError
from xenvlan.spec import LabSpec, from_dict
from xenvlan.virt import connection as hv
from xenvlan.virt import network
from xenvlan.virt.xml import Ownership, metadata_element, read_ownership

TEST_URI = "test:///default"


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENVLAN_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XENVLAN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XENVLAN_CACHE_DIR", str(tmp_path / "cache"))


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def _define_domain(
    c: libvirt.virConnect, name: str, owner: Ownership | None, *, start: bool = True
) -> libvirt.virDomain:
    meta = f"<metadata>{metadata_element(owner)}</metadata>" if owner else ""
    dom = c.defineXML(
        f"<domain type='test'><name>{name}</name>{meta}<memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices><interface type='network'>"
        "<source network='default'/></interface></devices></domain>"
    )
    if start:
        dom.create()
    return dom


def _define_network(
    c: libvirt.virConnect,
    name: str,
    owner: Ownership | None,
    *,
    ip: str = "<ip address='10.77.0.1' prefix='24'><dhcp><range start='10.77.0.100' "
    "end='10.77.0.103'/></dhcp></ip>",
) -> libvirt.virNetwork:
    meta = f"<metadata>{metadata_element(owner)}</metadata>" if owner else ""
    net = c.networkDefineXML(
        f"<network><name>{name}</name>{meta}<bridge name='xv{_uid()}'/>{ip}</network>"
    )
    net.create()
    return net


def _guest_owner(lab_name: str, guest: str, mac: str, ip: str) -> Ownership:
    return Ownership(
        lab_name,
        "domain",
        {"guest": guest, "mac": mac, "mgmt_ip": ip, "network": "default", "host_key": "k"},
    )


# ----------------------------------------------------------------------------- names and MACs


def test_domain_name() -> None:
    assert network.domain_name("seed", "a") == "xenvlan-seed-a"


@pytest.mark.parametrize(
    ("dtype", "prefix"),
    [("xen", "00:16:3e:"), ("kvm", "52:54:00:"), ("qemu", "52:54:00:"), ("test", "52:54:00:")],
)
def test_mac_prefix(dtype: str, prefix: str) -> None:
    mac = network.mac_for("seed", "a", dtype)
    assert mac.startswith(prefix)
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)


def test_mac_is_stable_and_distinct() -> None:
    assert network.mac_for("seed", "a", "qemu") == network.mac_for("seed", "a", "qemu")
    macs = {network.mac_for(lab_name, g, "qemu") for lab_name in ("seed", "x", "y") for g in "ab"}
    assert len(macs) == 6
    # Same 3 hashed bytes whatever the hypervisor: only the OUI changes.
    assert network.mac_for("seed", "a", "xen")[9:] == network.mac_for("seed", "a", "kvm")[9:]


def test_mac_known_value() -> None:
    # Pinned so a change to the derivation (which would orphan reservations) is noticed.
    import hashlib

    h = hashlib.sha256(b"seed/a").digest()[:3].hex(":")
    assert network.mac_for("seed", "a", "qemu") == f"52:54:00:{h}"


# ----------------------------------------------------------------------------- network


def test_read_default_network(conn: libvirt.virConnect) -> None:
    info = network.read_network(conn.networkLookupByName("default"))
    assert info.name == "default"
    assert info.bridge == "virbr0"
    assert info.address == ipaddress.IPv4Interface("192.168.122.1/24")
    assert info.range == (
        ipaddress.IPv4Address("192.168.122.2"),
        ipaddress.IPv4Address("192.168.122.254"),
    )
    assert info.reserved_ips == frozenset()
    assert info.owned_by is None


def test_read_owned_network_with_prefix_and_reservations(conn: libvirt.virConnect) -> None:
    name = f"own-{_uid()}"
    ip = (
        "<ip family='ipv6' address='fd00::1' prefix='64'/>"
        "<ip address='10.77.0.1' prefix='24'><dhcp><range start='10.77.0.100' end='10.77.0.103'/>"
        "<host mac='52:54:00:AA:BB:CC' name='x' ip='10.77.0.103'/></dhcp></ip>"
    )
    net = _define_network(conn, name, Ownership("lab7", "network"), ip=ip)
    info = network.read_network(net)
    assert info.address == ipaddress.IPv4Interface("10.77.0.1/24")
    assert info.reserved_ips == {"10.77.0.103"}
    assert info.reserved_macs == {"52:54:00:aa:bb:cc"}
    assert info.owned_by == "lab7"


def test_read_network_without_ipv4(conn: libvirt.virConnect) -> None:
    net = _define_network(
        conn, f"v6-{_uid()}", None, ip="<ip family='ipv6' address='fd00::1' prefix='64'/>"
    )
    with pytest.raises(HypervisorError, match="no IPv4 address"):
        network.read_network(net)


def _info(**over: object) -> network.NetInfo:
    values: dict[str, object] = {
        "name": "n",
        "bridge": "br0",
        "address": ipaddress.IPv4Interface("10.0.0.1/24"),
        "range": (ipaddress.IPv4Address("10.0.0.2"), ipaddress.IPv4Address("10.0.0.254")),
        "reserved_ips": frozenset(),
        "reserved_macs": frozenset(),
        "owned_by": None,
    }
    values.update(over)
    return network.NetInfo(**values)  # type: ignore[arg-type]


def test_pick_addresses_from_the_top() -> None:
    assert network.pick_addresses(_info(), set(), 2) == ["10.0.0.254", "10.0.0.253"]


def test_pick_addresses_avoids_reservations_and_leases() -> None:
    info = _info(reserved_ips=frozenset({"10.0.0.254", "10.0.0.252"}))
    assert network.pick_addresses(info, {"10.0.0.253"}, 2) == ["10.0.0.251", "10.0.0.250"]


def test_pick_addresses_avoids_bridge_ip() -> None:
    info = _info(
        address=ipaddress.IPv4Interface("10.0.0.5/24"),
        range=(ipaddress.IPv4Address("10.0.0.4"), ipaddress.IPv4Address("10.0.0.6")),
    )
    assert network.pick_addresses(info, set(), 2) == ["10.0.0.6", "10.0.0.4"]


def test_pick_addresses_without_range_stays_inside_subnet() -> None:
    info = _info(address=ipaddress.IPv4Interface("10.0.0.1/29"), range=None)
    got = network.pick_addresses(info, set(), 5)
    net = ipaddress.IPv4Network("10.0.0.0/29")
    assert all(ipaddress.IPv4Address(a) in net for a in got)
    assert str(net.network_address) not in got and str(net.broadcast_address) not in got
    assert "10.0.0.1" not in got
    assert len(set(got)) == 5


def test_pick_addresses_full_network_fails_cleanly() -> None:
    info = _info(range=(ipaddress.IPv4Address("10.0.0.2"), ipaddress.IPv4Address("10.0.0.4")))
    with pytest.raises(HypervisorError, match="no free addresses for 2 guests"):
        network.pick_addresses(info, {"10.0.0.2", "10.0.0.3"}, 2)


def test_reservation_round_trip(conn: libvirt.virConnect) -> None:
    net = conn.networkLookupByName("default")
    before = net.XMLDesc(0)
    mac = network.mac_for(f"r{_uid()}", "a", "qemu")
    network.add_reservation(net, mac, "192.168.122.250", "xenvlan-r-a")
    info = network.read_network(net)
    assert "192.168.122.250" in info.reserved_ips
    assert mac in info.reserved_macs
    assert network.pick_addresses(info, set(), 1) == ["192.168.122.254"]
    assert network.remove_reservation(net, mac.upper()) is True
    assert net.XMLDesc(0) == before
    assert network.remove_reservation(net, mac) is False  # idempotent


def test_reserve_claims_only_where_dhcp_could_hand_the_address_out(
    conn: libvirt.virConnect,
) -> None:
    """A DHCP-less network (the nested Dom0's) gets no reservation; a DHCP one does."""
    plain = _define_network(conn, f"p{_uid()}", None, ip="<ip address='10.78.0.1' prefix='24'/>")
    before = plain.XMLDesc(0)
    mac = network.mac_for(f"p{_uid()}", "a", "xen")
    assert network.reserve(plain, network.read_network(plain), mac, "10.78.0.254", "x") is False
    assert plain.XMLDesc(0) == before
    dhcp = conn.networkLookupByName("default")
    assert network.reserve(dhcp, network.read_network(dhcp), mac, "192.168.122.249", "x") is True
    assert mac in network.read_network(dhcp).reserved_macs
    assert network.remove_reservation(dhcp, mac)


def test_reservation_duplicate_mac_is_a_clean_error(conn: libvirt.virConnect) -> None:
    net = conn.networkLookupByName("default")
    mac = network.mac_for(f"d{_uid()}", "a", "qemu")
    network.add_reservation(net, mac, "192.168.122.240", "x")
    with pytest.raises(HypervisorError) as info:
        network.add_reservation(net, mac, "192.168.122.241", "y")
    assert len(str(info.value).splitlines()) == 1
    assert mac in str(info.value)


def test_remove_reservation_leaves_foreign_ones(conn: libvirt.virConnect) -> None:
    net = conn.networkLookupByName("default")
    network.add_reservation(net, "52:54:00:0f:0f:0f", "192.168.122.230", "someone-else")
    mine = network.mac_for(f"f{_uid()}", "a", "qemu")
    network.add_reservation(net, mine, "192.168.122.231", "xenvlan-f-a")
    assert network.remove_reservation(net, mine)
    info = network.read_network(net)
    assert info.reserved_macs == {"52:54:00:0f:0f:0f"}


# ----------------------------------------------------------------------------- labs present


def test_labs_present_and_resolve(conn: libvirt.virConnect) -> None:
    assert lab.resolve_lab(conn, "given") == "given"
    l1, l2 = f"p{_uid()}", f"q{_uid()}"
    if lab.labs_present(conn):
        pytest.skip("another xenvlan lab exists on test:///default in this process")
    with pytest.raises(SpecError, match="no xenvlan lab is up"):
        lab.resolve_lab(conn, None)
    _define_domain(conn, network.domain_name(l1, "a"), _guest_owner(l1, "a", "m", "i"))
    assert lab.labs_present(conn) == [l1]
    assert lab.resolve_lab(conn, None) == l1
    _define_network(conn, f"n-{l2}", Ownership(l2, "network"))
    assert lab.labs_present(conn) == sorted([l1, l2])
    with pytest.raises(SpecError, match="several labs are up"):
        lab.resolve_lab(conn, None)


@pytest.mark.parametrize("name", ["../../victim", "a/b", "Seed", "a\n"])
def test_resolve_lab_refuses_hostile_names(conn: libvirt.virConnect, name: str) -> None:
    with pytest.raises(SpecError):
        lab.resolve_lab(conn, name)


def test_down_lab_never_removes_outside_the_run_dir(
    conn: libvirt.virConnect, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    (tmp_path / "run" / "labs").mkdir(parents=True)
    with contextlib.suppress(SpecError):  # refusing the name is the right answer
        lab.down_lab(conn, "../../victim")
    assert (victim / "precious").read_text() == "keep me"


# ----------------------------------------------------------------------------- conflicts


def test_check_conflicts_refuses_foreign_domain(conn: libvirt.virConnect) -> None:
    spec = from_dict({"name": f"c{_uid()}"})
    foreign = _define_domain(conn, network.domain_name(spec.name, "a"), None)
    with pytest.raises(HypervisorError, match=r"not xenvlan lab .*refusing to touch it"):
        lab.check_conflicts(conn, spec)
    assert foreign.isActive()


def test_check_conflicts_refuses_other_labs_domain(conn: libvirt.virConnect) -> None:
    spec = from_dict({"name": f"c{_uid()}"})
    _define_domain(
        conn, network.domain_name(spec.name, "b"), _guest_owner("someone", "b", "m", "i")
    )
    with pytest.raises(HypervisorError, match="refusing to touch it"):
        lab.check_conflicts(conn, spec)


def test_check_conflicts_says_already_up(conn: libvirt.virConnect) -> None:
    spec = from_dict({"name": f"c{_uid()}"})
    _define_domain(
        conn, network.domain_name(spec.name, "a"), _guest_owner(spec.name, "a", "m", "i")
    )
    with pytest.raises(HypervisorError, match="already up"):
        lab.check_conflicts(conn, spec)


def test_up_refuses_foreign_domain_and_leaves_it(conn: libvirt.virConnect, tmp_path: Path) -> None:
    spec = from_dict({"name": f"u{_uid()}", "connect": TEST_URI})
    foreign = _define_domain(conn, network.domain_name(spec.name, "a"), None)
    xml_before = foreign.XMLDesc(0)
    with pytest.raises(HypervisorError, match="refusing to touch it"):
        lab.up(spec, lab.UpOptions())
    assert foreign.XMLDesc(0) == xml_before
    assert not (tmp_path / "run" / "labs" / spec.name).exists()


# ----------------------------------------------------------------------------- down


def _make_lab(conn: libvirt.virConnect, name: str, tmp_path: Path) -> dict[str, str]:
    """Two owned running guests with reservations, an owned network, and run files."""
    default = conn.networkLookupByName("default")
    macs = {}
    for i, g in enumerate("ab"):
        mac = network.mac_for(name, g, "test")
        ip = f"192.168.122.{200 + i}"
        _define_domain(conn, network.domain_name(name, g), _guest_owner(name, g, mac, ip))
        network.add_reservation(default, mac, ip, network.domain_name(name, g))
        macs[g] = mac
    _define_network(conn, f"xv-{name}", Ownership(name, "network"))
    ldir = tmp_path / "run" / "labs" / name
    ldir.mkdir(parents=True)
    (ldir / "id_ed25519").write_text("key")
    return macs


def _foreign(conn: libvirt.virConnect, name: str) -> tuple[str, str]:
    """Objects that look like the lab's but are not xenvlan's."""
    dom = network.domain_name(name, "c")
    _define_domain(conn, dom, None)
    net = f"xv-{name}-foreign"
    _define_network(conn, net, None)
    default = conn.networkLookupByName("default")
    network.add_reservation(default, "52:54:00:0f:0f:0e", "192.168.122.210", dom)
    return dom, net


def test_down_lab_network_only(conn: libvirt.virConnect, tmp_path: Path) -> None:
    name = f"n{_uid()}"
    _define_network(conn, f"xv-{name}", Ownership(name, "network"))
    foreign_net = f"xv-{name}-x"
    _define_network(conn, foreign_net, None)
    other = _define_network(conn, f"xv-other-{name}", Ownership(f"other{name}", "network"))
    (tmp_path / "run" / "labs" / name).mkdir(parents=True)
    removed = lab.down_lab(conn, name)
    assert f"network xv-{name}" in removed
    assert hv.lookup_network(conn, f"xv-{name}") is None
    assert hv.lookup_network(conn, foreign_net) is not None
    assert other.isActive()
    assert not (tmp_path / "run" / "labs" / name).exists()
    assert lab.down_lab(conn, name) == []  # idempotent


def test_down_lab_removes_only_owned(conn: libvirt.virConnect, tmp_path: Path) -> None:
    name = f"d{_uid()}"
    macs = _make_lab(conn, name, tmp_path)
    foreign_dom, foreign_net = _foreign(conn, name)
    other = f"o{_uid()}"
    _define_domain(conn, network.domain_name(other, "a"), _guest_owner(other, "a", "m", "i"))
    foreign_xml = conn.lookupByName(foreign_dom).XMLDesc(0)

    removed = lab.down_lab(conn, name)

    assert {f"domain {network.domain_name(name, g)}" for g in "ab"} <= set(removed)
    for g in "ab":
        assert hv.lookup_domain(conn, network.domain_name(name, g)) is None
    assert hv.lookup_network(conn, f"xv-{name}") is None
    info = network.read_network(conn.networkLookupByName("default"))
    assert not {macs["a"], macs["b"]} & info.reserved_macs
    assert "52:54:00:0f:0f:0e" in info.reserved_macs  # foreign reservation stays
    assert conn.lookupByName(foreign_dom).XMLDesc(0) == foreign_xml
    assert conn.lookupByName(foreign_dom).isActive()
    assert hv.lookup_network(conn, foreign_net) is not None
    assert hv.lookup_domain(conn, network.domain_name(other, "a")) is not None
    assert not (tmp_path / "run" / "labs" / name).exists()
    assert lab.down_lab(conn, name) == []


def test_down_lab_keeps_a_foreign_reservation_with_our_mac(
    conn: libvirt.virConnect, tmp_path: Path
) -> None:
    """Someone else reserved the MAC our guest would get (why `up` failed): down keeps theirs."""
    name = f"m{_uid()}"
    mac = network.mac_for(name, "a", "test")
    _define_domain(conn, network.domain_name(name, "a"), _guest_owner(name, "a", mac, "192.0.2.9"))
    default = conn.networkLookupByName("default")
    network.add_reservation(default, mac, "192.168.122.220", "somebody-elses-vm")
    with_foreign = default.XMLDesc(0)
    removed = lab.down_lab(conn, name)
    assert f"domain {network.domain_name(name, 'a')}" in removed
    assert not any(r.startswith("reservation") for r in removed)
    assert default.XMLDesc(0) == with_foreign


# ----------------------------------------------------------------------------- readiness


def test_wait_ready_sees_marker(conn: libvirt.virConnect, tmp_path: Path) -> None:
    name = network.domain_name(f"w{_uid()}", "a")
    _define_domain(conn, name, None)
    console = tmp_path / "a.console"
    console.write_text(f"booting\r\n{lab.READY_MARK}\r\n")
    ready = lab.wait_ready(conn, [("a", console, name, "192.168.122.9")], 5.0, "default")
    assert set(ready) == {"a"}


def test_wait_ready_fail_marker(conn: libvirt.virConnect, tmp_path: Path) -> None:
    name = network.domain_name(f"w{_uid()}", "a")
    _define_domain(conn, name, None)
    console = tmp_path / "a.console"
    console.write_text(f"modprobe: 8021q not found\n{lab.FAIL_MARK}\n")
    with pytest.raises(GuestError, match=r"failed to boot.*8021q not found"):
        lab.wait_ready(conn, [("a", console, name, "192.168.122.9")], 5.0, "default")


def test_wait_ready_timeout_explains(conn: libvirt.virConnect, tmp_path: Path) -> None:
    name = network.domain_name(f"w{_uid()}", "a")
    _define_domain(conn, name, None)
    console = tmp_path / "a.console"
    console.write_text("line one\nstuck in init\n")
    with pytest.raises(GuestError) as info:
        lab.wait_ready(conn, [("a", console, name, "192.168.122.9")], 0.2, "default")
    msg = str(info.value)
    assert "not ready within" in msg
    assert "is running" in msg
    assert "192.168.122.9" in msg and "default" in msg
    assert "stuck in init" in msg
    assert len(msg.splitlines()) == 1


def test_wait_ready_stopped_guest(conn: libvirt.virConnect, tmp_path: Path) -> None:
    name = network.domain_name(f"w{_uid()}", "a")
    _define_domain(conn, name, None, start=False)
    with pytest.raises(GuestError, match=r"stopped while booting \(state shutoff\)"):
        lab.wait_ready(conn, [("a", tmp_path / "none", name, "192.168.122.9")], 5.0, "default")


def test_wait_ready_hands_a_stopped_guest_to_restart(
    conn: libvirt.virConnect, tmp_path: Path
) -> None:
    """A guest that stopped before readiness goes to `restart`; when it declines, up fails."""
    name = network.domain_name(f"r{_uid()}", "a")
    dom = _define_domain(conn, name, None, start=False)
    console = tmp_path / "a.console"
    asked: list[str] = []

    def restart(guest: str) -> bool:
        asked.append(guest)
        if len(asked) > 1:
            return False
        dom.create()
        console.write_text(f"booting\n{lab.READY_MARK} name=a\n")
        return True

    lab.wait_ready(conn, [("a", console, name, "192.168.122.9")], 5.0, "default", restart)
    assert asked == ["a"]
    dom.destroy()
    console.write_text("Kernel panic\n")
    with pytest.raises(GuestError, match="stopped while booting"):
        lab.wait_ready(conn, [("a", console, name, "192.168.122.9")], 5.0, "default", restart)
    assert asked == ["a", "a"]


# ----------------------------------------------------------------------------- status


def test_collect_status_on_a_plain_bridge_names_it(conn: libvirt.virConnect) -> None:
    """No libvirt network (a Dom0's xenbr0): the bridge comes from the guests' own XML."""
    name = f"p{_uid()}"
    owner = Ownership(
        name, "domain", {"guest": "a", "mac": "00:16:3e:00:00:01", "mgmt_ip": "10.99.0.254",
                         "network": "", "host_key": "k"},
    )  # fmt: skip
    dom = conn.defineXML(
        f"<domain type='test'><name>{network.domain_name(name, 'a')}</name>"
        f"<metadata>{metadata_element(owner)}</metadata><memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices><interface type='bridge'>"
        "<source bridge='xenbr0'/></interface></devices></domain>"
    )
    dom.create()
    st = lab.collect_status(conn, hv.Choice(TEST_URI, "test", "t"), name, ssh=False)
    assert (st.network, st.bridge) == ("", "xenbr0")


def test_collect_status_from_metadata(conn: libvirt.virConnect) -> None:
    name = f"s{_uid()}"
    for i, g in enumerate("ba"):
        _define_domain(
            conn,
            network.domain_name(name, g),
            _guest_owner(name, g, network.mac_for(name, g, "test"), f"192.168.122.{220 + i}"),
        )
    choice = hv.Choice(TEST_URI, "test", "libvirt test driver")
    st = lab.collect_status(conn, choice, name, ssh=False)
    assert [g.name for g in st.guests] == ["a", "b"]
    assert st.network == "default"
    assert st.bridge == "virbr0"
    a = st.guest("a")
    assert a.state == "running"
    assert a.mac == network.mac_for(name, "a", "test")
    assert a.mgmt_ip == "192.168.122.221"
    assert a.host_port
    data = st.to_json()
    assert {"lab", "uri", "domain_type", "guests", "timings"} <= set(data)
    assert set(data["guests"][0]) >= {
        "name",
        "state",
        "mac",
        "mgmt_ip",
        "vlan_if",
        "vlan_ip",
        "host_port",
        "host_port_mtu",
    }
    with pytest.raises(SpecError):
        st.guest("c")


def test_ownership_of_rendered_domain_is_what_down_needs(conn: libvirt.virConnect) -> None:
    # down_lab after a crash only has libvirt: the mark must carry network and mac.
    spec: LabSpec = from_dict({"name": f"m{_uid()}"})
    own = _guest_owner(spec.name, "a", network.mac_for(spec.name, "a", "test"), "192.168.122.2")
    dom = _define_domain(conn, network.domain_name(spec.name, "a"), own)
    back = read_ownership(dom.XMLDesc(0))
    assert back is not None
    assert back.get("network") == "default"
    assert back.get("mac") == own.get("mac")
