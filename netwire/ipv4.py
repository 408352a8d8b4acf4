"""IPv4 (RFC 791) and the transport headers a NAT looks at: TCP, UDP, ICMP.

Views parse only what translation needs: addresses, protocol, the ports or
ICMP identifier (the "GPN" of TCP/UDP/ICMP in the seed's terms), and for ICMP
errors (RFC 792) the embedded original header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netwire.checksum import internet_checksum, ip_bytes, pseudo_header_sum
from netwire.ethernet import MalformedPacket

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ESP = 50
IPPROTO_AH = 51
# RFC 4303 2.1 / RFC 4302 2.4: SPIs 1-255 are reserved by IANA, 0 is for local use and never sent.
MIN_SPI = 256
MAX_SPI = 0xFFFFFFFF

IPV4_MIN_HEADER_LEN = 20
TCP_CHECKSUM_OFFSET = 16
UDP_CHECKSUM_OFFSET = 6
UDP_HEADER_LEN = 8  # RFC 768: ports, length, checksum
ICMP_CHECKSUM_OFFSET = 2

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETER_PROBLEM = 12
# The errors that quote the packet they are about and are translated with it (RFC 5508 REQ-10,
# RFC 1812 4.3.2); Source Quench is deprecated (RFC 6633) and Redirect never crosses a NAT.
ICMP_ERROR_TYPES = frozenset({ICMP_DEST_UNREACHABLE, ICMP_TIME_EXCEEDED, ICMP_PARAMETER_PROBLEM})
ICMP_QUERY_TYPES = frozenset({ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY})
ICMP_CODE_ADMIN_PROHIBITED = 13  # RFC 1812 5.2.7.1: communication administratively prohibited
ICMP_ERROR_QUOTED_DATA = 8  # RFC 792: an error quotes the IP header and 64 bits of the data

_HDR = struct.Struct("!BBHHHBBH4s4s")


@dataclass(frozen=True)
class IPv4Header:
    """The fixed IPv4 header fields; ``header_len`` includes options."""

    header_len: int
    total_len: int
    ttl: int
    protocol: int
    src: str
    dst: str
    fragment_offset: int
    more_fragments: bool

    @classmethod
    def parse(cls, packet: bytes, *, truncated_ok: bool = False) -> IPv4Header:
        """Parse the header; ``truncated_ok`` admits the clipped copy inside an ICMP error."""
        if len(packet) < IPV4_MIN_HEADER_LEN:
            raise MalformedPacket("IPv4 packet shorter than 20 bytes")
        vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(packet)
        if vihl >> 4 != 4:
            raise MalformedPacket(f"IP version {vihl >> 4} is not 4")
        header_len = (vihl & 0x0F) * 4
        if header_len < IPV4_MIN_HEADER_LEN or header_len > len(packet):
            raise MalformedPacket(f"bad IPv4 header length {header_len}")
        if not truncated_ok and total < header_len:
            raise MalformedPacket(f"IPv4 total length {total} below header length")
        return cls(header_len, total, ttl, proto, dotted(src), dotted(dst), frag & 0x1FFF, bool(frag & 0x2000))

    @property
    def is_fragment(self) -> bool:
        return self.fragment_offset != 0 or self.more_fragments


@dataclass(frozen=True)
class Transport:
    """Demultiplexing fields of a TCP/UDP segment or an ICMP message.

    ``src_port``/``dst_port`` hold the ICMP query identifier in both fields for
    echo messages (RFC 5508 section 3.1 treats it as the port), and None for
    protocols without ports.
    """

    src_port: int | None = None
    dst_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: int | None = None


TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def parse_transport(protocol: int, segment: bytes) -> Transport:
    """The ports (or ICMP type/code/identifier) at the start of ``segment``."""
    if protocol in (IPPROTO_TCP, IPPROTO_UDP):
        if len(segment) < 4:
            raise MalformedPacket("transport header shorter than its ports")
        sport, dport = struct.unpack_from("!HH", segment)
        flags = segment[13] if protocol == IPPROTO_TCP and len(segment) >= 14 else None
        return Transport(sport, dport, tcp_flags=flags)
    if protocol == IPPROTO_ICMP:
        if len(segment) < 4:
            raise MalformedPacket("ICMP message shorter than 4 bytes")
        itype, code = segment[0], segment[1]
        if itype in ICMP_QUERY_TYPES:
            if len(segment) < 8:
                raise MalformedPacket("ICMP echo shorter than 8 bytes")
            ident = int.from_bytes(segment[4:6], "big")
            return Transport(ident, ident, itype, code)
        return Transport(icmp_type=itype, icmp_code=code)
    return Transport()


def header_checksum_ok(packet: bytes, header_len: int) -> bool:
    return internet_checksum(packet[:header_len]) == 0


def build_ipv4_header(
    *, src: str | bytes, dst: str | bytes, protocol: int, payload_len: int,
    ttl: int = 64, ident: int = 0, tos: int = 0, dont_fragment: bool = True,
) -> bytes:
    """A 20-byte IPv4 header with a correct checksum."""
    frag = 0x4000 if dont_fragment else 0
    header = bytearray(_HDR.pack(0x45, tos, 20 + payload_len, ident, frag, ttl, protocol, 0, ip_bytes(src), ip_bytes(dst)))
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header)


def dotted(raw: bytes) -> str:
    """The dotted-quad text of a 4-byte IPv4 address (the inverse of ``netwire.checksum.ip_bytes``)."""
    return ".".join(map(str, raw))  # per packet-in, twice: map, not a generator (issue 16)


def build_udp(src: str, dst: str, sport: int, dport: int, payload: bytes, ttl: int = 64) -> bytes:
    """A whole IPv4/UDP packet with both checksums (RFC 768; a computed zero is sent as 0xffff)."""
    length = 8 + len(payload)
    header = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + length.to_bytes(2, "big")
    csum = internet_checksum(header + b"\x00\x00" + payload,
                             pseudo_header_sum(ip_bytes(src), ip_bytes(dst), IPPROTO_UDP, length)) or 0xFFFF
    return build_ipv4_header(src=src, dst=dst, protocol=IPPROTO_UDP, payload_len=length, ttl=ttl) + \
        header + csum.to_bytes(2, "big") + payload


def build_icmp_error(src: str, dst: str, icmp_type: int, code: int, original: bytes, ttl: int = 64) -> bytes:
    """A whole IPv4 ICMP error about ``original`` (RFC 792): type, code, unused word, then
    the original IP header and the first 8 bytes of its data."""
    header_len = (original[0] & 0x0F) * 4
    message = bytearray([icmp_type, code, 0, 0, 0, 0, 0, 0]) + original[: header_len + ICMP_ERROR_QUOTED_DATA]
    message[ICMP_CHECKSUM_OFFSET:ICMP_CHECKSUM_OFFSET + 2] = internet_checksum(bytes(message)).to_bytes(2, "big")
    return build_ipv4_header(src=src, dst=dst, protocol=IPPROTO_ICMP, payload_len=len(message), ttl=ttl) + \
        bytes(message)
