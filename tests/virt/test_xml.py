"""libvirt XML rendering: well-formed, schema-valid, escaped, carrying the ownership mark.

Golden files under tests/data/golden/ pin the exact output for a fixed input; regenerate them
after a deliberate template change with ``XENVLAN_UPDATE_GOLDEN=1 pytest tests/test_xml.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from xenvlan.virt.xml import (
    NS,
    DomainXML,
    NetworkXML,
    Ownership,
    dhcp_host_xml,
    metadata_element,
    read_ownership,
    render,
    templates_dir,
)

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
VALIDATE = shutil.which("virt-xml-validate")
HOSTILE = [
    "</cmdline><devices><disk/>",
    "' onload='x",
    '"/><x y="',
    "a & b; c < d > e",
    "]]><![CDATA[",
    "<!-- -->",
    "&amp;&lt;",
    "<?xml version='1.0'?>",
    "\u00e9\u2028\U0001f600",
    "tab\tand\nnewline",
]


def _owner(kind: str = "domain", **attrs: str) -> Ownership:
    return Ownership("seed", kind, attrs)


def _domain(**over: object) -> DomainXML:
    values: dict[str, object] = {
        "name": "xenvlan-seed-a",
        "domain_type": "qemu",
        "memory_mib": 128,
        "vcpus": 1,
        "kernel": Path("/var/cache/xenvlan/vmlinuz"),
        "initrd": Path("/run/xenvlan/labs/seed/a.initrd"),
        "cmdline": "console=ttyS0 quiet panic=-1 xenvlan.name=a",
        "network": "default",
        "mac": "52:54:00:12:34:56",
        "console_log": Path("/run/xenvlan/labs/seed/a.console"),
        "owner": _owner(guest="a", mac="52:54:00:12:34:56", mgmt_ip="192.168.122.254"),
    }
    values.update(over)
    return DomainXML(**values)  # type: ignore[arg-type]


def _network(**over: object) -> NetworkXML:
    values: dict[str, object] = {
        "name": "xv-lab",
        "bridge": "xvbr0",
        "address": "192.168.150.1",
        "netmask": "255.255.255.0",
        "range_start": "192.168.150.2",
        "range_end": "192.168.150.254",
        "owner": _owner("network"),
    }
    values.update(over)
    return NetworkXML(**values)  # type: ignore[arg-type]


def _validate(tmp_path: Path, text: str, kind: str) -> None:
    if VALIDATE is None:
        pytest.skip("virt-xml-validate is not installed")
    f = tmp_path / f"{kind}.xml"
    f.write_text(text)
    res = subprocess.run(
        [VALIDATE, str(f), kind], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- rendering


def test_templates_dir_holds_the_templates() -> None:
    names = {p.name for p in templates_dir().glob("*.xml.j2")}
    assert {"domain-qemu.xml.j2", "network.xml.j2"} <= names


@pytest.mark.parametrize("dtype", ["qemu", "kvm"])
def test_domain_renders_valid_xml(tmp_path: Path, dtype: str) -> None:
    text = _domain(domain_type=dtype).render()
    root = ET.fromstring(text)
    assert root.tag == "domain"
    assert root.get("type") == dtype
    assert root.findtext("name") == "xenvlan-seed-a"
    assert root.findtext("os/kernel") == "/var/cache/xenvlan/vmlinuz"
    assert root.findtext("os/initrd") == "/run/xenvlan/labs/seed/a.initrd"
    mem = root.find("memory")
    assert mem is not None and mem.text == "128" and mem.get("unit") == "MiB"
    iface = root.find("devices/interface")
    assert iface is not None and iface.get("type") == "network"
    src, mac = iface.find("source"), iface.find("mac")
    assert src is not None and src.get("network") == "default"
    assert mac is not None and mac.get("address") == "52:54:00:12:34:56"
    serial = root.find("devices/serial/source")
    assert serial is not None and serial.get("path") == "/run/xenvlan/labs/seed/a.console"
    cpu = root.find("cpu")
    assert (cpu is not None) == (dtype == "kvm"), "host-passthrough CPU only under KVM"
    _validate(tmp_path, text, "domain")


def test_network_renders_valid_xml(tmp_path: Path) -> None:
    text = _network().render()
    root = ET.fromstring(text)
    assert root.tag == "network"
    assert root.findtext("name") == "xv-lab"
    bridge = root.find("bridge")
    assert bridge is not None and bridge.get("name") == "xvbr0"
    ip = root.find("ip")
    assert ip is not None and ip.get("address") == "192.168.150.1"
    rng = root.find("ip/dhcp/range")
    assert rng is not None
    assert (rng.get("start"), rng.get("end")) == ("192.168.150.2", "192.168.150.254")
    _validate(tmp_path, text, "network")


def test_rendered_objects_carry_ownership() -> None:
    dom = read_ownership(_domain().render())
    assert dom is not None
    assert (dom.lab, dom.kind) == ("seed", "domain")
    assert dom.get("guest") == "a" and dom.get("mgmt_ip") == "192.168.122.254"
    net = read_ownership(_network().render())
    assert net is not None and (net.lab, net.kind) == ("seed", "network")


def test_metadata_uses_the_xenvlan_namespace() -> None:
    root = ET.fromstring(_domain().render())
    el = root.find(f"metadata/{{{NS}}}lab")
    assert el is not None and el.get("id") == "seed"
    assert len(list(root.find("metadata") or [])) == 1


# ----------------------------------------------------------------------------- escaping


@pytest.mark.parametrize("value", HOSTILE)
def test_domain_values_are_escaped(tmp_path: Path, value: str) -> None:
    text = _domain(
        cmdline=value,
        kernel=Path("/k/" + value),
        initrd=Path("/i/" + value),
        console_log=Path("/c/" + value),
        network=value,
        name=value,
    ).render()
    root = ET.fromstring(text)  # a break-out would make this fail or change the tree
    assert root.findtext("os/cmdline") == value
    assert root.findtext("os/kernel") == "/k/" + value
    assert root.findtext("os/initrd") == "/i/" + value
    assert root.findtext("name") == value
    src = root.find("devices/interface/source")
    assert src is not None and src.get("network") == value
    con = root.find("devices/serial/source")
    assert con is not None and con.get("path") == "/c/" + value
    # Structure unchanged: still exactly one <devices>, one <os>, no <disk> anywhere.
    assert len(root.findall("devices")) == 1
    assert len(root.findall("os")) == 1
    assert root.find(".//disk") is None


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_cmdline_still_schema_valid(tmp_path: Path, value: str) -> None:
    _validate(tmp_path, _domain(cmdline=value).render(), "domain")


@pytest.mark.parametrize("value", HOSTILE)
def test_network_values_are_escaped(value: str) -> None:
    root = ET.fromstring(_network(name=value, bridge=value, range_end=value).render())
    assert root.findtext("name") == value
    bridge, rng = root.find("bridge"), root.find("ip/dhcp/range")
    assert bridge is not None and bridge.get("name") == value
    assert rng is not None and rng.get("end") == value
    assert len(root.findall("ip")) == 1


@pytest.mark.parametrize("value", HOSTILE)
def test_ownership_attrs_round_trip(value: str) -> None:
    own = Ownership(lab=value, kind="domain", attrs={"guest": value, "host_key": value})
    back = read_ownership(_domain(owner=own).render())
    assert back is not None
    assert back.lab == value
    assert back.attrs == {"guest": value, "host_key": value}


def test_ownership_round_trip_exact() -> None:
    attrs = {"guest": "b", "mac": "00:16:3e:aa:bb:cc", "vlan_if": "eth0.3", "empty": ""}
    own = Ownership("lab-1", "domain", attrs)
    back = read_ownership(_domain(owner=own).render())
    assert back == own


def test_ownership_reserved_attrs_refused() -> None:
    with pytest.raises(ValueError, match="id"):
        metadata_element(Ownership("seed", "domain", {"id": "other-lab"}))


def test_render_autoescapes_every_value() -> None:
    text = render(
        "network.xml.j2",
        **{
            "name": "<a>",
            "bridge": "b",
            "address": "1.1.1.1",
            "netmask": "255.0.0.0",
            "range_start": "1.1.1.2",
            "range_end": "1.1.1.3",
            "metadata": "<not-markup/>",
        },
    )
    assert "<a>" not in text and "&lt;a&gt;" in text
    assert "<not-markup/>" not in text, "a plain str must not pass through unescaped"


@pytest.mark.parametrize("bad", ["\x00", "\x01", "\x1b[31m", "\x0c", "\ufffe"])
def test_render_refuses_characters_xml_cannot_carry(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot appear in XML"):
        _domain(cmdline=f"console=ttyS0 {bad}").render()


def test_render_refuses_missing_values() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render("network.xml.j2", name="x")


def test_dhcp_host_xml_escapes() -> None:
    text = dhcp_host_xml("52:54:00:00:00:01", "192.168.122.9", "a'/><x y='")
    el = ET.fromstring(text)
    assert el.tag == "host"
    assert el.attrib == {"mac": "52:54:00:00:00:01", "ip": "192.168.122.9", "name": "a'/><x y='"}


# ----------------------------------------------------------------------------- read_ownership


FOREIGN_DOMAIN = """<domain type='kvm'>
  <name>xenvlan-seed-a</name>
  <metadata>
    <app:lab xmlns:app="https://example.org/other" id="seed" kind="domain"/>
  </metadata>
  <memory unit='MiB'>128</memory>
