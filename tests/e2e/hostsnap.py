"""A full snapshot of what xenvlan may touch, read with the system tools (never with xenvlan).

libvirt objects (virsh, inside the sandbox namespace: domains, networks and their XML), the
bridge sysctls and per-bridge knobs, iptables-save and the nft ruleset without counters, every
link's MTU, and every file under xenvlan's run and state directories.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import Env

VIRSH = ("virsh", "-q", "-c", "qemu:///system")
_COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")


def _out(env: Env, *argv: str) -> str:
    res = env.in_netns(*argv)
    if res.returncode != 0:
        return f"(exit {res.returncode}: {res.stderr.strip()})"
    return res.stdout


def _files(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not str(p.relative_to(root)).startswith(skip)
    )


def snapshot(env: Env) -> dict[str, object]:
    """Everything that must be identical before an experiment and after its clean-up."""
    doms = _out(env, *VIRSH, "list", "--all", "--name").split()
    nets = _out(env, *VIRSH, "net-list", "--all", "--name").split()
    links = {}
    for line in _out(env, "ip", "-o", "link", "show").splitlines():
        m = re.match(r"\d+: ([^:@]+)[^:]*:.* mtu (\d+)", line)
        if m:
            links[m.group(1)] = int(m.group(2))
    return {
        "domains": _out(env, *VIRSH, "list", "--all"),
        "domain_xml": {d: _out(env, *VIRSH, "dumpxml", "--inactive", d) for d in doms},
        "networks": _out(env, *VIRSH, "net-list", "--all"),
        "network_xml": {n: _out(env, *VIRSH, "net-dumpxml", n) for n in nets},
        "bridge_sysctls": _out(env, "sysctl", "net.bridge"),
        "bridge_knobs": _out(
            env, "sh", "-c", "grep -H . /sys/class/net/*/bridge/nf_call_* 2>/dev/null; true"
        ),
        "iptables": _COUNTERS.sub(
            "", "\n".join(x for x in _out(env, "iptables-save").splitlines() if x[:1] != "#")
        ),
        "nft": _COUNTERS.sub("", _out(env, "nft", "list", "ruleset")),
        "link_mtus": links,
        "run_files": _files(env.run_dir, skip=("sandbox",)),
        "state_files": _files(env.state_dir),
    }


def differences(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """The keys that differ, with both values (empty when identical)."""
    return [
        f"{k}:\n  before {before.get(k)!r}\n  after  {after.get(k)!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def with_vars(env: Env, **extra: str) -> Env:
    """The same environment plus some variables (XENVLAN_FAULT, ...)."""
    return dataclasses.replace(env, vars={**env.vars, **extra})


def popen(env: Env, *args: str) -> subprocess.Popen[str]:
    """Start the CLI in the background."""
    return subprocess.Popen(
        [sys.executable, "-c", "from xenvlan.cli import main; main()", *args],
        env=env.vars,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until `path` exists; fail early when `proc` ended first."""
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"ended ({proc.returncode}) before {path.name}: {err}{out}")
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)
