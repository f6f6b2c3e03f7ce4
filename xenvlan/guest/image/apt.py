"""What the image is made of, asked of apt/dpkg, and the kernel deb fetched (never from inside
a sandbox namespace: the fetch runs in the namespace the command came from).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from xenvlan.errors import ImageError
from xenvlan.host.run import run_checked

KERNEL_METAPACKAGE = "linux-image-amd64"
#: Host packages whose binaries are copied into the initramfs (versions feed the cache key).
USERSPACE_PACKAGES: tuple[str, ...] = ("busybox-static", "dropbear-bin", "iputils-ping")

Progress = Callable[[str], None]


def say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def resolve_kernel_package(override: str | None = None) -> tuple[str, str]:
    """(package, candidate version) of the concrete kernel image package."""
    pkg = override
    if pkg is None:
        out = run_checked(
            ["apt-cache", "depends", KERNEL_METAPACKAGE], "apt-cache depends", error=ImageError
        )
        found = re.findall(r"Depends:\s+(linux-image-\S+)", out)
        if not found:
            raise ImageError(f"apt-cache depends {KERNEL_METAPACKAGE}: no linux-image dependency")
        pkg = found[0]
    out = run_checked(["apt-cache", "policy", pkg], f"apt-cache policy {pkg}", error=ImageError)
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        raise ImageError(f"kernel package {pkg} has no installable candidate (apt-get update?)")
    return pkg, m.group(1)


def host_package_versions(packages: tuple[str, ...] = USERSPACE_PACKAGES) -> dict[str, str]:
    """Installed versions of the userspace packages copied into the image."""
    out = run_checked(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n", *packages],
        "dpkg-query -W " + " ".join(packages),
        error=ImageError,
    )
    versions: dict[str, str] = {}
    for line in out.splitlines():
        name, version, status = [*line.split("\t"), "", ""][:3]
        if status == "installed":
            versions[name.split(":")[0]] = version
    missing = [p for p in packages if p not in versions]
    if missing:
        raise ImageError(f"host packages not installed: {' '.join(missing)} (apt-get install them)")
    return versions


def download_deb(pkg: str, version: str, debs: Path, progress: Progress | None) -> Path:
    """`apt-get download pkg=version` into the cache, run in the namespace the user started in."""
    safe_version = version.replace(":", "%3a")
    dest = debs / f"{pkg}_{safe_version}_amd64.deb"
    if dest.exists():
        return dest
    debs.mkdir(parents=True, exist_ok=True)
    say(progress, f"downloading {pkg} {version}")
    with tempfile.TemporaryDirectory(dir=debs, prefix=".dl.") as tmp:
        argv, fds = fetch_argv(["apt-get", "download", f"{pkg}={version}"])
        run_checked(argv, f"apt-get download {pkg}", cwd=Path(tmp), pass_fds=fds, error=ImageError)
        found = list(Path(tmp).glob("*.deb"))
        if len(found) != 1:
            raise ImageError(f"apt-get download {pkg}: expected one .deb, found {len(found)}")
        os.replace(found[0], dest)
    return dest


def fetch_argv(argv: list[str]) -> tuple[list[str], tuple[int, ...]]:
    """`argv` made to run in the user's own network namespace (downloads never run in a sandbox).

    A command re-executed into the sandbox carries an inherited handle on the namespace it was
    started in (`sandbox.ORIGIN_NETNS_FD_ENV`); the fetch then runs there through `nsenter`.
    Inside a sandbox namespace without that handle, fetching is refused: it has no route out.
    """
    from xenvlan.host.sandbox import netns as sandbox

    fd = sandbox.origin_netns_fd()
    if fd is not None:
        return ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *argv], (fd,)
    if sandbox.inside_sandbox():
        raise ImageError(
            f"{argv[0]} {argv[1]}: refused inside the sandbox namespace (no route out); "
            "run `xenvlan image build` outside it"
        )
    return argv, ()


def cached_debs(debs: Path) -> list[tuple[str, str, Path]]:
    """(package, version, path) of every kernel deb already downloaded, newest first."""
    found: list[tuple[str, str, Path]] = []
    for deb in debs.glob("linux-image-*_amd64.deb"):
        parts = deb.name[: -len("_amd64.deb")].split("_")
        if len(parts) == 2:
            found.append((parts[0], parts[1].replace("%3a", ":"), deb))
    return sorted(found, key=lambda t: t[2].stat().st_mtime_ns, reverse=True)


#: Files whose change can alter what apt/dpkg report (kernel candidate, installed versions).
PACKAGE_STATE_FILES: tuple[str, ...] = (
    "/var/lib/apt/lists",
    "/var/lib/dpkg/status",
    "/etc/apt/preferences",
    "/etc/apt/preferences.d",
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
)


def _package_state_fingerprint() -> list[list[object]]:
    out: list[list[object]] = []
    for name in PACKAGE_STATE_FILES:
        try:
            st = os.stat(name)
        except OSError:
            continue
        out.append([name, st.st_mtime_ns, st.st_size, st.st_ino])
    return out


def package_inputs(kernel_package: str | None, memo: Path | None) -> dict[str, object]:
    """Kernel package/version and userspace versions; memoised while apt/dpkg state is unchanged.

    Asking apt-cache costs ~0.8 s per call, which every `up` would pay otherwise.
    """
    state = {"override": kernel_package, "fingerprint": _package_state_fingerprint()}
    if memo is not None:
        try:
            saved = json.loads(memo.read_text())
            if saved.get("state") == json.loads(json.dumps(state)):
                return dict(saved["packages"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    pkg, version = resolve_kernel_package(kernel_package)
    packages: dict[str, object] = {
        "kernel_package": pkg,
        "kernel_version": version,
        "userspace": host_package_versions(),
    }
    if memo is not None:
        try:
            fd, tmp = tempfile.mkstemp(dir=memo.parent, prefix=f".{memo.name}.")
            with os.fdopen(fd, "w") as f:
                json.dump({"state": state, "packages": packages}, f)
            os.replace(tmp, memo)
        except OSError:
            pass  # only an optimisation
    return packages
