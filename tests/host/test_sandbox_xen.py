"""Pure parts of the nested-Xen sandbox: cache key, QEMU argv, state file, remote quoting."""

from __future__ import annotations

import itertools
import json
import shlex
import time
from pathlib import Path

import pytest

from xenvlan.errors import HostChangeError, ImageError
from xenvlan.host.run import pid_alive
from xenvlan.host.sandbox.xen import image as dom0image
from xenvlan.host.sandbox.xen import remote, vm


@pytest.fixture(autouse=True)
def _private_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the real sandbox's state file (a running Dom0 would be forgotten)."""
    monkeypatch.setenv("XENVLAN_RUN_DIR", str(tmp_path / "run"))


POLICY = """xen-utils-4.17:
  Installed: (none)
  Candidate: 4.17.7+13-g2445b30a44-0+deb12u1
  Version table:
     4.17.7+13-g2445b30a44-0+deb12u1 500
python3:
  Installed: 3.11.2-1+b1
  Candidate: 3.11.2-1+b1
"""


def test_parse_policy_reads_candidates() -> None:
    got = dom0image.parse_policy(POLICY, ("xen-utils-4.17", "python3"))
    assert got == {"xen-utils-4.17": "4.17.7+13-g2445b30a44-0+deb12u1", "python3": "3.11.2-1+b1"}


def test_parse_policy_missing_candidate_is_an_error() -> None:
    with pytest.raises(ImageError, match="nftables"):
        dom0image.parse_policy(POLICY + "nftables:\n  Candidate: (none)\n", ("nftables",))


def _inputs(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"builder": "2", "packages": {"a": "1"}, "rc_sha256": "x"}
    base.update(over)
    return base


def test_key_changes_with_every_input_and_ignores_key_field() -> None:
    k = dom0image.dom0_key(_inputs())
    assert dom0image.dom0_key({**_inputs(), "key": "whatever"}) == k
    assert dom0image.dom0_key(_inputs(builder="3")) != k
    assert dom0image.dom0_key(_inputs(packages={"a": "2"})) != k
    assert dom0image.dom0_key(_inputs(rc_sha256="y")) != k
    assert len(k) == 16


def test_rc_script_is_package_data_and_posix_sh() -> None:
    rc = dom0image.rc_script()
    assert rc.startswith(b"#!/bin/sh\n")
    assert b"oxenstored" in rc and b"libvirtd -d" in rc
    for tag, mount in vm.SHARE_MOUNTS.items():
        assert f"share {tag} {mount}".encode() in rc


def test_deb822_sources_keep_only_the_release() -> None:
    text = (
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: https://other.example\nSuites: nodistro\n"
        "Components: main\n"
    )
    assert dom0image._deb822_sources(text, "bookworm") == [
        "deb http://deb.example/debian bookworm main",
        "deb http://deb.example/debian bookworm-updates main",
    ]


def test_mmdebstrap_argv_excludes_docs_and_lists_packages() -> None:
    argv = dom0image.mmdebstrap_argv(Path("/r"), ["deb http://m bookworm main"], "bookworm")
    assert argv[:2] == ["mmdebstrap", "--variant=apt"]
    assert argv[-3:] == ["bookworm", "/r", "deb http://m bookworm main"]
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in argv
    include = next(a for a in argv if a.startswith("--include="))
    assert "libvirt-daemon-driver-xen" in include and "dnsmasq-base" in include


def test_pip_argv_targets_dom0_python_binary_only() -> None:
    argv = dom0image.pip_argv(Path("/r/opt/xenvlan/site"))
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[argv.index("--target") + 1] == "/r/opt/xenvlan/site"
    assert not any(a.startswith("libvirt") for a in argv)


CPU = """<cpus>
  <model name='qemu64'>
    <decode host='on' guest='off'/>
    <feature name='pse'/>
    <feature name='sep'/>
    <feature name='syscall'/>
  </model>
</cpus>
"""


def test_missing_build_tools_name_their_packages() -> None:
    assert dom0image.missing_build_tools(lambda tool: f"/usr/bin/{tool}") == []
    missing = dom0image.missing_build_tools(lambda tool: None if tool != "mke2fs" else "/x")
    assert missing == ["apt", "dpkg", "kmod", "mmdebstrap"]


