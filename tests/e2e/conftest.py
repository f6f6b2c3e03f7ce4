"""End-to-end fixtures: a private sandbox libvirtd in a test-made namespace, real guests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NEEDS = ("qemu-system-x86_64", "libvirtd", "virtlogd", "ip", "dnsmasq")


def _missing() -> list[str]:
    return [b for b in NEEDS if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("XENVLAN_REQUIRE_E2E") == "1":
        pytest.fail(f"end-to-end suite required but cannot run: {reason}")
    pytest.skip(reason)


@dataclass
class Env:
    """The environment the e2e CLI runs see."""

    vars: dict[str, str]
    run_dir: Path
    state_dir: Path
    netns: str

    def xenvlan(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI as a subprocess."""
        res = subprocess.run(
            [sys.executable, "-c", "from xenvlan.cli import main; main()", *args],
            env=self.vars,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"xenvlan {' '.join(args)} exited {res.returncode}\n"
                f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
            )
        return res

    def xjson(self, *args: str) -> dict:  # type: ignore[type-arg]
        """Run with --json and parse stdout."""
        return json.loads(self.xenvlan(*args, "--json").stdout)

    def in_netns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside the sandbox namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            env=self.vars,
        )


def host_snapshot() -> dict[str, object]:
    """What must be identical before and after the suite on the host (outside the namespace)."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {
        # Only xenvlan's namespaces: other suites may run their own concurrently.
        "netns": sorted(
            line.split()[0] for line in ns.splitlines() if line.strip().startswith("xenvlan")
        ),
        "links": sorted(line.split(":")[1].strip() for line in links.splitlines()),
        "bridge_sysctls": {
            p.name: p.read_text().strip() for p in sorted(Path("/proc/sys/net/bridge").glob("*"))
        }
        if Path("/proc/sys/net/bridge").is_dir()
        else {},
    }


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A sandbox libvirtd in a namespace made for this test run; stopped and verified after."""
    if os.geteuid() != 0:
        _skip_or_fail("needs root")
    if missing := _missing():
        _skip_or_fail(f"missing {', '.join(missing)} (run scripts/bootstrap.sh)")
    from xenvlan.host.sandbox import netns as sbx

    if sbx.socket_alive():
        _skip_or_fail("a libvirtd already runs on this host; the e2e suite needs its own")
    base = tmp_path_factory.mktemp("xenvlan-e2e")
    run_dir, state_dir = base / "run", base / "state"
    netns = f"xenvlan-test-{os.getpid()}"
    env = dict(os.environ)
    env.pop("XENVLAN_NO_SANDBOX", None)  # the e2e CLI runs must enter the test's sandbox
    env.update(
        XENVLAN_RUN_DIR=str(run_dir),
        XENVLAN_STATE_DIR=str(state_dir),
        COLUMNS="200",
    )
    before = host_snapshot()
    e = Env(vars=env, run_dir=run_dir, state_dir=state_dir, netns=netns)
    try:
        e.xenvlan("sandbox", "start", "--netns", netns, timeout=120)
        yield e
    finally:
        e.xenvlan("sandbox", "stop", check=False, timeout=120)
    after = host_snapshot()
    assert after == before, "the host changed across the e2e suite"
    assert not run_dir.exists() or not any(run_dir.rglob("*")), (
        f"files left under {run_dir}: {list(run_dir.rglob('*'))}"
    )


@pytest.fixture(scope="module")
def seed_lab(sandbox: Env) -> Iterator[dict]:  # type: ignore[type-arg]
    """The seed lab, up for a whole test module, down after it."""
    data = sandbox.xjson("up")
    try:
        yield data
    finally:
        sandbox.xenvlan("down", "--all", check=False)
