"""The guest image, by job: apt (inputs, fetch), kernel, modules, cpio, rootfs, build (cache)."""

from xenvlan.guest.image.build import (
    GuestImage,
    cached_image,
    ensure_image,
    image_from_files,
    image_inputs,
    init_script,
    write_guest_initrd,
)

__all__ = [
    "GuestImage",
    "cached_image",
    "ensure_image",
    "image_from_files",
    "image_inputs",
    "init_script",
    "write_guest_initrd",
]
