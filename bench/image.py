"""Boot-to-ready benchmark of the guest image under QEMU/TCG.

Compares booting the uncompressed vmlinux (PVH ELF note) with the bzImage, and the base
initramfs compressed with gzip, zstd and xz. Prints a table of median seconds from QEMU start
to the guest's "XENVLAN-READY" console line and to a first SSH command.

    python bench/image.py [--runs 3] [--cache DIR]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paramiko

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xenvlan.guest.image.build import GuestImage, ensure_image, write_guest_initrd
from xenvlan.guest.keys import ensure_client_key, generate_host_key, load_pkey, public_pkey


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot_once(
    kernel: Path, initrd: Path, work: Path, host_pub: str, client_key: Path
) -> tuple[float, float]:
    """Boot once; return (seconds to XENVLAN-READY, seconds to a finished `true` over SSH)."""
    port = _free_port()
    console = work / "console.log"
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 xenvlan.name=b xenvlan.mgmt=10.0.2.15/24",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip
    with console.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        while b"XENVLAN-READY" not in console.read_bytes():
            if b"XENVLAN-FAIL" in console.read_bytes() or proc.poll() is not None:
                raise RuntimeError(console.read_text(errors="replace")[-1500:])
            if time.monotonic() - started > 120:
                raise RuntimeError("no XENVLAN-READY within 120 s")
            time.sleep(0.02)
        ready = time.monotonic() - started
        c = paramiko.SSHClient()
        pinned = public_pkey(host_pub)
        c.get_host_keys().add(f"[127.0.0.1]:{port}", pinned.get_name(), pinned)
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.connect(
            "127.0.0.1",
            port=port,
            username="root",
            pkey=load_pkey(client_key),
            allow_agent=False,
            look_for_keys=False,
            timeout=60,
            banner_timeout=60,
        )
        _, out, _ = c.exec_command("true")
        out.channel.recv_exit_status()
        c.close()
        return ready, time.monotonic() - started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def initrd_variants(image: GuestImage, work: Path) -> dict[str, Path]:
    """The base initramfs recompressed with each compressor the kernel supports."""
    cpio = gzip.decompress(image.initrd.read_bytes())
    raw = work / "base.cpio"
    raw.write_bytes(cpio)
    variants = {"gzip": image.initrd}
    cmds = {
        "zstd": ["zstd", "-19", "-q", "-f", "-o", str(work / "base.cpio.zst"), str(raw)],
        "xz": ["xz", "-k", "-f", "--check=crc32", "-9", str(raw)],
    }
    outs = {"zstd": work / "base.cpio.zst", "xz": work / "base.cpio.xz"}
    for name, argv in cmds.items():
        if shutil.which(argv[0]) and image.kernel_config.get(f"RD_{name.upper()}", "y") != "n":
            subprocess.run(argv, check=True)
            variants[name] = outs[name]
    return variants


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()

    t0 = time.monotonic()
    image = ensure_image(cache=args.cache, progress=lambda m: print(f"  {m}", file=sys.stderr))
    print(f"image {image.key} kernel {image.kernel_version} ({time.monotonic() - t0:.1f} s)")
    rows: list[tuple[str, str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="xenvlan-bench.") as tmp:
        work = Path(tmp)
        client = ensure_client_key(work / "client")
        host = generate_host_key(work / "host", "b")
        kernels = {"bzImage": image.bzimage}
        if image.vmlinux is not None:
            kernels["vmlinux (PVH)"] = image.vmlinux
        for comp, base in initrd_variants(image, work).items():
            variant = GuestImage(
                kernel=image.kernel,
                bzimage=image.bzimage,
                vmlinux=image.vmlinux,
                initrd=base,
                kernel_version=image.kernel_version,
                kernel_config=image.kernel_config,
                key=image.key,
            )
            initrd = write_guest_initrd(
                variant,
                work / f"guest-{comp}.initrd",
                host_key=host.dropbear_path,
                authorized_key=client.public_openssh,
            )
            for kname, kernel in kernels.items():
                if comp != "gzip" and kname == "bzImage":
                    continue  # compression comparison only with the default kernel
                samples = [
                    boot_once(kernel, initrd, work, host.public_openssh, client.path)
                    for _ in range(args.runs)
                ]
                ready = statistics.median(s[0] for s in samples)
                ssh = statistics.median(s[1] for s in samples)
                rows.append((kname, comp, initrd.stat().st_size, ready, ssh))
                print(
                    f"  {kname:14} {comp:5} ready {ready:5.2f} s  ssh {ssh:5.2f} s", file=sys.stderr
                )
    header = f"{'kernel':14} {'initrd':6} {'bytes':>9} {'ready s':>8} {'ssh s':>7}"
    print(f"\n{header}  (median of {args.runs})")
    for kname, comp, size, ready, ssh in rows:
        print(f"{kname:14} {comp:6} {size:9d} {ready:8.2f} {ssh:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
