"""Host-side set-ups for `repro` scenarios; every change goes through the namespace's journal.

`legacy-vlan` emulates the 2.6.17-2.6.34 bridge through the real mechanism: tagged IPv4 enters
netfilter (bridge-nf-filter-vlan-tagged=1, that era's default), conntrack reassembles it, and one
rule per lab port drops reassembled datagrams longer than the port MTU + 4, the limit the old
br_dev_queue_push_xmit applied. The rule only ever sees such datagrams because bridge-netfilter
reassembled them, so the real fixes remove the drop; nothing here removes the rule to help.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xenvlan.errors import HostChangeError
from xenvlan.host import firewall, netlink
from xenvlan.host.journal import HostJournal
from xenvlan.host.netlink import link_mtu
from xenvlan.host.sysctl import read_value, write_value

BRIDGE_PROC = Path("/proc/sys/net/bridge")
SCENARIOS = ("host", "legacy-vlan", "port-mtu")
LEGACY_VLAN_ALLOWANCE = 4  # the VLAN header the old packet_length() subtracted a second time


@dataclass(frozen=True)
class HostChange:
    """One change made to the host, for reports: what, before, after, why."""

    what: str
    before: str
    after: str
    why: str

    def to_json(self) -> dict[str, str]:
        """As JSON."""
        return {"what": self.what, "before": self.before, "after": self.after, "why": self.why}


def _require_br_netfilter() -> None:
    if not BRIDGE_PROC.is_dir():
        raise HostChangeError(
            "br_netfilter is not loaded here (/proc/sys/net/bridge is absent): "
            "modprobe br_netfilter first"
        )


def set_sysctl(journal: HostJournal, name: str, value: str, why: str) -> HostChange:
    """Journal then write net.bridge.<name>."""
    _require_br_netfilter()
    path = BRIDGE_PROC / name
    before = read_value(path)
    if before is None:
        raise HostChangeError(f"net.bridge.{name} does not exist on this kernel")
    journal.record_sysctl(path, note=why)
    if before != value:
        write_value(path, value)
    return HostChange(f"net.bridge.{name}", before, value, why)


def set_link_mtu(journal: HostJournal, ifname: str, mtu: int, why: str) -> HostChange:
    """Journal then set a host link's MTU (e.g. a guest's bridge port)."""
    before = link_mtu(ifname)
    if before is None:
        raise HostChangeError(f"no link named {ifname}")
    journal.record_link_mtu(ifname, note=why)
    if before != mtu:
        netlink.set_link_mtu(ifname, mtu)
    return HostChange(f"MTU of {ifname}", str(before), str(mtu), why)


def emulate_legacy_vlan(
    journal: HostJournal, lab: str, ports: list[tuple[str, int]]
) -> list[HostChange]:
    """Make this kernel drop reassembled tagged datagrams longer than port MTU + 4 (emulated)."""
    if not ports:
        raise HostChangeError(f"lab {lab}: no host ports known, cannot limit the emulation")
    changes = [
        set_sysctl(
            journal,
            "bridge-nf-call-iptables",
            "1",
            "emulated legacy-vlan: bridged IPv4 enters iptables (2.6.x default)",
        ),
        set_sysctl(
            journal,
            "bridge-nf-filter-vlan-tagged",
            "1",
            "emulated legacy-vlan: VLAN-tagged IPv4 enters netfilter (2.6.x default)",
        ),
    ]
    rules = []
    for port, mtu in ports:
        limit = mtu + LEGACY_VLAN_ALLOWANCE
        rules.append(
            firewall.Rule(
                (
                    "-m",
                    "physdev",
                    "--physdev-is-bridged",
                    "--physdev-out",
                    port,
                    "-m",
                    "length",
                    "--length",
                    f"{limit + 1}:65535",
                    # A conntrack match keeps conntrack (and its defragmentation) active here.
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED",
                    "-j",
                    "DROP",
                ),
                f"xenvlan:{lab} emulated legacy-vlan: drop reassembled IP > {limit} (MTU {mtu}+4) "
                f"out of {port}",
            )
        )
    chain = firewall.install_chain(journal, lab, rules)
    for port, mtu in ports:
        changes.append(
            HostChange(
                f"iptables {chain}: DROP bridged IPv4 longer than {mtu + 4} out of {port}",
                "absent",
                "present",
                "emulated legacy-vlan: the 2.6.17-2.6.34 br_dev_queue_push_xmit limit "
                "(IP length <= MTU + 4) applied after conntrack reassembly",
            )
        )
    return changes


def set_bridge_netfilter(journal: HostJournal, on: bool, why: str) -> list[HostChange]:
    """Bridge-netfilter on the tagged path (call-iptables=1, filter-vlan-tagged=1) or off."""
    if on:
        return [
            set_sysctl(journal, "bridge-nf-call-iptables", "1", why),
            set_sysctl(journal, "bridge-nf-filter-vlan-tagged", "1", why),
        ]
    return [set_sysctl(journal, "bridge-nf-call-iptables", "0", why)]
