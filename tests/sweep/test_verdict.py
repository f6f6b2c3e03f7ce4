"""The verdict table: each rule from its evidence, and nothing beyond it."""

from __future__ import annotations

import pytest

from xenvlan.sweep.ping import PingResult
from xenvlan.sweep.verdict import VERDICT_CODES, Transition, aggregate, decide


def ok(size: int) -> PingResult:
    return PingResult(size, 3, 3, 0.5, None)


def lost(size: int, error: str | None = None, local: bool = False) -> PingResult:
    return PingResult(size, 3, 0, None, error, local)


def judge(
    last_pass: int,
    *,
    mtu: int | None = 1500,
    vlan: bool = True,
    error: str | None = None,
    local: bool = False,
    ports: list[tuple[str, int]] | None = None,
) -> tuple[str, str]:
    first = last_pass + 1
    samples = [ok(0), ok(last_pass), lost(first, error, local), lost(first, error, local),
               lost(65507)]  # fmt: skip
    v = decide(aggregate(samples), [Transition(last_pass, first)], lo=0, hi=65507, mtu=mtu,
               vlan=vlan, df=None, host_ports=ports)  # fmt: skip
    assert v.code in VERDICT_CODES
    return v.code, v.text


@pytest.mark.parametrize(
    ("last_pass", "kw", "code", "says"),
    [
        (1476, {}, "legacy-vlan-double-subtract", "MTU 1500 + 5"),
        (1476, {"vlan": False}, "cliff", "MTU + 5"),
        (1472, {}, "no-refrag", "MTU 1500 + 1"),
        (1372, {}, "path-mtu", "limits IP packets to 1400"),
        (1372, {"ports": [("vnet0", 1500), ("vnet1", 1400)]}, "path-mtu", "MTU 1400: vnet1"),
        (1376, {"ports": [("vnet1", 1400)]}, "path-mtu", "port MTU + 4"),
        (1372, {"ports": [("vnet0", 1500)]}, "path-mtu", "no listed host port"),
        (1472, {"error": "local: message too long, mtu=1500", "local": True}, "sender-mtu", "DF"),
        (1372, {"error": "frag-needed mtu=1400"}, "path-mtu", "frag-needed mtu=1400"),
        (1476, {"mtu": None}, "cliff", "unknown"),
        (3000, {}, "cliff", "matching no known signature"),
    ],
)
def test_single_cliff_rules(last_pass: int, kw: dict[str, object], code: str, says: str) -> None:
    got_code, text = judge(last_pass, **kw)  # type: ignore[arg-type]
    assert got_code == code
    assert says in text
    assert f"{last_pass} (IP {last_pass + 28}): 3/3 replies" in text
    assert f"{last_pass + 1} (IP {last_pass + 29}): 0/6 replies over 2 probes" in text


def test_no_cliff_claims_only_probed_sizes() -> None:
    v = decide(aggregate([ok(0), ok(1472), ok(65507)]), [], lo=0, hi=65507, mtu=1500,
               vlan=True, df=None)  # fmt: skip
    assert v.code == "no-cliff"
    assert "3 sizes from 0 to 65507" in v.text


def test_no_connectivity_names_what_was_checked() -> None:
    samples = [lost(0, "network-unreachable", True), lost(56, "network-unreachable", True)]
    v = decide(aggregate(samples), [], lo=0, hi=56, mtu=1500, vlan=True, df=None)
    assert v.code == "no-connectivity"
    assert "0/6 replies over 2 sizes" in v.text
    assert "network-unreachable" in v.text
    assert "could not send" in v.text


def test_window_is_irregular() -> None:
    samples = [ok(0), ok(999), lost(1000), lost(1000), lost(2000), lost(2000), ok(2001)]
    ts = [Transition(999, 1000), Transition(2001, 2000)]
    v = decide(aggregate(samples), ts, lo=0, hi=65507, mtu=1500, vlan=True, df=None)
    assert v.code == "irregular"
    assert "passes 0..999; fails 1000..2000; passes 2001" in v.text
