"""The IKEv2 wire format (RFC 7296 section 3): the header, the payload chain and each payload, both ways.

Every decoder checks each length against the bytes actually there and raises
:class:`Malformed` with a reason (never ``IndexError`` or ``struct.error``),
so a peer's bytes can only ever be refused. Payloads this module does not know
are kept as :class:`UnknownPayload`, and one flagged critical refuses the
message (section 2.5, UNSUPPORTED_CRITICAL_PAYLOAD). The SK payload (section
3.14) is kept opaque here: :mod:`client_agent.ike.sk` opens and seals it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from client_agent.ike.registry import (
    GENERIC_HEADER_LEN,
    HEADER_LEN,
    IKEV2_VERSION,
    KEY_LENGTH_ATTRIBUTE,
    ExchangeType,
    Flag,
    PayloadType,
    TsType,
)

__pure__ = True

_HEADER = struct.Struct("!8s8sBBBBII")
_GENERIC = struct.Struct("!BBH")
CRITICAL = 0x80


class Malformed(ValueError):
    """Bytes that are not a valid IKEv2 message; ``reason`` is a short counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class UnsupportedCritical(Malformed):
    """A payload we do not know, flagged critical (section 2.5)."""

    def __init__(self, payload_type: int) -> None:
        super().__init__("unsupported_critical_payload", f"type {payload_type}")
        self.payload_type = payload_type


