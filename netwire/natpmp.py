"""NAT-PMP (RFC 6886): the port-mapping protocol of libnatpmp, Apple and most home routers.

One codec for both ends: the NAT's server (``nat_app/natpmp_server.py``)
decodes requests and encodes responses; tests and client helpers do the
reverse. NAT-PMP is PCP's version 0 on the same UDP port 5351 (RFC 6887 9 and
Appendix A): a server that speaks both tells them apart by the first octet.

Messages (RFC 6886 3.2, 3.3; all integers in network order)::

    external address request   | vers 0 | op 0 |                                        2 octets
    mapping request            | vers 0 | op 1 UDP, 2 TCP | reserved (16) | internal port (16) |
                               | suggested external port (16) | requested lifetime (32) |  12 octets
    external address response  | vers 0 | op 128 | result (16) | epoch (32) | external IPv4 (32) | 12 octets
    mapping response           | vers 0 | op 128+x | result (16) | epoch (32) | internal port (16) |
                               | mapped external port (16) | lifetime (32) |                    16 octets
    error header only          | vers 0 | op 128+x | result (16) | epoch (32) |                    8 octets

Decoding raises only :class:`NatPmpError`; its ``result`` is what a server
answers with, or None when RFC 6886 3.5 says to answer nothing (a response
sent to the server) or no result code fits (a frame of the wrong length).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from netwire.ethernet import MalformedPacket
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from netwire.pcp import CLIENT_PORT, MAX_MESSAGE, SERVER_PORT

__all__ = ["CLIENT_PORT", "SERVER_PORT"]

VERSION = 0  # RFC 6886 3.2; PCP is version 2 on the same port (RFC 6887 9)
RESPONSE_BIT = 0x80  # RFC 6886 3.2: a response's opcode is 128 + the request's
RECOMMENDED_LIFETIME = 7200  # RFC 6886 3.3: "recommended ... 7200 seconds"


class Opcode(IntEnum):
    """RFC 6886 3.2 and 3.3."""

    EXTERNAL_ADDRESS = 0
    MAP_UDP = 1
    MAP_TCP = 2


class Result(IntEnum):
    """RFC 6886 3.5."""

    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2  # "Not Authorized/Refused"
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPP_OPCODE = 5


PROTOCOL_OF = {Opcode.MAP_UDP: IPPROTO_UDP, Opcode.MAP_TCP: IPPROTO_TCP}
OPCODE_OF = {protocol: opcode for opcode, protocol in PROTOCOL_OF.items()}
_HEADER = struct.Struct("!BBHI")  # version, opcode, result, epoch: the 8-octet error answer
_MAP_REQUEST = struct.Struct("!BBHHHI")
_MAP_BODY = struct.Struct("!HHI")
REQUEST_LEN = {Opcode.EXTERNAL_ADDRESS: 2, Opcode.MAP_UDP: 12, Opcode.MAP_TCP: 12}


class NatPmpError(MalformedPacket):
    """Bytes that are no valid request; ``result`` None means "answer nothing" (RFC 6886 3.5)."""

    def __init__(self, result: Result | None, reason: str) -> None:
        super().__init__(f"{result.name if result is not None else 'DROP'}: {reason}")
        self.result = result
        self.reason = reason


@dataclass(frozen=True)
class AddressRequest:
    """RFC 6886 3.2: "what is my external address?"."""


@dataclass(frozen=True)
class MapRequest:
    """RFC 6886 3.3: map (lifetime > 0), renew (the same again) or delete (lifetime 0, 3.4).

    ``internal_port`` 0 with lifetime 0 deletes all of the client's mappings of the protocol."""

    protocol: int
    internal_port: int
    suggested_port: int
    lifetime: int

    def __post_init__(self) -> None:
        if self.protocol not in OPCODE_OF:
            raise ValueError(f"NAT-PMP maps TCP or UDP, not protocol {self.protocol}")
        for name in ("internal_port", "suggested_port"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise ValueError(f"{name} {getattr(self, name)} is no 16-bit port")
        if not 0 <= self.lifetime <= 0xFFFFFFFF:
            raise ValueError(f"lifetime {self.lifetime} is no 32-bit value")


@dataclass(frozen=True)
class AddressResponse:
    result: Result
    epoch: int
    external_ip: str  # "0.0.0.0" unless SUCCESS (RFC 6886 3.2)


@dataclass(frozen=True)
class MapResponse:
    protocol: int
    result: Result
    epoch: int
    internal_port: int
    external_port: int  # 0 after a deletion (RFC 6886 3.4)
    lifetime: int


@dataclass(frozen=True)
class ErrorAnswer:
    """RFC 6886 3.5's answer to a request of an opcode or version the server does not speak."""

    opcode: int  # the request's opcode (without the response bit)
    result: Result
    epoch: int


Request = AddressRequest | MapRequest
Response = AddressResponse | MapResponse | ErrorAnswer


def is_natpmp(datagram: bytes) -> bool:
    """Version negotiation (RFC 6887 9, Appendix A): a first octet of 0 is NAT-PMP, not PCP."""
    return datagram[:1] == bytes([VERSION])


def decode_request(data: bytes) -> Request:
    """Parse a request in RFC 6886 3.5's order: version, then opcode, then the length the opcode has."""
    data = bytes(data)
    if len(data) < 2 or len(data) > MAX_MESSAGE:
        raise NatPmpError(None, f"{len(data)} octets is no NAT-PMP request")
    if data[0] != VERSION:
        raise NatPmpError(Result.UNSUPP_VERSION, f"version {data[0]}; NAT-PMP is version {VERSION}")
    if data[1] & RESPONSE_BIT:
        raise NatPmpError(None, f"opcode {data[1]} is a response (RFC 6886 3.5: silently ignored)")
    if data[1] not in REQUEST_LEN:
        raise NatPmpError(Result.UNSUPP_OPCODE, f"opcode {data[1]} is not 0, 1 or 2")
    opcode = Opcode(data[1])
    if len(data) != REQUEST_LEN[opcode]:
        raise NatPmpError(None, f"{opcode.name} of {len(data)} octets, not {REQUEST_LEN[opcode]}")
    if opcode is Opcode.EXTERNAL_ADDRESS:
        return AddressRequest()
    _, _, _reserved, internal, suggested, lifetime = _MAP_REQUEST.unpack(data)  # reserved: ignored (3.3)
    return MapRequest(PROTOCOL_OF[opcode], internal, suggested, lifetime)


def encode_request(request: Request) -> bytes:
    if isinstance(request, AddressRequest):
        return bytes([VERSION, Opcode.EXTERNAL_ADDRESS])
    r = request
    return _MAP_REQUEST.pack(VERSION, OPCODE_OF[r.protocol], 0, r.internal_port, r.suggested_port, r.lifetime)


def encode_response(response: Response) -> bytes:
    """12 octets for the external address, 16 for a mapping, whatever the result (libnatpmp reads both)."""
    r = response
    if isinstance(r, AddressResponse):
        address = ipaddress.IPv4Address(r.external_ip if r.result is Result.SUCCESS else "0.0.0.0")
        return _HEADER.pack(VERSION, RESPONSE_BIT | Opcode.EXTERNAL_ADDRESS, r.result, r.epoch) + address.packed
    if isinstance(r, ErrorAnswer):
        raise ValueError("an ErrorAnswer has no encoding of its own: error_answer() builds it from the request")
    opcode = RESPONSE_BIT | OPCODE_OF[r.protocol]
    return _HEADER.pack(VERSION, opcode, r.result, r.epoch) + _MAP_BODY.pack(r.internal_port, r.external_port,
                                                                             r.lifetime)


def error_answer(request: bytes, result: Result, epoch: int) -> bytes:
    """The answer to a request the server cannot parse further (RFC 6886 3.5): UNSUPP_VERSION is the
    8-octet header; UNSUPP_OPCODE returns the request with the top bit set and the result code
    (its first 8 octets become the header, anything after them is sent back as it came)."""
    opcode = request[1] if len(request) > 1 else 0
    header = _HEADER.pack(VERSION, RESPONSE_BIT | (opcode & 0x7F), result, epoch)
    return header if result is Result.UNSUPP_VERSION else header + bytes(request[8:])


def decode_response(data: bytes) -> Response:
    """Parse a response (tests, client helpers); UNSUPP_VERSION and UNSUPP_OPCODE answers decode as
    :class:`ErrorAnswer`, other short ones with zero fields."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise NatPmpError(None, f"a response of {len(data)} octets is shorter than its header")
    version, opcode, result, epoch = _HEADER.unpack_from(data)
    if version != VERSION or not opcode & RESPONSE_BIT:
        raise NatPmpError(None, f"version {version} opcode {opcode} is no NAT-PMP response")
    try:
        code = Result(result)
    except ValueError:
        raise NatPmpError(None, f"unknown result code {result}") from None
    if code in (Result.UNSUPP_VERSION, Result.UNSUPP_OPCODE) or opcode & 0x7F not in REQUEST_LEN:
        if code not in (Result.UNSUPP_VERSION, Result.UNSUPP_OPCODE):
            raise NatPmpError(None, f"{code.name} for unknown opcode {opcode & 0x7F}")
        return ErrorAnswer(opcode & 0x7F, code, epoch)
    request_opcode = Opcode(opcode & 0x7F)
    body = data[_HEADER.size:].ljust(8, b"\0")
    if request_opcode is Opcode.EXTERNAL_ADDRESS:
        return AddressResponse(code, epoch, str(ipaddress.IPv4Address(body[:4])))
    return MapResponse(PROTOCOL_OF[request_opcode], code, epoch, *_MAP_BODY.unpack(body[:8]))
