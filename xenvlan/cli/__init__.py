"""The typer application: one module per verb, errors mapped to exit codes here only."""

from __future__ import annotations

import os
import sys

import typer

from xenvlan.errors import XenvlanError

app = typer.Typer(
    name="xenvlan",
    help="Reproduce, measure and fix bridged VLAN fragmentation cliffs between guests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # Each verb module exposes register(app); imported lazily so `--help` stays fast.
    from xenvlan.cli import verbs

    for module in verbs.MODULES:
        module.register(app)


def _reexec_in_sandbox() -> None:
    """While a sandbox runs, re-run this command inside its namespace via `ip netns exec`.

    `ip netns exec` also remounts /sys, so /sys/class/net shows the sandbox's bridges; a bare
    setns() would not. Sandbox management itself runs where it was started.
    """
    args = sys.argv[1:]
    skip = not args or args[0] in ("sandbox", "--help", "image")
    if skip or os.environ.get("XENVLAN_NO_SANDBOX"):
        return
    from xenvlan import sandbox

    state = sandbox.load_state()
    if state is None or not sandbox.netns_inherited():
        return  # no sandbox, or the caller already chose a namespace (ip netns exec ...)
    if not (sandbox.NETNS_DIR / state.netns).exists():
        return
    print(f"xenvlan: inside sandbox network namespace {state.netns}", file=sys.stderr)
    sys.stderr.flush()
    argv = ["ip", "netns", "exec", state.netns, sys.executable, "-m", "xenvlan", *args]
    os.environ["XENVLAN_NO_SANDBOX"] = "1"  # never re-exec twice
    os.execvp("ip", argv)


def main() -> None:
    """Console-script entry point: run the app, turn XenvlanError into one line + exit code."""
    _reexec_in_sandbox()
    _register()
    try:
        rc = app(standalone_mode=False)
    except XenvlanError as exc:
        print(f"xenvlan: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("xenvlan: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors, aborts
        import click

        if isinstance(exc, click.exceptions.UsageError):
            print(f"xenvlan: error: {exc.format_message()}", file=sys.stderr)
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            print("xenvlan: aborted", file=sys.stderr)
            sys.exit(130)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.ClickException):
            print(f"xenvlan: error: {exc.format_message()}", file=sys.stderr)
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
