"""Real sysctls and netlink inside network namespaces created by the test (never the host's).

The code under test runs in `ip netns exec NS python3 ...` children: /proc/sys/net and /sys
then show NS, exactly as when the CLI is run under `ip netns exec` by the sandbox.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST_BRIDGE = Path("/proc/sys/net/bridge")
_COUNTER = itertools.count()
DEFAULTS = {
    "bridge-nf-call-arptables": "1",
    "bridge-nf-call-ip6tables": "1",
    "bridge-nf-call-iptables": "1",
    "bridge-nf-filter-pppoe-tagged": "0",
    "bridge-nf-filter-vlan-tagged": "0",
    "bridge-nf-pass-vlan-input-dev": "0",
}
# Run xenvlan.cli.main with only this verbs (independent of the other verb modules).
CLI_IMPORT = (
    "import sys, types; from xenvlan.cli import diagnose, fix; "
    "sys.modules['xenvlan.cli.verbs'] = "
    "types.SimpleNamespace(modules_for=lambda argv: [diagnose, fix]); "
    "from xenvlan.cli import main; "
)
CLI = CLI_IMPORT + "sys.argv[0] = 'xenvlan'; main()"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root + ip"),
]


def _host_values() -> dict[str, str]:
    if not HOST_BRIDGE.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(HOST_BRIDGE.iterdir())}


@pytest.fixture(scope="module", autouse=True)
def host_untouched() -> Iterator[None]:
    before = _host_values()
    yield
    assert _host_values() == before, "the host's own bridge sysctls changed"


class NS:
    """A namespace made by this test, with helpers that run code inside it."""

    def __init__(self, name: str, state: Path) -> None:
        self.name = name
        self.env = {**os.environ, "XENVLAN_STATE_DIR": str(state), "PYTHONPATH": str(REPO)}
        self.env.pop("XENVLAN_FAULT", None)

    def run(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.name, *argv]
        return subprocess.run(cmd, capture_output=True, text=True, env=env or self.env, timeout=60)

    def sh(self, script: str) -> str:
        done = self.run("sh", "-ec", script)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def py(self, code: str) -> str:
        done = self.run(sys.executable, "-c", code)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-c", CLI, *args, env=env)

    def snapshot(self) -> dict[str, str]:
        out = self.sh(
            "for f in /proc/sys/net/bridge/* /sys/class/net/*/bridge/nf_call_*; do "
            '[ -e "$f" ] && echo "$f=$(cat $f)"; done; true'
        )
        return dict(line.split("=", 1) for line in out.splitlines())

    def set(self, path: str, value: str) -> None:
        self.sh(f"echo {value} > {path}")

    @property
    def journal_dir(self) -> Path:
        return Path(self.env["XENVLAN_STATE_DIR"]) / "journal"

    def journals(self) -> list[Path]:
        return sorted(self.journal_dir.glob("*.json")) if self.journal_dir.exists() else []


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[NS]:
    name = f"dom0test-{os.getpid()}-{next(_COUNTER)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield NS(name, tmp_path / "state")
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def lab(ns: NS) -> NS:
    """virbr0 with a tap (vnet0, MTU 1500) and a veth (vnet1, MTU 1400): a modern-kernel cliff."""
    ns.sh(
        "ip link add virbr0 type bridge; ip link set virbr0 up;"
        "ip tuntap add mode tap name vnet0; ip link set vnet0 master virbr0;"
        "ip link add vnet1 type veth peer name vnet1p; ip link set vnet1 mtu 1400;"
        "ip link set vnet1 master virbr0"
    )
    return ns


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenvlan: error: "), done.stderr
    return lines[0]


# -- namespace sanity ---------------------------------------------------------------------------


def test_fresh_namespace_has_defaults_and_is_independent(ns: NS) -> None:
    values = {k.rsplit("/", 1)[1]: v for k, v in ns.snapshot().items()}
    assert values == DEFAULTS
    host = _host_values()
    ns.set("/proc/sys/net/bridge/bridge-nf-call-iptables", "0")
    assert _host_values() == host


# -- apply / revert -----------------------------------------------------------------------------

CASES = {
    "call-iptables": ({}, ["/proc/sys/net/bridge/bridge-nf-call-iptables"]),
    "call-all": (
        {},
        [
            f"/proc/sys/net/bridge/bridge-nf-call-{k}"
            for k in ("iptables", "ip6tables", "arptables")
        ],
    ),
    "vlan-tagged": (
        {"/proc/sys/net/bridge/bridge-nf-filter-vlan-tagged": "1"},
        ["/proc/sys/net/bridge/bridge-nf-filter-vlan-tagged"],
    ),
    "bridge": (
        {
            "/proc/sys/net/bridge/bridge-nf-call-iptables": "0",
            "/sys/class/net/virbr0/bridge/nf_call_iptables": "1",
        },
        ["/sys/class/net/virbr0/bridge/nf_call_iptables"],
    ),
}


@pytest.mark.parametrize("method", list(CASES))
def test_apply_then_revert_restores_everything(lab: NS, method: str) -> None:
    setup, targets = CASES[method]
    for path, value in setup.items():
        lab.set(path, value)
    before = lab.snapshot()
    done = lab.cli("fix", "apply", "--method", method, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "disables" in done.stderr  # the explanation comes first (stderr under --json)
    assert sorted(c["path"] for c in report["changes"]) == sorted(targets)
    after = lab.snapshot()
    assert {k for k in before if before[k] != after[k]} == set(targets)
    assert all(after[t] == "0" for t in targets)

    status = json.loads(lab.cli("fix", "status", "--json").stdout)
    assert status["pending"] is True
    assert {e["key"]: (e["original"], e["current"]) for e in status["entries"]} == {
        t: (before[t], "0") for t in targets
    }

    done = lab.cli("fix", "revert", "--json")
    assert done.returncode == 0, done.stderr
    assert lab.snapshot() == before
    assert lab.journals() == []
    again = lab.cli("fix", "revert")
    assert again.returncode == 0 and "nothing to revert" in again.stdout
    assert json.loads(lab.cli("fix", "status", "--json").stdout)["pending"] is False


def test_kill_9_between_journal_and_write(lab: NS) -> None:
    before = lab.snapshot()
    env = {**lab.env, "XENVLAN_FAULT": "after-journal:kill"}
    done = lab.cli("fix", "apply", env=env)
    assert done.returncode in (-9, 137), (done.returncode, done.stderr)
    assert lab.snapshot() == before  # killed before the write
    (journal,) = lab.journals()
    assert json.loads(journal.read_text())["entries"][0]["original"] == "1"
    done = lab.cli("fix", "revert", "--json")
    assert done.returncode == 0, done.stderr
    assert [a["result"] for a in json.loads(done.stdout)["reverted"]] == ["unchanged"]
    assert lab.snapshot() == before and lab.journals() == []


def test_double_apply_keeps_first_originals(lab: NS) -> None:
    before = lab.snapshot()
    assert lab.cli("fix", "apply").returncode == 0
    # someone flips it back by hand; a second apply must not record the new "1" over the first
    lab.set("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")
    assert lab.cli("fix", "apply").returncode == 0
    assert lab.cli("fix", "apply", "--method", "call-all").returncode == 0
    (journal,) = lab.journals()
    entries = json.loads(journal.read_text())["entries"]
    keys = [e["key"].rsplit("/", 1)[1] for e in entries]
    assert keys == [
        "bridge-nf-call-iptables",
        "bridge-nf-call-ip6tables",
        "bridge-nf-call-arptables",
    ]
    assert [e["original"] for e in entries] == ["1", "1", "1"]
    assert lab.cli("fix", "revert").returncode == 0
    assert lab.snapshot() == before


def test_persist_into_temp_root(lab: NS, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/sysctl.d").mkdir(parents=True)
    (root / "etc/modules-load.d").mkdir(parents=True)
    mine = root / "etc/modules-load.d/xenvlan-br_netfilter.conf"
    mine.write_text("# an admin's own file\nbr_netfilter\n")
    mine.chmod(0o600)

    def tree() -> dict[str, tuple[bytes, int]]:
        return {
            str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    files_before, before = tree(), lab.snapshot()
    done = lab.cli("fix", "apply", "-m", "call-all", "--persist", "--root", str(root), "--json")
    assert done.returncode == 0, done.stderr
    dropin = (root / "etc/sysctl.d/90-xenvlan.conf").read_text()
    for k in ("iptables", "ip6tables", "arptables"):
        assert f"net.bridge.bridge-nf-call-{k} = 0\n" in dropin
    assert mine.read_text().splitlines()[-1] == "br_netfilter"
    done = lab.cli("fix", "revert")
    assert done.returncode == 0, done.stderr
    assert tree() == files_before and lab.snapshot() == before


# -- refusals: one line, non-zero, nothing changed ----------------------------------------------


def _refused(ns: NS, *args: str, code: int | None = None, env: dict[str, str] | None = None) -> str:
    before = ns.snapshot()
    done = ns.cli(*args, env=env)
    line = _one_line_error(done)
    if code is not None:
        assert done.returncode == code, line
    assert ns.snapshot() == before and ns.journals() == []
    return line


def test_refuse_unknown_method(lab: NS) -> None:
    assert "unknown fix method" in _refused(lab, "fix", "apply", "--method", "nope", code=2)


def test_refuse_value_already_zero(lab: NS) -> None:
    lab.set("/proc/sys/net/bridge/bridge-nf-call-iptables", "0")
    assert "already 0" in _refused(lab, "fix", "apply", code=5)
    assert "already 0" in _refused(lab, "fix", "apply", "-m", "vlan-tagged", code=5)


def test_refuse_bridge_method_when_global_is_on(lab: NS) -> None:
    line = _refused(lab, "fix", "apply", "-m", "bridge", code=5)
    assert "OR-ed" in line
    assert "no bridge named" in _refused(lab, "fix", "apply", "-m", "bridge", "--bridge", "br9")


def test_refuse_persist_without_dropin_dirs(lab: NS, tmp_path: Path) -> None:
    line = _refused(lab, "fix", "apply", "--persist", "--root", str(tmp_path / "empty"), code=5)
    assert "does not exist" in line


def test_refuse_missing_br_netfilter(lab: NS, tmp_path: Path) -> None:
    fake = tmp_path / "proc"
    (fake / "sys/net").mkdir(parents=True)
    line = _refused(lab, "fix", "apply", "--proc-root", str(fake), code=5)
    assert "br_netfilter is not loaded" in line


def test_refuse_read_only_proc(lab: NS) -> None:
    b = "/proc/sys/net/bridge"
    script = (
        f"mount --bind {b} {b} && mount -o remount,bind,ro {b} && "
        f'exec {sys.executable} -c "$0" fix apply'
    )
    before = lab.snapshot()
    done = lab.run("sh", "-c", script, CLI)
    assert "read-only" in _one_line_error(done)
    assert lab.snapshot() == before and lab.journals() == []


def test_refuse_without_permission(lab: NS) -> None:
    # Import as root (the interpreter lives under /root), then drop to nobody before acting;
    # the API is called directly with the same one-line mapping as xenvlan.cli.main.
    code = (
        "import os, sys; from xenvlan.host.fix import fix_apply; "
        "from xenvlan.errors import XenvlanError; os.setgroups([]); "
        "os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "try:\n    fix_apply()\n"
        "except XenvlanError as exc:\n"
        "    print(f'xenvlan: error: {exc}', file=sys.stderr); sys.exit(exc.exit_code)\n"
    )
    before = lab.snapshot()
    done = lab.run(sys.executable, "-c", code)
    assert "Permission denied" in _one_line_error(done)
    assert done.returncode == 5
    assert lab.snapshot() == before and lab.journals() == []


def test_refuse_journal_from_another_namespace(lab: NS, tmp_path: Path) -> None:
    other_name = f"dom0test-{os.getpid()}-{next(_COUNTER)}"
    subprocess.run(["ip", "netns", "add", other_name], check=True)
    try:
        other = NS(other_name, Path(lab.env["XENVLAN_STATE_DIR"]))
        assert lab.cli("fix", "apply").returncode == 0
        (theirs,) = lab.journals()
        inode = int(other.py("import os; print(os.stat('/proc/self/ns/net').st_ino)"))
        mine = theirs.with_name(f"netns-{inode}.json")
        shutil.copy(theirs, mine)
        before = other.snapshot()
        line = _one_line_error(other.cli("fix", "revert"))
        assert "belongs to network namespace" in line
        assert other.snapshot() == before and mine.exists()
        assert "belongs to network namespace" in _one_line_error(other.cli("fix", "apply"))
        assert other.snapshot() == before
        mine.unlink()
        assert lab.cli("fix", "revert").returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", other_name], check=False)


# -- diagnose -----------------------------------------------------------------------------------


def _diagnose(ns: NS, *args: str) -> Any:
    done = ns.cli("diagnose", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_diagnose_bridge_ports_mtus_without_conntrack(lab: NS) -> None:
    data = _diagnose(lab, "--lab-port", "vnet0=a", "--lab-port", "vnet1=b")
    (br,) = data["bridges"]
    assert br["name"] == "virbr0" and br["nf_call"]["nf_call_iptables"] == "0"
    assert br["vlan_filtering"] is False
    ports = {p["name"]: (p["kind"], p["mtu"], p["lab_guest"]) for p in br["ports"]}
    assert ports == {"vnet0": ("tap", 1500, "a"), "vnet1": ("veth", 1400, "b")}
    assert data["sysctls"] == DEFAULTS
    assert data["conntrack"]["in_use"] is False
    (mtu,) = [f for f in data["findings"] if f["code"] == "port-mtu-mismatch"]
    assert "dropped by the bridge" in mtu["title"]
    assert data["worst"] == "warn"


def test_diagnose_with_conntrack_in_use(lab: NS) -> None:
    lab.sh(
        "nft add table inet dom0test; "
        "nft add chain inet dom0test fw '{ type filter hook forward priority 0; }'; "
        "nft add rule inet dom0test fw ct state established,related accept"
    )
    data = _diagnose(lab)
    assert data["conntrack"]["in_use"] is True
    codes = [f["code"] for f in data["findings"]]
    assert "bridged-netfilter" in codes
    (mtu,) = [f for f in data["findings"] if f["code"] == "port-mtu-mismatch"]
    assert "refragmented" in mtu["title"]


def test_diagnose_healthy_namespace(ns: NS) -> None:
    ns.sh(
        "ip link add virbr0 type bridge; ip tuntap add mode tap name vnet0;"
        "ip link set vnet0 master virbr0"
    )
    data = _diagnose(ns)
    assert data["healthy"] is True
    assert data["findings"][0]["code"] == "healthy"


def test_diagnose_injected_proc_without_br_netfilter(lab: NS, tmp_path: Path) -> None:
    fake = tmp_path / "proc"
    (fake / "net").mkdir(parents=True)
    code = (
        "import json; from pathlib import Path; from xenvlan.host import diagnose; "
        f"d = diagnose(proc=Path({str(fake)!r})); print(json.dumps(d.to_json()))"
    )
    data = json.loads(lab.py(code))
    codes = [f["code"] for f in data["findings"]]
    assert "br-netfilter-absent" in codes and data["bridges"][0]["name"] == "virbr0"


def test_diagnose_record_and_replay(lab: NS, tmp_path: Path) -> None:
    live = _diagnose(lab, "--record", str(tmp_path / "rec"))
    replay = _diagnose(lab, "--from", str(tmp_path / "rec"))
    assert replay["bridges"] == live["bridges"] and replay["sysctls"] == live["sysctls"]
    assert [f["code"] for f in replay["findings"]] == [f["code"] for f in live["findings"]]


# -- the generic journal for other host changes (link MTU, nft table) ----------------------------


def test_journal_link_mtu_and_nft_table(lab: NS) -> None:
    code = """
import subprocess, sys
from xenvlan.host.journal import HostJournal
with HostJournal.open() as j:
    assert j.record_link_mtu("vnet0") == 1500
    subprocess.run(["ip", "link", "set", "vnet0", "mtu", "1400"], check=True)
    j.record_nft_table("inet", "xenvlan_emul")
    subprocess.run(["nft", "add", "table", "inet", "xenvlan_emul"], check=True)
    print(len(j.entries))
"""
    assert lab.py(code).strip() == "2"
    assert "mtu 1400" in lab.sh("ip link show vnet0")
    out = lab.py(
        "from xenvlan.host.journal import HostJournal\n"
        "with HostJournal.open() as j: print([a.result for a in j.revert_all()])"
    )
    assert out.strip() == "['removed', 'restored']"
    assert "mtu 1500" in lab.sh("ip link show vnet0")
    assert "xenvlan_emul" not in lab.sh("nft list tables")
    assert lab.journals() == []
