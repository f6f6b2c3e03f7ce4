"""The verdict: what the measured pass/fail transitions say about the path, and no more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from xenvlan.sweep.ping import IP_ICMP_HEADER, PingResult


class SweepCode(StrEnum):
    """What one sweep found (a verdict's machine code)."""

    NO_CLIFF = "no-cliff"
    LEGACY_VLAN = "legacy-vlan-double-subtract"
    NO_REFRAG = "no-refrag"
    PATH_MTU = "path-mtu"
    SENDER_MTU = "sender-mtu"
    CLIFF = "cliff"
    NO_CONNECTIVITY = "no-connectivity"
    IRREGULAR = "irregular"


VERDICT_CODES: tuple[str, ...] = tuple(SweepCode)
"""Every code :func:`decide` can return."""


@dataclass(frozen=True)
class Verdict:
    """A short machine code and a human sentence that states its evidence."""

    code: SweepCode
    text: str

    def to_json(self) -> dict[str, str]:
        return {"code": str(self.code), "text": self.text}


@dataclass(frozen=True, order=True)
class Transition:
    """Two adjacent payload sizes with different outcomes.

    ``last_pass < first_fail`` is a cliff (pass then fail going up); the reverse is a recovery
    (fail then pass), as at the top of a failing window.
    """

    last_pass: int
    first_fail: int

    @property
    def is_cliff(self) -> bool:
        """True for pass→fail going up in size."""
        return self.last_pass < self.first_fail


@dataclass
class SizeStat:
    """Everything measured at one payload size, over all its probes."""

    size: int
    probes: int = 0
    sent: int = 0
    received: int = 0
    errors: list[str] = field(default_factory=list)
    local_errors: int = 0

    @property
    def passed(self) -> bool:
        """The rule: a size passes when any echo reply ever came back."""
        return self.received > 0

    @property
    def ip_length(self) -> int:
        """IPv4 total length of one echo request with this payload."""
        return self.size + IP_ICMP_HEADER

    def add(self, r: PingResult) -> None:
        """Fold one more probe of this size in."""
        self.probes += 1
        self.sent += r.sent
        self.received += r.received
        if r.error is not None:
            self.errors.append(r.error)
            self.local_errors += r.local_error

    def evidence(self) -> str:
        """``1372 (IP 1400): 3/3 replies`` style."""
        text = f"{self.size} (IP {self.ip_length}): {self.received}/{self.sent} replies"
        if self.probes > 1:
            text += f" over {self.probes} probes"
        if self.errors:
            text += f", {self.errors[0]}"
        return text


def aggregate(samples: Sequence[PingResult]) -> dict[int, SizeStat]:
    """Per-size statistics from every probe taken."""
    stats: dict[int, SizeStat] = {}
    for r in samples:
        stats.setdefault(r.size, SizeStat(r.size)).add(r)
    return dict(sorted(stats.items()))


def runs(stats: Mapping[int, SizeStat]) -> list[tuple[int, int, bool]]:
    """Maximal runs ``(first, last, passed)`` of probed sizes with the same outcome."""
    out: list[tuple[int, int, bool]] = []
    for size in sorted(stats):
        ok = stats[size].passed
        if out and out[-1][2] == ok:
            out[-1] = (out[-1][0], size, ok)
        else:
            out.append((size, size, ok))
    return out


def _fmt_runs(rs: Sequence[tuple[int, int, bool]]) -> str:
    return "; ".join(
        f"{'passes' if ok else 'fails'} {a}" + (f"..{b}" if b != a else "") for a, b, ok in rs
    )


def _ports_with(host_ports: Sequence[tuple[str, int]] | None, ip_len: int) -> str:
    """Name the host ports whose MTU explains a largest passing IP length of ``ip_len``."""
    if not host_ports:
        return ""
    exact = [name for name, port_mtu in host_ports if port_mtu == ip_len]
    slack = [name for name, port_mtu in host_ports if port_mtu == ip_len - 4]
    parts = []
    if exact:
        parts.append(f"host port(s) with MTU {ip_len}: {', '.join(exact)}")
    if slack:
        parts.append(
            f"host port(s) with MTU {ip_len - 4}: {', '.join(slack)} (a plain Linux bridge "
            "forwards up to port MTU + 4, room for a VLAN tag)"
        )
    if parts:
        return "; " + "; ".join(parts)
    listed = ", ".join(f"{n}={m}" for n, m in host_ports)
    return f"; no listed host port has MTU {ip_len} or {ip_len - 4} ({listed})"


def decide(
    stats: Mapping[int, SizeStat],
    transitions: Sequence[Transition],
    *,
    lo: int,
    hi: int,
    mtu: int | None,
    vlan: bool,
    df: str | None,
    host_ports: Sequence[tuple[str, int]] | None = None,
) -> Verdict:
    """Apply the verdict table to measured sizes and confirmed transitions."""
    rs = runs(stats)
    n = len(stats)
    if not rs:
        return Verdict(SweepCode.NO_CONNECTIVITY, "nothing was probed")
    if all(not ok for _, _, ok in rs):
        sent = sum(s.sent for s in stats.values())
        errs = sorted({e for s in stats.values() for e in s.errors})
        what = f"0/{sent} replies over {n} sizes from {min(stats)} to {max(stats)}"
        detail = f"; errors: {', '.join(errs)}" if errs else "; no ICMP error came back either"
        local = all(s.local_errors for s in stats.values())
        hint = " (the sender itself could not send)" if local else ""
        return Verdict(SweepCode.NO_CONNECTIVITY, f"no connectivity{hint}: {what}{detail}")
    if all(ok for _, _, ok in rs):
        return Verdict(
            SweepCode.NO_CLIFF,
            f"path delivers every size probed: {n} sizes from {min(stats)} to {max(stats)} "
            f"(IP {min(stats) + IP_ICMP_HEADER}..{max(stats) + IP_ICMP_HEADER}) all got replies",
        )
    if len(rs) != 2 or not rs[0][2] or len(transitions) != 1:
        return Verdict(
            SweepCode.IRREGULAR,
            f"{len(transitions)} transitions, not a single cliff: {_fmt_runs(rs)} "
            "(sizes between probes with the same outcome were not all tested)",
        )
    t = transitions[0]
    last, first = stats[t.last_pass], stats[t.first_fail]
    ev = f"last pass {last.evidence()}; first fail {first.evidence()}"
    if hi > t.first_fail:
        ev += f"; every size probed up to {hi} failed"
    lp_ip, ff_ip = last.ip_length, first.ip_length
    if first.local_errors and any(e.startswith("local: message too long") for e in first.errors):
        why = f" (DF mode {df})" if df else ""
        return Verdict(
            SweepCode.SENDER_MTU,
            f"the sender refuses IP lengths above {lp_ip}{why}: its own MTU"
            f"{f' {mtu}' if mtu else ''} with DF set, not loss on the path; {ev}",
        )
    frag = next((e for e in first.errors if e.startswith("frag-needed")), None)
    if frag is not None:
        return Verdict(
            SweepCode.PATH_MTU,
            f"a router on the path reported {frag} for IP {ff_ip}; path MTU {lp_ip}"
            f"{_ports_with(host_ports, lp_ip)}; {ev}",
        )
    if mtu is None:
        return Verdict(
            SweepCode.CLIFF,
            f"cliff: IP lengths up to {lp_ip} pass, {ff_ip} and above fail; the sender MTU is "
            f"unknown, so no signature is matched; {ev}",
        )
    if vlan and ff_ip == mtu + 5:
        return Verdict(
            SweepCode.LEGACY_VLAN,
            f"first failing IP length {ff_ip} = MTU {mtu} + 5 on a VLAN path: matches the "
            "legacy bridge-netfilter VLAN double-subtraction (Linux 2.6.17-2.6.34: reassembled "
            "guest-tagged packets are not refragmented and the length check subtracts the "
            "4-byte tag twice, so IP <= MTU+4 passes); fixes: sysctl "
            "net.bridge.bridge-nf-filter-vlan-tagged=0 (narrow) or "
            "net.bridge.bridge-nf-call-iptables=0, or a kernel >= 2.6.35; " + ev,
        )
    if ff_ip == mtu + 1:
        return Verdict(
            SweepCode.NO_REFRAG,
            f"first failing IP length {ff_ip} = MTU {mtu} + 1: everything the sender has to "
            "fragment is lost, consistent with reassembly without refragmentation on the path "
            "(2.6.16-style bridge-netfilter) or with fragments being dropped; " + ev,
        )
    if ff_ip <= mtu:
        return Verdict(
            SweepCode.PATH_MTU,
            f"cliff below the sender MTU {mtu}: IP {lp_ip} passes, {ff_ip} fails, so something "
            f"on the path (e.g. a bridge port) limits IP packets to {lp_ip} bytes"
            f"{_ports_with(host_ports, lp_ip)}"
            f"; {ev}",
        )
    return Verdict(
        SweepCode.CLIFF,
        f"cliff above the sender MTU {mtu} at IP {ff_ip} (MTU + {ff_ip - mtu}), matching no "
        f"known signature; {ev}",
    )
