"""What the kernel says about one replayed size: drops, port and IP counter deltas, capture."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xenvlan.evidence.trace import NETFILTER_FUNCS, DropCount

IP_ICMP_HEADER = 28
LEGACY_FUNCTION = "br_dev_queue_push_xmit"
LEGACY_KERNELS = "2.6.17-2.6.34"
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class Emulation:
    """The legacy-vlan emulation in place: its iptables chain stands in for the old bridge."""

    chain: str
    stands_in_for: str = LEGACY_FUNCTION
    kernels: str = LEGACY_KERNELS


#: Kernel functions on the bridged path: where a lab packet is dropped between its two ports.
BRIDGED_PATH_PREFIXES = (
    "br_",
    "nft_do_chain",
    "nf_hook_slow",
    "ipt_do_table",
    "ip_do_fragment",
    "ip_defrag",
    "__dev_forward_skb",
)


@dataclass
class EdgeEvidence:
    """Evidence for one replayed payload size (the smallest failing or the largest passing)."""

    size: int
    role: str  # "failing" | "passing"
    probes: int
    in_port: str | None
    out_port: str | None
    drops: list[DropCount] = field(default_factory=list)
    ports: dict[str, dict[str, int]] = field(default_factory=dict)
    ip: dict[str, int] = field(default_factory=dict)
    frames_in: int | None = None  # captured request frames entering on in_port
    frames_out: int | None = None  # and leaving on out_port
    capture: str | None = None
    traced: bool = False
    notice: str | None = None
    emulation: Emulation | None = None
    rule_hits: int | None = None  # packets the emulation's chain dropped in the window
    elapsed_s: float = 0.0

    @property
    def ip_length(self) -> int:
        return self.size + IP_ICMP_HEADER

    @property
    def real_drops(self) -> list[DropCount]:
        """Drops that are not the collateral frees of another drop."""
        return [d for d in self.drops if not d.collateral]

    def emulated_drop(self, d: DropCount) -> bool:
        """Whether `d` is the emulation's iptables DROP (a netfilter drop with its rule hit)."""
        return (
            self.emulation is not None
            and d.function in NETFILTER_FUNCS
            and d.reason == "NETFILTER_DROP"
            and self.rule_hits != 0
        )

    def culprit(self) -> str | None:
        """The kernel function a verdict should name, or None when no drop was traced.

        Drops on the bridged path come first (a widened filter can let in unrelated ones),
        then the most frequent.
        """
        drops = sorted(
            self.real_drops,
            key=lambda d: (not d.function.startswith(BRIDGED_PATH_PREFIXES), -d.count),
        )
        if not drops:
            return None
        d = drops[0]
        if self.emulated_drop(d) and self.emulation is not None:
            e = self.emulation
            return (
                f"the emulation's rule in {e.chain} ({d.function}, {d.reason}), standing in for "
                f"{e.stands_in_for} of {e.kernels}"
            )
        return d.function

    def _in_count(self) -> int | None:
        if self.frames_in is not None:
            return self.frames_in
        if self.in_port and self.in_port in self.ports:
            return self.ports[self.in_port].get("rx_packets")
        return None

    def _out_count(self) -> int | None:
        if self.frames_out is not None:
            return self.frames_out
        if self.out_port and self.out_port in self.ports:
            return self.ports[self.out_port].get("tx_packets")
        return None

    def _drop_text(self, d: DropCount) -> str:
        if self.emulated_drop(d) and self.emulation is not None:
            e = self.emulation
            return (
                f"dropped by the emulation's rule in {e.chain} ({d.function} {d.reason} "
                f"{TIMES}{d.count}, standing in for {e.stands_in_for} of {e.kernels})"
            )
        why = f" ({d.reason})" if d.reason and d.reason != "NOT_SPECIFIED" else ""
        return f"dropped in {d.function}{why} {TIMES}{d.count}"

    def summary_line(self) -> str:
        """``1477 (IP 1505): in on vnet0 2 frames, reassembled (IpReasmOKs +2), dropped ...``."""
        parts = []
        n_in = self._in_count()
        if self.in_port:
            parts.append(f"in on {self.in_port} {'?' if n_in is None else n_in} frames")
        if (ok := self.ip.get("IpReasmOKs", 0)) > 0:
            parts.append(f"reassembled (IpReasmOKs +{ok})")
        if (fails := self.ip.get("IpReasmFails", 0)) > 0:
            parts.append(f"reassembly failed (IpReasmFails +{fails})")
        if (made := self.ip.get("IpFragCreates", 0)) > 0:
            parts.append(f"refragmented (IpFragCreates +{made})")
        if (ffail := self.ip.get("IpFragFails", 0)) > 0:
            parts.append(f"could not fragment (IpFragFails +{ffail})")
        if self.traced:
            parts += [self._drop_text(d) for d in self.real_drops] or ["no kernel drop traced"]
        if self.out_port:
            n_out = self._out_count()
            parts.append(f"out on {self.out_port} {'?' if n_out is None else n_out}")
        line = f"{self.size} (IP {self.ip_length}): " + ", ".join(parts)
        return line + (f" [{self.notice}]" if self.notice else "")

    def to_json(self) -> dict[str, Any]:
        """The ``evidence`` document of one size."""
        return {
            "size": self.size,
            "ip_length": self.ip_length,
            "role": self.role,
            "probes": self.probes,
            "traced": self.traced,
            "drops": [d.to_json() for d in self.drops],
            "culprit": self.culprit(),
            "in_port": self.in_port,
            "out_port": self.out_port,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "ports": self.ports,
            "ip": self.ip,
            "capture": self.capture,
            "emulation": (
                {
                    "chain": self.emulation.chain,
                    "stands_in_for": self.emulation.stands_in_for,
                    "kernels": self.emulation.kernels,
                    "rule_hits": self.rule_hits,
                }
                if self.emulation
                else None
            ),
            "notice": self.notice,
            "elapsed_s": round(self.elapsed_s, 3),
            "summary": self.summary_line(),
        }


@dataclass
class EdgeReport:
    """Evidence for one failing edge of a sweep: the failing size and the passing contrast."""

    failing: EdgeEvidence
    passing: EdgeEvidence | None = None
    notice: str | None = None

    def lines(self) -> list[str]:
        """One human line per replayed size."""
        return [e.summary_line() for e in (self.failing, self.passing) if e is not None]

    def to_json(self) -> dict[str, Any]:
        """``{"failing": ..., "passing": ..., "notice": ...}``."""
        return {
            "failing": self.failing.to_json(),
            "passing": self.passing.to_json() if self.passing else None,
            "notice": self.notice,
        }
