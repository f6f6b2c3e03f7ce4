"""Where and how the guest image's kernel is fetched: never inside the sandbox namespace, and an
offline machine falls back to what its cache already has (one notice), or fails in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import xenvlan.guest.image.apt as apt_mod
from tests.conftest import Built, needs_build
from xenvlan.errors import ImageError
from xenvlan.guest.image.apt import fetch_argv
from xenvlan.guest.image.build import ensure_image
from xenvlan.host import netns as host_netns
from xenvlan.host.sandbox import netns as sandbox


def _unfetchable(monkeypatch: pytest.MonkeyPatch, cache: Path) -> str:
    """Make apt name a kernel version that no mirror has: the real download then fails."""
    real = apt_mod.resolve_kernel_package
    (cache / "images" / ".packages.json").unlink(missing_ok=True)
    newer = "999.0-newer"

    def resolve(override: str | None = None) -> tuple[str, str]:
        return real(override)[0], newer

    monkeypatch.setattr(apt_mod, "resolve_kernel_package", resolve)
    return newer


@needs_build
def test_offline_newer_kernel_uses_the_cached_image(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = _unfetchable(monkeypatch, built.cache)
    said: list[str] = []
    img = ensure_image(cache=built.cache, progress=said.append)
    assert img == built.image
    notices = [m for m in said if m.startswith("notice:")]
    assert len(notices) == 1, said
    assert newer in notices[0] and "using the cached image" in notices[0]
    version = json.loads((built.image.initrd.parent / "meta.json").read_text())["inputs"]
    assert str(version["kernel_version"]) in notices[0], "both versions are named"


@needs_build
def test_offline_builds_from_a_cached_kernel_deb(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    (cache / "images").mkdir()
    for deb in (built.cache / "debs").glob("*.deb"):
        os.link(deb, cache / "debs" / deb.name)
    _unfetchable(monkeypatch, cache)
    said: list[str] = []
    img = ensure_image(cache=cache, progress=said.append)
    assert img.kernel_version == built.image.kernel_version
    assert img.key == built.image.key, "same inputs as the image built online"
    assert any("building from the cached" in m for m in said), said


@needs_build
def test_offline_with_nothing_cached_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    _unfetchable(monkeypatch, cache)
    with pytest.raises(ImageError) as exc:
        ensure_image(cache=cache)
    assert exc.value.exit_code == 7
    assert "\n" not in str(exc.value) and "no cached image" in str(exc.value)
    assert not list((cache / "images").glob("*/meta.json"))


# --------------------------------------------------------------------------- where fetches run


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    """A namespace of the test's own, with no route out (like the sandbox)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = f"xvtest-fetch-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


PROBE = textwrap.dedent(
    """
    import subprocess, sys
    from xenvlan.errors import ImageError
    from xenvlan.guest.image.apt import fetch_argv
    try:
        argv, fds = fetch_argv(["readlink", "/proc/self/ns/net"])
    except ImageError as exc:
        print("REFUSED", exc)
        sys.exit(0)
    print(subprocess.run(argv, capture_output=True, text=True, pass_fds=fds, check=True).stdout)
    """
)


def _child(netns: str, env: dict[str, str], origin: bool) -> str:
    """Run PROBE inside `netns`; with `origin`, hand it this namespace as the CLI re-exec does."""
    fds: tuple[int, ...] = ()
    if origin:
        fd = host_netns.inheritable_handle()
        env = env | {sandbox.ORIGIN_NETNS_FD_ENV: str(fd)}
        fds = (fd,)
    try:
        res = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE],
            env=env,
            capture_output=True,
            text=True,
            pass_fds=fds,
            check=False,
            timeout=30,
        )
    finally:
        for fd in fds:
            os.close(fd)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _sandbox_env(tmp_path: Path, netns: str) -> dict[str, str]:
    run = tmp_path / "run"
    (run / "sandbox").mkdir(parents=True)
    (run / "sandbox" / "state.json").write_text(json.dumps({"netns": netns}))
    env = dict(os.environ, XENVLAN_RUN_DIR=str(run))
    env.pop(sandbox.ORIGIN_NETNS_FD_ENV, None)
    return env


def test_fetch_runs_in_the_namespace_the_command_came_from(netns: str, tmp_path: Path) -> None:
    here = os.readlink("/proc/self/ns/net")
    seen = _child(netns, _sandbox_env(tmp_path, netns), origin=True)
    assert seen == here, "the download would have run inside the sandbox namespace"


def test_fetch_inside_the_sandbox_without_origin_is_refused(netns: str, tmp_path: Path) -> None:
    seen = _child(netns, _sandbox_env(tmp_path, netns), origin=False)
    assert seen.startswith("REFUSED") and "no route out" in seen


def test_fetch_outside_any_sandbox_runs_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sandbox.ORIGIN_NETNS_FD_ENV, raising=False)
    monkeypatch.setattr(sandbox, "inside_sandbox", lambda: False)
    assert fetch_argv(["apt-get", "download", "x"]) == (["apt-get", "download", "x"], ())


def test_a_stale_origin_value_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.ORIGIN_NETNS_FD_ENV, "0")  # stdin, not a namespace
    assert sandbox.origin_netns_fd() is None
