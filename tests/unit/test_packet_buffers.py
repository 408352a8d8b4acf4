"""The per-packet path hands a compensated packet on as the bytearray its rewrite made (seed FIG. 9/10,
client_agent/traversal.py), typed as ``netwire.view.Packet``: whatever reads it must not change it."""

from __future__ import annotations

from netwire.checksum import internet_checksum, ones_complement_sum


def test_summing_an_odd_length_bytearray_leaves_it_as_it_was():
    data = bytearray(b"\x45\x00\x00\x1d\x01")
    assert ones_complement_sum(data) == ones_complement_sum(bytes(data))
    assert internet_checksum(data) == internet_checksum(bytes(data))
    assert data == bytearray(b"\x45\x00\x00\x1d\x01")  # not padded in place
