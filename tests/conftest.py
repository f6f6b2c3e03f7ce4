"""Suite-wide settings and the fixtures several test files share."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from xenvlan.guest.image.build import GuestImage, ensure_image
from xenvlan.guest.image.cpio import CpioEntry, read_initrd

# Unit tests run CLI subprocesses in namespaces of their own: never let them re-exec into a
# developer's running sandbox. The e2e suite removes this from the environment it passes on.
os.environ["XENVLAN_NO_SANDBOX"] = "1"

can_build = shutil.which("apt-get") is not None and Path("/usr/sbin/dropbear").exists()
needs_build = pytest.mark.skipif(not can_build, reason="needs apt-get and dropbear on the host")


@dataclass(frozen=True)
class Built:
    """The guest image built once per test session, from the real Debian kernel deb."""

    image: GuestImage
    cache: Path
    entries: dict[str, CpioEntry]
    seconds: float


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not can_build:
        pytest.skip("needs apt-get and dropbear on the host")
    cache = tmp_path_factory.mktemp("cache")
    started = time.monotonic()
    img = ensure_image(cache=cache)
    seconds = time.monotonic() - started
    print(f"\nimage {img.key}: built in {seconds:.1f} s, initrd {img.initrd.stat().st_size} B")
    entries = {e.name: e for e in read_initrd(img.initrd.read_bytes())}
    return Built(img, cache, entries, seconds)


# --------------------------------------------------------------------------- the CLI, isolated

ENTRY = "from xenvlan.cli import main; main()"
TEST_URI = "test:///default"


@dataclass(frozen=True)
class Run:
    """One CLI run's exit code and output."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """Private run/state/cache/home directories for CLI runs."""
    d = {name: tmp_path / name for name in ("run", "state", "cache", "home")}
    for p in d.values():
        p.mkdir()
    return d


def run_cli(dirs: dict[str, Path], *args: str, exe: str | None = None, timeout: float = 120) -> Run:
    """The real CLI in a subprocess, with private dirs and a libvirt URI that goes nowhere."""
    env = {
        **os.environ,
        "XENVLAN_RUN_DIR": str(dirs["run"]),
        "XENVLAN_STATE_DIR": str(dirs["state"]),
        "XENVLAN_CACHE_DIR": str(dirs["cache"]),
        "HOME": str(dirs["home"]),
        "XDG_CACHE_HOME": str(dirs["home"] / ".cache"),
        "XDG_STATE_HOME": str(dirs["home"] / ".state"),
        "XDG_RUNTIME_DIR": str(dirs["run"]),
        # Any attempt to reach libvirt goes nowhere instead of to a real daemon.
        "LIBVIRT_DEFAULT_URI": "qemu+unix:///system?socket=/nonexistent/sock",
        "COLUMNS": "200",
    }
    cmd = [exe, *args] if exe else [sys.executable, "-c", ENTRY, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    return Run(res.returncode, res.stdout, res.stderr)


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    """test:///default is shared within this process: every test removes what it defined and
    the DHCP reservations it added to the default network."""
    c = libvirt.open(TEST_URI)
    default_xml = c.networkLookupByName("default").XMLDesc(0)
    before_doms = {d.name() for d in c.listAllDomains(0)}
    before_nets = {n.name() for n in c.listAllNetworks(0)}
    yield c
    for d in c.listAllDomains(0):
        if d.name() not in before_doms:
            if d.isActive():
                d.destroy()
            d.undefine()
    for n in c.listAllNetworks(0):
        if n.name() not in before_nets:
            if n.isActive():
                n.destroy()
            if n.isPersistent():
                n.undefine()
    default = c.networkLookupByName("default")
    for host in re.findall(r"<host mac=[^>]*/>", default.XMLDesc(0)):
        default.update(
            libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
            libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
            -1,
            host,
            libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG | libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE,
        )
    assert default.XMLDesc(0) == default_xml, "a test left the default network changed"
    c.close()
