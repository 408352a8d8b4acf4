"""The lease protocol: PCP (RFC 6887) framing, MAP and PEER, and private opcodes.

One codec for both ends: the NAT's lease server decodes requests and encodes
responses, the client agent does the reverse. Everything is PCP version 2 over
UDP to the gateway on port 5351 (RFC 6887 7, 19.1): the common headers, result
codes and error lifetimes, the 96-bit mapping nonce and the server epoch.
MAP and PEER (RFC 6887 11, 12) lease 16-bit ports. What PCP cannot say (it
only knows ports; for ESP and AH the port must be 0) travels in opcodes of
PCP's private-use range 96-126 (RFC 6887 19.2): DEFINE (a GPN definition, the
seed's FIG. 7 step 701), LEASE (a client-ALG entry of FIG. 6 with GPNs up to
64 bits) and READ (the client's own entries). The byte diagrams are in each
class's docstring and in ``netwire/LEASE-PROTOCOL.md``.

Addresses are 128 bits on the wire (RFC 6887 5); natlab is IPv4-only, so the
API speaks dotted quads and writes them IPv4-mapped (``::ffff:a.b.c.d``).
``None`` means "unspecified / any" and is the IPv4 all-zeros address
``::ffff:0.0.0.0`` that RFC 6887 11.1 and 12.1 use for "no suggestion".

Decoding never raises anything but :class:`PcpError`, whose ``result`` is the
code a server should answer with (see :func:`error_response`).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

from netwire.ethernet import MalformedPacket
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_UDP, MIN_SPI

PCP_VERSION = 2
SERVER_PORT = 5351  # RFC 6887 19.1
CLIENT_PORT = 5350  # RFC 6887 19.1 (ANNOUNCE goes here)
MAX_MESSAGE = 1100  # RFC 6887 7: maximum UDP payload of a PCP message
SHORT_ERROR_LIFETIME = 30  # RFC 6887 7.2 and 15: "e.g., 30 seconds"
LONG_ERROR_LIFETIME = 1800  # RFC 6887 7.2 and 15: "e.g., 30 minutes"
LIFETIME_UNSPECIFIED = 0xFFFFFFFF  # natlab: "let the NAT choose its default" (seed step 704)
NONCE_LEN = 12  # RFC 6887 11.1: the 96-bit mapping nonce
HEADER_LEN = 24  # RFC 6887 7.1 and 7.2: both common headers are 24 octets

UNDERLYING_IP = 0
UNDERLYING_UDP = IPPROTO_UDP
_T = TypeVar("_T")
_U16, _U32, _U64 = 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1


class Opcode(IntEnum):
    """RFC 6887 19.2; 96-126 are for private use."""

    ANNOUNCE = 0  # RFC 6887 14.1
    MAP = 1  # RFC 6887 11
    PEER = 2  # RFC 6887 12
    DEFINE = 96  # natlab: a GPN definition (seed FIG. 7 step 701)
    LEASE = 97  # natlab: a client-ALG entry (seed FIG. 6, step 704)
    READ = 98  # natlab: read out one's own entries


class Result(IntEnum):
    """RFC 6887 7.4, and natlab's codes from the private-use range 192-254 (IANA PCP registry)."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13
    HAS_ALG = 192  # the NAT has its own ALG for this protocol (seed FIG. 7 step 703)
    PROTOCOL_NOT_DEFINED = 193  # LEASE for a protocol no DEFINE has described
    GPN_IN_USE = 194  # the suggested global GPN is leased to someone else (RSIP's "SPI in use")
    GPN_UNAVAILABLE = 195  # the GPN is outside the definition's range, reserved, or cannot be given
    DEFINITION_CONFLICT = 196  # DEFINE differs from the NAT's own or another client's live definition


_LONG_ERRORS = frozenset({
    Result.UNSUPP_VERSION, Result.NOT_AUTHORIZED, Result.MALFORMED_REQUEST, Result.UNSUPP_OPCODE,
    Result.UNSUPP_OPTION, Result.MALFORMED_OPTION, Result.UNSUPP_PROTOCOL, Result.ADDRESS_MISMATCH,
    Result.HAS_ALG, Result.PROTOCOL_NOT_DEFINED,
})


def error_lifetime(result: Result | int) -> int:
    """How long a client should expect the same error again (RFC 6887 7.4 and 15).

    Long-lifetime errors (30 min) are the ones retrying cannot cure: the request
    itself is wrong or not allowed. The rest (resources, quota, GPN in use) are
    short (30 s).
    """
    return LONG_ERROR_LIFETIME if result in _LONG_ERRORS else SHORT_ERROR_LIFETIME


class PcpError(MalformedPacket):
    """Bytes that are not a valid message; ``result`` is what a server answers (RFC 6887 8.3)."""

    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(f"{result.name}: {reason}")
        self.result = result
        self.reason = reason


# ----------------------------------------------------------------------------- field helpers

