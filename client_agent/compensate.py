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

Checksums are updated incrementally (RFC 1624 equation 3). A UDP checksum of
0 means "none" and stays 0; a computed 0 is sent as 0xFFFF (RFC 768).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from netwire.checksum import ip_bytes, update16, update_bytes
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP, TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET

__pure__ = True

_CHECKSUM_AT = {IPPROTO_TCP: TCP_CHECKSUM_OFFSET, IPPROTO_UDP: UDP_CHECKSUM_OFFSET}
_SRC, _DST = 12, 16  # address offsets in the IPv4 header


class NotCompensable(ValueError):
    """A packet the compensation cannot handle (a fragment, a truncated header)."""


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


def outgoing(packet: bytes, binding: Binding, *, tunnel: bool) -> bytes:
    """Pre-compensate a cleartext packet of ``binding``'s private side (steps 809-812)."""
    return _compensate(packet, binding, outgoing=True, tunnel=tunnel)


def incoming(packet: bytes, binding: Binding, *, tunnel: bool) -> bytes:
    """Post-compensate a decrypted packet addressed to ``binding``'s global side (steps 823-826)."""
    return _compensate(packet, binding, outgoing=False, tunnel=tunnel)


def _compensate(packet: bytes, binding: Binding, *, outgoing: bool, tunnel: bool) -> bytes:  # noqa: C901
    # (one pass over the bytes, the per-packet path; issue 16 rewrites it on netwire's packet views)
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise NotCompensable("not an IPv4 packet")
    ihl = (packet[0] & 0x0F) * 4
    if packet[6] & 0x3F or packet[7]:
        raise NotCompensable("fragments carry no ports to compensate")
    protocol = packet[9]
    private, global_ = binding.raw
    old_ip, new_ip = (private, global_) if outgoing else (global_, private)
    port_at = ihl + (0 if outgoing else 2)  # source port out, destination port in
    buf = bytearray(packet)
    if tunnel:  # 811 / 825: the encapsulated address itself changes, and its header checksum with it
        at = _SRC if outgoing else _DST
        if buf[at:at + 4] != old_ip:
            raise NotCompensable(f"{'source' if outgoing else 'destination'} is not {_dotted(old_ip)}")
        buf[at:at + 4] = new_ip
        buf[10:12] = update_bytes(int.from_bytes(buf[10:12], "big"), old_ip, new_ip).to_bytes(2, "big")
    if protocol not in _CHECKSUM_AT:
        return bytes(buf)
    checksum_at = ihl + _CHECKSUM_AT[protocol]
    if len(buf) < checksum_at + 2:
        raise NotCompensable("transport header truncated")
    checksum = int.from_bytes(buf[checksum_at:checksum_at + 2], "big")
    if protocol == IPPROTO_UDP and checksum == 0:
        udp_without_checksum = True
    else:
        udp_without_checksum = False
        # 812 / 826: the pseudo-header's address as the far end (out) or our stack (in) will see it.
        checksum = update_bytes(checksum, old_ip, new_ip)
    if binding.private_port is not None and binding.global_port is not None:
        old_port, new_port = ((binding.private_port, binding.global_port) if outgoing
                              else (binding.global_port, binding.private_port))
        if int.from_bytes(buf[port_at:port_at + 2], "big") != old_port:
            raise NotCompensable(f"{'source' if outgoing else 'destination'} port is not {old_port}")
        buf[port_at:port_at + 2] = new_port.to_bytes(2, "big")  # 810 / 824
        if not udp_without_checksum:
            checksum = update16(checksum, old_port, new_port)
    if not udp_without_checksum:
        if protocol == IPPROTO_UDP and checksum == 0:
            checksum = 0xFFFF
        buf[checksum_at:checksum_at + 2] = checksum.to_bytes(2, "big")
    return bytes(buf)


def _dotted(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)
