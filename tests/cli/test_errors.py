"""Bad input at the command line: exit code 2, one line on stderr, no traceback, nothing made.

`xenvlan up --lab BAD` must fail while validating, before it joins a sandbox, connects to
libvirt or writes a file: the run, state and cache directories point at empty temporary
directories and must still be empty afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import Run, run_cli

LABS = Path(__file__).parents[1] / "data" / "labs"


def _xenvlan(dirs: dict[str, Path], *args: str, script: bool = False) -> Run:
    exe = shutil.which("xenvlan") if script else None
    return run_cli(dirs, *args, exe=exe, timeout=60)


def _assert_one_line_error(r: Run, code: int = 2) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"want one stderr line, got {len(lines)}: {r.stderr!r}"
    assert lines[0].startswith("xenvlan: error: "), lines[0]
    assert r.code == code, (r.code, r.stderr)
    assert r.stdout == ""
    return lines[0]


def _assert_nothing_made(dirs: dict[str, Path]) -> None:
    for name, d in dirs.items():
        assert list(d.rglob("*")) == [], f"{name} dir changed: {list(d.rglob('*'))}"


CORPUS = [
    ("bad-vlan-zero.toml", "vlan.id"),
    ("bad-vlan-4095.toml", "vlan.id"),
    ("bad-vlan-injection.toml", "vlan.id"),
    ("bad-addr-other-subnet.toml", "one subnet"),
    ("bad-addr-equal.toml", "vlan_ip must differ"),
    ("bad-name-shell.toml", "name:"),
    ("bad-name-xml.toml", "name:"),
    ("bad-name-newline.toml", "name:"),
    ("bad-memory-huge.toml", "guests[0].memory_mib"),
    ("bad-memory-huge-hex.toml", "guests[0].memory_mib"),
    ("bad-unknown-guest.toml", "guests[1].ip: unknown key"),
    ("bad-unknown-key-newline.toml", "unknown key"),
    ("bad-toml-deep-nesting.toml", "not valid TOML"),
    ("bad-toml-huge-int.toml", "not valid TOML"),
    ("bad-binary-garbage.bin", "not UTF-8"),
    ("bad-connect-injection.toml", "connect:"),
]


@pytest.mark.parametrize(("name", "expect"), CORPUS, ids=[c[0] for c in CORPUS])
def test_up_with_bad_lab_file(dirs: dict[str, Path], name: str, expect: str) -> None:
    path = LABS / name
    line = _assert_one_line_error(_xenvlan(dirs, "up", "--lab", str(path)))
    assert str(path) in line
    assert expect in line
    _assert_nothing_made(dirs)


def test_up_with_missing_lab_file(dirs: dict[str, Path], tmp_path: Path) -> None:
    line = _assert_one_line_error(_xenvlan(dirs, "up", "--lab", str(tmp_path / "nope.toml")))
    assert "cannot read lab file" in line
    _assert_nothing_made(dirs)


def test_up_with_directory_as_lab_file(dirs: dict[str, Path], tmp_path: Path) -> None:
    line = _assert_one_line_error(_xenvlan(dirs, "up", "--lab", str(tmp_path)))
    assert "cannot read lab file" in line
    _assert_nothing_made(dirs)


@pytest.mark.parametrize(
    "uri", ["qemu:///system; reboot", "ssh://root@host/", "qemu:///system\nxen:///system"]
)
def test_up_with_bad_connect(dirs: dict[str, Path], uri: str) -> None:
    line = _assert_one_line_error(_xenvlan(dirs, "up", "--connect", uri))
    assert "--connect" in line
    _assert_nothing_made(dirs)


def test_up_kernel_without_initrd(dirs: dict[str, Path], tmp_path: Path) -> None:
    k = tmp_path / "vmlinuz"
    k.write_bytes(b"")
    line = _assert_one_line_error(_xenvlan(dirs, "up", "--kernel", str(k)))
    assert "--kernel and --initrd" in line
    _assert_nothing_made(dirs)


def test_console_script(dirs: dict[str, Path]) -> None:
    if shutil.which("xenvlan") is None:
        pytest.skip("the xenvlan console script is not installed")
    line = _assert_one_line_error(
        _xenvlan(dirs, "up", "--lab", str(LABS / "bad-vlan-zero.toml"), script=True)
    )
    assert "vlan.id" in line
    _assert_nothing_made(dirs)


def test_unknown_option(dirs: dict[str, Path]) -> None:
    line = _assert_one_line_error(_xenvlan(dirs, "up", "--bogus"))
    assert "--bogus" in line
    _assert_nothing_made(dirs)


def test_unexpected_argument(dirs: dict[str, Path]) -> None:
    _assert_one_line_error(_xenvlan(dirs, "up", "extra"))
    _assert_nothing_made(dirs)


def test_unknown_command(dirs: dict[str, Path]) -> None:
    _assert_one_line_error(_xenvlan(dirs, "explode"))
    _assert_nothing_made(dirs)
