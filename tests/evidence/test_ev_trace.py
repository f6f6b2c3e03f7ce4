"""The kfree_skb parser on recorded trace text, foreign noise included."""

from __future__ import annotations

from pathlib import Path

from xenvlan.evidence.trace import (
    ETH_P_IP,
    DropCount,
    Kallsyms,
    count_drops,
    needs_symbols,
    parse_line,
    parse_trace,
    select,
)

DATA = Path(__file__).parent.parent / "data" / "evidence"


def test_recorded_bridge_drop_parses_exactly() -> None:
    events = parse_trace((DATA / "bridge-port-mtu.trace").read_text())
    assert len(events) == 4
    first = events[0]
    assert (first.comm, first.pid, first.cpu, first.protocol) == ("ping", 10295, 1, ETH_P_IP)
    assert first.location == "br_dev_queue_push_xmit+0x46/0x200"
    assert first.function == "br_dev_queue_push_xmit"
    assert first.reason == "NOT_SPECIFIED"
    assert first.timestamp == 249.349119


def test_local_delivery_frees_are_not_drops() -> None:
    events = select(parse_trace((DATA / "bridge-port-mtu.trace").read_text()))
    assert count_drops(events) == [DropCount("br_dev_queue_push_xmit", "NOT_SPECIFIED", 2)]


def test_noise_is_filtered_by_protocol_pid_and_location() -> None:
    events = parse_trace((DATA / "mixed-noise.trace").read_text())
    assert len(events) == 14
    lab = select(events, pids={5120, 5127})  # the lab's QEMU threads
    # sk_stream_kill_queues runs in QEMU but is a socket teardown; ip6_rcv_core is IPv6/sshd.
    assert count_drops(lab) == [DropCount("br_dev_queue_push_xmit", "NOT_SPECIFIED", 1)]
    assert lab[0].comm == "CPU 0/TCG"
    any_task = {(d.function, d.reason): d.count for d in count_drops(select(events))}
    assert ("ip6_rcv_core", "OTHERHOST") not in any_task
    assert ("ip6_mc_input", "NOT_SPECIFIED") not in any_task
    assert ("sk_stream_kill_queues", "NOT_SPECIFIED") not in any_task
    assert ("tcp_data_queue", "TCP_OLD_DATA") not in any_task
    assert ("ping_rcv", "NO_SOCKET") not in any_task
    assert any_task[("nft_do_chain", "NETFILTER_DROP")] == 1
    assert any_task[("nf_hook_slow", "NETFILTER_DROP")] == 1


def test_frag_list_frees_are_collateral_and_last() -> None:
    drops = count_drops(select(parse_trace((DATA / "mixed-noise.trace").read_text())))
    assert drops[-1] == DropCount("skb_release_data", "NOT_SPECIFIED", 2, collateral=True)
    assert drops[-1].to_json() == {
        "function": "skb_release_data",
        "reason": "NOT_SPECIFIED",
        "count": 2,
        "collateral": True,
    }


def test_variants_record_tgid_no_reason_address_location() -> None:
    tgid = parse_line(
        "   qemu-system-x86-4242  ( 4240) [000] ..s1.   12.5: kfree_skb: skbaddr=00000000a "
        "rx_sk=0000000000000000 protocol=2048 location=nf_hook_slow+0x7d/0x110 "
        "reason: NETFILTER_DROP"
    )
    assert tgid is not None and tgid.pid == 4242 and tgid.comm == "qemu-system-x86"
    old = parse_line(
        "  vif1.0-q0-guest-rx-701 [001] ..s1   99.000001: kfree_skb: skbaddr=ffff8881 "
        "protocol=2048 location=ffffffff81a2b3c4"
    )
    assert old is not None and old.comm == "vif1.0-q0-guest-rx" and old.pid == 701
    assert old.reason is None and old.function is None
    assert count_drops([old])[0].function == "ffffffff81a2b3c4"


def test_garbage_and_other_events_are_ignored() -> None:
    assert parse_line("") is None
    assert parse_line("# tracer: nop") is None
    other = "   ping-1 [000] ..s1. 1.0: consume_skb: skbaddr=0 location=x+0x1/0x2"
    assert parse_line(other) is None
    assert parse_line("kfree_skb: location=br_dev_queue_push_xmit+0x46/0x200") is None
    assert parse_trace("\x00\xff garbage\n" * 3) == []


# Read off the nested Dom0 (Debian 6.1): `location=%p`, printed raw with options/hash-ptr 0.
KALLSYMS_61 = """\
ffffffff817c0210 T kfree_skb_list_reason
ffffffff817c02a0 T kfree_skb_reason
ffffffff817c0340 t skb_release_data
0000000000000000 A fixed_percpu_data
ffffffff81f00000 D some_data_symbol
ffffffffc047f670 t br_dev_queue_push_xmit\t[bridge]
ffffffffc047f870 t br_forward_finish\t[bridge]
"""
LINE_61 = (
    "  vif1.0-q0-guest-rx-701 [001] ..s1.   99.000001: kfree_skb: skbaddr=ffff888004a3b800 "
    "protocol=2048 location={loc} reason: NOT_SPECIFIED"
)


def test_kallsyms_names_raw_addresses_of_the_kernel_and_modules() -> None:
    syms = Kallsyms(KALLSYMS_61)
    assert syms.lookup(0xFFFFFFFFC047F6B6) == ("br_dev_queue_push_xmit", 0x46)
    assert syms.lookup(0xFFFFFFFF817C02A0) == ("kfree_skb_reason", 0)
    assert syms.lookup(0xFFFFFFFF81F00010) is None  # data, 7 MB past the last text symbol
    assert syms.lookup(0x6EF3E47A) is None  # a hashed pointer lies below every symbol
    assert not Kallsyms("0000000000000000 T kfree_skb_reason\n")  # kptr_restrict


def test_raw_location_is_named_only_when_symbols_are_given() -> None:
    syms = Kallsyms(KALLSYMS_61)
    line = LINE_61.format(loc="ffffffffc047f6b6")
    named = parse_line(line, syms)
    assert named is not None and named.function == "br_dev_queue_push_xmit"
    assert named.location == "br_dev_queue_push_xmit+0x46"
    bare = parse_line(line)
    assert bare is not None and bare.function is None and bare.location == "ffffffffc047f6b6"
    assert needs_symbols(line) and not needs_symbols(
        LINE_61.format(loc="br_dev_queue_push_xmit+0x46/0x200")
    )


def test_netback_frees_after_delivery_are_not_drops() -> None:
    """6.1's netback frees each skb copied into the guest with kfree_skb: seen on both sizes."""
    syms = Kallsyms(KALLSYMS_61 + "ffffffffc03910a0 t xenvif_rx_copy_flush\t[xen_netback]\n")
    events = parse_trace(
        LINE_61.format(loc="ffffffffc0391107") + "\n" + LINE_61.format(loc="ffffffffc047f6b6"),
        syms,
    )
    assert [ev.function for ev in events] == ["xenvif_rx_copy_flush", "br_dev_queue_push_xmit"]
    assert [ev.function for ev in select(events)] == ["br_dev_queue_push_xmit"]
