"""`xenvlan diagnose`: why would bridged fragments die on this host?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from xenvlan.errors import SpecError

_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "critical": "bold red"}


def _parse_lab_ports(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        port, sep, guest = item.partition("=")
        if not sep or not port or not guest:
            raise SpecError(f"--lab-port expects PORT=GUEST, got {item!r}")
        out[port] = guest
    return out


def register(app: typer.Typer) -> None:
    """Add the `diagnose` command."""

    @app.command("diagnose")
    def diagnose_cmd(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
        lab_port: Annotated[
            list[str] | None,
            typer.Option("--lab-port", help="PORT=GUEST: mark a host port as a lab guest's."),
        ] = None,
        record: Annotated[
            Path | None, typer.Option("--record", help="Also save a recorded tree to DIR.")
        ] = None,
        replay: Annotated[
            Path | None, typer.Option("--from", help="Diagnose a recorded tree instead.")
        ] = None,
        kernel_release: Annotated[str | None, typer.Option("--kernel-release", hidden=True)] = None,
    ) -> None:
        """Read bridges, ports, MTUs, bridge-netfilter knobs and conntrack; print findings."""
        from xenvlan.host.findings import diagnose
        from xenvlan.host.inspect import record_host

        lab_ports = _parse_lab_ports(lab_port or [])
        if not lab_ports and replay is None:
            from xenvlan.lab import discover_lab_ports

            lab_ports = discover_lab_ports()
        if record is not None:
            record_host(record)
        result = diagnose(lab_ports=lab_ports, recording=replay, kernel_release=kernel_release)
        if as_json:
            print(json.dumps(result.to_json(), indent=2))
            return
        console = Console()
        facts = result.facts
        ns = f", netns inode {facts.netns_inode}" if facts.netns_inode else ""
        console.print(f"[bold]kernel[/] {facts.kernel.release} ({facts.kernel.band}){ns}")
        if facts.sysctls:
            knobs = "  ".join(
                f"{k.removeprefix('bridge-nf-')}={v}" for k, v in facts.sysctls.items()
            )
            console.print(f"[bold]net.bridge[/] {knobs}")
        bridges = facts.bridges()
        if bridges:
            table = Table("bridge", "port", "kind", "MTU", "lab guest", "vlan_filtering", "nf_call")
            for br in bridges:
                nf = " ".join(f"{k.removeprefix('nf_call_')}={v}" for k, v in br.nf_call.items())
                vf = "?" if br.vlan_filtering is None else str(int(br.vlan_filtering))
                table.add_row(br.name, "", "bridge", str(br.mtu), "", vf, nf)
                for p in facts.ports(br.name):
                    table.add_row("", p.name, p.kind, str(p.mtu), p.lab_guest or "", "", "")
            console.print(table)
        for f in result.findings:
            style = _STYLE.get(f.severity, "")
            console.print(f"[{style}]{f.severity.upper():8}[/] {f.title}  [dim]({f.code})[/]")
            for line in f.evidence:
                console.print(f"          [dim]- {line}[/]", highlight=False)
            if f.recommendation and f.severity in ("warn", "critical"):
                console.print(f"          fix: {f.recommendation}")
