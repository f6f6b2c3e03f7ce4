"""Boot persistence of a fix: a sysctl.d drop-in plus loading br_netfilter before sysctl runs."""

from __future__ import annotations

from pathlib import Path

from xenvlan.errors import HostChangeError
from xenvlan.host.journal import HostJournal, atomic_write

SYSCTL_DROPIN = Path("etc/sysctl.d/90-xenvlan.conf")
MODULES_DROPIN = Path("etc/modules-load.d/xenvlan-br_netfilter.conf")
_HEADER = (
    "# Written by `xenvlan fix apply --persist`; undo with `xenvlan fix revert`.\n"
    "# br_netfilter must be loaded before systemd-sysctl runs, else these lines are ignored\n"
    "# (see {modules}).\n"
)


def persist_paths(root: Path = Path("/")) -> tuple[Path, Path]:
    """The sysctl.d drop-in and the modules-load.d file under `root`."""
    return root / SYSCTL_DROPIN, root / MODULES_DROPIN


def _parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def write_persist(
    journal: HostJournal, settings: dict[str, str], root: Path = Path("/")
) -> list[Path]:
    """Journal, then write both files; settings already in our drop-in are kept (merged)."""
    sysctl_file, modules_file = persist_paths(root)
    for path in (sysctl_file, modules_file):
        if not path.parent.is_dir():
            raise HostChangeError(f"{path.parent} does not exist; is this a systemd host?")
    merged: dict[str, str] = {}
    if sysctl_file.exists():
        merged = _parse(sysctl_file.read_text())
    merged.update(settings)
    body = _HEADER.format(modules=Path("/") / MODULES_DROPIN)
    body += "".join(f"{k} = {v}\n" for k, v in sorted(merged.items()))
    modules_body = "# Written by `xenvlan fix apply --persist`: load before systemd-sysctl.\n"
    modules_body += "br_netfilter\n"
    journal.record_file(sysctl_file, "sysctl drop-in")
    journal.record_file(modules_file, "load br_netfilter at boot")
    try:
        atomic_write(sysctl_file, body.encode(), 0o644)
        atomic_write(modules_file, modules_body.encode(), 0o644)
    except OSError as exc:
        raise HostChangeError(f"cannot write persistence files: {exc.strerror}") from exc
    return [sysctl_file, modules_file]
