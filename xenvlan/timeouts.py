"""One factor for every guest-facing timeout: $XENVLAN_TIMEOUT_SCALE (default 1).

Guests nested under QEMU/TCG (the Xen sandbox) are 5-20x slower than native ones; scaling the
SSH and ping-batch budgets by one declared factor beats editing each of them.
"""

from __future__ import annotations

import math
import os

from xenvlan.errors import SpecError

TIMEOUT_SCALE_ENV = "XENVLAN_TIMEOUT_SCALE"


def scale() -> float:
    """The factor (> 1 makes timeouts longer); anything but a positive number is an error."""
    raw = os.environ.get(TIMEOUT_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise SpecError(f"{TIMEOUT_SCALE_ENV}={raw!r} is not a positive number")
    return value


def scaled(seconds: float) -> float:
    """`seconds` times the factor."""
    return seconds * scale()
