"""Journaled host firewall rules: one iptables chain per lab, every rule commented with the lab id.

The chain is recorded in the namespace's journal before it is created; revert removes the jump
from FORWARD and the chain itself, so `fix revert` or a later `down` finish the job after a crash.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
from dataclasses import dataclass

from xenvlan.errors import HostChangeError
from xenvlan.host.journal import HostJournal, JournalEntry
from xenvlan.host.run import Ran, run

KIND = "iptables_chain"


def chain_name(lab: str) -> str:
    """A chain name that fits iptables' 28 characters whatever the lab name."""
    return "XENVLAN-" + hashlib.sha256(lab.encode()).hexdigest()[:8]


def _iptables(*args: str) -> Ran:
    exe = shutil.which("iptables")
    if exe is None:
        raise HostChangeError("iptables is not installed (apt-get install iptables)")
    return run([exe, "-w", "5", *args])


def _check(res: Ran, what: str) -> None:
    if not res.ok:
        raise HostChangeError(f"iptables {what}: {res.last_line()}")


def chain_exists(chain: str, table: str = "filter") -> bool:
    """Whether the chain exists in this namespace."""
    return _iptables("-t", table, "-n", "-L", chain).returncode == 0


@dataclass(frozen=True)
class Rule:
    """One rule of the lab chain, as iptables arguments (without -A CHAIN)."""

    args: tuple[str, ...]
    comment: str

    def argv(self, chain: str) -> list[str]:
        """Arguments appending this rule to `chain`."""
        return ["-A", chain, *self.args, "-m", "comment", "--comment", self.comment[:250]]


def install_chain(journal: HostJournal, lab: str, rules: list[Rule], table: str = "filter") -> str:
    """Journal, create and fill the lab's chain, then jump to it first thing in FORWARD."""
    chain = chain_name(lab)
    key = f"{table} {chain}"
    if journal.find(KIND, key) is None and chain_exists(chain, table):
        raise HostChangeError(f"iptables chain {chain} exists and is not in xenvlan's journal")
    journal.record(KIND, key, None, note=f"xenvlan:{lab}")
    if not chain_exists(chain, table):
        _check(_iptables("-t", table, "-N", chain), f"-N {chain}")
    _check(_iptables("-t", table, "-F", chain), f"-F {chain}")
    for rule in rules:
        _check(_iptables("-t", table, *rule.argv(chain)), f"rule in {chain}")
    jump = ["FORWARD", "-j", chain, "-m", "comment", "--comment", f"xenvlan:{lab}"]
    if _iptables("-t", table, "-C", *jump).returncode != 0:
        _check(_iptables("-t", table, "-I", jump[0], "1", *jump[1:]), "jump from FORWARD")
    return chain


def revert_chain(entry: JournalEntry) -> str:
    table, chain = entry.key.split(" ", 1)
    if not chain_exists(chain, table):
        return "gone"
    listing = _iptables("-t", table, "-S", "FORWARD").stdout.splitlines()
    for line in listing:
        argv = shlex.split(line)
        if argv[:2] == ["-A", "FORWARD"] and "-j" in argv and argv[argv.index("-j") + 1] == chain:
            _check(_iptables("-t", table, "-D", *argv[1:]), f"removing jump to {chain}")
    _check(_iptables("-t", table, "-F", chain), f"-F {chain}")
    _check(_iptables("-t", table, "-X", chain), f"-X {chain}")
    return "removed"
