"""VLAN sub-interfaces inside a guest, made with `ip` or `vconfig`, verified in /proc/net/vlan."""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from xenvlan.errors import GuestError
from xenvlan.guest.shell import CommandResult

Run = Callable[..., CommandResult]


@dataclass(frozen=True)
class VlanIf:
    """A VLAN interface as the guest reports it."""

    name: str
    vid: int
    parent: str
    address: str | None
    mtu: int | None
    tool: str


def ip_commands(parent: str, vid: int, addr: ipaddress.IPv4Interface) -> list[str]:
    """iproute2 (busybox `ip`) commands creating `parent.vid` with `addr`."""
    name = f"{parent}.{vid}"
    q = shlex.quote
    return [
        f"ip link add link {q(parent)} name {q(name)} type vlan id {int(vid)}",
        f"ip addr add {q(str(addr))} dev {q(name)}",
        f"ip link set {q(name)} up",
    ]


def vconfig_commands(parent: str, vid: int, addr: ipaddress.IPv4Interface) -> list[str]:
    """The seed's classic commands: `vconfig add` then `ifconfig ... netmask ... up`."""
    name = f"{parent}.{vid}"
    q = shlex.quote
    return [
        f"vconfig add {q(parent)} {int(vid)}",
        f"ifconfig {q(name)} {q(str(addr.ip))} netmask {q(str(addr.netmask))} up",
    ]


def parse_proc_vlan(text: str) -> dict[str, tuple[int, str]]:
    """/proc/net/vlan/config -> {ifname: (vid, parent)}."""
    out: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            out[parts[0]] = (int(parts[1]), parts[2])
    return out


def setup(
    run: Run, parent: str, vid: int, addr: ipaddress.IPv4Interface, tool: str, guest: str
) -> VlanIf:
    """Create the VLAN interface (tool ip|vconfig|auto: ip first, then vconfig) and verify it."""
    name = f"{parent}.{vid}"
    order = {"ip": ["ip"], "vconfig": ["vconfig"], "auto": ["ip", "vconfig"]}[tool]
    errors: list[str] = []
    used = ""
    for t in order:
        cmds = ip_commands(parent, vid, addr) if t == "ip" else vconfig_commands(parent, vid, addr)
        res = run(" && ".join(cmds), timeout=15.0)
        if res.exit_status == 0:
            used = t
            break
        last = (res.stderr or res.stdout).strip().splitlines()[-1:]
        errors.append(f"{t}: {last[0][:200] if last else f'exit status {res.exit_status}'}")
        run(f"ip link del {shlex.quote(name)} 2>/dev/null; true", timeout=10.0)
    if not used:
        raise GuestError(f"guest {guest}: cannot create {name}: " + "; ".join(errors))
    found = read(run, guest).get(name)
    if found is None or found.vid != vid or found.parent != parent:
        raise GuestError(
            f"guest {guest}: {name} is missing from /proc/net/vlan/config after {used}"
        )
    if found.address != str(addr):
        raise GuestError(f"guest {guest}: {name} has address {found.address}, expected {addr}")
    return VlanIf(found.name, found.vid, found.parent, found.address, found.mtu, used)


def read(run: Run, guest: str) -> dict[str, VlanIf]:
    """Every VLAN interface in the guest with its IPv4 address and MTU."""
    res = run(
        "cat /proc/net/vlan/config 2>/dev/null; echo ---; "
        'for d in /sys/class/net/*; do n=${d##*/}; echo "$n $(cat "$d/mtu")"; done; echo ---; '
        "ip -o -4 addr show",
        timeout=10.0,
    )
    if res.exit_status != 0:
        why = " ".join(res.stderr.split())[:200] or f"exit status {res.exit_status}"
        raise GuestError(f"guest {guest}: cannot read VLAN state: {why}")
    vlan_txt, mtu_txt, addr_txt = [*res.stdout.split("---\n"), "", ""][:3]
    mtus = {}
    for line in mtu_txt.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            mtus[parts[0]] = int(parts[1])
    addrs: dict[str, str] = {}
    for line in addr_txt.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet":
            addrs.setdefault(parts[1].split("@")[0], parts[3])
    return {
        name: VlanIf(name, vid, parent, addrs.get(name), mtus.get(name), "")
        for name, (vid, parent) in parse_proc_vlan(vlan_txt).items()
    }


def interface_mtu(run: Run, ifname: str, guest: str) -> int:
    """The MTU of one guest interface."""
    res = run(f"cat /sys/class/net/{shlex.quote(ifname)}/mtu", timeout=10.0)
    text = res.stdout.strip()
    if res.exit_status != 0 or not text.isdigit():
        raise GuestError(f"guest {guest}: no interface {ifname}")
    return int(text)
