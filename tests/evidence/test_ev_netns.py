"""Kernel drop evidence against a real bridge: A -- br0 (pa, pb at MTU 1400) -- B, in netns.

The sender is one long-running shell in A that pings on request (like a guest's QEMU process:
its pid is the traffic key, the pings it forks are followed by ``options/event-fork``).
Everything here must leave the global trace state, the instance list and the mount table
exactly as found; the journal lives in a temporary state dir.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenvlan.evidence import tracefs
from xenvlan.evidence.collect import EvidencePlan, collect_edge
from xenvlan.evidence.key import TrafficKey
from xenvlan.evidence.model import Emulation
from xenvlan.evidence.tracefs import global_state
from xenvlan.host.journal import HostJournal, revert_lab_changes

pytestmark = pytest.mark.netns

ADDR_A, ADDR_B = "10.99.7.1", "10.99.7.2"
PREFIX = f"evx-{os.getpid() % 100000}"
NS_A, NS_BR, NS_B = f"{PREFIX}-a", f"{PREFIX}-br", f"{PREFIX}-b"
# Tracing instances are kernel-wide: a per-run lab name keeps a leftover of an aborted run (or a
# concurrent run on the same kernel) from colliding with this one.
LAB = f"evx{os.getpid() % 100000}"
INSTANCE = f"xenvlan-{LAB}"
CHAIN = f"XENVLAN-{LAB}"
# As in the legacy-vlan scenario: a conntrack match keeps defragmentation on in the bridge.
CONNTRACK = ("-m", "conntrack", "--ctstate", "INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=20, check=False
    )


def _sysctl(ns: str, name: str, value: str) -> None:
    path = f"/proc/sys/net/bridge/{name}"
    assert _in(ns, "sh", "-c", f"echo {value} > {path}").returncode == 0


def _instances() -> list[str]:
    """The kernel's tracing instances, seen through a tracefs (temporary when none is mounted)."""
    root = tracefs.find_tracefs()
    if root is not None:
        return sorted(p.name for p in (root / "instances").iterdir())
    with tracefs.temporary_tracefs() as tmp:
        return sorted(p.name for p in (tmp / "instances").iterdir())


def _trace_state() -> dict[str, object]:
    return {"global": global_state(), "instances": _instances()}


