"""The sweep: find every pass/fail transition over a payload range, exact to the byte.

Search
    1. Calibrate: probe ``lo`` and 56 (or the nearest size in range) with the prober's initial
       timeout, then derive the timeouts from the measured RTT (see :func:`derive_timeout`).
    2. Coarse pass, one batch: a geometric grid over ``lo..hi`` (ratio 1.25), every 8 bytes over
       IP lengths 1400..1520 and over the sender MTU ±40, and the signature sizes MTU, MTU+1,
       MTU+4, MTU+5 (IP length) exactly. Between two probed sizes with the same outcome nothing
       is assumed tested: a pass-fail-pass window narrower than the local grid spacing outside
       the dense regions can be missed (the verdict says so).
    3. Refine and confirm, one batch per round until nothing is left: every adjacent pair of
       probed sizes with different outcomes is split by a k-ary search (up to
       :data:`REFINE_BATCH` new sizes per round, shared among all open gaps), and in the same
       batch every size that has failed once is probed again (the confirmation). The gaps next
       to a coarse size that failed once and looks like a lost packet (both probed neighbours
       pass, or the gap to a passing neighbour is wider than one refine batch) wait for its
       confirmation instead of being refined on spec. The search ends when every transition is
       between n and n+1 and every failing size is confirmed.

Classification rule
    A size *passes* when at least one echo reply came back over all its probes (a reply cannot
    be invented, so one is proof of delivery). The first probe of every size is a single
    request; a size that got no reply is probed again in a later batch with ``count`` requests
    and the full timeout, and *fails* only when that is lost too: every failing size reported
    lost 1 + ``count`` requests over two rounds. So a lost packet, or a whole lost probe, never
    makes a failing size, let alone a cliff, while a 100%-loss cliff is still caught; partial
    loss is kept in the samples and shown, never turned into a cliff. (Earlier, every
    probe was ``count`` requests and only the sizes at a transition were probed twice; a
    passing size now shows 1/1 where it showed 3/3, and ``count`` is the size of the
    confirming probe.)

Timeouts
    Batches holding only first probes wait ``max(0.1 s, 2 x RTT)``: a reply they miss costs a
    confirmation, never a verdict. A batch holding any confirmation waits the full
    ``max(0.2 s, 4 x RTT)``. RTT is the slowest average seen so far, so it includes the CPU
    contention of a big batch in the guest.

Cost (TCG lab, 1 vCPU guests, busybox ping; see bench/sweep.py): a batch costs one SSH round
trip (~15 ms), ~4 ms of process start per size, and a timeout when a size fails. A healthy
0..65507 sweep is 2 batches (~70 sizes, ~0.5 s); a cliff is 4 (~130 probes, ~1.5-2 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

from xenvlan import fault
from xenvlan.errors import SpecError
from xenvlan.evidence.lab import EvidenceOptions
from xenvlan.evidence.model import EdgeReport
from xenvlan.sweep.ping import DF_MODES, IP_ICMP_HEADER, MAX_PAYLOAD, Counts, PingResult
from xenvlan.sweep.verdict import SizeStat, Transition, Verdict, aggregate, decide

__all__ = [
    "AdaptiveProber",
    "Prober",
    "SweepOptions",
    "SweepResult",
    "Transition",
    "Verdict",
    "coarse_grid",
    "derive_timeout",
    "run_sweep",
]

COARSE_RATIO = 1.25
DENSE_IP = (1400, 1520)
DENSE_STEP = 8
MTU_BAND = 40
REFINE_BATCH = 24
CONFIRM_PROBES = 2
MAX_COUNT = 100  # probes per size: more only makes a sweep take hours
FIRST_COUNT = 1
TIMEOUT_FLOOR_S = 0.2
RTT_FACTOR = 4.0
FIRST_TIMEOUT_FLOOR_S = 0.1
FIRST_RTT_FACTOR = 2.0
MAX_ROUNDS = 64


class Prober(Protocol):
    """Pings many payload sizes at once (``count`` requests each, or one count per size)."""

    def probe(self, sizes: Sequence[int], *, count: Counts) -> list[PingResult]: ...


@runtime_checkable
class AdaptiveProber(Protocol):
    """A prober whose per-ping timeout the sweep may lower once it has measured the RTT."""

    timeout_s: float

    def probe(self, sizes: Sequence[int], *, count: Counts) -> list[PingResult]: ...


@dataclass(frozen=True)
class SweepOptions:
    """What to sweep: payload range, probes per size, DF mode (label only) and path name."""

    lo: int = 0
    hi: int = MAX_PAYLOAD
    count: int = 3
    df: str | None = None
    path: str = "vlan"
    evidence: EvidenceOptions | None = None  # replay each cliff with the kernel watching

    def validate(self) -> None:
        """Raise :class:`SpecError` naming the bad field."""
        if not 0 <= self.lo <= self.hi <= MAX_PAYLOAD:
            raise SpecError(
                f"--from/--to must satisfy 0 <= from <= to <= {MAX_PAYLOAD}, "
                f"got {self.lo}..{self.hi}"
            )
        if not 1 <= self.count <= MAX_COUNT:
            raise SpecError(f"--count must be in 1..{MAX_COUNT}, got {self.count}")
        if self.path not in ("vlan", "mgmt"):
            raise SpecError(f"--path must be one of vlan, mgmt, got {self.path[:40]!r}")
        if self.df is not None and self.df not in DF_MODES:
            raise SpecError(f"--df must be one of {', '.join(DF_MODES)}, got {self.df!r}")


@dataclass
class SweepResult:
    """Everything a sweep measured; ``to_json`` gives the documented JSON shape."""

    src: str
    dst: str
    path: str
    df: str | None
    mtu: int | None
    vlan: bool
    transitions: list[Transition]
    largest_passing: int | None
    smallest_failing: int | None
    probes: int
    elapsed_s: float
    samples: list[PingResult]
    verdict: Verdict
    lo: int = 0
    hi: int = MAX_PAYLOAD
    rounds: int = 0
    timeout_s: float | None = None
    exact: bool = True
    stats: dict[int, SizeStat] = field(default_factory=dict, repr=False)
    evidence: list[EdgeReport] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The JSON document of issue 3, section 6."""
        return {
            "src": self.src,
            "dst": self.dst,
            "path": self.path,
            "df": self.df,
            "mtu": self.mtu,
            "transitions": [
                {"last_pass": t.last_pass, "first_fail": t.first_fail} for t in self.transitions
            ],
            "largest_passing": self.largest_passing,
            "smallest_failing": self.smallest_failing,
            "probes": self.probes,
            "elapsed_s": round(self.elapsed_s, 3),
            "samples": [
                {
                    "size": s.size,
                    "sent": s.sent,
                    "received": s.received,
                    "rtt_avg_ms": s.rtt_avg_ms,
                    "error": s.error,
                }
                for s in self.samples
            ],
            "verdict": self.verdict.to_json(),
        } | ({"evidence": [e.to_json() for e in self.evidence]} if self.evidence else {})


