"""Kernel drop evidence (issue 13): where a replayed probe died, from the kernel itself.

`collect_edge` replays the smallest failing and largest passing size of an edge while a private
tracing instance records ``skb:kfree_skb`` (journaled, removed on every exit path), netlink
port stats and /proc/net/snmp are read before and after, and the ports are captured to pcapng.
Its host changes are the journal kinds ``tracefs_mount`` and ``trace_instance``
(declared in ``host/kinds.py``).
"""
