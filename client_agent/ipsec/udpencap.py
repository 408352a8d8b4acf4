"""UDP encapsulation of ESP (RFC 3948), sans-IO: wrap, unwrap, demultiplex port 4500, keepalives.

NAT traversal's data path, the baseline the seed's method is compared with (issue 15): an ESP
packet travels as the payload of a UDP datagram from and to port 4500, so a NAPT translates it
as any UDP flow. Port 4500 also carries IKE, told apart by the four-byte non-ESP marker
(section 2.2), and NAT-keepalives, a single 0xFF byte (section 2.3).

Bytes in, bytes out: the shell owns the UDP socket (the kernel adds and strips the UDP
header there); :func:`encapsulate`/:func:`decapsulate` build and take apart whole IPv4
datagrams for raw paths, captures and tests. Every refusal raises
:class:`~client_agent.ipsec.errors.Malformed` or :class:`UdpEncapError` with a stable
``reason`` for the datapath's drop counters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from client_agent.ipsec.errors import DropReason, IPsecError, Malformed
from client_agent.ipsec.ipheader import lengths, rewrite
from netwire.checksum import internet_checksum, pseudo_header_sum
from netwire.ipv4 import IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP, MIN_SPI, build_ipv4_header
from netwire.ipv4 import UDP_HEADER_LEN as UDP_HEADER_LEN
from netwire.view import PROTOCOL_OFFSET, TRANSPORT_CHECKSUM_OFFSET

__pure__ = True

NATT_PORT = 4500  # RFC 3948 section 2 / RFC 7296 section 2.23: ESP-in-UDP and IKE after a NAT is seen
NON_ESP_MARKER = b"\0\0\0\0"  # RFC 3948 section 2.2: where an ESP SPI would be, four zero bytes mean IKE
KEEPALIVE = b"\xff"  # RFC 3948 section 2.3: one octet, 0xFF
KEEPALIVE_INTERVAL = 20.0  # RFC 3948 section 4: "the default value ... SHOULD be 20 seconds"
ESP_MIN_LEN = 8  # SPI and sequence number (RFC 4303 section 2)
IKE_HEADER_LEN = 28  # RFC 7296 section 3.1
_UDP = struct.Struct("!HHHH")


class Kind(StrEnum):
    """What a datagram received on port 4500 carries (RFC 3948 section 2)."""

    ESP = "esp"
    IKE = "ike"
    KEEPALIVE = "keepalive"


class UdpEncapError(IPsecError):
    """A datagram on port 4500 that is neither ESP, IKE nor a keepalive; ``reason`` says which rule it broke."""

    reason = DropReason.MALFORMED

    def __init__(self, reason: str, detail: str) -> None:
        self.detail_reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram taken from an IPv4 packet: the addresses and ports a NAT may have rewritten."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    payload: bytes


def classify(payload: bytes) -> Kind:
    """Demultiplex a UDP/4500 payload (RFC 3948 section 2.2 and 2.3).

    A lone 0xFF is a keepalive; four zero bytes then an IKE header is IKE; anything else must be
    an ESP header whose SPI is not reserved: 0 is the marker itself and 1..255 are reserved by
    IANA (RFC 4303 section 2.1), so a datagram starting with them is refused, never guessed at.
    """
    if payload == KEEPALIVE:
        return Kind.KEEPALIVE
    if len(payload) < len(NON_ESP_MARKER):
        raise UdpEncapError("short", f"{len(payload)} bytes: neither a keepalive nor an ESP header")
    if payload.startswith(NON_ESP_MARKER):
        if len(payload) < len(NON_ESP_MARKER) + IKE_HEADER_LEN:
            raise UdpEncapError("truncated_ike", f"non-ESP marker and {len(payload) - 4} bytes, no IKE header")
        return Kind.IKE
    spi = int.from_bytes(payload[:4], "big")
    if spi < MIN_SPI:
        raise UdpEncapError("reserved_spi", f"SPI {spi} is reserved (RFC 4303 section 2.1)")
    if len(payload) < ESP_MIN_LEN:
        raise UdpEncapError("truncated_esp", f"{len(payload)} bytes, an ESP header needs {ESP_MIN_LEN}")
    return Kind.ESP


def strip_marker(payload: bytes) -> bytes:
    """The IKE message inside a non-ESP-marked payload (call :func:`classify` first)."""
    return payload[len(NON_ESP_MARKER):]


def mark_ike(message: bytes) -> bytes:
    """An IKE message as it travels on port 4500: behind the non-ESP marker (RFC 3948 section 2.2)."""
    return NON_ESP_MARKER + message


def encapsulate(esp_packet: bytes, sport: int = NATT_PORT, dport: int = NATT_PORT) -> bytes:
    """An IPv4/ESP packet rewritten as IPv4/UDP/ESP (RFC 3948 section 3.1, "Tunnel and Transport Mode").

    The UDP header goes between the IP header and the ESP header; the IP protocol becomes UDP
    and the length grows by eight. The UDP checksum is sent as zero, as section 2.1 says it
    SHOULD be: ESP's ICV already protects the payload.
    """
    header_len, total_len = lengths(esp_packet)
    if esp_packet[PROTOCOL_OFFSET] != IPPROTO_ESP:
        raise Malformed(f"protocol {esp_packet[PROTOCOL_OFFSET]} is not ESP: only ESP is UDP-encapsulated")
    esp = esp_packet[header_len:total_len]
    udp = _UDP.pack(sport, dport, UDP_HEADER_LEN + len(esp), 0)
    return rewrite(esp_packet[:header_len], IPPROTO_UDP, total_len + UDP_HEADER_LEN) + udp + esp


def parse_udp(packet: bytes) -> Datagram:
    """The UDP datagram in an IPv4 packet, its length field checked against the IP length."""
    header_len, total_len = lengths(packet)
    if packet[PROTOCOL_OFFSET] != IPPROTO_UDP:
        raise Malformed(f"protocol {packet[PROTOCOL_OFFSET]} is not UDP")
    segment = packet[header_len:total_len]
    if len(segment) < UDP_HEADER_LEN:
        raise UdpEncapError("truncated_udp", f"{len(segment)} bytes after the IP header, a UDP header needs 8")
    sport, dport, length, _ = _UDP.unpack_from(segment)
    if length != len(segment):
        raise UdpEncapError("udp_length", f"UDP length {length}, the IP packet carries {len(segment)}")
    return Datagram(packet[12:16], packet[16:20], sport, dport, segment[UDP_HEADER_LEN:])


def decapsulate(packet: bytes) -> bytes:
    """An IPv4/UDP/ESP packet back to IPv4/ESP (RFC 3948 section 3.1.1 and 3.1.2, first steps).

    The UDP header is removed, the protocol set to ESP and the lengths adjusted; then ESP
    processing (RFC 4303) runs unchanged. Keepalives and IKE are refused here: the caller
    dispatches them with :func:`classify` first.
    """
    datagram = parse_udp(packet)
    kind = classify(datagram.payload)
    if kind is not Kind.ESP:
        raise UdpEncapError("not_esp", f"a {kind} datagram where ESP was expected")
    header_len = lengths(packet)[0]
    esp = datagram.payload
    return rewrite(packet[:header_len], IPPROTO_ESP, header_len + len(esp)) + esp


def fix_transport_checksum(inner: bytes) -> bytes:
    """Transport mode after decryption: recompute the inner TCP/UDP checksum (RFC 3948 section 3.1.2, option 2).

    The peer computed that checksum over its own addresses; a NAT on the way changed the IP
    header's, so the sum no longer matches. Of section 3.1.2's options this one recomputes it in
    full over the packet's addresses as received, because (a) IKEv2 carries no NAT-OA payload
    (RFC 7296 section 2.23 dropped it), so the incremental fix-up would need the original addresses
    from the traffic selectors, which a NAT-unaware peer narrows to its private address only by
    convention; (b) it needs no per-SA state; (c) it cannot hide corruption, since ESP's ICV has
    already authenticated every byte. Zeroing the checksum (option 3) would work for UDP only.
    Other protocols (ICMP has no pseudo-header) pass unchanged.
    """
    header_len, total_len = lengths(inner)
    protocol = inner[PROTOCOL_OFFSET]
    if protocol not in (IPPROTO_TCP, IPPROTO_UDP):
        return inner
    offset = header_len + TRANSPORT_CHECKSUM_OFFSET[protocol]
    if total_len < offset + 2:
        raise Malformed(f"{total_len} bytes: too short for a protocol {protocol} header")
    if protocol == IPPROTO_UDP and inner[offset:offset + 2] == b"\0\0":
        return inner  # RFC 768: zero means "no checksum", and stays so
    segment = bytearray(inner[header_len:total_len])
    segment[offset - header_len:offset - header_len + 2] = b"\0\0"
    checksum = internet_checksum(bytes(segment), pseudo_header_sum(inner[12:16], inner[16:20], protocol, len(segment)))
    if protocol == IPPROTO_UDP and checksum == 0:
        checksum = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    return inner[:offset] + checksum.to_bytes(2, "big") + inner[offset + 2:total_len]


class Keepalive:
    """When to send a NAT-keepalive (RFC 3948 section 4), sans-IO: ``now`` in, a deadline out.

    A keepalive is due ``interval`` seconds after the last packet we sent to the peer on port
    4500 (ESP or IKE); traffic pushes it back, since the point is only to keep the NAT's mapping.
    """

    def __init__(self, interval: float = KEEPALIVE_INTERVAL, now: float = 0.0) -> None:
        if not interval > 0:
            raise ValueError(f"keepalive interval must be positive, not {interval!r}")
        self.interval = interval
        self.last_sent = now
        self.sent = 0

    def get_timer(self) -> float:
        """The time the next keepalive is due."""
        return self.last_sent + self.interval

    def note_sent(self, now: float) -> None:
        """A packet went to the peer on port 4500: the mapping is fresh."""
        self.last_sent = max(self.last_sent, now)

    def handle_timer(self, now: float) -> bytes | None:
        """The keepalive to send now, or ``None`` when it is not yet due."""
        if now < self.get_timer():
            return None
        self.last_sent = now
        self.sent += 1
        return KEEPALIVE


def esp_of(packet: bytes) -> tuple[int, bytes] | None:
    """``(spi, ESP header onwards)`` of an outbound IPv4/ESP packet, ``None`` for anything else (AH, bypass).

    The shell sends those bytes on its UDP/4500 socket: the kernel adds the UDP header and the
    outer IP header, so the IP header the core built is dropped (RFC 3948 section 3.1).
    """
    header_len, total_len = lengths(packet)
    if packet[PROTOCOL_OFFSET] != IPPROTO_ESP or total_len - header_len < ESP_MIN_LEN:
        return None
    return int.from_bytes(packet[header_len:header_len + 4], "big"), packet[header_len:total_len]


def esp_packet(src: bytes, dst: bytes, esp: bytes) -> bytes:
    """A received ESP-in-UDP payload as the IPv4/ESP packet ESP processing expects (RFC 3948 section 3.1.1:
    remove the UDP header, set the protocol to ESP): ``src`` the sender as the socket saw it, ``dst`` ours."""
    return build_ipv4_header(src=src, dst=dst, protocol=IPPROTO_ESP, payload_len=len(esp)) + esp
