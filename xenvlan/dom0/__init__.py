"""Dom0 (host) side: inspect bridges and bridge-netfilter, diagnose, and journaled fixes.

All functions act on the network namespace of the calling process; run them under
`ip netns exec NS` (or in a child that has joined NS and remounted /sys) for another namespace.
"""

from __future__ import annotations

from xenvlan.dom0 import firewall as firewall  # registers its journal reverter
from xenvlan.dom0.findings import Diagnosis, Finding, analyze, diagnose
from xenvlan.dom0.fix import (
    METHODS,
    FixPlan,
    FixReport,
    FixStatus,
    fix_apply,
    fix_revert,
    fix_status,
    plan_fix,
)
from xenvlan.dom0.inspect import HostFacts, Link, gather, record_host
from xenvlan.dom0.journal import HostJournal, JournalEntry, RevertAction, register_reverter
from xenvlan.dom0.netns import NetnsIdentity, current_netns

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
