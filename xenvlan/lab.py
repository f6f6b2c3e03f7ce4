"""A lab: two owned guests on one libvirt network, VLAN inside; up, status and down."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from xenvlan import fault, keys, signals, vlan
from xenvlan import hypervisor as hv
from xenvlan.console import ConsoleTap
from xenvlan.errors import GuestError, HypervisorError, SpecError, XenvlanError
from xenvlan.hostnet import is_guest_tap, link_mtu
from xenvlan.network import (
    NetInfo,
    add_reservation,
    domain_name,
    leases,
    pick_addresses,
    read_network,
    remove_reservation,
)
from xenvlan.paths import ensure_private_dir, lab_dir, run_dir
from xenvlan.session import GuestAddress, GuestSession
from xenvlan.spec import GuestSpec, LabSpec, check_lab_name
from xenvlan.xml import read_ownership

READY_MARK = "XENVLAN-READY"
FAIL_MARK = "XENVLAN-FAIL"
Progress = Callable[[str], None]


def _noop(_msg: str) -> None:
    pass


@dataclass
class GuestInfo:
    """One guest as `status` reports it."""

    name: str
    domain: str
    state: str
    mac: str
    mgmt_ip: str
    vlan_if: str | None
    vlan_ip: str | None
    host_port: str | None
    host_port_mtu: int | None
    host_key: str = ""
    vlan_tool: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The documented JSON fields."""
        return {
            "name": self.name,
            "domain": self.domain,
            "state": self.state,
            "mac": self.mac,
            "mgmt_ip": self.mgmt_ip,
            "vlan_if": self.vlan_if,
            "vlan_ip": self.vlan_ip,
            "vlan_tool": self.vlan_tool,
            "host_port": self.host_port,
            "host_port_mtu": self.host_port_mtu,
        }


@dataclass
class LabStatus:
    """What `up` and `status` print."""

    lab: str
    uri: str
    domain_type: str
    reason: str
    network: str
    bridge: str | None
    guests: list[GuestInfo]
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The documented JSON shape."""
        return {
            "lab": self.lab,
            "uri": self.uri,
            "domain_type": self.domain_type,
            "reason": self.reason,
            "network": self.network,
            "bridge": self.bridge,
            "guests": [g.to_json() for g in self.guests],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def guest(self, name: str) -> GuestInfo:
        """One guest by name."""
        for g in self.guests:
            if g.name == name:
                return g
        names = ", ".join(g.name for g in self.guests) or "none"
        raise SpecError(f"no guest {name!r} in lab {self.lab} (guests: {names})")


class Timer:
    """Phase timings, in order."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = time.monotonic() - t0


# ---------------------------------------------------------------------------- up


def _console_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    tail = [ln for ln in text.replace("\r", "").splitlines() if ln.strip()][-lines:]
    return " | ".join(tail) or "(console empty)"


def wait_ready(
    conn: libvirt.virConnect,
    guests: list[tuple[str, Path, str, str]],
    deadline_s: float,
    net_name: str,
) -> dict[str, float]:
    """Wait for each guest's readiness marker; on timeout explain state, reservation, console."""
    t0 = time.monotonic()
    pending = {name: (console, dom, ip) for name, console, dom, ip in guests}
    ready: dict[str, float] = {}
    while pending:
        for name, (console, dom_name, _ip) in list(pending.items()):
            try:
                text = console.read_text(errors="replace")
            except OSError:
                text = ""
            if READY_MARK in text:
                ready[name] = time.monotonic() - t0
                del pending[name]
            elif FAIL_MARK in text:
                raise GuestError(f"guest {name} failed to boot: {_console_tail(console)}")
            else:
                dom = hv.lookup_domain(conn, dom_name)
                state = hv.domain_state(dom) if dom else "gone"
                if state not in ("running", "blocked"):
                    raise GuestError(
                        f"guest {name} stopped while booting (state {state}); console: "
                        f"{_console_tail(console)}"
                    )
        if not pending:
            break
        if time.monotonic() - t0 > deadline_s:
            name, (console, dom_name, ip) = next(iter(pending.items()))
            dom = hv.lookup_domain(conn, dom_name)
            state = hv.domain_state(dom) if dom else "gone"
            raise GuestError(
                f"guest {name} not ready within {deadline_s:.0f}s: domain {dom_name} is {state}, "
                f"reserved {ip} on network {net_name}; console: {_console_tail(console)}"
            )
        time.sleep(0.05)
    return ready


