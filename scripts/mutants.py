#!/usr/bin/env python3
"""Safeguard mutation check: switch each safeguard off, one at a time, in a scratch copy of the
checkout, and run the tests that guard it. A mutant is *killed* when those tests fail.

    python scripts/mutants.py            # every mutant; exit 1 unless all are killed
    python scripts/mutants.py -k pin     # the mutants whose name contains "pin"
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    """One safeguard switched off: `old` becomes `new` in `path`; `tests` must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    occurrences: int = 1  # how many times `old` appears (all are replaced)


MUTANTS = (
    Mutant(
        "host-key pinning off (GuestSession accepts any key)",
        "xenvlan/guest/session.py",
        "client.get_host_keys().add(target, pinned.get_name(), pinned)",
        "client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # MUTANT",
        ("tests/guest/test_keys.py::test_guest_session_connects_only_with_the_pinned_host_key",),
    ),
    Mutant(
        "snapshot diff blind (host restored is never checked)",
        "xenvlan/host/snapshot.py",
        "    out: list[str] = []\n",
        "    return []  # MUTANT\n    out: list[str] = []\n",
        ("tests/host/test_snapshot.py",),
    ),
    Mutant(
        "repro exit 5 dropped",
        "xenvlan/cli/repro.py",
        "sys.exit(HostChangeError.exit_code)",
        "pass  # MUTANT",
        ("tests/host/test_snapshot.py::test_repro_exits_5_when_the_host_is_not_restored",),
    ),
    Mutant(
        "guest commands unquoted (VLAN setup)",
        "xenvlan/guest/vlan.py",
        "    q = shlex.quote\n",
        "    q = str  # MUTANT\n",
        (
            "tests/test_guarantees.py::test_vlan_commands_do_not_break_out",
            "tests/guest/test_vlan.py",
        ),
        occurrences=2,
    ),
    Mutant(
        "ping batch unquoted",
        "xenvlan/sweep/ping.py",
        'argv = " ".join(shlex.quote(a) for a in self.argv(size, n))',
        'argv = " ".join(self.argv(size, n))  # MUTANT',
        ("tests/test_guarantees.py::test_ping_batch_does_not_break_out",),
    ),
    Mutant(
        "ownership: down takes every lab's domains",
        "xenvlan/virt/connection.py",
        'if own and own.kind == "domain" and (lab is None or own.lab == lab):',
        'if own and own.kind == "domain":  # MUTANT',
        ("tests/lab/test_lab.py",),
    ),
    Mutant(
        "journal revert restores nothing",
        "xenvlan/host/journal.py",
        "    write_value(path, str(entry.original))\n",
        "    pass  # MUTANT\n",
        ("tests/host/test_journal.py",),
    ),
    Mutant(
        "kernel download inside the sandbox namespace",
        "xenvlan/guest/image/apt.py",
        "    if fd is not None:\n",
        "    if False:  # MUTANT\n",
        (
            "tests/guest/test_image_offline.py::test_fetch_runs_in_the_namespace_the_command_came_from",
        ),
    ),
    Mutant(
        "tracing instance left behind",
        "xenvlan/evidence/tracefs.py",
        "        path.rmdir()\n",
        "        pass  # MUTANT\n",
        ("tests/evidence/test_ev_netns.py::test_kill_9_then_down_removes_the_instance",),
    ),
    Mutant(
        "Dom0 fork server drops Ctrl-C",
        "xenvlan/host/sandbox/xen/zygote.py",
        "        signal.signal(sig, forward)\n",
        "        pass  # MUTANT\n",
        ("tests/host/test_zygote.py::test_ctrl_c_reaches_the_served_child",),
    ),
    Mutant(
        "edited checkout never reaches the Dom0",
        "xenvlan/host/sandbox/xen/remote.py",
        "    if fresh == state.src_fingerprint:\n",
        "    if True:  # MUTANT\n",
        ("tests/host/test_sandbox_xen.py::test_an_edited_checkout_is_remounted_once",),
    ),
)


TRACEFS = Path("/sys/kernel/tracing")


def _tracing_mounted() -> bool:
    return any(line.split()[4] == str(TRACEFS) for line in open("/proc/self/mountinfo"))


def _restore_tracing(was_mounted: bool, instances: set[str]) -> None:
    """A mutant with its safeguard off leaves what the safeguard removes: remove it here."""
    if not _tracing_mounted():
        return
    for inst in (TRACEFS / "instances").glob("xenvlan-*"):
        if inst.name not in instances:
            for rel in ("events/skb/kfree_skb/enable", "events/enable", "set_event_pid"):
                with contextlib.suppress(OSError):
                    (inst / rel).write_text("0" if rel != "set_event_pid" else "")
            try:
                inst.rmdir()
            except OSError as exc:
                print(f"mutants: cannot remove {inst}: {exc}", file=sys.stderr)
    if not was_mounted:
        subprocess.run(["umount", str(TRACEFS)], check=False)


def run_mutant(m: Mutant, python: str) -> tuple[bool, float, str]:
    """(killed, seconds, note), with whatever the mutant left on the host removed after it."""
    was_mounted = _tracing_mounted()
    instances = {p.name for p in (TRACEFS / "instances").glob("*")} if was_mounted else set[str]()
    try:
        return _run_mutant(m, python)
    finally:
        _restore_tracing(was_mounted, instances)


def _run_mutant(m: Mutant, python: str) -> tuple[bool, float, str]:
    """(killed, seconds, note) for one mutant, in a scratch copy of the checkout."""
    with tempfile.TemporaryDirectory(prefix="xenvlan-mutant.") as tmp:
        root = Path(tmp)
        for part in ("xenvlan", "tests", "pyproject.toml"):
            src = REPO / part
            if src.is_dir():
                shutil.copytree(src, root / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, root / part)
        target = root / m.path
        text = target.read_text()
        if text.count(m.old) != m.occurrences:
            return False, 0.0, f"mutant does not apply ({text.count(m.old)} matches)"
        target.write_text(text.replace(m.old, m.new))
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
        started = time.monotonic()
        res = subprocess.run(
            [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
            cwd=root, env=env, capture_output=True, text=True, check=False, timeout=900,
        )  # fmt: skip
        took = time.monotonic() - started
        if res.returncode == 5:
            return False, took, "no test ran"
        return res.returncode != 0, took, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.k in m.name]
    killed = 0
    for m in chosen:
        ok, took, note = run_mutant(m, sys.executable)
        killed += ok
        state = "killed  " if ok else "SURVIVED"
        print(f"{state} {took:5.1f}s  {m.name}" + (f"  ({note})" if note else ""), flush=True)
    print(f"mutants: {killed}/{len(chosen)} killed")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
