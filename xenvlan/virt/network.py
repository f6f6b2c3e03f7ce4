"""The lab's libvirt network: naming, addresses, and static DHCP reservations (MAC -> IP)."""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from xenvlan.errors import HypervisorError
from xenvlan.virt import connection as hv
from xenvlan.virt.xml import dhcp_host_xml, read_ownership


def domain_name(lab: str, guest: str) -> str:
    """libvirt name of a lab's guest."""
    return f"xenvlan-{lab}-{guest}"


def mac_for(lab: str, guest: str, domain_type: str) -> str:
    """A stable locally-derived MAC: 00:16:3e (Xen) or 52:54:00 (QEMU) + 3 hashed bytes."""
    prefix = "00:16:3e" if domain_type == "xen" else "52:54:00"
    h = hashlib.sha256(f"{lab}/{guest}".encode()).digest()
    return prefix + "".join(f":{b:02x}" for b in h[:3])


@dataclass(frozen=True)
class NetInfo:
    """The libvirt network the lab uses."""

    name: str
    bridge: str
    address: ipaddress.IPv4Interface
    range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None
    reserved_ips: frozenset[str]
    reserved_macs: frozenset[str]
    owned_by: str | None


def read_network(net: libvirt.virNetwork) -> NetInfo:
    """Bridge, IPv4 subnet, DHCP range and reservations of a network."""
    xml_text = net.XMLDesc(0)
    root = ET.fromstring(xml_text)
    bridge_el = root.find("bridge")
    bridge = bridge_el.get("name", "") if bridge_el is not None else ""
    for ip_el in root.findall("ip"):
        if ip_el.get("family", "ipv4") != "ipv4" or not ip_el.get("address"):
            continue
        addr = ip_el.get("address", "")
        mask = ip_el.get("netmask") or ip_el.get("prefix") or "24"
        iface = ipaddress.IPv4Interface(f"{addr}/{mask}")
        rng_el = ip_el.find("dhcp/range")
        rng = None
        if rng_el is not None:
            rng = (
                ipaddress.IPv4Address(rng_el.get("start", "")),
                ipaddress.IPv4Address(rng_el.get("end", "")),
            )
        hosts = ip_el.findall("dhcp/host")
        own = read_ownership(xml_text)
        return NetInfo(
            name=net.name(),
            bridge=bridge,
            address=iface,
            range=rng,
            reserved_ips=frozenset(h.get("ip", "") for h in hosts),
            reserved_macs=frozenset(h.get("mac", "").lower() for h in hosts),
            owned_by=own.lab if own else None,
        )
    raise HypervisorError(f"network {net.name()} has no IPv4 address: xenvlan needs one")


def plain_bridge(bridge: str, address: ipaddress.IPv4Interface) -> NetInfo:
    """A Linux bridge with no libvirt network (a Dom0's `xenbr0`): no DHCP, nothing reserved."""
    return NetInfo(
        name="",
        bridge=bridge,
        address=address,
        range=None,
        reserved_ips=frozenset(),
        reserved_macs=frozenset(),
        owned_by=None,
    )


def pick_addresses(info: NetInfo, leased: set[str], count: int) -> list[str]:
    """Free management IPs, from the top of the subnet down, outside leases and reservations."""
    net = info.address.network
    taken = set(info.reserved_ips) | leased | {str(info.address.ip)}
    lo, hi = info.range if info.range else (net.network_address + 2, net.broadcast_address - 1)
    out: list[str] = []
    cand = hi
    while cand >= lo and len(out) < count:
        if str(cand) not in taken:
            out.append(str(cand))
        cand -= 1
    if len(out) < count:
        raise HypervisorError(f"network {info.name}: no free addresses for {count} guests")
    return out


def leases(net: libvirt.virNetwork | None) -> set[str]:
    if net is None:
        return set()
    try:
        return {lease["ipaddr"] for lease in net.DHCPLeases()}
    except libvirt.libvirtError:
        return set()


def _update_dhcp_host(net: libvirt.virNetwork, command: int, host_xml: str) -> None:
    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    if net.isActive():
        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
    net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host_xml, flags)


def add_reservation(net: libvirt.virNetwork, mac: str, ip: str, name: str) -> None:
    """A static DHCP reservation (MAC -> IP) on the network."""
    try:
        _update_dhcp_host(
            net, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, dhcp_host_xml(mac, ip, name)
        )
    except libvirt.libvirtError as exc:
        raise HypervisorError(
            f"network {net.name()}: adding reservation {mac}->{ip}: {hv.error_text(exc)}"
        ) from None


def reserve(net: libvirt.virNetwork | None, info: NetInfo, mac: str, ip: str, name: str) -> bool:
    """Claim `ip` for `mac` where a DHCP server could hand it out; False on a DHCP-less network.

    Guests take their address from the kernel command line, so without DHCP (or without a
    libvirt network: a plain bridge) nothing of libvirt's can claim it, and a reservation would
    only cost a refresh of the network's firewall rules.
    """
    if net is None or info.range is None:
        return False
    add_reservation(net, mac, ip, name)
    return True


def remove_reservation(net: libvirt.virNetwork, mac: str, name: str | None = None) -> bool:
    """Remove our reservation for `mac` (named `name`, when given); True when one was removed.

    `down` passes the domain name `up` gave the reservation, so a foreign reservation that
    happens to carry the same MAC (the reason a failed `up` rolled back) survives.
    """
    info = read_network(net)
    if mac.lower() not in info.reserved_macs:
        return False
    root = ET.fromstring(net.XMLDesc(0))
    for host in root.iter("host"):
        if host.get("mac", "").lower() == mac.lower() and name in (None, host.get("name")):
            try:
                _update_dhcp_host(
                    net,
                    libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
                    ET.tostring(host, encoding="unicode"),
                )
            except libvirt.libvirtError as exc:
                raise HypervisorError(
                    f"network {net.name()}: removing reservation {mac}: {hv.error_text(exc)}"
                ) from None
            return True
    return False
