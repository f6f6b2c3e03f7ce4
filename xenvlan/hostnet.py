"""Small netlink reads of host links (pyroute2), in the current network namespace."""

from __future__ import annotations

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


def link_mtu(ifname: str) -> int | None:
    """The MTU of a host link, or None when it does not exist here."""
    with IPRoute() as ipr:
        try:
            links = ipr.link("get", ifname=ifname)
        except NetlinkError:
            return None
        for link in links:
            mtu = link.get("IFLA_MTU") if hasattr(link, "get") else None
            if mtu is None:
                mtu = link.get_attr("IFLA_MTU")
            return int(mtu) if mtu is not None else None
    return None


def link_master(ifname: str) -> str | None:
    """The bridge a host link is enslaved to, or None."""
    with IPRoute() as ipr:
        try:
            links = ipr.link("get", ifname=ifname)
        except NetlinkError:
            return None
        for link in links:
            idx = link.get_attr("IFLA_MASTER")
            if idx is None:
                return None
            masters = ipr.link("get", index=idx)
            return str(masters[0].get_attr("IFLA_IFNAME")) if masters else None
    return None


def link_address(ifname: str) -> str | None:
    """The MAC address of a host link, or None when it does not exist here."""
    with IPRoute() as ipr:
        try:
            links = ipr.link("get", ifname=ifname)
        except NetlinkError:
            return None
        for link in links:
            addr = link.get_attr("IFLA_ADDRESS")
            return str(addr).lower() if addr else None
    return None


def is_guest_tap(ifname: str, guest_mac: str) -> bool:
    """Whether `ifname` here is the host side of the NIC with `guest_mac`.

    libvirt gives a QEMU/KVM tap the guest MAC with the first byte 0xfe; Xen vifs carry
    fe:ff:ff:ff:ff:ff. A same-named link in another namespace fails this check.
    """
    addr = link_address(ifname)
    if addr is None:
        return False
    return addr == "fe" + guest_mac.lower()[2:] or addr == "fe:ff:ff:ff:ff:ff"