@dataclass(frozen=True)
class Header:
    """The fixed IKE header (section 3.1); ``length`` is filled in by :func:`encode_message`."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """The I flag: the sender is the original initiator of the IKE SA."""
        return bool(self.flags & Flag.INITIATOR)

    def pack(self, length: int) -> bytes:
        return _HEADER.pack(self.spi_i, self.spi_r, self.next_payload, IKEV2_VERSION, self.exchange, self.flags,
                            self.message_id, length)


def decode_header(data: bytes) -> Header:
    """The header of ``data``, checked against its length and version (sections 3.1 and 2.5)."""
    if len(data) < HEADER_LEN:
        raise Malformed("truncated_header", f"{len(data)} bytes")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = _HEADER.unpack_from(data)
    if version >> 4 != IKEV2_VERSION >> 4:
        raise Malformed("invalid_major_version", f"version 0x{version:02x}")
    if length != len(data):
        raise Malformed("length_mismatch", f"header says {length}, datagram has {len(data)}")
    return Header(spi_i, spi_r, next_payload, exchange, flags, message_id, length)


# ---------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Transform:
    """One transform (section 3.3.2); ``key_length`` in bits, the Key Length attribute (3.3.5)."""

    type: int
    id: int
    key_length: int | None = None

    def encode(self, last: bool) -> bytes:
        attrs = b"" if self.key_length is None else struct.pack("!HH", 0x8000 | KEY_LENGTH_ATTRIBUTE, self.key_length)
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), self.type, 0, self.id) + attrs


@dataclass(frozen=True)
class Proposal:
    """One proposal (section 3.3.1): protocol, SPI (8 bytes for IKE rekeys, 4 for ESP/AH, none in IKE_SA_INIT)."""

    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def of_type(self, transform_type: int) -> tuple[Transform, ...]:
        return tuple(t for t in self.transforms if t.type == transform_type)

    def encode(self, last: bool) -> bytes:
        body = b"".join(t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        head = struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(self.spi) + len(body), self.number,
                           self.protocol, len(self.spi), len(self.transforms))
        return head + self.spi + body


@dataclass(frozen=True)
class SaPayload:
    proposals: tuple[Proposal, ...]
    TYPE = PayloadType.SA

    def encode(self) -> bytes:
        return b"".join(p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals))


@dataclass(frozen=True)
class KePayload:
    group: int
    data: bytes = field(repr=False)
    TYPE = PayloadType.KE

    def encode(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data


@dataclass(frozen=True)
class NoncePayload:
    data: bytes
    TYPE = PayloadType.NONCE

    def encode(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class IdPayload:
    """IDi or IDr (section 3.5); :meth:`body` is what the AUTH computation MACs (section 2.15)."""

    initiator: bool
    id_type: int
    data: bytes

    @property
    def TYPE(self) -> PayloadType:  # noqa: N802 - the same attribute name as every other payload
        return PayloadType.IDi if self.initiator else PayloadType.IDr

    def encode(self) -> bytes:
        return struct.pack("!B3x", self.id_type) + self.data


@dataclass(frozen=True)
class AuthPayload:
    method: int
    data: bytes = field(repr=False)
    TYPE = PayloadType.AUTH

    def encode(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data


@dataclass(frozen=True)
class NotifyPayload:
    """Section 3.10: ``protocol`` 0 and no SPI unless the notify is about an SA."""

    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""
    TYPE = PayloadType.NOTIFY

    def encode(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.type) + self.spi + self.data


@dataclass(frozen=True)
class DeletePayload:
    """Section 3.11: the IKE SA itself (protocol 1, no SPIs) or CHILD SAs by their inbound SPIs."""

    protocol: int
    spis: tuple[bytes, ...] = ()
    TYPE = PayloadType.DELETE

    def encode(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)


@dataclass(frozen=True, order=True)
class TrafficSelector:
    """A TS_IPV4_ADDR_RANGE selector (section 3.13.1); ``ip_protocol`` 0 means any."""

    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    def encode(self) -> bytes:
        return struct.pack("!BBHHH4s4s", TsType.TS_IPV4_ADDR_RANGE, self.ip_protocol, 16, self.start_port,
                           self.end_port, self.start.packed, self.end.packed)


@dataclass(frozen=True)
class TsPayload:
    initiator: bool
    selectors: tuple[TrafficSelector, ...]

    @property
    def TYPE(self) -> PayloadType:  # noqa: N802
        return PayloadType.TSi if self.initiator else PayloadType.TSr

    def encode(self) -> bytes:
        return struct.pack("!B3x", len(self.selectors)) + b"".join(s.encode() for s in self.selectors)


@dataclass(frozen=True)
class VendorPayload:
    data: bytes
    TYPE = PayloadType.VENDOR_ID

    def encode(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class UnknownPayload:
    """A payload kept as bytes: one we do not process (CERTREQ, CP...), never a critical one."""

    type: int
    body: bytes

    @property
    def TYPE(self) -> int:  # noqa: N802
        return self.type

    def encode(self) -> bytes:
        return self.body


@dataclass(frozen=True)
class SkPayload:
    """The Encrypted payload (section 3.14), sealed: IV | ciphertext | ICV; ``first_inner`` names its content."""

    first_inner: int
    body: bytes
    TYPE = PayloadType.SK

    def encode(self) -> bytes:
        return self.body


Payload = (SaPayload | KePayload | NoncePayload | IdPayload | AuthPayload | NotifyPayload | DeletePayload
           | TsPayload | VendorPayload | UnknownPayload | SkPayload)


# ---------------------------------------------------------------- chains


def encode_chain(payloads: list[Payload] | tuple[Payload, ...]) -> tuple[int, bytes]:
    """(type of the first payload, the chained payloads): each generic header names the next (section 3.2)."""
    out = []
    for i, payload in enumerate(payloads):
        body = payload.encode()
        if isinstance(payload, SkPayload):
            next_type = payload.first_inner  # SK is last; its next-payload field names its first inner payload
        else:
            next_type = payloads[i + 1].TYPE if i + 1 < len(payloads) else PayloadType.NONE
        out.append(_GENERIC.pack(next_type, 0, GENERIC_HEADER_LEN + len(body)) + body)
    return (payloads[0].TYPE if payloads else PayloadType.NONE), b"".join(out)


def encode_message(header: Header, payloads: list[Payload] | tuple[Payload, ...]) -> bytes:
    """A whole plaintext message (IKE_SA_INIT, or the outside of an SK message before sealing)."""
    first, chain = encode_chain(payloads)
    return Header(header.spi_i, header.spi_r, first, header.exchange, header.flags,
                  header.message_id).pack(HEADER_LEN + len(chain)) + chain


def decode_chain(first_type: int, data: bytes) -> list[Payload]:
    """The payloads of ``data``, starting with one of ``first_type``; SK ends the chain."""
    payloads: list[Payload] = []
    offset, next_type = 0, first_type
    while next_type != PayloadType.NONE:
        if len(data) - offset < GENERIC_HEADER_LEN:
            raise Malformed("truncated_payload", f"type {next_type} at offset {offset}")
        following, flags, length = _GENERIC.unpack_from(data, offset)
        if length < GENERIC_HEADER_LEN or offset + length > len(data):
            raise Malformed("bad_payload_length", f"type {next_type} length {length}")
        body = data[offset + GENERIC_HEADER_LEN: offset + length]
        offset += length
        if next_type == PayloadType.SK:
            if offset != len(data):
                raise Malformed("sk_not_last")
            payloads.append(SkPayload(following, body))
            return payloads
        payloads.append(_decode_payload(next_type, flags, body))
        next_type = following
    if offset != len(data):
        raise Malformed("trailing_bytes", f"{len(data) - offset} after the last payload")
    return payloads


def decode_message(data: bytes) -> tuple[Header, list[Payload]]:
    """Header and outer payloads of a datagram (an SK payload stays sealed)."""
    header = decode_header(data)
    if header.exchange not in ExchangeType._value2member_map_:
        raise Malformed("unknown_exchange", f"exchange type {header.exchange}")
    return header, decode_chain(header.next_payload, data[HEADER_LEN:])


def _decode_payload(payload_type: int, flags: int, body: bytes) -> Payload:
    decoder = _DECODERS.get(payload_type)
    if decoder is None:
        if flags & CRITICAL:
            raise UnsupportedCritical(payload_type)
        return UnknownPayload(payload_type, body)
    return decoder(payload_type, body)


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise Malformed(f"truncated_{what}", f"{len(body)} bytes, need {n}")


def _decode_sa(_: int, body: bytes) -> SaPayload:
    proposals, offset, last = [], 0, False
    while not last:
        _need(body[offset:], 8, "proposal")
        more, _r, length, number, protocol, spi_size, count = struct.unpack_from("!BBHBBBB", body, offset)
        if more not in (0, 2) or length < 8 + spi_size or offset + length > len(body):
            raise Malformed("bad_proposal", f"more={more} length={length}")
        spi = body[offset + 8: offset + 8 + spi_size]
        transforms = _decode_transforms(body[offset + 8 + spi_size: offset + length], count)
        proposals.append(Proposal(number, protocol, spi, transforms))
        offset += length
        last = more == 0
    if offset != len(body) or not proposals:
        raise Malformed("bad_sa_payload", "trailing bytes after the last proposal")
    return SaPayload(tuple(proposals))


def _decode_transforms(body: bytes, count: int) -> tuple[Transform, ...]:
    transforms, offset = [], 0
    for i in range(count):
        _need(body[offset:], 8, "transform")
        more, _r, length, t_type, _r2, t_id = struct.unpack_from("!BBHBBH", body, offset)
        if more != (0 if i == count - 1 else 3) or length < 8 or offset + length > len(body):
            raise Malformed("bad_transform", f"more={more} length={length}")
        transforms.append(Transform(t_type, t_id, _key_length(body[offset + 8: offset + length])))
        offset += length
    if offset != len(body):
        raise Malformed("bad_proposal", "transform count does not match the proposal length")
    return tuple(transforms)


def _key_length(attrs: bytes) -> int | None:
    """The Key Length attribute (section 3.3.5); any other attribute refuses the transform."""
    if not attrs:
        return None
    if len(attrs) != 4:
        raise Malformed("bad_transform_attribute", f"{len(attrs)} bytes")
    kind, value = struct.unpack("!HH", attrs)
    if kind != 0x8000 | KEY_LENGTH_ATTRIBUTE:
        raise Malformed("bad_transform_attribute", f"attribute 0x{kind:04x}")
    return value


def _decode_ke(_: int, body: bytes) -> KePayload:
    _need(body, 4, "ke")
    return KePayload(struct.unpack_from("!H", body)[0], body[4:])


def _decode_nonce(_: int, body: bytes) -> NoncePayload:
    if not 16 <= len(body) <= 256:  # section 3.9
        raise Malformed("bad_nonce_length", f"{len(body)} bytes")
    return NoncePayload(body)


def _decode_id(payload_type: int, body: bytes) -> IdPayload:
    _need(body, 4, "id")
    return IdPayload(payload_type == PayloadType.IDi, body[0], body[4:])


def _decode_auth(_: int, body: bytes) -> AuthPayload:
    _need(body, 4, "auth")
    return AuthPayload(body[0], body[4:])


def _decode_notify(_: int, body: bytes) -> NotifyPayload:
    _need(body, 4, "notify")
    protocol, spi_size, notify_type = struct.unpack_from("!BBH", body)
    _need(body, 4 + spi_size, "notify_spi")
    return NotifyPayload(notify_type, body[4 + spi_size:], protocol, body[4: 4 + spi_size])


def _decode_delete(_: int, body: bytes) -> DeletePayload:
    _need(body, 4, "delete")
    protocol, spi_size, count = struct.unpack_from("!BBH", body)
    if len(body) != 4 + spi_size * count:
        raise Malformed("bad_delete_length", f"{count} SPIs of {spi_size} in {len(body) - 4} bytes")
    return DeletePayload(protocol, tuple(body[4 + i * spi_size: 4 + (i + 1) * spi_size] for i in range(count)))


def _decode_ts(payload_type: int, body: bytes) -> TsPayload:
    _need(body, 4, "ts")
    count, selectors, offset = body[0], [], 4
    for _ in range(count):
        _need(body[offset:], 4, "selector")
        ts_type, proto, length = struct.unpack_from("!BBH", body, offset)
        if length < 4 or offset + length > len(body):
            raise Malformed("bad_selector_length", f"type {ts_type} length {length}")
        if ts_type != TsType.TS_IPV4_ADDR_RANGE:  # an IPv6 range: skipped, this stack is IPv4 only
            offset += length
            continue
        if length != 16:
            raise Malformed("bad_selector_length", f"IPv4 range of {length} bytes")
        _, _, _, sp, ep, start, end = struct.unpack_from("!BBHHH4s4s", body, offset)
        selectors.append(TrafficSelector(ipaddress.IPv4Address(start), ipaddress.IPv4Address(end), proto, sp, ep))
        offset += 16
    if offset != len(body):
        raise Malformed("bad_ts_payload", f"{count} selectors, {len(body)} bytes")
    return TsPayload(payload_type == PayloadType.TSi, tuple(selectors))


def _decode_vendor(_: int, body: bytes) -> VendorPayload:
    return VendorPayload(body)


_DECODERS: dict[int, Callable[[int, bytes], Payload]] = {
    PayloadType.SA: _decode_sa, PayloadType.KE: _decode_ke, PayloadType.NONCE: _decode_nonce,
    PayloadType.IDi: _decode_id, PayloadType.IDr: _decode_id, PayloadType.AUTH: _decode_auth,
    PayloadType.NOTIFY: _decode_notify, PayloadType.DELETE: _decode_delete, PayloadType.TSi: _decode_ts,
    PayloadType.TSr: _decode_ts, PayloadType.VENDOR_ID: _decode_vendor,
}
