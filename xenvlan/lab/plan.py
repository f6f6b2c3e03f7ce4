"""The pure "plan" step of `up` (every XML document a lab defines) and `up --dry-run`.

`plan_lab` only renders: no libvirt call, no file access. `up` defines what it returns;
`dry_run` prints it. Under Xen the guests join the bridge of the lab's libvirt network
through `<interface type='bridge'>` + vif-bridge (Dom0 port vif<domid>.0), boot on the
console the mode has (hvc0 for PV/PVH, ttyS0 for HVM), and the readiness marker is read from
where that console is logged (see `console_path`).
"""

from __future__ import annotations

import ipaddress
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xenvlan.errors import ImageError, SpecError
from xenvlan.lab.status import check_conflicts
from xenvlan.paths import lab_dir
from xenvlan.spec import GuestSpec, LabSpec
from xenvlan.virt import connection as hv
from xenvlan.virt import network
from xenvlan.virt.network import NetInfo, domain_name, mac_for
from xenvlan.virt.xml import DomainXML, NetworkXML, Ownership

SEPARATOR = "---"


@dataclass(frozen=True)
class GuestPlan:
    """One guest as `up` will define it."""

    guest: GuestSpec
    domain: str
    mac: str
    ip: str
    console: Path  # the file the readiness marker appears in
    xml: str
    console_stream: bool = False  # xenvlan copies the console from libvirt into `console`


@dataclass(frozen=True)
class LabPlan:
    """Every document `up` would define, in order, plus notes for the user."""

    network_xml: str | None  # None when the network exists already
    guests: tuple[GuestPlan, ...]
    notes: tuple[str, ...] = ()

    def documents(self) -> list[str]:
        """Network (when it would be defined) and one domain per guest."""
        docs = [self.network_xml] if self.network_xml else []
        return docs + [g.xml for g in self.guests]

    def dump(self) -> str:
        """The documents separated by a line `---`."""
        return f"{SEPARATOR}\n".join(d if d.endswith("\n") else d + "\n" for d in self.documents())


def dhcp_range(subnet: ipaddress.IPv4Interface) -> tuple[ipaddress.IPv4Address, ...]:
    """The DHCP range xenvlan gives a network it defines: every host address but the bridge's."""
    hosts = list(subnet.network.hosts())
    return (hosts[1] if hosts[0] == subnet.ip else hosts[0], hosts[-1])


def network_xml(spec: LabSpec) -> str:
    """The NAT network `up` defines when the lab's network does not exist."""
    subnet = spec.network.subnet
    lo, hi = dhcp_range(subnet)
    return NetworkXML(
        name=spec.network.name,
        bridge=spec.network.bridge,
        address=str(subnet.ip),
        netmask=str(subnet.netmask),
        range_start=str(lo),
        range_end=str(hi),
        owner=Ownership(spec.name, "network"),
    ).render()


def planned_network(spec: LabSpec) -> NetInfo:
    """The NetInfo the network `network_xml` defines will have (no leases, no reservations)."""
    lo, hi = dhcp_range(spec.network.subnet)
    return NetInfo(
        name=spec.network.name,
        bridge=spec.network.bridge,
        address=spec.network.subnet,
        range=(lo, hi),
        reserved_ips=frozenset(),
        reserved_macs=frozenset(),
        owned_by=spec.name,
    )


def console_device(choice: hv.Choice) -> str:
    """The guest console for the kernel command line: hvc0 on Xen PV/PVH, else ttyS0."""
    return "hvc0" if choice.domain_type == "xen" and choice.xen_mode in ("pv", "pvh") else "ttyS0"


def console_stream(choice: hv.Choice) -> bool:
    """Whether the console is read through libvirt's console stream rather than a file.

    QEMU/KVM and Xen HVM log a `<serial type='file'>` (libxl passes `file:PATH` to qemu-xen).
    Xen PV/PVH have no serial and the libxl driver ignores `<log>` for their console, so xenvlan
    reads it as `virsh console` does. XENVLAN_CONSOLE=stream forces that path on QEMU/KVM too
    (a pty serial), which is how it is tested where Xen cannot run.
    """
    return console_device(choice) == "hvc0" or os.environ.get("XENVLAN_CONSOLE") == "stream"


def console_path(choice: hv.Choice, domain: str, ldir: Path, guest: str) -> Path:
    """Where the readiness marker will appear: always the lab's `<guest>.console` file."""
    del choice, domain
    return ldir / f"{guest}.console"