</domain>"""


@pytest.mark.parametrize(
    "text",
    [
        FOREIGN_DOMAIN,
        "<domain type='kvm'><name>x</name></domain>",
        "<network><name>default</name><metadata/></network>",
        f"<domain><metadata><x:lab xmlns:x='{NS}' kind='domain'/></metadata></domain>",
        f"<domain><metadata><x:lab xmlns:x='{NS}' id='' kind='domain'/></metadata></domain>",
        # The mark anywhere but directly under <metadata> does not count.
        f"<domain><description><x:lab xmlns:x='{NS}' id='seed'/></description></domain>",
        f"<domain><x:lab xmlns:x='{NS}' id='seed'/></domain>",
        "",
        "not xml",
        "<domain>",
        "\x00\x01",
    ],
)
def test_read_ownership_foreign_or_broken_is_none(text: str) -> None:
    assert read_ownership(text) is None


def test_read_ownership_any_prefix() -> None:
    # libvirt may re-serialize with its own prefix; only the namespace URI matters.
    mark = f"<q:lab xmlns:q='{NS}' id='lab9' kind='network' x='1'/>"
    text = f"<network><metadata>{mark}</metadata></network>"
    own = read_ownership(text)
    assert own == Ownership("lab9", "network", {"x": "1"})


# ----------------------------------------------------------------------------- golden


def _golden_inputs() -> dict[str, str]:
    owner = Ownership(
        "seed",
        "domain",
        {
            "guest": "a",
            "mac": "52:54:00:12:34:56",
            "mgmt_ip": "192.168.122.254",
            "network": "default",
            "vlan_id": "3",
            "vlan_if": "eth0.3",
            "vlan_ip": "11.11.4.2/24",
            "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGolden",
        },
    )
    dom = _domain(
        owner=owner,
        cmdline=(
            "console=ttyS0 quiet panic=-1 xenvlan.name=a xenvlan.mgmt=192.168.122.254/24 "
            "xenvlan.gw=192.168.122.1"
        ),
    )
    return {"domain-qemu.xml": dom.render(), "network.xml": _network().render()}


@pytest.mark.parametrize("name", ["domain-qemu.xml", "network.xml"])
def test_golden(name: str) -> None:
    text = _golden_inputs()[name]
    path = GOLDEN / name
    if os.environ.get("XENVLAN_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with XENVLAN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"{name} differs from {path}; if the template change is deliberate, "
        "regenerate with XENVLAN_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize(
    ("name", "kind"), [("domain-qemu.xml", "domain"), ("network.xml", "network")]
)
def test_golden_files_validate(tmp_path: Path, name: str, kind: str) -> None:
    _validate(tmp_path, (GOLDEN / name).read_text(), kind)
