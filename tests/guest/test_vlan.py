"""Guest VLAN commands: quoting, /proc/net/vlan parsing, setup/read against replayed outputs.

The runner here is a fake that replays recorded guest output (tests/data/vlan/); the e2e suite
runs the same code against real guests.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xenvlan.errors import GuestError
from xenvlan.guest import vlan
from xenvlan.guest.shell import CommandResult

DATA = Path(__file__).parents[1] / "data" / "vlan"
ADDR = ipaddress.IPv4Interface("11.11.4.2/24")
HOSTILE_PARENTS = ["eth0;reboot", "$(reboot)", "`id`", "a b", "it's", 'q"q', "x\ny", "-rf", "*"]


def _rec(name: str) -> str:
    return (DATA / name).read_text()


@dataclass
class FakeRunner:
    """Replays results by the first word of the command; records every command line."""

    results: dict[str, list[CommandResult]]
    calls: list[str] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)

    def __call__(self, command: str, *, timeout: float) -> CommandResult:
        self.calls.append(command)
        self.timeouts.append(timeout)
        key = "read" if command.startswith("cat /proc/net/vlan/config") else command.split()[0]
        queue = self.results.get(key)
        if not queue:
            return CommandResult(0, "", "")
        return queue.pop(0) if len(queue) > 1 else queue[0]


def ok(out: str = "") -> CommandResult:
    return CommandResult(0, out, "")


def fail(err: str, status: int = 1) -> CommandResult:
    return CommandResult(status, "", err)


# ----------------------------------------------------------------------------- commands


def test_ip_commands_seed() -> None:
    assert vlan.ip_commands("eth0", 3, ADDR) == [
        "ip link add link eth0 name eth0.3 type vlan id 3",
        "ip addr add 11.11.4.2/24 dev eth0.3",
        "ip link set eth0.3 up",
    ]


def test_vconfig_commands_seed() -> None:
    assert vlan.vconfig_commands("eth0", 3, ADDR) == [
        "vconfig add eth0 3",
        "ifconfig eth0.3 11.11.4.2 netmask 255.255.255.0 up",
    ]


@pytest.mark.parametrize("parent", HOSTILE_PARENTS)
def test_ip_commands_quote_hostile_parent(parent: str) -> None:
    cmds = vlan.ip_commands(parent, 3, ADDR)
    assert shlex.split(cmds[0]) == [
        "ip",
        "link",
        "add",
        "link",
        parent,
        "name",
        f"{parent}.3",
        "type",
        "vlan",
        "id",
        "3",
    ]
    assert shlex.split(cmds[1]) == ["ip", "addr", "add", "11.11.4.2/24", "dev", f"{parent}.3"]
    assert shlex.split(cmds[2]) == ["ip", "link", "set", f"{parent}.3", "up"]
    for c in cmds:
        # Each command is exactly one simple command: no separator survives outside quotes.
        lexer = shlex.shlex(c, posix=True, punctuation_chars=";&|()<>")
        assert not {";", "&&", "||", "|", "&", "(", ")"} & set(lexer), c


@pytest.mark.parametrize("parent", HOSTILE_PARENTS)
def test_vconfig_commands_quote_hostile_parent(parent: str) -> None:
    add, conf = vlan.vconfig_commands(parent, 100, ipaddress.IPv4Interface("10.100.0.1/29"))
    assert shlex.split(add) == ["vconfig", "add", parent, "100"]
    assert shlex.split(conf) == [
        "ifconfig",
        f"{parent}.100",
        "10.100.0.1",
        "netmask",
        "255.255.255.248",
        "up",
    ]


def test_vid_must_be_an_int() -> None:
    with pytest.raises((ValueError, TypeError)):
        vlan.ip_commands("eth0", "3; reboot", ADDR)  # type: ignore[arg-type]


def test_setup_joined_command_keeps_quoting() -> None:
    run = FakeRunner({"read": [ok(_rec("read-ip-eth0.3.txt"))]})
    with pytest.raises(GuestError):
        vlan.setup(run, "eth0;reboot", 3, ADDR, "ip", "a")
    joined = run.calls[0]
    words = shlex.split(joined)
    assert "eth0;reboot" in words and "reboot" not in words


def test_interface_mtu_quotes() -> None:
    run = FakeRunner({"cat": [ok("1496\n")]})
    assert vlan.interface_mtu(run, "eth0.3;x", "a") == 1496
    assert shlex.split(run.calls[0]) == ["cat", "/sys/class/net/eth0.3;x/mtu"]


def test_interface_mtu_missing() -> None:
    run = FakeRunner({"cat": [fail("cat: can't open '/sys/class/net/eth9/mtu': No such file")]})
    with pytest.raises(GuestError, match="guest a: no interface eth9"):
        vlan.interface_mtu(run, "eth9", "a")


# ----------------------------------------------------------------------------- parsing


def test_parse_proc_vlan_recorded() -> None:
    assert vlan.parse_proc_vlan(_rec("proc-vlan-config-eth0.3.txt")) == {"eth0.3": (3, "eth0")}


def test_parse_proc_vlan_several() -> None:
    assert vlan.parse_proc_vlan(_rec("proc-vlan-config-several.txt")) == {
        "eth0.3": (3, "eth0"),
        "eth0.100": (100, "eth0"),
        "eth1.4094": (4094, "eth1"),
    }


@pytest.mark.parametrize(
    "text", [_rec("proc-vlan-config-empty.txt"), "", "garbage\n| |\nx | y | z\n"]
)
def test_parse_proc_vlan_nothing(text: str) -> None:
    assert vlan.parse_proc_vlan(text) == {}


def test_read_recorded_ip() -> None:
    run = FakeRunner({"read": [ok(_rec("read-ip-eth0.3.txt"))]})
    found = vlan.read(run, "a")
    assert set(found) == {"eth0.3"}
    v = found["eth0.3"]
    assert (v.name, v.vid, v.parent, v.address, v.mtu) == (
        "eth0.3",
        3,
        "eth0",
        "11.11.4.2/24",
        1500,
    )


def test_read_recorded_vconfig() -> None:
    run = FakeRunner({"read": [ok(_rec("read-vconfig-eth0.100.txt"))]})
    v = vlan.read(run, "b")["eth0.100"]
    assert (v.vid, v.address, v.mtu) == (100, "10.100.0.1/29", 1496)


def test_read_without_vlans() -> None:
    run = FakeRunner({"read": [ok(_rec("read-no-vlan.txt"))]})
    assert vlan.read(run, "a") == {}


def test_read_failure_is_one_line() -> None:
    run = FakeRunner({"read": [fail("sh: line 1\nsh: line 2\n", 127)]})
    with pytest.raises(GuestError) as info:
        vlan.read(run, "a")
    assert str(info.value).startswith("guest a: cannot read VLAN state")
    assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------------- setup


def test_setup_with_ip() -> None:
    run = FakeRunner({"read": [ok(_rec("read-ip-eth0.3.txt"))]})
    made = vlan.setup(run, "eth0", 3, ADDR, "ip", "a")
    assert made.tool == "ip"
    assert (made.name, made.vid, made.parent, made.address) == ("eth0.3", 3, "eth0", "11.11.4.2/24")
    assert run.calls[0] == " && ".join(vlan.ip_commands("eth0", 3, ADDR))
    assert not any(c.startswith("vconfig") for c in run.calls)
    assert all(t > 0 for t in run.timeouts)


def test_setup_with_vconfig() -> None:
    addr = ipaddress.IPv4Interface("10.100.0.1/29")
    run = FakeRunner({"read": [ok(_rec("read-vconfig-eth0.100.txt"))]})
    made = vlan.setup(run, "eth0", 100, addr, "vconfig", "b")
    assert made.tool == "vconfig"
    assert run.calls[0] == " && ".join(vlan.vconfig_commands("eth0", 100, addr))
    assert not any(c.startswith("ip link add") for c in run.calls)


def test_setup_auto_falls_back_to_vconfig() -> None:
    run = FakeRunner(
        {
            "ip": [fail("ip: RTNETLINK answers: Operation not supported"), ok()],
            "read": [ok(_rec("read-ip-eth0.3.txt"))],
        }
    )
    made = vlan.setup(run, "eth0", 3, ADDR, "auto", "a")
    assert made.tool == "vconfig"
    assert run.calls[0].startswith("ip link add")
    assert run.calls[1] == "ip link del eth0.3 2>/dev/null; true"  # half-made link removed
    assert run.calls[2].startswith("vconfig add eth0 3")


def test_setup_auto_prefers_ip() -> None:
    run = FakeRunner({"read": [ok(_rec("read-ip-eth0.3.txt"))]})
    assert vlan.setup(run, "eth0", 3, ADDR, "auto", "a").tool == "ip"
    assert len([c for c in run.calls if not c.startswith("cat ")]) == 1


def test_setup_both_tools_fail_names_both() -> None:
    run = FakeRunner(
        {
            "ip": [fail("ip: RTNETLINK answers: Operation not supported"), ok()],
            "vconfig": [fail("vconfig: ioctl error for add: Package not installed\n", 1)],
        }
    )
    with pytest.raises(GuestError) as info:
        vlan.setup(run, "eth0", 3, ADDR, "auto", "a")
    msg = str(info.value)
    assert msg.startswith("guest a: cannot create eth0.3: ")
    assert "ip: ip: RTNETLINK answers: Operation not supported" in msg
    assert "vconfig: vconfig: ioctl error for add: Package not installed" in msg
    assert "['" not in msg, "a Python list leaked into the message"
    assert len(msg.splitlines()) == 1


def test_setup_failure_without_output() -> None:
    run = FakeRunner({"ip": [CommandResult(2, "", "")]})
    with pytest.raises(GuestError, match="ip: exit status 2"):
        vlan.setup(run, "eth0", 3, ADDR, "ip", "a")


def test_setup_verifies_proc_vlan() -> None:
    run = FakeRunner({"read": [ok(_rec("read-no-vlan.txt"))]})
    with pytest.raises(
        GuestError, match=re.escape("eth0.3 is missing from /proc/net/vlan/config after ip")
    ):
        vlan.setup(run, "eth0", 3, ADDR, "ip", "a")


def test_setup_verifies_vid() -> None:
    wrong = _rec("read-ip-eth0.3.txt").replace("eth0.3         | 3  | eth0", "eth0.3 | 4 | eth0")
    run = FakeRunner({"read": [ok(wrong)]})
    with pytest.raises(GuestError, match="missing from /proc/net/vlan/config"):
        vlan.setup(run, "eth0", 3, ADDR, "ip", "a")


def test_setup_verifies_address() -> None:
    run = FakeRunner({"read": [ok(_rec("read-ip-eth0.3.txt"))]})
    other = ipaddress.IPv4Interface("11.11.4.30/24")
    with pytest.raises(
        GuestError, match=re.escape("has address 11.11.4.2/24, expected 11.11.4.30/24")
    ):
        vlan.setup(run, "eth0", 3, other, "ip", "b")


def test_vlan_if_name() -> None:
    assert vlan.VlanIf("eth0.3", 3, "eth0", None, None, "ip").name == "eth0.3"