def plan_lab(
    spec: LabSpec,
    choice: hv.Choice,
    *,
    kernel: Path,
    bzimage: Path,
    ldir: Path,
    info: NetInfo,
    ips: list[str],
    host_keys: dict[str, str],
    define_network: bool,
) -> LabPlan:
    """Render the lab: `kernel` boots QEMU/KVM and Xen PV/PVH (vmlinux), `bzimage` Xen HVM."""
    if len(ips) != len(spec.guests):
        raise SpecError(f"{len(spec.guests)} guests but {len(ips)} addresses")
    xen = choice.domain_type == "xen"
    con = console_device(choice)
    stream = console_stream(choice)
    guests: list[GuestPlan] = []
    for g, ip in zip(spec.guests, ips, strict=True):
        name = domain_name(spec.name, g.name)
        mac = mac_for(spec.name, g.name, choice.domain_type)
        console = console_path(choice, name, ldir, g.name)
        owner = Ownership(
            spec.name,
            "domain",
            {
                "guest": g.name,
                "mac": mac,
                "mgmt_ip": ip,
                "network": info.name,
                "vlan_id": str(spec.vlan.id),
                "vlan_if": spec.vlan.ifname,
                "vlan_ip": str(g.vlan_ip),
                "host_key": host_keys.get(g.name, ""),
            },
        )
        cmdline = (
            f"console={con} quiet panic=-1 xenvlan.name={g.name} "
            f"xenvlan.mgmt={ip}/{info.address.network.prefixlen} xenvlan.gw={info.address.ip}"
        )
        xml = DomainXML(
            name=name,
            domain_type=choice.domain_type,
            memory_mib=g.memory_mib,
            vcpus=g.vcpus,
            kernel=bzimage if xen and choice.xen_mode == "hvm" else kernel,
            initrd=ldir / f"{g.name}.initrd",
            cmdline=cmdline,
            network=info.name,
            mac=mac,
            console_log=console,
            owner=owner,
            xen_mode=choice.xen_mode if xen else None,
            bridge=info.bridge if xen else "",
            console_stream=stream and not xen,
        ).render()
        guests.append(GuestPlan(g, name, mac, ip, console, xml, stream))
    notes: list[str] = []
    if stream:
        notes.append(
            "the guest consoles are read through libvirt's console stream (as `virsh console` "
            "does) into the lab's run directory"
        )
    return LabPlan(network_xml(spec) if define_network else None, tuple(guests), tuple(notes))


# ---------------------------------------------------------------------------- dry run


def image_paths(
    kernel: Path | None, initrd: Path | None, progress: Callable[[str], None]
) -> tuple[Path, Path]:
    """(kernel, bzimage) `up` would boot, without building or writing anything.

    A bring-your-own kernel is used as given. Otherwise the cached image for the current
    inputs: its real paths when it is built, else the paths `up` would build it at.
    """
    from xenvlan.guest import image as image_mod

    if kernel is not None and initrd is not None:
        byo = image_mod.image_from_files(kernel, initrd)  # reads only: both must exist
        return byo.kernel, byo.bzimage

    try:
        img, where = image_mod.cached_image()
    except ImageError as exc:
        raise ImageError(f"dry run: cannot compute the guest image's cache key: {exc}") from None
    if img is not None:
        return img.kernel, img.bzimage
    progress(f"image not built yet: `up` would build it at {where}")
    return where / "vmlinux", where / "bzImage"


def dry_run(
    spec: LabSpec,
    *,
    xen_mode: str = "auto",
    capabilities: Path | None = None,
    kernel: Path | None = None,
    initrd: Path | None = None,
    progress: Callable[[str], None],
) -> LabPlan:
    """The plan `up` would carry out; defines, starts and writes nothing.

    With `capabilities` no libvirt connection is made at all: the host is described by that
    capabilities XML and the lab's network is assumed absent (so its definition is shown).
    Without, a read-only connection reads the capabilities and the existing network.
    """
    if capabilities is not None:
        try:
            caps = capabilities.read_text()
        except OSError as exc:
            raise SpecError(f"--capabilities: {capabilities}: {exc.strerror}") from None
        uri = spec.connect or _uri_for(caps)
        how = f"capabilities from {capabilities} (no connection)"
        choice = hv.choice_from_capabilities(
            uri, caps, how, xen_mode, (True, "assumed usable on the host the file describes")
        )
        info, leased, define_network = planned_network(spec), set[str](), True
        progress(f"offline: assuming network {info.name} is absent (it would be defined)")
    else:
        conn, choice = hv.open_connection(spec.connect, xen_mode, readonly=True)
        try:
            check_conflicts(conn, spec)
            net = hv.lookup_network(conn, spec.network.name)
            define_network = net is None
            if net is None:
                info, leased = planned_network(spec), set()
            else:
                info, leased = network.read_network(net), network.leases(net)
        finally:
            conn.close()
    progress(f"hypervisor {choice.uri}, domain type {choice.domain_type}: {choice.reason}")
    ips = network.pick_addresses(info, leased, len(spec.guests))
    k, bz = image_paths(kernel or spec.image.kernel, initrd or spec.image.initrd, progress)
    plan = plan_lab(
        spec, choice, kernel=k, bzimage=bz, ldir=lab_dir(spec.name), info=info, ips=ips,
        host_keys={}, define_network=define_network,
    )  # fmt: skip
    for note in plan.notes:
        progress(note)
    progress("dry run: nothing defined; SSH host keys are generated by `up` (host_key is empty)")
    return plan


def _uri_for(caps_xml: str) -> str:
    """The URI a capabilities document belongs to, when --connect does not say."""
    try:
        types = hv.domain_types(caps_xml)
    except ET.ParseError as exc:
        raise SpecError(f"--capabilities: not a libvirt capabilities document ({exc})") from None
    if "xen" in types:
        return hv.XEN_URI
    if "test" in types:
        return "test:///default"
    return hv.QEMU_URI
