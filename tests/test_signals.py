"""A second Ctrl-C (or SIGTERM) during cleanup waits until the cleanup is done."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from xenvlan import signals
    steps = []
    try:
        with signals.deferred():
            os.kill(os.getpid(), signal.{sig})
            time.sleep(0.2)          # the signal arrives here, mid-cleanup
            steps.append("cleanup finished")
        steps.append("not reached")
    except {exc}:
        steps.append("raised after cleanup")
    print(",".join(steps))
    """
)


@pytest.mark.parametrize(("sig", "exc"), [("SIGINT", "KeyboardInterrupt")])
def test_signal_is_held_until_the_block_ends(sig: str, exc: str) -> None:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(sig=sig, exc=exc)], capture_output=True, text=True
    )
    assert res.stdout.strip() == "cleanup finished,raised after cleanup", res.stderr


def test_sigterm_acts_after_the_block_with_its_own_handler() -> None:
    script = textwrap.dedent(
        """
        import os, signal, time
        from xenvlan import signals
        def term(signum, frame):
            raise SystemExit(143)
        signal.signal(signal.SIGTERM, term)
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("cleanup finished", flush=True)
        print("not reached")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 143
    assert res.stdout.strip() == "cleanup finished"


def test_without_a_signal_nothing_happens() -> None:
    from xenvlan import signals

    with signals.deferred() as got:
        pass
    assert got == []
