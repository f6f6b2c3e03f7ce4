"""Dom0 (host) side: inspect bridges and bridge-netfilter, diagnose, and journaled fixes.

All functions act on the network namespace of the calling process; run them under
`ip netns exec NS` (or in a child that has joined NS and remounted /sys) for another namespace.
Every kind of journaled host change is declared in `host/kinds.py`.
"""

from __future__ import annotations

from xenvlan.host.findings import Diagnosis, Finding, analyze, diagnose
from xenvlan.host.fix import (
    METHODS,
    FixPlan,
    FixReport,
    FixStatus,
    fix_apply,
    fix_revert,
    fix_status,
    plan_fix,
)
from xenvlan.host.inspect import HostFacts, Link, gather, record_host
from xenvlan.host.journal import HostJournal, JournalEntry, RevertAction, register_reverter
from xenvlan.host.netns import NetnsIdentity, current_netns

__all__ = [
    "METHODS",
    "Diagnosis",
    "Finding",
    "FixPlan",
    "FixReport",
    "FixStatus",
    "HostFacts",
    "HostJournal",
    "JournalEntry",
    "Link",
    "NetnsIdentity",
    "RevertAction",
    "analyze",
    "current_netns",
    "diagnose",
    "fix_apply",
    "fix_revert",
    "fix_status",
    "gather",
    "plan_fix",
    "record_host",
    "register_reverter",
]
