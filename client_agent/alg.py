"""Client-side ALGs: what the NAT would do to payloads, done by the client because ESP/AH hide them.

A NAT rewrites the addresses that applications write into their payloads
(FTP's PORT, SIP's Contact) with an application-level gateway. Inside ESP the
NAT cannot read the payload and inside AH it must not change it, so the seed
moves these ALGs into the client (claims 1-2, 7, 13; FIG. 9 step 813 and
FIG. 10 step 822): they run on the cleartext packet, after pre-compensation and
before authentication/encryption outbound, and after verification/decryption
and before post-compensation inbound. Either way an ALG sees the packet as the
far end does: our side is the global (IP, port).

An ALG is found by transport protocol and the far end's (service) port: the
destination port of an outgoing packet, the source port of an incoming one.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Protocol

from client_agent.compensate import Binding, NotCompensable
from netwire.checksum import internet_checksum, ip_bytes, pseudo_header_sum
from netwire.ethernet import MalformedPacket
from netwire.ipv4 import IPPROTO_UDP
from netwire.view import IPv4View, Packet

__pure__ = True

TEST_ALG_PORT = 7007  # the service port of :class:`AddressTextAlg` in tests and the conformance suite


class ClientAlg(Protocol):
    """One ALG. Both methods take and return a whole IPv4 packet; raise NotCompensable to drop it."""

    name: str

    def outgoing(self, packet: Packet, binding: Binding) -> Packet: ...

    def incoming(self, packet: Packet, binding: Binding) -> Packet: ...


class AlgRegistry:
    """ALGs by (protocol, service port); counts what each one saw."""

    def __init__(self) -> None:
        self._algs: dict[tuple[int, int], ClientAlg] = {}
        self.counters: Counter[str] = Counter()
        self.active = False  # any ALG registered: read per packet, so an attribute rather than __bool__

    def register(self, protocol: int, port: int, alg: ClientAlg) -> None:
        key = (protocol, port)
        if key in self._algs:
            raise ValueError(f"protocol {protocol} port {port}: ALG {self._algs[key].name!r} is registered already")
        self._algs[key] = alg
        self.active = True

    def __bool__(self) -> bool:
        return bool(self._algs)

    def lookup(self, protocol: int, port: int) -> ClientAlg | None:
        return self._algs.get((protocol, port))

    def outgoing(self, packet: Packet, protocol: int, service_port: int, binding: Binding) -> Packet:
        """Step 813: the ALG of the destination port, if any, on an outgoing packet."""
        alg = self._algs.get((protocol, service_port))
        if alg is None:
            return packet
        self.counters[f"{alg.name}:out"] += 1
        return alg.outgoing(packet, binding)

    def incoming(self, packet: Packet, protocol: int, service_port: int, binding: Binding) -> Packet:
        """Step 822: the ALG of the source port, if any, on an incoming packet."""
        alg = self._algs.get((protocol, service_port))
        if alg is None:
            return packet
        self.counters[f"{alg.name}:in"] += 1
        return alg.incoming(packet, binding)


class AddressTextAlg:
    """The test ALG: UDP payloads that carry our address as text ``IP:PORT`` get it rewritten.

    Outgoing, the private ``10.0.0.1:40000`` becomes the global
    ``203.0.113.1:20001``; incoming, the reverse. This is the shape of every
    address-carrying protocol (FTP, SIP) without their parsers, so the
    conformance suite can show on the far end's socket that the client ran
    the ALG (OUT-ALG) and on the client's socket that it ran it again on the
    way back (IN-ALG). The text may change length: the UDP and IP lengths and
    both checksums are recomputed (RFC 768, RFC 791), the UDP checksum over
    the pseudo-header the far end sees, whose our-side address is global.
    """

    name = "address-text"

    def outgoing(self, packet: Packet, binding: Binding) -> Packet:
        return _replace_text(packet, _text(binding.private_ip, binding.private_port),
                             _text(binding.global_ip, binding.global_port), binding, outgoing=True)

    def incoming(self, packet: Packet, binding: Binding) -> Packet:
        return _replace_text(packet, _text(binding.global_ip, binding.global_port),
                             _text(binding.private_ip, binding.private_port), binding, outgoing=False)


def _text(ip: str, port: int | None) -> bytes:
    return f"{ip}:{port}".encode()


def _replace_text(packet: Packet, old: bytes, new: bytes, binding: Binding, *, outgoing: bool) -> Packet:
    try:
        view = IPv4View(packet)
    except MalformedPacket as err:
        raise NotCompensable(str(err)) from None
    ihl = view.header_len
    if view.protocol != IPPROTO_UDP or view.is_fragment or view.total_len < ihl + 8:
        return packet
    payload = packet[ihl + 8:view.total_len]
    if old not in payload:
        return packet
    # the whole address only: not 10.0.0.1:40001 for 10.0.0.1:4000, nor 110.0.0.1:4000
    payload, count = re.subn(rb"(?<![\d.])" + re.escape(old) + rb"(?!\d)", new.replace(b"\\", b"\\\\"), payload)
    if not count:
        return packet
    udp_len = 8 + len(payload)
    if ihl + udp_len > 0xFFFF:
        raise NotCompensable("the rewritten datagram would exceed 65535 octets")
    src, dst = view.src, view.dst
    ours = ip_bytes(binding.global_ip)
    pseudo_src, pseudo_dst = (ours, dst) if outgoing else (src, ours)
    header = bytearray(packet[:ihl])
    header[2:4] = (ihl + udp_len).to_bytes(2, "big")
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    udp = bytearray(packet[ihl:ihl + 8])
    udp[4:6] = udp_len.to_bytes(2, "big")
    had_checksum = udp[6:8] != b"\x00\x00"
    udp[6:8] = b"\x00\x00"
    if had_checksum:  # RFC 768: zero means "no checksum"; a computed zero is sent as all ones
        checksum = internet_checksum(bytes(udp) + payload, pseudo_header_sum(pseudo_src, pseudo_dst, IPPROTO_UDP,
                                                                             udp_len)) or 0xFFFF
        udp[6:8] = checksum.to_bytes(2, "big")
    return bytes(header) + bytes(udp) + payload
