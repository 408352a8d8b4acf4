"""Raw IPv4 sockets: how the agent puts ESP/AH on the wire and takes it off.

The kernel here has no ESP or AH (ENVIRONMENT.md), but raw sockets (raw(7))
still see the protocols:

- :class:`RawReceiver`, ``socket(AF_INET, SOCK_RAW, IPPROTO_ESP)`` (or AH),
  receives every ESP (AH) packet addressed to this host, IPv4 header included.
  While one is open the kernel no longer answers ESP with ICMP
  protocol-unreachable.
- :class:`RawSender`, ``socket(AF_INET, SOCK_RAW, IPPROTO_RAW)``, sends whole
  IPv4 packets of any protocol as they are (``IPPROTO_RAW`` implies
  ``IP_HDRINCL``; the kernel fills in only the total length and the header
  checksum, and never fragments: an oversized packet fails with ``EMSGSIZE``).

Both carry ``SO_MARK``: the agent routes protected traffic into its TUN device
with a policy-routing rule that skips marked packets, so the ESP/AH it sends
takes the ordinary route to the peer instead of coming back into the TUN
(see :mod:`client_agent.agent`).
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator

from client_agent.ipsec.ipheader import fragment
from netwire.ipv4 import IPPROTO_AH

RECEIVE_BUFFER = 4 * 1024 * 1024  # absorbs a burst while the agent is busy encrypting
SEND_BUFFER = 1024 * 1024
READ_SIZE = 65535


def _raw_socket(protocol: int, mark: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    except BaseException:
        sock.close()
        raise
    return sock


class RawSender:
    """Sends whole IPv4 packets, marked ``mark``, to the destination in their header.

    A packet longer than ``link_mtu`` (when the TUN MTU was set above what
    fits the link) is sent as fragments (RFC 4303 section 3.3.4): the kernel
    does not fragment ``IP_HDRINCL`` packets itself.
    """

    def __init__(self, mark: int, link_mtu: int = 1500) -> None:
        self.sock = _raw_socket(socket.IPPROTO_RAW, mark)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.link_mtu = link_mtu
        self._sendto = self.sock.sendto
        self._ntoa = socket.inet_ntoa
        # RFC 6864 4.1: unique per (source, destination, protocol) while fragments may live (30 s in Linux's
        # reassembly); a restarted agent starting again at 1 met the last one's incomplete datagrams.
        self._ident = itertools.count(int.from_bytes(os.urandom(2), "big"))

    def send(self, packet: bytes) -> None:
        """Send ``packet`` (blocking while the socket buffer is full); OSError when the kernel refuses it."""
        address = (self._ntoa(packet[16:20]), 0)
        if len(packet) <= self.link_mtu:
            self._sendto(packet, address)
            return
        for piece in fragment(packet, self.link_mtu, fragment_ident(packet, self._ident)):
            self._sendto(piece, address)

    def close(self) -> None:
        self.sock.close()


def fragment_ident(packet: bytes, counter: Iterator[int]) -> int:
    """The IPv4 ID for the fragments of ``packet``: this host's own, unique per datagram (RFC 6864 section 4.1).

    An ESP packet in transport mode carries the ID the kernel gave the inner
    TCP/UDP datagram, and different flows to one peer reuse IDs: fragments of
    two datagrams with one ID get reassembled together (seen in tshark as a bad
    ICV). AH is the exception: its ICV covers the ID (RFC 4302 section
    3.3.3.1.1.1), so an AH packet keeps its own.
    """
    if packet[9] == IPPROTO_AH:
        return packet[4] << 8 | packet[5]
    return next(counter) & 0xFFFF or next(counter) & 0xFFFF


class RawReceiver:
    """Receives the IPv4 packets of one IP protocol (ESP or AH) addressed to this host; non-blocking."""

    def __init__(self, protocol: int, mark: int) -> None:
        self.protocol = protocol
        self.sock = _raw_socket(protocol, mark)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.sock.setblocking(False)
        self._recv = self.sock.recv

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> bytes | None:
        """The next received packet, IPv4 header included, or None if there is none now."""
        try:
            return self._recv(READ_SIZE)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.sock.close()
