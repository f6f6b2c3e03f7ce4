"""A self-contained HTML report of a `repro` run: inline SVG charts, no network fetches."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

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
    """The report as one HTML page (Jinja, autoescaped); capture links relative to `base`."""
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
    page = _templates().get_template("report.html.j2")
    return page.render(
        doc=doc,
        zoom_chart=Markup(_chart(series, zlo, zhi, False, f"around the boundary ({zlo}..{zhi})")),
        full_chart=Markup(_chart(series, lo, hi, True, f"full range ({lo}..{hi})")),
        evidence=Markup(_evidence_html(series, base)),
        columns=BOUNDARY_COLUMNS,
        rows=[(name, boundary_cells(sw), sw.verdict.text) for name, sw in result.sweeps()],
        findings=(doc["diagnosis"] or {}).get("findings", []),
        data_json=json.dumps(doc),
    )


def _templates() -> jinja2.Environment:
    """The report's template, HTML-autoescaped (the SVG pieces are built escaped)."""
    folder = Path(__file__).resolve().parent / "templates"
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def write_report(result: ReproResult, path: Path) -> Path:
    """Write the report atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(result, path.parent), encoding="utf-8")
    tmp.replace(path)
    return path
