"""ESP (RFC 4303) on bytes: layout, both modes, and a tampered twin for every region.

Every suite is exercised; the receiving SA is a separate SAState built from the
same parameters, as on a real peer.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from client_agent.ipsec import esp
from client_agent.ipsec.errors import BadICV, BadPadding, DummyPacket, Fragment, Malformed, NoSA, Replayed
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.suites import Suite, all_suites
from netwire.ipv4 import IPPROTO_ESP, header_checksum_ok

ESP_SUITES = [s for s in all_suites() if s.protocol.name == "ESP"]
TUNNEL = {"src": "198.51.100.1", "dst": "203.0.113.200"}


def pair(suite: Suite, mode: Mode = Mode.TRANSPORT) -> tuple[SAState, SAState]:
    sa = suite.sa(0x2001, mode, **(TUNNEL if mode is Mode.TUNNEL else {}))
    return SAState(sa), SAState(sa)


def tcp_packet(payload: bytes = b"GET / HTTP/1.0\r\n\r\n", **ip: object) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="203.0.113.100", ttl=61, tos=0xB8, **ip) / TCP(sport=40000, dport=80) / payload)


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def layout(state: SAState) -> dict[str, int]:
    """Offsets of the ESP fields after a 20-byte IP header."""
    iv_len = state.cipher.iv_len
    icv_len = state.cipher.icv_len + (state.mac.icv_len if state.mac else 0)
    return {"spi": 20, "seq": 24, "iv": 28, "ciphertext": 28 + iv_len, "icv_len": icv_len}


@pytest.mark.parametrize("suite", ESP_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", list(Mode))
def test_round_trip_and_layout(suite: Suite, mode: Mode) -> None:
    sender, receiver = pair(suite, mode)
    packet = tcp_packet()
    protected = esp.encapsulate(packet, sender)
    outer = IP(protected)
    assert outer.proto == IPPROTO_ESP and outer.len == len(protected)
    assert header_checksum_ok(protected, 20)
    assert struct.unpack_from("!II", protected, 20) == (0x2001, 1)
    assert packet[40:] not in protected or suite.encryption == "ENCR_NULL"  # encrypted unless NULL
    # RFC 4303 section 2.4: payload + padding + trailer fill whole cipher blocks (and 32-bit words)
    fields = layout(sender)
    assert (len(protected) - fields["ciphertext"] - fields["icv_len"]) % sender.cipher.pad_to == 0
    if mode is Mode.TUNNEL:
        assert (outer.src, outer.dst, outer.ttl, outer.tos) == (TUNNEL["src"], TUNNEL["dst"], 64, 0xB8)
    else:
        assert (outer.src, outer.dst, outer.ttl, outer.tos) == ("10.0.0.1", "203.0.113.100", 61, 0xB8)
    assert esp.decapsulate(protected, receiver) == packet
    assert (sender.packets, receiver.packets) == (1, 1)


@pytest.mark.parametrize("suite", ESP_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", list(Mode))
def test_tampered_twins_fail_with_the_right_reason(suite: Suite, mode: Mode) -> None:
    """One flipped bit in each region ESP covers: SPI -> no SA; seq, IV, ciphertext, ICV -> bad ICV."""
    sender, _ = pair(suite, mode)
    protected = esp.encapsulate(tcp_packet(), sender)
    fields = layout(sender)
    regions = {
        "seq": (fields["seq"], BadICV),  # the top byte: a new, higher number, so the ICV check runs
        "ciphertext first": (fields["ciphertext"], BadICV),
        "ciphertext last": (len(protected) - fields["icv_len"] - 1, BadICV),  # the next-header byte
        "icv": (len(protected) - 1, BadICV),
        "spi": (fields["spi"] + 3, NoSA),
    }
    if sender.cipher.iv_len:
        regions["iv"] = (fields["iv"], BadICV)
    for region, (index, error) in regions.items():
        receiver = SAState(sender.sa)
        with pytest.raises(error):
            esp.decapsulate(flip(protected, index, 7), receiver)
        assert receiver.window.top == 0, f"{region}: a forged packet moved the window"
        assert esp.decapsulate(protected, receiver) == tcp_packet(), region  # the genuine twin still passes


def test_outer_header_is_not_covered_by_esp() -> None:
    """RFC 4303 section 3.1.1: ESP does not protect the IP header; a changed TTL arrives as is."""
    sender, receiver = pair(ESP_SUITES[0])
    protected = bytearray(esp.encapsulate(tcp_packet(), sender))
    protected[8] -= 1  # one hop later (checksum left alone: the IP layer checks it, not ESP)
    assert IP(esp.decapsulate(bytes(protected), receiver)).ttl == 60


@pytest.mark.parametrize("suite", ESP_SUITES[:1] + ESP_SUITES[-1:], ids=lambda s: s.name)
def test_replayed_and_stale_packets_are_dropped(suite: Suite) -> None:
    sender, receiver = pair(suite)
    first = esp.encapsulate(tcp_packet(), sender)
    later = [esp.encapsulate(tcp_packet(), sender) for _ in range(70)]
    esp.decapsulate(later[-1], receiver)  # sequence number 71
    with pytest.raises(Replayed, match="already received"):
        esp.decapsulate(later[-1], receiver)
    with pytest.raises(Replayed, match="below the replay window") as err:
        esp.decapsulate(first, receiver)  # sequence number 1, more than 64 behind
    assert err.value.reason == "replay"
    assert esp.decapsulate(later[10], receiver) == tcp_packet()  # 12: late but inside the window


def _seal_raw(state: SAState, seq: int, plaintext: bytes) -> bytes:
    """An ESP packet around ``plaintext`` as given (trailer included): to forge valid-ICV oddities."""
    header = struct.pack("!II", state.sa.spi, seq)
    iv = state.cipher.new_iv(seq)
    ciphertext = state.cipher.encrypt(header, iv, plaintext)
    icv = state.mac.icv(header, iv, ciphertext) if state.mac else b""
    ip = bytes(IP(src="203.0.113.100", dst="10.0.0.1", proto=IPPROTO_ESP, len=20 + len(header + iv + ciphertext + icv)))
    return ip + header + iv + ciphertext + icv


@pytest.mark.parametrize("suite", [s for s in ESP_SUITES if s.keymat_length in (0, 16, 20)], ids=lambda s: s.name)
def test_padding_is_checked_after_decryption(suite: Suite) -> None:
    """RFC 4303 section 2.4: padding is 1, 2, 3, ...; a wrong byte or a pad length past the payload is refused."""
    sender, receiver = pair(suite)
    block = sender.cipher.pad_to
    payload = bytes(block - 4)
    good = payload + bytes([1, 2, 2, 6])
    wrong_byte = payload + bytes([1, 3, 2, 6])
    too_long = payload + bytes([1, 2, 200, 6])
    assert esp.decapsulate(_seal_raw(sender, 1, good), receiver)[20:] == payload
    with pytest.raises(BadPadding):
        esp.decapsulate(_seal_raw(sender, 2, wrong_byte), receiver)
    with pytest.raises(BadPadding):
        esp.decapsulate(_seal_raw(sender, 3, too_long), receiver)


def test_dummy_packets_are_discarded() -> None:
    """RFC 4303 section 2.6: next header 59 marks traffic-flow-confidentiality filler."""
    sender, receiver = pair(ESP_SUITES[-1])
    dummy = _seal_raw(sender, 1, bytes([1, 2, 2, 59]))
    with pytest.raises(DummyPacket) as err:
        esp.decapsulate(dummy, receiver)
    assert err.value.reason == "dummy"


def test_cbc_ciphertext_that_is_not_whole_blocks_is_malformed() -> None:
    suite = next(s for s in ESP_SUITES if s.encryption == "ENCR_AES_CBC")
    sender, receiver = pair(suite)
    header, iv = struct.pack("!II", 0x2001, 1), bytes(16)
    body = header + iv + bytes(15)
    forged = bytes(IP(src="203.0.113.100", dst="10.0.0.1", proto=IPPROTO_ESP, len=20 + len(body) + 12))
    with pytest.raises(Malformed, match="whole number of blocks"):
        esp.decapsulate(forged + body + sender.mac.icv(body), receiver)


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda p: p[:30], Malformed),  # cut inside the IV
        (lambda p: p[:19], Malformed),  # not even an IP header
        (lambda p: b"\x65" + p[1:], Malformed),  # IP version 6
        (lambda p: p[:2] + (len(p) + 1).to_bytes(2, "big") + p[4:], Malformed),  # total length beyond the bytes
        (lambda p: p[:9] + b"\x11" + p[10:], Malformed),  # not ESP
        (lambda p: p[:6] + b"\x20" + p[7:], Fragment),  # more fragments
    ],
)
def test_malformed_and_fragmented_packets(mangle, error) -> None:
    sender, receiver = pair(ESP_SUITES[-1])
    with pytest.raises(error):
        esp.decapsulate(mangle(esp.encapsulate(tcp_packet(), sender)), receiver)


def test_link_layer_padding_after_the_packet_is_ignored() -> None:
    sender, receiver = pair(ESP_SUITES[-1])
    assert esp.decapsulate(esp.encapsulate(tcp_packet(), sender) + bytes(6), receiver) == tcp_packet()


def test_transport_mode_refuses_to_protect_a_fragment() -> None:
    sender, _ = pair(ESP_SUITES[-1])
    with pytest.raises(Fragment):
        esp.encapsulate(tcp_packet(flags="MF"), sender)


def test_tunnel_mode_carries_a_fragment_whole_and_copies_df() -> None:
    sender, receiver = pair(ESP_SUITES[-1], Mode.TUNNEL)
    fragment = tcp_packet(flags="MF", id=7)
    protected = esp.encapsulate(fragment, sender)
    assert IP(protected).flags == 0  # DF copied from the inner header (RFC 4301 section 5.1.2.1)
    assert IP(esp.encapsulate(tcp_packet(flags="DF"), sender)).flags == "DF"
    assert esp.decapsulate(protected, receiver) == fragment


def test_tunnel_sa_refuses_a_payload_that_is_not_ipv4() -> None:
    sender, _ = pair(ESP_SUITES[-1])  # transport: next header 6
    tunnel_receiver = SAState(dataclasses.replace(sender.sa, mode=Mode.TUNNEL, **TUNNEL))
    with pytest.raises(Malformed, match="not IPv4"):
        esp.decapsulate(esp.encapsulate(tcp_packet(), sender), tunnel_receiver)


def test_explicit_iv_must_have_the_ciphers_length() -> None:
    sender, _ = pair(ESP_SUITES[-1])
    with pytest.raises(ValueError, match="iv: 4 bytes"):
        esp.encapsulate(tcp_packet(), sender, iv=b"1234")


def test_gcm_ivs_are_unique_per_sa_and_differ_between_sas_with_one_key() -> None:
    """RFC 4106 section 3.1: an IV must never repeat under a key, even if two SAs share it by mistake."""
    sa = ESP_SUITES[-1].sa(0x2001)
    one, two = SAState(sa), SAState(sa)
    ivs_one = {esp.encapsulate(tcp_packet(), one)[28:36] for _ in range(50)}
    ivs_two = {esp.encapsulate(tcp_packet(), two)[28:36] for _ in range(50)}
    assert len(ivs_one) == len(ivs_two) == 50 and not ivs_one & ivs_two


@settings(max_examples=60, deadline=None)
@given(
    suite=st.sampled_from(ESP_SUITES),
    mode=st.sampled_from(list(Mode)),
    payload=st.binary(max_size=1500),
    udp=st.booleans(),
)
def test_round_trip_of_random_payloads(suite: Suite, mode: Mode, payload: bytes, udp: bool) -> None:
    transport = UDP(sport=5000, dport=53) if udp else TCP(sport=1, dport=2)
    packet = bytes(IP(src="10.0.0.2", dst="203.0.113.101") / transport / Raw(payload))
    sender, receiver = pair(suite, mode)
    for _ in range(2):
        assert esp.decapsulate(esp.encapsulate(packet, sender), receiver) == packet
