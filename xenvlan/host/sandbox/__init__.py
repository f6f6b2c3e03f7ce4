"""Private hypervisors for bare machines: a libvirtd in a network namespace (`netns`), or a
real Xen Dom0 nested under QEMU (`xen`)."""
