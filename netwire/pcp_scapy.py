"""Scapy layers for the lease protocol, so a user can craft and dissect lease packets.

Importing this module binds the layers to UDP port 5351 (requests go to it,
responses come from it)::

    >>> from scapy.all import IP, UDP
    >>> from netwire.pcp_scapy import PCPRequest, PCPLease
    >>> from netwire.plan import GATEWAY_IP, client_ip, server_ip
    >>> p = IP(dst=GATEWAY_IP) / UDP(sport=5350) / PCPRequest(lifetime=600, client_ip=client_ip(1)) / \\
    ...     PCPLease(nonce=b"n" * 12, protocol=50, foreign_ip=server_ip(1))

Addresses show as dotted quads (they are IPv4-mapped on the wire, RFC 6887 5)
and as None when unspecified. In LEASE, DEFINE and READ records a field left
None is "unspecified": its flag is cleared and zeros are sent; dissection
puts None back where a flag is clear. The layouts are those of
``netwire.pcp`` (its docstrings and ``netwire/LEASE-PROTOCOL.md``); this
module is the independent second reading the codec's tests compare against.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from scapy.fields import (
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    Field,
    FieldLenField,
    IntField,
    LongField,
    PacketListField,
    ShortField,
    StrLenField,
    XByteField,
    XStrFixedLenField,
)
from scapy.layers.inet import UDP
from scapy.packet import Packet, Raw, bind_layers

from netwire.pcp import CLIENT_PORT, ENTRY_KINDS, SERVER_PORT, Opcode, Result

OPCODE_NAMES = {o.value: o.name for o in Opcode}
RESULT_NAMES = {r.value: r.name for r in Result}
KIND_NAMES = {i + 1: kind for i, kind in enumerate(ENTRY_KINDS)}
_V4_MAPPED = bytes(10) + b"\xff\xff"


class PcpAddressField(Field):
    """A 128-bit PCP address: a dotted quad (IPv4-mapped), None for ::ffff:0.0.0.0, else IPv6 text."""

    def __init__(self, name: str, default: str | None) -> None:
        super().__init__(name, default, "16s")

    def i2m(self, pkt, x):
        if x is None:
            return _V4_MAPPED + bytes(4)
        if isinstance(x, bytes):
            return x
        address = ipaddress.ip_address(x)
        return _V4_MAPPED + address.packed if address.version == 4 else address.packed

    def m2i(self, pkt, x):
        if x[:12] == _V4_MAPPED:
            return None if x[12:] == bytes(4) else str(ipaddress.IPv4Address(x[12:]))
        return str(ipaddress.IPv6Address(x))

    def any2i(self, pkt, x):
        return x

    def i2repr(self, pkt, x):
        return "unspecified" if x is None else str(x)


class _Flagged(Packet):
    """A body whose flag byte (field ``flags``) says which optional fields are present.

    ``_flagged`` lists (field name, bit) and ``_flags_at`` the flag byte's
    offset; ``flags=None`` (the default) is computed from which of those
    fields are None.
    """

    _flagged: tuple[tuple[str, int], ...] = ()
    _flags_at = 0

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.flags is None:
            value = 0
            for name, bit in self._flagged:
                if getattr(self, name) is not None:
                    value |= bit
            pkt = pkt[:self._flags_at] + bytes([value]) + pkt[self._flags_at + 1:]
        return pkt + pay

    def post_dissect(self, s: bytes) -> bytes:
        for name, bit in self._flagged:
            if not self.flags & bit:
                self.fields[name] = None  # shown and compared as "unspecified"
        return s


class _OptionsFollow(Packet):
    """Opcode bodies are followed by PCP options (RFC 6887 7.3)."""

    def guess_payload_class(self, payload: bytes):
        return PCPOption if payload else Raw


class PCPOption(Packet):
    """RFC 6887 7.3: option code, reserved, length of the data, data padded to 4 octets."""

    name = "PCP option"
    fields_desc = [
        ByteField("code", 0),
        ByteField("reserved", 0),
        FieldLenField("length", None, length_of="data", fmt="!H"),
        StrLenField("data", b"", length_from=lambda p: p.length),
        StrLenField("padding", None, length_from=lambda p: -p.length % 4),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.padding is None:
            pkt += bytes(-len(self.data or b"") % 4)
        return pkt + pay

    def guess_payload_class(self, payload: bytes):
        return PCPOption if payload else Raw  # options follow one another to the end of the message


def _by_r_bit(cls: type[Packet], _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
    """Requests and responses share UDP port 5351; the R bit decides (RFC 6887 7)."""
    if _pkt and len(_pkt) >= 2:
        return PCPResponse if _pkt[1] & 0x80 else PCPRequest
    return cls


class _Header(Packet):
    def guess_payload_class(self, payload: bytes):
        body = BODIES.get(self.opcode)
        if body is not None and (body is not _Announce):
            return body
        return PCPOption if payload else Raw


class PCPRequest(_Header):
    """RFC 6887 7.1 request header (24 octets)."""

    name = "PCP request"
    dispatch_hook = classmethod(_by_r_bit)  # scapy looks for it in the class's own namespace
    fields_desc = [
        ByteField("version", 2),
        BitField("R", 0, 1),
        BitEnumField("opcode", Opcode.MAP, 7, OPCODE_NAMES),
        ShortField("reserved", 0),
        IntField("lifetime", 0),
        PcpAddressField("client_ip", "0.0.0.0"),
    ]


class PCPResponse(_Header):
    """RFC 6887 7.2 response header (24 octets)."""

    name = "PCP response"
    dispatch_hook = classmethod(_by_r_bit)
    fields_desc = [
        ByteField("version", 2),
        BitField("R", 1, 1),
        BitEnumField("opcode", Opcode.MAP, 7, OPCODE_NAMES),
        ByteField("reserved", 0),
        ByteEnumField("result", Result.SUCCESS, RESULT_NAMES),
        IntField("lifetime", 0),
        IntField("epoch", 0),
        XStrFixedLenField("reserved2", bytes(12), 12),
    ]


class PCPMap(_OptionsFollow):
    """RFC 6887 11.1 MAP body (36 octets)."""

    name = "PCP MAP"
    fields_desc = [
        XStrFixedLenField("nonce", bytes(12), 12),
        ByteField("protocol", 17),
        XStrFixedLenField("reserved", bytes(3), 3),
        ShortField("internal_port", 0),
        ShortField("external_port", 0),
        PcpAddressField("external_ip", None),
    ]


class PCPPeer(_OptionsFollow):
    """RFC 6887 12.1 PEER body (56 octets)."""

    name = "PCP PEER"
    fields_desc = [
        *PCPMap.fields_desc,
        ShortField("remote_port", 0),
        ShortField("reserved2", 0),
        PcpAddressField("remote_ip", None),
    ]


class PCPDefine(_Flagged, _OptionsFollow):
    """natlab DEFINE body (opcode 96, 48 octets): a GPN definition. Flag S = 0x80."""

    name = "PCP DEFINE (natlab)"
    _flagged = (("src_offset_bits", 0x80),)
    _flags_at = 16
    fields_desc = [
        XStrFixedLenField("nonce", bytes(12), 12),
        ByteField("protocol", 0),
        ByteEnumField("underlying", 0, {0: "IP", 17: "UDP"}),
        ShortField("port", 0),
        XByteField("flags", None),
        ByteField("length_bits", 32),
        ShortField("reserved", 0),
        ShortField("src_offset_bits", None),
        ShortField("dst_offset_bits", 0),
        LongField("range_min", 0),
        LongField("range_max", 0),
        LongField("unspecified", 0),
    ]


class PCPLease(_Flagged, _OptionsFollow):
    """natlab LEASE body (opcode 97, 64 octets): a client-ALG entry. Flags P G A F = 0x80 0x40 0x20 0x10."""

    name = "PCP LEASE (natlab)"
    _flagged = (("private_gpn", 0x80), ("global_gpn", 0x40), ("global_ip", 0x20), ("foreign_ip", 0x10))
    _flags_at = 13
    fields_desc = [
        XStrFixedLenField("nonce", bytes(12), 12),
        ByteField("protocol", 0),
        XByteField("flags", None),
        ShortField("port", 0),
        LongField("private_gpn", None),
        LongField("global_gpn", None),
        PcpAddressField("global_ip", None),
        PcpAddressField("foreign_ip", None),
    ]


class PCPEntry(_Flagged):
    """One 76-octet entry record of a natlab READ response. Flags P G F = 0x80 0x40 0x10."""

    name = "PCP entry (natlab)"
    _flagged = (("private_gpn", 0x80), ("global_gpn", 0x40), ("foreign_ip", 0x10))
    _flags_at = 4
    fields_desc = [
        ByteEnumField("kind", 2, KIND_NAMES),
        ByteField("protocol", 0),
        ShortField("port", 0),
        XByteField("flags", None),
        XStrFixedLenField("reserved", bytes(3), 3),
        IntField("lifetime", 0),
        LongField("private_gpn", None),
        LongField("global_gpn", None),
        PcpAddressField("private_ip", None),
        PcpAddressField("global_ip", None),
        PcpAddressField("foreign_ip", None),
    ]

    def extract_padding(self, s: bytes):
        return b"", s


class PCPRead(_OptionsFollow):
    """natlab READ body (opcode 98): 20 octets, then ``count`` entry records."""

    name = "PCP READ (natlab)"
    fields_desc = [
        XStrFixedLenField("nonce", bytes(12), 12),
        ShortField("start", 0),
        FieldLenField("count", None, count_of="entries", fmt="!H"),
        ShortField("total", 0),
        ShortField("reserved", 0),
        PacketListField("entries", [], PCPEntry, count_from=lambda p: p.count),
    ]


class _Announce(Packet):
    """ANNOUNCE has no opcode-specific body (RFC 6887 14.1)."""


BODIES: dict[int, type[Packet]] = {
    Opcode.ANNOUNCE: _Announce, Opcode.MAP: PCPMap, Opcode.PEER: PCPPeer, Opcode.DEFINE: PCPDefine,
    Opcode.LEASE: PCPLease, Opcode.READ: PCPRead,
}

bind_layers(UDP, PCPRequest, dport=SERVER_PORT)
bind_layers(UDP, PCPResponse, sport=SERVER_PORT)
for _header in (PCPRequest, PCPResponse):
    for _opcode, _body in BODIES.items():
        if _body is not _Announce:
            bind_layers(_header, _body, opcode=int(_opcode))

__all__ = ["CLIENT_PORT", "PCPDefine", "PCPEntry", "PCPLease", "PCPMap", "PCPOption", "PCPPeer", "PCPRead",
           "PCPRequest", "PCPResponse", "PcpAddressField"]
