"""EdgeEvidence: the human line, the JSON, and the emulation's stand-in wording."""

from __future__ import annotations

from xenvlan.evidence.model import EdgeEvidence, Emulation
from xenvlan.evidence.trace import DropCount


def _edge(**kw: object) -> EdgeEvidence:
    ev = EdgeEvidence(1477, "failing", 2, "vnet0", "vnet1", traced=True)
    for k, v in kw.items():
        setattr(ev, k, v)
    return ev


def test_issue_line() -> None:
    ev = _edge(
        frames_in=2,
        frames_out=0,
        ip={"IpReasmOKs": 2, "IpReasmReqds": 4},
        drops=[DropCount("br_dev_queue_push_xmit", "NOT_SPECIFIED", 2)],
    )
    assert ev.summary_line() == (
        "1477 (IP 1505): in on vnet0 2 frames, reassembled (IpReasmOKs +2), "
        "dropped in br_dev_queue_push_xmit \u00d72, out on vnet1 0"
    )
    assert ev.culprit() == "br_dev_queue_push_xmit"
    doc = ev.to_json()
    assert doc["ip_length"] == 1505
    assert doc["drops"] == [
        {"function": "br_dev_queue_push_xmit", "reason": "NOT_SPECIFIED", "count": 2}
    ]


def test_emulation_is_named_as_a_stand_in_never_as_the_real_bug() -> None:
    ev = _edge(
        frames_in=2,
        frames_out=0,
        ip={"IpReasmOKs": 1},
        drops=[
            DropCount("nft_do_chain", "NETFILTER_DROP", 1),
            DropCount("skb_release_data", "NOT_SPECIFIED", 1, collateral=True),
        ],
        emulation=Emulation("XENVLAN-19b25856"),
        rule_hits=1,
    )
    line = ev.summary_line()
    assert (
        "dropped by the emulation's rule in XENVLAN-19b25856 (nft_do_chain NETFILTER_DROP " in line
    )
    assert "standing in for br_dev_queue_push_xmit of 2.6.17-2.6.34" in line
    assert "dropped in br_dev_queue_push_xmit" not in line
    assert "skb_release_data" not in line
    culprit = ev.culprit()
    assert culprit is not None and culprit.startswith("the emulation's rule in XENVLAN-19b25856")
    assert ev.to_json()["emulation"]["rule_hits"] == 1


def test_a_netfilter_drop_the_chain_did_not_count_is_not_the_emulation() -> None:
    ev = _edge(
        drops=[DropCount("nf_hook_slow", "NETFILTER_DROP", 2)],
        emulation=Emulation("XENVLAN-19b25856"),
        rule_hits=0,
    )
    assert ev.culprit() == "nf_hook_slow"
    assert "dropped in nf_hook_slow (NETFILTER_DROP) \u00d72" in ev.summary_line()


def test_untraced_and_counter_fallback() -> None:
    ev = _edge(
        traced=False,
        ports={"vnet0": {"rx_packets": 3}, "vnet1": {"tx_packets": 1}},
        notice="kernel drops not traced: cannot mount tracefs",
    )
    assert ev.summary_line() == (
        "1477 (IP 1505): in on vnet0 3 frames, out on vnet1 1 "
        "[kernel drops not traced: cannot mount tracefs]"
    )
    assert ev.culprit() is None
    passing = _edge(role="passing", size=1476, frames_in=2, frames_out=2)
    assert passing.summary_line() == (
        "1476 (IP 1504): in on vnet0 2 frames, no kernel drop traced, out on vnet1 2"
    )


def test_lab_key_falls_back_to_protocol_only() -> None:
    from dataclasses import dataclass

    from xenvlan.evidence.lab import cite_kernel, lab_key
    from xenvlan.evidence.model import EdgeReport

    @dataclass
    class G:
        name: str
        domain: str
        host_port: str | None
        mgmt_ip: str = "192.0.2.1"
        vlan_ip: str | None = None

    key, why = lab_key("qemu", [G("a", "xenvlan-nosuchlab-a", "vnet0")])
    assert key.pids == frozenset() and why is not None and "protocol only" in why
    key, why = lab_key("xen", [G("a", "d", "eth9")])
    assert why is not None and "vif" in why
    rep = EdgeReport(_edge(drops=[DropCount("br_dev_queue_push_xmit", "NOT_SPECIFIED", 2)]))
    assert cite_kernel("first fail IP 1505", [rep]) == (
        "first fail IP 1505; the kernel dropped the probes in br_dev_queue_push_xmit"
    )
    assert cite_kernel("x", [EdgeReport(_edge())]) == "x"


def test_inside_a_pid_namespace_the_pid_filter_widens_with_a_notice() -> None:
    from xenvlan.evidence.key import TrafficKey, traceable

    key = TrafficKey(pids=frozenset({4242}), source="qemu")
    assert traceable(key, initial_pidns=True) == (key, None)
    widened, notice = traceable(key, initial_pidns=False)
    assert widened.pids == frozenset() and widened.protocols == key.protocols
    assert notice is not None and "PID namespace" in notice
    assert traceable(TrafficKey(), initial_pidns=False)[1] is None, "nothing to widen"
