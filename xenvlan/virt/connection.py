"""The libvirt connection: hypervisor choice, capability probing, owned objects."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from xenvlan.errors import HypervisorError, SpecError
from xenvlan.virt.modes import AUTO_ORDER, MODE_CHOICES, XEN_MODES, XenMode
from xenvlan.virt.xml import Ownership, read_ownership

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
    xen_mode: str | None = None  # pv | pvh | hvm for domain type xen, else None


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


#: <os_type> in libxl capabilities -> xenvlan's Xen mode (machines xenpv, xenpvh, xenfv).
_XEN_OS_TYPES = {"xen": XenMode.PV, "linux": XenMode.PV, "xenpvh": XenMode.PVH, "hvm": XenMode.HVM}


def xen_modes(caps_xml: str) -> set[str]:
    """The Xen guest kinds (pv, pvh, hvm) the host offers for x86_64 `xen` domains."""
    modes: set[str] = set()
    for guest in ET.fromstring(caps_xml).findall("guest"):
        arch = guest.find("arch")
        if arch is None or arch.get("name") != "x86_64":
            continue
        if not any(d.get("type") == "xen" for d in arch.findall("domain")):
            continue
        if mode := _XEN_OS_TYPES.get((guest.findtext("os_type") or "").strip()):
            modes.add(mode)
        if any((m.text or "").strip() == "xenpvh" for m in arch.findall("machine")):
            modes.add(XenMode.PVH)
    return modes


def choose_xen_mode(caps_xml: str, requested: str = "auto") -> tuple[str, str]:
    """(mode, why): auto prefers PVH, then PV, then HVM; an explicit mode must be offered."""
    offered = xen_modes(caps_xml)
    listed = ", ".join(m for m in XEN_MODES if m in offered) or "none"
    if requested != "auto":
        if requested not in XEN_MODES:
            raise SpecError(f"--xen-mode: {requested!r} is not one of {MODE_CHOICES}")
        if requested not in offered:
            raise HypervisorError(
                f"the Xen host offers no {requested} x86_64 guests (offered: {listed})"
            )
        return requested, f"Xen {requested} given with --xen-mode"
    for mode in AUTO_ORDER:
        if mode in offered:
            return mode, f"Xen {mode} auto-selected (offered: {listed})"
    raise HypervisorError("the Xen host offers no x86_64 pv, pvh or hvm guests")


def choice_from_capabilities(
    uri: str, caps_xml: str, how: str, xen_mode: str = "auto", kvm: tuple[bool, str] | None = None
) -> Choice:
    """The Choice for a connection whose capabilities are `caps_xml` (pure, no libvirt call)."""
    try:
        dtype, why = choose_domain_type(uri, caps_xml, kvm or (False, "not probed"))
    except ET.ParseError as exc:
        raise HypervisorError(f"{uri}: capabilities are not XML ({exc})") from None
    if dtype != "xen":
        if xen_mode != "auto":
            raise SpecError(f"--xen-mode {xen_mode}: {uri} offers {dtype} domains, not Xen")
        return Choice(uri=uri, domain_type=dtype, reason=f"{how}; {dtype}: {why}")
    mode, mode_why = choose_xen_mode(caps_xml, xen_mode)
    return Choice(uri, dtype, f"{how}; {dtype}: {why}; {mode_why}", xen_mode=mode)


def open_connection(
    uri: str | None, xen_mode: str = "auto", *, readonly: bool = False
) -> tuple[libvirt.virConnect, Choice]:
    """Open `uri`, or auto: xen:///system when the libxl driver answers, else qemu:///system."""
    tried: list[str] = []
    candidates = [uri] if uri else [XEN_URI, QEMU_URI]
    for cand in candidates:
        try:
            conn = libvirt.openReadOnly(cand) if readonly else libvirt.open(cand)
        except libvirt.libvirtError as exc:
            tried.append(f"{cand}: {_msg(exc)}")
            continue
        if conn is None:
            tried.append(f"{cand}: no connection")
            continue
        how = "given with --connect" if uri else "auto-detected"
        if not uri and cand == QEMU_URI:
            how += f" ({tried[0] if tried else 'xen not tried'})"
        try:
            choice = choice_from_capabilities(
                cand, conn.getCapabilities(), how, xen_mode, kvm_usable()
            )
        except BaseException:
            conn.close()
            raise
        return conn, choice
    if uri and uri.split(":", 1)[0].split("+", 1)[0] == "xen":
        raise HypervisorError(
            f"{uri}: libvirt's Xen (libxl) driver is not reachable: {tried[0].split(': ', 1)[1]}"
            " (needs a Xen Dom0 with libvirt-daemon-driver-xen; to preview the XML: "
            "xenvlan up --dry-run --connect xen:///system --capabilities FILE)"
        )
    if xen_mode != "auto" and not uri:
        tried.append("--xen-mode given but no Xen host answered")
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
    """Destroy (if running) and undefine; a domain already gone, or stopping by itself, is fine."""
    for _attempt in range(50):
        try:
            if dom.isActive():
                dom.destroy()
            break
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                break
            # A guest that crashed or rebooted (on_crash/on_reboot=destroy) may be mid-shutdown:
            # "domain is not running" / "in use" until libvirt has finished stopping it.
            if code not in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_FAILED):
                raise HypervisorError(f"destroying {dom.name()}: {_msg(exc)}") from None
            time.sleep(0.1)
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


def _live_xml(dom: libvirt.virDomain) -> ET.Element | None:
    try:
        return ET.fromstring(dom.XMLDesc(0))
    except libvirt.libvirtError:
        return None


def host_port(dom: libvirt.virDomain) -> str | None:
    """The host side of the guest's first NIC (vnetN on QEMU/KVM, vifD.N on Xen)."""
    root = _live_xml(dom)
    if root is None:
        return None
    target = root.find("devices/interface/target")
    if target is not None and target.get("dev"):
        return target.get("dev")
    if root.get("type") == "xen" and (domid := root.get("id")) and domid != "-1":
        return f"vif{domid}.0"
    return None


def source_bridge(dom: libvirt.virDomain) -> str | None:
    """The bridge the guest's first NIC joins when it names one (`<source bridge=...>`)."""
    root = _live_xml(dom)
    source = root.find("devices/interface/source") if root is not None else None
    return source.get("bridge") if source is not None and source.get("bridge") else None


def error_text(exc: libvirt.libvirtError) -> str:
    """libvirt's message, one line."""
    return _msg(exc)
