"""The libvirt connection: hypervisor choice, capability probing, owned objects."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from xenvlan.errors import HypervisorError
from xenvlan.xml import Ownership, read_ownership

XEN_URI = "xen:///system"
QEMU_URI = "qemu:///system"


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_quiet, None)


@dataclass(frozen=True)
class Choice:
    """Which hypervisor and domain type, and why."""

    uri: str
    domain_type: str
    reason: str


def kvm_usable(
    cpuinfo: Path = Path("/proc/cpuinfo"), dev: Path = Path("/dev/kvm")
) -> tuple[bool, str]:
    """Whether KVM really works: /dev/kvm usable *and* hardware virtualization flags present."""
    if not dev.exists():
        return False, f"{dev} is absent"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, f"{dev} is not read/writable"
    try:
        flags = {
            f
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("flags")
            for f in line.split(":", 1)[1].split()
        }
    except OSError as exc:
        return False, f"cannot read {cpuinfo}: {exc.strerror}"
    if not flags & {"vmx", "svm"}:
        return False, f"{dev} exists but the CPU shows no vmx/svm flag (guests would crawl)"
    return True, "/dev/kvm usable and the CPU has hardware virtualization"


def domain_types(caps_xml: str) -> set[str]:
    """Domain types the host offers for x86_64 guests (any arch for libvirt's test driver)."""
    root = ET.fromstring(caps_xml)
    types: set[str] = set()
    for guest in root.findall("guest"):
        arch = guest.find("arch")
        if arch is None:
            continue
        for dom in arch.findall("domain"):
            if dom.get("type") == "test":
                types.add("test")
        if arch.get("name") != "x86_64":
            continue
        for dom in arch.findall("domain"):
            if t := dom.get("type"):
                types.add(t)
    return types


def choose_domain_type(uri: str, caps_xml: str, kvm: tuple[bool, str]) -> tuple[str, str]:
    """xen on a Xen host; kvm only when KVM really works; else qemu (TCG)."""
    types = domain_types(caps_xml)
    if "xen" in types:
        return "xen", "libvirt's libxl driver offers xen domains"
    if "test" in types:
        return "test", "libvirt test driver"
    if "kvm" in types and kvm[0]:
        return "kvm", kvm[1]
    if "qemu" in types:
        why = "libvirt offers no kvm domain type" if "kvm" not in types else kvm[1]
        return "qemu", f"TCG software emulation: {why}"
    raise HypervisorError(f"{uri}: the host offers no usable x86_64 domain type ({sorted(types)})")


def open_connection(uri: str | None) -> tuple[libvirt.virConnect, Choice]:
    """Open `uri`, or auto: xen:///system when the libxl driver answers, else qemu:///system."""
    tried: list[str] = []
    candidates = [uri] if uri else [XEN_URI, QEMU_URI]
    for cand in candidates:
        try:
            conn = libvirt.open(cand)
        except libvirt.libvirtError as exc:
            tried.append(f"{cand}: {_msg(exc)}")
            continue
        if conn is None:
            tried.append(f"{cand}: no connection")
            continue
        dtype, why = choose_domain_type(cand, conn.getCapabilities(), kvm_usable())
        how = "given with --connect" if uri else "auto-detected"
        if not uri and cand == QEMU_URI:
            how += f" ({tried[0] if tried else 'xen not tried'})"
        return conn, Choice(uri=cand, domain_type=dtype, reason=f"{how}; {dtype}: {why}")
    hint = " (is libvirtd running? on a bare machine: xenvlan sandbox start)"
    raise HypervisorError("cannot connect to libvirt: " + "; ".join(tried) + hint)


def _msg(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).strip().splitlines()[0]


def owned_domains(
    conn: libvirt.virConnect, lab: str | None = None
) -> Iterator[tuple[libvirt.virDomain, Ownership]]:
    """Every domain carrying xenvlan's mark (of one lab, or all)."""
    for dom in conn.listAllDomains(0):
        try:
            own = read_ownership(dom.XMLDesc(0))
        except libvirt.libvirtError:
            continue  # vanished meanwhile
        if own and own.kind == "domain" and (lab is None or own.lab == lab):
            yield dom, own


def owned_networks(
    conn: libvirt.virConnect, lab: str | None = None
) -> Iterator[tuple[libvirt.virNetwork, Ownership]]:
    """Every network carrying xenvlan's mark (of one lab, or all)."""
    for net in conn.listAllNetworks(0):
        try:
            own = read_ownership(net.XMLDesc(0))
        except libvirt.libvirtError:
            continue
        if own and own.kind == "network" and (lab is None or own.lab == lab):
            yield net, own


def lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    """A domain by name, or None."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise HypervisorError(f"looking up domain {name}: {_msg(exc)}") from None


def lookup_network(conn: libvirt.virConnect, name: str) -> libvirt.virNetwork | None:
    """A network by name, or None."""
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise HypervisorError(f"looking up network {name}: {_msg(exc)}") from None


def remove_domain(dom: libvirt.virDomain) -> None:
    """Destroy (if running) and undefine; a domain already gone is fine."""
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise HypervisorError(f"destroying {dom.name()}: {_msg(exc)}") from None
    try:
        dom.undefine()  # direct kernel boot: no NVRAM, snapshots or managed save to remove
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (
            libvirt.VIR_ERR_NO_DOMAIN,
            libvirt.VIR_ERR_OPERATION_INVALID,
        ):
            raise HypervisorError(f"undefining {dom.name()}: {_msg(exc)}") from None


def remove_network(net: libvirt.virNetwork) -> None:
    """Destroy (if active) and undefine; a network already gone is fine."""
    try:
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
            raise HypervisorError(f"removing network {net.name()}: {_msg(exc)}") from None


STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def domain_state(dom: libvirt.virDomain) -> str:
    """running / shutoff / ... as a word."""
    try:
        state, _reason = dom.state()
    except libvirt.libvirtError:
        return "gone"
    return STATE_NAMES.get(state, str(state))


def host_port(dom: libvirt.virDomain) -> str | None:
    """The host side of the guest's first NIC (vnetN on QEMU/KVM, vifD.N on Xen)."""
    try:
        root = ET.fromstring(dom.XMLDesc(0))
    except libvirt.libvirtError:
        return None
    target = root.find("devices/interface/target")
    if target is not None and target.get("dev"):
        return target.get("dev")
    if root.get("type") == "xen" and (domid := root.get("id")) and domid != "-1":
        return f"vif{domid}.0"
    return None


def error_text(exc: libvirt.libvirtError) -> str:
    """libvirt's message, one line."""
    return _msg(exc)
