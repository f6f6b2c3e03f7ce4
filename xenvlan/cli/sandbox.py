"""`xenvlan sandbox start|stop|status|run`: a private hypervisor on bare machines.

`--hypervisor qemu` (default): a private libvirtd in a network namespace. `--hypervisor xen`: a
real Xen Dom0 nested under QEMU/TCG; while it runs every other verb runs inside that Dom0.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from xenvlan.cli.common import out, print_json, progress
from xenvlan.errors import SpecError
from xenvlan.host.sandbox import netns as sandbox

sub = typer.Typer(help="A private hypervisor for bare machines: libvirtd in a netns, or real Xen.")

HYPERVISORS = ("qemu", "xen")


@sub.command()
def start(
    hypervisor: Annotated[
        str,
        typer.Option(
            help="qemu: a private libvirtd in a network namespace; xen: a real Xen Dom0 nested "
            "under QEMU (builds its image the first time, ~3 min; boots in ~1-2 min)."
        ),
    ] = "qemu",
    netns: Annotated[str, typer.Option(help="Namespace name (qemu).")] = sandbox.DEFAULT_NETNS,
    memory_mib: Annotated[int, typer.Option(help="QEMU memory for Xen + Dom0 + guests (xen).")] = (
        2048
    ),
) -> None:
    """Start the sandbox."""
    if hypervisor not in HYPERVISORS:
        raise SpecError(f"--hypervisor must be one of {', '.join(HYPERVISORS)}, not {hypervisor}")
    if hypervisor == "xen":
        from xenvlan.host.sandbox.xen import vm

        xstate = vm.start(memory_mib=memory_mib, progress=progress)
        out.print(
            f"xen sandbox up: QEMU pid {xstate.qemu_pid}, Dom0 SSH on 127.0.0.1:{xstate.port}, "
            f"libvirt answered after {xstate.timings.get('virsh', 0):.0f} s"
        )
        return
    state = sandbox.start(netns)
    out.print(
        f"sandbox up: netns {state.netns}, libvirtd pid {state.libvirtd_pid}, "
        f"virtlogd pid {state.virtlogd_pid}"
    )


@sub.command()
def stop() -> None:
    """Stop whichever sandbox runs: labs removed, daemons / QEMU ended, run files deleted."""
    from xenvlan.host.sandbox.xen import vm

    done = vm.stop() + sandbox.stop()  # each is a no-op when its sandbox never started
    out.print("sandbox stopped" + (f" ({', '.join(done)})" if done else ""))


@sub.command()
def status(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether a sandbox runs, and which."""
    from xenvlan.host.sandbox.xen import vm

    state = sandbox.load_state()
    xen = vm.status()
    data = {
        "running": bool(state and sandbox.socket_alive()) or xen.running,
        "hypervisor": "xen" if xen.running else ("qemu" if state else None),
        "netns": state.netns if state else None,
        "libvirtd_pid": state.libvirtd_pid if state else None,
        "xen": {
            "running": xen.running,
            "qemu_pid": xen.qemu_pid,
            "ssh_port": xen.port,
            "listening": xen.listening,
            "uptime_s": xen.uptime_s,
        },
    }
    if json_out:
        print_json(data)
    elif xen.running:
        out.print(
            f"sandbox: xen Dom0 running (QEMU pid {xen.qemu_pid}, SSH 127.0.0.1:{xen.port}, "
            f"up {xen.uptime_s:.0f} s)"
        )
    else:
        out.print(
            "sandbox: "
            + ("running in netns " + str(data["netns"]) if data["running"] else "not running")
        )


@sub.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(ctx: typer.Context) -> None:
    """Run a command inside the sandbox (its namespace, or the Xen Dom0): sandbox run -- CMD..."""
    from xenvlan.host.sandbox.xen import vm

    if not ctx.args:
        raise SpecError("give a command: xenvlan sandbox run -- CMD")
    xstate = vm.load_state()
    if xstate is not None and vm.running(xstate):
        import shlex
        import sys

        from xenvlan.host.sandbox.xen.remote import Dom0Session

        with Dom0Session(xstate).connect(deadline_s=60) as session:
            rc = session.stream(
                shlex.join(ctx.args), stdout=sys.stdout.buffer, stderr=sys.stderr.buffer
            )
        raise typer.Exit(rc)
    state = sandbox.load_state()
    if state is None:
        raise SpecError("no sandbox runs (xenvlan sandbox start)")
    os.execvp("ip", ["ip", "netns", "exec", state.netns, *ctx.args])


def register(app: typer.Typer) -> None:
    """Add the `sandbox` group."""
    app.add_typer(sub, name="sandbox")
