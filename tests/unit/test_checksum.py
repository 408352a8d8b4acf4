"""RFC 1071 / RFC 1624 checksums, against the RFCs' examples and full recomputation."""

from hypothesis import given
from hypothesis import strategies as st

from netwire.checksum import (
    apply_difference,
    difference,
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
    update16,
    update_bytes,
)


def test_rfc1071_section_3_numerical_example():
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
    assert ones_complement_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_rfc1624_section_4_example():
    # RFC 1624 section 4: HC = 0xdd2f, a word changes 0x5555 -> 0x3285: HC' = 0x0000.
    assert update16(0xDD2F, 0x5555, 0x3285) == 0x0000


def test_odd_length_is_padded_with_zero():
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00")


def test_udp_pseudo_header_checksum_matches_scapy():
    from scapy.layers.inet import IP, UDP

    pkt = IP(bytes(IP(src="10.0.0.1", dst="203.0.113.100") / UDP(sport=1234, dport=53) / b"hello"))
    segment = bytearray(bytes(pkt[UDP]))
    expected = int.from_bytes(segment[6:8], "big")
    segment[6:8] = b"\x00\x00"
    init = pseudo_header_sum(bytes([10, 0, 0, 1]), bytes([203, 0, 113, 100]), 17, len(segment))
    assert internet_checksum(bytes(segment), init) == expected


def same_sum(a: int, b: int) -> bool:
    """Equal, or both one's-complement zero (0x0000 and 0xffff verify alike, RFC 1624 section 3)."""
    return a == b or {a, b} == {0x0000, 0xFFFF}


even_bytes = st.binary(max_size=64).map(lambda b: b[: len(b) // 2 * 2])
field = st.binary(min_size=4, max_size=4)


@given(even_bytes, field, field)
def test_incremental_update_equals_full_recomputation(payload, old, new):
    before = internet_checksum(payload + old)
    full = internet_checksum(payload + new)
    assert same_sum(update_bytes(before, old, new), full)
    assert same_sum(apply_difference(before, difference(old, new)), full)
