"""The few IPv4 header operations ESP and AH need, on bytes (RFC 791).

:mod:`netwire.ipv4` parses headers into readable objects; the datapath only
needs two lengths and a rewrite, so these helpers stay on ``bytes`` and skip
building strings for the addresses.
"""

from __future__ import annotations

from client_agent.ipsec.errors import Malformed
from netwire.ethernet import MalformedPacket
from netwire.ipv4 import IPV4_MIN_HEADER_LEN, build_ipv4_header
from netwire.view import MF_AND_OFFSET_HIGH, ipv4_lengths
from netwire.view import PROTOCOL_OFFSET as PROTOCOL_OFFSET  # re-exported: esp and ah read it here

TUNNEL_TTL = 64
_DF = 0x40  # in byte 6


def lengths(packet: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(header_len, total_len)`` of an IPv4 packet, checked against the bytes at hand (:func:`netwire.view.ipv4_lengths`).

    Bytes after ``total_len`` (link-layer padding) are not part of the packet.
    """
    try:
        return ipv4_lengths(packet)
    except MalformedPacket as err:
        raise Malformed(str(err)) from None


def is_fragment(packet: bytes | bytearray | memoryview) -> bool:
    """More-fragments set or a non-zero fragment offset."""
    return bool(packet[6] & MF_AND_OFFSET_HIGH or packet[7])


def rewrite(header: bytes | bytearray | memoryview, protocol: int, total_len: int) -> bytes:
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


def tunnel_header(src: bytes, dst: bytes, protocol: int, payload_len: int, inner: bytes | bytearray, ident: int) -> bytes:
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


def fragment(packet: bytes, mtu: int, ident: int) -> list[bytes]:
    """``packet`` cut into IPv4 fragments of at most ``mtu`` bytes, all with the ID ``ident`` (RFC 791 section 3.2).

    For an ESP/AH packet that outgrew the link after protection (RFC 4303
    section 3.3.4, RFC 4302 section 3.3.4): the receiver reassembles it before
    IPsec processing. Fragment data is a multiple of 8 bytes except in the
    last; DF is cleared, since this host is the packet's source. A packet that
    fits is returned whole; one with IP options or already a fragment is
    refused (:class:`Malformed`).
    """
    header_len, total_len = lengths(packet)
    if total_len <= mtu:
        return [packet[:total_len]]
    if header_len != IPV4_MIN_HEADER_LEN or is_fragment(packet):
        raise Malformed("only whole packets without IP options are fragmented here")
    step = (mtu - header_len) // 8 * 8
    if step <= 0:
        raise ValueError(f"mtu={mtu}: too small to fragment into")
    header = bytearray(packet[:header_len])
    header[4], header[5] = ident >> 8 & 0xFF, ident & 0xFF
    fragments = []
    for start in range(header_len, total_len, step):
        end = min(start + step, total_len)
        offset = (start - header_len) // 8 | (0x2000 if end < total_len else 0)  # MF on all but the last
        header[2], header[3] = (header_len + end - start) >> 8, (header_len + end - start) & 0xFF
        header[6], header[7] = offset >> 8, offset & 0xFF
        header[10] = header[11] = 0
        checksum = header_checksum(header)
        header[10], header[11] = checksum >> 8, checksum & 0xFF
        fragments.append(bytes(header) + packet[start:end])
    return fragments
