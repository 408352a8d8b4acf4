"""Packet rewriting for the slow path (the controller translates and sends a
PacketOut) and for ICMP errors (RFC 5508 section 4.2), which OpenFlow cannot
translate because the fields to change sit inside the ICMP payload.

Checksums are updated incrementally (RFC 1624) except the ICMP checksum of an
error, whose payload changes in several places and is recomputed.
"""

from __future__ import annotations

from netwire.checksum import internet_checksum, ip_bytes, update16, update_bytes
from netwire.ethernet import MalformedPacket
from netwire.ipv4 import (
    ICMP_CHECKSUM_OFFSET,
    ICMP_QUERY_TYPES,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_CHECKSUM_OFFSET,
    UDP_CHECKSUM_OFFSET,
    IPv4Header,
)

__pure__ = True

_ICMP_ID_OFFSET = 4
_ICMP_ERROR_HEADER_LEN = 8


def rewrite(
    packet: bytes, *, src: str | None = None, dst: str | None = None,
    src_port: int | None = None, dst_port: int | None = None, decrement_ttl: bool = True,
) -> bytes:
    """Return ``packet`` with addresses/ports replaced and checksums kept valid.

    For ICMP echo, ``src_port`` or ``dst_port`` is the query identifier.
    """
    ip = IPv4Header.parse(packet)
    buf = bytearray(packet[: ip.total_len] if ip.total_len <= len(packet) else packet)
    _rewrite_in_place(buf, 0, ip, src, dst, src_port, dst_port, decrement_ttl, whole=True)
    return bytes(buf)


def rewrite_icmp_error(
    packet: bytes, *, outer_src: str | None = None, outer_dst: str | None = None,
    inner_src: str | None = None, inner_dst: str | None = None,
    inner_src_port: int | None = None, inner_dst_port: int | None = None,
) -> bytes:
    """Translate an ICMP error and the packet it quotes (RFC 5508 REQ-3, RFC 5382 REQ-9)."""
    outer = IPv4Header.parse(packet)
    buf = bytearray(packet[: outer.total_len])
    icmp_at = outer.header_len
    inner_at = icmp_at + _ICMP_ERROR_HEADER_LEN
    if len(buf) < inner_at + 20:
        raise MalformedPacket("ICMP error too short to quote an IPv4 header")
    inner = IPv4Header.parse(bytes(buf[inner_at:]), truncated_ok=True)
    _rewrite_in_place(buf, inner_at, inner, inner_src, inner_dst, inner_src_port, inner_dst_port,
                      decrement_ttl=False, whole=False)
    _rewrite_ip_header(buf, 0, outer_src, outer_dst, decrement_ttl=True)
    buf[icmp_at + ICMP_CHECKSUM_OFFSET: icmp_at + ICMP_CHECKSUM_OFFSET + 2] = b"\x00\x00"
    buf[icmp_at + ICMP_CHECKSUM_OFFSET: icmp_at + ICMP_CHECKSUM_OFFSET + 2] = internet_checksum(
        bytes(buf[icmp_at:])).to_bytes(2, "big")
    return bytes(buf)


def _rewrite_in_place(
    buf: bytearray, at: int, ip: IPv4Header, src: str | None, dst: str | None,
    src_port: int | None, dst_port: int | None, decrement_ttl: bool, whole: bool,
) -> None:
    l4 = at + ip.header_len
    old_src, old_dst = bytes(buf[at + 12: at + 16]), bytes(buf[at + 16: at + 20])
    new_src = ip_bytes(src) if src else old_src
    new_dst = ip_bytes(dst) if dst else old_dst
    first_fragment = ip.fragment_offset == 0
    if first_fragment and ip.protocol in (IPPROTO_TCP, IPPROTO_UDP):
        csum_at = l4 + (TCP_CHECKSUM_OFFSET if ip.protocol == IPPROTO_TCP else UDP_CHECKSUM_OFFSET)
        has_csum = len(buf) >= csum_at + 2
        csum = int.from_bytes(buf[csum_at: csum_at + 2], "big") if has_csum else 0
        udp_none = ip.protocol == IPPROTO_UDP and has_csum and csum == 0  # RFC 768: no checksum
        for offset, new in ((0, src_port), (2, dst_port)):
            if new is not None and len(buf) >= l4 + offset + 2:
                old = int.from_bytes(buf[l4 + offset: l4 + offset + 2], "big")
                csum = update16(csum, old, new)
                buf[l4 + offset: l4 + offset + 2] = new.to_bytes(2, "big")
        csum = update_bytes(update_bytes(csum, old_src, new_src), old_dst, new_dst)
        if has_csum and not udp_none:
            if ip.protocol == IPPROTO_UDP and csum == 0:
                csum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
            buf[csum_at: csum_at + 2] = csum.to_bytes(2, "big")
    elif first_fragment and ip.protocol == IPPROTO_ICMP and len(buf) >= l4 + 8 and buf[l4] in ICMP_QUERY_TYPES:
        new_id = src_port if src_port is not None else dst_port
        if new_id is not None:
            old_id = int.from_bytes(buf[l4 + _ICMP_ID_OFFSET: l4 + _ICMP_ID_OFFSET + 2], "big")
            csum = int.from_bytes(buf[l4 + 2: l4 + 4], "big")
            buf[l4 + 2: l4 + 4] = update16(csum, old_id, new_id).to_bytes(2, "big")
            buf[l4 + _ICMP_ID_OFFSET: l4 + _ICMP_ID_OFFSET + 2] = new_id.to_bytes(2, "big")
    _rewrite_ip_header(buf, at, src, dst, decrement_ttl)


def _rewrite_ip_header(buf: bytearray, at: int, src: str | None, dst: str | None, decrement_ttl: bool) -> None:
    csum = int.from_bytes(buf[at + 10: at + 12], "big")
    for offset, new in ((12, src), (16, dst)):
        if new:
            raw = ip_bytes(new)
            csum = update_bytes(csum, bytes(buf[at + offset: at + offset + 4]), raw)
            buf[at + offset: at + offset + 4] = raw
    if decrement_ttl:
        old_word = int.from_bytes(buf[at + 8: at + 10], "big")
        buf[at + 8] -= 1
        csum = update16(csum, old_word, int.from_bytes(buf[at + 8: at + 10], "big"))
    buf[at + 10: at + 12] = csum.to_bytes(2, "big")
