"""What a lab is while it runs: its guests, its status, phase timings, readiness marks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from xenvlan.errors import SpecError

READY_MARK = "XENVLAN-READY"
FAIL_MARK = "XENVLAN-FAIL"
Progress = Callable[[str], None]


def noop(_msg: str) -> None:
    pass


@dataclass
class GuestInfo:
    """One guest as `status` reports it."""

    name: str
    domain: str
    state: str
    mac: str
    mgmt_ip: str
    vlan_if: str | None
    vlan_ip: str | None
    host_port: str | None
    host_port_mtu: int | None
    host_key: str = ""
    vlan_tool: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The documented JSON fields."""
        return {
            "name": self.name,
            "domain": self.domain,
            "state": self.state,
            "mac": self.mac,
            "mgmt_ip": self.mgmt_ip,
            "vlan_if": self.vlan_if,
            "vlan_ip": self.vlan_ip,
            "vlan_tool": self.vlan_tool,
            "host_port": self.host_port,
            "host_port_mtu": self.host_port_mtu,
        }


@dataclass
class LabStatus:
    """What `up` and `status` print."""

    lab: str
    uri: str
    domain_type: str
    reason: str
    network: str
    bridge: str | None
    guests: list[GuestInfo]
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The documented JSON shape."""
        return {
            "lab": self.lab,
            "uri": self.uri,
            "domain_type": self.domain_type,
            "reason": self.reason,
            "network": self.network,
            "bridge": self.bridge,
            "guests": [g.to_json() for g in self.guests],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def guest(self, name: str) -> GuestInfo:
        """One guest by name."""
        for g in self.guests:
            if g.name == name:
                return g
        names = ", ".join(g.name for g in self.guests) or "none"
        raise SpecError(f"no guest {name!r} in lab {self.lab} (guests: {names})")


class Timer:
    """Phase timings, in order."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = time.monotonic() - t0
