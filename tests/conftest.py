"""Suite-wide settings."""

from __future__ import annotations

import os

# Unit tests run CLI subprocesses in namespaces of their own: never let them re-exec into a
# developer's running sandbox. The e2e suite removes this from the environment it passes on.
os.environ["XENVLAN_NO_SANDBOX"] = "1"
