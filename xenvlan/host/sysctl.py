"""Reading and writing the bridge-netfilter knobs: global sysctls and per-bridge sysfs files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from xenvlan.errors import HostChangeError

BRIDGE_SYSCTLS: tuple[str, ...] = (
    "bridge-nf-call-arptables",
    "bridge-nf-call-ip6tables",
    "bridge-nf-call-iptables",
    "bridge-nf-filter-pppoe-tagged",
    "bridge-nf-filter-vlan-tagged",
    "bridge-nf-pass-vlan-input-dev",
)
BRIDGE_KNOBS: tuple[str, ...] = ("nf_call_arptables", "nf_call_ip6tables", "nf_call_iptables")


def bridge_sysctl_dir(proc: Path = Path("/proc")) -> Path:
    """/proc/sys/net/bridge: present exactly when br_netfilter is active in this namespace."""
    return proc / "sys" / "net" / "bridge"


def sysctl_name(path: Path) -> str:
    """`.../sys/net/bridge/bridge-nf-call-iptables` -> `net.bridge.bridge-nf-call-iptables`."""
    parts = path.parts
    if "sys" in parts:
        idx = len(parts) - 1 - parts[::-1].index("sys")
        return ".".join(parts[idx + 1 :])
    return str(path)


def bridge_knob_path(bridge: str, knob: str, sys: Path = Path("/sys")) -> Path:
    """/sys/class/net/<bridge>/bridge/<knob>."""
    return sys / "class" / "net" / bridge / "bridge" / knob


def read_value(path: Path) -> str | None:
    """The stripped content of a proc/sys file, or None when it does not exist."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HostChangeError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_bridge_sysctls(proc: Path = Path("/proc")) -> dict[str, str]:
    """Every file in /proc/sys/net/bridge (empty when br_netfilter is not loaded)."""
    base = bridge_sysctl_dir(proc)
    if not base.is_dir():
        return {}
    out: dict[str, str] = {}
    for entry in sorted(base.iterdir()):
        value = read_value(entry)
        if value is not None:
            out[entry.name] = value
    return out


def read_bridge_knobs(bridge: str, sys: Path = Path("/sys")) -> dict[str, str]:
    """The per-bridge nf_call_* values that exist for `bridge`."""
    out: dict[str, str] = {}
    for knob in BRIDGE_KNOBS:
        value = read_value(bridge_knob_path(bridge, knob, sys))
        if value is not None:
            out[knob] = value
    return out


def check_writable(path: Path) -> None:
    """Refuse early (one line) when `path` is missing, read-only or not permitted."""
    if not path.exists():
        raise HostChangeError(f"{path} does not exist")
    if not os.access(path, os.W_OK):
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            why = "read-only file system" if exc.errno == errno.EROFS else exc.strerror
            raise HostChangeError(f"cannot write {path}: {why}") from exc
        os.close(fd)


def write_value(path: Path, value: str) -> None:
    """Write one value (a single write(2), as sysctl(8) does) and read it back."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, f"{value}\n".encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise HostChangeError(f"cannot write {value} to {path}: {exc.strerror or exc}") from exc
    now = read_value(path)
    if now != value:
        raise HostChangeError(f"wrote {value} to {path} but it reads back {now}")