def test_build_without_mmdebstrap_fails_first_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Safeguard: a new user missing a tool hears which package, before any download."""
    if dom0image.os.geteuid() != 0:
        pytest.skip("the root check comes first")
    monkeypatch.setattr(dom0image, "dom0_inputs", lambda _k=None: {"key": "k"})
    monkeypatch.setattr(dom0image, "missing_build_tools", lambda: ["mmdebstrap"])
    monkeypatch.setattr(dom0image, "_build", lambda *a: pytest.fail("built without the tools"))
    with pytest.raises(ImageError) as exc:
        dom0image.ensure_dom0_image(cache=tmp_path)
    assert str(exc.value) == (
        "building the Dom0 image needs mmdebstrap: apt-get install mmdebstrap "
        "(or run scripts/bootstrap.sh)"
    )


def test_cpu_model_drops_sep_and_renames() -> None:
    out = dom0image.cpu_model_xml(CPU)
    assert f"<model name='{dom0image.CPU_MODEL}'>" in out
    assert "'sep'" not in out and "'syscall'" in out and "'pse'" in out


def test_cpu_index_lists_model_once() -> None:
    index = "<cpus>\n  <arch name='x86'>\n    <include filename='x86_qemu64.xml'/>\n"
    out = dom0image.cpu_index_xml(index)
    assert out.count(dom0image.CPU_MODEL) == 1
    assert dom0image.cpu_index_xml(out) == out
    with pytest.raises(ImageError):
        dom0image.cpu_index_xml("<cpus/>")


def _argv(**over: object) -> list[str]:
    kw: dict[str, object] = {
        "xen": Path("/c/xen"),
        "kernel": Path("/c/bzImage"),
        "initrd": Path("/c/initrd.gz"),
        "rootfs": Path("/c/rootfs.ext4"),
        "port": 2222,
        "shares": {"xvsrc": Path("/src"), "xvcfg": Path("/run/cfg")},
        "serial_log": Path("/run/x/serial.log"),
        "pidfile": Path("/run/x/qemu.pid"),
    }
    kw.update(over)
    return vm.qemu_argv(**kw)  # type: ignore[arg-type]


def test_qemu_argv_network_is_loopback_only_and_restricted() -> None:
    argv = _argv()
    net = argv[argv.index("-netdev") + 1]
    assert net == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"
    assert argv.count("-netdev") == 1


def test_qemu_argv_root_is_snapshot_and_shares_readonly() -> None:
    argv = _argv()
    drive = argv[argv.index("-drive") + 1]
    assert "snapshot=on" in drive and "format=raw" in drive
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    assert len(fsdevs) == 2 and all("readonly=on" in f for f in fsdevs)
    assert any("mount_tag=xvcfg" in a for a in argv)


def test_qemu_argv_multiboot_modules_and_xen_cmdline() -> None:
    argv = _argv(memory_mib=3072, dom0_mib=1024)
    assert argv[argv.index("-initrd") + 1] == (
        "/c/bzImage root=/dev/vda ro console=hvc0 earlyprintk=xen quiet loglevel=4,/c/initrd.gz"
    )
    append = argv[argv.index("-append") + 1]
    assert "dom0_mem=1024M,max:1024M" in append and "console=com1" in append
    assert argv[argv.index("-cpu") + 1] == "qemu64,+svm,+npt"
    assert "-daemonize" in argv and "-no-reboot" in argv


@pytest.mark.parametrize("bad", [Path("/a,b/xen"), Path("/a b/xen")])
def test_qemu_argv_refuses_paths_qemu_would_split(bad: Path) -> None:
    with pytest.raises(HostChangeError):
        _argv(xen=bad)


def test_qemu_argv_refuses_unknown_share_and_tiny_memory() -> None:
    with pytest.raises(HostChangeError):
        _argv(shares={"other": Path("/x")})
    with pytest.raises(HostChangeError):
        _argv(memory_mib=900, dom0_mib=768)


def test_state_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENVLAN_RUN_DIR", str(tmp_path / "run"))
    assert vm.load_state() is None
    st = vm.VmState(
        directory=str(vm.state_dir()),
        port=4242,
        host_key="ssh-ed25519 AAAA",
        client_key="/k",
        image_dir="/img",
        src_dir="/src",
        guest_image_dir=None,
        memory_mib=2048,
        qemu_pid=12345,
    )
    vm.save_state(st)
    assert vm.state_file() == tmp_path / "run" / "sandbox" / "xen" / "state.json"
    assert vm.state_file().stat().st_mode & 0o077 == 0
    assert vm.load_state() == st
    assert json.loads(vm.state_file().read_text())["port"] == 4242


def test_stop_without_qemu_removes_every_run_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XENVLAN_RUN_DIR", str(tmp_path / "run"))
    st = vm.VmState(str(vm.state_dir()), 1, "k", "/k", "/i", "/s", None, 2048, qemu_pid=None)
    vm.save_state(st)
    (vm.state_dir() / "serial.log").write_text("x")
    assert vm.stop() == []
    assert not (tmp_path / "run").exists()


def test_alive_and_is_our_qemu_for_ourselves(tmp_path: Path) -> None:
    import os

    assert pid_alive(os.getpid())
    assert not pid_alive(None)
    assert not vm.is_our_qemu(os.getpid(), tmp_path / "qemu.pid")


def test_host_key_is_openssh_ed25519(tmp_path: Path) -> None:
    pub = vm.write_host_key(tmp_path)
    assert pub.startswith("ssh-ed25519 ")
    key = tmp_path / "ssh_host_ed25519_key"
    assert key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.stat().st_mode & 0o077 == 0


def test_serial_milestones() -> None:
    text = "junk\nXENVLAN-DOM0 initramfs 6.16\nXENVLAN-DOM0 sshd t=14.5\n"
    text += "XENVLAN-DOM0 libvirtd t=20.25\n"
    assert vm.serial_milestones(text) == {"sshd": 14.5, "libvirtd": 20.25}


def test_plan_args_rewrites_inputs_and_outputs(tmp_path: Path) -> None:
    plan = remote.plan_args(
        ["repro", "--lab", "lab.toml", "--report=out/r.html", "--json"], "id1", cwd=tmp_path
    )
    assert plan.argv == [
        "repro",
        "--lab",
        "/tmp/xenvlan-io/id1/1/lab.toml",
        "--report",
        "/tmp/xenvlan-io/id1/2/r.html",
        "--json",
    ]
    assert plan.uploads == [(tmp_path / "lab.toml", "/tmp/xenvlan-io/id1/1/lab.toml")]
    assert plan.downloads == [("/tmp/xenvlan-io/id1/2/r.html", tmp_path / "out" / "r.html")]


def test_plan_args_leaves_everything_after_double_dash() -> None:
    plan = remote.plan_args(["ssh", "a", "--", "cat", "--lab", "x"], "i")
    assert plan.argv == ["ssh", "a", "--", "cat", "--lab", "x"]
    assert plan.uploads == []


def test_remote_command_quotes_every_argument() -> None:
    evil = ["ssh", "a", "--", "echo", "$(reboot)", "; rm -rf /", "it's"]
    line = remote.remote_command(evil, "/tmp/xenvlan-io/x/pid", {"XENVLAN_X": "a b"})
    head, _, tail = line.partition(
        f" python3 -S {remote.ZYGOTE_SCRIPT} client {remote.ZYGOTE_SOCKET} "
    )
    assert shlex.split(tail) == evil
    assert "XENVLAN_X='a b'" in head
    assert "PYTHONPATH=/opt/xenvlan/src:/opt/xenvlan/site" in head
    assert "XENVLAN_NO_SANDBOX=1" in head
    pid = "/tmp/xenvlan-io/x/pid"
    assert head.startswith(f"mkdir -p -m 700 /tmp/xenvlan-io/x && echo $$ > {pid} && ")


def test_remote_command_points_at_the_guest_image_and_scales_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("XENVLAN_TIMEOUT_SCALE", raising=False)
    line = remote.remote_command(["up"], "/p")
    assert f"XENVLAN_GUEST_IMAGE={remote.GUEST_IMAGE_DIR}" in line
    assert f"XENVLAN_TIMEOUT_SCALE={remote.DOM0_TIMEOUT_SCALE}" in line
    monkeypatch.setenv("XENVLAN_TIMEOUT_SCALE", "3")
    line = remote.remote_command(["up"], "/p", guest_image="/var/cache/xenvlan/images/k")
    assert "XENVLAN_GUEST_IMAGE=/var/cache/xenvlan/images/k" in line
    assert "XENVLAN_TIMEOUT_SCALE=3" in line


def test_zygote_runs_by_path_from_the_shared_checkout() -> None:
    assert remote.ZYGOTE_SCRIPT == "/opt/xenvlan/src/" + "xenvlan/host/sandbox/xen/zygote.py"
    line = remote.zygote_command()
    assert f"python3 {remote.ZYGOTE_SCRIPT} serve {remote.ZYGOTE_SOCKET}" in line
    assert line.endswith(f"& echo $! > {remote.ZYGOTE_SOCKET}.pid") and "< /dev/null" in line
    assert "PYTHONPATH=/opt/xenvlan/src:/opt/xenvlan/site" in line


def _state(**over: object) -> vm.VmState:
    st = vm.VmState("/d", 1, "k", "/k", "/i", "/s", "/img/abc", 2048, qemu_pid=None)
    for k, v in over.items():
        setattr(st, k, v)
    return st


def test_shared_guest_image_needs_no_copy(tmp_path: Path) -> None:
    class NoSession:
        def exec(self, *_a: object, **_k: object) -> object:
            raise AssertionError("nothing to copy")

    st = _state(guest_image_dir=str(tmp_path))
    assert remote.dom0_image_dir(NoSession(), st, tmp_path) == remote.GUEST_IMAGE_DIR  # type: ignore[arg-type]
    assert remote.dom0_image_dir(NoSession(), st, None) == remote.GUEST_IMAGE_DIR  # type: ignore[arg-type]


def test_other_guest_image_is_copied_once_under_its_key(tmp_path: Path) -> None:
    img = tmp_path / "k123"
    img.mkdir()
    for name in ("meta.json", "bzImage", "initrd.gz"):
        (img / name).write_text(name)
    calls: list[str] = []
    puts: list[tuple[Path, str]] = []

    class Fake:
        present = False

        def exec(self, command: str, **_k: object) -> remote.ExecResult:
            calls.append(command)
            ok = not command.startswith("test -s") or self.present
            return remote.ExecResult(0 if ok else 1, "", "")

        def put(self, host: Path, dest: str) -> None:
            puts.append((host, dest))

    fake = Fake()
    got = remote.dom0_image_dir(fake, _state(), img)  # type: ignore[arg-type]
    assert got == "/var/cache/xenvlan/images/k123"
    assert sorted(d for _h, d in puts) == [
        "/var/cache/xenvlan/images/k123.part/bzImage",
        "/var/cache/xenvlan/images/k123.part/initrd.gz",
        "/var/cache/xenvlan/images/k123.part/meta.json",
    ]
    assert calls[-1] == "mv /var/cache/xenvlan/images/k123.part /var/cache/xenvlan/images/k123"
    fake.present, puts[:] = True, []
    assert remote.dom0_image_dir(fake, _state(), img) == got  # type: ignore[arg-type]
    assert puts == []


def test_running_needs_a_finished_boot_and_our_pid(tmp_path: Path) -> None:
    import os

    st = _state(directory=str(tmp_path), qemu_pid=os.getpid())
    assert not vm.running(st)  # libvirt never answered
    st.timings["virsh"] = 1.0
    assert not vm.running(st)  # our pid, but not a QEMU with our -pidfile
    assert not vm.running(_state(qemu_pid=None, timings={"virsh": 1.0}))


def test_guest_image_env_loads_a_prebuilt_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xenvlan.guest.image import build

    d = tmp_path / "img"
    d.mkdir()
    (d / "bzImage").write_bytes(b"k")
    (d / "initrd.gz").write_bytes(b"i")
    meta = {"kernel_version": "6.1.0-x", "kernel_config": {}, "key": "abc", "vmlinux": False}
    (d / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setenv("XENVLAN_GUEST_IMAGE", str(d))
    monkeypatch.setattr(build, "image_inputs", _no_apt)
    img = build.ensure_image()
    assert (img.kernel, img.initrd, img.key) == (d / "bzImage", d / "initrd.gz", "abc")
    assert build.cached_image() == (img, d)
    (d / "initrd.gz").unlink()
    with pytest.raises(ImageError, match=r"XENVLAN_GUEST_IMAGE=.* not a complete guest image"):
        build.ensure_image()
    (d / "meta.json").write_text("{}")
    with pytest.raises(ImageError, match="not a complete"):
        build.cached_image()


def _no_apt(*_a: object, **_k: object) -> dict[str, object]:
    raise AssertionError("apt must not be asked when XENVLAN_GUEST_IMAGE is set")


@pytest.mark.parametrize("raw,want", [("", 1.0), ("6", 6.0), (" 2.5 ", 2.5)])
def test_timeout_scale(raw: str, want: float, monkeypatch: pytest.MonkeyPatch) -> None:
    from xenvlan import timeouts

    monkeypatch.setenv("XENVLAN_TIMEOUT_SCALE", raw)
    assert timeouts.scale() == want
    assert timeouts.scaled(10) == 10 * want


@pytest.mark.parametrize("raw", ["0", "-1", "x", "nan", "inf"])
def test_timeout_scale_rejects_nonsense(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from xenvlan import timeouts
    from xenvlan.errors import SpecError

    monkeypatch.setenv("XENVLAN_TIMEOUT_SCALE", raw)
    with pytest.raises(SpecError, match="XENVLAN_TIMEOUT_SCALE"):
        timeouts.scale()


def test_session_deadline_is_scaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest that never answers: the error names the scaled deadline."""
    import paramiko

    from xenvlan.errors import GuestError
    from xenvlan.guest import session as sess

    monkeypatch.setenv("XENVLAN_TIMEOUT_SCALE", "3")
    clock = itertools.chain([0.0, 0.0], itertools.repeat(1000.0))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(time, "sleep", lambda _s: None)

    def refuse(*_a: object, **_k: object) -> None:
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(paramiko.SSHClient, "connect", refuse)
    addr = sess.GuestAddress("a", "192.0.2.1", vm.write_host_key(tmp_path))
    s = sess.GuestSession(addr, None)  # type: ignore[arg-type]  # refused before auth
    with pytest.raises(GuestError, match="within 30s"):
        s.connect(10.0)


