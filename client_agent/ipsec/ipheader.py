"""The few IPv4 header operations ESP and AH need, on bytes (RFC 791).

:mod:`netwire.ipv4` parses headers into readable objects; the datapath only
needs two lengths and a rewrite, so these helpers stay on ``bytes`` and skip
building strings for the addresses.
"""

from __future__ import annotations

from client_agent.ipsec.errors import Malformed
from netwire.ipv4 import IPV4_MIN_HEADER_LEN, build_ipv4_header

PROTOCOL_OFFSET = 9
TUNNEL_TTL = 64
_DF = 0x40  # in byte 6
_MF_AND_OFFSET_HIGH = 0x3F  # in byte 6; byte 7 holds the rest of the fragment offset


def lengths(packet: bytes | memoryview) -> tuple[int, int]:
    """``(header_len, total_len)`` of an IPv4 packet, checked against the bytes at hand.

    Bytes after ``total_len`` (link-layer padding) are not part of the packet.
    """
    if len(packet) < IPV4_MIN_HEADER_LEN:
        raise Malformed(f"IPv4 packet of {len(packet)} bytes is shorter than its header")
    if packet[0] >> 4 != 4:
        raise Malformed(f"IP version {packet[0] >> 4} is not 4")
    header_len = (packet[0] & 0x0F) * 4
    total_len = packet[2] << 8 | packet[3]
    if header_len < IPV4_MIN_HEADER_LEN or not header_len <= total_len <= len(packet):
        raise Malformed(f"IPv4 header length {header_len}, total length {total_len}, {len(packet)} bytes at hand")
    return header_len, total_len


def is_fragment(packet: bytes | memoryview) -> bool:
    """More-fragments set or a non-zero fragment offset."""
    return bool(packet[6] & _MF_AND_OFFSET_HIGH or packet[7])


def rewrite(header: bytes | memoryview, protocol: int, total_len: int) -> bytes:
    """``header`` with a new protocol and total length, and its checksum recomputed."""
    new = bytearray(header)
    new[2], new[3] = total_len >> 8, total_len & 0xFF
    new[PROTOCOL_OFFSET] = protocol
    new[10] = new[11] = 0
    checksum = header_checksum(new)
    new[10], new[11] = checksum >> 8, checksum & 0xFF
    return bytes(new)


def header_checksum(header: bytes | bytearray) -> int:
    """The RFC 1071 checksum of an IPv4 header whose checksum field is zero.

    Same result as :func:`netwire.checksum.internet_checksum`, in one big-integer
    operation: 2**16 is 1 modulo 0xFFFF, so the header read as one number is
    congruent to the sum of its 16-bit words, and the one's-complement sum is
    that remainder, with 0xFFFF for 0 (a header is never all zeros: its
    version nibble is 4).
    """
    return ~(int.from_bytes(header, "big") % 0xFFFF or 0xFFFF) & 0xFFFF


def tunnel_header(src: bytes, dst: bytes, protocol: int, payload_len: int, inner: bytes, ident: int) -> bytes:
    """A tunnel-mode outer header (RFC 4301 section 5.1.2.1).

    DSCP and ECN are copied from the inner header (ECN "full functionality"),
    so is DF; TTL is the sender's default; the header has no options.
    """
    return build_ipv4_header(
        src=src, dst=dst, protocol=protocol, payload_len=payload_len,
        ttl=TUNNEL_TTL, ident=ident & 0xFFFF, tos=inner[1], dont_fragment=bool(inner[6] & _DF),
    )


def check_whole(inner: bytes) -> bytes:
    """The decapsulated inner packet of a tunnel, if it is exactly one IPv4 packet."""
    _, total_len = lengths(inner)
    if total_len != len(inner):
        raise Malformed(f"inner IPv4 total length {total_len} but {len(inner)} bytes were tunnelled")
    return inner
