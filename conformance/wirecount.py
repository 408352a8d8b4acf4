"""Counting a capture's frames for ``natlab bench compare``: bytes on the wire, protected packets, keepalives.

Pure: pcap bytes in (libpcap format, Ethernet link type, any snap length: a record keeps the frame's
original length), counts out. The comparison measures the cost of each way through a NAT from what
crossed the link, never from a formula: the bytes of every frame (ESP's header, IV, padding and
ICV; NAT-T's 8-byte UDP header, RFC 3948 section 2.1; the ACKs coming back), the first protected
packet's time, NAT-keepalives (RFC 3948 section 2.3) and lease-protocol frames (PCP, RFC 6887).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from client_agent.ipsec.udpencap import KEEPALIVE, NATT_PORT, NON_ESP_MARKER
from conformance.marker import PREFIX as MARKER_PREFIX
from netwire.ipv4 import IPPROTO_ESP, IPPROTO_UDP
from netwire.pcp import SERVER_PORT

__pure__ = True

ETHERNET_HEADER = 14
IPV4_ETHERTYPE = 0x0800
_GLOBAL = struct.Struct("<IHHiIII")  # magic, version, thiszone, sigfigs, snaplen, linktype
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len
MAGIC_US, MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D


class PcapError(ValueError):
    """Not a little-endian libpcap file (tcpdump on these machines writes only that), or truncated."""


@dataclass(frozen=True)
class Frame:
    time: float
    length: int  # the frame's original length on the link (Ethernet header included)
    data: bytes  # its first snaplen bytes


def frames(pcap: bytes) -> Iterator[Frame]:
    """Every record of ``pcap``; a truncated last record (a capture stopped mid-write) is left out."""
    if len(pcap) < _GLOBAL.size:
        raise PcapError(f"{len(pcap)} bytes: shorter than a pcap header")
    magic = _GLOBAL.unpack_from(pcap)[0]
    if magic not in (MAGIC_US, MAGIC_NS):
        raise PcapError(f"magic {magic:#x}: not a little-endian libpcap file")
    scale = 1e-6 if magic == MAGIC_US else 1e-9
    offset = _GLOBAL.size
    while offset + _RECORD.size <= len(pcap):
        sec, frac, incl, orig = _RECORD.unpack_from(pcap, offset)
        start = offset + _RECORD.size
        if start + incl > len(pcap):
            return
        yield Frame(sec + frac * scale, orig, pcap[start:start + incl])
        offset = start + incl


@dataclass(frozen=True)
class Ipv4:
    src: bytes
    dst: bytes
    proto: int
    total_length: int
    sport: int | None
    dport: int | None
    udp_payload: bytes  # what the snap length kept of a UDP payload


def ipv4(frame: Frame) -> Ipv4 | None:
    """The IPv4 header fields of an Ethernet frame (None for ARP, a capture marker, or a truncated header)."""
    data = frame.data
    if len(data) < ETHERNET_HEADER + 20 or int.from_bytes(data[12:14], "big") != IPV4_ETHERTYPE:
        return None
    ip = data[ETHERNET_HEADER:]
    if MARKER_PREFIX in ip:
        return None
    ihl = (ip[0] & 0x0F) * 4
    proto, ports = ip[9], ip[ihl:ihl + 4]
    sport = dport = None
    if proto != IPPROTO_ESP and len(ports) == 4:
        sport, dport = int.from_bytes(ports[:2], "big"), int.from_bytes(ports[2:], "big")
    payload = ip[ihl + 8:] if proto == IPPROTO_UDP else b""
    return Ipv4(ip[12:16], ip[16:20], proto, int.from_bytes(ip[2:4], "big"), sport, dport, payload)


def is_natt(p: Ipv4) -> bool:
    return p.proto == IPPROTO_UDP and NATT_PORT in (p.sport, p.dport)


def is_protected(p: Ipv4) -> bool:
    """ESP, raw (IP protocol 50) or in UDP/4500 (neither IKE, marked by four zero bytes, nor a keepalive)."""
    if p.proto == IPPROTO_ESP:
        return True
    body = p.udp_payload
    return is_natt(p) and len(body) >= len(NON_ESP_MARKER) and not body.startswith(NON_ESP_MARKER)


def is_keepalive(p: Ipv4) -> bool:
    return is_natt(p) and p.total_length == 20 + 8 + len(KEEPALIVE) and p.udp_payload[:1] == KEEPALIVE


def is_lease(p: Ipv4) -> bool:
    """A lease-protocol frame (PCP to or from the gateway's port 5351)."""
    return p.proto == IPPROTO_UDP and SERVER_PORT in (p.sport, p.dport)


@dataclass
class WireCount:
    """What :func:`count` found: frames and bytes (Ethernet and IP), protected packets, keepalives, leases."""

    frames: int = 0
    frame_bytes: int = 0
    ip_bytes: int = 0
    protected: int = 0
    first_protected: float | None = None  # capture time of the first protected packet
    keepalives: int = 0
    keepalive_ip_bytes: int = 0
    keepalive_sources: dict[bytes, int] = field(default_factory=dict)  # who sent them (the peer behind the NAT?)
    lease_frames: int = 0
    lease_ip_bytes: int = 0
    sizes: dict[int, int] = field(default_factory=dict)  # IP length -> frames

    def add(self, frame: Frame, p: Ipv4) -> None:
        self.frames += 1
        self.frame_bytes += frame.length
        self.ip_bytes += frame.length - ETHERNET_HEADER
        self.sizes[p.total_length] = self.sizes.get(p.total_length, 0) + 1
        if is_protected(p):
            self.protected += 1
            self.first_protected = frame.time if self.first_protected is None else self.first_protected
        if is_keepalive(p):
            self.keepalives += 1
            self.keepalive_ip_bytes += p.total_length
            self.keepalive_sources[p.src] = self.keepalive_sources.get(p.src, 0) + 1
        if is_lease(p):
            self.lease_frames += 1
            self.lease_ip_bytes += p.total_length


def count(pcap: bytes, start: float = 0.0, end: float = float("inf")) -> WireCount:
    """Count every IPv4 frame of ``pcap`` captured in [start, end] (capture markers and ARP left out)."""
    seen = WireCount()
    for frame in frames(pcap):
        p = ipv4(frame)
        if p is not None and start <= frame.time <= end:
            seen.add(frame, p)
    return seen


def largest(sizes: dict[int, int]) -> int:
    """The most common of the larger half of the IP lengths: a bulk transfer's full-size data packet."""
    if not sizes:
        return 0
    cut = max(sizes) // 2
    big = {n: k for n, k in sizes.items() if n >= cut}
    return max(big, key=lambda n: (big[n], n))