def test_cli_runs_in_the_xen_dom0_when_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from xenvlan import cli

    calls: list[tuple[list[str], object]] = []
    st = _state(timings={"virsh": 1.0})
    monkeypatch.setattr(vm, "load_state", lambda: st)
    monkeypatch.setattr(vm, "running", lambda s: s is st)

    def fake_run(args: list[str], **kw: object) -> int:
        calls.append((args, kw.get("guest_image")))
        return 7

    monkeypatch.setattr(remote, "run", fake_run)
    monkeypatch.delenv("XENVLAN_NO_SANDBOX", raising=False)
    monkeypatch.setattr(sys, "argv", ["xenvlan", "status", "--json"])
    with pytest.raises(SystemExit) as exc:
        cli._reexec_in_sandbox()
    assert exc.value.code == 7
    assert calls == [(["status", "--json"], None)]
    for argv in (["sandbox", "stop"], ["image", "build"], ["--help"]):
        monkeypatch.setattr(sys, "argv", ["xenvlan", *argv])
        monkeypatch.setattr(vm, "load_state", lambda: None)  # netns path: nothing runs either
        cli._reexec_in_sandbox()
    monkeypatch.setenv("XENVLAN_NO_SANDBOX", "1")
    monkeypatch.setattr(vm, "load_state", lambda: st)
    monkeypatch.setattr(sys, "argv", ["xenvlan", "status"])
    cli._reexec_in_sandbox()  # inside the Dom0: runs here


