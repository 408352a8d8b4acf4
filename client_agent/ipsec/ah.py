"""AH, the Authentication Header (RFC 4302), for IPv4 in transport and tunnel mode.

Header layout (section 2)::

    next header | payload length | reserved | SPI | sequence number | ICV (+ padding to 32 bits)

The ICV covers the IP header with its mutable fields zeroed, the AH header with
a zero ICV field, and the payload (section 3.3.3). The addresses that go into
the ICV can be overridden: a client behind the extensible NAT computes an
outgoing ICV as if its source were the NAT's global address, and verifies an
incoming one as if the destination were (claims 8 and 14 of the seed).
"""

from __future__ import annotations

import hmac
import struct

from client_agent.ipsec import ipheader
from client_agent.ipsec.crypto import Hmac
from client_agent.ipsec.errors import BadICV, Fragment, Malformed, NoSA
from client_agent.ipsec.sa import SAState
from netwire.checksum import ip_bytes
from netwire.ipv4 import IPPROTO_AH, IPV4_MIN_HEADER_LEN
from netwire.view import Packet

NEXT_HEADER_IPV4 = 4

_FIXED = struct.Struct("!BBHII")  # next header, payload length, reserved, SPI, sequence number
_ZEROS = bytes(64)

# RFC 4302 Appendix A.1: the IPv4 options included in the ICV; every other option is zeroed whole.
IMMUTABLE_OPTIONS = frozenset({
    0,  # End of Options List
    1,  # No Operation
    130,  # Security
    133,  # Extended Security
    134,  # Commercial Security
    148,  # Router Alert
    149,  # Sender Directed Multi-Destination Delivery
})

Address = str | bytes | None