def coarse_grid(lo: int, hi: int, mtu: int | None = None) -> list[int]:
    """The sizes of the coarse pass (see the module docstring), sorted, within ``lo..hi``."""
    pts = {lo, hi}
    x = float(max(lo, 16))
    while x < hi:
        pts.add(int(x))
        x = max(x * COARSE_RATIO, x + 1)
    for ip in range(DENSE_IP[0], DENSE_IP[1] + 1, DENSE_STEP):
        pts.add(ip - IP_ICMP_HEADER)
    ref = mtu if mtu is not None else 1500
    for ip in range(ref - MTU_BAND, ref + MTU_BAND + 1, DENSE_STEP):
        pts.add(ip - IP_ICMP_HEADER)
    for extra in (0, 1, 4, 5):
        pts.add(ref + extra - IP_ICMP_HEADER)
    return sorted(p for p in pts if lo <= p <= hi)


def derive_timeout(
    samples: Sequence[PingResult],
    floor_s: float = TIMEOUT_FLOOR_S,
    factor: float = RTT_FACTOR,
) -> float | None:
    """Per-ping timeout from the slowest average RTT seen: ``max(floor, factor x RTT)``.

    The defaults (0.2 s, 4 x RTT) are the confirming timeout; first probes use
    ``derive_timeout(samples, FIRST_TIMEOUT_FLOOR_S, FIRST_RTT_FACTOR)`` (0.1 s, 2 x RTT).
    """
    rtts = [s.rtt_avg_ms for s in samples if s.received and s.rtt_avg_ms is not None]
    if not rtts:
        return None
    return round(max(floor_s, factor * max(rtts) / 1000.0), 3)


