"""Evidence for a lab's sweep: every cliff's smallest failing and largest passing size replayed.

The glue between a finished sweep (its prober still open) and `collect_edge`: ports, addresses
and the traffic key come from the lab's status; captures go to the lab's run dir; journal
entries carry the lab's name, so `xenvlan down` removes a tracing instance a kill -9 left.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from xenvlan import paths
from xenvlan.errors import XenvlanError
from xenvlan.evidence.collect import EvidencePlan, collect_edge
from xenvlan.evidence.key import TrafficKey, netback_key, qemu_key
from xenvlan.evidence.model import EdgeReport, Emulation
from xenvlan.host.journal import on_behalf_of

if TYPE_CHECKING:
    from xenvlan.sweep.verdict import Transition

_VIF = re.compile(r"^vif(?P<domid>\d+)\.\d+$")


@dataclass(frozen=True)
class EvidenceOptions:
    """Whether and how a sweep collects kernel evidence."""

    probes: int = 2
    tag: str = ""  # file-name prefix of the captures (``before-``, ``after-``)
    emulation_chain: str | None = None  # the legacy-vlan emulation's iptables chain
    capture: bool = True
    capture_dir: Path | None = None  # where the pcapng files go; default the lab's run dir


class _Prober(Protocol):
    def probe(self, sizes: Sequence[int], *, count: Any) -> Any: ...


class _Guest(Protocol):
    name: str
    domain: str
    host_port: str | None
    mgmt_ip: str
    vlan_ip: str | None


class _Status(Protocol):
    lab: str
    domain_type: str

    def guest(self, name: str) -> Any: ...


def lab_key(domain_type: str, guests: Sequence[_Guest]) -> tuple[TrafficKey, str | None]:
    """The lab's traffic key (both guests: requests and replies), or protocol-only + why."""
    try:
        if domain_type == "xen":
            domids = [int(m["domid"]) for g in guests if (m := _VIF.match(g.host_port or ""))]
            if not domids:
                raise XenvlanError("no vif<domid>.<n> port names to find netback threads")
            return netback_key(domids), None
        return qemu_key([g.domain for g in guests]), None
    except XenvlanError as exc:
        return TrafficKey(), f"drops filtered by protocol only: {exc}"


def _addr(guest: _Guest, path: str) -> str:
    return (guest.vlan_ip or "").split("/")[0] if path == "vlan" else guest.mgmt_ip


def sweep_evidence(
    status: _Status,
    transitions: Sequence[Transition],
    prober: _Prober,
    src_name: str,
    dst_name: str,
    *,
    path: str = "vlan",
    opts: EvidenceOptions | None = None,
) -> list[EdgeReport]:
    """Replay every cliff (pass -> fail going up) of a sweep with the kernel watching."""
    opts = opts or EvidenceOptions()
    src, dst = status.guest(src_name), status.guest(dst_name)
    key, key_notice = lab_key(status.domain_type, [src, dst])
    plan = EvidencePlan(
        lab=status.lab,
        in_port=src.host_port,
        out_port=dst.host_port,
        key=key,
        run_dir=opts.capture_dir or paths.lab_dir(status.lab),
        src_ip=_addr(src, path) or None,
        dst_ip=_addr(dst, path) or None,
        emulation=Emulation(opts.emulation_chain) if opts.emulation_chain else None,
        probes=opts.probes,
        capture=opts.capture,
    )

    def replay(size: int, probes: int) -> object:
        return prober.probe([size], count=probes)

    reports = []
    with on_behalf_of(status.lab):
        for t in transitions:
            if not t.is_cliff:
                continue
            rep = collect_edge(
                plan, t.first_fail, t.last_pass, replay, label=f"{opts.tag}{src_name}-{dst_name}-"
            )
            if key_notice:
                rep.notice = "; ".join(n for n in (key_notice, rep.notice) if n)
                for ev in (rep.failing, rep.passing):
                    if ev is not None:
                        ev.notice = "; ".join(n for n in (key_notice, ev.notice) if n)
            reports.append(rep)
    return reports


def cite_kernel(text: str, reports: Sequence[EdgeReport]) -> str:
    """A verdict text with the function the kernel named for the first cliff, when it did."""
    for rep in reports:
        culprit = rep.failing.culprit()
        if culprit:
            return f"{text}; the kernel dropped the probes in {culprit}"
    return text
