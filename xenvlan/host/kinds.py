"""Every kind of journaled host change and its reverter, declared once.

The journal looks a kind up here when it records (unknown kinds are refused) and when it reverts.
"""

from __future__ import annotations

from xenvlan.evidence import tracefs
from xenvlan.host import firewall, journal

REVERTERS: dict[str, journal.Reverter] = {
    "sysctl": journal.revert_sysctl,
    "link_mtu": journal.revert_link_mtu,
    "nft_table": journal.revert_nft_table,
    "file": journal.revert_file,
    firewall.KIND: firewall.revert_chain,
    tracefs.KIND_MOUNT: tracefs.revert_mount,
    tracefs.KIND_INSTANCE: tracefs.revert_instance,
}
