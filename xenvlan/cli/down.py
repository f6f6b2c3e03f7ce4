"""`xenvlan down`: remove everything a lab made, driven by libvirt metadata."""

from __future__ import annotations

from typing import Annotated

import typer

from xenvlan import lab
from xenvlan.cli.common import out, progress
from xenvlan.lock import lab_lock
from xenvlan.paths import run_dir
from xenvlan.spec import check_lab_name
from xenvlan.virt import connection as hv


def down(
    name: Annotated[str | None, typer.Option(help="Lab name; default: the only lab up.")] = None,
    all_labs: Annotated[bool, typer.Option("--all", help="Every xenvlan lab.")] = False,
    connect: Annotated[str | None, typer.Option(help="libvirt URI; default: auto.")] = None,
) -> None:
    """Destroy and undefine the lab's guests, reservations, networks and run files."""
    if name is not None:
        check_lab_name(name)  # before any connection or path
    conn, _choice = hv.open_connection(connect)
    try:
        from xenvlan.host.journal import pending_labs

        # A lab killed after its domains went but before its host changes were reverted.
        present = sorted(set(lab.labs_present(conn)) | pending_labs())
        if all_labs:
            names = present
        elif name is None and not present:
            out.print("nothing to do: no xenvlan lab is up")
            return
        elif name is None and len(present) == 1:
            names = present
        else:
            names = [lab.resolve_lab(conn, name)]
        for n in names:
            with lab_lock(n):
                removed = lab.down_lab(conn, n, progress)
            (run_dir() / "locks" / f"{n}.lock").unlink(missing_ok=True)
            out.print(
                f"lab {n} down: " + (", ".join(removed) if removed else "nothing left to remove")
            )
        for d in (run_dir() / "locks", run_dir() / "labs"):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    finally:
        conn.close()


def register(app: typer.Typer) -> None:
    """Add `down`."""
    app.command()(down)
