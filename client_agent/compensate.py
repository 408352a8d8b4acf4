"""Pre- and post-compensation: the client module's half of NAT traversal
(seed FIG. 8-10, claims 3-14), on cleartext IPv4 packets, before IPsec
protects them and after IPsec has verified and decrypted them.

The NAT can rewrite an IPsec packet's outer addresses but nothing inside it,
so the client does what the NAT cannot:

- outgoing (steps 810-812): the source port becomes the leased global port
  (transport mode), or the encapsulated source IP and port become the global
  ones (tunnel mode); the TCP/UDP checksum gets the differences (global -
  private) of source IP and port added, so it verifies at the destination,
  which sees the global address;
- incoming (steps 824-826): the reverse, with the differences subtracted, so
  the client's own stack accepts the packet.

The differences are constant for a binding (claims 3-5: "the difference
between the global and private values"), so each :class:`Binding` computes
them once, as one one's-complement sum per direction; a packet then costs one
RFC 1624 (equation 3) addition, ``HC' = ~(~HC + D)``, and the port write.
A UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as 0xFFFF
(RFC 768).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from netwire.checksum import difference, ip_bytes
from netwire.ethernet import MalformedPacket
from netwire.ipv4 import UDP_CHECKSUM_OFFSET, dotted
from netwire.view import (
    CHECKSUM_OFFSET,
    DST_OFFSET,
    MF_AND_OFFSET_HIGH,
    PROTOCOL_OFFSET,
    SRC_OFFSET,
    TRANSPORT_CHECKSUM_OFFSET,
    IPv4View,
)

__pure__ = True


class NotCompensable(ValueError):
    """A packet the compensation cannot handle (a fragment, a truncated header)."""


class Direction(NamedTuple):
    """What one direction of a binding writes, worked out once (the binding's constants).

    ``address_at``: where the address that changes sits (source out, destination in);
    ``port_at``: where the port sits, from the transport header (0 out, 2 in);
    ``l4_difference``: addresses and port together, for the TCP/UDP checksum (812 / 826);
    ``ip_difference``: the address alone, for the IPv4 header checksum in tunnel mode (811 / 825).
    """

    address_at: int
    old_ip: bytes
    new_ip: bytes
    port_at: int
    old_port: int | None
    new_port: int | None
    l4_difference: int
    ip_difference: int


@dataclass(frozen=True)
class Binding:
    """A private (IP, port) and the global (IP, port) the NAT leased for it.

    ``port`` None: the protocol has no ports (ICMP), only addresses change.
    """

    private_ip: str
    global_ip: str
    private_port: int | None = None
    global_port: int | None = None

    @cached_property
    def raw(self) -> tuple[bytes, bytes]:
        """(private, global) addresses as 4 bytes, parsed once per binding rather than per packet."""
        return ip_bytes(self.private_ip), ip_bytes(self.global_ip)

    @cached_property
    def out(self) -> Direction:
        """Outgoing: private -> global, at the source address and port."""
        return _direction(self, outgoing=True)

    @cached_property
    def into(self) -> Direction:
        """Incoming: global -> private, at the destination address and port."""
        return _direction(self, outgoing=False)


def _direction(binding: Binding, *, outgoing: bool) -> Direction:
    private, global_ = binding.raw
    old_ip, new_ip = (private, global_) if outgoing else (global_, private)
    if binding.private_port is None or binding.global_port is None:
        old_port = new_port = None
        old_l4, new_l4 = old_ip, new_ip
    else:
        ports = binding.private_port, binding.global_port
        old_port, new_port = ports if outgoing else ports[::-1]
        old_l4, new_l4 = old_ip + old_port.to_bytes(2, "big"), new_ip + new_port.to_bytes(2, "big")
    return Direction(SRC_OFFSET if outgoing else DST_OFFSET, old_ip, new_ip, 0 if outgoing else 2,
                     old_port, new_port, difference(old_l4, new_l4), difference(old_ip, new_ip))


def outgoing(packet: bytes, binding: Binding, *, tunnel: bool) -> bytearray:
    """Pre-compensate a cleartext packet of ``binding``'s private side (steps 809-812)."""
    return compensate(_view(packet), binding.out, tunnel=tunnel)


def incoming(packet: bytes, binding: Binding, *, tunnel: bool) -> bytearray:
    """Post-compensate a decrypted packet addressed to ``binding``'s global side (steps 823-826)."""
    return compensate(_view(packet), binding.into, tunnel=tunnel)


def _view(packet: bytes) -> IPv4View:
    try:
        return IPv4View(packet)
    except MalformedPacket as err:
        raise NotCompensable(str(err)) from None


def compensate(view: IPv4View, way: Direction, *, tunnel: bool) -> bytearray:
    """The packet of ``view`` with ``way``'s port (and in tunnel mode address) written and its checksums updated.

    One copy of the packet (a ``bytearray``, handed on as it is: ESP/AH copy
    it again anyway), one checksum addition per header, no other object made
    per packet: the differences are the binding's (:class:`Direction`).
    """
    packet, header_len, total_len = view.buf, view.header_len, view.total_len
    if packet[6] & MF_AND_OFFSET_HIGH or packet[7]:
        raise NotCompensable("fragments carry no ports to compensate")
    relative = TRANSPORT_CHECKSUM_OFFSET.get(packet[PROTOCOL_OFFSET])
    checksum_at = None if relative is None else header_len + relative
    if checksum_at is not None and total_len < checksum_at + 2:
        raise NotCompensable("transport header truncated")
    buf = bytearray(packet if total_len == len(packet) else packet[:total_len])
    if tunnel:  # 811 / 825: the encapsulated address itself changes, and its header checksum with it
        _rewrite_address(buf, way)
    if checksum_at is None:
        return buf
    if way.old_port is not None:  # 810 / 824
        _rewrite_port(buf, header_len + way.port_at, way)
    checksum = buf[checksum_at] << 8 | buf[checksum_at + 1]
    udp = relative == UDP_CHECKSUM_OFFSET
    if checksum or not udp:  # UDP's 0 is "no checksum" and stays so
        total = (~checksum & 0xFFFF) + way.l4_difference  # 812 / 826: RFC 1624 eq. 3, ~(~HC + D)
        checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
        if udp and not checksum:
            checksum = 0xFFFF
        buf[checksum_at], buf[checksum_at + 1] = checksum >> 8, checksum & 0xFF
    return buf


def _rewrite_port(buf: bytearray, port_at: int, way: Direction) -> None:
    """810 / 824: the port at ``port_at`` must be the binding's old one; it becomes the new one."""
    if buf[port_at] << 8 | buf[port_at + 1] != way.old_port:
        raise NotCompensable(f"{'source' if way.port_at == 0 else 'destination'} port is not {way.old_port}")
    if way.new_port is None:  # _direction sets both ports or neither
        raise NotCompensable(f"a binding direction with old port {way.old_port} has no new port")
    buf[port_at], buf[port_at + 1] = way.new_port >> 8, way.new_port & 0xFF


def _rewrite_address(buf: bytearray, way: Direction) -> None:
    at = way.address_at
    if buf[at:at + 4] != way.old_ip:
        raise NotCompensable(f"{'source' if at == SRC_OFFSET else 'destination'} is not {dotted(way.old_ip)}")
    buf[at:at + 4] = way.new_ip
    total = (~(buf[CHECKSUM_OFFSET] << 8 | buf[CHECKSUM_OFFSET + 1]) & 0xFFFF) + way.ip_difference
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF  # RFC 1624 eq. 3, one fold for two 16-bit addends
    buf[CHECKSUM_OFFSET], buf[CHECKSUM_OFFSET + 1] = checksum >> 8, checksum & 0xFF
