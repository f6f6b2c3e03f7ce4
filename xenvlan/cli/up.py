"""`xenvlan up`: two guests on the bridge, VLAN inside, ready."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from xenvlan import lab
from xenvlan.cli.common import err, load_lab, print_json, progress
from xenvlan.cli.status import render_status
from xenvlan.errors import SpecError
from xenvlan.lock import lab_lock
from xenvlan.virt.modes import MODE_CHOICES, XEN_MODES


def up(
    lab_file: Annotated[
        Path | None, typer.Option("--lab", help="Lab file (TOML); default: the seed lab.")
    ] = None,
    connect: Annotated[
        str | None, typer.Option(help="libvirt URI; default: auto (xen, else qemu).")
    ] = None,
    kernel: Annotated[Path | None, typer.Option(help="Bring your own guest kernel.")] = None,
    initrd: Annotated[Path | None, typer.Option(help="Bring your own base initramfs.")] = None,
    keep_on_error: Annotated[
        bool, typer.Option(help="Leave a failed lab in place to debug it.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    xen_mode: Annotated[
        str,
        typer.Option(
            help="Xen guest kind: pv, pvh, hvm, or auto (PVH, else PV, else HVM, from the host)."
        ),
    ] = "auto",
    dry_run: Annotated[
        bool,
        typer.Option(
            help="Print every XML document `up` would define (separated by ---); change nothing."
        ),
    ] = False,
    capabilities: Annotated[
        Path | None,
        typer.Option(
            help="With --dry-run: describe the host by this capabilities XML; no connection."
        ),
    ] = None,
) -> None:
    """Define and boot two guests on the bridge and make the VLAN inside them."""
    if xen_mode != "auto" and xen_mode not in XEN_MODES:
        raise SpecError(f"--xen-mode: {xen_mode!r} is not one of {MODE_CHOICES}")
    if capabilities is not None and not dry_run:
        raise SpecError("--capabilities only goes with --dry-run")
    spec = load_lab(lab_file)
    if connect:
        from dataclasses import replace

        from xenvlan.spec import URI_RE

        if not URI_RE.match(connect):
            raise SpecError(f"--connect: {connect!r} is not a libvirt URI like qemu:///system")
        spec = replace(spec, connect=connect)
    if (kernel is None) != (initrd is None):
        raise SpecError("--kernel and --initrd go together")
    if dry_run:
        from xenvlan.lab.plan import dry_run as plan_dry_run

        plan = plan_dry_run(
            spec,
            xen_mode=xen_mode,
            capabilities=capabilities,
            kernel=kernel,
            initrd=initrd,
            progress=progress,
        )
        sys.stdout.write(plan.dump())
        return
    opts = lab.UpOptions(
        kernel=kernel, initrd=initrd, keep_on_error=keep_on_error, xen_mode=xen_mode
    )
    with lab_lock(spec.name):
        status = lab.up(spec, opts, progress)
    if json_out:
        print_json(status.to_json())
    else:
        render_status(status)
        err.print(f"lab {spec.name} up in {status.timings.get('total', 0):.1f}s")


def register(app: typer.Typer) -> None:
    """Add `up`."""
    app.command()(up)
