"""The lab specification: typed, frozen dataclasses, TOML loading and validation.

Every field is optional; the defaults are the seed scenario (VLAN 3, 11.11.4.2/24 and
11.11.4.30/24, libvirt network ``default`` on ``virbr0``). Errors are one line naming the field.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenvlan.errors import SpecError

# \Z, not $: `$` also matches before a trailing newline, which would let "a\n" through.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}\Z")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")
URI_RE = re.compile(r"^(qemu|xen|test)(\+[a-z]+)?://[A-Za-z0-9._/-]*\Z")
VLAN_TOOLS = ("auto", "ip", "vconfig")
MEMORY_MIN_MIB = 96
MEMORY_MAX_MIB = 16384
SEED_GUESTS = (("a", "11.11.4.2/24"), ("b", "11.11.4.30/24"))
MAX_LAB_BYTES = 1 << 20
PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}\Z")


@dataclass(frozen=True)
class GuestSpec:
    """One guest: its name, VLAN address and size."""

    name: str
    vlan_ip: ipaddress.IPv4Interface
    memory_mib: int = 128
    vcpus: int = 1


@dataclass(frozen=True)
class VlanSpec:
    """The VLAN made inside both guests."""

    id: int = 3
    tool: str = "auto"
    parent: str = "eth0"

    @property
    def ifname(self) -> str:
        """The guest-side VLAN interface name, e.g. ``eth0.3``."""
        return f"{self.parent}.{self.id}"


@dataclass(frozen=True)
class NetworkSpec:
    """The libvirt network carrying the host bridge."""

    name: str = "default"
    bridge: str = "virbr0"
    subnet: ipaddress.IPv4Interface = field(
        default_factory=lambda: ipaddress.IPv4Interface("192.168.122.1/24")
    )


@dataclass(frozen=True)
class ImageSpec:
    """Bring-your-own kernel and initrd (both or neither)."""

    kernel: Path | None = None
    initrd: Path | None = None


@dataclass(frozen=True)
class TimeoutSpec:
    """Deadlines per readiness phase, in seconds."""

    boot: float = 120.0
    ssh: float = 30.0


@dataclass(frozen=True)
class LabSpec:
    """A whole lab: two guests on one bridge with a VLAN inside them."""

    name: str = "seed"
    connect: str | None = None
    vlan: VlanSpec = field(default_factory=VlanSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    guests: tuple[GuestSpec, ...] = ()
    image: ImageSpec = field(default_factory=ImageSpec)
    timeouts: TimeoutSpec = field(default_factory=TimeoutSpec)

    def guest(self, name: str) -> GuestSpec:
        """The guest called `name`, or a SpecError naming the known ones."""
        for g in self.guests:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.guests)
        raise SpecError(f"no guest {name!r} in lab {self.name!r} (guests: {known})")

    def peer(self, name: str) -> GuestSpec:
        """The other guest of the pair."""
        self.guest(name)
        return next(g for g in self.guests if g.name != name)


def seed() -> LabSpec:
    """The seed lab: what `xenvlan up` runs with no lab file."""
    return from_dict({})


def load(path: Path) -> LabSpec:
    """Load and validate a lab file; any problem is a one-line SpecError."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_LAB_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read lab file: {exc.strerror or exc}") from None
    if len(raw) > MAX_LAB_BYTES:
        raise SpecError(f"{path}: lab file is larger than {MAX_LAB_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: lab file is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    except ValueError:  # tomllib: an integer literal beyond int's 4300-digit str limit
        raise SpecError(f"{path}: not valid TOML: a number is too long") from None
    except RecursionError:  # tomllib: arrays/inline tables nested thousands deep
        raise SpecError(f"{path}: not valid TOML: nested too deeply") from None
    try:
        return from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def from_dict(data: dict[str, Any]) -> LabSpec:
    """Build a LabSpec from parsed TOML, validating every field."""
    _keys(data, "", {"name", "connect", "vlan", "network", "guests", "image", "timeouts"})
    name = _name(data.get("name", "seed"), "name")
    connect = data.get("connect")
    if connect is not None:
        connect = _str(connect, "connect")
        if not URI_RE.match(connect):
            raise SpecError(f"connect: {connect!r} is not a libvirt URI like qemu:///system")

    v = _table(data.get("vlan", {}), "vlan")
    _keys(v, "vlan.", {"id", "tool", "parent"})
    vlan_id = _int(v.get("id", 3), "vlan.id", 1, 4094)
    tool = _str(v.get("tool", "auto"), "vlan.tool")
    if tool not in VLAN_TOOLS:
        raise SpecError(f"vlan.tool: {tool!r} must be one of {', '.join(VLAN_TOOLS)}")
    parent = _str(v.get("parent", "eth0"), "vlan.parent")
    if not IFNAME_RE.match(parent) or len(f"{parent}.{vlan_id}") > 15:
        raise SpecError(f"vlan.parent: {parent!r} is not a usable interface name")
    vlan = VlanSpec(id=vlan_id, tool=tool, parent=parent)

    n = _table(data.get("network", {}), "network")
    _keys(n, "network.", {"name", "bridge", "subnet"})
    net_name = _name(n.get("name", "default"), "network.name")
    bridge = _str(n.get("bridge", "virbr0"), "network.bridge")
    if not IFNAME_RE.match(bridge):
        raise SpecError(f"network.bridge: {bridge!r} is not a valid interface name")
    subnet = _iface(n.get("subnet", "192.168.122.1/24"), "network.subnet")
    if subnet.network.prefixlen > 29:
        raise SpecError("network.subnet: prefix must be /29 or larger to hold the guests")
    if subnet.ip in (subnet.network.network_address, subnet.network.broadcast_address):
        raise SpecError("network.subnet: give the bridge's own address, e.g. 192.168.122.1/24")
    network = NetworkSpec(name=net_name, bridge=bridge, subnet=subnet)

    guests = _guests(data.get("guests"))

    im = _table(data.get("image", {}), "image")
    _keys(im, "image.", {"kernel", "initrd"})
    kernel = _path(im["kernel"], "image.kernel") if "kernel" in im else None
    initrd = _path(im["initrd"], "image.initrd") if "initrd" in im else None
    if (kernel is None) != (initrd is None):
        raise SpecError("image: give both kernel and initrd, or neither")

    t = _table(data.get("timeouts", {}), "timeouts")
    _keys(t, "timeouts.", {"boot", "ssh"})
    timeouts = TimeoutSpec(
        boot=_seconds(t.get("boot", 120.0), "timeouts.boot"),
        ssh=_seconds(t.get("ssh", 30.0), "timeouts.ssh"),
    )
    return LabSpec(
        name=name,
        connect=connect,
        vlan=vlan,
        network=network,
        guests=guests,
        image=ImageSpec(kernel=kernel, initrd=initrd),
        timeouts=timeouts,
    )


def _guests(value: Any) -> tuple[GuestSpec, ...]:
    if value is None:
        value = [{"name": n, "vlan_ip": ip} for n, ip in SEED_GUESTS]
    if not isinstance(value, list) or not all(isinstance(g, dict) for g in value):
        raise SpecError("guests: must be an array of tables ([[guests]])")
    if len(value) != 2:
        raise SpecError(f"guests: a lab has exactly two guests, got {len(value)}")
    out = []
    for i, g in enumerate(value):
        where = f"guests[{i}]"
        _keys(g, f"{where}.", {"name", "vlan_ip", "memory_mib", "vcpus"})
        default_name, default_ip = SEED_GUESTS[i]
        out.append(
            GuestSpec(
                name=_name(g.get("name", default_name), f"{where}.name"),
                vlan_ip=_iface(g.get("vlan_ip", default_ip), f"{where}.vlan_ip"),
                memory_mib=_int(
                    g.get("memory_mib", 128), f"{where}.memory_mib", MEMORY_MIN_MIB, MEMORY_MAX_MIB
                ),
                vcpus=_int(g.get("vcpus", 1), f"{where}.vcpus", 1, 8),
            )
        )
    a, b = out
    if a.name == b.name:
        raise SpecError(f"guests: names must differ (both are {a.name!r})")
    if a.vlan_ip.network != b.vlan_ip.network:
        raise SpecError(
            f"guests: vlan_ip {a.vlan_ip} and {b.vlan_ip} must be in one subnet"
            f" ({a.vlan_ip.network} vs {b.vlan_ip.network})"
        )
    if a.vlan_ip.ip == b.vlan_ip.ip:
        raise SpecError(f"guests: vlan_ip must differ (both are {a.vlan_ip.ip})")
    for i, g in enumerate(out):
        net = g.vlan_ip.network
        if net.prefixlen < 31 and g.vlan_ip.ip in (net.network_address, net.broadcast_address):
            raise SpecError(f"guests[{i}].vlan_ip: {g.vlan_ip} is the subnet's network/broadcast")
    return (a, b)


def _keys(table: dict[str, Any], prefix: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            shown = key if PLAIN_KEY_RE.match(key) else repr(key[:40])
            raise SpecError(f"{prefix}{shown}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a table, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where}: must be a string, got {type(value).__name__}")
    return value


def _name(value: Any, where: str) -> str:
    s = _str(value, where)
    if not NAME_RE.match(s):
        raise SpecError(f"{where}: {s[:40]!r} must match ^[a-z][a-z0-9-]{{0,30}}$")
    return s


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise SpecError(f"{where}: {_shown(value)} is out of range {lo}..{hi}")
    return value


def _shown(value: int | float) -> str:
    """A number for an error message; huge ints are not formatted (str() refuses > 4300 digits)."""
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"a {value.bit_length()}-bit {'negative ' if value < 0 else ''}number"
    return str(value)


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: must be a number of seconds, got {type(value).__name__}")
    if not 1 <= value <= 3600:
        raise SpecError(f"{where}: {_shown(value)} is out of range 1..3600 seconds")
    return float(value)


def _path(value: Any, where: str) -> Path:
    s = _str(value, where)
    if not s or any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):  # XML 1.0 cannot carry them
        raise SpecError(f"{where}: {s[:40]!r} is not a usable file path")
    return Path(s)


def _iface(value: Any, where: str) -> ipaddress.IPv4Interface:
    s = _str(value, where)
    if "/" not in s:
        raise SpecError(f"{where}: {s[:40]!r} needs a prefix length, e.g. 11.11.4.2/24")
    try:
        iface = ipaddress.IPv4Interface(s)
    except ValueError:
        raise SpecError(f"{where}: {s[:40]!r} is not an IPv4 address/prefix") from None
    if iface.network.prefixlen > 30 and iface.network.prefixlen != 31:
        raise SpecError(f"{where}: prefix /{iface.network.prefixlen} leaves no room for two hosts")
    return iface


def check_lab_name(name: str, where: str = "--name") -> str:
    """A lab name usable in paths and libvirt names, or a SpecError."""
    return _name(name, where)
