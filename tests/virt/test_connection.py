"""Hypervisor choice on recorded capabilities, KVM detection, owned objects on the test driver.

tests/data/caps/: ``qemu.xml`` recorded from this machine's libvirtd (QEMU, kvm + qemu domain
types), ``test.xml`` from ``virsh -c test:///default capabilities``, ``xen.xml`` written after
libvirt's libxl driver (xen PV, HVM and PVH guests, all of domain type xen).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import libvirt
import pytest

from xenvlan.errors import HypervisorError
from xenvlan.virt import connection as hv
from xenvlan.virt.xml import NS, Ownership, metadata_element

CAPS = Path(__file__).parents[1] / "data" / "caps"
TEST_URI = "test:///default"

CPUINFO_VMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov vmx ssse3 sse4_1
vmx flags\t: vnmi preemption_timer invvpid ept_x_only ept_ad
bugs\t\t: spectre_v1 spectre_v2
"""
CPUINFO_SVM = CPUINFO_VMX.replace(" vmx ", " svm ").replace("vmx flags", "svm flags")
CPUINFO_NONE = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge hypervisor lahf_lm
bugs\t\t: fxsave_leak sysret_ss_attrs
processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge hypervisor lahf_lm
"""


# ----------------------------------------------------------------------------- kvm_usable


@pytest.fixture
def fake_kvm(tmp_path: Path) -> Path:
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    dev.chmod(0o600)
    return dev


def _cpuinfo(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text", [CPUINFO_VMX, CPUINFO_SVM])
def test_kvm_usable_with_hw_flags(tmp_path: Path, fake_kvm: Path, text: str) -> None:
    ok, why = hv.kvm_usable(_cpuinfo(tmp_path, text), fake_kvm)
    assert ok, why


def test_kvm_not_usable_without_flags(tmp_path: Path, fake_kvm: Path) -> None:
    ok, why = hv.kvm_usable(_cpuinfo(tmp_path, CPUINFO_NONE), fake_kvm)
    assert not ok
    assert "vmx/svm" in why


def test_kvm_vmx_flags_line_alone_is_not_enough(tmp_path: Path, fake_kvm: Path) -> None:
    # A "vmx flags" line without vmx in "flags" must not count.
    text = CPUINFO_NONE + "vmx flags\t: vnmi preemption_timer\n"
    assert not hv.kvm_usable(_cpuinfo(tmp_path, text), fake_kvm)[0]


def test_kvm_not_usable_without_device(tmp_path: Path) -> None:
    ok, why = hv.kvm_usable(_cpuinfo(tmp_path, CPUINFO_VMX), tmp_path / "no-kvm")
    assert not ok
    assert "absent" in why


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open any device node")
def test_kvm_not_usable_when_device_not_writable(tmp_path: Path, fake_kvm: Path) -> None:
    fake_kvm.chmod(0o400)
    ok, why = hv.kvm_usable(_cpuinfo(tmp_path, CPUINFO_VMX), fake_kvm)
    assert not ok and "read/writable" in why


def test_kvm_not_usable_when_cpuinfo_unreadable(tmp_path: Path, fake_kvm: Path) -> None:
    ok, why = hv.kvm_usable(tmp_path / "missing-cpuinfo", fake_kvm)
    assert not ok
    assert "cannot read" in why


def test_kvm_on_this_machine_matches_cpu_flags() -> None:
    text = Path("/proc/cpuinfo").read_text()
    flags = set(
        " ".join(ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")).split()
    )
    ok, _why = hv.kvm_usable()
    if not flags & {"vmx", "svm"}:
        assert not ok, "no vmx/svm here: kvm must not be chosen"
    elif not Path("/dev/kvm").exists():
        assert not ok


# ----------------------------------------------------------------------------- domain types


def _caps(name: str) -> str:
    return (CAPS / name).read_text()


def test_domain_types_from_recorded_caps() -> None:
    assert hv.domain_types(_caps("qemu.xml")) == {"qemu", "kvm"}
    assert hv.domain_types(_caps("xen.xml")) == {"xen"}


@pytest.mark.parametrize(
    ("caps", "kvm", "expect"),
    [
        ("qemu.xml", (True, "kvm fine"), "kvm"),
        ("qemu.xml", (False, "/dev/kvm exists but the CPU shows no vmx/svm flag"), "qemu"),
        ("xen.xml", (False, "n/a"), "xen"),
        ("xen.xml", (True, "kvm fine"), "xen"),
    ],
)
def test_choose_domain_type(caps: str, kvm: tuple[bool, str], expect: str) -> None:
    dtype, why = hv.choose_domain_type("uri", _caps(caps), kvm)
    assert dtype == expect
    assert why
    if expect == "qemu":
        assert "TCG" in why and kvm[1] in why


def test_choose_qemu_when_libvirt_offers_no_kvm() -> None:
    caps = _caps("qemu.xml").replace("<domain type='kvm'/>", "")
    assert "kvm" not in hv.domain_types(caps)
    dtype, why = hv.choose_domain_type("qemu:///system", caps, (True, "kvm fine"))
    assert dtype == "qemu"
    assert "no kvm domain type" in why


def test_choose_refuses_host_without_x86_64() -> None:
    caps = (
        _caps("qemu.xml")
        .replace("name='x86_64'", "name='aarch64'")
        .replace("name='i686'", "name='armv7l'")
    )
    with pytest.raises(HypervisorError, match="no usable x86_64 domain type"):
        hv.choose_domain_type("qemu:///system", caps, (True, "kvm fine"))


def test_choose_test_driver() -> None:
    dtype, _why = hv.choose_domain_type(TEST_URI, _caps("test.xml"), (False, "n/a"))
    assert dtype == "test"


# ----------------------------------------------------------------------------- connection


def test_open_connection_test_driver() -> None:
    conn, choice = hv.open_connection(TEST_URI)
    try:
        assert choice.uri == TEST_URI
        assert choice.domain_type == "test"
        assert "given with --connect" in choice.reason
    finally:
        conn.close()


def test_open_connection_refused_is_one_clean_error() -> None:
    with pytest.raises(HypervisorError) as info:
        hv.open_connection("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    msg = str(info.value)
    assert msg.startswith("cannot connect to libvirt: ")
    assert len(msg.splitlines()) == 1
    assert "sandbox" in msg


# ----------------------------------------------------------------------------- owned objects


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _domain_xml(name: str, owner: Ownership | None) -> str:
    meta = f"<metadata>{metadata_element(owner)}</metadata>" if owner else ""
    return (
        f"<domain type='test'><name>{name}</name>{meta}<memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )


def _define(
    c: libvirt.virConnect, name: str, owner: Ownership | None, start: bool = False
) -> libvirt.virDomain:
    dom = c.defineXML(_domain_xml(name, owner))
    if start:
        dom.create()
    return dom


def _net(
    c: libvirt.virConnect, name: str, owner: Ownership | None, bridge: str
) -> libvirt.virNetwork:
    meta = f"<metadata>{metadata_element(owner)}</metadata>" if owner else ""
    net = c.networkDefineXML(
        f"<network><name>{name}</name>{meta}<bridge name='{bridge}'/>"
        "<ip address='10.77.0.1' netmask='255.255.255.0'/></network>"
    )
    net.create()
    return net


def test_owned_domains_lists_only_owned(conn: libvirt.virConnect) -> None:
    lab = f"lab{_uid()}"
    mine = f"xenvlan-{lab}-a"
    foreign = f"xenvlan-{lab}-b"  # a name that looks like ours, without our mark
    other_ns = f"xenvlan-{lab}-c"
    _define(conn, mine, Ownership(lab, "domain", {"guest": "a"}), start=True)
    _define(conn, foreign, None)
    conn.defineXML(
        f"<domain type='test'><name>{other_ns}</name><metadata>"
        f"<o:lab xmlns:o='https://example.org/not-xenvlan' id='{lab}' kind='domain'/>"
        "</metadata><memory unit='MiB'>128</memory><os><type>hvm</type></os></domain>"
    )
    _define(conn, f"xenvlan-other{_uid()}-a", Ownership("other", "domain"))
    found = {d.name(): own for d, own in hv.owned_domains(conn, lab)}
    assert set(found) == {mine}
    assert found[mine].get("guest") == "a"
    everything = {d.name() for d, _own in hv.owned_domains(conn)}
    assert mine in everything and foreign not in everything and other_ns not in everything


def test_owned_domains_ignores_network_marks(conn: libvirt.virConnect) -> None:
    lab = f"lab{_uid()}"
    _define(conn, f"xv-{lab}", Ownership(lab, "network"))  # wrong kind on a domain
    assert list(hv.owned_domains(conn, lab)) == []


def test_owned_networks_lists_only_owned(conn: libvirt.virConnect) -> None:
    lab = f"lab{_uid()}"
    _net(conn, f"own-{lab}", Ownership(lab, "network"), f"xo{_uid()}")
    _net(conn, f"for-{lab}", None, f"xf{_uid()}")
    found = [n.name() for n, _own in hv.owned_networks(conn, lab)]
    assert found == [f"own-{lab}"]
    assert "default" not in [n.name() for n, _own in hv.owned_networks(conn)]


def test_lookup_missing_is_none(conn: libvirt.virConnect) -> None:
    assert hv.lookup_domain(conn, f"nope-{_uid()}") is None
    assert hv.lookup_network(conn, f"nope-{_uid()}") is None
    dom = hv.lookup_domain(conn, "test")
    assert dom is not None and dom.name() == "test"


def test_remove_domain_idempotent(conn: libvirt.virConnect) -> None:
    name = f"xenvlan-rm{_uid()}-a"
    dom = _define(conn, name, Ownership("rm", "domain"), start=True)
    hv.remove_domain(dom)
    assert hv.lookup_domain(conn, name) is None
    hv.remove_domain(dom)  # already gone: fine
    assert hv.lookup_domain(conn, name) is None


def test_remove_network_idempotent(conn: libvirt.virConnect) -> None:
    name = f"rm-{_uid()}"
    net = _net(conn, name, Ownership("rm", "network"), f"xr{_uid()}")
    hv.remove_network(net)
    assert hv.lookup_network(conn, name) is None
    hv.remove_network(net)
    assert hv.lookup_network(conn, name) is None


def test_domain_state_and_host_port(conn: libvirt.virConnect) -> None:
    name = f"xenvlan-st{_uid()}-a"
    dom = conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory>"
        "<os><type>hvm</type></os><devices><interface type='network'>"
        "<source network='default'/><mac address='52:54:00:00:00:42'/></interface>"
        "</devices></domain>"
    )
    assert hv.domain_state(dom) == "shutoff"
    dom.create()
    assert hv.domain_state(dom) == "running"
    port = hv.host_port(dom)
    assert port is not None and re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", port)
    dom.destroy()
    dom.undefine()
    assert hv.domain_state(dom) == "gone"


def test_metadata_namespace_survives_libvirt(conn: libvirt.virConnect) -> None:
    # libvirt re-serializes <metadata>; the mark must still be found afterwards.
    name = f"xenvlan-ns{_uid()}-a"
    dom = _define(conn, name, Ownership("nslab", "domain", {"mac": "52:54:00:aa:bb:cc"}))
    assert NS in dom.XMLDesc(0)
    owned = [d.name() for d, own in hv.owned_domains(conn, "nslab") if own.get("mac")]
    assert owned == [name]
