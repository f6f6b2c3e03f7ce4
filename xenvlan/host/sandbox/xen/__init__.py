"""A real nested Xen Dom0 under QEMU/TCG: `image` (builder + cache), `vm` (QEMU lifecycle),
`remote` (run xenvlan inside the Dom0 over pinned SSH), `dom0init` (the Dom0's rc script)."""