def encapsulate(packet: Packet, state: SAState, *, icv_src: Address = None, icv_dst: Address = None) -> bytes:
    """Authenticate the IPv4 ``packet`` with the outbound SA ``state`` (section 3.3).

    ``icv_src``/``icv_dst`` are the addresses the ICV is computed over, when
    they differ from the ones the packet is sent with (default: the packet's own).
    """
    header_len, total_len = ipheader.lengths(packet)
    field_len = icv_field_length(state)
    ah_len = _FIXED.size + field_len
    if state.tunnel:
        seq = state.next_seq()
        payload, next_header = packet[:total_len], NEXT_HEADER_IPV4
        header = ipheader.tunnel_header(*state.endpoints(), IPPROTO_AH, ah_len + total_len, packet, seq)
    elif ipheader.is_fragment(packet):
        raise Fragment("transport mode protects whole datagrams only (section 3.1.1)")
    else:
        seq = state.next_seq()
        payload, next_header = packet[header_len:total_len], packet[ipheader.PROTOCOL_OFFSET]
        header = ipheader.rewrite(packet[:header_len], IPPROTO_AH, total_len + ah_len)
    fixed = _FIXED.pack(next_header, ah_len // 4 - 2, 0, state.sa.spi, seq)
    icv = _icv(_mac(state), header, fixed, field_len, payload, _address(icv_src), _address(icv_dst))
    state.count(total_len)
    return b"".join((header, fixed, icv, _ZEROS[: field_len - len(icv)], payload))


def decapsulate(packet: bytes, state: SAState, *, icv_src: Address = None, icv_dst: Address = None) -> bytes:
    """Verify the received AH ``packet`` with the inbound SA ``state`` and strip AH (section 3.4).

    ``icv_src``/``icv_dst`` are the addresses the sender computed the ICV over,
    when they differ from the ones the packet arrived with (default: its own).
    Returns the transport-mode packet with its protocol restored, or the
    tunnelled inner packet.
    """
    header_len, total_len = ipheader.lengths(packet)
    if packet[ipheader.PROTOCOL_OFFSET] != IPPROTO_AH:
        raise Malformed(f"IP protocol {packet[ipheader.PROTOCOL_OFFSET]} is not AH")
    if ipheader.is_fragment(packet):
        raise Fragment("AH fragments must be reassembled first (section 3.4.1)")
    view = memoryview(packet)
    next_header, seq, ah_len = _parse(view, header_len, total_len, state)
    state.window.check(seq)
    icv_start = header_len + _FIXED.size
    payload = view[header_len + ah_len : total_len]
    computed = _icv(
        _mac(state), view[:header_len], view[header_len:icv_start], ah_len - _FIXED.size, payload,
        _address(icv_src), _address(icv_dst),
    )
    if state.verify_icv and not hmac.compare_digest(computed, view[icv_start : icv_start + len(computed)]):
        raise BadICV(f"AH ICV mismatch, SPI 0x{state.sa.spi:08x} sequence {seq}")
    state.window.accept(seq)
    if state.tunnel:
        if next_header != NEXT_HEADER_IPV4:
            raise Malformed(f"tunnel-mode SA carried next header {next_header}, not IPv4")
        inner = ipheader.check_whole(bytes(payload))
    else:
        inner = ipheader.rewrite(view[:header_len], next_header, total_len - ah_len) + payload
    state.count(len(inner))
    return inner


def compute_icv(packet: bytes, state: SAState, *, src: Address = None, dst: Address = None) -> bytes:
    """The ICV of the AH ``packet`` under ``state``'s key, as if it carried ``src``/``dst`` (section 3.3.3).

    The ICV field of ``packet`` is ignored (treated as zero).
    """
    header_len, total_len = ipheader.lengths(packet)
    view = memoryview(packet)
    _, _, ah_len = _parse(view, header_len, total_len, state)
    icv_start = header_len + _FIXED.size
    return _icv(
        _mac(state), view[:header_len], view[header_len:icv_start], ah_len - _FIXED.size,
        view[header_len + ah_len : total_len], _address(src), _address(dst),
    )


def icv_field_length(state: SAState) -> int:
    """The ICV plus its padding to a multiple of 32 bits for IPv4 (section 3.3.3.2.1)."""
    return -(-_mac(state).icv_len // 4) * 4


def _mac(state: SAState) -> Hmac:
    """An AH SA's integrity algorithm (SecurityAssociation refuses an AH SA without one)."""
    if state.mac is None:
        raise NoSA(f"AH SA 0x{state.sa.spi:08x} has no integrity algorithm")
    return state.mac


def immutable_header(header: bytes | memoryview, src: bytes | None = None, dst: bytes | None = None) -> bytearray:
    """The IPv4 header as the ICV sees it (section 3.3.3.1.1).

    Zeroed: DSCP/ECN, flags, fragment offset, TTL, header checksum, and every
    option not listed as immutable in Appendix A.1. ``src``/``dst`` replace the
    addresses (with loose or strict source routing the caller passes the final
    destination this way, section 3.3.3.1.1.1).
    """
    view = bytearray(header)
    view[1] = 0
    view[6:9] = b"\x00\x00\x00"
    view[10:12] = b"\x00\x00"
    if src is not None:
        view[12:16] = src
    if dst is not None:
        view[16:20] = dst
    if len(view) > IPV4_MIN_HEADER_LEN:
        _zero_mutable_options(view)
    return view


def _icv(
    mac: Hmac, header: bytes | memoryview, fixed: bytes | memoryview, field_len: int,
    payload: bytes | bytearray | memoryview, src: bytes | None, dst: bytes | None,
) -> bytes:
    return mac.icv(immutable_header(header, src, dst), fixed, _ZEROS[:field_len], payload)


def _parse(view: memoryview, header_len: int, total_len: int, state: SAState) -> tuple[int, int, int]:
    """``(next_header, seq, ah_len)`` of the AH header after the IP header, checked against the SA."""
    if total_len - header_len < _FIXED.size:
        raise Malformed("packet too short for an AH header")
    next_header, payload_len, _reserved, spi, seq = _FIXED.unpack_from(view, header_len)
    ah_len = (payload_len + 2) * 4
    if spi != state.sa.spi:
        raise NoSA(f"SPI 0x{spi:08x} does not belong to SA 0x{state.sa.spi:08x}")
    if ah_len != _FIXED.size + icv_field_length(state) or header_len + ah_len > total_len:
        raise Malformed(f"AH length {ah_len} does not fit {state.sa.integrity} or the packet")
    return next_header, seq, ah_len


def _zero_mutable_options(header: bytearray) -> None:
    """Zero the mutable IPv4 options in place (section 3.3.3.1.1.2, Appendix A.1)."""
    i = IPV4_MIN_HEADER_LEN
    while i < len(header):
        kind = header[i]
        if kind == 0:  # End of Options List: what follows is padding
            return
        if kind == 1:  # No Operation
            i += 1
            continue
        length = header[i + 1] if i + 1 < len(header) else 0
        if length < 2 or i + length > len(header):
            raise Malformed(f"IPv4 option {kind} has a bad length {length}")
        if kind not in IMMUTABLE_OPTIONS:
            header[i : i + length] = bytes(length)
        i += length


def _address(address: Address) -> bytes | None:
    return None if address is None else ip_bytes(address)
