"""Read-only facts about this network namespace: links (netlink), knobs, modules, conntrack.

Every reader takes injectable roots (`proc`, `sys`) and optional pre-recorded inputs, so the same
code runs on the live host and on a recorded tree (`record_host` writes one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xenvlan.errors import HostChangeError
from xenvlan.host.netlink import open_netlink
from xenvlan.host.run import run
from xenvlan.host.sysctl import BRIDGE_KNOBS, bridge_sysctl_dir, read_bridge_knobs, read_value

WATCHED_MODULES: tuple[str, ...] = (
    "bridge",
    "br_netfilter",
    "nf_conntrack",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nf_conntrack_bridge",
    "8021q",
)
SNMP_COUNTERS: tuple[str, ...] = (
    "ReasmReqds",
    "ReasmOKs",
    "ReasmFails",
    "FragOKs",
    "FragFails",
    "FragCreates",
)
_VIF = re.compile(r"^vif\d+\.\d+(-emu)?$")


@dataclass(frozen=True)
class Link:
    """One network interface as netlink reports it, with bridge knobs for bridges."""

    name: str
    index: int
    kind: str  # bridge, tap, tun, vif, veth, vxlan, vlan, ... or "other"
    mtu: int
    master: str | None = None
    vlan_filtering: bool | None = None
    nf_call: dict[str, str] = field(default_factory=dict)
    lab_guest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Link:
        return cls(
            name=str(data["name"]),
            index=int(data["index"]),
            kind=str(data["kind"]),
            mtu=int(data["mtu"]),
            master=data.get("master"),
            vlan_filtering=data.get("vlan_filtering"),
            nf_call=dict(data.get("nf_call") or {}),
            lab_guest=data.get("lab_guest"),
        )


@dataclass(frozen=True)
class ModuleState:
    """`state` is loaded, built-in, built-in or loaded, absent or unknown."""

    name: str
    state: str
    evidence: str

    @property
    def present(self) -> bool:
        return self.state in ("loaded", "built-in", "built-in or loaded")


@dataclass(frozen=True)
class KernelInfo:
    """The kernel release and which bridge-netfilter era it belongs to."""

    release: str
    version: tuple[int, int, int]
    band: str
    summary: str


@dataclass(frozen=True)
class ConntrackUse:
    """Whether connection tracking is in use (rules that need it, or tracked connections)."""

    in_use: bool
    count: int | None
    bridge_family: bool  # nftables bridge-family ct rules -> nf_conntrack_bridge
    evidence: list[str]


@dataclass
class HostFacts:
    """Everything diagnose looks at, for one network namespace."""

    kernel: KernelInfo
    br_netfilter: bool
    sysctls: dict[str, str]
    links: list[Link]
    modules: dict[str, ModuleState]
    conntrack: ConntrackUse
    snmp: dict[str, int]
    netns_inode: int | None

    def bridges(self) -> list[Link]:
        return [link for link in self.links if link.kind == "bridge"]

    def ports(self, bridge: str) -> list[Link]:
        return [link for link in self.links if link.master == bridge]


# -- kernel ------------------------------------------------------------------------------------


def parse_release(release: str) -> tuple[int, int, int]:
    """`2.6.18-398.el5xen` -> (2, 6, 18); `6.18.44-fc` -> (6, 18, 44)."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        raise HostChangeError(f"cannot parse kernel release {release!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def kernel_info(release: str | None = None) -> KernelInfo:
    """Classify the kernel into the bands of the background notes."""
    release = release or os.uname().release
    v = parse_release(release)
    if v < (2, 6, 17):
        band, text = (
            "no-refrag",
            "<= 2.6.16: the bridge never refragments (IP length > MTU dropped)",
        )
    elif v < (2, 6, 35):
        band, text = (
            "vlan-refrag-bug",
            "2.6.17-2.6.34: VLAN refragmentation bug (IP > MTU+4 dropped)",
        )
    elif v < (3, 18):
        band, text = "fixed", ">= 2.6.35: VLAN refragmentation fixed; br_netfilter inside bridge"
    elif v < (5, 3):
        band, text = "separate-module", ">= 3.18: br_netfilter is a separate module"
    else:
        band, text = "per-netns", ">= 5.3: per-namespace bridge sysctls, nf_conntrack_bridge exists"
    return KernelInfo(release, v, band, text)


# -- links -------------------------------------------------------------------------------------


def _port_kind(name: str, kind: str | None, tun_type: int | None) -> str:
    if _VIF.match(name):
        return "vif"
    if kind == "tun":
        return "tap" if tun_type == 2 else "tun"
    return kind or "other"


def read_links(sys: Path = Path("/sys"), lab_ports: Mapping[str, str] | None = None) -> list[Link]:
    """Every link of this namespace via netlink; bridge knobs via sysfs (netlink fallback)."""
    lab_ports = lab_ports or {}
    with open_netlink() as ipr:
        msgs = list(ipr.get_links())
    names = {int(m["index"]): str(m.get("IFLA_IFNAME")) for m in msgs}
    links: list[Link] = []
    for m in msgs:
        name = str(m.get("IFLA_IFNAME"))
        info = m.get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info is not None else None
        data = info.get("IFLA_INFO_DATA") if info is not None else None
        tun_type = data.get("IFLA_TUN_TYPE") if (kind == "tun" and data is not None) else None
        master_idx = m.get("IFLA_MASTER")
        vlan_filtering: bool | None = None
        nf_call: dict[str, str] = {}
        if kind == "bridge":
            vf = read_value(sys / "class" / "net" / name / "bridge" / "vlan_filtering")
            if vf is None and data is not None:
                raw = data.get("IFLA_BR_VLAN_FILTERING")
                vf = None if raw is None else str(raw)
            vlan_filtering = None if vf is None else vf != "0"
            nf_call = read_bridge_knobs(name, sys)
            for knob in BRIDGE_KNOBS:
                if knob not in nf_call and data is not None:
                    raw = data.get(f"IFLA_BR_{knob.upper()}")
                    if raw is not None:
                        nf_call[knob] = str(raw)
        links.append(
            Link(
                name=name,
                index=int(m["index"]),
                kind=_port_kind(name, kind, tun_type),
                mtu=int(m.get("IFLA_MTU")),
                master=names.get(int(master_idx)) if master_idx else None,
                vlan_filtering=vlan_filtering,
                nf_call=nf_call,
                lab_guest=lab_ports.get(name),
            )
        )
    return links


# -- modules -----------------------------------------------------------------------------------


def read_modules(
    proc: Path = Path("/proc"), sys: Path = Path("/sys"), release: str | None = None
) -> dict[str, ModuleState]:
    """Loaded or built-in state of the watched modules (built-ins are not in /proc/modules)."""
    loaded: set[str] | None = None
    try:
        loaded = {line.split()[0] for line in (proc / "modules").read_text().splitlines() if line}
    except OSError:
        loaded = None
    builtin: set[str] = set()
    rel = release or os.uname().release
    try:
        text = Path("/lib/modules", rel, "modules.builtin").read_text()
        builtin = {Path(line).name.removesuffix(".ko").replace("-", "_") for line in text.split()}
    except OSError:
        pass
    functional = {
        "br_netfilter": (bridge_sysctl_dir(proc), "/proc/sys/net/bridge exists"),
        "nf_conntrack": (
            proc / "sys/net/netfilter/nf_conntrack_count",
            "/proc/sys/net/netfilter/nf_conntrack_count exists",
        ),
    }
    aliases = {"nf_conntrack": ("ip_conntrack",), "nf_defrag_ipv4": ("ip_conntrack",)}
    out: dict[str, ModuleState] = {}
    for name in WATCHED_MODULES:
        names = (name, *aliases.get(name, ()))
        if loaded is not None and (hit := next((n for n in names if n in loaded), None)):
            out[name] = ModuleState(name, "loaded", f"{hit} in /proc/modules")
        elif name in builtin:
            out[name] = ModuleState(
                name, "built-in", f"listed in /lib/modules/{rel}/modules.builtin"
            )
        elif name in functional and functional[name][0].exists():
            out[name] = ModuleState(name, "built-in or loaded", functional[name][1])
        elif (sys / "module" / name).is_dir():
            out[name] = ModuleState(name, "built-in or loaded", f"/sys/module/{name} exists")
        elif loaded is not None:
            out[name] = ModuleState(name, "absent", "not in /proc/modules")
        else:
            out[name] = ModuleState(name, "unknown", "no /proc/modules and no other evidence")
    return out


# -- conntrack ---------------------------------------------------------------------------------


def run_nft_ruleset() -> dict[str, Any] | None:
    """`nft -j list ruleset`, or None when nft is missing or fails."""
    if shutil.which("nft") is None:
        return None
    done = run(["nft", "-j", "list", "ruleset"])
    if not done.ok:
        return None
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def run_iptables_nat(proc: Path = Path("/proc")) -> str | None:
    """The legacy iptables nat table, read only if it is already registered (no side effects)."""
    names = read_value(proc / "net" / "ip_tables_names")
    if names is None or "nat" not in names.split():
        return None
    for tool in ("iptables-legacy-save", "iptables-save"):
        if shutil.which(tool):
            done = run([tool, "-t", "nat"])
            if done.ok:
                return done.stdout
    return "*nat\n"


_CT_KEYS = {"ct", "masquerade", "snat", "dnat", "redirect", "notrack"}
_CT_XT = {"conntrack", "state", "MASQUERADE", "SNAT", "DNAT", "CT", "REDIRECT"}


def _mentions_ct(obj: Any) -> bool:
    if isinstance(obj, dict):
        if isinstance(obj.get("xt"), dict) and obj["xt"].get("name") in _CT_XT:
            return True
        return any(k in _CT_KEYS or _mentions_ct(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_mentions_ct(v) for v in obj)
    return False


def read_conntrack(
    proc: Path = Path("/proc"),
    nft_ruleset: Mapping[str, Any] | None = None,
    iptables_nat: str | None = None,
) -> ConntrackUse:
    """Conntrack is in use when rules need it (ct/NAT) or connections are being tracked."""
    evidence: list[str] = []
    bridge_family = False
    for item in (nft_ruleset or {}).get("nftables", []):
        if "chain" in item and item["chain"].get("type") == "nat":
            c = item["chain"]
            evidence.append(f"nft nat chain {c.get('family')} {c.get('table')} {c.get('name')}")
        if "rule" in item and _mentions_ct(item["rule"].get("expr")):
            r = item["rule"]
            evidence.append(
                f"nft ct/nat rule in {r.get('family')} {r.get('table')} {r.get('chain')}"
            )
            bridge_family = bridge_family or r.get("family") == "bridge"
    if iptables_nat:
        rules = [ln for ln in iptables_nat.splitlines() if ln.startswith("-A ")]
        evidence.append(f"iptables nat table registered ({len(rules)} rules)")
    count = None
    for name in (
        "sys/net/netfilter/nf_conntrack_count",
        "sys/net/ipv4/netfilter/ip_conntrack_count",
    ):
        raw = read_value(proc / name)
        if raw is not None and raw.isdigit():
            count = int(raw)
            break
    if count:
        evidence.append(f"{count} tracked connections")
    return ConntrackUse(bool(evidence), count, bridge_family, evidence)


# -- counters ----------------------------------------------------------------------------------


def read_snmp(proc: Path = Path("/proc")) -> dict[str, int]:
    """IPv4 reassembly/fragmentation counters from /proc/net/snmp."""
    try:
        lines = [ln.split() for ln in (proc / "net" / "snmp").read_text().splitlines()]
    except OSError:
        return {}
    ip = [ln for ln in lines if ln and ln[0] == "Ip:"]
    if len(ip) < 2:
        return {}
    table = dict(zip(ip[0][1:], ip[1][1:], strict=False))
    return {
        k: int(table[k]) for k in SNMP_COUNTERS if k in table and table[k].lstrip("-").isdigit()
    }


# -- everything --------------------------------------------------------------------------------


def gather(
    *,
    lab_ports: Mapping[str, str] | None = None,
    proc: Path = Path("/proc"),
    sys: Path = Path("/sys"),
    kernel_release: str | None = None,
    links: list[Link] | None = None,
    nft_ruleset: Mapping[str, Any] | None = None,
    iptables_nat: str | None = None,
    live: bool = True,
) -> HostFacts:
    """Collect HostFacts; with `live=False` nothing outside the given roots/inputs is read."""
    from xenvlan.host.sysctl import read_bridge_sysctls

    if links is None:
        links = read_links(sys, lab_ports) if live else []
    elif lab_ports:
        links = [
            Link(**{**link.to_json(), "lab_guest": lab_ports.get(link.name, link.lab_guest)})
            for link in links
        ]
    if live and nft_ruleset is None:
        nft_ruleset = run_nft_ruleset()
    if live and iptables_nat is None:
        iptables_nat = run_iptables_nat(proc)
    kernel = kernel_info(kernel_release)
    inode = None
    if live:
        from xenvlan.host.netns import current_netns

        inode = current_netns().inode
    return HostFacts(
        kernel=kernel,
        br_netfilter=bridge_sysctl_dir(proc).is_dir(),
        sysctls=read_bridge_sysctls(proc),
        links=links,
        modules=read_modules(proc, sys, kernel.release),
        conntrack=read_conntrack(proc, nft_ruleset, iptables_nat),
        snmp=read_snmp(proc),
        netns_inode=inode,
    )


RECORDED_FILES = (
    "sys/net/netfilter/nf_conntrack_count",
    "sys/net/ipv4/netfilter/ip_conntrack_count",
    "net/snmp",
    "net/ip_tables_names",
    "modules",
)


def record_host(dest: Path, *, proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> Path:
    """Write a recorded tree of this namespace to `dest` (replayed with `load_recording`)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in RECORDED_FILES:
        value = read_value(proc / rel) if rel != "net/snmp" else None
        src = proc / rel
        if src.exists():
            target = dest / "proc" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(src.read_text() if value is None else value + "\n")
    base = bridge_sysctl_dir(proc)
    if base.is_dir():
        for entry in sorted(base.iterdir()):
            (dest / "proc/sys/net/bridge").mkdir(parents=True, exist_ok=True)
            (dest / "proc/sys/net/bridge" / entry.name).write_text(entry.read_text())
    links = read_links(sys)
    for link in links:
        if link.kind == "bridge":
            brdir = dest / "sys/class/net" / link.name / "bridge"
            brdir.mkdir(parents=True, exist_ok=True)
            for knob in (*BRIDGE_KNOBS, "vlan_filtering"):
                value = read_value(sys / "class/net" / link.name / "bridge" / knob)
                if value is not None:
                    (brdir / knob).write_text(value + "\n")
    for name in WATCHED_MODULES:
        if (sys / "module" / name).is_dir():
            (dest / "sys/module" / name).mkdir(parents=True, exist_ok=True)
            (dest / "sys/module" / name / ".present").write_text("")
    meta: dict[str, Any] = {
        "kernel_release": os.uname().release,
        "links": [link.to_json() for link in links],
        "nft_ruleset": run_nft_ruleset(),
        "iptables_nat": run_iptables_nat(proc),
    }
    (dest / "host.json").write_text(json.dumps(meta, indent=2) + "\n")
    return dest


def load_recording(src: Path) -> dict[str, Any]:
    """Keyword arguments for `gather`/`diagnose` that replay a recorded tree."""
    try:
        meta = json.loads((src / "host.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HostChangeError(f"cannot read recording {src}/host.json: {exc}") from exc
    return {
        "proc": src / "proc",
        "sys": src / "sys",
        "kernel_release": meta["kernel_release"],
        "links": [Link.from_json(d) for d in meta.get("links", [])],
        "nft_ruleset": meta.get("nft_ruleset"),
        "iptables_nat": meta.get("iptables_nat"),
        "live": False,
    }
