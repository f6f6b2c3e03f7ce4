"""Suite-wide settings and the fixtures several test files share."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from xenvlan.guest.image.build import GuestImage, ensure_image
from xenvlan.guest.image.cpio import CpioEntry, read_initrd

# Unit tests run CLI subprocesses in namespaces of their own: never let them re-exec into a
# developer's running sandbox. The e2e suite removes this from the environment it passes on.
os.environ["XENVLAN_NO_SANDBOX"] = "1"

can_build = shutil.which("apt-get") is not None and Path("/usr/sbin/dropbear").exists()
needs_build = pytest.mark.skipif(not can_build, reason="needs apt-get and dropbear on the host")


@dataclass(frozen=True)
class Built:
    """The guest image built once per test session, from the real Debian kernel deb."""

    image: GuestImage
    cache: Path
    entries: dict[str, CpioEntry]
    seconds: float


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    if not can_build:
        pytest.skip("needs apt-get and dropbear on the host")
    cache = tmp_path_factory.mktemp("cache")
    started = time.monotonic()
    img = ensure_image(cache=cache)
    seconds = time.monotonic() - started
    print(f"\nimage {img.key}: built in {seconds:.1f} s, initrd {img.initrd.stat().st_size} B")
    entries = {e.name: e for e in read_initrd(img.initrd.read_bytes())}
    return Built(img, cache, entries, seconds)
