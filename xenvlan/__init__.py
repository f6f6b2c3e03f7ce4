"""xenvlan: reproduce, measure and fix bridged VLAN fragmentation cliffs between guests."""

__version__ = "0.1.0"
