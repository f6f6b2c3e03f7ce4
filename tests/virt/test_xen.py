"""Xen guests through libvirt's libxl driver, and `up --dry-run`, without a Xen host.

Correctness comes from libvirt's own RNG schemas (``virt-xml-validate``), golden files of
every domain kind the plan step renders (regenerate after a deliberate change with
``XENVLAN_UPDATE_GOLDEN=1``) and recorded capabilities: ``caps/xen.xml`` (PV, PVH and HVM, as
libvirt's libxl driver lists them) and ``caps/xen-pv-only.xml`` (a Xen host without VT-x).
The capabilities files are not schema-checked: libvirt 9.0's capability.rng lags its libxl
driver (it lacks ``<os_type>xenpvh</os_type>`` and the ``xenmigr`` transport).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from tests.conftest import Run, run_cli
from xenvlan.errors import HypervisorError, SpecError
from xenvlan.lab import plan as plan_mod
from xenvlan.spec import seed
from xenvlan.virt import connection as hv
from xenvlan.virt.network import NetInfo
from xenvlan.virt.xml import read_ownership

DATA = Path(__file__).parents[1] / "data"
CAPS = DATA / "caps"
GOLDEN = DATA / "golden"
VALIDATE = shutil.which("virt-xml-validate")
LDIR = Path("/run/xenvlan/labs/seed")
VMLINUX = Path("/var/cache/xenvlan/images/0123456789abcdef/vmlinux")
BZIMAGE = Path("/var/cache/xenvlan/images/0123456789abcdef/bzImage")
HOST_KEYS = {"a": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoldenA", "b": "ssh-ed25519 AAAAGoldenB"}
KINDS = {  # golden name -> Choice
    "kvm": hv.Choice("qemu:///system", "kvm", "golden"),
    "xen-pv": hv.Choice(hv.XEN_URI, "xen", "golden", xen_mode="pv"),
    "xen-pvh": hv.Choice(hv.XEN_URI, "xen", "golden", xen_mode="pvh"),
    "xen-hvm": hv.Choice(hv.XEN_URI, "xen", "golden", xen_mode="hvm"),
}


def _validate(tmp_path: Path, text: str, kind: str) -> None:
    if VALIDATE is None:
        pytest.skip("virt-xml-validate is not installed")
    f = tmp_path / f"{kind}.xml"
    f.write_text(text)
    res = subprocess.run(
        [VALIDATE, str(f), kind], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr


def _info(bridge: str = "virbr0") -> NetInfo:
    return NetInfo(
        name="default",
        bridge=bridge,
        address=ipaddress.IPv4Interface("192.168.122.1/24"),
        range=None,
        reserved_ips=frozenset(),
        reserved_macs=frozenset(),
        owned_by=None,
    )


def _plan(choice: hv.Choice, bridge: str = "virbr0") -> plan_mod.LabPlan:
    return plan_mod.plan_lab(
        seed(),
        choice,
        kernel=VMLINUX,
        bzimage=BZIMAGE,
        ldir=LDIR,
        info=_info(bridge),
        ips=["192.168.122.254", "192.168.122.253"],
        host_keys=HOST_KEYS,
        define_network=True,
    )


def _domain(choice: hv.Choice, bridge: str = "virbr0") -> ET.Element:
    return ET.fromstring(_plan(choice, bridge).guests[0].xml)


# ----------------------------------------------------------------------------- XML


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_planned_document_validates(tmp_path: Path, kind: str) -> None:
    plan = _plan(KINDS[kind])
    docs = plan.documents()
    assert len(docs) == 3
    _validate(tmp_path, docs[0], "network")
    for doc in docs[1:]:
        _validate(tmp_path, doc, "domain")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_golden(kind: str) -> None:
    text = _plan(KINDS[kind]).guests[0].xml
    path = GOLDEN / f"domain-{kind}.xml"
    if os.environ.get("XENVLAN_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with XENVLAN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; regenerate with XENVLAN_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_golden_files_validate(tmp_path: Path, kind: str) -> None:
    _validate(tmp_path, (GOLDEN / f"domain-{kind}.xml").read_text(), "domain")


@pytest.mark.parametrize(
    ("kind", "machine", "os_type"),
    [("xen-pv", "xenpv", "linux"), ("xen-pvh", "xenpvh", "xenpvh"), ("xen-hvm", "xenfv", "hvm")],
)
def test_xen_os_type_and_kernel(kind: str, machine: str, os_type: str) -> None:
    root = _domain(KINDS[kind])
    assert root.get("type") == "xen"
    t = root.find("os/type")
    assert t is not None and (t.get("arch"), t.get("machine"), t.text) == (
        "x86_64",
        machine,
        os_type,
    )
    # PV/PVH boot the ELF vmlinux (PVH needs its XEN_ELFNOTE_PHYS32_ENTRY); HVM the bzImage.
    assert root.findtext("os/kernel") == str(BZIMAGE if kind == "xen-hvm" else VMLINUX)
    assert root.findtext("os/initrd") == str(LDIR / "a.initrd")
    # HVM needs acpi/apic/pae spelled out: libxl turns each off when absent (no long mode).
    feats = {f.tag for f in root.findall("features/*")}
    assert feats == ({"acpi", "apic", "pae"} if kind == "xen-hvm" else set())


@pytest.mark.parametrize("kind", ["xen-pv", "xen-pvh", "xen-hvm"])
def test_xen_nic_is_a_netfront_vif_on_the_bridge(kind: str) -> None:
    root = _domain(KINDS[kind], bridge="xenbr0")
    ifaces = root.findall("devices/interface")
    assert len(ifaces) == 1 and ifaces[0].get("type") == "bridge"
    iface = ifaces[0]
    src, script = iface.find("source"), iface.find("script")
    mac, model = iface.find("mac"), iface.find("model")
    assert src is not None and src.attrib == {"bridge": "xenbr0"}
    assert script is not None and script.get("path") == "vif-bridge"
    assert mac is not None and mac.get("address", "").startswith("00:16:3e:")
    assert model is not None and model.get("type") == "netfront"
    # Nothing the libxl driver refuses: no virtio rng, no memballoon model='none'.
    assert root.find("devices/rng") is None and root.find("devices/memballoon") is None


@pytest.mark.parametrize(
    ("kind", "device"),
    [("kvm", "ttyS0"), ("xen-pv", "hvc0"), ("xen-pvh", "hvc0"), ("xen-hvm", "ttyS0")],
)
def test_console_matches_the_kernel_cmdline(kind: str, device: str) -> None:
    plan = _plan(KINDS[kind])
    g = plan.guests[0]
    root = ET.fromstring(g.xml)
    cmdline = root.findtext("os/cmdline") or ""
    assert re.findall(r"\bconsole=(\S+)", cmdline) == [device]
    if device == "hvc0":
        con = root.find("devices/console")
        target = root.find("devices/console/target")
        assert con is not None and con.get("type") == "pty"
        assert target is not None and target.attrib == {"type": "xen", "port": "0"}
        assert root.find("devices/serial") is None, "libxl ignores <serial> for PV/PVH"
        # PV/PVH consoles are read through libvirt's console stream into the run directory.
        assert g.console_stream and g.console.name == "a.console"
        assert plan.notes and "console stream" in plan.notes[0]
    else:
        serial, src = root.find("devices/serial"), root.find("devices/serial/source")
        assert serial is not None and serial.get("type") == "file"
        assert src is not None
        assert src.get("path") == str(g.console) == str(LDIR / "a.console")
        assert plan.notes == ()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ownership_mark_is_the_same_for_every_kind(kind: str) -> None:
    g = _plan(KINDS[kind]).guests[0]
    own = read_ownership(g.xml)
    assert own is not None and (own.lab, own.kind) == ("seed", "domain")
    assert own.attrs == {
        "guest": "a",
        "mac": g.mac,
        "mgmt_ip": "192.168.122.254",
        "network": "default",
        "vlan_id": "3",
        "vlan_if": "eth0.3",
        "vlan_ip": "11.11.4.2/24",
        "host_key": HOST_KEYS["a"],
    }


def test_xen_domain_needs_mode_and_bridge() -> None:
    with pytest.raises(ValueError, match="xen_mode"):
        _plan(hv.Choice(hv.XEN_URI, "xen", "no mode"))
    with pytest.raises(ValueError, match="bridge"):
        _plan(KINDS["xen-pv"], bridge="")


@pytest.mark.parametrize("value", ["</source><disk/>", "' x='", "a&b"])
def test_xen_values_are_escaped(tmp_path: Path, value: str) -> None:
    root = _domain(KINDS["xen-pvh"], bridge=value)
    src = root.find("devices/interface/source")
    assert src is not None and src.get("bridge") == value
    assert root.find(".//disk") is None


def test_guest_init_follows_the_kernel_console() -> None:
    # /init writes the marker to /dev/console, i.e. to whatever console= names (hvc0 on PV/PVH,
    # ttyS0 elsewhere): it must not pick a device itself. xen-netfront is in the module list.
    from xenvlan.guest.image.build import init_script
    from xenvlan.guest.image.modules import MODULES

    init = init_script().decode()
    assert not re.search(r"/dev/(ttyS|hvc)\d", init)
    assert re.search(r'say "XENVLAN-READY', init) and ">/dev/console" in init
    assert "xen-netfront" in MODULES


# ----------------------------------------------------------------------------- selection


def _caps_without(os_type: str) -> str:
    root = ET.parse(CAPS / "xen.xml").getroot()
    for guest in root.findall("guest"):
        if guest.findtext("os_type") == os_type:
            root.remove(guest)
    return ET.tostring(root, encoding="unicode")


def test_xen_modes_from_recorded_capabilities() -> None:
    assert hv.xen_modes((CAPS / "xen.xml").read_text()) == {"pv", "pvh", "hvm"}
    assert hv.xen_modes((CAPS / "xen-pv-only.xml").read_text()) == {"pv"}
    assert hv.xen_modes((CAPS / "qemu.xml").read_text()) == set()
    assert hv.xen_modes((CAPS / "test.xml").read_text()) == set()


@pytest.mark.parametrize(
    ("caps", "want"),
    [
        ((CAPS / "xen.xml").read_text(), "pvh"),
        (_caps_without("xenpvh"), "pv"),  # libvirt < 8.x lists no PVH guests
        ((CAPS / "xen-pv-only.xml").read_text(), "pv"),
        (_caps_without("xen").replace("xenpvh", "gone"), "hvm"),
    ],
)
def test_auto_prefers_pvh_then_pv_then_hvm(caps: str, want: str) -> None:
    mode, why = hv.choose_xen_mode(caps)
    assert mode == want and "auto-selected" in why


@pytest.mark.parametrize("mode", ["pv", "pvh", "hvm"])
def test_explicit_mode_when_offered(mode: str) -> None:
    choice = hv.choice_from_capabilities(hv.XEN_URI, (CAPS / "xen.xml").read_text(), "t", mode)
    assert (choice.domain_type, choice.xen_mode) == ("xen", mode)
    assert f"Xen {mode} given with --xen-mode" in choice.reason


@pytest.mark.parametrize("mode", ["pvh", "hvm"])
def test_explicit_mode_not_offered_is_a_hypervisor_error(mode: str) -> None:
    with pytest.raises(HypervisorError, match=f"no {mode} x86_64 guests.*offered: pv"):
        hv.choose_xen_mode((CAPS / "xen-pv-only.xml").read_text(), mode)


def test_xen_mode_on_a_qemu_host_is_refused() -> None:
    caps = (CAPS / "qemu.xml").read_text()
    with pytest.raises(SpecError, match="not Xen"):
        hv.choice_from_capabilities("qemu:///system", caps, "t", "pv")
    choice = hv.choice_from_capabilities("qemu:///system", caps, "t", "auto", (True, "ok"))
    assert (choice.domain_type, choice.xen_mode) == ("kvm", None)


def test_no_xen_guests_at_all() -> None:
    with pytest.raises(HypervisorError, match="no x86_64 pv, pvh or hvm"):
        hv.choose_xen_mode("<capabilities><host/></capabilities>")


# ----------------------------------------------------------------------------- dry run


@pytest.fixture
def no_libvirt(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("dry run with --capabilities opened a libvirt connection")

    for name in ("open", "openReadOnly", "openAuth"):
        monkeypatch.setattr(libvirt, name, refuse)


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("XENVLAN_RUN_DIR", str(run))
    return run


@pytest.mark.parametrize("mode", ["pv", "pvh", "hvm", "auto"])
def test_dry_run_offline_makes_no_connection_and_writes_nothing(
    tmp_path: Path, run_dir: Path, no_libvirt: None, mode: str
) -> None:
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd.gz"
    kernel.write_bytes(b"\x7fELF" + b"\0" * 60)
    initrd.write_bytes(b"\x1f\x8b")
    msgs: list[str] = []
    plan = plan_mod.dry_run(
        seed(),
        xen_mode=mode,
        capabilities=CAPS / "xen.xml",
        kernel=kernel,
        initrd=initrd,
        progress=msgs.append,
    )
    assert list(run_dir.iterdir()) == []
    docs = plan.dump().split("---\n")
    assert len(docs) == 3
    assert ET.fromstring(docs[0]).tag == "network"
    want = "pvh" if mode == "auto" else mode
    for doc, guest in zip(docs[1:], ("a", "b"), strict=True):
        root = ET.fromstring(doc)
        assert root.get("type") == "xen"
        assert root.findtext("name") == f"xenvlan-seed-{guest}"
        assert root.findtext("os/kernel") == str(kernel)
        assert root.findtext("os/initrd") == str(run_dir / "labs" / "seed" / f"{guest}.initrd")
        t = root.find("os/type")
        assert t is not None and t.get("machine") == {"pv": "xenpv", "pvh": "xenpvh"}.get(
            want, "xenfv"
        )
    assert any("no connection" in m for m in msgs)


def test_dry_run_uses_the_cached_image_or_where_it_would_be(
    run_dir: Path, no_libvirt: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import xenvlan.guest.image as image_mod

    where = tmp_path / "cache" / "images" / "feedface"

    def not_built(**_k: object) -> tuple[None, Path]:
        return None, where

    monkeypatch.setattr(image_mod, "cached_image", not_built)
    monkeypatch.setattr(image_mod, "ensure_image", lambda **_k: pytest.fail("built an image"))
    msgs: list[str] = []
    plan = plan_mod.dry_run(
        seed(), xen_mode="hvm", capabilities=CAPS / "xen.xml", progress=msgs.append
    )
    assert ET.fromstring(plan.guests[0].xml).findtext("os/kernel") == str(where / "bzImage")
    assert any(f"would build it at {where}" in m for m in msgs)
    assert not (tmp_path / "cache").exists()


def test_dry_run_against_an_existing_network_omits_it(run_dir: Path) -> None:
    # test:///default has network `default`: up would only add reservations, not define it.
    from dataclasses import replace

    spec = replace(seed(), connect="test:///default")
    kernel = run_dir.parent / "bzImage"
    kernel.write_bytes(b"MZ" + b"\0" * 0x300)
    plan = plan_mod.dry_run(spec, kernel=kernel, initrd=kernel, progress=lambda _m: None)
    assert plan.network_xml is None
    assert len(plan.documents()) == 2
    assert list(run_dir.iterdir()) == []


# ----------------------------------------------------------------------------- CLI


def _xenvlan(dirs: dict[str, Path], *args: str) -> Run:
    return run_cli(dirs, *args)


def _one_line_error(r: Run, code: int) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenvlan: error: "), r.stderr
    assert r.code == code, (r.code, r.stderr)
    assert r.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("mode", "machine"), [("pv", "xenpv"), ("pvh", "xenpvh"), ("hvm", "xenfv"), ("auto", "xenpvh")]
)
def test_cli_dry_run_prints_three_valid_documents(
    tmp_path: Path, dirs: dict[str, Path], mode: str, machine: str
) -> None:
    r = _xenvlan(
        dirs,
        "up",
        "--dry-run",
        "--connect",
        hv.XEN_URI,
        "--xen-mode",
        mode,
        "--capabilities",
        str(CAPS / "xen.xml"),
    )
    assert r.code == 0, r.stderr
    docs = r.stdout.split("---\n")
    assert len(docs) == 3, r.stdout
    _validate(tmp_path, docs[0], "network")
    for doc in docs[1:]:
        _validate(tmp_path, doc, "domain")
        t = ET.fromstring(doc).find("os/type")
        assert t is not None and t.get("machine") == machine
    for name in ("run", "state"):
        assert list(dirs[name].rglob("*")) == [], f"{name} dir changed"
    assert not list(dirs["cache"].rglob("*")), "the dry run built or cached something"


def test_cli_dry_run_qemu_capabilities(tmp_path: Path, dirs: dict[str, Path]) -> None:
    r = _xenvlan(dirs, "up", "--dry-run", "--capabilities", str(CAPS / "qemu.xml"))
    assert r.code == 0, r.stderr
    docs = r.stdout.split("---\n")
    assert len(docs) == 3
    for doc in docs[1:]:
        assert ET.fromstring(doc).get("type") == "kvm"
        _validate(tmp_path, doc, "domain")


def test_cli_xen_without_libxl_is_exit_3_one_line(dirs: dict[str, Path]) -> None:
    line = _one_line_error(_xenvlan(dirs, "up", "--connect", hv.XEN_URI), 3)
    assert "xen:///system: libvirt's Xen (libxl) driver is not reachable" in line
    assert "--dry-run" in line


def test_cli_mode_not_offered_is_exit_3(dirs: dict[str, Path]) -> None:
    caps = str(CAPS / "xen-pv-only.xml")
    r = _xenvlan(dirs, "up", "--dry-run", "--xen-mode", "pvh", "--capabilities", caps)
    assert "no pvh x86_64 guests" in _one_line_error(r, 3)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--xen-mode", "hvm2"), "--xen-mode"),
        (("--capabilities", str(CAPS / "xen.xml")), "only goes with --dry-run"),
        (("--dry-run", "--capabilities", "/nonexistent/caps.xml"), "--capabilities"),
        (("--dry-run", "--capabilities", str(DATA / "labs")), "--capabilities"),
    ],
)
def test_cli_bad_dry_run_input_is_exit_2(
    dirs: dict[str, Path], args: tuple[str, ...], needle: str
) -> None:
    assert needle in _one_line_error(_xenvlan(dirs, "up", *args), 2)
    for name in ("run", "state"):
        assert list(dirs[name].rglob("*")) == []
