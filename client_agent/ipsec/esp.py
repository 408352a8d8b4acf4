"""ESP, the Encapsulating Security Payload (RFC 4303), for IPv4 in transport and tunnel mode.

Packet layout (section 2)::

    SPI | sequence number | IV | ciphertext of (payload | padding | pad length | next header) | ICV

Transport mode puts ESP between the IP header and its payload (section
3.1.1); tunnel mode wraps the whole inner packet, next header 4, behind a new
outer header (section 3.1.2). The ICV is the separate integrity algorithm's over
SPI..ciphertext, or the combined-mode cipher's tag (section 3.3.2).
"""

from __future__ import annotations

import hmac
import struct

from client_agent.ipsec import ipheader
from client_agent.ipsec.errors import BadICV, BadPadding, DummyPacket, Fragment, Malformed, NoSA
from client_agent.ipsec.sa import SAState
from netwire.ipv4 import IPPROTO_ESP
from netwire.view import Packet

NEXT_HEADER_IPV4 = 4  # IP-in-IP: a tunnel-mode inner packet
NEXT_HEADER_NONE = 59  # a dummy packet (section 2.6)

_HEADER = struct.Struct("!II")  # SPI, sequence number
_PADDING = bytes(range(1, 256))  # section 2.4: the padding bytes are 1, 2, 3, ...
_TRAILER_LEN = 2  # pad length, next header


def encapsulate(packet: Packet, state: SAState, *, iv: bytes | None = None) -> bytes:
    """Protect the IPv4 ``packet`` with the outbound SA ``state`` (section 3.3).

    Returns the ESP packet to send. ``iv`` fixes the IV instead of the cipher's
    own choice (for known-answer tests only).
    """
    header_len, total_len = ipheader.lengths(packet)
    if state.tunnel:
        seq = state.next_seq()
        esp = seal(state, seq, packet[:total_len], NEXT_HEADER_IPV4, iv=iv)
        header = ipheader.tunnel_header(*state.endpoints(), IPPROTO_ESP, _length(esp), packet, seq)
    elif ipheader.is_fragment(packet):
        raise Fragment("transport mode protects whole datagrams only (section 3.1.1)")
    else:
        seq = state.next_seq()
        esp = seal(state, seq, packet[header_len:total_len], packet[ipheader.PROTOCOL_OFFSET], iv=iv)
        header = ipheader.rewrite(packet[:header_len], IPPROTO_ESP, header_len + _length(esp))
    state.count(total_len)
    return b"".join((header, *esp))


def _length(parts: tuple[bytes, ...]) -> int:
    return sum(map(len, parts))


def decapsulate(packet: bytes, state: SAState) -> bytes:
    """Verify and decrypt the received ESP ``packet`` with the inbound SA ``state`` (section 3.4).

    Returns the inner packet: in transport mode the IP header with its protocol
    restored, in tunnel mode the tunnelled packet as it was sent.
    """
    header_len, total_len = ipheader.lengths(packet)
    if packet[ipheader.PROTOCOL_OFFSET] != IPPROTO_ESP:
        raise Malformed(f"IP protocol {packet[ipheader.PROTOCOL_OFFSET]} is not ESP")
    if ipheader.is_fragment(packet):
        raise Fragment("ESP fragments must be reassembled first (section 3.4.1)")
    payload, next_header = unseal(state, memoryview(packet)[header_len:total_len])
    if next_header == NEXT_HEADER_NONE:
        raise DummyPacket("next header 59: dummy packet (section 2.6)")
    if state.tunnel:
        if next_header != NEXT_HEADER_IPV4:
            raise Malformed(f"tunnel-mode SA carried next header {next_header}, not IPv4")
        inner = ipheader.check_whole(payload)
    else:
        inner = ipheader.rewrite(packet[:header_len], next_header, header_len + len(payload)) + payload
    state.count(len(inner))
    return inner


def seal(state: SAState, seq: int, payload: bytes | bytearray | memoryview, next_header: int, *,
         iv: bytes | None = None) -> tuple[bytes, ...]:
    """The ESP packet, SPI to ICV, carrying ``payload`` (sections 2.4 and 3.3.2), as its parts.

    Padding aligns payload + trailer to the cipher's block size and to 4 bytes
    (section 2.4); no TFC padding is added. The parts (header, IV, ciphertext,
    ICV) are joined once, by the caller, behind the IP header (measured: slicing
    the payload as a memoryview costs more here than copying 1400 bytes).
    """
    cipher, mac = state.cipher, state.mac
    pad_len = -(len(payload) + _TRAILER_LEN) % cipher.pad_to
    plaintext = b"".join((payload, _PADDING[:pad_len], bytes((pad_len, next_header))))
    esp_header = _HEADER.pack(state.sa.spi, seq)
    if iv is None:
        iv = cipher.new_iv(seq)
    elif len(iv) != cipher.iv_len:
        raise ValueError(f"iv: {len(iv)} bytes, but {state.sa.encryption} takes {cipher.iv_len}")
    ciphertext = cipher.encrypt(esp_header, iv, plaintext)
    if mac:
        return esp_header, iv, ciphertext, mac.icv(esp_header, iv, ciphertext)
    return esp_header, iv, ciphertext


def unseal(state: SAState, esp: memoryview) -> tuple[bytes, int]:
    """Check, verify and decrypt one ESP packet, SPI to ICV; returns ``(payload, next_header)``.

    The order is section 3.4's: sequence number against the replay window,
    then the ICV (in constant time), then the window update, then decryption
    and the padding check.
    """
    cipher, mac = state.cipher, state.mac
    icv_len = mac.icv_len if mac else 0
    body_start = _HEADER.size + cipher.iv_len
    if len(esp) < body_start + _TRAILER_LEN + cipher.icv_len + icv_len:
        raise Malformed(f"ESP packet of {len(esp)} bytes is too short for {state.sa.encryption}")
    spi, seq = _HEADER.unpack_from(esp)
    if spi != state.sa.spi:
        raise NoSA(f"SPI 0x{spi:08x} does not belong to SA 0x{state.sa.spi:08x}")
    state.window.check(seq)
    end = len(esp) - icv_len
    if mac and not hmac.compare_digest(mac.icv(esp[:end]), esp[end:]):
        raise BadICV(f"ESP ICV mismatch, SPI 0x{spi:08x} sequence {seq}")
    plaintext = cipher.decrypt(esp[: _HEADER.size], esp[_HEADER.size : body_start], esp[body_start:end])
    state.window.accept(seq)
    if len(plaintext) < _TRAILER_LEN:
        raise Malformed("ESP plaintext shorter than its trailer")
    pad_len, next_header = plaintext[-2], plaintext[-1]
    payload_end = len(plaintext) - _TRAILER_LEN - pad_len
    if payload_end < 0 or plaintext[payload_end:-_TRAILER_LEN] != _PADDING[:pad_len]:
        raise BadPadding(f"ESP padding of length {pad_len} is not 1, 2, 3, ... (section 2.4)")
    return plaintext[:payload_end], next_header