@dataclass(frozen=True)
class UpOptions:
    """Knobs of `up` beyond the lab file."""

    kernel: Path | None = None
    initrd: Path | None = None
    keep_on_error: bool = False
    xen_mode: str = "auto"  # pv | pvh | hvm | auto (from the host capabilities)


def up(spec: LabSpec, opts: UpOptions, progress: Progress = _noop) -> LabStatus:
    """Bring the lab up; on any failure remove everything it made (unless keep_on_error)."""
    timer = Timer()
    with timer.phase("connect"):
        conn, choice = hv.open_connection(spec.connect, opts.xen_mode)
    progress(f"hypervisor {choice.uri}, domain type {choice.domain_type}: {choice.reason}")
    try:
        _check_conflicts(conn, spec)
        made_anything = True
        try:
            status = _up(conn, choice, spec, opts, timer, progress)
        except BaseException:
            if made_anything and not opts.keep_on_error:
                progress("rolling back: removing everything this `up` made")
                with signals.deferred():
                    try:
                        down_lab(conn, spec.name, progress)
                    except XenvlanError as cleanup_exc:
                        progress(f"rollback incomplete: {cleanup_exc}")
            raise
        return status
    finally:
        conn.close()


def _check_conflicts(conn: libvirt.virConnect, spec: LabSpec) -> None:
    for g in spec.guests:
        name = domain_name(spec.name, g.name)
        dom = hv.lookup_domain(conn, name)
        if dom is None:
            continue
        own = read_ownership(dom.XMLDesc(0))
        if own is None or own.lab != spec.name:
            raise HypervisorError(
                f"domain {name} exists and is not xenvlan lab {spec.name}'s: refusing to touch it"
            )
        raise HypervisorError(f"lab {spec.name} is already up (run `xenvlan down` first)")


def _ensure_network(
    conn: libvirt.virConnect, spec: LabSpec, progress: Progress
) -> tuple[libvirt.virNetwork, NetInfo]:
    from xenvlan.plan import network_xml

    net = hv.lookup_network(conn, spec.network.name)
    if net is None:
        xml_text = network_xml(spec)
        progress(
            f"network {spec.network.name} absent: defining it on {spec.network.bridge} (owned)"
        )
        try:
            net = conn.networkDefineXML(xml_text)
            net.create()
        except libvirt.libvirtError as exc:
            if net is not None:
                hv.remove_network(net)
            raise HypervisorError(
                f"cannot create network {spec.network.name} on {spec.network.bridge}: "
                f"{hv.error_text(exc)}"
            ) from None
    elif not net.isActive():
        own = read_ownership(net.XMLDesc(0))
        if own is None:
            raise HypervisorError(
                f"network {spec.network.name} exists but is inactive; start it "
                f"(virsh net-start {spec.network.name}) or name another in the lab file"
            )
        net.create()
    else:
        progress(f"network {spec.network.name} exists: reusing it (reservations only)")
    return net, read_network(net)


