"""End-to-end sweep against real kernels: GuestProber + run_sweep through network namespaces.

Topology (unique names per run): ``A (10.99.0.1) -- bridge namespace (br0) -- B (10.99.0.2)``,
veth pairs, B's bridge port optionally at a lower MTU. The Runner is a local subprocess inside
A (``ip netns exec A sh -c <cmd>``), standing in for the guest's SSH session.

What a real bridge does with a port MTU of 1400 (measured, kernel 6.x):
- plain bridge (``bridge-nf-call-iptables=0``): ``is_skb_forwardable`` allows MTU + 14 + 4
  (VLAN_HLEN) of frame, so IP lengths up to 1404 pass: largest passing payload 1376;
- with br_netfilter calling iptables: ``br_nf_dev_queue_xmit`` drops above the MTU exactly:
  largest passing payload 1372.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from xenvlan.guest.shell import CommandResult
from xenvlan.sweep.ping import GuestProber
from xenvlan.sweep.search import SweepOptions, SweepResult, run_sweep

pytestmark = pytest.mark.netns

ADDR_A = "10.99.0.1"
ADDR_B = "10.99.0.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


class NetnsRunner:
    """A Runner that executes ``sh -c <command>`` inside a network namespace."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.calls = 0

    def __call__(self, command: str, *, timeout: float) -> CommandResult:
        self.calls += 1
        p = subprocess.run(
            ["ip", "netns", "exec", self.netns, "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CommandResult(p.returncode, p.stdout, p.stderr)


@dataclass
class BridgeLab:
    """Three namespaces: A and B joined by a bridge in the middle one."""

    prefix: str

    @property
    def a(self) -> str:
        return f"{self.prefix}-a"

    @property
    def br(self) -> str:
        return f"{self.prefix}-br"

    @property
    def b(self) -> str:
        return f"{self.prefix}-b"

    def up(self) -> None:
        for ns in (self.a, self.br, self.b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "va", "netns", self.a, "type", "veth", "peer", "name", "pa", "netns",
            self.br)  # fmt: skip
        _ip("link", "add", "vb", "netns", self.b, "type", "veth", "peer", "name", "pb", "netns",
            self.br)  # fmt: skip
        _ip("-n", self.br, "link", "add", "br0", "type", "bridge")
        for port in ("pa", "pb"):
            _ip("-n", self.br, "link", "set", port, "master", "br0")
            _ip("-n", self.br, "link", "set", port, "up")
        _ip("-n", self.br, "link", "set", "br0", "up")
        _ip("-n", self.a, "addr", "add", f"{ADDR_A}/24", "dev", "va")
        _ip("-n", self.b, "addr", "add", f"{ADDR_B}/24", "dev", "vb")
        _ip("-n", self.a, "link", "set", "va", "up")
        _ip("-n", self.b, "link", "set", "vb", "up")
        self.wait_forwarding()

    def wait_forwarding(self) -> None:
        """Wait until the bridge forwards (ports leave the listening/learning states)."""
        run = NetnsRunner(self.a)
        for _ in range(100):
            if run(f"ping -c 1 -W 0.2 {ADDR_B} >/dev/null", timeout=5).exit_status == 0:
                return
        raise RuntimeError("bridge never started forwarding")

    def set_port_mtu(self, mtu: int) -> None:
        _ip("-n", self.br, "link", "set", "pb", "mtu", str(mtu))

    def bridge_sysctl(self, name: str, value: int) -> bool:
        """Set net.bridge.<name> in the bridge namespace; False when br_netfilter is absent."""
        path = f"/proc/sys/net/bridge/{name}"
        cmd = [
            "ip",
            "netns",
            "exec",
            self.br,
            "sh",
            "-c",
            f"test -e {path} && echo {value} >{path}",
        ]
        return subprocess.run(cmd, check=False, timeout=10).returncode == 0

    def down(self) -> None:
        for ns in (self.a, self.br, self.b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=20)


def _can_netns() -> bool:
    return os.geteuid() == 0 and Path("/usr/bin/ping").exists()


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[BridgeLab]:
    if not _can_netns():
        pytest.skip("needs root (network namespaces) and /usr/bin/ping")
    name = request.node.name.replace("[", "-").replace("]", "")[:12].strip("-_")
    bl = BridgeLab(f"swt{os.getpid()}-{name}"[:20])
    try:
        bl.up()
        yield bl
    finally:
        bl.down()


def _sweep(
    lab: BridgeLab, impl: str | None = None, *, lo: int = 0, hi: int = 65507
) -> tuple[SweepResult, GuestProber]:
    # On the host, "ping" is iputils: reach the busybox applet through the busybox binary.
    path = "busybox" if impl == "busybox" else None
    prober = GuestProber(NetnsRunner(lab.a), ADDR_B, impl=impl, ping_path=path)
    res = run_sweep(
        prober,
        SweepOptions(lo=lo, hi=hi),
        src=ADDR_A,
        dst=ADDR_B,
        mtu=1500,
        vlan=False,
        host_ports=[("pa", 1500), ("pb", 1400)],
    )
    return res, prober


def test_healthy_path_has_no_cliff(lab: BridgeLab) -> None:
    res, prober = _sweep(lab)
    assert res.transitions == [], res.verdict.text
    assert res.verdict.code == "no-cliff"
    assert res.largest_passing == 65507
    assert res.smallest_failing is None
    assert prober.commands <= 4


@pytest.mark.parametrize(("call_iptables", "last_pass"), [(0, 1376), (1, 1372)])
def test_port_mtu_cliff_exact(lab: BridgeLab, call_iptables: int, last_pass: int) -> None:
    if not lab.bridge_sysctl("bridge-nf-call-iptables", call_iptables) and call_iptables:
        pytest.skip("br_netfilter is not loaded")
    lab.set_port_mtu(1400)
    r, prober = _sweep(lab)
    assert r.largest_passing == last_pass, r.verdict.text
    assert r.smallest_failing == last_pass + 1
    assert [(t.last_pass, t.first_fail) for t in r.transitions] == [(last_pass, last_pass + 1)]
    assert r.verdict.code == "path-mtu"
    assert f"MTU {1400}: pb" in r.verdict.text
    assert r.elapsed_s < 5
    assert prober.commands <= 8


def test_port_mtu_cliff_busybox(lab: BridgeLab) -> None:
    lab.bridge_sysctl("bridge-nf-call-iptables", 0)
    lab.set_port_mtu(1400)
    res, _ = _sweep(lab, impl="busybox", lo=1000, hi=2000)
    assert res.largest_passing == 1376, res.verdict.text
    assert res.smallest_failing == 1377
    # busybox -W is whole seconds: only the SIGINT watchdog keeps failing rounds short
    assert res.elapsed_s < 3
