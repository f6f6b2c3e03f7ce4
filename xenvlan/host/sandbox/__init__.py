"""Private hypervisors for bare machines: a libvirtd in a network namespace."""
