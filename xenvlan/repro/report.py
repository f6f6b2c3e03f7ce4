"""A self-contained HTML report of a `repro` run: inline SVG charts, no network fetches."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from xenvlan.repro.run import BOUNDARY_COLUMNS, ReproResult, boundary_cells

W, H, PAD = 760, 260, 48
COLORS = ("#c62828", "#2e7d32", "#1565c0", "#ef6c00")


def _fractions(sweep: dict[str, Any]) -> list[tuple[int, float]]:
    agg: dict[int, list[int]] = {}
    for s in sweep["samples"]:
        a = agg.setdefault(s["size"], [0, 0])
        a[0] += s["sent"]
        a[1] += s["received"]
    return sorted((size, (r / t) if t else 0.0) for size, (t, r) in agg.items())


def _chart(
    series: list[tuple[str, dict[str, Any]]], lo: int, hi: int, log: bool, title: str
) -> str:
    """Delivered fraction vs payload size, one step line per series."""

    def x(size: int) -> float:
        if log:
            span = math.log10(hi + 1) - math.log10(lo + 1) or 1.0
            return PAD + (math.log10(size + 1) - math.log10(lo + 1)) / span * (W - 2 * PAD)
        return PAD + (size - lo) / ((hi - lo) or 1) * (W - 2 * PAD)

    def y(frac: float) -> float:
        return H - PAD - frac * (H - 2 * PAD)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(title)}" class="chart">',
        f'<text x="{PAD}" y="20" class="title">{html.escape(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" class="axis"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" class="axis"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        out.append(
            f'<text x="{PAD - 6}" y="{y(frac) + 4:.1f}" text-anchor="end">{int(frac * 100)}%</text>'
        )
    ticks = (
        [t for t in (0, 10, 100, 1000, 10000, 65507) if lo <= t <= hi]
        if log
        else [lo + (hi - lo) * i // 5 for i in range(6)]
    )
    for t in ticks:
        out.append(
            f'<text x="{x(t):.1f}" y="{H - PAD + 16}" text-anchor="middle">{t}</text>'
            f'<line x1="{x(t):.1f}" y1="{H - PAD}" x2="{x(t):.1f}" '
            f'y2="{H - PAD + 4}" class="axis"/>'
        )
    out.append(
        f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle">ICMP payload (ping -s), bytes'
        f"{' (log scale)' if log else ''}</text>"
    )
    for i, (name, sweep) in enumerate(series):
        pts = [(s, f) for s, f in _fractions(sweep) if lo <= s <= hi]
        if not pts:
            continue
        color = COLORS[i % len(COLORS)]
        d = " ".join(
            f"{'M' if j == 0 else 'L'}{x(s):.1f},{y(f) + i * 2:.1f}" for j, (s, f) in enumerate(pts)
        )
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2" class="series"/>')
        for s, f in pts:
            out.append(
                f'<circle cx="{x(s):.1f}" cy="{y(f) + i * 2:.1f}" r="2.5" fill="{color}">'
                f"<title>{html.escape(name)}: {s} bytes, {f:.0%} delivered</title></circle>"
            )
        out.append(
            f'<rect x="{W - PAD - 190}" y="{PAD + i * 18 - 10}" width="12" height="12" '
            f'fill="{color}"/>'
            f'<text x="{W - PAD - 172}" y="{PAD + i * 18}">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _zoom(series: list[tuple[str, dict[str, Any]]]) -> tuple[int, int]:
    edges = [
        v for _n, s in series for t in s["transitions"] for v in (t["last_pass"], t["first_fail"])
    ]
    if not edges:
        return 1400, 1520
    return max(0, min(edges) - 60), max(edges) + 60


#: Where on the path a kernel function drops a packet: 2 = the bridge (netfilter), 3 = the
#: egress port (the bridge's MTU check, refragmentation, veth ingress).
_DROP_AT = (
    ("br_dev_queue_push_xmit", 3),
    ("br_nf_dev_queue_xmit", 3),
    ("ip_do_fragment", 3),
    ("__dev_forward_skb", 3),
    ("nft_do_chain", 2),
    ("nf_hook_slow", 2),
    ("ipt_do_table", 2),
)


def _drop_index(function: str) -> int:
    return next((i for name, i in _DROP_AT if function.startswith(name)), 2)


def _path_svg(title: str, ev: dict[str, Any]) -> str:
    """guest a -> port -> bridge -> port -> guest b for one replayed size, the drop point marked."""
    esc = html.escape
    nodes = ["sender", ev.get("in_port") or "port", "bridge", ev.get("out_port") or "port"]
    nodes.append("receiver")
    drops = [d for d in ev.get("drops", []) if not d.get("collateral")]
    at = _drop_index(drops[0]["function"]) if drops else None
    w, step = 640, 150
    parts = [f'<svg class="path" width="{w}" height="92" role="img"><title>{esc(title)}</title>']
    for i, name in enumerate(nodes):
        x = 10 + i * step
        parts.append(
            f'<rect x="{x}" y="28" width="90" height="26" rx="4" fill="#eef" stroke="#557"/>'
            f'<text x="{x + 45}" y="45" text-anchor="middle">{esc(str(name))}</text>'
        )
        if i < len(nodes) - 1:
            color = "#c62828" if at is not None and i >= at else "#2e7d32"
            parts.append(
                f'<line x1="{x + 90}" y1="41" x2="{x + step}" y2="41" stroke="{color}" '
                'stroke-width="2"/>'
            )
    if at is not None:
        x = 10 + at * step + (95 if at == 3 else 45)
        label = ev.get("culprit") or drops[0]["function"]
        parts.append(
            f'<text class="drop" x="{x}" y="22" text-anchor="middle" fill="#c62828">&#x2716; '
            f"{esc(str(drops[0]['function']))} &times;{sum(d['count'] for d in drops)}</text>"
            f'<text x="{w / 2}" y="80" text-anchor="middle"><tspan>{esc(str(label))}</tspan>'
            "</text>"
        )
    else:
        parts.append(
            f'<text x="{w / 2}" y="80" text-anchor="middle">'
            f"{'delivered' if ev.get('traced') else 'no kernel trace (counters only)'}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _evidence_html(series: list[tuple[str, dict[str, Any]]], base: Path | None) -> str:
    """Per sweep and edge: the path picture and the one-line summaries, with the captures."""
    esc = html.escape
    out: list[str] = []
    for name, s in series:
        for rep in s.get("evidence") or []:
            for ev in (rep.get("failing"), rep.get("passing")):
                if not ev:
                    continue
                size = f"{ev['size']} (IP {ev['ip_length']}), {ev.get('role', '')}"
                out.append(f"<h3>{esc(name)}: {esc(size)}</h3>")
                out.append(_path_svg(f"{name} {size}", ev))
                if ev.get("summary"):
                    out.append(f"<p class='ev'>{esc(ev['summary'])}</p>")
                if ev.get("capture"):
                    cap = str(ev["capture"])
                    href = os.path.relpath(cap, base) if base is not None else Path(cap).as_uri()
                    out.append(
                        f'<p><small>capture (pcapng): <a href="{esc(href)}">{esc(cap)}</a>'
                        "</small></p>"
                    )
            if rep.get("notice"):
                out.append(f"<p><small>{esc(rep['notice'])}</small></p>")
    if not out:
        return "<p>No failing edge was replayed (no cliff, or evidence was off).</p>"
    return "".join(out)


def render_html(result: ReproResult, base: Path | None = None) -> str:
    """The report as one HTML string (capture links relative to `base`, the report's folder)."""
    doc = result.to_json()
    series: list[tuple[str, dict[str, Any]]] = []
    if doc["matrix"]:
        for m in doc["matrix"]:
            name = f"bridge-netfilter {'on' if m['bridge_netfilter'] else 'off'}, DF {m['df']}"
            series.append((name, m["sweep"]))
    else:
        if doc["before"]:
            series.append(("before the fix", doc["before"]))
        if doc["after"]:
            series.append((f"after {doc['fix']['method']}", doc["after"]))
    lo = min((s["samples"][0]["size"] for _n, s in series if s["samples"]), default=0)
    hi = max((max(x["size"] for x in s["samples"]) for _n, s in series if s["samples"]), default=1)
    zlo, zhi = _zoom(series)
    esc = html.escape
    emu = (
        '<p class="emulated">EMULATED: this kernel is not itself affected; the legacy '
        "2.6.17&ndash;2.6.34 drop is emulated through bridge-netfilter + conntrack and one "
        "commented firewall rule per lab port. The fix removes it for real.</p>"
        if doc["emulated"]
        else ""
    )
    rows = [
        "<tr><td>"
        + esc(name)
        + "</td>"
        + "".join(f"<td>{esc(c)}</td>" for c in boundary_cells(sweep))
        + f"<td>{esc(sweep.verdict.text)}</td></tr>"
        for name, sweep in result.sweeps()
    ]
    changes = [
        f"<li>setup: {esc(c['what'])}: {esc(c['before'])} &rarr; {esc(c['after'])} "
        f"<small>({esc(c['why'])})</small></li>"
        for c in doc["fix"]["setup"]
    ]
    changes += [
        f"<li>fix: {esc(c['name'])}: {esc(c['before'])} &rarr; {esc(c['after'])}</li>"
        for c in doc["fix"]["changes"]
    ]
    changes += [
        f"<li>reverted: {esc(a['kind'])} {esc(a['key'])} &larr; {esc(str(a['original']))} "
        f"({esc(a['result'])})</li>"
        for a in doc["fix"]["reverted"]
    ]
    findings = [
        f"<li><b>{esc(f['severity'].upper())}</b> {esc(f['title'])}"
        f"<br><small>{esc('; '.join(f.get('evidence', [])))}</small>"
        + (f"<br><i>{esc(f['recommendation'])}</i>" if f.get("recommendation") else "")
        + "</li>"
        for f in (doc["diagnosis"] or {}).get("findings", [])
    ]
    env = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in doc["environment"].items()
    )
    timings = ", ".join(f"{esc(k)} {v:.1f}s" for k, v in doc["timings"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>xenvlan repro: {esc(doc["scenario"])}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
.emulated {{ background: #fde7f3; border-left: 4px solid #ad1457; padding: .5em 1em; }}
.verdict {{ font-size: 1.2em; background: #f1f8e9; padding: .5em 1em; }}
svg.chart text {{ font-size: 11px; fill: #333; }} svg.chart .title {{ font-weight: bold; }}
svg.chart .axis {{ stroke: #888; }}
svg.path text {{ font-size: 11px; }} svg.path .drop {{ font-weight: bold; }}
</style></head><body>
<h1>xenvlan repro &mdash; scenario {esc(doc["scenario"])}</h1>
{emu}
<p class="verdict" id="verdict"><b>{esc(doc["verdict"].get("code", ""))}</b>:
{esc(doc["verdict"].get("text", ""))}</p>
<p>Host restored exactly: <b id="restored">{"yes" if doc["restored"] else "NO"}</b>
{esc("; ".join(doc["restore_diff"]))}</p>
<h2>Delivered fraction vs payload size</h2>
{_chart(series, zlo, zhi, False, f"around the boundary ({zlo}..{zhi})")}
{_chart(series, lo, hi, True, f"full range ({lo}..{hi})")}
<h2>Where the packet dies</h2>
<div id="evidence">{_evidence_html(series, base)}</div>
<h2>Boundaries</h2>
<table><tr><th>sweep</th>{"".join(f"<th>{c}</th>" for c in BOUNDARY_COLUMNS)}
<th>why</th></tr>{"".join(rows)}</table>
<h2>Every change applied and reverted</h2><ul>{"".join(changes)}</ul>
<h2>Diagnosis</h2><ul>{"".join(findings)}</ul>
<h2>Environment</h2><table>{env}</table>
<p><small>steps: {timings}</small></p>
<script type="application/json" id="data">{esc(json.dumps(doc))}</script>
</body></html>
"""


def write_report(result: ReproResult, path: Path) -> Path:
    """Write the report atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(result, path.parent), encoding="utf-8")
    tmp.replace(path)
    return path
