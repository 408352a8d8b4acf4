"""Receive coalescing: super-segments whose checksum the kernel can verify, and nothing merged that GRO would not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from client_agent.coalesce import GSO_TCPV4, PLAIN, VNET_HDR, VNET_HDR_LEN, frames

MSS = 1448


def segment(seq: int, size: int = MSS, *, flags: str = "A", sport: int = 5201, ts: int = 1000, df: bool = True,
            ack: int = 7) -> bytes:
    payload = bytes((seq + i) & 0xFF for i in range(size))
    return bytes(IP(src="10.0.0.1", dst="203.0.113.100", flags="DF" if df else 0, id=seq & 0xFFFF)
                 / TCP(sport=sport, dport=40000, seq=seq, ack=ack, flags=flags,
                       options=[("NOP", None), ("NOP", None), ("Timestamp", (ts, 2000))]) / payload)


def burst(n: int, size: int = MSS, start: int = 1) -> list[bytes]:
    return [segment(start + i * size, size) for i in range(n)]


def checksums_ok(packet: bytes) -> bool:
    """scapy recomputes both checksums of ``packet`` and compares."""
    pkt = IP(packet)
    probe = pkt.copy()
    del probe.chksum, probe[TCP].chksum
    again = IP(bytes(probe))
    return again.chksum == pkt.chksum and again[TCP].chksum == pkt[TCP].chksum


def test_a_burst_becomes_one_super_segment_the_kernel_can_verify():
    packets = burst(10)
    [(frame, count)] = list(frames(packets))
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    inner = frame[VNET_HDR_LEN:]
    assert count == 10 and (flags, gso_type, hdr_len, gso_size) == (0, GSO_TCPV4, 20 + 32, MSS)
    assert (csum_start, csum_offset) == (20, 16)
    assert checksums_ok(inner) and len(inner) == 20 + 32 + 10 * MSS
    assert IP(inner)[TCP].load == b"".join(IP(p)[TCP].load for p in packets)
    assert IP(inner)[TCP].seq == 1


def test_a_bad_segment_checksum_makes_the_super_segment_bad_never_good():
    packets = burst(4)
    bad = bytearray(packets[2])
    bad[-1] ^= 0x01  # a payload bit flipped: its checksum no longer matches
    [(frame, _)] = list(frames([*packets[:2], bytes(bad), packets[3]]))
    assert not checksums_ok(frame[VNET_HDR_LEN:])


@pytest.mark.parametrize("odd", [
    lambda: segment(1 + MSS, sport=5202),  # another connection
    lambda: segment(1 + 2 * MSS),  # a gap in the sequence
    lambda: segment(1 + MSS, flags="FA"),  # FIN
    lambda: segment(1 + MSS, ts=1001),  # options differ (another timestamp)
    lambda: segment(1 + MSS, ack=8),  # another acknowledgment
    lambda: segment(1 + MSS, df=False),  # DF clear: IDs would have to increase
])
def test_segments_gro_would_not_merge_are_written_as_they_came(odd):
    first, other = segment(1), odd()
    assert list(frames([first, other])) == [(PLAIN + first, 1), (PLAIN + other, 1)]


def test_psh_or_a_short_segment_ends_a_run_and_order_is_kept():
    packets = [segment(1), segment(1 + MSS, 100), segment(1 + MSS + 100), segment(1 + 2 * MSS + 100, flags="PA"),
               segment(1 + 3 * MSS + 100)]
    out = list(frames(packets))
    assert [count for _, count in out] == [2, 2, 1]
    assert all(checksums_ok(frame[VNET_HDR_LEN:]) for frame, _ in out)
    assert b"".join(IP(f[VNET_HDR_LEN:])[TCP].load for f, _ in out) == b"".join(IP(p)[TCP].load for p in packets)


def test_a_super_segment_never_exceeds_an_ipv4_total_length():
    out = list(frames(burst(60)))
    assert sum(n for _, n in out) == 60 and all(len(f) - VNET_HDR_LEN <= 0xFFFF for f, _ in out)
    assert [n for _, n in out][0] == (0xFFFF - 52) // MSS


def test_odd_segment_sizes_are_not_merged():
    packets = burst(3, size=1001)
    assert [n for _, n in frames(packets)] == [1, 1, 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["A", "PA", "SA", "FA"])), max_size=12),
       st.binary(max_size=60))
def test_whatever_arrives_every_packet_and_byte_is_written_once_in_order(plan, junk):
    packets, seq = [junk] if junk else [], 1
    for skip, flags in plan:
        size = MSS if skip else 200
        packets.append(segment(seq, size, flags=flags))
        seq += size * (1 + (skip == 4))
    out = list(frames(packets))
    assert sum(n for _, n in out) == len(packets)
    loads = [IP(p)[TCP].load for p in packets if p is not junk]
    merged = [IP(f[VNET_HDR_LEN:])[TCP].load for f, _ in out if f[VNET_HDR_LEN:] != junk]
    assert b"".join(merged) == b"".join(loads)
    assert all(checksums_ok(f[VNET_HDR_LEN:]) for f, n in out if n > 1)
