"""`xenvlan repro`: cliff, fix, proof, host restored — in one command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape as esc
from rich.table import Table

from xenvlan.cli.common import err, load_lab, out, print_json, progress
from xenvlan.cli.render import render_sweep
from xenvlan.errors import HostChangeError
from xenvlan.host.fix import DEFAULT_METHOD, METHOD_CHOICES
from xenvlan.lock import lab_lock
from xenvlan.paths import captures_dir
from xenvlan.repro import run as repro


def render(result: repro.ReproResult) -> None:
    """Before/after table, steps, verdict."""
    tag = " [bold magenta](EMULATED legacy-vlan)[/]" if result.emulated else ""
    out.print(f"[bold]xenvlan repro[/] scenario {result.scenario}{tag} — lab {result.lab}")
    t = Table(show_edge=False)
    for col in ("", *repro.BOUNDARY_COLUMNS):
        t.add_column(col)
    for name, sweep in result.sweeps():
        t.add_row(esc(name), *repro.boundary_cells(sweep))
    out.print(t)
    for label, sweep in result.sweeps():
        for rep in sweep.evidence:
            for line in rep.lines():
                out.print(f"  kernel, {esc(label)}: {esc(line)}")
            if rep.notice:
                out.print(f"  [dim]{esc(rep.notice)}[/]")
    for c in result.setup:
        change = f"{c.before} -> {c.after}" if c.before != c.after else f"already {c.after}"
        out.print(f"  setup: {esc(c.what)}: {esc(change)}  [dim]({esc(c.why)})[/]")
    for fc in result.fix_changes:
        out.print(f"  fix: {esc(fc['name'])}: {fc['before']} -> {fc['after']}")
    for a in result.reverted:
        out.print(
            f"  reverted: {a['kind']} {esc(a['key'])} <- {esc(str(a['original']))} ({a['result']})"
        )
    out.print(
        "  host restored: "
        + (
            "[green]yes, identical snapshot[/]"
            if result.restored
            else "[red]NO[/] " + esc("; ".join(result.restore_diff))
        )
    )
    out.print("  steps: " + ", ".join(f"{s.name} {s.seconds:.1f}s" for s in result.steps))
    v = result.verdict
    good = v is not None and v.code in (
        repro.ReproCode.CLIFF_REMOVED,
        repro.ReproCode.BRNF_REFRAGMENTS,
    )
    style = "green" if good else "yellow"
    out.print(f"[bold {style}]{esc(str(v.code) if v else '?')}[/]: {esc(v.text if v else '')}")


def repro_cmd(
    lab_file: Annotated[
        Path | None, typer.Option("--lab", help="Lab file; default the seed lab.")
    ] = None,
    emulate: Annotated[
        str | None, typer.Option(help="legacy-vlan: emulate the 2.6.18 cliff.")
    ] = None,
    scenario: Annotated[str, typer.Option(help="host | legacy-vlan | port-mtu.")] = "host",
    method: Annotated[str, typer.Option(help=f"Fix: {METHOD_CHOICES}.")] = DEFAULT_METHOD,
    lo: Annotated[int | None, typer.Option("--from", help="Smallest payload.")] = None,
    hi: Annotated[int | None, typer.Option("--to", help="Largest payload.")] = None,
    count: Annotated[int, typer.Option(help="Probes per size.")] = 3,
    port_mtu: Annotated[int, typer.Option(help="port-mtu scenario: b's port MTU.")] = 1400,
    keep: Annotated[bool, typer.Option(help="Leave the lab up afterwards.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show each sweep.")] = False,
) -> None:
    """Bring the lab up, diagnose, sweep, apply the fix, sweep again, revert, tear down."""
    from xenvlan.errors import SpecError

    if emulate is not None:
        if emulate != "legacy-vlan":
            raise SpecError(f"--emulate: {emulate!r}: the only emulation is legacy-vlan")
        if scenario not in ("host", "legacy-vlan"):
            raise SpecError("--emulate legacy-vlan and --scenario port-mtu exclude each other")
        scenario = "legacy-vlan"
    captures = captures_dir(report) if report is not None else None
    opts = repro.ReproOptions(
        scenario=scenario,
        method=method,
        lo=lo,
        hi=hi,
        count=count,
        port_mtu=port_mtu,
        keep=keep,
        capture_dir=captures,
    )
    opts.validate()
    spec = load_lab(lab_file)
    with lab_lock(spec.name):
        result = repro.run(spec, opts, progress)
    if report is not None:
        from xenvlan.repro.report import write_report

        write_report(result, report)
        err.print(f"report written to {report}")
    if json_out:
        print_json(result.to_json())
    else:
        if verbose:
            for r in (result.before, result.after):
                if r is not None:
                    out.print(render_sweep(r))
        render(result)
    if not result.restored:
        sys.exit(HostChangeError.exit_code)  # the host differs from before: a host-change failure


def register(app: typer.Typer) -> None:
    """Add `repro`."""
    app.command("repro")(repro_cmd)
