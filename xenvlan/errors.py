"""The error hierarchy; each class carries the CLI exit code it maps to."""

from __future__ import annotations


class XenvlanError(Exception):
    """Base of every error xenvlan reports to the user as one line."""

    exit_code = 1


class SpecError(XenvlanError):
    """Bad user input: a lab file or a command-line value."""

    exit_code = 2


class HypervisorError(XenvlanError):
    """libvirt is unreachable, refuses, or a domain/network cannot be handled."""

    exit_code = 3


class GuestError(XenvlanError):
    """A guest did not boot, answer SSH, or run a command as expected."""

    exit_code = 4


class HostChangeError(XenvlanError):
    """A change to the host (sysctl, firewall, file) was refused or failed."""

    exit_code = 5


class BusyError(XenvlanError):
    """Another mutating xenvlan command holds the lab's lock."""

    exit_code = 6


class ImageError(XenvlanError):
    """The guest image could not be built or found."""

    exit_code = 7