def _up(
    conn: libvirt.virConnect,
    choice: hv.Choice,
    spec: LabSpec,
    opts: UpOptions,
    timer: Timer,
    progress: Progress,
) -> LabStatus:
    from xenvlan import image as image_mod
    from xenvlan.plan import plan_lab

    ldir = ensure_private_dir(lab_dir(spec.name))
    with timer.phase("image"):
        kernel = opts.kernel or spec.image.kernel
        initrd = opts.initrd or spec.image.initrd
        if kernel and initrd:
            img = image_mod.image_from_files(kernel, initrd)
        else:
            img = image_mod.ensure_image(progress=progress)
    with timer.phase("keys"):
        client = keys.ensure_client_key(ldir)
        host_keys = {g.name: keys.generate_host_key(ldir, g.name) for g in spec.guests}
        for g in spec.guests:
            image_mod.write_guest_initrd(
                img,
                ldir / f"{g.name}.initrd",
                host_key=host_keys[g.name].dropbear_path,
                authorized_key=client.public_openssh,
            )
    with timer.phase("network"):
        net, info = _ensure_network(conn, spec, progress)
        ips = pick_addresses(info, leases(net), len(spec.guests))
    plan: list[tuple[GuestSpec, str, str, Path]] = []
    with timer.phase("define"):
        lab_plan = plan_lab(
            spec, choice, kernel=img.kernel, bzimage=img.bzimage, ldir=ldir, info=info, ips=ips,
            host_keys={n: k.public_openssh for n, k in host_keys.items()}, define_network=False,
        )  # fmt: skip
        for note in lab_plan.notes:
            progress(note)
        for gp in lab_plan.guests:
            gp.console.unlink(missing_ok=True)  # a marker from an earlier run must not count
            try:
                conn.defineXML(gp.xml)
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"defining {gp.domain}: {hv.error_text(exc)}") from None
            add_reservation(net, gp.mac, gp.ip, gp.domain)
            plan.append((gp.guest, gp.mac, gp.ip, gp.console))
    fault.point("after-define")
    taps: list[ConsoleTap] = []
    try:
        with timer.phase("start"):
            for gp in lab_plan.guests:
                dom = hv.lookup_domain(conn, gp.domain)
                assert dom is not None
                try:
                    # A console read through libvirt is opened paused, so no byte is missed.
                    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if gp.console_stream else 0)
                    if gp.console_stream:
                        taps.append(ConsoleTap(conn, gp.domain, gp.console).start_and_wait())
                        dom.resume()
                except libvirt.libvirtError as exc:
                    raise HypervisorError(f"starting {gp.domain}: {hv.error_text(exc)}") from None
        fault.point("after-start")
        progress("guests started; waiting for the readiness marker on their consoles")
        with timer.phase("boot"):
            wait_ready(
                conn,
                [(g.name, c, domain_name(spec.name, g.name), ip) for g, _m, ip, c in plan],
                spec.timeouts.boot,
                info.name,
            )
    finally:
        for tap in taps:
            tap.stop()
    pkey = keys.load_pkey(client.path)
    sessions: dict[str, GuestSession] = {}
    try:
        with timer.phase("ssh"), ThreadPoolExecutor(len(plan)) as pool:
            futs = {
                g.name: pool.submit(
                    GuestSession(
                        GuestAddress(g.name, ip, host_keys[g.name].public_openssh), pkey
                    ).connect,
                    spec.timeouts.ssh,
                )
                for g, _m, ip, _c in plan
            }
            for name, fut in futs.items():
                sessions[name] = fut.result()
        progress("SSH up; creating the VLAN interfaces")
        tools: dict[str, str] = {}
        with timer.phase("vlan"):
            for g, _m, _ip, _c in plan:
                made = vlan.setup(
                    sessions[g.name],
                    spec.vlan.parent,
                    spec.vlan.id,
                    g.vlan_ip,
                    spec.vlan.tool,
                    g.name,
                )
                tools[g.name] = made.tool
    finally:
        for s in sessions.values():
            s.close()
    fault.point("after-vlan")
    (ldir / "uri").write_text(choice.uri + "\n")
    status = collect_status(conn, choice, spec.name, ssh=False)
    for gi in status.guests:
        gi.vlan_tool = tools.get(gi.name)
    status.timings = timer.timings
    status.timings["total"] = sum(timer.timings.values())
    return status


# ---------------------------------------------------------------------------- status


def labs_present(conn: libvirt.virConnect) -> list[str]:
    """Names of every xenvlan lab with a domain or network in libvirt."""
    names = {own.lab for _d, own in hv.owned_domains(conn)}
    names |= {own.lab for _n, own in hv.owned_networks(conn)}
    return sorted(names)


def resolve_lab(conn: libvirt.virConnect, name: str | None) -> str:
    """The lab to act on: the given name, or the only lab present."""
    if name:
        return check_lab_name(name)
    present = labs_present(conn)
    if len(present) == 1:
        return present[0]
    if not present:
        raise SpecError("no xenvlan lab is up (start one with `xenvlan up`)")
    raise SpecError(f"several labs are up ({', '.join(present)}): choose one with --name")


def session_for(lab: str, guest: GuestInfo) -> GuestSession:
    """An unconnected SSH session to a lab guest, with its pinned key and the lab's client key."""
    key_path = lab_dir(lab) / "id_ed25519"
    if not key_path.exists():
        raise GuestError(f"lab {lab}: client key {key_path} is missing (was the run dir removed?)")
    return GuestSession(
        GuestAddress(guest.name, guest.mgmt_ip, guest.host_key), keys.load_pkey(key_path)
    )


