"""`xenvlan image build|show`: the tiny guest kernel + initramfs."""

from __future__ import annotations

from typing import Annotated

import typer

from xenvlan.cli.common import out, print_json, progress

sub = typer.Typer(help="The guest image (distro kernel + busybox/dropbear/iputils initramfs).")


@sub.command()
def build(
    force: Annotated[bool, typer.Option(help="Rebuild even when cached.")] = False,
    kernel_package: Annotated[
        str | None, typer.Option(help="Debian kernel package to use.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Build (or reuse) the cached guest image."""
    from xenvlan.guest import image

    img = image.ensure_image(force=force, kernel_package=kernel_package, progress=progress)
    data = {
        "kernel": str(img.kernel),
        "initrd": str(img.initrd),
        "kernel_version": img.kernel_version,
        "key": img.key,
    }
    if json_out:
        print_json(data)
    else:
        out.print(
            f"image {img.key[:12]}: kernel {img.kernel} ({img.kernel_version}), initrd {img.initrd}"
        )


def register(app: typer.Typer) -> None:
    """Add the `image` group."""
    app.add_typer(sub, name="image")
