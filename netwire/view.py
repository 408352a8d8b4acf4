"""Packet views: the offsets of IPv4 (RFC 791) and of the headers behind it, read once per packet.

A view checks the three things every reader of a packet needs (version 4, a
header length of at least 20 bytes, a total length that fits the bytes at
hand) when it is made, then answers offset questions without copying or
re-parsing: where the transport header starts, the ports of TCP/UDP/SCTP
(RFC 9293 section 3.1, RFC 768, RFC 9260 section 3.1), where their checksum
sits, the ICMP type and query identifier (RFC 792), the SPI of ESP
(RFC 4303 section 2.1) and AH (RFC 4302 section 2.4).

It is the per-packet path's parser (the agent's compensation, SPD and ESP/AH
processing): no dataclass, no dotted strings, nothing computed that is not
asked for. :class:`netwire.ipv4.IPv4Header` remains the readable parse for
the NAT's decisions. Bytes after ``total_len`` (link-layer padding) are not
part of the packet. Hostile input raises :class:`MalformedPacket`, never
IndexError.
"""

from __future__ import annotations

import struct

from netwire.ethernet import MalformedPacket
from netwire.ipv4 import (
    ICMP_QUERY_TYPES,
    IPPROTO_AH,
    IPPROTO_ESP,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_MIN_HEADER_LEN,
    TCP_CHECKSUM_OFFSET,
    UDP_CHECKSUM_OFFSET,
    UDP_HEADER_LEN,
)

IPPROTO_SCTP = 132  # RFC 9260: ports in the same place as TCP's and UDP's
PORTED = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})
IDENT_OFFSET = 4  # Identification: with source, destination and protocol it names a datagram's fragments
PROTOCOL_OFFSET = 9
CHECKSUM_OFFSET = 10  # the IPv4 header checksum
SRC_OFFSET, DST_OFFSET = 12, 16
SPI_OFFSET = {IPPROTO_ESP: 0, IPPROTO_AH: 4}  # from the start of the ESP/AH header
TRANSPORT_CHECKSUM_OFFSET = {IPPROTO_TCP: TCP_CHECKSUM_OFFSET, IPPROTO_UDP: UDP_CHECKSUM_OFFSET}
MF_AND_OFFSET_HIGH = 0x3F  # byte 6: more-fragments and the high bits of the fragment offset
_OFFSET_HIGH = 0x1F
_PORTS = struct.Struct("!HH")
# A packet as the per-packet path hands it on: bytes as read, or the bytearray a rewrite made (the
# agent's compensation, seed FIG. 9/10), passed on uncopied because ESP/AH copy it anyway.
Packet = bytes | bytearray


