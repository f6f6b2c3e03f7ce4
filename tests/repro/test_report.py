"""The report's drop-point drawing, from recorded evidence documents."""

from __future__ import annotations

from pathlib import Path

from xenvlan.repro.report import _evidence_html, _path_svg

EMULATED = {
    "size": 1477,
    "ip_length": 1505,
    "role": "failing",
    "traced": True,
    "in_port": "vnet0",
    "out_port": "vnet1",
    "drops": [
        {"function": "nft_do_chain", "reason": "NETFILTER_DROP", "count": 2, "collateral": False},
        {"function": "skb_release_data", "reason": "NOT_SPECIFIED", "count": 4, "collateral": True},
    ],
    "culprit": "the emulation's rule in XENVLAN-19b25856 (nft_do_chain, NETFILTER_DROP), "
    "standing in for br_dev_queue_push_xmit of 2.6.17-2.6.34",
    "summary": "1477 (IP 1505): in on vnet0 4 frames, ...",
    "capture": "/tmp/r-captures/evidence/before-1477.pcapng",
}


def test_the_drop_point_is_marked_where_the_kernel_dropped() -> None:
    svg = _path_svg("before", EMULATED)
    assert "nft_do_chain &times;2" in svg, "collateral frees are not counted as the drop"
    assert "standing in for br_dev_queue_push_xmit" in svg
    assert svg.count('stroke="#c62828"') == 2, "red from the bridge on: netfilter dropped it"
    port = dict(EMULATED, drops=[{**EMULATED["drops"][0], "function": "br_dev_queue_push_xmit"}])
    assert _path_svg("x", port).count('stroke="#c62828"') == 1, "dropped at the egress port"


def test_a_delivered_size_has_no_drop_mark() -> None:
    ok = dict(EMULATED, size=1476, role="passing", drops=[], culprit=None)
    svg = _path_svg("before", ok)
    assert "&#x2716;" not in svg and "delivered" in svg


def test_captures_are_linked_relative_to_the_report() -> None:
    series = [("before fix", {"evidence": [{"failing": EMULATED, "passing": None}]})]
    page = _evidence_html(series, Path("/tmp"))
    assert 'href="r-captures/evidence/before-1477.pcapng"' in page


def test_the_page_renders_escaped_from_its_template() -> None:
    from xenvlan.repro.report import render_html
    from xenvlan.repro.run import ReproCode, ReproResult, ReproVerdict

    result = ReproResult(
        scenario="legacy-vlan", emulated=True, lab="seed",
        environment={"kernel": "<6.18>"}, restored=True,
        verdict=ReproVerdict(ReproCode.CLIFF_REMOVED, "a & b"),
    )  # fmt: skip
    page = render_html(result)
    assert page.startswith("<!doctype html>") and "EMULATED" in page
    assert "&lt;6.18&gt;" in page and "a &amp; b" in page and "<6.18>" not in page
    assert 'id="restored">yes<' in page
    assert "No failing edge was replayed" in page