def _split_points(a: int, b: int, k: int) -> list[int]:
    w = b - a
    k = min(w - 1, k)
    return [a + (i * w) // (k + 1) for i in range(1, k + 1)]


def _deferred(stats: dict[int, SizeStat], order: list[int], i: int, coarse: set[int]) -> bool:
    """Whether the gaps next to ``order[i]`` wait for its confirmation before being refined.

    That is a size of the coarse pass that failed its one-request first probe and whose
    probed neighbours both pass (the signature of a lost packet), or whose gap to a passing
    neighbour is too wide for one refine batch: refining it now would spend probes on what is
    most likely a lost packet. Sizes first probed while refining never wait, so a k-ary search
    does not pay a round per step.
    """
    size = order[i]
    s = stats[size]
    if s.passed or s.probes >= CONFIRM_PROBES or size not in coarse:
        return False
    nbrs = [order[j] for j in (i - 1, i + 1) if 0 <= j < len(order)]
    passing = [n for n in nbrs if stats[n].passed]
    if len(passing) == len(nbrs):
        return True
    return any(abs(n - size) - 1 > REFINE_BATCH for n in passing)


def run_sweep(
    prober: Prober,
    opts: SweepOptions,
    *,
    src: str,
    dst: str,
    mtu: int | None,
    vlan: bool,
    host_ports: list[tuple[str, int]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SweepResult:
    """Find every pass/fail transition over ``opts.lo..opts.hi`` and judge them."""
    opts.validate()
    t0 = clock()
    samples: list[PingResult] = []
    stats: dict[int, SizeStat] = {}
    rounds = 0
    adaptive = isinstance(prober, AdaptiveProber)

    def probe(sizes: set[int] | list[int]) -> None:
        nonlocal rounds
        todo = sorted(sizes)
        if not todo:
            return
        # A size's first probe is one request; a re-probe (confirmation) is opts.count.
        confirming = [s in stats for s in todo]
        counts = [opts.count if c else FIRST_COUNT for c in confirming]
        uniform = counts[0] if len(set(counts)) == 1 else counts
        if adaptive:
            # A batch of first probes only waits the short timeout: a reply it misses costs a
            # confirmation, never a verdict. Any confirmation in the batch gets the full one.
            timeout = (
                derive_timeout(samples)
                if any(confirming)
                else derive_timeout(samples, FIRST_TIMEOUT_FLOOR_S, FIRST_RTT_FACTOR)
            )
            if timeout is not None:
                prober.timeout_s = timeout  # type: ignore[attr-defined]
        results = prober.probe(todo, count=uniform)
        rounds += 1
        samples.extend(results)
        for r in results:
            stats.setdefault(r.size, SizeStat(r.size)).add(r)

    lo, hi = opts.lo, opts.hi
    probe({lo, min(max(56, lo), hi)})
    coarse = set(stats) | set(coarse_grid(lo, hi, mtu))
    probe([s for s in coarse_grid(lo, hi, mtu) if s not in stats])
    fault.point("mid-sweep")

    exact = False
    while rounds < MAX_ROUNDS:
        order = sorted(stats)
        unconfirmed = {s for s in order if not stats[s].passed and stats[s].probes < CONFIRM_PROBES}
        waiting = {order[i] for i in range(len(order)) if _deferred(stats, order, i, coarse)}
        gaps = [
            (a, b)
            for a, b in pairwise(order)
            if stats[a].passed != stats[b].passed and b - a > 1 and not {a, b} & waiting
        ]
        if not gaps and not unconfirmed:
            exact = True
            break
        per_gap = max(1, REFINE_BATCH // len(gaps)) if gaps else 0
        probe({p for a, b in gaps for p in _split_points(a, b, per_gap)} | unconfirmed)

    order = sorted(stats)
    transitions = [
        Transition(a, b) if stats[a].passed else Transition(b, a)
        for a, b in pairwise(order)
        if stats[a].passed != stats[b].passed
    ]
    failing = [s for s in order if not stats[s].passed]
    smallest_failing = failing[0] if failing else None
    passing_below = [
        s for s in order if stats[s].passed and (smallest_failing is None or s < smallest_failing)
    ]
    largest_passing = passing_below[-1] if passing_below else None
    verdict = decide(
        stats, transitions, lo=lo, hi=hi, mtu=mtu, vlan=vlan, df=opts.df, host_ports=host_ports
    )
    if not exact:
        verdict = Verdict(
            verdict.code, verdict.text + f" (search stopped after {MAX_ROUNDS} rounds: not exact)"
        )
    samples.sort(key=lambda r: r.size)
    return SweepResult(
        src=src,
        dst=dst,
        path=opts.path,
        df=opts.df,
        mtu=mtu,
        vlan=vlan,
        transitions=transitions,
        largest_passing=largest_passing,
        smallest_failing=smallest_failing,
        probes=len(samples),
        elapsed_s=clock() - t0,
        samples=samples,
        verdict=verdict,
        lo=lo,
        hi=hi,
        rounds=rounds,
        timeout_s=derive_timeout(samples) or getattr(prober, "timeout_s", None),
        exact=exact,
        stats=aggregate(samples),
    )


def naive_sweep(prober: Prober, lo: int, hi: int, *, count: int = 3) -> list[PingResult]:
    """The 1-byte linear sweep the benchmark compares against: one size per round trip."""
    out: list[PingResult] = []
    for size in range(lo, hi + 1):
        out += prober.probe([size], count=count)
    return out
