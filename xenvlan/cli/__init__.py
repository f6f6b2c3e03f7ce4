"""The typer application: one module per verb, errors mapped to exit codes here only."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Annotated

import typer

from xenvlan.errors import XenvlanError

app = typer.Typer(
    name="xenvlan",
    help="Reproduce, measure and fix bridged VLAN fragmentation cliffs between guests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"xenvlan {version('xenvlan')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Reproduce, measure and fix bridged VLAN fragmentation cliffs between guests."""


def _register() -> None:
    # Each verb module exposes register(app); only the verb being run is imported (see verbs).
    from xenvlan.cli import verbs

    for module in verbs.modules_for(sys.argv[1:]):
        module.register(app)


def _reexec_in_sandbox() -> None:
    """While a sandbox runs, re-run this command inside it.

    The Xen sandbox (a nested Dom0 under QEMU) wins: the command runs there over SSH and this
    process exits with its code. Else, for the namespace sandbox, `ip netns exec` (which also
    remounts /sys, so /sys/class/net shows the sandbox's bridges; a bare setns() would not).
    Sandbox management itself, `image`, and bare options run where they were started.
    """
    args = sys.argv[1:]
    skip = not args or args[0] in ("sandbox", "image") or args[0].startswith("-")
    if skip or os.environ.get("XENVLAN_NO_SANDBOX"):
        return
    _run_in_xen_sandbox(args)
    from xenvlan.host import netns
    from xenvlan.host.sandbox import netns as sandbox

    state = sandbox.load_state()
    if state is None or not netns.inherited():
        return  # no sandbox, or the caller already chose a namespace (ip netns exec ...)
    if not (netns.NETNS_DIR / state.netns).exists():
        return
    argv = ["ip", "netns", "exec", state.netns, sys.executable, "-m", "xenvlan", *args]
    os.environ["XENVLAN_NO_SANDBOX"] = "1"  # never re-exec twice
    # Downloads (the guest image's kernel) run back in this namespace: the sandbox has no route.
    os.environ[sandbox.ORIGIN_NETNS_FD_ENV] = str(netns.inheritable_handle())
    os.execvp("ip", argv)


#: Verbs that boot guests: their image is built (downloads) on the host, then shared.
_NEEDS_GUEST_IMAGE = ("up", "repro")


def _run_in_xen_sandbox(args: list[str]) -> None:
    """When the Xen sandbox's QEMU is alive, run `xenvlan ARGS` in its Dom0 and exit."""
    from xenvlan.host.sandbox.xen import vm

    state = vm.load_state()
    if state is None or not vm.running(state):
        return
    try:
        image = None
        own_kernel = any(a.split("=", 1)[0] in ("--kernel", "--initrd") for a in args)
        if args[0] in _NEEDS_GUEST_IMAGE and not own_kernel and "--help" not in args:
            from xenvlan.cli.common import progress
            from xenvlan.guest.image.build import ensure_image

            image = ensure_image(progress=progress).initrd.parent
        from xenvlan.host.sandbox.xen import remote

        rc = remote.run(args, state=state, guest_image=image)
    except XenvlanError as exc:
        print(f"xenvlan: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("xenvlan: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C: every `finally` (rollback, revert, down) runs."""
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point: run the app, turn XenvlanError into one line + exit code."""
    _reexec_in_sandbox()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    _register()
    try:
        rc = app(standalone_mode=False)
    except XenvlanError as exc:
        print(f"xenvlan: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("xenvlan: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("xenvlan: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # usage errors from typer's (vendored) click
        usage, click_exc = _click_exceptions()
        if isinstance(exc, usage):
            print(f"xenvlan: error: {exc.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
            sys.exit(2)
        if isinstance(exc, click_exc):
            print(f"xenvlan: error: {exc.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
            sys.exit(int(getattr(exc, "exit_code", 1)))
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


def _click_exceptions() -> tuple[type[Exception], type[Exception]]:
    """UsageError and ClickException of the click typer really uses (it may vendor its own)."""
    try:
        from typer._click import exceptions as ex  # typer >= 0.26
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as ex  # type: ignore[no-redef]
    return ex.UsageError, ex.ClickException
