"""conformance.wirecount: the bench's capture counting, on pcaps built by hand (and hostile ones)."""

from __future__ import annotations

import struct

import pytest

from client_agent.ipsec.udpencap import KEEPALIVE, NATT_PORT, NON_ESP_MARKER
from conformance import marker, wirecount
from netwire.checksum import ip_bytes
from netwire.ipv4 import IPPROTO_ESP, IPPROTO_UDP, build_ipv4_header
from netwire.pcp import SERVER_PORT
from netwire.plan import global_ips, server_ip

HEADER = struct.pack("<IHHiIII", wirecount.MAGIC_US, 2, 4, 0, 0, 128, 1)
ETH = bytes(12) + (0x0800).to_bytes(2, "big")


def _udp(sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return build_ipv4_header(src=global_ips(1)[0], dst=server_ip(1), protocol=IPPROTO_UDP, payload_len=len(udp)) + udp


def _esp(size: int) -> bytes:
    return build_ipv4_header(src=global_ips(1)[0], dst=server_ip(1), protocol=IPPROTO_ESP,
                             payload_len=size - 20) + bytes(size - 20)


def _pcap(*packets: tuple[float, bytes], snap: int = 128) -> bytes:
    out = bytearray(HEADER)
    for t, ip in packets:
        frame = ETH + ip
        kept = frame[:snap]
        out += struct.pack("<IIII", int(t), round((t % 1) * 1e6), len(kept), len(frame)) + kept
    return bytes(out)


def test_counts_original_lengths_protected_packets_keepalives_and_leases():
    pcap = _pcap((1.0, _udp(500, 500, b"\0" * 40)),                          # IKE on 500: not protected
                 (1.5, _udp(NATT_PORT, NATT_PORT, NON_ESP_MARKER + bytes(60))),  # IKE on 4500
                 (2.25, _udp(4501, NATT_PORT, b"\x00\x00\x10\x01" + bytes(1400))),  # ESP in UDP, snapped
                 (3.0, _esp(1436)),
                 (4.0, _udp(4501, NATT_PORT, KEEPALIVE)),
                 (5.0, _udp(40000, SERVER_PORT, bytes(60))))
    seen = wirecount.count(pcap)
    assert seen.frames == 6 and seen.protected == 2 and seen.first_protected == pytest.approx(2.25)
    assert seen.keepalives == 1 and seen.keepalive_ip_bytes == 29 and seen.lease_frames == 1
    assert seen.keepalive_sources == {ip_bytes(global_ips(1)[0]): 1}
    assert seen.ip_bytes == 68 + 92 + 1432 + 1436 + 29 + 88 and seen.frame_bytes == seen.ip_bytes + 6 * 14
    assert wirecount.largest(seen.sizes) in (1432, 1436)


def test_capture_markers_and_arp_are_not_counted():
    arp = bytes(12) + (0x0806).to_bytes(2, "big") + bytes(28)
    pcap = bytearray(_pcap((1.0, _esp(100)), (1.5, marker.datagram("t"))))
    pcap += struct.pack("<IIII", 2, 0, len(arp), len(arp)) + arp
    assert wirecount.count(bytes(pcap)).frames == 1


@pytest.mark.parametrize("pcap", [b"", b"\xd4\xc3\xb2\xa1" + bytes(4), bytes(24), b"\x00" * 100])
def test_hostile_or_foreign_files_are_refused_with_a_reason(pcap):
    with pytest.raises(wirecount.PcapError):
        wirecount.count(pcap)


def test_a_truncated_last_record_and_short_frames_are_left_out():
    pcap = _pcap((1.0, _esp(100)), (2.0, _esp(100)))
    assert wirecount.count(pcap[:-10]).frames == 1
    short = HEADER + struct.pack("<IIII", 1, 0, 20, 1500) + ETH + bytes(6)
    assert wirecount.count(short).frames == 0
    assert wirecount.largest({}) == 0


def test_a_time_window_counts_only_its_frames():
    pcap = _pcap((1.0, _esp(100)), (2.0, _esp(200)), (3.0, _esp(300)))
    assert wirecount.count(pcap, 1.5, 2.5).ip_bytes == 200
