"""Capture markers: one small datagram that proves a capture was live from before a block to after it.

A capture that lost its last packets (tcpdump buffering, a settle wait too
short) reads exactly like "nothing arrived", which is what a drop check wants to
see. So every capture gets a marker sent on its own interface before and after
the block, and a capture in which either is missing is not trusted: its
verdicts are "error", never "pass" or "fail".

The marker is an IPv4 UDP datagram from 0.0.0.0 to the limited broadcast
address (RFC 919 section 7), ports 9 (discard, RFC 863), TTL 1, carrying
:data:`PREFIX` and a token. On an Ethernet interface it is framed to the
sender's own MAC, so the switch, having learnt that MAC on the very port,
forwards it nowhere; on a TUN device the agent reads it and its SPD discards
it (no policy selects 0.0.0.0). Readers of captures drop it with
:func:`is_marker`. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct

__pure__ = True

PREFIX = b"natlab-capture-marker:"
SRC, DST = "0.0.0.0", "255.255.255.255"  # RFC 1122 3.2.1.3 "this host"; RFC 919 limited broadcast
PORT = 9  # discard (RFC 863)
IPV4_ETHERTYPE = 0x0800
UDP_PROTO = 17
_IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
_UDP_HEADER = struct.Struct("!HHHH")


def token_bytes(token: str) -> bytes:
    """The bytes that identify one marker in a capture file."""
    return PREFIX + token.encode()


def datagram(token: str) -> bytes:
    """The marker as an IPv4 datagram (RFC 791), with a UDP checksum (RFC 768) over its pseudo-header."""
    payload = token_bytes(token)
    udp_len = _UDP_HEADER.size + len(payload)
    src, dst = bytes(4), b"\xff" * 4
    pseudo = src + dst + struct.pack("!BBH", 0, UDP_PROTO, udp_len)
    udp_sum = inet_checksum(pseudo + _UDP_HEADER.pack(PORT, PORT, udp_len, 0) + payload) or 0xFFFF
    udp = _UDP_HEADER.pack(PORT, PORT, udp_len, udp_sum) + payload
    header = _IP_HEADER.pack(0x45, 0, _IP_HEADER.size + udp_len, 0, 0x4000, 1, UDP_PROTO, 0, src, dst)
    header = header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:]
    return header + udp


def ethernet_frame(mac: bytes, token: str) -> bytes:
    """The marker framed from and to ``mac`` (the sender's own): the switch sends it back nowhere."""
    return mac + mac + struct.pack("!H", IPV4_ETHERTYPE) + datagram(token)


def is_marker(ip_datagram: bytes) -> bool:
    """Is this IPv4 datagram a capture marker (and so no traffic of the system under test)?"""
    if len(ip_datagram) < 20 or ip_datagram[0] >> 4 != 4 or ip_datagram[9] != UDP_PROTO:
        return False
    ihl = (ip_datagram[0] & 0x0F) * 4
    udp = ip_datagram[ihl:]
    return (ip_datagram[16:20] == b"\xff" * 4 and len(udp) >= 8 and int.from_bytes(udp[2:4], "big") == PORT
            and udp[8:].startswith(PREFIX))


def is_marker_fields(dst: str, proto: str | int, dport: str | int | None) -> bool:
    """The same test on a dissector's fields (tshark's ``ip.dst``, ``ip.proto``, ``udp.dstport``)."""
    return dst == DST and str(proto) == str(UDP_PROTO) and str(dport) == str(PORT)


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
