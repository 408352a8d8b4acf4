"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

The client module (claims 3-5, 9-11) and the NAT's slow path both change
addresses and ports inside packets whose checksums must stay valid; RFC 1624's
equation 3, ``HC' = ~(~HC + ~m + m')``, does that without touching the payload.
"""

from __future__ import annotations

import functools


def ones_complement_sum(data: bytes | bytearray, initial: int = 0) -> int:
    """16-bit one's-complement sum of ``data`` (odd length padded with a zero byte).

    ``initial`` and the result are big-endian 16-bit values.
    """
    if len(data) % 2:
        data = data + b"\x00"  # a new object: ``+=`` would pad a caller's bytearray in place
    total = _to_native(initial) + (sum(memoryview(data).cast("H")) if data else 0)
    # cast("H") reads native byte order; the folded sum is byte-order independent
    # (RFC 1071 section 2(B)) but must be swapped back on little-endian hosts.
    total = _fold(total)
    return int.from_bytes(total.to_bytes(2, "little"), "big") if _LITTLE else total


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 checksum: the one's complement of the one's-complement sum.

    ``initial`` is a big-endian partial sum (e.g. a pseudo-header sum).
    """
    return ~ones_complement_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """One's-complement sum of the IPv4 pseudo-header (RFC 793 section 3.1, RFC 768)."""
    return ones_complement_sum(src + dst + bytes((0, protocol)) + length.to_bytes(2, "big"))


def update16(checksum: int, old: int, new: int) -> int:
    """RFC 1624 equation 3 for one 16-bit word changing from ``old`` to ``new``."""
    total = (~checksum & 0xFFFF) + (~old & 0xFFFF) + new
    return ~_fold(total) & 0xFFFF


def update_bytes(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 update for an even-length field (an address, a port) that changed."""
    if len(old) != len(new) or len(old) % 2:
        raise ValueError("fields must have the same even length")
    for i in range(0, len(old), 2):
        checksum = update16(checksum, int.from_bytes(old[i : i + 2], "big"), int.from_bytes(new[i : i + 2], "big"))
    return checksum


def difference(old: bytes, new: bytes) -> int:
    """One's-complement difference ``new - old`` of two equal-length fields.

    Adding this to a checksum's sum (claims 3-5: "the difference between the
    global and private values") is what RFC 1624 does one word at a time.
    """
    return _fold(ones_complement_sum(new) + (~ones_complement_sum(old) & 0xFFFF))


def apply_difference(checksum: int, diff: int) -> int:
    """Add a one's-complement ``difference`` to the sum a checksum covers."""
    return ~_fold((~checksum & 0xFFFF) + diff) & 0xFFFF


def ip_bytes(address: str | bytes) -> bytes:
    """Four bytes of a dotted-quad IPv4 address (bytes pass through).

    Per packet on the controller's paths, so parsed by hand (``ipaddress`` is
    the slowest part of a lease round trip otherwise) and remembered: the
    same few addresses recur in every packet and flow (bounded, so a flood
    of addresses costs a fixed amount of memory).
    """
    if isinstance(address, bytes):
        return address
    return _dotted_bytes(address)


@functools.lru_cache(maxsize=4096)
def _dotted_bytes(address: str) -> bytes:
    parts = address.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):
        raw = bytes(int(p) for p in parts if int(p) <= 255)
        if len(raw) == 4:
            return raw
    raise ValueError(f"{address!r} is not a dotted-quad IPv4 address")


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


_LITTLE = memoryview(b"\x01\x00").cast("H")[0] == 1


def _to_native(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, "big"), "little") if _LITTLE else value
