"""`xenvlan ssh GUEST -- CMD`: run anything inside a guest (pinned host key)."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer

from xenvlan import lab
from xenvlan.errors import SpecError
from xenvlan.spec import check_lab_name
from xenvlan.virt import connection as hv


def ssh(
    guest: Annotated[str, typer.Argument(help="Guest name, e.g. a.")],
    command: Annotated[
        list[str] | None, typer.Argument(help="Command and arguments (after --).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Lab name; default: the only lab up.")] = None,
    connect: Annotated[str | None, typer.Option(help="libvirt URI; default: auto.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds the command may run.")] = 60.0,
) -> None:
    """Run a command in a guest; its output and exit status become ours."""
    if not command:
        raise SpecError("give a command: xenvlan ssh a -- ping -c 3 11.11.4.30")
    if name is not None:
        check_lab_name(name)  # before any connection
    conn, choice = hv.open_connection(connect)
    try:
        st = lab.collect_status(conn, choice, lab.resolve_lab(conn, name), ssh=False)
    finally:
        conn.close()
    info = st.guest(guest)
    line = shlex.join(command)
    with lab.session_for(st.lab, info).connect(10.0) as session:
        res = session.run(line, timeout=timeout)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    raise typer.Exit(res.exit_status)


def register(app: typer.Typer) -> None:
    """Add `ssh`."""
    app.command(context_settings={"ignore_unknown_options": True})(ssh)
