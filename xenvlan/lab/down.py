"""Tearing a lab down: its journaled host changes, its libvirt objects (by metadata), its files."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

from xenvlan.errors import HypervisorError, XenvlanError
from xenvlan.lab.model import Progress, noop
from xenvlan.paths import lab_dir, run_dir
from xenvlan.virt import connection as hv
from xenvlan.virt.network import (
    remove_reservation,
)

# ---------------------------------------------------------------------------- down


def down_lab(conn: libvirt.virConnect, lab: str, progress: Progress = noop) -> list[str]:
    """Undo `lab`'s journaled host changes, remove its libvirt objects (by metadata) and files."""
    from xenvlan.host.journal import revert_lab_changes

    removed: list[str] = []
    errors: list[str] = []
    try:
        for act in revert_lab_changes(lab):
            removed.append(f"host change {act.kind} {act.key} ({act.result})")
            progress(f"reverted {act.kind} {act.key} from the journal ({act.result})")
    except XenvlanError as exc:
        errors.append(str(exc))

    doms = list(hv.owned_domains(conn, lab))
    # Reservations one at a time (concurrent updates of one network can fail), then the guests
    # in parallel: libvirt's destroy waits ~2 s for each QEMU to exit. A failed reservation
    # removal never keeps its guest alive.
    for dom, own in doms:
        net_name, mac = own.get("network"), own.get("mac")
        try:
            net = hv.lookup_network(conn, net_name) if net_name and mac else None
            if net is not None and remove_reservation(net, mac, dom.name()):
                removed.append(f"reservation {mac} on {net_name}")
        except (XenvlanError, libvirt.libvirtError) as exc:
            errors.append(str(exc))

    def remove(dom: libvirt.virDomain) -> str:
        name = dom.name()
        hv.remove_domain(dom)
        progress(f"removed domain {name}")
        return f"domain {name}"

    if doms:
        with ThreadPoolExecutor(len(doms)) as pool:
            for fut in [pool.submit(remove, dom) for dom, _own in doms]:
                try:
                    removed.append(fut.result())
                except (XenvlanError, libvirt.libvirtError) as exc:
                    errors.append(str(exc))
    for net, _own in list(hv.owned_networks(conn, lab)):
        name = net.name()
        try:
            hv.remove_network(net)
            removed.append(f"network {name}")
            progress(f"removed network {name}")
        except XenvlanError as exc:
            errors.append(str(exc))
    ldir = lab_dir(lab)
    if ldir.exists():
        shutil.rmtree(ldir)
        removed.append(f"run dir {ldir}")
    _prune_empty(lab_dir(lab).parent)
    if errors:
        raise HypervisorError("down incomplete: " + "; ".join(errors))
    return removed


def _prune_empty(path: Path) -> None:
    """Remove empty xenvlan run directories up to the run root."""
    root = run_dir()
    while path != root.parent and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path == root:
            break
        path = path.parent