def ipv4_lengths(buf: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(header_len, total_len)`` of the IPv4 packet at the start of ``buf``: the one check every reader shares.

    Version 4, a header of 20 bytes or more, a total length between the
    header's and ``len(buf)``. A plain function, not a view, for the callers
    that need only the lengths (ESP and AH, per packet).
    """
    if len(buf) < IPV4_MIN_HEADER_LEN:
        raise MalformedPacket(f"IPv4 packet of {len(buf)} bytes is shorter than its header")
    first = buf[0]
    if first >> 4 != 4:
        raise MalformedPacket(f"IP version {first >> 4} is not 4")
    header_len, total_len = (first & 0x0F) * 4, buf[2] << 8 | buf[3]
    if header_len < IPV4_MIN_HEADER_LEN or not header_len <= total_len <= len(buf):
        raise MalformedPacket(f"IPv4 header length {header_len}, total length {total_len}, {len(buf)} bytes at hand")
    return header_len, total_len


class IPv4View:
    """The IPv4 packet in ``buf`` (bytes, bytearray or memoryview), checked once, read by offset.

    ``header_len`` (options included) and ``total_len`` are plain attributes;
    everything else is computed on demand from ``buf``.
    """

    __slots__ = ("buf", "header_len", "total_len")

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        self.buf = buf
        self.header_len, self.total_len = ipv4_lengths(buf)

    @property
    def protocol(self) -> int:
        return self.buf[PROTOCOL_OFFSET]

    @property
    def src(self) -> bytes:
        return bytes(self.buf[SRC_OFFSET:SRC_OFFSET + 4])

    @property
    def dst(self) -> bytes:
        return bytes(self.buf[DST_OFFSET:DST_OFFSET + 4])

    @property
    def ident(self) -> int:
        """The Identification field (RFC 791 section 3.1; RFC 6864 on its uniqueness)."""
        return self.buf[IDENT_OFFSET] << 8 | self.buf[IDENT_OFFSET + 1]

    @property
    def is_fragment(self) -> bool:
        """More-fragments set or a non-zero offset: a part of a datagram (RFC 791 section 3.2)."""
        return bool(self.buf[6] & MF_AND_OFFSET_HIGH or self.buf[7])

    @property
    def is_first_fragment(self) -> bool:
        """Offset zero: the (part of the) datagram that holds the transport header."""
        return not (self.buf[6] & _OFFSET_HIGH or self.buf[7])

    @property
    def payload_len(self) -> int:
        return self.total_len - self.header_len

    def ports(self) -> tuple[int, int] | None:
        """(source, destination) port of TCP/UDP/SCTP; None for other protocols, later fragments, a clipped header."""
        at, buf = self.header_len, self.buf
        if buf[PROTOCOL_OFFSET] not in PORTED or buf[6] & _OFFSET_HIGH or buf[7] or self.total_len < at + 4:
            return None
        return _PORTS.unpack_from(buf, at)

    def whole_ports(self) -> tuple[int, int] | None:
        """The ports of a whole (unfragmented) TCP/UDP/SCTP datagram; None otherwise: what may be translated."""
        at, buf = self.header_len, self.buf
        if buf[PROTOCOL_OFFSET] not in PORTED or buf[6] & MF_AND_OFFSET_HIGH or buf[7] or self.total_len < at + 4:
            return None
        return _PORTS.unpack_from(buf, at)

    def transport_checksum_at(self) -> int | None:
        """Where the TCP/UDP checksum sits in ``buf`` (None: another protocol); a whole datagram's only."""
        buf = self.buf
        relative = TRANSPORT_CHECKSUM_OFFSET.get(buf[PROTOCOL_OFFSET])
        if relative is None:
            return None
        at = self.header_len + relative
        if buf[6] & MF_AND_OFFSET_HIGH or buf[7] or self.total_len < at + 2:
            raise MalformedPacket("no whole transport header: a fragment, or a truncated header")
        return at

    def icmp(self) -> tuple[int, int, int | None]:
        """(type, code, query identifier or None) of an ICMP message (RFC 792; RFC 5508 3.1 calls the id a port)."""
        at, buf = self.header_len, self.buf
        if buf[PROTOCOL_OFFSET] != IPPROTO_ICMP or self.total_len < at + 4:
            raise MalformedPacket("not an ICMP message of at least 4 bytes")
        kind, code = buf[at], buf[at + 1]
        if kind not in ICMP_QUERY_TYPES:
            return kind, code, None
        if self.total_len < at + 8:
            raise MalformedPacket("ICMP echo shorter than 8 bytes")
        return kind, code, buf[at + 4] << 8 | buf[at + 5]

    def udp_payload(self) -> tuple[int, int]:
        """``(start, end)`` in ``buf`` of a UDP datagram's payload as its length field says (RFC 768):
        MalformedPacket for another protocol, a clipped header, or a length below 8 or beyond the packet."""
        at, buf = self.header_len, self.buf
        if buf[PROTOCOL_OFFSET] != IPPROTO_UDP or self.total_len < at + UDP_HEADER_LEN:
            raise MalformedPacket("not a UDP datagram with a whole header")
        length = buf[at + 4] << 8 | buf[at + 5]
        if not UDP_HEADER_LEN <= length <= self.total_len - at:
            raise MalformedPacket(f"UDP length {length} outside {UDP_HEADER_LEN}..{self.total_len - at}")
        return at + UDP_HEADER_LEN, at + length

    def spi(self) -> int:
        """The SPI of an ESP or AH packet (RFC 4303 section 2.1, RFC 4302 section 2.4)."""
        relative = SPI_OFFSET.get(self.buf[PROTOCOL_OFFSET])
        if relative is None:
            raise MalformedPacket(f"IP protocol {self.buf[PROTOCOL_OFFSET]} is neither ESP nor AH")
        at = self.header_len + relative
        if self.total_len < at + 4:
            raise MalformedPacket("packet too short for an SPI")
        return int.from_bytes(self.buf[at:at + 4], "big")
