"""Capture of bridge ports with AF_PACKET sockets, written as one pcapng file (Wireshark).

No capture process and no host change: a socket per port (bound to the port, no promiscuous
mode), read by one thread for a bounded window, and closed. pcapng keeps both ports in one
file with their names and the direction of every frame; the VLAN tag the kernel moved into
the packet's metadata is put back into the frame, so a tagged frame reads as it was sent.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from xenvlan.errors import HostChangeError
from xenvlan.evidence.counters import in_netns

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
SNAPLEN = 65535 + 18
MAX_FRAMES = 4096
MAX_BYTES = 16 << 20
LINKTYPE_ETHERNET = 1
_AUX = struct.Struct("=IIIHHHH")


@dataclass(frozen=True)
class Frame:
    """One captured frame: port index, direction, time (s), bytes on the wire."""

    port: int
    outbound: bool
    ts: float
    data: bytes


@dataclass(frozen=True)
class IPv4Info:
    """The IPv4 header of a frame (after an optional VLAN tag)."""

    src: str
    dst: str
    proto: int
    ident: int
    total_length: int
    frag_offset: int  # in bytes
    more_fragments: bool
    vlan: int | None


def ipv4_of(data: bytes) -> IPv4Info | None:
    """The IPv4 header inside an Ethernet frame (802.1Q/802.1ad tags skipped), or None."""
    off, vlan = 12, None
    etype = int.from_bytes(data[off : off + 2], "big") if len(data) >= 14 else 0
    while etype in (0x8100, 0x88A8) and len(data) >= off + 6:
        vlan = vlan if vlan is not None else int.from_bytes(data[off + 2 : off + 4], "big") & 0xFFF
        off += 4
        etype = int.from_bytes(data[off : off + 2], "big")
    ip = data[off + 2 :]
    if etype != 0x0800 or len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    flags = int.from_bytes(ip[6:8], "big")
    return IPv4Info(
        src=socket.inet_ntoa(ip[12:16]),
        dst=socket.inet_ntoa(ip[16:20]),
        proto=ip[9],
        ident=int.from_bytes(ip[4:6], "big"),
        total_length=int.from_bytes(ip[2:4], "big"),
        frag_offset=(flags & 0x1FFF) * 8,
        more_fragments=bool(flags & 0x2000),
        vlan=vlan,
    )


def _with_vlan(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> bytes:
    for level, kind, raw in ancdata:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(raw) >= _AUX.size:
            status, _len, _snap, _mac, _net, tci, tpid = _AUX.unpack_from(raw)
            if status & TP_STATUS_VLAN_VALID or tci:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100
                return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


def _open_sockets(ports: list[str]) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for port in ports:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            socks.append(s)
            s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            s.bind((port, ETH_P_ALL))
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


@dataclass
class PortCapture:
    """Capture `ports` between start() and stop() (at most `max_s` seconds)."""

    ports: list[str]
    netns: str | None = None
    max_s: float = 5.0
    frames: list[Frame] = field(default_factory=list)
    truncated: bool = False
    _socks: list[socket.socket] = field(default_factory=list, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        """Open one socket per port (in the namespace) and start reading."""
        try:
            self._socks = in_netns(self.netns, lambda: _open_sockets(self.ports))
        except OSError as exc:
            raise HostChangeError(f"cannot capture on {', '.join(self.ports)}: {exc}") from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="xenvlan-capture", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_s
        index = {s.fileno(): i for i, s in enumerate(self._socks)}
        total = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select(self._socks, [], [], 0.02)
            for s in ready:
                try:
                    data, anc, _flags, addr = s.recvmsg(SNAPLEN, socket.CMSG_SPACE(_AUX.size))
                except BlockingIOError:
                    continue
                if len(self.frames) >= MAX_FRAMES or total + len(data) > MAX_BYTES:
                    self.truncated = True
                    continue
                total += len(data)
                self.frames.append(
                    Frame(
                        index[s.fileno()],
                        addr[2] == PACKET_OUTGOING,
                        time.time(),
                        _with_vlan(data, anc),
                    )
                )

    def stop(self) -> list[Frame]:
        """Drain briefly, stop the thread, close the sockets; the frames."""
        time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for s in self._socks:
            s.close()
        self._socks = []
        return self.frames

    def write(self, path: Path) -> Path:
        """Write the frames as pcapng (one interface per port, direction flags)."""
        write_pcapng(path, self.ports, self.frames)
        return path


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def write_pcapng(path: Path, ports: list[str], frames: list[Frame]) -> None:
    """Section header, one Ethernet interface block per port, one enhanced block per frame."""
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(0, b""))]
    for port in ports:
        opts = _option(2, port.encode()) + _option(0, b"")
        out.append(_block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN) + opts))
    for fr in frames:
        us = int(fr.ts * 1_000_000)
        flags = _option(2, struct.pack("<I", 2 if fr.outbound else 1)) + _option(0, b"")
        head = struct.pack("<IIIII", fr.port, us >> 32, us & 0xFFFFFFFF, len(fr.data), len(fr.data))
        out.append(_block(6, head + fr.data + b"\0" * (-len(fr.data) % 4) + flags))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(out))