def collect_status(
    conn: libvirt.virConnect, choice: hv.Choice, lab: str, *, ssh: bool = True
) -> LabStatus:
    """Guests from libvirt metadata; host ports via pyroute2; VLAN state over SSH when asked."""
    guests: list[GuestInfo] = []
    network = ""
    for dom, own in sorted(hv.owned_domains(conn, lab), key=lambda d: d[1].get("guest")):
        port = hv.host_port(dom)
        gi = GuestInfo(
            name=own.get("guest"),
            domain=dom.name(),
            state=hv.domain_state(dom),
            mac=own.get("mac"),
            mgmt_ip=own.get("mgmt_ip"),
            # What the lab configured (metadata); with ssh=True, what the guest reports instead.
            vlan_if=None if ssh else own.get("vlan_if") or None,
            vlan_ip=None if ssh else own.get("vlan_ip") or None,
            host_port=port,
            host_port_mtu=link_mtu(port) if port else None,
            host_key=own.get("host_key"),
        )
        network = own.get("network") or network
        guests.append(gi)
    bridge = None
    if network and (net := hv.lookup_network(conn, network)) is not None:
        bridge = read_network(net).bridge
    if ssh:
        for gi in guests:
            if gi.state != "running":
                continue
            try:
                with session_for(lab, gi).connect(5.0) as s:
                    found = vlan.read(s, gi.name)
            except GuestError:
                continue
            for v in found.values():
                gi.vlan_if, gi.vlan_ip = v.name, v.address
    return LabStatus(
        lab=lab,
        uri=choice.uri,
        domain_type=choice.domain_type,
        reason=choice.reason,
        network=network,
        bridge=bridge,
        guests=guests,
    )


# ---------------------------------------------------------------------------- down


def down_lab(conn: libvirt.virConnect, lab: str, progress: Progress = _noop) -> list[str]:
    """Undo `lab`'s journaled host changes, remove its libvirt objects (by metadata) and files."""
    from xenvlan.dom0.journal import revert_lab_changes

    removed: list[str] = []
    errors: list[str] = []
    try:
        for act in revert_lab_changes(lab):
            removed.append(f"host change {act.kind} {act.key} ({act.result})")
            progress(f"reverted {act.kind} {act.key} from the journal ({act.result})")
    except XenvlanError as exc:
        errors.append(str(exc))

    doms = list(hv.owned_domains(conn, lab))
    # Reservations one at a time (concurrent updates of one network can fail), then the guests
    # in parallel: libvirt's destroy waits ~2 s for each QEMU to exit. A failed reservation
    # removal never keeps its guest alive.
    for dom, own in doms:
        net_name, mac = own.get("network"), own.get("mac")
        try:
            net = hv.lookup_network(conn, net_name) if net_name and mac else None
            if net is not None and remove_reservation(net, mac, dom.name()):
                removed.append(f"reservation {mac} on {net_name}")
        except (XenvlanError, libvirt.libvirtError) as exc:
            errors.append(str(exc))

    def remove(dom: libvirt.virDomain) -> str:
        name = dom.name()
        hv.remove_domain(dom)
        progress(f"removed domain {name}")
        return f"domain {name}"

    if doms:
        with ThreadPoolExecutor(len(doms)) as pool:
            for fut in [pool.submit(remove, dom) for dom, _own in doms]:
                try:
                    removed.append(fut.result())
                except (XenvlanError, libvirt.libvirtError) as exc:
                    errors.append(str(exc))
    for net, _own in list(hv.owned_networks(conn, lab)):
        name = net.name()
        try:
            hv.remove_network(net)
            removed.append(f"network {name}")
            progress(f"removed network {name}")
        except XenvlanError as exc:
            errors.append(str(exc))
    ldir = lab_dir(lab)
    if ldir.exists():
        shutil.rmtree(ldir)
        removed.append(f"run dir {ldir}")
    _prune_empty(lab_dir(lab).parent)
    if errors:
        raise HypervisorError("down incomplete: " + "; ".join(errors))
    return removed


def _prune_empty(path: Path) -> None:
    """Remove empty xenvlan run directories up to the run root."""
    root = run_dir()
    while path != root.parent and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path == root:
            break
        path = path.parent


def discover_lab_ports(uri: str | None = None) -> dict[str, str]:
    """Host port -> "lab/guest" for every running xenvlan guest; empty when libvirt is away."""
    try:
        conn, _choice = hv.open_connection(uri)
    except XenvlanError:
        return {}
    try:
        ports: dict[str, str] = {}
        for dom, own in hv.owned_domains(conn):
            port = hv.host_port(dom)
            if port and hv.domain_state(dom) == "running" and is_guest_tap(port, own.get("mac")):
                ports[port] = f"{own.lab}/{own.get('guest')}"
        return ports
    finally:
        conn.close()
