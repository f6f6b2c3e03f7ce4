"""libvirt: connection and capability probes, networks, XML rendering, consoles."""