_V4_MAPPED = bytes(10) + b"\xff\xff"  # RFC 4291 2.5.5.2, as RFC 6887 5 uses it
_UNSPECIFIED_ADDRESS = _V4_MAPPED + bytes(4)


def _ipv4(value: str | None, name: str, *, optional: bool = True) -> str | None:
    """A canonical dotted quad; "0.0.0.0" is the same as None (unspecified) where that is allowed."""
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    try:
        text = str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError(f"{name} {value!r} is not a dotted-quad IPv4 address") from None
    return None if optional and text == "0.0.0.0" else text


def _pack_address(value: str | None) -> bytes:
    return _UNSPECIFIED_ADDRESS if value is None else _V4_MAPPED + ipaddress.IPv4Address(value).packed


def _unpack_address(raw: bytes, name: str) -> str | None:
    if raw[:12] != _V4_MAPPED:
        raise PcpError(Result.MALFORMED_REQUEST,
                       f"{name} {ipaddress.IPv6Address(raw)} is not IPv4-mapped (RFC 6887 5; natlab is IPv4-only)")
    return None if raw[12:] == bytes(4) else str(ipaddress.IPv4Address(raw[12:]))


def _check_uint(value: int | None, bits_mask: int, name: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bits_mask:
        raise ValueError(f"{name} {value!r} is not an integer in 0..{bits_mask}")


def _check_nonce(nonce: bytes) -> None:
    """A 12-byte nonce, or b"" as a placeholder the lease client fills in (never encoded)."""
    if not isinstance(nonce, bytes) or len(nonce) not in (0, NONCE_LEN):
        raise ValueError(f"nonce must be {NONCE_LEN} bytes (or b'' for the client to choose), got {nonce!r}")


def _require_nonce(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError("cannot encode a message without its 12-byte nonce")
    return nonce


def _require_zero(raw: bytes | int, what: str) -> None:
    if raw if isinstance(raw, int) else any(raw):
        raise PcpError(Result.MALFORMED_REQUEST, f"{what} must be zero")


def _flag(value: object, bit: int) -> int:
    return 0 if value is None else bit


# ----------------------------------------------------------------------------- opcode bodies


@dataclass(frozen=True)
class MapInfo:
    """MAP opcode body, request and response (RFC 6887 11.1, Figures 9 and 10), 36 octets::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                 Mapping Nonce (96 bits)                       |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |   Protocol    |          Reserved (24 bits)                   |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |        Internal Port          |    Suggested External Port    |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |           Suggested External IP Address (128 bits)            |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    In a response the last two fields are the *assigned* external port and
    address (RFC 6887 11.2). Protocol 0 means all protocols, and then the
    internal port must be 0 (RFC 6887 11.1); ESP and AH have no ports, so both
    ports must be 0 for them. The reserved bits are ignored on receipt, as
    RFC 6887 11.1 says.
    """

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_ip: str | None

    SIZE = 36
    _S = struct.Struct("!12sB3xHH16s")

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        _check_uint(self.protocol, 0xFF, "protocol")
        _check_uint(self.internal_port, _U16, "internal_port")
        _check_uint(self.external_port, _U16, "external_port")
        object.__setattr__(self, "external_ip", _ipv4(self.external_ip, "external_ip"))
        _check_ports(self.protocol, self.internal_port, self.external_port)

    def pack(self) -> bytes:
        return self._S.pack(_require_nonce(self.nonce), self.protocol, self.internal_port, self.external_port,
                            _pack_address(self.external_ip))

    @classmethod
    def unpack(cls, body: bytes, *, response: bool) -> tuple[MapInfo, int]:
        _need(body, cls.SIZE, "MAP")
        nonce, protocol, internal, external, ip = cls._S.unpack_from(body)
        return cls(nonce, protocol, internal, external, _unpack_address(ip, "external address")), cls.SIZE


@dataclass(frozen=True)
class PeerInfo:
    """PEER opcode body, request and response (RFC 6887 12.1, Figures 12 and 13), 56 octets::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                 Mapping Nonce (96 bits)                       |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |   Protocol    |          Reserved (24 bits)                   |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |        Internal Port          |    Suggested External Port    |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |           Suggested External IP Address (128 bits)            |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |       Remote Peer Port        |     Reserved (16 bits)        |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |               Remote Peer IP Address (128 bits)               |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    The response carries the assigned external port and address (RFC 6887 12.2).
    """

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_ip: str | None
    remote_port: int
    remote_ip: str | None

    SIZE = 56
    _S = struct.Struct("!12sB3xHH16sH2x16s")

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        _check_uint(self.protocol, 0xFF, "protocol")
        for name in ("internal_port", "external_port", "remote_port"):
            _check_uint(getattr(self, name), _U16, name)
        object.__setattr__(self, "external_ip", _ipv4(self.external_ip, "external_ip"))
        object.__setattr__(self, "remote_ip", _ipv4(self.remote_ip, "remote_ip"))
        _check_ports(self.protocol, self.internal_port, self.external_port, self.remote_port)

    def pack(self) -> bytes:
        return self._S.pack(_require_nonce(self.nonce), self.protocol, self.internal_port, self.external_port,
                            _pack_address(self.external_ip), self.remote_port, _pack_address(self.remote_ip))

    @classmethod
    def unpack(cls, body: bytes, *, response: bool) -> tuple[PeerInfo, int]:
        _need(body, cls.SIZE, "PEER")
        nonce, protocol, internal, external, ip, remote_port, remote_ip = cls._S.unpack_from(body)
        return cls(nonce, protocol, internal, external, _unpack_address(ip, "external address"), remote_port,
                   _unpack_address(remote_ip, "remote peer address")), cls.SIZE


def _check_ports(protocol: int, *ports: int) -> None:
    if protocol == 0 and ports[0] != 0:
        raise ValueError("protocol 0 (all protocols) needs internal port 0 (RFC 6887 11.1)")
    if protocol in (IPPROTO_ESP, IPPROTO_AH) and any(ports):
        raise ValueError(f"protocol {protocol} has no ports: they must be 0 (RFC 6887 11.1); use LEASE for SPIs")


@dataclass(frozen=True)
class GpnDefinition:
    """DEFINE opcode body (natlab private opcode 96): a GPN definition, seed FIG. 7 step 701. 48 octets::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                 Mapping Nonce (96 bits)                       |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |   Protocol    |  Underlying   |        Underlying Port        |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |S|  Reserved   |  Length bits  |        Reserved (16 bits)     |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |   Source Offset (bits)        |   Destination Offset (bits)   |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                    Range Minimum (64 bits)                    |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                    Range Maximum (64 bits)                    |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                 Unspecified Value (64 bits)                   |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    (The 64-bit fields take two rows each on the wire.) ``Underlying`` is 0
    for IP (port 0) or 17 for UDP (port 1-65535). Offsets count bits from the
    end of the underlying header. ``S`` (0x80) says the packet carries a source
    GPN; when clear, the source offset is 0 and ``src_offset_bits`` is None (an
    outgoing ESP packet carries the peer's SPI, not the client's). GPNs are
    1-64 bits; ``range_min <= range_max`` and ``unspecified`` fit that length.
    Reserved bits must be zero. The response echoes the definition.
    """

    nonce: bytes
    protocol: int
    underlying: int
    port: int
    src_offset_bits: int | None
    dst_offset_bits: int
    length_bits: int
    range_min: int
    range_max: int
    unspecified: int

    SIZE = 48
    FLAG_SOURCE = 0x80
    _S = struct.Struct("!12sBBHBBHHHQQQ")

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        _check_uint(self.protocol, 0xFF, "protocol")
        if self.underlying not in (UNDERLYING_IP, UNDERLYING_UDP):
            raise ValueError(f"underlying {self.underlying!r} is neither IP (0) nor UDP (17)")
        _check_uint(self.port, _U16, "port")
        if (self.underlying == UNDERLYING_IP) != (self.port == 0):
            raise ValueError(f"underlying port {self.port} must be 0 for IP and 1-65535 for UDP")
        _check_uint(self.src_offset_bits, _U16, "src_offset_bits", optional=True)
        _check_uint(self.dst_offset_bits, _U16, "dst_offset_bits")
        _check_uint(self.length_bits, 64, "length_bits")
        if self.length_bits < 1:
            raise ValueError("length_bits must be 1..64")
        top = (1 << self.length_bits) - 1
        for name in ("range_min", "range_max", "unspecified"):
            _check_uint(getattr(self, name), top, name)
        if self.range_min > self.range_max:
            raise ValueError(f"range {self.range_min}-{self.range_max} is empty")

    def pack(self) -> bytes:
        return self._S.pack(_require_nonce(self.nonce), self.protocol, self.underlying, self.port,
                            _flag(self.src_offset_bits, self.FLAG_SOURCE), self.length_bits, 0,
                            self.src_offset_bits or 0, self.dst_offset_bits, self.range_min, self.range_max,
                            self.unspecified)

    @classmethod
    def unpack(cls, body: bytes, *, response: bool) -> tuple[GpnDefinition, int]:
        _need(body, cls.SIZE, "DEFINE")
        (nonce, protocol, underlying, port, flags, length, reserved, src, dst, low, high,
         unspecified) = cls._S.unpack_from(body)
        _require_zero(flags & ~cls.FLAG_SOURCE, "DEFINE reserved flag bits")
        _require_zero(reserved, "DEFINE reserved field")
        if not flags & cls.FLAG_SOURCE:
            _require_zero(src, "DEFINE source offset without the S flag")
        source = src if flags & cls.FLAG_SOURCE else None
        return cls(nonce, protocol, underlying, port, source, dst, length, low, high, unspecified), cls.SIZE


@dataclass(frozen=True)
class LeaseInfo:
    """LEASE opcode body (natlab private opcode 97): a client-ALG entry, seed FIG. 6. 64 octets::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                 Mapping Nonce (96 bits)                       |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |   Protocol    |P|G|A|F| Rsvd  |        Underlying Port        |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                     Private GPN (64 bits)                     |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                     Global GPN (64 bits)                      |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                 Global IP Address (128 bits)                  |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                 Foreign IP Address (128 bits)                 |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    The flags say which fields are specified: P private GPN (0x80), G global
    GPN (0x40), A global IP (0x20), F foreign IP (0x10). A clear flag is the
    API's ``None`` ("the NAT chooses", or foreign "any") and its field must be
    zero (the all-zeros IPv4-mapped address for addresses). Reserved bits are
    zero. The private IP is the header's client address. ``protocol`` and
    ``port`` name the definition: an IP protocol with port 0 (ESP 50, AH 51),
    or 17 with the underlying UDP port (ISAKMP: 17, 500). The response carries
    every value the NAT chose (seed step 705).
    """

    nonce: bytes
    protocol: int
    private_gpn: int | None
    global_gpn: int | None
    global_ip: str | None
    foreign_ip: str | None
    port: int = 0

    SIZE = 64
    FLAG_PRIVATE_GPN, FLAG_GLOBAL_GPN, FLAG_GLOBAL_IP, FLAG_FOREIGN_IP = 0x80, 0x40, 0x20, 0x10
    _S = struct.Struct("!12sBBHQQ16s16s")

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        _check_uint(self.protocol, 0xFF, "protocol")
        _check_uint(self.port, _U16, "port")
        _check_uint(self.private_gpn, _U64, "private_gpn", optional=True)
        _check_uint(self.global_gpn, _U64, "global_gpn", optional=True)
        object.__setattr__(self, "global_ip", _ipv4(self.global_ip, "global_ip"))
        object.__setattr__(self, "foreign_ip", _ipv4(self.foreign_ip, "foreign_ip"))

    def pack(self) -> bytes:
        flags = (_flag(self.private_gpn, self.FLAG_PRIVATE_GPN) | _flag(self.global_gpn, self.FLAG_GLOBAL_GPN)
                 | _flag(self.global_ip, self.FLAG_GLOBAL_IP) | _flag(self.foreign_ip, self.FLAG_FOREIGN_IP))
        return self._S.pack(_require_nonce(self.nonce), self.protocol, flags, self.port, self.private_gpn or 0,
                            self.global_gpn or 0, _pack_address(self.global_ip), _pack_address(self.foreign_ip))

    @classmethod
    def unpack(cls, body: bytes, *, response: bool) -> tuple[LeaseInfo, int]:
        _need(body, cls.SIZE, "LEASE")
        nonce, protocol, flags, port, private, global_, global_ip, foreign = cls._S.unpack_from(body)
        _require_zero(flags & 0x0F, "LEASE reserved flag bits")
        values: list[Any] = []
        for bit, raw, what in ((cls.FLAG_PRIVATE_GPN, private, "private GPN"),
                               (cls.FLAG_GLOBAL_GPN, global_, "global GPN"),
                               (cls.FLAG_GLOBAL_IP, global_ip, "global IP"),
                               (cls.FLAG_FOREIGN_IP, foreign, "foreign IP")):
            if isinstance(raw, bytes):
                raw = _unpack_address(raw, what)
            if not flags & bit:
                if raw:
                    raise PcpError(Result.MALFORMED_REQUEST, f"LEASE {what} is set but its flag is clear")
                raw = None
            elif raw is None:
                raise PcpError(Result.MALFORMED_REQUEST, f"LEASE {what} flag is set on the all-zeros address")
            values.append(raw)
        private_gpn, global_gpn, global_ip, foreign_ip = values
        return cls(nonce, protocol, private_gpn, global_gpn, global_ip, foreign_ip, port=port), cls.SIZE


ENTRY_KINDS = ("NAT-ALG", "CLIENT-ALG")  # FIG. 6: made by the NAT, or leased by a client


@dataclass(frozen=True)
class EntryRecord:
    """One translation entry in a READ response (every FIG. 6 field), 76 octets::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |     Kind      |   Protocol    |        Underlying Port        |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |P|G|r|F| Rsvd  |              Reserved (24 bits)               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                  Remaining Lifetime (seconds)                 |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                     Private GPN (64 bits)                     |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                     Global GPN (64 bits)                      |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                 Private IP Address (128 bits)                 |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                 Global IP Address (128 bits)                  |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                 Foreign IP Address (128 bits)                 |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    Kind is 1 for NAT-ALG, 2 for CLIENT-ALG. Flags: P private GPN present
    (0x80), G global GPN present (0x40), F foreign address specified (0x10;
    clear = any). Reserved bits are zero.
    """

    kind: str
    protocol: int
    private_ip: str | None
    private_gpn: int | None
    global_ip: str | None
    global_gpn: int | None
    foreign_ip: str | None
    lifetime: int
    port: int = 0

    SIZE = 76
    FLAG_PRIVATE_GPN, FLAG_GLOBAL_GPN, FLAG_FOREIGN_IP = 0x80, 0x40, 0x10
    _S = struct.Struct("!BBHB3sIQQ16s16s16s")

    def __post_init__(self) -> None:
        if self.kind not in ENTRY_KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {ENTRY_KINDS}")
        _check_uint(self.protocol, 0xFF, "protocol")
        _check_uint(self.port, _U16, "port")
        _check_uint(self.private_gpn, _U64, "private_gpn", optional=True)
        _check_uint(self.global_gpn, _U64, "global_gpn", optional=True)
        _check_uint(self.lifetime, _U32, "lifetime")
        for name in ("private_ip", "global_ip", "foreign_ip"):
            object.__setattr__(self, name, _ipv4(getattr(self, name), name))

    def pack(self) -> bytes:
        flags = (_flag(self.private_gpn, self.FLAG_PRIVATE_GPN) | _flag(self.global_gpn, self.FLAG_GLOBAL_GPN)
                 | _flag(self.foreign_ip, self.FLAG_FOREIGN_IP))
        return self._S.pack(ENTRY_KINDS.index(self.kind) + 1, self.protocol, self.port, flags, bytes(3),
                            self.lifetime, self.private_gpn or 0, self.global_gpn or 0,
                            _pack_address(self.private_ip), _pack_address(self.global_ip),
                            _pack_address(self.foreign_ip))

    @classmethod
    def unpack_from(cls, data: bytes, offset: int) -> EntryRecord:
        (kind, protocol, port, flags, reserved, lifetime, private_gpn, global_gpn, private_ip, global_ip,
         foreign) = cls._S.unpack_from(data, offset)
        if not 1 <= kind <= len(ENTRY_KINDS):
            raise PcpError(Result.MALFORMED_REQUEST, f"entry kind {kind} is neither 1 nor 2")
        _require_zero(flags & 0x2F, "entry reserved flag bits")
        _require_zero(reserved, "entry reserved field")
        gpns = []
        for bit, raw, what in ((cls.FLAG_PRIVATE_GPN, private_gpn, "private GPN"),
                               (cls.FLAG_GLOBAL_GPN, global_gpn, "global GPN")):
            if not flags & bit and raw:
                raise PcpError(Result.MALFORMED_REQUEST, f"entry {what} is set but its flag is clear")
            gpns.append(raw if flags & bit else None)
        foreign_ip = _unpack_address(foreign, "entry foreign address")
        if bool(flags & cls.FLAG_FOREIGN_IP) != (foreign_ip is not None):
            raise PcpError(Result.MALFORMED_REQUEST, "entry foreign flag disagrees with the foreign address")
        return cls(ENTRY_KINDS[kind - 1], protocol, _unpack_address(private_ip, "entry private address"), gpns[0],
                   _unpack_address(global_ip, "entry global address"), gpns[1], foreign_ip, lifetime, port)


@dataclass(frozen=True)
class ReadInfo:
    """READ opcode body (natlab private opcode 98): read out one's own entries. 20 octets + records::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                 Mapping Nonce (96 bits)                       |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |          Start Index          |         Record Count          |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |         Total Entries         |       Reserved (16 bits)      |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        :             Record Count x EntryRecord (76 octets)            :
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    A request has no records and a total of 0 (the API's ``entries=()`` and
    ``total=None``); its nonce is that of one of the client's own entries
    (the proof of ownership). ``start`` asks for a page: a response holds as
    many records from index ``start`` as fit in MAX_MESSAGE (13 without
    options) and says how many entries there are in all.

    Encoding a response whose ``total`` is None treats ``entries`` as the
    client's whole list and sends the page that begins at ``start``; with a
    ``total``, ``entries`` is already the page (truncated if it does not fit).
    """

    nonce: bytes
    entries: tuple[EntryRecord, ...] = ()
    start: int = 0
    total: int | None = None

    FIXED = 20
    _S = struct.Struct("!12sHHHH")

    def __post_init__(self) -> None:
        _check_nonce(self.nonce)
        object.__setattr__(self, "entries", tuple(self.entries))
        if not all(isinstance(e, EntryRecord) for e in self.entries):
            raise ValueError("entries must be EntryRecord values")
        _check_uint(self.start, _U16, "start")
        _check_uint(self.total, _U16, "total", optional=True)

    def pack(self, room: int = MAX_MESSAGE) -> bytes:
        """The body, with as many records as fit in ``room`` octets."""
        page = self.entries if self.total is not None else self.entries[self.start:]
        fits = max(0, (room - self.FIXED) // EntryRecord.SIZE)
        page = page[:fits]
        total = len(self.entries) if self.total is None else self.total
        head = self._S.pack(_require_nonce(self.nonce), self.start, len(page), min(total, _U16), 0)
        return head + b"".join(e.pack() for e in page)

    @classmethod
    def unpack(cls, body: bytes, *, response: bool) -> tuple[ReadInfo, int]:
        _need(body, cls.FIXED, "READ")
        nonce, start, count, total, reserved = cls._S.unpack_from(body)
        _require_zero(reserved, "READ reserved field")
        if not response:
            _require_zero(count, "READ request record count")
            _require_zero(total, "READ request total")
            return cls(nonce, (), start, None), cls.FIXED
        end = cls.FIXED + count * EntryRecord.SIZE
        _need(body, end, f"READ response with {count} records")
        entries = tuple(EntryRecord.unpack_from(body, cls.FIXED + i * EntryRecord.SIZE) for i in range(count))
        return cls(nonce, entries, start, total), end


READ_PAGE_ENTRIES = (MAX_MESSAGE - HEADER_LEN - ReadInfo.FIXED) // EntryRecord.SIZE

Info = MapInfo | PeerInfo | GpnDefinition | LeaseInfo | ReadInfo
InfoType = type[MapInfo] | type[PeerInfo] | type[GpnDefinition] | type[LeaseInfo] | type[ReadInfo]
INFO_TYPES: dict[int, InfoType | None] = {
    Opcode.ANNOUNCE: None, Opcode.MAP: MapInfo, Opcode.PEER: PeerInfo, Opcode.DEFINE: GpnDefinition,
    Opcode.LEASE: LeaseInfo, Opcode.READ: ReadInfo,
}


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise PcpError(Result.MALFORMED_REQUEST, f"{what} body is {len(body)} octets, needs {size}")


# The seed's three examples (description of FIG. 7), with RFC 4303 2.1, RFC 4302 2 and RFC 2408 3.1 positions.
# Their nonce is b"": the lease client gives each DEFINE its own.
ISAKMP_DEFINITION = GpnDefinition(b"", IPPROTO_UDP, UNDERLYING_UDP, 500, 0, 0, 64, 1, _U64, 0)
ESP_DEFINITION = GpnDefinition(b"", IPPROTO_ESP, UNDERLYING_IP, 0, None, 0, 32, MIN_SPI, _U32, 0)
AH_DEFINITION = GpnDefinition(b"", IPPROTO_AH, UNDERLYING_IP, 0, None, 32, 32, MIN_SPI, _U32, 0)
DEFINITIONS = {"isakmp": ISAKMP_DEFINITION, "esp": ESP_DEFINITION, "ah": AH_DEFINITION}


# ----------------------------------------------------------------------------- messages

Option = tuple[int, bytes]  # (option code, data without padding), RFC 6887 7.3


@dataclass(frozen=True)
class Request:
    """A request: the common header (RFC 6887 7.1, Figure 2), the opcode body, options::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |  Version = 2  |R|   Opcode    |         Reserved              |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                 Requested Lifetime (32 bits)                  |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |            PCP Client's IP Address (128 bits)                 |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        :             (optional) Opcode-specific information            :
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        :             (optional) PCP Options                            :
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    R is 0. The reserved field is ignored on receipt (RFC 6887 7.1). A
    lifetime of 0 releases (RFC 6887 15); ``LIFETIME_UNSPECIFIED`` asks for
    the NAT's default. ``info`` is None for ANNOUNCE (RFC 6887 14.1).
    """

    opcode: Opcode
    lifetime: int
    client_ip: str
    info: Info | None
    options: tuple[Option, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "opcode", Opcode(self.opcode))
        _check_uint(self.lifetime, _U32, "lifetime")
        object.__setattr__(self, "client_ip", _ipv4(self.client_ip, "client_ip", optional=False))
        _check_info(self.opcode, self.info, required=True)
        if isinstance(self.info, ReadInfo) and (self.info.entries or self.info.total is not None):
            raise ValueError("a READ request carries no entries and no total")
        object.__setattr__(self, "options", _check_options(self.options))


@dataclass(frozen=True)
class Response:
    """A response: the common header (RFC 6887 7.2, Figure 3), the opcode body, options::

         0                   1                   2                   3
         0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |  Version = 2  |R|   Opcode    |   Reserved    |  Result Code  |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                      Lifetime (32 bits)                       |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                     Epoch Time (32 bits)                      |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        |                                                               |
        |                      Reserved (96 bits)                       |
        |                                                               |
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        :             (optional) Opcode-specific response data          :
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
        :             (optional) Options                                :
        +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    R is 1. On success ``lifetime`` is the granted lifetime; on error, how
    long the same request will meet the same error (RFC 6887 7.2). ``info``
    echoes the request's body with the assigned values (RFC 6887 11.3); it is
    None for ANNOUNCE and for an error answering a body that did not parse. An
    error to an opcode we do not know keeps that opcode as a plain int.
    """

    opcode: Opcode | int
    result: Result
    lifetime: int
    epoch: int
    info: Info | None
    options: tuple[Option, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", Result(self.result))
        _check_uint(self.opcode, 0x7F, "opcode")
        if self.opcode in INFO_TYPES:
            object.__setattr__(self, "opcode", Opcode(self.opcode))
        elif self.result is Result.SUCCESS or self.info is not None:
            raise ValueError(f"opcode {self.opcode} is unknown: only an error without a body can carry it")
        _check_uint(self.lifetime, _U32, "lifetime")
        _check_uint(self.epoch, _U32, "epoch")
        if self.opcode in INFO_TYPES:
            _check_info(Opcode(self.opcode), self.info, required=self.result is Result.SUCCESS)
        object.__setattr__(self, "options", _check_options(self.options))
        if self.options and self.info is None and INFO_TYPES.get(self.opcode) is not None:
            raise ValueError("options follow the opcode body: a response without its body cannot carry them")


def _check_info(opcode: Opcode, info: Info | None, *, required: bool) -> None:
    expected = INFO_TYPES[opcode]
    if expected is None:
        if info is not None:
            raise ValueError(f"{opcode.name} has no opcode-specific body")
    elif info is None:
        if required:
            raise ValueError(f"{opcode.name} needs a {expected.__name__}")
    elif type(info) is not expected:
        raise ValueError(f"{opcode.name} carries a {expected.__name__}, not a {type(info).__name__}")


def _check_options(options: Iterable[Option]) -> tuple[Option, ...]:
    checked = []
    for option in options:
        code, data = option
        _check_uint(code, 0xFF, "option code")
        if not isinstance(data, bytes) or len(data) > _U16:
            raise ValueError(f"option {code} data must be bytes of at most 65535 octets")
        checked.append((code, data))
    return tuple(checked)


# ----------------------------------------------------------------------------- encoding

_REQUEST_HEADER = struct.Struct("!BBHI16s")
_RESPONSE_HEADER = struct.Struct("!BBBBII12s")


def encode_request(request: Request) -> bytes:
    """The request's octets (RFC 6887 7.1); ValueError if it is longer than MAX_MESSAGE."""
    header = _REQUEST_HEADER.pack(PCP_VERSION, request.opcode, 0, request.lifetime, _pack_address(request.client_ip))
    return _finish(header + (request.info.pack() if request.info is not None else b"") + _pack_options(request.options))


def encode_response(response: Response) -> bytes:
    """The response's octets (RFC 6887 7.2). A READ body gets as many records as fit."""
    header = _RESPONSE_HEADER.pack(PCP_VERSION, 0x80 | response.opcode, 0, response.result, response.lifetime,
                                   response.epoch, bytes(12))
    options = _pack_options(response.options)
    if isinstance(response.info, ReadInfo):
        body = response.info.pack(MAX_MESSAGE - HEADER_LEN - len(options))
    else:
        body = response.info.pack() if response.info is not None else b""
    return _finish(header + body + options)


def _finish(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"message of {len(message)} octets exceeds {MAX_MESSAGE} (RFC 6887 7)")
    return message


def _pack_options(options: tuple[Option, ...]) -> bytes:
    """RFC 6887 7.3: code, reserved, length of the data, the data padded to 4 octets with zeros."""
    return b"".join(struct.pack("!BBH", code, 0, len(data)) + data + bytes(-len(data) % 4) for code, data in options)


# ----------------------------------------------------------------------------- decoding


def decode_request(data: bytes, *, supported_options: frozenset[int] = frozenset()) -> Request:
    """Parse a request; raise :class:`PcpError` with the result a server answers with.

    The order of checks follows RFC 6887 8.3 and 9: an R bit or a version the
    server does not speak is judged first (so a NAT-PMP or future client learns
    UNSUPP_VERSION even from a short message), then the opcode, then lengths
    (at least the 24-octet header, at most 1100 octets, a multiple of 4), the
    opcode body, and the options. Mandatory options (codes 0-127) not in
    ``supported_options`` are refused with UNSUPP_OPTION (RFC 6887 7.3).
    """
    data = bytes(data)
    if len(data) < 2:
        raise PcpError(Result.MALFORMED_REQUEST, f"{len(data)} octets is no PCP message")
    if data[1] & 0x80:
        raise PcpError(Result.MALFORMED_REQUEST, "the R bit is set: a response, not a request (RFC 6887 8.3)")
    if data[0] != PCP_VERSION:
        raise PcpError(Result.UNSUPP_VERSION, f"version {data[0]}; this server speaks version {PCP_VERSION}")
    opcode = _opcode(data[1] & 0x7F)
    _check_length(data)
    _, _, _, lifetime, client_raw = _REQUEST_HEADER.unpack_from(data)
    client_ip = _client_address(client_raw)
    info, options = _decode_body(opcode, data[HEADER_LEN:], response=False)
    for code, _ in options:
        if code < 128 and code not in supported_options:
            raise PcpError(Result.UNSUPP_OPTION, f"mandatory option {code} is not supported (RFC 6887 7.3)")
    return _build(Request, opcode, lifetime, client_ip, info, options)


def decode_response(data: bytes) -> Response:
    """Parse a response; raise :class:`PcpError` if it is not one.

    An error response whose body does not parse (it copies whatever the
    request held, RFC 6887 8.3) decodes with ``info=None`` rather than failing,
    and so does one for an opcode this codec does not know.
    """
    data = bytes(data)
    if len(data) < HEADER_LEN:
        raise PcpError(Result.MALFORMED_REQUEST, f"a response of {len(data)} octets is shorter than its header")
    if data[0] != PCP_VERSION:
        raise PcpError(Result.UNSUPP_VERSION, f"version {data[0]} is not {PCP_VERSION}")
    if not data[1] & 0x80:
        raise PcpError(Result.MALFORMED_REQUEST, "the R bit is clear: a request, not a response")
    _check_length(data)
    _, r_opcode, _, result_code, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(data)
    try:
        result = Result(result_code)
    except ValueError:
        raise PcpError(Result.MALFORMED_REQUEST, f"unknown result code {result_code}") from None
    opcode_value = r_opcode & 0x7F
    if opcode_value not in INFO_TYPES:
        if result is Result.SUCCESS:
            raise PcpError(Result.UNSUPP_OPCODE, f"success for unknown opcode {opcode_value}")
        return _build(Response, opcode_value, result, lifetime, epoch, None, ())
    opcode = Opcode(opcode_value)
    try:
        info, options = _decode_body(opcode, data[HEADER_LEN:], response=True)
    except PcpError:
        if result is Result.SUCCESS:
            raise
        info, options = None, ()
    return _build(Response, opcode, result, lifetime, epoch, info, options)


def _opcode(value: int) -> Opcode:
    try:
        return Opcode(value)
    except ValueError:
        raise PcpError(Result.UNSUPP_OPCODE, f"opcode {value} is not supported") from None


def _check_length(data: bytes) -> None:
    if len(data) < HEADER_LEN:
        raise PcpError(Result.MALFORMED_REQUEST, f"{len(data)} octets is shorter than the 24-octet header")
    if len(data) > MAX_MESSAGE:
        raise PcpError(Result.MALFORMED_REQUEST, f"{len(data)} octets exceeds {MAX_MESSAGE} (RFC 6887 7)")
    if len(data) % 4:
        raise PcpError(Result.MALFORMED_REQUEST, f"{len(data)} octets is not a multiple of 4 (RFC 6887 7)")


def _client_address(raw: bytes) -> str:
    if raw[:12] != _V4_MAPPED:
        raise PcpError(Result.ADDRESS_MISMATCH,
                       f"client address {ipaddress.IPv6Address(raw)} is not IPv4-mapped; natlab is IPv4-only")
    return str(ipaddress.IPv4Address(raw[12:]))


def _decode_body(opcode: Opcode, rest: bytes, *, response: bool) -> tuple[Info | None, tuple[Option, ...]]:
    kind = INFO_TYPES[opcode]
    if kind is None:
        return None, _decode_options(rest)
    unpack: Callable[..., tuple[Info, int]] = kind.unpack
    info, used = _guard(unpack, rest, response=response)
    return info, _decode_options(rest[used:])


def _decode_options(data: bytes) -> tuple[Option, ...]:
    """RFC 6887 7.3 framing; a truncated option is MALFORMED_OPTION."""
    options, at = [], 0
    while at < len(data):
        if len(data) - at < 4:
            raise PcpError(Result.MALFORMED_OPTION, "option header cut short")
        code, _reserved, length = struct.unpack_from("!BBH", data, at)
        end = at + 4 + length
        if end + (-length % 4) > len(data):
            raise PcpError(Result.MALFORMED_OPTION, f"option {code} of {length} octets overruns the message")
        options.append((code, data[at + 4:end]))
        at = end + (-length % 4)
    return tuple(options)


def _guard(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a parser or constructor; a ValueError from field validation becomes MALFORMED_REQUEST."""
    try:
        return function(*args, **kwargs)
    except PcpError:
        raise
    except (ValueError, struct.error) as exc:
        raise PcpError(Result.MALFORMED_REQUEST, str(exc)) from None


def _build(cls: Callable[..., _T], *args: Any) -> _T:
    return _guard(cls, *args)


# ----------------------------------------------------------------------------- error responses


def error_response(request_bytes: bytes, result: Result, epoch: int, lifetime: int | None = None) -> bytes | None:
    """The error answer to raw request octets (RFC 6887 8.3), or None when no answer is due.

    Nothing answers fewer than 4 octets or a message with the R bit set (it
    is a response: answering could loop). Otherwise the response copies the
    request's opcode and, after its own 24-octet header, as much of the
    request's opcode-specific information and options as fits (padded to 4
    octets), so that a client can match it by nonce. The version is 2, the
    one this server speaks (RFC 6887 9); the lifetime defaults to the
    result's error lifetime (RFC 6887 7.4).
    """
    request_bytes = bytes(request_bytes)
    if len(request_bytes) < 4 or request_bytes[1] & 0x80:
        return None
    result = Result(result)
    body = request_bytes[HEADER_LEN:MAX_MESSAGE]
    body += bytes(-len(body) % 4)
    header = _RESPONSE_HEADER.pack(PCP_VERSION, 0x80 | (request_bytes[1] & 0x7F), 0, result,
                                   error_lifetime(result) if lifetime is None else lifetime, epoch & _U32, bytes(12))
    return header + body

