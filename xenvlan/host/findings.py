"""`diagnose`: turn HostFacts into findings (severity, evidence, recommended fix)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xenvlan.host.inspect import HostFacts, Link, gather, load_recording

SEVERITIES: tuple[str, ...] = ("ok", "info", "warn", "critical")


@dataclass(frozen=True)
class Finding:
    """One conclusion: severity is ok, info, warn or critical."""

    severity: str
    code: str
    title: str
    evidence: list[str] = field(default_factory=list)
    recommendation: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Diagnosis:
    """The facts read and the findings drawn from them."""

    facts: HostFacts
    findings: list[Finding]

    @property
    def worst(self) -> str:
        return max((f.severity for f in self.findings), key=SEVERITIES.index, default="ok")

    @property
    def healthy(self) -> bool:
        return self.worst in ("ok", "info")

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def to_json(self) -> dict[str, Any]:
        facts = self.facts
        return {
            "healthy": self.healthy,
            "worst": self.worst,
            "netns_inode": facts.netns_inode,
            "kernel": asdict(facts.kernel),
            "br_netfilter": facts.br_netfilter,
            "sysctls": facts.sysctls,
            "bridges": [
                {
                    "name": br.name,
                    "mtu": br.mtu,
                    "vlan_filtering": br.vlan_filtering,
                    "nf_call": br.nf_call,
                    "ports": [
                        {"name": p.name, "kind": p.kind, "mtu": p.mtu, "lab_guest": p.lab_guest}
                        for p in facts.ports(br.name)
                    ],
                }
                for br in facts.bridges()
            ],
            "modules": {
                n: {"state": m.state, "evidence": m.evidence} for n, m in facts.modules.items()
            },
            "conntrack": asdict(facts.conntrack),
            "snmp": facts.snmp,
            "findings": [f.to_json() for f in self.findings],
        }


def _describe(port: Link) -> str:
    lab = f", lab guest {port.lab_guest}" if port.lab_guest else ""
    return f"{port.name} ({port.kind}, MTU {port.mtu}{lab})"


def _conntrack_effective(facts: HostFacts) -> tuple[bool, list[str]]:
    """Conntrack defragments bridged IPv4 when rules need it; before 4.10 merely when loaded."""
    ct = facts.conntrack
    if ct.in_use:
        return True, ct.evidence
    mod = facts.modules.get("nf_conntrack")
    if facts.kernel.version < (4, 10, 0) and mod is not None and mod.present:
        return True, [f"nf_conntrack {mod.state} ({mod.evidence}); hooks are global before 4.10"]
    return False, ["no ct/NAT rules and no tracked connections"]


def analyze(facts: HostFacts, lab_ports: Mapping[str, str] | None = None) -> Diagnosis:
    """Apply the rules of background.md to the facts."""
    out: list[Finding] = []
    k = facts.kernel
    out.append(Finding("info", "kernel-band", f"kernel {k.release}: {k.summary}", [k.release]))
    sysctls = facts.sysctls
    glob_ipt = sysctls.get("bridge-nf-call-iptables") == "1"
    vlan_tagged = sysctls.get("bridge-nf-filter-vlan-tagged") == "1"
    ct_on, ct_evidence = _conntrack_effective(facts)
    bridges = facts.bridges()

    def bridge_ipt(br: Link) -> bool:
        return facts.br_netfilter and (glob_ipt or br.nf_call.get("nf_call_iptables") == "1")

    filtered = [br for br in bridges if bridge_ipt(br)]
    if not bridges:
        out.append(Finding("info", "no-bridges", "no Linux bridge in this network namespace"))
    else:
        evidence = []
        for br in bridges:
            ports = ", ".join(_describe(p) for p in facts.ports(br.name)) or "no ports"
            evidence.append(f"{br.name} (MTU {br.mtu}): {ports}")
        out.append(Finding("info", "bridges", f"{len(bridges)} bridge(s)", evidence))

    mod_ev = [f"{n}: {m.state} ({m.evidence})" for n, m in facts.modules.items()]
    if not facts.br_netfilter:
        out.append(
            Finding(
                "ok",
                "br-netfilter-absent",
                "br_netfilter is not loaded: bridged frames bypass iptables and conntrack",
                ["/proc/sys/net/bridge is absent", *mod_ev],
                "Nothing to fix for the bridge-netfilter cliffs (`xenvlan fix` refuses); if "
                "something loads br_netfilter later (Docker, Kubernetes), run diagnose again.",
            )
        )
    else:
        out.append(
            Finding(
                "info",
                "bridge-sysctls",
                "br_netfilter is active (built-in or loaded)",
                [f"net.bridge.{n}={v}" for n, v in sysctls.items()] + mod_ev,
            )
        )

    conntrack_title = "conntrack is in use" if ct_on else "conntrack is not in use"
    out.append(Finding("info", "conntrack", conntrack_title, ct_evidence))

    # Legacy kernels: the original bug.
    if k.band == "vlan-refrag-bug" and filtered and vlan_tagged:
        cliffs = [
            f"{p.name}: IP length <= {p.mtu + 4} passes, {p.mtu + 5} dropped "
            f"(ping -s {p.mtu - 24} ok, -s {p.mtu - 23} lost)"
            for br in filtered
            for p in facts.ports(br.name)
        ]
        evidence = [
            f"kernel {k.release} (2.6.17-2.6.34)",
            "net.bridge.bridge-nf-call-iptables=1" if glob_ipt else "per-bridge nf_call_iptables=1",
            "net.bridge.bridge-nf-filter-vlan-tagged=1",
            *ct_evidence,
            *cliffs,
        ]
        fixes = (
            "`xenvlan fix apply --method vlan-tagged` (narrowest), or `--method call-iptables` "
            "(the usual fix) / `--method call-all`; add --persist; or run kernel >= 2.6.35"
        )
        if ct_on:
            title = "legacy VLAN refragmentation bug: IP length > MTU+4 dropped"
            out.append(Finding("critical", "legacy-vlan-refrag", title, evidence, fixes))
        else:
            title = "legacy VLAN refragmentation bug is latent: it fires once conntrack is in use"
            out.append(Finding("warn", "legacy-vlan-refrag-latent", title, evidence, fixes))
    if k.band == "no-refrag" and filtered and ct_on:
        out.append(
            Finding(
                "critical",
                "legacy-no-refrag",
                "kernel <= 2.6.16 never refragments bridged traffic: IP length > MTU dropped",
                [f"kernel {k.release}", "bridge-nf-call-iptables=1", *ct_evidence],
                "`xenvlan fix apply --method call-iptables` or upgrade the kernel",
            )
        )
    if k.version >= (2, 6, 35) and filtered:
        names = ", ".join(br.name for br in filtered)
        what = "reassembled by conntrack and refragmented" if ct_on else "filtered by iptables"
        out.append(
            Finding(
                "info",
                "bridged-netfilter",
                f"bridged IPv4 on {names} is {what} (no VLAN cliff on this kernel)",
                [f"net.bridge.bridge-nf-call-iptables={sysctls.get('bridge-nf-call-iptables')}"],
                "libvirt recommends `xenvlan fix apply --method call-all` on virtualization "
                "hosts; keep 1 on Docker/Kubernetes nodes",
            )
        )

    for br in bridges:
        if br.nf_call.get("nf_call_iptables") == "1" and not glob_ipt and facts.br_netfilter:
            out.append(
                Finding(
                    "info",
                    "per-bridge-nf-call",
                    f"{br.name}: per-bridge nf_call_iptables=1 overrides the global 0 (OR-ed)",
                    [f"/sys/class/net/{br.name}/bridge/nf_call_iptables=1"],
                    f"`xenvlan fix apply --method bridge --bridge {br.name}`",
                )
            )

    # Modern cliffs: port MTU mismatch.
    for br in bridges:
        members = facts.ports(br.name)
        mtus = {p.mtu for p in members}
        if len(mtus) < 2:
            continue
        smallest = min(mtus)
        evidence = [f"{br.name} MTU {br.mtu}", *(_describe(p) for p in members)]
        if bridge_ipt(br) and ct_on:
            title = (
                f"port MTU mismatch on {br.name}: non-DF packets above {smallest} are refragmented "
                "by br_netfilter now, and would be dropped with bridge-nf-call-iptables=0"
            )
            rec = (
                f"give every port of {br.name} (and the guest NICs) the same MTU before turning "
                "bridge-nf-call-iptables off; here the fix direction is reversed"
            )
        else:
            title = (
                f"port MTU mismatch on {br.name}: non-DF packets above {smallest} bytes towards "
                "the smaller port are dropped by the bridge"
            )
            rec = f"give every port of {br.name} the same MTU (`ip link set dev PORT mtu N`)"
        out.append(Finding("warn", "port-mtu-mismatch", title, evidence, rec))

    ctb = facts.modules.get("nf_conntrack_bridge")
    if facts.conntrack.bridge_family:
        out.append(
            Finding(
                "warn",
                "nf-conntrack-bridge",
                "nftables bridge-family ct rules (nf_conntrack_bridge): fragments larger than the "
                "egress MTU are dropped, whatever bridge-nf-call-iptables says",
                [e for e in facts.conntrack.evidence if " bridge " in e],
                "avoid ct expressions in bridge-family tables, or align all port MTUs",
            )
        )
    elif ctb is not None and ctb.present:
        out.append(
            Finding(
                "info",
                "nf-conntrack-bridge-loaded",
                "nf_conntrack_bridge is loaded but no bridge-family ct rule uses it",
                [ctb.evidence],
            )
        )

    if sysctls.get("bridge-nf-filter-pppoe-tagged") == "1":
        out.append(
            Finding(
                "info",
                "pppoe-tagged",
                "bridge-nf-filter-pppoe-tagged=1: PPPoE-encapsulated IPv4 is also filtered",
                ["net.bridge.bridge-nf-filter-pppoe-tagged=1"],
            )
        )
    for br in bridges:
        vx = [p.name for p in facts.ports(br.name) if p.kind == "vxlan"]
        if vx:
            out.append(
                Finding(
                    "info",
                    "vxlan-port",
                    f"{br.name} has VXLAN ports: encapsulation overhead lowers the usable MTU",
                    vx,
                )
            )
    if bridges:
        where = [
            f"{br.name}: vlan_filtering="
            + ("unknown" if br.vlan_filtering is None else str(int(br.vlan_filtering)))
            for br in bridges
        ]
        out.append(
            Finding(
                "info",
                "vlan-tagging",
                "VLAN tags come in-band from the guests unless the bridge filters VLANs "
                "(vlan_filtering=1: tags out of band in skb->vlan_tci)",
                where,
            )
        )

    snmp = facts.snmp
    if snmp:
        ev = [f"Ip{k2}={v}" for k2, v in snmp.items()]
        if snmp.get("FragFails", 0) > 0:
            out.append(
                Finding(
                    "warn",
                    "frag-fails",
                    f"IpFragFails={snmp['FragFails']}: packets needed fragmenting and were dropped",
                    ev,
                    "compare the counters before/after a sweep (`xenvlan sweep`)",
                )
            )
        else:
            out.append(Finding("info", "frag-counters", "fragment counters", ev))

    for port, guest in (lab_ports or {}).items():
        link = next((link for link in facts.links if link.name == port), None)
        if link is None or link.master is None:
            state = "does not exist" if link is None else "is not on a bridge"
            out.append(
                Finding("warn", "lab-port-missing", f"lab port {port} ({guest}) {state}", [port])
            )
        else:
            out.append(
                Finding(
                    "info",
                    "lab-port",
                    f"lab guest {guest} is on {link.master} via {_describe(link)}",
                    [port],
                )
            )

    if all(f.severity in ("ok", "info") for f in out):
        out.insert(
            0,
            Finding(
                "ok",
                "healthy",
                "healthy: no bridged-fragmentation cliff found on this host",
                [],
                "nothing to do",
            ),
        )
    return Diagnosis(facts, out)


def diagnose(
    *,
    lab_ports: Mapping[str, str] | None = None,
    proc: Path = Path("/proc"),
    sys: Path = Path("/sys"),
    kernel_release: str | None = None,
    links: list[Link] | None = None,
    nft_ruleset: Mapping[str, Any] | None = None,
    iptables_nat: str | None = None,
    recording: Path | None = None,
) -> Diagnosis:
    """Diagnose the current network namespace (or a recorded tree) for bridged-fragment cliffs."""
    if recording is not None:
        kwargs = load_recording(recording)
        if kernel_release is not None:
            kwargs["kernel_release"] = kernel_release
        facts = gather(lab_ports=lab_ports, **kwargs)
    else:
        facts = gather(
            lab_ports=lab_ports,
            proc=proc,
            sys=sys,
            kernel_release=kernel_release,
            links=links,
            nft_ruleset=nft_ruleset,
            iptables_nat=iptables_nat,
            live=proc == Path("/proc") or links is None,
        )
    return analyze(facts, lab_ports)
