"""Lab files: the seed defaults, every validation rule, and a corpus of hostile files.

Each ``tests/data/labs/bad-*.toml`` starts with ``# expect: <text>``: loading it must raise a
SpecError whose single line contains that text (the field and the rule). ``good-*.toml`` load.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from xenvlan import spec
from xenvlan.errors import SpecError, XenvlanError

LABS = Path(__file__).parent / "data" / "labs"
EXAMPLES = Path(__file__).parent.parent / "examples"

# Corpus files that cannot carry a `# expect:` line (or whose first line is not UTF-8).
BINARY_CORPUS = {
    "bad-binary-garbage.bin": "lab file is not UTF-8 text",
    "bad-elf-header.bin": "not valid TOML",
    "bad-utf16.toml": "lab file is not UTF-8 text",
    "bad-latin1.toml": "lab file is not UTF-8 text",
}


def _expectation(path: Path) -> str:
    if path.name in BINARY_CORPUS:
        return BINARY_CORPUS[path.name]
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return first.removeprefix("# expect: ")


def _bad_files() -> list[Path]:
    return sorted(LABS.glob("bad-*"))


def _good_files() -> list[Path]:
    return sorted(LABS.glob("good-*.toml"))


def _one_line_error(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        spec.load(path)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, f"not one line: {msg!r}"
    assert "Traceback" not in msg
    return msg


def _err(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        spec.from_dict(data)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, f"not one line: {msg!r}"
    return msg


def _two(a: dict[str, Any] | None = None, b: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "guests": [
            {"name": "a", "vlan_ip": "11.11.4.2/24", **(a or {})},
            {"name": "b", "vlan_ip": "11.11.4.30/24", **(b or {})},
        ]
    }


# ------------------------------------------------------------------------------- defaults


def test_seed_defaults_are_the_seed_scenario() -> None:
    s = spec.seed()
    assert s.name == "seed"
    assert s.connect is None
    assert s.vlan.id == 3
    assert s.vlan.tool == "auto"
    assert s.vlan.parent == "eth0"
    assert s.vlan.ifname == "eth0.3"
    assert s.network.name == "default"
    assert s.network.bridge == "virbr0"
    assert s.network.subnet == ipaddress.IPv4Interface("192.168.122.1/24")
    assert [g.name for g in s.guests] == ["a", "b"]
    assert s.guest("a").vlan_ip == ipaddress.IPv4Interface("11.11.4.2/24")
    assert s.guest("b").vlan_ip == ipaddress.IPv4Interface("11.11.4.30/24")
    assert all(spec.MEMORY_MIN_MIB <= g.memory_mib <= spec.MEMORY_MAX_MIB for g in s.guests)
    assert s.image.kernel is None and s.image.initrd is None


def test_seed_example_file_is_the_seed() -> None:
    assert spec.load(EXAMPLES / "seed.toml") == spec.seed()


def test_empty_file_is_the_seed(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_bytes(b"")
    assert spec.load(empty) == spec.seed()
    assert spec.load(LABS / "good-empty.toml") == spec.seed()
    assert spec.load(LABS / "good-comments-only.toml") == spec.seed()


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    s = spec.load(path)
    assert len(s.guests) == 2


def test_vconfig_example() -> None:
    s = spec.load(EXAMPLES / "vconfig.toml")
    assert s.vlan.tool == "vconfig"
    assert s.vlan.id == 100
    assert s.vlan.ifname == "eth0.100"
    assert {str(g.vlan_ip.ip) for g in s.guests}.isdisjoint({"11.11.4.2", "11.11.4.30"})


def test_spec_is_frozen() -> None:
    s = spec.seed()
    with pytest.raises(AttributeError):
        s.name = "other"  # type: ignore[misc]


def test_guest_and_peer() -> None:
    s = spec.seed()
    assert s.peer("a").name == "b"
    assert s.peer("b").name == "a"
    with pytest.raises(SpecError, match="no guest 'c'"):
        s.guest("c")
    with pytest.raises(SpecError):
        s.peer("c")


def test_partial_guest_tables_take_seed_defaults() -> None:
    s = spec.from_dict({"guests": [{}, {"memory_mib": 256}]})
    assert [g.name for g in s.guests] == ["a", "b"]
    assert str(s.guests[1].vlan_ip) == "11.11.4.30/24"
    assert s.guests[1].memory_mib == 256


def test_error_is_a_spec_error_with_exit_code_2() -> None:
    assert issubclass(SpecError, XenvlanError)
    assert SpecError.exit_code == 2


# ------------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (0, "vlan.id: 0 is out of range 1..4094"),
        (4095, "vlan.id: 4095 is out of range"),
        (-1, "vlan.id: -1 is out of range"),
        ("3; reboot", "vlan.id: must be an integer, got str"),
        (3.5, "vlan.id: must be an integer, got float"),
        (3.0, "vlan.id: must be an integer, got float"),
        (True, "vlan.id: must be an integer, got bool"),
        (10**30, "vlan.id: a 100-bit number is out of range"),
        (-(10**30), "vlan.id: a 100-bit negative number is out of range"),
        pytest.param(10**5000, "vlan.id:", id="10**5000"),
        ([3], "vlan.id: must be an integer, got list"),
    ],
)
def test_vlan_id_rule(value: object, expect: str) -> None:
    assert expect in _err({"vlan": {"id": value}})


@pytest.mark.parametrize("vid", [1, 2, 3, 100, 4094])
def test_vlan_id_valid(vid: int) -> None:
    assert spec.from_dict({"vlan": {"id": vid}}).vlan.id == vid


@pytest.mark.parametrize("tool", ["auto", "ip", "vconfig"])
def test_vlan_tools(tool: str) -> None:
    assert spec.from_dict({"vlan": {"tool": tool}}).vlan.tool == tool


@pytest.mark.parametrize("tool", ["IP", "brctl", "", "ip;reboot", 1])
def test_vlan_tool_rule(tool: object) -> None:
    assert _err({"vlan": {"tool": tool}}).startswith("vlan.tool: ")


@pytest.mark.parametrize(
    "parent", ["eth0;reboot", "eth0 up", "$(reboot)", "", "eth0\n", "a" * 16, "\uff45\uff54\uff480"]
)
def test_vlan_parent_rule(parent: str) -> None:
    assert _err({"vlan": {"parent": parent}}).startswith("vlan.parent: ")


def test_vlan_parent_with_id_longer_than_ifnamsiz() -> None:
    # "eth0123456.4094" is 15 characters (fits IFNAMSIZ-1); one more is too long.
    assert spec.from_dict({"vlan": {"parent": "eth0123456", "id": 4094}}).vlan.ifname == (
        "eth0123456.4094"
    )
    assert _err({"vlan": {"parent": "eth01234567", "id": 4094}}).startswith("vlan.parent: ")


@pytest.mark.parametrize(
    ("a", "b", "expect"),
    [
        ("11.11.4.2/24", "11.11.5.30/24", "must be in one subnet"),
        ("11.11.4.2/24", "11.11.4.30/25", "must be in one subnet"),
        ("11.11.4.2/24", "11.11.4.2/24", "vlan_ip must differ"),
        ("11.11.4.2", "11.11.4.30/24", "guests[0].vlan_ip: '11.11.4.2' needs a prefix length"),
        ("11.11.4.0/24", "11.11.4.30/24", "guests[0].vlan_ip: 11.11.4.0/24 is the subnet's"),
        ("11.11.4.2/24", "11.11.4.255/24", "guests[1].vlan_ip: 11.11.4.255/24 is the subnet's"),
        ("11.11.4.2/32", "11.11.4.3/32", "guests[0].vlan_ip: prefix /32"),
        ("11.11.4.300/24", "11.11.4.30/24", "guests[0].vlan_ip:"),
        ("fd00::2/64", "fd00::3/64", "guests[0].vlan_ip:"),
        ("11.11.4.2/24\n", "11.11.4.30/24", "guests[0].vlan_ip:"),
        ("", "11.11.4.30/24", "guests[0].vlan_ip:"),
        ("/24", "11.11.4.30/24", "guests[0].vlan_ip:"),
    ],
)
def test_address_rules(a: str, b: str, expect: str) -> None:
    msg = _err(_two({"vlan_ip": a}, {"vlan_ip": b}))
    assert expect in msg
    assert "vlan_ip" in msg


def test_slash31_pair_is_valid() -> None:
    s = spec.from_dict(_two({"vlan_ip": "10.0.0.0/31"}, {"vlan_ip": "10.0.0.1/31"}))
    assert s.guests[0].vlan_ip.network == s.guests[1].vlan_ip.network


@pytest.mark.parametrize(
    "name",
    [
        "a;rm -rf /",
        "<x>",
        "a'b",
        'a"b',
        "a&b",
        "$(reboot)",
        "`id`",
        "café",
        "\uff41",  # fullwidth a
        "a" * 32,
        "Seed",
        "SEED",
        "",
        "1lab",
        "-lab",
        "a_b",
        "a.b",
        "../x",
        "a\n",
        "a\nb",
        "a\x00",
        " a",
    ],
)
@pytest.mark.parametrize("where", ["name", "network.name", "guests[0].name", "guests[1].name"])
def test_name_rule(name: str, where: str) -> None:
    if where == "name":
        data: dict[str, Any] = {"name": name}
    elif where == "network.name":
        data = {"network": {"name": name}}
    elif where == "guests[0].name":
        data = _two({"name": name})
    else:
        data = _two(None, {"name": name})
    msg = _err(data)
    assert msg.startswith(f"{where}: "), msg
    assert "must match" in msg


@pytest.mark.parametrize("name", ["a", "seed", "lab-2", "a" + "0" * 30, "x-y-z"])
def test_name_valid(name: str) -> None:
    assert spec.from_dict({"name": name}).name == name


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (95, "guests[0].memory_mib: 95 is out of range 96..16384"),
        (16385, "guests[0].memory_mib: 16385 is out of range"),
        (0, "guests[0].memory_mib: 0 is out of range"),
        (-128, "guests[0].memory_mib: -128 is out of range"),
        (10**30, "guests[0].memory_mib: a 100-bit number is out of range"),
        (2**64, "guests[0].memory_mib:"),
        (128.0, "guests[0].memory_mib: must be an integer, got float"),
        ("128M", "guests[0].memory_mib: must be an integer, got str"),
        (False, "guests[0].memory_mib: must be an integer, got bool"),
    ],
)
def test_memory_rule(value: object, expect: str) -> None:
    assert expect in _err(_two({"memory_mib": value}))


@pytest.mark.parametrize("value", [spec.MEMORY_MIN_MIB, 128, spec.MEMORY_MAX_MIB])
def test_memory_bounds_valid(value: int) -> None:
    assert spec.from_dict(_two(None, {"memory_mib": value})).guests[1].memory_mib == value


@pytest.mark.parametrize(("value", "ok"), [(0, False), (1, True), (8, True), (9, False)])
def test_vcpus_bounds(value: int, ok: bool) -> None:
    if ok:
        assert spec.from_dict(_two({"vcpus": value})).guests[0].vcpus == value
    else:
        assert _err(_two({"vcpus": value})).startswith("guests[0].vcpus: ")


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"mtu": 9000}, "mtu"),
        ({"vlan": {"vid": 3}}, "vlan.vid"),
        ({"network": {"mtu": 9000}}, "network.mtu"),
        (_two(None, {"ip": "1.2.3.4"}), "guests[1].ip"),
        (_two({"memory": 128}), "guests[0].memory"),
        ({"image": {"cmdline": "init=/bin/sh"}}, "image.cmdline"),
        ({"timeouts": {"ping": 3}}, "timeouts.ping"),
        ({"vlan": {"extra": {}}}, "vlan.extra"),
    ],
)
def test_unknown_keys_at_every_level(data: dict[str, Any], where: str) -> None:
    msg = _err(data)
    assert msg.startswith(f"{where}: unknown key (allowed: ")


@pytest.mark.parametrize("key", ["a\nb", "x\r\ny", "</name><x>", "a" * 500, "\u2028"])
def test_unknown_key_shown_on_one_line(key: str) -> None:
    msg = _err({key: 1})
    assert "unknown key" in msg
    assert len(msg) < 300


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        ({"vlan": 3}, "vlan: must be a table, got int"),
        ({"network": "default"}, "network: must be a table, got str"),
        ({"network": [{"name": "default"}]}, "network: must be a table, got list"),
        ({"image": "x"}, "image: must be a table"),
        ({"timeouts": 30}, "timeouts: must be a table"),
        ({"guests": "a,b"}, "guests: must be an array of tables"),
        ({"guests": {"name": "a"}}, "guests: must be an array of tables"),
        ({"guests": [1, {"name": "b"}]}, "guests: must be an array of tables"),
        ({"guests": []}, "guests: a lab has exactly two guests, got 0"),
        ({"guests": [{}]}, "guests: a lab has exactly two guests, got 1"),
        ({"guests": [{}, {}, {}]}, "guests: a lab has exactly two guests, got 3"),
        (_two(None, {"name": "a"}), "guests: names must differ"),
        ({"name": 7}, "name: must be a string, got int"),
        ({"connect": 1}, "connect: must be a string, got int"),
        ({"network": {"bridge": ["virbr0"]}}, "network.bridge: must be a string"),
        ({"timeouts": {"boot": "2m"}}, "timeouts.boot: must be a number of seconds"),
        ({"timeouts": {"boot": True}}, "timeouts.boot: must be a number of seconds"),
        ({"timeouts": {"boot": 0}}, "timeouts.boot: 0 is out of range"),
        ({"timeouts": {"ssh": float("nan")}}, "timeouts.ssh: nan is out of range"),
        ({"timeouts": {"boot": float("inf")}}, "timeouts.boot: inf is out of range"),
        pytest.param({"timeouts": {"boot": 10**5000}}, "timeouts.boot:", id="huge-timeout"),
        ({"image": {"kernel": "/k"}}, "image: give both kernel and initrd"),
        ({"image": {"initrd": "/i"}}, "image: give both kernel and initrd"),
        ({"image": {"kernel": "/k\x00", "initrd": "/i"}}, "image.kernel:"),
        ({"image": {"kernel": "/k", "initrd": ""}}, "image.initrd:"),
        ({"image": {"kernel": "/k", "initrd": "/i\n"}}, "image.initrd:"),
        ({"image": {"kernel": "/k\x1b[2J", "initrd": "/i"}}, "image.kernel:"),
    ],
)
def test_type_and_shape_rules(data: dict[str, Any], expect: str) -> None:
    assert expect in _err(data)


@pytest.mark.parametrize(
    "uri",
    [
        "ssh://root@host/",
        "qemu:///system\n",
        "qemu:///system;reboot",
        "qemu:///system && reboot",
        "qemu+ssh://h/system?command=/bin/sh",
        "lxc:///",
        "",
        "QEMU:///system",
    ],
)
def test_connect_rule(uri: str) -> None:
    assert _err({"connect": uri}).startswith("connect: ")


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "xen:///system",
        "test:///default",
        "qemu+ssh://h/system",
    ],
)
def test_connect_valid(uri: str) -> None:
    assert spec.from_dict({"connect": uri}).connect == uri


@pytest.mark.parametrize(
    ("subnet", "ok"),
    [
        ("192.168.122.1/24", True),
        ("10.9.0.1/29", True),
        ("192.168.122.1/30", False),
        ("192.168.122.0/24", False),
        ("192.168.122.255/24", False),
        ("192.168.122.1", False),
        ("fd00::1/64", False),
    ],
)
def test_network_subnet_rule(subnet: str, ok: bool) -> None:
    data = {"network": {"subnet": subnet}}
    if ok:
        assert str(spec.from_dict(data).network.subnet) == subnet
    else:
        assert _err(data).startswith("network.subnet: ")


@pytest.mark.parametrize("bridge", ["virbr0; reboot", "virbr0123456789ab", "", "br 0", "br0\n"])
def test_network_bridge_rule(bridge: str) -> None:
    assert _err({"network": {"bridge": bridge}}).startswith("network.bridge: ")


def test_image_paths() -> None:
    s = spec.from_dict({"image": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd.img"}})
    assert s.image.kernel == Path("/boot/vmlinuz")
    assert s.image.initrd == Path("/boot/initrd.img")


def test_timeouts_are_floats() -> None:
    s = spec.from_dict({"timeouts": {"boot": 5, "ssh": 1.5}})
    assert s.timeouts.boot == 5.0 and isinstance(s.timeouts.boot, float)
    assert s.timeouts.ssh == 1.5
    with pytest.raises(SpecError, match="define"):  # never enforced, so no longer accepted
        spec.from_dict({"timeouts": {"define": 30}})


# ------------------------------------------------------------------------------- files


def test_corpus_is_complete() -> None:
    bad, good = _bad_files(), _good_files()
    assert len(bad) >= 90, "the hostile corpus shrank"
    assert len(good) >= 10
    assert set(BINARY_CORPUS) <= {p.name for p in bad}
    for p in LABS.iterdir():
        assert p.name.startswith(("bad-", "good-")), f"{p.name}: name it bad-* or good-*"


@pytest.mark.parametrize("path", _bad_files(), ids=lambda p: p.name)
def test_bad_corpus(path: Path) -> None:
    msg = _one_line_error(path)
    assert msg.startswith(f"{path}: "), msg
    expect = _expectation(path)
    assert expect in msg, f"{path.name}: {msg!r} lacks {expect!r}"


@pytest.mark.parametrize("path", _good_files(), ids=lambda p: p.name)
def test_good_corpus(path: Path) -> None:
    s = spec.load(path)
    a, b = s.guests
    assert a.name != b.name
    assert a.vlan_ip.network == b.vlan_ip.network
    assert 1 <= s.vlan.id <= 4094


def test_good_inline_tables() -> None:
    s = spec.load(LABS / "good-inline.toml")
    assert (s.name, s.vlan.id, s.vlan.tool) == ("inline", 5, "vconfig")
    assert [g.name for g in s.guests] == ["x", "y"]


def test_missing_file(tmp_path: Path) -> None:
    msg = _one_line_error(tmp_path / "nope.toml")
    assert "cannot read lab file" in msg
    assert "No such file" in msg


def test_directory(tmp_path: Path) -> None:
    msg = _one_line_error(tmp_path)
    assert "cannot read lab file" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    p = tmp_path / "secret.toml"
    p.write_text("")
    p.chmod(0)
    assert "cannot read lab file" in _one_line_error(p)


def test_too_large_file(tmp_path: Path) -> None:
    p = tmp_path / "big.toml"
    p.write_bytes(b"# " + b"x" * spec.MAX_LAB_BYTES + b"\n")
    assert "larger than" in _one_line_error(p)


def test_device_file_is_not_read_forever() -> None:
    # /dev/zero never ends: the size cap makes it a clean error instead of eating memory.
    assert "larger than" in _one_line_error(Path("/dev/zero"))


def test_fifo_is_readable(tmp_path: Path) -> None:
    # `--lab <(generate-lab)` hands xenvlan a pipe; that must keep working.
    fifo = tmp_path / "lab.fifo"
    os.mkfifo(fifo)
    pid = os.fork()
    if pid == 0:  # child: write the lab and exit without running pytest's teardown
        try:
            with fifo.open("w") as f:
                f.write("[vlan]\nid = 7\n")
        finally:
            os._exit(0)
    try:
        assert spec.load(fifo).vlan.id == 7
    finally:
        os.waitpid(pid, 0)


def test_example_seed_toml_parses_as_toml() -> None:
    # The example shows every key; the loader must accept each of them.
    data = tomllib.loads((EXAMPLES / "seed.toml").read_text())
    assert set(data) >= {"name", "vlan", "network", "guests", "timeouts"}
    assert spec.from_dict(data) == spec.seed()
