"""`fix apply|revert|status`: turn off one bridge-netfilter path, journaled and reversible."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from xenvlan.errors import HostChangeError, SpecError
from xenvlan.host.journal import HostJournal, RevertAction, check_same_netns
from xenvlan.host.netns import current_netns
from xenvlan.host.persist import persist_paths, write_persist
from xenvlan.host.sysctl import (
    BRIDGE_KNOBS,
    bridge_knob_path,
    bridge_sysctl_dir,
    check_writable,
    read_bridge_knobs,
    read_bridge_sysctls,
    read_value,
    sysctl_name,
    write_value,
)


class FixMethod(StrEnum):
    """The fixes `fix apply` and `repro` know (see METHODS for what each disables)."""

    CALL_IPTABLES = "call-iptables"
    CALL_ALL = "call-all"
    VLAN_TAGGED = "vlan-tagged"
    BRIDGE = "bridge"


DEFAULT_METHOD = FixMethod.CALL_IPTABLES
METHOD_CHOICES = " | ".join(FixMethod)
DEFAULT_BRIDGE = "virbr0"


@dataclass(frozen=True)
class Method:
    """A fix: the knobs it sets to 0 and, in words, what that disables."""

    name: str
    sysctls: tuple[str, ...]
    disables: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            FixMethod.CALL_IPTABLES,
            ("bridge-nf-call-iptables",),
            "iptables filtering (and conntrack defragmentation) of bridged IPv4 traffic "
            "on every bridge in this network namespace",
        ),
        Method(
            FixMethod.CALL_ALL,
            ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"),
            "iptables, ip6tables and arptables processing of all bridged traffic "
            "in this network namespace (libvirt's recommendation for virtualization hosts)",
        ),
        Method(
            FixMethod.VLAN_TAGGED,
            ("bridge-nf-filter-vlan-tagged",),
            "netfilter processing of 802.1Q-tagged bridged frames (guest-tagged VLAN traffic "
            "is no longer filtered or reassembled by iptables/conntrack)",
        ),
        Method(
            FixMethod.BRIDGE,
            (),
            "iptables filtering of bridged IPv4 traffic on one bridge only "
            "(per-bridge nf_call_iptables; OR-ed with the global sysctl)",
        ),
    )
}


@dataclass(frozen=True)
class Change:
    """One knob: its name, file, value before and the value written."""

    name: str
    path: Path
    before: str
    after: str

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "path": str(self.path),
            "before": self.before,
            "after": self.after,
        }


@dataclass
class FixPlan:
    """What `apply` will do, computed before anything is touched."""

    method: Method
    changes: list[Change]
    notes: list[str] = field(default_factory=list)
    persist_files: list[Path] = field(default_factory=list)

    @property
    def explanation(self) -> str:
        names = ", ".join(f"{c.name}={c.after}" for c in self.changes)
        return f"Setting {names} disables {self.method.disables}."


@dataclass
class FixReport:
    """The outcome of apply or revert."""

    action: str
    method: str | None
    explanation: str
    changes: list[Change] = field(default_factory=list)
    reverted: list[RevertAction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    persisted: list[Path] = field(default_factory=list)
    journal: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "method": self.method,
            "explanation": self.explanation,
            "changes": [c.to_json() for c in self.changes],
            "reverted": [
                {"kind": a.kind, "key": a.key, "original": a.original, "result": a.result}
                for a in self.reverted
            ],
            "notes": self.notes,
            "persisted": [str(p) for p in self.persisted],
            "journal": str(self.journal) if self.journal else None,
        }


@dataclass
class StatusEntry:
    """A journaled object: its original and its value now (None = gone)."""

    kind: str
    key: str
    original: Any
    current: Any
    note: str


@dataclass
class FixStatus:
    """Current knob values, and the pending journal (if any) with originals vs now."""

    netns_inode: int
    journal: Path
    pending: bool
    entries: list[StatusEntry]
    sysctls: dict[str, str]
    bridges: dict[str, dict[str, str]]
    other_journals: list[Path]

    def to_json(self) -> dict[str, Any]:
        return {
            "netns_inode": self.netns_inode,
            "journal": str(self.journal),
            "pending": self.pending,
            "entries": [
                {
                    "kind": e.kind,
                    "key": e.key,
                    "original": e.original,
                    "current": e.current,
                    "note": e.note,
                }
                for e in self.entries
            ],
            "sysctls": self.sysctls,
            "bridges": self.bridges,
            "other_journals": [str(p) for p in self.other_journals],
        }


def list_bridges(sys: Path = Path("/sys")) -> list[str]:
    """Bridges visible in /sys/class/net (those with a `bridge/` directory)."""
    base = sys / "class" / "net"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "bridge").is_dir())


def _not_loaded(proc: Path) -> HostChangeError:
    return HostChangeError(
        f"br_netfilter is not loaded in this network namespace ({bridge_sysctl_dir(proc)} is "
        "absent): bridged traffic never reaches iptables, so this fix cannot help"
    )


def plan_fix(
    method: str = DEFAULT_METHOD,
    *,
    bridge: str | None = None,
    persist: bool = False,
    root: Path = Path("/"),
    proc: Path = Path("/proc"),
    sys: Path = Path("/sys"),
) -> FixPlan:
    """Validate and compute the changes of `method`; raises (one line) when it cannot help."""
    chosen = METHODS.get(method)
    if chosen is None:
        raise SpecError(f"unknown fix method {method!r} (choose from {', '.join(METHODS)})")
    if bridge is not None and chosen.name != "bridge":
        raise SpecError("--bridge only applies to --method bridge")
    if persist and chosen.name == "bridge":
        raise SpecError(
            "--persist is not supported for --method bridge: per-bridge knobs are not sysctls"
        )
    base = bridge_sysctl_dir(proc)
    if not base.is_dir():
        raise _not_loaded(proc)
    changes: list[Change] = []
    notes: list[str] = []
    if chosen.name == "bridge":
        br = bridge or DEFAULT_BRIDGE
        path = bridge_knob_path(br, "nf_call_iptables", sys)
        if not path.parent.is_dir():
            raise SpecError(f"no bridge named {br!r} in this network namespace")
        glob = read_value(base / "bridge-nf-call-iptables")
        if glob not in (None, "0"):
            raise HostChangeError(
                f"--method bridge cannot help: net.bridge.bridge-nf-call-iptables={glob} sends "
                "every bridge's traffic to iptables (global and per-bridge knobs are OR-ed); "
                "use --method call-iptables"
            )
        before = read_value(path)
        if before is None:
            raise HostChangeError(f"{path} does not exist")
        if before == "0":
            raise HostChangeError(f"{br}: nf_call_iptables is already 0; nothing to fix")
        check_writable(path)
        changes.append(Change(f"{br}:nf_call_iptables", path, before, "0"))
    else:
        for name in chosen.sysctls:
            path = base / name
            before = read_value(path)
            if before is None:
                raise HostChangeError(f"{path} does not exist on this kernel")
            if before != "0":
                changes.append(Change(sysctl_name(path), path, before, "0"))
        if not changes:
            names = ", ".join(f"net.bridge.{n}" for n in chosen.sysctls)
            raise HostChangeError(f"{names} already 0; nothing to fix")
        for change in changes:
            check_writable(change.path)
        for br in list_bridges(sys):
            knobs = read_bridge_knobs(br, sys)
            on = [k for k in BRIDGE_KNOBS if knobs.get(k, "0") != "0"]
            if on and any(
                s.replace("bridge-nf-", "nf_").replace("-", "_") in on for s in chosen.sysctls
            ):
                notes.append(
                    f"bridge {br} still has {', '.join(k + '=1' for k in on)} (OR-ed with the "
                    f"global sysctl); also run `xenvlan fix apply --method bridge --bridge {br}`"
                )
        if chosen.name == "vlan-tagged" and read_value(base / "bridge-nf-call-iptables") == "1":
            notes.append("untagged bridged IPv4 still goes through iptables (call-iptables=1)")
    plan = FixPlan(chosen, changes, notes)
    if persist:
        plan.persist_files = list(persist_paths(root))
        for path in plan.persist_files:
            if not path.parent.is_dir():
                raise HostChangeError(f"{path.parent} does not exist; is this a systemd host?")
            if not os.access(path.parent, os.W_OK):
                raise HostChangeError(f"cannot write {path.parent}: permission denied")
    return plan


def fix_apply(
    method: str = DEFAULT_METHOD,
    *,
    bridge: str | None = None,
    persist: bool = False,
    root: Path = Path("/"),
    journal_dir: Path | None = None,
    proc: Path = Path("/proc"),
    sys: Path = Path("/sys"),
    announce: Callable[[FixPlan], None] | None = None,
) -> FixReport:
    """Plan, announce, journal the originals, then write; a failed write is rolled back."""
    plan = plan_fix(method, bridge=bridge, persist=persist, root=root, proc=proc, sys=sys)
    with HostJournal.open(journal_dir) as journal:  # refuses a foreign or locked journal
        if announce is not None:
            announce(plan)
        start = len(journal.entries)
        try:
            for change in plan.changes:
                journal.record_sysctl(change.path, note=change.name)
            for change in plan.changes:
                write_value(change.path, change.after)
            persisted: list[Path] = []
            if persist:
                settings = {f"net.bridge.{name}": "0" for name in plan.method.sysctls}
                persisted = write_persist(journal, settings, root)
        except HostChangeError as exc:
            try:
                journal.rollback_to(start)
            except HostChangeError as again:
                raise HostChangeError(f"{exc}; rollback failed too: {again}") from again
            raise
        return FixReport(
            action="apply",
            method=plan.method.name,
            explanation=plan.explanation,
            changes=plan.changes,
            notes=plan.notes,
            persisted=persisted,
            journal=journal.path,
        )


def fix_revert(*, journal_dir: Path | None = None) -> FixReport:
    """Restore every journaled original of this namespace; a no-op without a journal."""
    path = HostJournal.path_for(journal_dir)
    if not path.exists():
        return FixReport("revert", None, "no pending journal: nothing to revert", journal=None)
    with HostJournal.open(journal_dir) as journal:
        actions = journal.revert_all()
    return FixReport(
        action="revert",
        method=None,
        explanation=f"restored {len(actions)} journaled value(s) from {path}",
        reverted=actions,
        journal=path,
    )


def _current(kind: str, key: str) -> Any:
    if kind == "sysctl":
        return read_value(Path(key))
    if kind == "file":
        return Path(key).exists()
    if kind == "link_mtu":
        from xenvlan.host.netlink import link_mtu

        return link_mtu(key)
    return None


def fix_status(
    *, journal_dir: Path | None = None, proc: Path = Path("/proc"), sys: Path = Path("/sys")
) -> FixStatus:
    """Current values, and for a pending journal each original next to its value now."""
    here = current_netns()
    path = HostJournal.path_for(journal_dir, here)
    journal = HostJournal.load(path)
    entries: list[StatusEntry] = []
    if journal is not None:
        check_same_netns(journal, here)
        for e in journal.entries:
            original = e.original
            if e.kind == "file":
                original = bool(e.original.get("existed"))
            entries.append(StatusEntry(e.kind, e.key, original, _current(e.kind, e.key), e.note))
    others = sorted(p for p in path.parent.glob("netns-*.json") if p != path)
    return FixStatus(
        netns_inode=here.inode,
        journal=path,
        pending=journal is not None and journal.pending,
        entries=entries,
        sysctls=read_bridge_sysctls(proc),
        bridges={br: read_bridge_knobs(br, sys) for br in list_bridges(sys)},
        other_journals=others,
    )
