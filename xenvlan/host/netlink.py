"""Netlink (pyroute2) in the current network namespace: the one place that opens IPRoute."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xenvlan.errors import HostChangeError


@contextmanager
def open_netlink() -> Iterator[IPRoute]:
    """A netlink socket of this namespace, closed after the block."""
    with IPRoute() as ipr:
        yield ipr


def set_link_mtu(ifname: str, mtu: int) -> None:
    """Set a host link's MTU (callers journal the original first)."""
    try:
        with open_netlink() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu)
    except (NetlinkError, IndexError) as exc:
        raise HostChangeError(f"setting MTU {mtu} on {ifname}: {exc}") from None


def link_mtus() -> dict[str, int]:
    """Every link's MTU, by name."""
    with open_netlink() as ipr:
        return {
            str(link.get_attr("IFLA_IFNAME")): int(link.get_attr("IFLA_MTU"))
            for link in ipr.get_links()
        }


def _link_attrs(ifname: str, *attrs: str) -> dict[str, Any] | None:
    """The named IFLA_* attributes of one link, or None when it does not exist here."""
    with open_netlink() as ipr:
        try:
            links = ipr.link("get", ifname=ifname)
        except NetlinkError:
            return None
        if not links:
            return None
        return {a: links[0].get_attr(a) for a in attrs}


def link_mtu(ifname: str) -> int | None:
    """The MTU of a host link, or None when it does not exist here."""
    attrs = _link_attrs(ifname, "IFLA_MTU")
    return int(attrs["IFLA_MTU"]) if attrs and attrs["IFLA_MTU"] is not None else None


def link_address(ifname: str) -> str | None:
    """The MAC address of a host link, or None when it does not exist here."""
    attrs = _link_attrs(ifname, "IFLA_ADDRESS")
    return str(attrs["IFLA_ADDRESS"]).lower() if attrs and attrs["IFLA_ADDRESS"] else None


def is_guest_tap(ifname: str, guest_mac: str) -> bool:
    """Whether `ifname` here is the host side of the NIC with `guest_mac`.

    libvirt gives a QEMU/KVM tap the guest MAC with the first byte 0xfe; Xen vifs carry
    fe:ff:ff:ff:ff:ff. A same-named link in another namespace fails this check.
    """
    addr = link_address(ifname)
    if addr is None:
        return False
    return addr == "fe" + guest_mac.lower()[2:] or addr == "fe:ff:ff:ff:ff:ff"


def bridge_ipv4(ifname: str) -> tuple[bool, ipaddress.IPv4Interface | None]:
    """Whether `ifname` is a Linux bridge here, and its first IPv4 address (None: none)."""
    with open_netlink() as ipr:
        try:
            links = ipr.link("get", ifname=ifname)
        except NetlinkError:
            return False, None
        if not links:
            return False, None
        info = links[0].get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "bridge":
            return False, None
        for addr in ipr.get_addr(index=links[0]["index"], family=socket.AF_INET):
            ip = addr.get_attr("IFA_ADDRESS")
            if ip:
                return True, ipaddress.IPv4Interface(f"{ip}/{addr['prefixlen']}")
        return True, None
