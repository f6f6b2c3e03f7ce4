"""Which labs exist and what they look like: libvirt metadata, host ports, VLANs over SSH."""

from __future__ import annotations

import libvirt

from xenvlan.errors import GuestError, HypervisorError, SpecError, XenvlanError
from xenvlan.guest import keys, vlan
from xenvlan.guest.session import GuestAddress, GuestSession
from xenvlan.host.netlink import is_guest_tap, link_mtu
from xenvlan.lab.model import GuestInfo, LabStatus
from xenvlan.paths import lab_dir
from xenvlan.spec import LabSpec, check_lab_name
from xenvlan.virt import connection as hv
from xenvlan.virt.network import (
    domain_name,
    read_network,
)
from xenvlan.virt.xml import read_ownership


def check_conflicts(conn: libvirt.virConnect, spec: LabSpec) -> None:
    for g in spec.guests:
        name = domain_name(spec.name, g.name)
        dom = hv.lookup_domain(conn, name)
        if dom is None:
            continue
        own = read_ownership(dom.XMLDesc(0))
        if own is None or own.lab != spec.name:
            raise HypervisorError(
                f"domain {name} exists and is not xenvlan lab {spec.name}'s: refusing to touch it"
            )
        raise HypervisorError(f"lab {spec.name} is already up (run `xenvlan down` first)")


# ---------------------------------------------------------------------------- status


def labs_present(conn: libvirt.virConnect) -> list[str]:
    """Names of every xenvlan lab with a domain or network in libvirt."""
    names = {own.lab for _d, own in hv.owned_domains(conn)}
    names |= {own.lab for _n, own in hv.owned_networks(conn)}
    return sorted(names)


def resolve_lab(conn: libvirt.virConnect, name: str | None) -> str:
    """The lab to act on: the given name, or the only lab present."""
    if name:
        return check_lab_name(name)
    present = labs_present(conn)
    if len(present) == 1:
        return present[0]
    if not present:
        raise SpecError("no xenvlan lab is up (start one with `xenvlan up`)")
    raise SpecError(f"several labs are up ({', '.join(present)}): choose one with --name")


def session_for(lab: str, guest: GuestInfo) -> GuestSession:
    """An unconnected SSH session to a lab guest, with its pinned key and the lab's client key."""
    key_path = lab_dir(lab) / "id_ed25519"
    if not key_path.exists():
        raise GuestError(f"lab {lab}: client key {key_path} is missing (was the run dir removed?)")
    return GuestSession(
        GuestAddress(guest.name, guest.mgmt_ip, guest.host_key), keys.load_pkey(key_path)
    )


def collect_status(
    conn: libvirt.virConnect, choice: hv.Choice, lab: str, *, ssh: bool = True
) -> LabStatus:
    """Guests from libvirt metadata; host ports via pyroute2; VLAN state over SSH when asked."""
    guests: list[GuestInfo] = []
    network = ""
    owned = sorted(hv.owned_domains(conn, lab), key=lambda d: d[1].get("guest"))
    doms = [dom for dom, _own in owned]
    for dom, own in owned:
        port = hv.host_port(dom)
        gi = GuestInfo(
            name=own.get("guest"),
            domain=dom.name(),
            state=hv.domain_state(dom),
            mac=own.get("mac"),
            mgmt_ip=own.get("mgmt_ip"),
            # What the lab configured (metadata); with ssh=True, what the guest reports instead.
            vlan_if=None if ssh else own.get("vlan_if") or None,
            vlan_ip=None if ssh else own.get("vlan_ip") or None,
            host_port=port,
            host_port_mtu=link_mtu(port) if port else None,
            host_key=own.get("host_key"),
        )
        network = own.get("network") or network
        guests.append(gi)
    bridge = None
    if network and (net := hv.lookup_network(conn, network)) is not None:
        bridge = read_network(net).bridge
    elif not network and doms:  # a plain bridge (no libvirt network): the guests name it
        bridge = hv.source_bridge(doms[0])
    if ssh:
        for gi in guests:
            if gi.state != "running":
                continue
            try:
                with session_for(lab, gi).connect(5.0) as s:
                    found = vlan.read(s, gi.name)
            except GuestError:
                continue
            for v in found.values():
                gi.vlan_if, gi.vlan_ip = v.name, v.address
    return LabStatus(
        lab=lab,
        uri=choice.uri,
        domain_type=choice.domain_type,
        reason=choice.reason,
        network=network,
        bridge=bridge,
        guests=guests,
    )


def discover_lab_ports(uri: str | None = None) -> dict[str, str]:
    """Host port -> "lab/guest" for every running xenvlan guest; empty when libvirt is away."""
    try:
        conn, _choice = hv.open_connection(uri)
    except XenvlanError:
        return {}
    try:
        ports: dict[str, str] = {}
        for dom, own in hv.owned_domains(conn):
            port = hv.host_port(dom)
            if port and hv.domain_state(dom) == "running" and is_guest_tap(port, own.get("mac")):
                ports[port] = f"{own.lab}/{own.get('guest')}"
        return ports
    finally:
        conn.close()
