"""Bringing a lab up: hypervisor, image, keys, network, domains, readiness, VLAN — each phase
timed, rolled back on any failure.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import libvirt

from xenvlan import fault, signals
from xenvlan.errors import GuestError, HypervisorError, SpecError, XenvlanError
from xenvlan.guest import image as image_mod
from xenvlan.guest import keys, vlan
from xenvlan.guest.session import GuestAddress, GuestSession
from xenvlan.host import netlink
from xenvlan.lab.down import down_lab
from xenvlan.lab.model import FAIL_MARK, READY_MARK, LabStatus, Progress, Timer, noop
from xenvlan.lab.plan import GuestPlan, network_xml, plan_lab
from xenvlan.lab.status import check_conflicts, collect_status
from xenvlan.paths import ensure_private_dir, lab_dir
from xenvlan.spec import GuestSpec, LabSpec
from xenvlan.virt import connection as hv
from xenvlan.virt.console import ConsoleTap
from xenvlan.virt.network import (
    NetInfo,
    domain_name,
    leases,
    pick_addresses,
    plain_bridge,
    read_network,
    reserve,
)
from xenvlan.virt.xml import read_ownership

# ---------------------------------------------------------------------------- up


def _console_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    tail = [ln for ln in text.replace("\r", "").splitlines() if ln.strip()][-lines:]
    return " | ".join(tail) or "(console empty)"


#: Starts a PVH guest gets before `up` gives up on it (see `restart` in `_up`).
PVH_BOOT_ATTEMPTS = 4


def wait_ready(
    conn: libvirt.virConnect,
    guests: list[tuple[str, Path, str, str]],
    deadline_s: float,
    net_name: str,
    restart: Callable[[str], bool] | None = None,
) -> dict[str, float]:
    """Wait for each guest's readiness marker; on timeout explain state, reservation, console.

    A guest that stopped before its readiness marker is handed to `restart` (if given): when
    that starts the guest again, the wait goes on.
    """
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
                    if restart is not None and restart(name):
                        continue
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


def _plain_bridge(
    spec: LabSpec, choice: hv.Choice, address: ipaddress.IPv4Interface | None, progress: Progress
) -> NetInfo:
    """No libvirt network of that name, but its bridge exists: attach Xen guests to it."""
    bridge = spec.network.bridge
    if choice.domain_type != "xen":
        raise SpecError(
            f"network.bridge: {bridge} is a bridge with no libvirt network {spec.network.name}: "
            f"only Xen guests attach to a plain bridge; name a libvirt network for "
            f"{choice.domain_type} guests"
        )
    if address is None:
        raise HypervisorError(
            f"bridge {bridge} has no IPv4 address: xenvlan reaches its guests over it "
            f"(ip addr add ADDR/PREFIX dev {bridge})"
        )
    progress(
        f"no libvirt network {spec.network.name}: attaching the guests to the existing bridge "
        f"{bridge} ({address}); nothing defined on it, nothing reserved, `down` leaves it"
    )
    return plain_bridge(bridge, address)


@dataclass(frozen=True)
class UpOptions:
    """Knobs of `up` beyond the lab file."""

    kernel: Path | None = None
    initrd: Path | None = None
    keep_on_error: bool = False
    xen_mode: str = "auto"  # pv | pvh | hvm | auto (from the host capabilities)


def up(spec: LabSpec, opts: UpOptions, progress: Progress = noop) -> LabStatus:
    """Bring the lab up; on any failure remove everything it made (unless keep_on_error)."""
    timer = Timer()
    with timer.phase("connect"):
        conn, choice = hv.open_connection(spec.connect, opts.xen_mode)
    progress(f"hypervisor {choice.uri}, domain type {choice.domain_type}: {choice.reason}")
    try:
        check_conflicts(conn, spec)
        try:
            status = _up(conn, choice, spec, opts, timer, progress)
        except BaseException:
            if not opts.keep_on_error:
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


def _ensure_network(
    conn: libvirt.virConnect, spec: LabSpec, choice: hv.Choice, progress: Progress
) -> tuple[libvirt.virNetwork | None, NetInfo]:
    """The lab's libvirt network (defined when absent), or an existing plain bridge (Xen)."""
    net = hv.lookup_network(conn, spec.network.name)
    if net is None:
        is_bridge, address = netlink.bridge_ipv4(spec.network.bridge)
        if is_bridge:
            return None, _plain_bridge(spec, choice, address, progress)
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
        net, info = _ensure_network(conn, spec, choice, progress)
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
            reserve(net, info, gp.mac, gp.ip, gp.domain)
            plan.append((gp.guest, gp.mac, gp.ip, gp.console))
    fault.point("after-define")
    taps: list[ConsoleTap] = []
    by_name = {gp.guest.name: gp for gp in lab_plan.guests}
    restarts: dict[str, int] = {}

    def start_guest(gp: GuestPlan) -> None:
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

    def restart(name: str) -> bool:
        # Nested under TCG, a PVH guest now and then dies of a triple fault before it is ready
        # (Xen's log: `Triple fault`, in native_calibrate_cpu_early or later); it boots when
        # started again. Anything else that stops a guest fails `up` at once.
        if not (choice.domain_type == "xen" and choice.xen_mode == "pvh"):
            return False
        done = restarts.get(name, 0)
        if done >= PVH_BOOT_ATTEMPTS - 1:
            return False
        restarts[name] = done + 1
        last = _console_tail(by_name[name].console).split(" | ")[-1]
        progress(
            f"PVH guest {name} stopped while booting (console: {last}); "
            f"starting it again ({done + 2}/{PVH_BOOT_ATTEMPTS})"
        )
        by_name[name].console.unlink(missing_ok=True)
        start_guest(by_name[name])
        return True

    try:
        with timer.phase("start"):
            for gp in lab_plan.guests:
                start_guest(gp)
        fault.point("after-start")
        progress("guests started; waiting for the readiness marker on their consoles")
        with timer.phase("boot"):
            wait_ready(
                conn,
                [(g.name, c, domain_name(spec.name, g.name), ip) for g, _m, ip, c in plan],
                spec.timeouts.boot,
                info.name,
                restart,
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
