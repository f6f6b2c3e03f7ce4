"""Kernel modules for the initramfs: the modules.dep closure of what the guest needs."""

from __future__ import annotations

import re
from pathlib import Path

from xenvlan.errors import ImageError
from xenvlan.guest.image.kernel import decompress_any

#: Modules wanted in the guest; their modules.dep closure is packed, built-ins are skipped.
#: virtio_rng lets dropbear start at once when the domain has <rng model="virtio">.
MODULES: tuple[str, ...] = ("virtio_net", "virtio_pci", "virtio_rng", "xen-netfront", "8021q")
# --------------------------------------------------------------------------- modules


def _mod_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


def module_closure(modules_dep: str, builtin: str, wanted: tuple[str, ...] = MODULES) -> list[str]:
    """Paths (relative to the modules dir) of `wanted` and their deps, dependencies first."""
    deps: dict[str, list[str]] = {}
    path_of: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        name = _mod_name(path)
        path_of[name] = path
        deps[name] = [_mod_name(d) for d in rest.split()]
    builtins = {_mod_name(ln) for ln in builtin.split()}
    order: list[str] = []
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in done or name in builtins:
            return
        if name in stack:
            raise ImageError(f"module dependency cycle: {' -> '.join((*stack, name))}")
        if name not in path_of:
            raise ImageError(f"kernel module {name} is neither in modules.dep nor built in")
        for dep in deps[name]:
            visit(dep, (*stack, name))
        done.add(name)
        order.append(path_of[name])

    for want in wanted:
        visit(want.replace("-", "_"), ())
    return order


def read_module(path: Path) -> bytes:
    """A module's ELF bytes; .ko.xz/.ko.zst/.ko.gz are decompressed for busybox insmod."""
    data = path.read_bytes()
    if path.suffix == ".ko":
        return data
    out = decompress_any(data)
    if out is None or out[:4] != b"\x7fELF":
        raise ImageError(f"cannot decompress kernel module {path.name}")
    return out
