"""GPN definitions (FIG. 7 step 701): where a protocol carries its
generalized port numbers, and how to read them from a packet.

A definition names the underlying protocol (IP, or UDP with a port), the
source and destination offsets in bits from the end of the underlying header
(the source may be absent: an outgoing ESP packet carries the peer's SPI, not
the client's), the length in bits and the value range. The table keys entries by
:class:`GpnSpace`: an IP protocol's own space (ESP's SPIs), or a UDP port's
(ISAKMP's cookies on UDP 500), which never collides with an IP protocol number
(0-255) nor with the NAT's own UDP entries.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from nat_app.ports import DYNAMIC_LOW
from netwire import pcp
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, MIN_SPI, UDP_HEADER_LEN
from netwire.pcp import UNDERLYING_IP, UNDERLYING_UDP

__pure__ = True

_UDP_KEYED = 0x10000  # GpnSpace's encoding bit: above every IP protocol number


class GpnSpace(int):
    """Where a GPN lives (FIG. 7): the space of an IP protocol (``GpnSpace.ip(50)``: ESP's SPIs), or of a
    UDP port (``GpnSpace.udp(500)``: ISAKMP's cookies). The table's indices, the port spaces and the
    client-ALG paths key by it. A table entry holds its parts (``Entry.protocol``, an IP protocol, and
    ``Entry.udp_port``); the space is an int (an IP protocol's equals it, a UDP port's is 0x10000 | port)
    only so that NAPT's lookups by a packet's protocol number stay plain dict hits, and nothing outside
    this class reads or builds that encoding."""

    @classmethod
    def ip(cls, protocol: int) -> GpnSpace:
        if not 0 <= protocol <= 0xFF:
            raise ValueError(f"IP protocol {protocol} is not 0-255")
        return cls(protocol)

    @classmethod
    def udp(cls, port: int) -> GpnSpace:
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"UDP port {port} is not 1-65535")
        return cls(_UDP_KEYED | port)

    @classmethod
    def legacy(cls, value: int) -> GpnSpace:
        """A space saved as its int (the state files written before ``Entry.udp_port``, whose
        ``protocol`` held it); ValueError for any other int, so a hostile file is refused."""
        if 0 <= value <= 0xFF:
            return cls.ip(value)
        if value & ~0xFFFF != _UDP_KEYED:
            raise ValueError(f"{value} is neither an IP protocol nor a UDP port's GPN space")
        return cls.udp(value & 0xFFFF)

    @property
    def over_udp(self) -> bool:
        return bool(self & _UDP_KEYED)

    @property
    def protocol(self) -> int:
        """The IP protocol the GPN's packets carry (UDP for a UDP port's space)."""
        return IPPROTO_UDP if self.over_udp else int(self)

    @property
    def port(self) -> int:
        """The underlying UDP port, 0 for an IP protocol's own space."""
        return int(self) & 0xFFFF if self.over_udp else 0

    def __repr__(self) -> str:
        return f"GpnSpace.udp({self.port})" if self.over_udp else f"GpnSpace.ip({int(self)})"

    def __str__(self) -> str:  # the int's: saved record names and messages are unchanged
        return int.__repr__(self)
# Protocols the NAT translates itself (NAT-ALG): defining them is refused (step 703).
NAT_ALG_PROTOCOLS = frozenset({IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP})


@dataclass(frozen=True)
class Definition:
    protocol: int
    underlying: int
    port: int
    src_offset_bits: int | None
    dst_offset_bits: int
    length_bits: int
    range_min: int
    range_max: int
    unspecified: int

    @classmethod
    def from_wire(cls, d: pcp.GpnDefinition) -> Definition:
        """The NAT's view of a DEFINE body: the same fields, without the request's nonce."""
        return cls(**{f.name: getattr(d, f.name) for f in fields(cls)})

    @property
    def key(self) -> GpnSpace:
        """The GPN space of this definition: the translation table's key for its entries."""
        return GpnSpace.udp(self.port) if self.underlying == UNDERLYING_UDP else GpnSpace.ip(self.protocol)

    @property
    def ip_protocol(self) -> int:
        return IPPROTO_UDP if self.underlying == UNDERLYING_UDP else self.protocol

    @property
    def has_nat_alg(self) -> bool:
        """Step 702: the NAT translates this protocol itself."""
        return self.underlying == UNDERLYING_IP and self.protocol in NAT_ALG_PROTOCOLS

    def problem(self) -> str | None:
        """Why this definition cannot be used, or None."""
        if self.underlying not in (UNDERLYING_IP, UNDERLYING_UDP):
            return f"underlying protocol {self.underlying} is neither IP (0) nor UDP (17)"
        if self.has_nat_alg:
            return "the NAT has its own ALG for this protocol"
        if self.underlying == UNDERLYING_UDP and not 1 <= self.port <= 65535:
            return f"UDP port {self.port} out of range"
        if not 1 <= self.length_bits <= 64:
            return f"length {self.length_bits} bits is not 1..64"
        top = (1 << self.length_bits) - 1
        if not 0 <= self.range_min <= self.range_max <= top:
            return f"range {self.range_min}-{self.range_max} does not fit {self.length_bits} bits"
        if self.protocol in (IPPROTO_ESP, IPPROTO_AH) and self.range_min < MIN_SPI:
            return f"SPIs below {MIN_SPI} are reserved (RFC 4303 2.1)"
        return None

    @property
    def in_napt_space(self) -> bool:
        """A UDP port the NAT's own NAPT may hand out (DYNAMIC_LOW and up): never definable,
        or leased GPNs would shadow NAPT mappings of the same global port."""
        return self.underlying == UNDERLYING_UDP and self.port >= DYNAMIC_LOW

    def read(self, packet: bytes, header_len: int, which: str = "dst") -> int | None:
        """The source or destination GPN of an IPv4 ``packet``; None if absent or truncated."""
        offset = self.src_offset_bits if which == "src" else self.dst_offset_bits
        if offset is None:
            return None
        start_bit = (header_len + (UDP_HEADER_LEN if self.underlying == UNDERLYING_UDP else 0)) * 8 + offset
        end_bit = start_bit + self.length_bits
        if end_bit > len(packet) * 8:
            return None
        first, last = start_bit // 8, (end_bit + 7) // 8
        value = int.from_bytes(packet[first:last], "big")
        return (value >> (last * 8 - end_bit)) & ((1 << self.length_bits) - 1)


# The NAT's own definitions, fixed at start: netwire.pcp's are the single source.
NAT_DEFINITIONS = {d.key: d for d in map(Definition.from_wire, (pcp.ESP_DEFINITION, pcp.AH_DEFINITION,
                                                               pcp.ISAKMP_DEFINITION))}
