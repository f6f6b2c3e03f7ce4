"""`xenvlan sweep`: the exact fragmentation cliff between the guests, with a verdict."""

from __future__ import annotations

from typing import Annotated

import typer

from xenvlan.cli.common import out, print_json
from xenvlan.cli.render import render_sweep
from xenvlan.evidence.lab import EvidenceOptions
from xenvlan.spec import check_lab_name
from xenvlan.sweep import lab as labsweep
from xenvlan.sweep.ping import MAX_PAYLOAD
from xenvlan.sweep.search import SweepOptions
from xenvlan.virt import connection as hv


def sweep(
    lo: Annotated[int, typer.Option("--from", help="Smallest payload (ping -s).")] = 0,
    hi: Annotated[int, typer.Option("--to", help="Largest payload.")] = MAX_PAYLOAD,
    count: Annotated[int, typer.Option(help="Probes per size.")] = 3,
    df: Annotated[str | None, typer.Option(help="DF mode: want | do | dont (iputils -M).")] = None,
    path: Annotated[str, typer.Option(help="vlan (tagged) or mgmt (untagged).")] = "vlan",
    src: Annotated[str | None, typer.Option(help="Sending guest; default the first.")] = None,
    both: Annotated[bool, typer.Option(help="Both directions.")] = False,
    name: Annotated[str | None, typer.Option(help="Lab name; default the only lab up.")] = None,
    connect: Annotated[str | None, typer.Option(help="libvirt URI; default auto.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    evidence: Annotated[
        bool, typer.Option(help="Replay each cliff and show where the kernel dropped it.")
    ] = False,
) -> None:
    """Ping guest to guest over a size range and report every pass/fail transition exactly."""
    ev = EvidenceOptions() if evidence else None
    opts = SweepOptions(lo=lo, hi=hi, count=count, df=df, path=path, evidence=ev)
    opts.validate()
    if name is not None:
        check_lab_name(name)  # before any connection
    conn, choice = hv.open_connection(connect)
    try:
        status = labsweep.lab_status(conn, choice, name)
    finally:
        conn.close()
    results = labsweep.sweep_lab(status, opts, src=src, both=both)
    if json_out:
        docs = [r.to_json() for r in results]
        print_json(docs[0] if len(docs) == 1 else docs)
        return
    for r in results:
        out.print(render_sweep(r))


def register(app: typer.Typer) -> None:
    """Add `sweep`."""
    app.command()(sweep)
