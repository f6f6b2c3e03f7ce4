"""Guests that fail: garbage kernel, a kernel that never reaches userspace, SSH that never
answers. Each fails within its deadline with one useful line, and leaves nothing behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import hostsnap
from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e

LAB = """
name = "seed"
[vlan]
id = 3
[[guests]]
name = "a"
vlan_ip = "11.11.4.2/24"
[[guests]]
name = "b"
vlan_ip = "11.11.4.30/24"
[timeouts]
boot = {boot}
ssh = {ssh}
"""


@pytest.fixture(scope="module")
def clean(sandbox: Env) -> Iterator[dict[str, object]]:
    """The idle sandbox after one plain up/down (see test_faults.clean)."""
    sandbox.xenvlan("up")
    sandbox.xenvlan("down")
    yield hostsnap.snapshot(sandbox)
    sandbox.xenvlan("down", "--all", check=False)


def _lab(tmp_path: Path, boot: float = 20, ssh: float = 30) -> Path:
    f = tmp_path / "lab.toml"
    f.write_text(LAB.format(boot=boot, ssh=ssh))
    return f


def _fails(env: Env, args: tuple[str, ...], codes: set[int], within: float) -> str:
    """Run; require one error line, an exit code in `codes`, and a result within `within` s."""
    t0 = time.monotonic()
    res = env.xenvlan(*args, check=False)
    took = time.monotonic() - t0
    assert res.returncode in codes, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("xenvlan: error:")]
    assert len(errors) == 1, res.stderr
    assert took < within, f"took {took:.1f}s, deadline {within}s"
    return errors[0]


def _assert_clean(env: Env, clean: dict[str, object]) -> None:
    diff = hostsnap.differences(clean, hostsnap.snapshot(env))
    assert not diff, "left behind:\n" + "\n".join(diff)


def _fails_cleanly(
    env: Env, clean: dict[str, object], args: tuple[str, ...], codes: set[int], within: float
) -> str:
    line = _fails(env, args, codes, within)
    _assert_clean(env, clean)
    return line


def _image_kernel() -> Path:
    from xenvlan.paths import cache_dir

    found = sorted((cache_dir() / "images").glob("*/vmlinux"))
    if not found:
        pytest.skip("no cached guest image")
    return found[0]


def test_garbage_kernel(sandbox: Env, clean: dict[str, object], tmp_path: Path) -> None:
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(os.urandom(256 * 1024))
    initrd.write_bytes(os.urandom(64 * 1024))
    line = _fails_cleanly(
        sandbox,
        clean,
        ("up", "--lab", str(_lab(tmp_path, boot=15)), "--kernel", str(kernel),
         "--initrd", str(initrd)),
        {3, 4},
        within=60,
    )  # fmt: skip
    assert "xenvlan-seed-a" in line or "guest a" in line, line


def test_kernel_that_never_reaches_userspace(
    sandbox: Env, clean: dict[str, object], tmp_path: Path
) -> None:
    """The real kernel with a garbage initramfs panics: the error carries the console tail."""
    initrd = tmp_path / "initrd"
    initrd.write_bytes(os.urandom(64 * 1024))
    line = _fails_cleanly(
        sandbox,
        clean,
        ("up", "--lab", str(_lab(tmp_path, boot=20)), "--kernel", str(_image_kernel()),
         "--initrd", str(initrd)),
        {4},
        within=60,
    )  # fmt: skip
    assert "guest a" in line or "guest b" in line, line
    assert "console:" in line, line
    assert "panic" in line.lower() or "not ready within 20s" in line, line


def test_ssh_that_never_answers(sandbox: Env, clean: dict[str, object], tmp_path: Path) -> None:
    """Port 22 silently dropped on the host side: `up` gives up after [timeouts] ssh."""
    rule = ("OUTPUT", "-p", "tcp", "--dport", "22", "-j", "DROP")
    res = sandbox.in_netns("iptables", "-w", "5", "-I", *rule)
    assert res.returncode == 0, res.stderr
    try:
        line = _fails(sandbox, ("up", "--lab", str(_lab(tmp_path, ssh=3))), {4}, within=60)
    finally:
        sandbox.in_netns("iptables", "-w", "5", "-D", *rule)
    assert "no SSH on" in line and "within 3s" in line, line
    _assert_clean(sandbox, clean)
