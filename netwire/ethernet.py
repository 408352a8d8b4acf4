"""Ethernet II framing and ARP (RFC 826), as much as a router needs."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netwire.checksum import ip_bytes

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_HEADER_LEN = 14
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"

ARP_HTYPE_ETHERNET = 1
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
_ARP = struct.Struct("!HHBBH6s4s6s4s")


class MalformedPacket(ValueError):
    """Raised for bytes that do not parse as the wire format claimed."""


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(raw: bytes) -> str:
    return raw.hex(":")  # per packet-in, twice: bytes.hex's separator, not a generator (issue 16)


@dataclass(frozen=True)
class EthernetHeader:
    dst: str
    src: str
    ethertype: int

    @classmethod
    def parse(cls, frame: bytes) -> EthernetHeader:
        if len(frame) < ETH_HEADER_LEN:
            raise MalformedPacket("Ethernet frame shorter than 14 bytes")
        return cls(mac_str(frame[0:6]), mac_str(frame[6:12]), int.from_bytes(frame[12:14], "big"))

    def build(self) -> bytes:
        return mac_bytes(self.dst) + mac_bytes(self.src) + self.ethertype.to_bytes(2, "big")


@dataclass(frozen=True)
class Arp:
    """An Ethernet/IPv4 ARP packet (RFC 826)."""

    op: int
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str

    @classmethod
    def parse(cls, payload: bytes) -> Arp:
        if len(payload) < _ARP.size:
            raise MalformedPacket("ARP packet shorter than 28 bytes")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(payload)
        if (htype, ptype, hlen, plen) != (ARP_HTYPE_ETHERNET, ETH_TYPE_IPV4, 6, 4):
            raise MalformedPacket("ARP not for Ethernet/IPv4")
        return cls(op, mac_str(sha), _ip(spa), mac_str(tha), _ip(tpa))

    def build(self) -> bytes:
        return _ARP.pack(
            ARP_HTYPE_ETHERNET, ETH_TYPE_IPV4, 6, 4, self.op,
            mac_bytes(self.sender_mac), ip_bytes(self.sender_ip),
            mac_bytes(self.target_mac), ip_bytes(self.target_ip),
        )


def arp_frame(arp: Arp, eth_dst: str) -> bytes:
    """A whole Ethernet frame carrying ``arp``."""
    return EthernetHeader(eth_dst, arp.sender_mac, ETH_TYPE_ARP).build() + arp.build()


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)
