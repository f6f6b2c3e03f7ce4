"""The Xen guest kinds xenvlan can define, declared once."""

from __future__ import annotations

from enum import StrEnum


class XenMode(StrEnum):
    """How a Xen guest boots: paravirtualised, PVH, or fully virtualised (HVM)."""

    PV = "pv"
    PVH = "pvh"
    HVM = "hvm"


XEN_MODES: tuple[str, ...] = tuple(XenMode)
#: What `--xen-mode auto` prefers, in order.
AUTO_ORDER: tuple[XenMode, ...] = (XenMode.PVH, XenMode.PV, XenMode.HVM)
MODE_CHOICES = ", ".join(("auto", *XEN_MODES))
