"""`xenvlan fix apply|revert|status`: journaled, reversible bridge-netfilter fixes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xenvlan.host.fix import DEFAULT_METHOD, METHOD_CHOICES

_METHOD_HELP = f"{METHOD_CHOICES} (default {DEFAULT_METHOD})"


def _show(original: object) -> str:
    if isinstance(original, dict):
        return "previous content" if original.get("existed") else "absent"
    return str(original)


def register(app: typer.Typer) -> None:
    """Add the `fix` sub-command group (apply, revert, status)."""
    fix = typer.Typer(
        name="fix", help="Apply or revert a bridge-netfilter fix (journaled).", no_args_is_help=True
    )

    @fix.command("apply")
    def apply_cmd(
        method: Annotated[str, typer.Option("--method", "-m", help=_METHOD_HELP)] = DEFAULT_METHOD,
        bridge: Annotated[
            str | None, typer.Option("--bridge", help="Bridge for --method bridge (virbr0).")
        ] = None,
        persist: Annotated[
            bool, typer.Option("--persist", help="Also persist across reboots (sysctl.d).")
        ] = False,
        root: Annotated[Path, typer.Option("--root", help="Root for --persist files.")] = Path("/"),
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
        proc: Annotated[Path, typer.Option("--proc-root", hidden=True)] = Path("/proc"),
        sysfs: Annotated[Path, typer.Option("--sys-root", hidden=True)] = Path("/sys"),
    ) -> None:
        """Record the originals in the journal, then set the method's knob(s) to 0."""
        from xenvlan.host.fix import FixPlan, fix_apply
        from xenvlan.lock import refuse_while_busy

        refuse_while_busy("xenvlan fix apply")

        out = Console(stderr=as_json)

        def announce(plan: FixPlan) -> None:
            out.print(plan.explanation, highlight=False)
            for note in plan.notes:
                out.print(f"[yellow]note:[/] {note}", highlight=False)

        report = fix_apply(
            method,
            bridge=bridge,
            persist=persist,
            root=root,
            proc=proc,
            sys=sysfs,
            announce=announce,
        )
        if as_json:
            print(json.dumps(report.to_json(), indent=2))
            return
        for c in report.changes:
            out.print(f"[green]set[/] {c.name}: {c.before} -> {c.after}", highlight=False)
        for p in report.persisted:
            out.print(f"[green]wrote[/] {p}", highlight=False)
        out.print(f"journal: {report.journal} (undo with `xenvlan fix revert`)", highlight=False)

    @fix.command("revert")
    def revert_cmd(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
    ) -> None:
        """Restore exactly the values and files recorded in this namespace's journal."""
        from xenvlan.host.fix import fix_revert
        from xenvlan.lock import refuse_while_busy

        refuse_while_busy("xenvlan fix revert")

        report = fix_revert()
        if as_json:
            print(json.dumps(report.to_json(), indent=2))
            return
        out = Console()
        out.print(report.explanation, highlight=False)
        for a in report.reverted:
            out.print(f"  {a.result:9} {a.kind} {a.key} <- {_show(a.original)}", highlight=False)

    @fix.command("status")
    def status_cmd(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
        proc: Annotated[Path, typer.Option("--proc-root", hidden=True)] = Path("/proc"),
        sysfs: Annotated[Path, typer.Option("--sys-root", hidden=True)] = Path("/sys"),
    ) -> None:
        """Current knob values, and the originals of a pending journal."""
        from xenvlan.host.fix import fix_status

        st = fix_status(proc=proc, sys=sysfs)
        if as_json:
            print(json.dumps(st.to_json(), indent=2))
            return
        out = Console()
        if not st.sysctls:
            out.print("br_netfilter is not loaded in this network namespace")
        for name, value in st.sysctls.items():
            out.print(f"net.bridge.{name} = {value}", highlight=False)
        for br, knobs in st.bridges.items():
            text = " ".join(f"{k}={v}" for k, v in knobs.items())
            out.print(f"{br}: {text}", highlight=False)
        if not st.pending:
            out.print(f"no pending journal ({st.journal})", highlight=False)
        else:
            table = Table("kind", "key", "original", "current", title=f"pending: {st.journal}")
            for e in st.entries:
                table.add_row(e.kind, e.key, str(e.original), str(e.current))
            out.print(table)
        for other in st.other_journals:
            print(f"journal of another namespace: {other}", file=sys.stderr)

    app.add_typer(fix)
