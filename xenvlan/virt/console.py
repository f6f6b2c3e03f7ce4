"""Guest consoles read through libvirt (virDomainOpenConsole), copied into the lab's run dir.

Xen PV/PVH guests have no serial the libxl driver can log to a file, and xenconsoled logs guest
consoles only when told to; so, as `virsh console` does, xenvlan opens the console stream and
copies it into `<run dir>/<guest>.console`, where the readiness marker is looked for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import libvirt


class ConsoleTap(threading.Thread):
    """Copy one domain's console stream into a file until stopped or the stream ends."""

    def __init__(self, conn: libvirt.virConnect, domain: str, dest: Path) -> None:
        super().__init__(name=f"console-{domain}", daemon=True)
        self.conn = conn
        self.domain = domain
        self.dest = dest
        self.error: str | None = None
        self._stream: libvirt.virStream | None = None
        self._stopping = threading.Event()
        self._opened = threading.Event()

    def start_and_wait(self, timeout: float = 10.0) -> ConsoleTap:
        """Start the thread and wait until the console is open (or failed)."""
        self.start()
        self._opened.wait(timeout)
        return self

    def run(self) -> None:
        """Open the console and copy bytes; any libvirt error ends the tap quietly.

        The tap has its own connection: a blocking stream read sharing the caller's connection
        could hold up the caller's next call (a PVH guest once stayed paused for good, its
        `resume` never answered, in the nested Dom0).
        """
        fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        own: libvirt.virConnect | None = None
        try:
            own = libvirt.open(self.conn.getURI())
            dom = own.lookupByName(self.domain)
            stream = own.newStream(0)  # blocking: recv() waits for data
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            self._stream = stream
            self._opened.set()
            while not self._stopping.is_set():
                data = stream.recv(4096)
                if not isinstance(data, bytes) or not data:
                    break
                os.write(fd, data)
        except libvirt.libvirtError as exc:
            if not self._stopping.is_set():
                self.error = str(exc)
        finally:
            self._opened.set()
            os.close(fd)
            if own is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    own.close()

    def stop(self) -> None:
        """Stop copying and release the console."""
        self._stopping.set()
        if self._stream is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.abort()
        self.join(timeout=5.0)