@pytest.fixture(scope="module")
def bridge() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not Path("/sys/kernel/tracing").is_dir():
        pytest.skip("kernel without tracefs")
    try:
        for ns in (NS_A, NS_BR, NS_B):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", NS_A, "link", "add", "va", "type", "veth", "peer", "name", "pa", "netns", NS_BR)
        _ip("-n", NS_B, "link", "add", "vb", "type", "veth", "peer", "name", "pb", "netns", NS_BR)
        _ip("-n", NS_BR, "link", "add", "br0", "type", "bridge")
        for port in ("pa", "pb"):
            _ip("-n", NS_BR, "link", "set", port, "master", "br0")
            _ip("-n", NS_BR, "link", "set", port, "up")
        _ip("-n", NS_BR, "link", "set", "br0", "up")
        _ip("-n", NS_BR, "link", "set", "pb", "mtu", "1400")
        for ns, dev, addr in ((NS_A, "va", ADDR_A), (NS_B, "vb", ADDR_B)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        if not Path("/proc/sys/net/bridge").is_dir():
            pytest.skip("no br_netfilter in this kernel")
        _sysctl(NS_BR, "bridge-nf-call-iptables", "0")
        for _ in range(100):
            if _in(NS_A, "ping", "-c1", "-W0.2", ADDR_B).returncode == 0:
                break
        else:
            raise RuntimeError("bridge never forwarded")
        yield
    finally:
        for ns in (NS_A, NS_BR, NS_B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class Sender:
    """A shell in A that runs ``ping -M <df> -c N -s SIZE`` for each line it reads."""

    def __init__(self, df: str = "do") -> None:
        loop = (
            f"while read size n; do ping -M {df} -c $n -W 0.2 -i 0.05 -s $size {ADDR_B} "
            ">/dev/null 2>&1; echo done; done"
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", NS_A, "sh", "-c", loop],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.sent: list[int] = []

    def __call__(self, size: int, probes: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{size} {probes}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"
        self.sent.append(size)

    def key(self) -> TrafficKey:
        return TrafficKey(pids=frozenset({self.proc.pid}), source="test sender")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def sender() -> Iterator[Sender]:
    s = Sender()
    yield s
    s.close()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XENVLAN_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def _plan(tmp_path: Path, key: TrafficKey, **kw: object) -> EvidencePlan:
    return EvidencePlan(
        lab=LAB,
        in_port="pa",
        out_port="pb",
        key=key,
        run_dir=tmp_path / "run",
        netns=NS_BR,
        src_ip=ADDR_A,
        dst_ip=ADDR_B,
        **kw,  # type: ignore[arg-type]
    )


def read_pcapng(path: Path) -> tuple[list[str], list[tuple[int, int, bytes]]]:
    """Interface names, and (interface, direction flag, frame) per enhanced packet block."""
    data = path.read_bytes()
    names: list[str] = []
    packets: list[tuple[int, int, bytes]] = []
    off = 0
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        assert blen % 4 == 0 and struct.unpack_from("<I", data, off + blen - 4)[0] == blen
        body = data[off + 8 : off + blen - 4]
        if btype == 0x0A0D0D0A:
            assert struct.unpack_from("<I", body)[0] == 0x1A2B3C4D
        elif btype == 1:
            linktype, _, _snap = struct.unpack_from("<HHI", body)
            assert linktype == 1
            code, length = struct.unpack_from("<HH", body, 8)
            assert code == 2
            names.append(body[12 : 12 + length].decode())
        elif btype == 6:
            iface, _hi, _lo, caplen, origlen = struct.unpack_from("<IIIII", body)
            frame = body[20 : 20 + caplen]
            opt = 20 + caplen + (-caplen % 4)
            code, length = struct.unpack_from("<HH", body, opt)
            assert (code, length) == (2, 4)
            flags = struct.unpack_from("<I", body, opt + 4)[0]
            assert caplen == origlen
            packets.append((iface, flags & 3, frame))
        off += blen
    return names, packets


def test_oversize_df_packet_dies_in_br_dev_queue_push_xmit(
    bridge: None, sender: Sender, state_dir: Path, tmp_path: Path
) -> None:
    before = _trace_state()
    t0 = time.monotonic()
    rep = collect_edge(_plan(tmp_path, sender.key()), 1380, 1376, sender)
    elapsed = time.monotonic() - t0
    assert _trace_state() == before, "global trace state, mounts or instance list changed"
    assert not (state_dir / "journal").exists() or not list((state_dir / "journal").glob("*.json"))
    fail, ok = rep.failing, rep.passing
    assert ok is not None
    # inside a PID namespace (a container) the pid filter widens to protocols, with a notice
    assert fail.traced and (rep.notice is None or "PID namespace" in rep.notice)
    drops = [(d.function, d.reason, d.count) for d in fail.real_drops]
    if rep.notice is None:
        assert drops == [("br_dev_queue_push_xmit", "NOT_SPECIFIED", 2)]
    else:  # widened to every task: other drops of the window may appear beside ours
        assert ("br_dev_queue_push_xmit", "NOT_SPECIFIED", 2) in drops
    assert fail.culprit() == "br_dev_queue_push_xmit"
    assert ok.real_drops == []
    # Port counters see all traffic (ARP, IPv6 ND); no 1422-byte frame left on pb.
    assert fail.ports["pa"]["rx_bytes"] >= 2 * 1422 and fail.ports["pb"]["tx_bytes"] < 1422
    assert ok.ports["pb"]["tx_packets"] >= 2 and ok.ports["pb"]["tx_bytes"] >= 2 * 1418
    assert (fail.frames_in, fail.frames_out, ok.frames_in, ok.frames_out) == (2, 0, 2, 2)
    line = (
        "1380 (IP 1408): in on pa 2 frames, dropped in br_dev_queue_push_xmit \u00d72, out on pb 0"
    )
    if rep.notice is None:
        assert fail.summary_line() == line
    else:
        assert "dropped in br_dev_queue_push_xmit \u00d72" in fail.summary_line()
    assert fail.capture is not None
    names, packets = read_pcapng(Path(fail.capture))
    assert names == ["pa", "pb"]
    requests = [(i, d) for i, d, f in packets if len(f) == 14 + 1408]
    assert requests == [(0, 1), (0, 1)]  # two inbound on pa, none out on pb
    assert elapsed < 2.0, f"evidence for one edge took {elapsed:.2f}s"


def test_iptables_drop_after_reassembly_is_the_emulations_stand_in(
    bridge: None, state_dir: Path, tmp_path: Path
) -> None:
    """bridge-netfilter reassembles the sender's fragments; a chain rule drops the datagram."""
    sender = Sender(df="dont")
    rules = [
        ["-N", CHAIN],
        ["-A", CHAIN, "-m", "length", "--length", "1405:65535", *CONNTRACK, "-j", "DROP"],
        ["-I", "FORWARD", "1", "-j", CHAIN],
    ]
    try:
        _sysctl(NS_BR, "bridge-nf-call-iptables", "1")
        for rule in rules:
            assert _in(NS_BR, "iptables", "-w", "5", *rule).returncode == 0
        before = _trace_state()
        plan = _plan(tmp_path, sender.key(), emulation=Emulation(CHAIN))
        rep = collect_edge(plan, 3000, 1300, sender)
        assert _trace_state() == before
    finally:
        sender.close()
        _in(NS_BR, "iptables", "-w", "5", "-D", "FORWARD", "-j", CHAIN)
        _in(NS_BR, "iptables", "-w", "5", "-F", CHAIN)
        _in(NS_BR, "iptables", "-w", "5", "-X", CHAIN)
        _sysctl(NS_BR, "bridge-nf-call-iptables", "0")
    fail = rep.failing
    funcs = {(d.function, d.reason) for d in fail.real_drops}
    assert funcs & {("nft_do_chain", "NETFILTER_DROP"), ("nf_hook_slow", "NETFILTER_DROP")}
    assert fail.rule_hits == 2
    assert fail.ip["IpReasmOKs"] == 2 and fail.ip["IpReasmReqds"] == 6
    assert fail.frames_in == 6 and fail.frames_out == 0
    line = fail.summary_line()
    assert "reassembled (IpReasmOKs +2)" in line
    assert f"dropped by the emulation's rule in {CHAIN}" in line
    assert "standing in for br_dev_queue_push_xmit of 2.6.17-2.6.34" in line
    culprit = fail.culprit()
    assert culprit is not None and "standing in for br_dev_queue_push_xmit" in culprit


def test_no_tracing_gives_counters_and_a_notice(
    bridge: None, sender: Sender, state_dir: Path, tmp_path: Path
) -> None:
    """An instance that is not xenvlan's: evidence goes on without tracing, and leaves it."""
    with tracefs.temporary_tracefs() as tmp:
        (tmp / "instances" / INSTANCE).mkdir()
        try:
            rep = collect_edge(_plan(tmp_path, sender.key()), 1380, None, sender)
            assert (tmp / "instances" / INSTANCE).is_dir()
        finally:
            (tmp / "instances" / INSTANCE).rmdir()
    assert rep.notice is not None and "exists and is not xenvlan's" in rep.notice
    assert not rep.failing.traced and rep.failing.drops == []
    assert rep.failing.ports["pa"]["rx_packets"] >= 2
    assert rep.failing.summary_line().startswith("1380 (IP 1408): in on pa 2 frames, out on pb 0 [")


CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from xenvlan.host.journal import HostJournal, on_behalf_of
    from xenvlan.evidence import tracefs
    from xenvlan.evidence.key import TrafficKey
    with on_behalf_of(sys.argv[1]), HostJournal.open() as journal:
        inst = tracefs.open_instance(journal, sys.argv[1])
        inst.configure(TrafficKey())
        inst.start()
        print(inst.path, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_9_then_down_removes_the_instance(state_dir: Path) -> None:
    """Safeguard: after kill -9 the journal alone removes the instance (as `xenvlan down`)."""
    if os.geteuid() != 0 or not Path("/sys/kernel/tracing").is_dir():
        pytest.skip("needs root and tracefs")
    before = _trace_state()
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, LAB],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert INSTANCE in _instances(), "the crashed run left no instance to clean up"
    journal = HostJournal.load(HostJournal.path_for(state_dir / "journal"))
    assert journal is not None
    assert {e.kind for e in journal.entries} <= {tracefs.KIND_MOUNT, tracefs.KIND_INSTANCE}
    actions = revert_lab_changes(LAB, state_dir / "journal")
    assert {(a.kind, a.result) for a in actions} >= {(tracefs.KIND_INSTANCE, "removed")}
    assert INSTANCE not in _instances(), "tracing instance left behind"
    assert _trace_state() == before
