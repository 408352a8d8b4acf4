"""The agent's NAT-T shell: one UDP socket on port 4500 carrying ESP-in-UDP, IKE and keepalives (RFC 3948).

The bytes are judged by :mod:`client_agent.ipsec.udpencap` (sans-IO); this module only moves them.
Inbound, a datagram is demultiplexed: IKE (non-ESP marker) goes to the IKE shell, a keepalive is
counted, ESP is handed to the datapath as the IPv4/ESP packet RFC 3948 section 3.1.1 leaves after
removing the UDP header, so ESP processing and its drop counters stay those of raw ESP. Outbound,
:meth:`NattSocket.send` takes the datapath's protected packets: ESP under a UDP-encapsulated SA
goes to the peer's NAT-T address (wherever its NAT mapped port 4500), everything else to the raw
sender. Keepalives (RFC 3948 section 4) go to every peer with an encapsulated SA.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from client_agent.ipsec.udpencap import (
    NATT_PORT,
    Keepalive,
    Kind,
    UdpEncapError,
    classify,
    esp_of,
    esp_packet,
    mark_ike,
    strip_marker,
)
from netwire.checksum import ip_bytes

Address = tuple[str, int]
log = logging.getLogger("natlab.agent")


class NattSocket:
    """UDP/4500 for one agent; a :class:`~client_agent.datapath.PacketSource` for the datapath."""

    def __init__(self, address: str, local_ip: str, mark: int, *, keepalive: float,
                 on_ike: Callable[[bytes, Address], None] | None = None,
                 drop: Callable[[str, str, object], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if mark:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)  # bypasses the TUN, as the raw sockets do
        self.sock.setblocking(False)
        self.sock.bind((address, NATT_PORT))
        self.local = ip_bytes(local_ip)
        self.keepalive, self.on_ike, self.drop, self.clock = keepalive, on_ike, drop, clock
        self.routes: dict[int, Address] = {}  # outbound SPI -> the peer's NAT-T address
        self.timers: dict[Address, Keepalive] = {}
        self.counters: Counter[str] = Counter()

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> bytes | None:
        """The next received ESP packet; IKE and keepalives are handled on the way, ``None`` when drained."""
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return None
            packet = self._accept(data, addr)
            if packet is not None:
                return packet

    def _accept(self, data: bytes, addr: Address) -> bytes | None:
        try:
            kind = classify(data)
        except UdpEncapError as err:
            self._drop(f"natt_{err.detail_reason}", err)
            return None
        self.counters[f"{kind}_received"] += 1
        if kind is Kind.IKE:
            if self.on_ike is not None:
                self.on_ike(strip_marker(data), addr)
            return None
        if kind is Kind.KEEPALIVE:
            return None
        return esp_packet(ip_bytes(addr[0]), self.local, data)

    def _drop(self, reason: str, detail: object) -> None:
        self.counters[reason] += 1
        if self.drop is not None:
            self.drop(reason, "inbound", detail)

    def sender(self, raw_send: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """The datapath's ``send``: ESP of an encapsulated SA in UDP, the rest through ``raw_send``."""
        def send(packet: bytes) -> None:
            esp = esp_of(packet)
            peer = self.routes.get(esp[0]) if esp is not None else None
            if esp is None or peer is None:
                raw_send(packet)
                return
            self.sock.sendto(esp[1], peer)
            self.counters["esp_sent"] += 1
            self.timers[peer].note_sent(self.clock())
        return send

    def send_ike(self, message: bytes, peer: Address) -> None:
        """IKE after floating (RFC 7296 section 2.23): behind the non-ESP marker."""
        self.sock.sendto(mark_ike(message), peer)
        self.counters["ike_sent"] += 1
        if peer in self.timers:
            self.timers[peer].note_sent(self.clock())

    def route(self, outbound_spi: int, peer: Address) -> None:
        """A UDP-encapsulated CHILD_SA is up: its ESP goes to ``peer``, which now gets keepalives."""
        self.routes[outbound_spi] = peer
        self.timers.setdefault(peer, Keepalive(self.keepalive, self.clock()))
        log.info("natt: SPI 0x%08x in UDP to %s:%d", outbound_spi, *peer)

    def unroute(self, outbound_spi: int) -> None:
        peer = self.routes.pop(outbound_spi, None)
        if peer is not None and peer not in self.routes.values():
            self.timers.pop(peer, None)

    def tick(self) -> None:
        """Send the keepalives that are due."""
        now = self.clock()
        for peer, timer in self.timers.items():
            keepalive = timer.handle_timer(now)
            if keepalive is None:
                continue
            try:
                self.sock.sendto(keepalive, peer)
                self.counters["keepalive_sent"] += 1
            except OSError as err:
                log.warning("natt: keepalive to %s:%d: %s", *peer, err)

    def next_keepalive(self) -> float | None:
        return min((t.get_timer() for t in self.timers.values()), default=None)

    def status(self) -> dict[str, object]:
        return {"counters": dict(self.counters), "peers": sorted(f"{a}:{p}" for a, p in self.timers)}

    def close(self) -> None:
        self.sock.close()
