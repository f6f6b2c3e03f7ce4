"""Property-based fuzzing of the lab loader.

Properties:
- any TOML-shaped dict, any text, any bytes: the loader returns a LabSpec or raises a one-line
  SpecError, never anything else;
- a dict that is valid except for one hostile leaf is rejected with a message naming that leaf;
- valid labs written out as TOML load back to the same spec (and that spec round-trips again).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xenvlan import spec
from xenvlan.errors import SpecError

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- TOML writer


def _toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(data: dict[str, Any]) -> str:
    """Top-level scalars, then [tables] and [[arrays of tables]] (inline below that)."""
    lines: list[str] = []
    for k, v in data.items():
        is_table = isinstance(v, dict)
        is_aot = isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        if not is_table and not is_aot:
            lines.append(f"{_toml_str(k)} = {_toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{_toml_str(k)}]")
            lines += [f"{_toml_str(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"[[{_toml_str(k)}]]")
                lines += [f"{_toml_str(kk)} = {_toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def spec_to_dict(s: spec.LabSpec) -> dict[str, Any]:
    """The lab file that describes `s` completely."""
    d: dict[str, Any] = {"name": s.name}
    if s.connect is not None:
        d["connect"] = s.connect
    d["vlan"] = {"id": s.vlan.id, "tool": s.vlan.tool, "parent": s.vlan.parent}
    d["network"] = {
        "name": s.network.name,
        "bridge": s.network.bridge,
        "subnet": str(s.network.subnet),
    }
    d["guests"] = [
        {"name": g.name, "vlan_ip": str(g.vlan_ip), "memory_mib": g.memory_mib, "vcpus": g.vcpus}
        for g in s.guests
    ]
    if s.image.kernel is not None and s.image.initrd is not None:
        d["image"] = {"kernel": str(s.image.kernel), "initrd": str(s.image.initrd)}
    d["timeouts"] = {"boot": s.timeouts.boot, "ssh": s.timeouts.ssh}
    return d


def test_writer_round_trips_through_tomllib() -> None:
    import tomllib

    data = {"a": 'x"\\\n\x7f\x00é', "t": {"f": 1.5, "n": True}, "g": [{"i": 1}, {"i": -2}]}
    assert tomllib.loads(to_toml(data)) == data


# --------------------------------------------------------------------------- strategies

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    st.sampled_from(["3; reboot", "<x>", "a'b", "$(id)", "11.11.4.2/24", "eth0", "auto"]),
    st.dates(),
    st.datetimes(),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=12,
)
KNOWN = {
    "": ["name", "connect", "vlan", "network", "guests", "image", "timeouts"],
    "vlan": ["id", "tool", "parent"],
    "network": ["name", "bridge", "subnet"],
    "guest": ["name", "vlan_ip", "memory_mib", "vcpus"],
    "image": ["kernel", "initrd"],
    "timeouts": ["boot", "ssh"],
}
keys = st.one_of(st.sampled_from(sorted({k for ks in KNOWN.values() for k in ks})), texts)


def _table(level: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.one_of(st.sampled_from(KNOWN[level]), keys), toml_values, max_size=5)


shaped_labs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.from_regex(spec.NAME_RE, fullmatch=True), toml_values),
        "connect": st.one_of(st.sampled_from(["test:///default", "qemu:///system"]), toml_values),
        "vlan": st.one_of(_table("vlan"), toml_values),
        "network": st.one_of(_table("network"), toml_values),
        "guests": st.one_of(st.lists(_table("guest"), max_size=3), toml_values),
        "image": st.one_of(_table("image"), toml_values),
        "timeouts": st.one_of(_table("timeouts"), toml_values),
    },
)


def _check(result: object) -> None:
    assert isinstance(result, spec.LabSpec)
    a, b = result.guests
    assert a.name != b.name
    assert a.vlan_ip.network == b.vlan_ip.network
    assert a.vlan_ip.ip != b.vlan_ip.ip
    assert 1 <= result.vlan.id <= 4094
    assert spec.NAME_RE.fullmatch(result.name)
    assert all(spec.NAME_RE.fullmatch(g.name) for g in result.guests)


def _one_line(exc: SpecError) -> None:
    msg = str(exc)
    assert msg
    assert len(msg.splitlines()) == 1, repr(msg)
    assert len(msg) < 400, repr(msg)


# --------------------------------------------------------------------------- properties


@FUZZ
@given(st.dictionaries(keys, toml_values, max_size=6))
def test_random_dicts_only_raise_spec_error(data: dict[str, Any]) -> None:
    try:
        _check(spec.from_dict(data))
    except SpecError as exc:
        _one_line(exc)


@FUZZ
@given(shaped_labs)
def test_lab_shaped_dicts_only_raise_spec_error(data: dict[str, Any]) -> None:
    try:
        _check(spec.from_dict(data))
    except SpecError as exc:
        _one_line(exc)


@FUZZ
@given(shaped_labs)
def test_lab_shaped_files_only_raise_spec_error(tmp_path: Path, data: dict[str, Any]) -> None:
    p = tmp_path / "lab.toml"
    try:
        p.write_text(to_toml(data), encoding="utf-8")
    except (TypeError, UnicodeEncodeError):
        assume(False)
    try:
        _check(spec.load(p))
    except SpecError as exc:
        _one_line(exc)
        assert str(exc).startswith(f"{p}: ")


@FUZZ
@given(st.text(max_size=300))
def test_random_text_only_raises_spec_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "lab.toml"
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        _check(spec.load(p))
    except SpecError as exc:
        _one_line(exc)


toml_ish = st.lists(
    st.sampled_from(
        [
            "[vlan]",
            "[[guests]]",
            "[network]",
            "id = ",
            "name = ",
            '"',
            "'",
            "=",
            "\n",
            "[",
            "]",
            "{",
            "}",
            ",",
            "3",
            "0x",
            "1e9",
            "nan",
            "true",
            ".",
            "\\u0000",
            "#",
            " ",
            "9" * 50,
        ]
    ),
    max_size=60,
).map("".join)


@FUZZ
@given(toml_ish)
def test_toml_like_text_only_raises_spec_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "lab.toml"
    p.write_text(text, encoding="utf-8")
    try:
        _check(spec.load(p))
    except SpecError as exc:
        _one_line(exc)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_spec_error(tmp_path: Path, raw: bytes) -> None:
    p = tmp_path / "lab.toml"
    p.write_bytes(raw)
    try:
        _check(spec.load(p))
    except SpecError as exc:
        _one_line(exc)


# One hostile leaf in an otherwise valid lab must be named in the error.
LEAVES: list[tuple[tuple[str | int, ...], str]] = [
    (("name",), "name"),
    (("connect",), "connect"),
    (("vlan", "id"), "vlan.id"),
    (("vlan", "tool"), "vlan.tool"),
    (("vlan", "parent"), "vlan.parent"),
    (("network", "name"), "network.name"),
    (("network", "bridge"), "network.bridge"),
    (("network", "subnet"), "network.subnet"),
    (("guests", 0, "name"), "guests[0].name"),
    (("guests", 1, "vlan_ip"), "guests"),  # either guests[1].vlan_ip or the pair rule
    (("guests", 0, "memory_mib"), "guests[0].memory_mib"),
    (("guests", 1, "vcpus"), "guests[1].vcpus"),
    (("timeouts", "boot"), "timeouts.boot"),
]


def _seed_dict() -> dict[str, Any]:
    return spec_to_dict(spec.seed())


@FUZZ
@given(st.sampled_from(LEAVES), toml_values)
def test_one_hostile_leaf_is_named(leaf: tuple[tuple[str | int, ...], str], value: Any) -> None:
    path, where = leaf
    data = _seed_dict()
    node: Any = data
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    try:
        s = spec.from_dict(data)
    except SpecError as exc:
        _one_line(exc)
        assert str(exc).startswith(where), f"{where}: {exc}"
        return
    _check(s)  # the value happened to be valid: then it must be what we put there
    got: Any = spec_to_dict(s)
    for step in path:
        got = got[step]
    assert got == value or str(got) == str(value)


# --------------------------------------------------------------------------- valid labs


@st.composite
def valid_labs(draw: st.DrawFn) -> dict[str, Any]:
    prefix = draw(st.integers(min_value=8, max_value=30))
    base = draw(st.integers(min_value=1, max_value=2**32 - 1))
    net = ipaddress.IPv4Network((base, prefix), strict=False)
    hosts = (
        [net.network_address, net.broadcast_address]
        if prefix == 31
        else [net.network_address + 1, net.broadcast_address - 1]
    )
    lo, hi = int(hosts[0]), int(hosts[1])
    ia = draw(st.integers(min_value=lo, max_value=hi))
    ib = draw(st.integers(min_value=lo, max_value=hi).filter(lambda x: x != ia))
    names = st.from_regex(spec.NAME_RE, fullmatch=True)
    ga, gb = draw(st.lists(names, min_size=2, max_size=2, unique=True))
    parent = draw(st.sampled_from(["eth0", "ens3", "enX0", "eth1"]))
    sub_prefix = draw(st.integers(min_value=8, max_value=29))
    sub_net = ipaddress.IPv4Network((draw(st.integers(1, 2**32 - 1)), sub_prefix), strict=False)
    sub_ip = sub_net.network_address + draw(st.integers(1, sub_net.num_addresses - 2))
    data: dict[str, Any] = {
        "name": draw(names),
        "vlan": {
            "id": draw(st.integers(min_value=1, max_value=4094)),
            "tool": draw(st.sampled_from(spec.VLAN_TOOLS)),
            "parent": parent,
        },
        "network": {
            "name": draw(names),
            "bridge": draw(st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True)),
            "subnet": f"{sub_ip}/{sub_prefix}",
        },
        "guests": [
            {
                "name": ga,
                "vlan_ip": f"{ipaddress.IPv4Address(ia)}/{prefix}",
                "memory_mib": draw(st.integers(spec.MEMORY_MIN_MIB, spec.MEMORY_MAX_MIB)),
                "vcpus": draw(st.integers(1, 8)),
            },
            {
                "name": gb,
                "vlan_ip": f"{ipaddress.IPv4Address(ib)}/{prefix}",
                "memory_mib": draw(st.integers(spec.MEMORY_MIN_MIB, spec.MEMORY_MAX_MIB)),
                "vcpus": draw(st.integers(1, 8)),
            },
        ],
        "timeouts": {
            "boot": float(draw(st.integers(1, 3600))),
            "ssh": draw(st.floats(1, 3600)),
        },
    }
    if draw(st.booleans()):
        data["connect"] = draw(
            st.sampled_from(["qemu:///system", "xen:///system", "test:///default"])
        )
    if draw(st.booleans()):
        segment = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._ -]{0,8}", fullmatch=True)
        rel = st.lists(segment, min_size=1, max_size=4).map("/".join)
        path = st.one_of(rel, rel.map(lambda r: "/" + r))  # as pathlib spells it
        data["image"] = {"kernel": draw(path), "initrd": draw(path)}
    return data


@FUZZ
@given(valid_labs())
def test_valid_labs_round_trip(tmp_path: Path, data: dict[str, Any]) -> None:
    assume(len(f"{data['vlan']['parent']}.{data['vlan']['id']}") <= 15)
    p = tmp_path / "lab.toml"
    p.write_text(to_toml(data), encoding="utf-8")
    s = spec.load(p)
    _check(s)
    assert spec_to_dict(s) == data  # nothing lost, nothing invented
    p.write_text(to_toml(spec_to_dict(s)), encoding="utf-8")
    assert spec.load(p) == s


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("examples/*.toml")))
def test_examples_round_trip(tmp_path: Path, path: Path) -> None:
    s = spec.load(path)
    p = tmp_path / "again.toml"
    p.write_text(to_toml(spec_to_dict(s)), encoding="utf-8")
    assert spec.load(p) == s
