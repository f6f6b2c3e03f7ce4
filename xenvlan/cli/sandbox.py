"""`xenvlan sandbox start|stop|status|run`: a private libvirtd in a namespace on bare machines."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from xenvlan.cli.common import out, print_json
from xenvlan.errors import SpecError
from xenvlan.host.sandbox import netns as sandbox

sub = typer.Typer(help="A private libvirtd inside a network namespace, for bare machines.")


@sub.command()
def start(
    netns: Annotated[str, typer.Option(help="Namespace name.")] = sandbox.DEFAULT_NETNS,
) -> None:
    """Create the namespace and start virtlogd + libvirtd in it."""
    state = sandbox.start(netns)
    out.print(
        f"sandbox up: netns {state.netns}, libvirtd pid {state.libvirtd_pid}, "
        f"virtlogd pid {state.virtlogd_pid}"
    )


@sub.command()
def stop() -> None:
    """Remove every lab in it, stop the daemons it started, delete the namespace."""
    done = sandbox.stop()
    out.print("sandbox stopped" + (f" ({', '.join(done)})" if done else ""))


@sub.command()
def status(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether the sandbox runs."""
    state = sandbox.load_state()
    data = {
        "running": bool(state and sandbox.socket_alive()),
        "netns": state.netns if state else None,
        "libvirtd_pid": state.libvirtd_pid if state else None,
    }
    if json_out:
        print_json(data)
    else:
        out.print(
            "sandbox: "
            + ("running in netns " + str(data["netns"]) if data["running"] else "not running")
        )


@sub.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(ctx: typer.Context) -> None:
    """Run a command inside the sandbox's namespace: xenvlan sandbox run -- CMD..."""
    state = sandbox.load_state()
    if state is None:
        raise SpecError("no sandbox runs (xenvlan sandbox start)")
    if not ctx.args:
        raise SpecError("give a command: xenvlan sandbox run -- CMD")
    os.execvp("ip", ["ip", "netns", "exec", state.netns, *ctx.args])


def register(app: typer.Typer) -> None:
    """Add the `sandbox` group."""
    app.add_typer(sub, name="sandbox")
