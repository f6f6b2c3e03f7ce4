"""Rendering libvirt XML from templates (autoescaped) and the ownership <metadata> element."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from xenvlan.virt.modes import XEN_MODES

NS = "https://xenvlan.dev/xmlns/lab/1"
ET.register_namespace("xenvlan", NS)


@dataclass(frozen=True)
class Ownership:
    """xenvlan's mark on a libvirt object: the lab id plus facts `down` needs after a crash."""

    lab: str
    kind: str  # "domain" | "network"
    attrs: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        """One recorded attribute."""
        return self.attrs.get(key, default)


def metadata_element(own: Ownership) -> Markup:
    """The `<xenvlan:lab>` element (escaped by ElementTree, so safe to embed)."""
    if reserved := {"id", "kind"} & set(own.attrs):
        raise ValueError(f"ownership attributes may not be named {sorted(reserved)}")
    el = ET.Element(f"{{{NS}}}lab", {"id": own.lab, "kind": own.kind, **own.attrs})
    return Markup(ET.tostring(el, encoding="unicode"))


def read_ownership(xml: str) -> Ownership | None:
    """The ownership mark in a domain/network XML, or None when xenvlan did not create it."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    el = root.find(f"metadata/{{{NS}}}lab")
    if el is None or not el.get("id"):
        return None
    attrs = {k: v for k, v in el.attrib.items() if k not in ("id", "kind")}
    return Ownership(lab=el.get("id", ""), kind=el.get("kind", root.tag), attrs=attrs)


def templates_dir() -> Path:
    """The domain and network templates, shipped as package data beside this module."""
    return Path(__file__).resolve().parent / "templates"


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_value(value: object) -> object:
    """Escape one template value so it reads back exactly, in text *and* in attributes.

    Autoescaping covers ``& < > " '``; an XML parser also normalizes tab/newline/CR inside
    attribute values to spaces, so those become character references. Characters XML 1.0
    cannot carry at all are refused instead of producing a document libvirt rejects.
    """
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    if m := _XML_ILLEGAL.search(value):
        raise ValueError(f"{value[:40]!r}: character {m.group()!r} cannot appear in XML")
    text = str(escape(value))
    return Markup(text.replace("\t", "&#9;").replace("\n", "&#10;").replace("\r", "&#13;"))


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,
        finalize=_xml_value,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render(template: str, **values: object) -> str:
    """Render one template; every value is XML-escaped."""
    return _env().get_template(template).render(**values)


@dataclass(frozen=True)
class DomainXML:
    """Everything a guest domain template needs."""

    name: str
    domain_type: str
    memory_mib: int
    vcpus: int
    kernel: Path
    initrd: Path
    cmdline: str
    network: str
    mac: str
    console_log: Path
    owner: Ownership
    xen_mode: str | None = None  # pv | pvh | hvm when domain_type is xen
    bridge: str = ""  # Xen: the host bridge the vif joins (no libvirt network in between)
    console_stream: bool = False  # QEMU/KVM: a pty serial read through libvirt, not a file

    def template(self) -> str:
        """domain-xen.xml.j2 for Xen (PV/PVH/HVM), else domain-qemu.xml.j2."""
        return "domain-xen.xml.j2" if self.domain_type == "xen" else "domain-qemu.xml.j2"

    def render(self, template: str | None = None) -> str:
        """The domain XML."""
        if self.domain_type == "xen" and (self.xen_mode not in XEN_MODES or not self.bridge):
            raise ValueError("a xen domain needs xen_mode pv|pvh|hvm and a bridge")
        return render(
            template or self.template(),
            name=self.name,
            domain_type=self.domain_type,
            memory_mib=self.memory_mib,
            vcpus=self.vcpus,
            kernel=str(self.kernel),
            initrd=str(self.initrd),
            cmdline=self.cmdline,
            network=self.network,
            mac=self.mac,
            console_log=str(self.console_log),
            metadata=metadata_element(self.owner),
            xen_mode=self.xen_mode or "",
            console_stream=self.console_stream,
            bridge=self.bridge,
        )


@dataclass(frozen=True)
class NetworkXML:
    """A NAT network on a bridge, owned by a lab."""

    name: str
    bridge: str
    address: str
    netmask: str
    range_start: str
    range_end: str
    owner: Ownership

    def render(self) -> str:
        """The network XML."""
        return render(
            "network.xml.j2",
            name=self.name,
            bridge=self.bridge,
            address=self.address,
            netmask=self.netmask,
            range_start=self.range_start,
            range_end=self.range_end,
            metadata=metadata_element(self.owner),
        )


def dhcp_host_xml(mac: str, ip: str, name: str) -> str:
    """A `<host>` DHCP reservation element (for virNetworkUpdate)."""
    el = ET.Element("host", {"mac": mac, "name": name, "ip": ip})
    return ET.tostring(el, encoding="unicode")
