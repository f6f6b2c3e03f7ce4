"""The search against a simulated target: cliffs, windows and transient loss (property-based)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xenvlan.errors import SpecError
from xenvlan.sweep.ping import MAX_PAYLOAD, Counts, PingResult
from xenvlan.sweep.search import (
    REFINE_BATCH,
    SweepOptions,
    SweepResult,
    Transition,
    coarse_grid,
    derive_timeout,
    run_sweep,
)

GRID = coarse_grid(0, MAX_PAYLOAD, 1500)
# Per open gap: k-ary rounds over the widest coarse gap, plus a confirmation probe.
PER_EDGE = 2 * REFINE_BATCH * 4 + 2


class SimTarget:
    """A path whose truth is ``passes(size)``; some probes lose every packet transiently."""

    def __init__(
        self,
        passes: Callable[[int], bool],
        *,
        lost_first: frozenset[int] = frozenset(),
        partial: bool = False,
        local_error_above: int | None = None,
    ) -> None:
        self.passes = passes
        self.lost_first = lost_first
        self.partial = partial
        self.local_error_above = local_error_above
        self.seen: Counter[int] = Counter()
        self.calls = 0
        self.timeout_s = 1.0
        self.transient_hits = 0
        self.counts: list[tuple[int, int]] = []
        self.timeouts: list[float] = []
        self.batches: list[list[int]] = []

    def probe(self, sizes: Sequence[int], *, count: Counts) -> list[PingResult]:
        self.calls += 1
        self.timeouts.append(self.timeout_s)
        self.batches.append(list(sizes))
        out = []
        counts = [count] * len(sizes) if isinstance(count, int) else list(count)
        assert len(counts) == len(sizes)
        self.counts.extend(zip(sizes, counts, strict=True))
        for s, count in zip(sizes, counts, strict=True):
            self.seen[s] += 1
            if self.local_error_above is not None and s > self.local_error_above:
                err = f"local: message too long, mtu={self.local_error_above + 28}"
                out.append(PingResult(s, count, 0, None, err, True))
                continue
            ok = self.passes(s)
            if ok and s in self.lost_first and self.seen[s] == 1:
                self.transient_hits += 1
                ok = False
            got = (count - 1 if self.partial and count > 1 else count) if ok else 0
            out.append(PingResult(s, count, got, 0.5 if got else None, None, False))
        return out


def sweep(target: SimTarget, lo: int = 0, hi: int = MAX_PAYLOAD, mtu: int = 1500) -> SweepResult:
    return run_sweep(target, SweepOptions(lo=lo, hi=hi), src="a", dst="b", mtu=mtu, vlan=True)


def assert_bounded(res: SweepResult, target: SimTarget, edges: int) -> None:
    bound = len(GRID) + 2 + PER_EDGE * (edges + 2 * target.transient_hits)
    assert res.probes <= bound
    assert res.probes == sum(target.seen.values())
    assert res.exact


@settings(max_examples=150, deadline=None)
@given(cliff=st.integers(1, MAX_PAYLOAD))
def test_single_cliff_exact(cliff: int) -> None:
    t = SimTarget(lambda s: s < cliff)
    res = sweep(t)
    assert res.transitions == [Transition(cliff - 1, cliff)]
    assert (res.largest_passing, res.smallest_failing) == (cliff - 1, cliff)
    assert_bounded(res, t, 1)
    assert res.rounds <= 9


@settings(max_examples=150, deadline=None)
@given(a=st.integers(1, MAX_PAYLOAD - 1), width=st.integers(1, 20000), sub=st.integers(0, 200))
def test_window_exact_when_it_holds_a_grid_point(a: int, width: int, sub: int) -> None:
    b = min(a + width, MAX_PAYLOAD - 1)
    assume(any(a <= g <= b for g in GRID))
    t = SimTarget(lambda s: not a <= s <= b)
    res = sweep(t)
    assert res.transitions == [Transition(a - 1, a), Transition(b + 1, b)]
    assert (res.largest_passing, res.smallest_failing) == (a - 1, a)
    assert res.verdict.code == "irregular"
    assert_bounded(res, t, 2)


@settings(max_examples=150, deadline=None)
@given(
    cliff=st.integers(2, MAX_PAYLOAD),
    near=st.sets(st.integers(-3, 3), max_size=4),
    grid=st.sets(st.sampled_from(GRID), max_size=6),
    partial=st.booleans(),
)
def test_transient_loss_never_invents_a_cliff(
    cliff: int, near: set[int], grid: set[int], partial: bool
) -> None:
    """One whole probe lost at any size (edges included) and partial loss everywhere."""
    lost = frozenset({cliff + d for d in near} | grid)
    t = SimTarget(lambda s: s < cliff, lost_first=lost, partial=partial)
    res = sweep(t)
    assert res.transitions == [Transition(cliff - 1, cliff)]
    assert_bounded(res, t, 1)


def test_first_probe_is_one_request_and_every_failure_is_confirmed() -> None:
    t = SimTarget(lambda s: s < 1377)
    res = sweep(t)
    seen: dict[int, list[int]] = {}
    for size, count in t.counts:
        seen.setdefault(size, []).append(count)
    assert all(counts[0] == 1 for counts in seen.values())
    assert all(counts[1:] == [3] for counts in seen.values() if len(counts) > 1)
    for size, stat in res.stats.items():
        if not stat.passed:  # two rounds, 1 + count requests, none answered
            assert (stat.probes, stat.sent, stat.received) == (2, 4, 0), size
        else:
            assert stat.probes == 1
    assert res.rounds == 4  # calibration, coarse, refine + confirm, confirm


def test_lost_packet_on_a_healthy_path_costs_one_small_batch() -> None:
    t = SimTarget(lambda s: True, lost_first=frozenset({8271, 1440}))
    res = sweep(t)
    assert res.transitions == [] and res.verdict.code == "no-cliff"
    assert res.probes == len({*GRID, 56}) + 2  # only the two lost sizes again, nothing refined
    assert res.rounds == 3


def test_coarse_failure_beside_a_wide_gap_waits_for_confirmation() -> None:
    cliff = 9000  # between coarse sizes 8271 and 10339
    t = SimTarget(lambda s: s < cliff)
    res = sweep(t)
    assert res.transitions == [Transition(cliff - 1, cliff)]
    # the first batch after the coarse pass only confirms; refining starts once 10339 is sure
    assert t.batches[2] == [g for g in GRID if g >= 10339]
    assert min(t.batches[3]) > 8271 and max(t.batches[3]) < 10339


def test_healthy_and_dead_paths() -> None:
    res = sweep(SimTarget(lambda s: True))
    assert (res.transitions, res.largest_passing, res.smallest_failing) == ([], MAX_PAYLOAD, None)
    assert res.verdict.code == "no-cliff"
    assert res.probes == len({*GRID, 56})  # the calibration probe at 56 is not on the grid
    dead = sweep(SimTarget(lambda s: False))
    assert (dead.transitions, dead.largest_passing, dead.smallest_failing) == ([], None, 0)
    assert dead.verdict.code == "no-connectivity"


def test_failing_start_then_recovery() -> None:
    res = sweep(SimTarget(lambda s: s > 700), lo=0, hi=3000)
    assert res.transitions == [Transition(701, 700)]
    assert not res.transitions[0].is_cliff
    assert (res.largest_passing, res.smallest_failing) == (None, 0)
    assert res.verdict.code == "irregular"


def test_local_error_cliff_is_the_sender() -> None:
    res = sweep(SimTarget(lambda s: True, local_error_above=1472))
    assert res.transitions == [Transition(1472, 1473)]
    assert res.verdict.code == "sender-mtu"


def test_timeout_adapts_to_rtt() -> None:
    t = SimTarget(lambda s: s < 1377, lost_first=frozenset({100}))
    res = sweep(t)
    assert res.timeout_s == 0.2
    # calibration with the initial timeout, first probes with the short one, any batch holding
    # a confirmation with the full one
    assert t.timeouts[0] == 1.0
    assert t.timeouts[1] == 0.1
    assert all(to == 0.2 for to in t.timeouts[2:])
    assert len(t.timeouts) > 2
    slow = [PingResult(56, 3, 3, 120.0, None)]
    assert derive_timeout(slow) == 0.48
    assert derive_timeout([PingResult(56, 3, 0, None, None)]) is None


def test_json_shape() -> None:
    res = sweep(SimTarget(lambda s: s < 1477), lo=1400, hi=1600)
    doc = res.to_json()
    assert list(doc) == [
        "src", "dst", "path", "df", "mtu", "transitions", "largest_passing",
        "smallest_failing", "probes", "elapsed_s", "samples", "verdict",
    ]  # fmt: skip
    assert doc["transitions"] == [{"last_pass": 1476, "first_fail": 1477}]
    assert doc["verdict"]["code"] == "legacy-vlan-double-subtract"
    assert set(doc["samples"][0]) == {"size", "sent", "received", "rtt_avg_ms", "error"}
    assert len(doc["samples"]) == doc["probes"]


@pytest.mark.parametrize(
    "opts",
    [SweepOptions(lo=10, hi=5), SweepOptions(hi=MAX_PAYLOAD + 1), SweepOptions(count=0),
     SweepOptions(df="maybe")],
)  # fmt: skip
def test_options_validated(opts: SweepOptions) -> None:
    with pytest.raises(SpecError):
        run_sweep(SimTarget(lambda s: True), opts, src="a", dst="b", mtu=None, vlan=False)


def test_coarse_grid_contains_signatures() -> None:
    g = coarse_grid(0, MAX_PAYLOAD, 1500)
    assert {1472, 1473, 1476, 1477, 0, MAX_PAYLOAD} <= set(g)
    assert coarse_grid(1400, 1402) == [1400, 1402]
    assert len(g) < 80


def test_rich_report_renders_edges_and_verdict() -> None:
    from rich.console import Console

    from xenvlan.cli.render import render_sweep

    res = sweep(SimTarget(lambda s: s < 1477), lo=1400, hi=1600)
    console = Console(record=True, width=120)
    console.print(render_sweep(res))
    out = console.export_text()
    assert "1476" in out and "1505" in out and "legacy-vlan-double-subtract" in out
    assert "largest passing 1476" in out