def test_source_fingerprint_sees_edits_not_byte_code(tmp_path: Path) -> None:
    pkg = tmp_path / "xenvlan"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    first = vm.source_fingerprint(tmp_path)
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"pyc")
    assert vm.source_fingerprint(tmp_path) == first
    (pkg / "a.py").write_text("x = 22\n")
    assert vm.source_fingerprint(tmp_path) != first


def test_an_edited_checkout_is_remounted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Safeguard: 9p's loose cache would keep running the old code in the Dom0."""
    pkg = tmp_path / "src" / "xenvlan"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("x = 1\n")
    st = _state(src_dir=str(tmp_path / "src"))
    st.src_fingerprint = vm.source_fingerprint(tmp_path / "src")
    calls: list[str] = []

    class Session:
        def exec(self, command: str, **_k: object) -> remote.ExecResult:
            calls.append(command)
            return remote.ExecResult(0, "", "")

    assert remote.refresh_source(Session(), st) is False  # type: ignore[arg-type]
    assert calls == []
    (pkg / "m.py").write_text("x = 2\n")
    assert remote.refresh_source(Session(), st) is True  # type: ignore[arg-type]
    assert len(calls) == 1 and f"umount -l {remote.SRC_DIR}" in calls[0]
    assert f"-o {vm.SHARE_OPTIONS} xvsrc {remote.SRC_DIR}" in calls[0]
    assert (pkg / "__pycache__").is_dir()  # byte-compiled on the host for the Dom0
    assert remote.refresh_source(Session(), st) is False  # type: ignore[arg-type]
    assert vm.load_state() is not None and vm.load_state().src_fingerprint == st.src_fingerprint  # type: ignore[union-attr]


def test_dom0init_mounts_shares_as_the_remount_does() -> None:
    from importlib import resources

    rc = resources.files("xenvlan.host.sandbox.xen").joinpath("dom0init").read_text()
    assert f'-o "{vm.SHARE_OPTIONS}"' in rc
