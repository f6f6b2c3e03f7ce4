"""`xenvlan status`: guests, addresses, VLAN interfaces, host ports and MTUs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from xenvlan import lab
from xenvlan.cli.common import out, print_json
from xenvlan.spec import check_lab_name
from xenvlan.virt import connection as hv


def render_status(status: lab.LabStatus) -> None:
    """A rich table of the lab."""
    out.print(
        f"[bold]lab {status.lab}[/bold] on {status.uri} ({status.domain_type}); "
        f"network {status.network or '-'} bridge {status.bridge or '-'}"
    )
    t = Table(show_edge=False)
    for col in (
        "guest",
        "domain",
        "state",
        "mac",
        "mgmt ip",
        "vlan if",
        "vlan ip",
        "host port",
        "mtu",
    ):
        t.add_column(col)
    for g in status.guests:
        t.add_row(
            g.name,
            g.domain,
            g.state,
            g.mac,
            g.mgmt_ip,
            g.vlan_if or "-",
            g.vlan_ip or "-",
            g.host_port or "-",
            str(g.host_port_mtu or "-"),
        )
    out.print(t)
    if status.timings:
        out.print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in status.timings.items()))


def status(
    name: Annotated[str | None, typer.Option(help="Lab name; default: the only lab up.")] = None,
    connect: Annotated[str | None, typer.Option(help="libvirt URI; default: auto.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
) -> None:
    """Show the lab's guests, their addresses, VLAN interfaces and host ports."""
    if name is not None:
        check_lab_name(name)  # before any connection
    conn, choice = hv.open_connection(connect)
    try:
        st = lab.collect_status(conn, choice, lab.resolve_lab(conn, name))
    finally:
        conn.close()
    if json_out:
        print_json(st.to_json())
    else:
        render_status(st)


def register(app: typer.Typer) -> None:
    """Add `status`."""
    app.command()(status)
