"""Ownership, keys and SSH on real guests: foreign look-alikes survive, keys are private,
no password reaches a guest."""

from __future__ import annotations

import stat
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import hostsnap
from tests.e2e.conftest import Env

pytestmark = pytest.mark.e2e

FOREIGN_NET = """<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='{bridge}'/>
  <ip address='192.168.177.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.177.100' end='192.168.177.200'/>
      <host mac='52:54:00:aa:bb:cc' name='their-vm' ip='192.168.177.150'/></dhcp>
  </ip>
</network>
"""
FOREIGN_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <description>not xenvlan's</description>
  <memory unit='MiB'>32</memory>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


def _virsh(env: Env, *args: str) -> str:
    res = env.in_netns(*hostsnap.VIRSH, *args)
    assert res.returncode == 0, f"virsh {args}: {res.stderr}"
    return res.stdout


def _define(env: Env, kind: str, xml: str, tmp_path: Path) -> None:
    f = tmp_path / f"{kind}.xml"
    f.write_text(xml)
    _virsh(env, "net-define" if kind == "net" else "define", str(f))


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("xenvlan: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def foreign_net(sandbox: Env, tmp_path: Path) -> Iterator[str]:
    """A network named `default` (the seed lab's) that xenvlan did not make, active."""
    _define(sandbox, "net", FOREIGN_NET.format(name="default", bridge="virbr7"), tmp_path)
    _virsh(sandbox, "net-start", "default")
    try:
        yield "default"
    finally:
        sandbox.in_netns(*hostsnap.VIRSH, "net-destroy", "default")
        sandbox.in_netns(*hostsnap.VIRSH, "net-undefine", "default")


@pytest.mark.parametrize("guest", ["a", "b"])
def test_foreign_domain_and_network_survive_up_and_down(
    sandbox: Env, foreign_net: str, tmp_path: Path, guest: str
) -> None:
    env = sandbox
    name = f"xenvlan-seed-{guest}"
    _define(env, "dom", FOREIGN_DOMAIN.format(name=name), tmp_path)
    try:
        before = hostsnap.snapshot(env)
        res = env.xenvlan("up", check=False)
        assert res.returncode == 3, res.stderr
        line = _one_error_line(res.stderr)
        assert f"domain {name} exists and is not xenvlan lab seed's" in line
        assert not hostsnap.differences(before, hostsnap.snapshot(env)), "a refused up changed"
        for args in (("down", "--name", "seed"), ("down", "--all"), ("down",)):
            env.xenvlan(*args)
            diff = hostsnap.differences(before, hostsnap.snapshot(env))
            assert not diff, f"{args} touched foreign objects: {diff}"
    finally:
        env.in_netns(*hostsnap.VIRSH, "undefine", name)


def test_foreign_network_is_reused_and_left_exactly(
    sandbox: Env, foreign_net: str, tmp_path: Path
) -> None:
    """No foreign domain: `up` reuses the foreign network (reservations only), `down` leaves it
    byte-identical and active; meanwhile the lab's keys are private and SSH is key-only."""
    env = sandbox
    before = hostsnap.snapshot(env)
    up = env.xjson("up")
    try:
        assert up["network"] == "default" and up["bridge"] == "virbr7"
        net_xml = _virsh(env, "net-dumpxml", "default")
        assert "xenvlan" not in net_xml.split("<dhcp>")[0], "took ownership of a foreign network"
        for g in up["guests"]:
            assert g["mac"] in net_xml
        _check_private_keys(env.run_dir / "labs" / "seed")
        _check_no_password_auth(env, up["guests"][0]["mgmt_ip"])
    finally:
        env.xenvlan("down")
    diff = hostsnap.differences(before, hostsnap.snapshot(env))
    assert not diff, "\n".join(diff)
    assert _virsh(env, "net-list", "--name").split() == ["default"]  # still active


def test_inactive_foreign_network_is_refused(sandbox: Env, tmp_path: Path) -> None:
    env = sandbox
    _define(env, "net", FOREIGN_NET.format(name="default", bridge="virbr7"), tmp_path)
    try:
        before = hostsnap.snapshot(env)
        res = env.xenvlan("up", check=False)
        assert res.returncode == 3, res.stderr
        line = _one_error_line(res.stderr)
        assert "network default exists but is inactive" in line and "net-start" in line
        assert not hostsnap.differences(before, hostsnap.snapshot(env))
    finally:
        env.in_netns(*hostsnap.VIRSH, "net-undefine", "default")


def _check_private_keys(ldir: Path) -> None:
    """Private keys (and the initrds carrying a host key) 0600, in a 0700 directory chain."""
    for d in (ldir, ldir.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    names = {p.name for p in ldir.iterdir()}
    private = {"id_ed25519", "a_ed25519_host_key", "b_ed25519_host_key", "a.initrd", "b.initrd"}
    assert private <= names, sorted(names)
    for name in private:
        st = (ldir / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, (name, oct(st.st_mode))
        assert st.st_uid == 0
    assert b"PRIVATE KEY" in (ldir / "id_ed25519").read_bytes()


def _check_no_password_auth(env: Env, ip: str) -> None:
    """The guest's dropbear offers publickey only: password and none are refused."""
    code = textwrap.dedent(
        f"""
        import socket, paramiko
        sock = socket.create_connection(("{ip}", 22), timeout=10)
        t = paramiko.Transport(sock)
        t.start_client(timeout=10)
        try:
            t.auth_none("root")
        except paramiko.BadAuthenticationType as exc:
            print("ALLOWED", sorted(exc.allowed_types))
        try:
            t.auth_password("root", "")
            print("PASSWORD ACCEPTED")
        except paramiko.BadAuthenticationType:
            print("PASSWORD REFUSED")
        except paramiko.AuthenticationException:
            print("PASSWORD FAILED")
        t.close()
        """
    )
    res = env.in_netns(sys.executable, "-c", code)
    assert res.returncode == 0, res.stderr
    assert "ALLOWED ['publickey']" in res.stdout, res.stdout
    assert "PASSWORD REFUSED" in res.stdout, res.stdout
