"""Inside the guests: boot image, SSH keys and session, VLAN setup."""
