"""Rich rendering of a sweep result: edges, loss strip, cost and verdict."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from xenvlan.sweep.ping import IP_ICMP_HEADER
from xenvlan.sweep.search import SweepResult
from xenvlan.sweep.verdict import SizeStat, SweepCode, aggregate

STRIP_WIDTH = 64


def _loss(stat: SizeStat | None) -> str:
    if stat is None:
        return "-"
    pct = 100 * (stat.sent - stat.received) / stat.sent if stat.sent else 100.0
    text = f"{stat.received}/{stat.sent} ({pct:.0f}% loss)"
    return text + (f" {stat.errors[0]}" if stat.errors else "")


def loss_strip(result: SweepResult, width: int = STRIP_WIDTH) -> Text:
    """One cell per probed size (grouped when there are more than ``width``), in size order.

    Green: every probe answered; yellow: partial loss or a group mixing pass and fail;
    red: no reply.
    """
    stats = result.stats or aggregate(result.samples)
    sizes = sorted(stats)
    text = Text()
    if not sizes:
        return text
    groups = [sizes[i * len(sizes) // width : (i + 1) * len(sizes) // width] for i in range(width)]
    for group in (g for g in groups if g):
        states = {stats[s].passed for s in group}
        full = all(stats[s].received == stats[s].sent for s in group)
        if states == {True}:
            text.append("█", style="green" if full else "yellow")
        elif states == {False}:
            text.append("█", style="red")
        else:
            text.append("▒", style="yellow")
    return text


def render_sweep(result: SweepResult) -> RenderableType:
    """The human summary of one sweep."""
    stats = result.stats or aggregate(result.samples)
    head = Text.assemble(
        (f"{result.src} → {result.dst}", "bold"),
        f"  path {result.path}{' (VLAN)' if result.vlan else ''}",
        f"  df {result.df or 'guest default'}",
        f"  sender MTU {result.mtu if result.mtu is not None else 'unknown'}",
        f"  sizes {result.lo}..{result.hi}",
    )
    table = Table(title="transitions", title_justify="left", show_edge=False)
    for col in ("", "last pass", "IP", "loss", "first fail", "IP", "loss"):
        table.add_column(col)
    for t in result.transitions:
        table.add_row(
            "cliff" if t.is_cliff else "recovery",
            str(t.last_pass),
            str(t.last_pass + IP_ICMP_HEADER),
            _loss(stats.get(t.last_pass)),
            str(t.first_fail),
            str(t.first_fail + IP_ICMP_HEADER),
            _loss(stats.get(t.first_fail)),
        )
    edges = Text(
        f"largest passing {result.largest_passing if result.largest_passing is not None else '-'}"
        f"   smallest failing "
        f"{result.smallest_failing if result.smallest_failing is not None else '-'}"
    )
    strip = Text.assemble("sizes ", loss_strip(result), f"  ({len(stats)} sizes probed)")
    cost = Text(
        f"{result.probes} probes in {result.rounds} batches, {result.elapsed_s:.2f} s"
        + (f", timeout {result.timeout_s:g} s" if result.timeout_s else "")
        + ("" if result.exact else "  [not exact: round limit hit]"),
        style="dim",
    )
    style = "green" if result.verdict.code is SweepCode.NO_CLIFF else "bold yellow"
    verdict = Text.assemble((f"{result.verdict.code}: ", style), result.verdict.text)
    parts: list[RenderableType] = [head]
    if result.transitions:
        parts.append(table)
    parts += [edges, strip, cost, verdict]
    for rep in result.evidence:
        parts += [Text(f"  kernel: {line}", style="cyan") for line in rep.lines()]
    return Group(*parts)
