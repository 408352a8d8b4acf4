"""The lease protocol codec (netwire.pcp): RFC 6887 framing, MAP/PEER and the private opcodes.

Round trips for every opcode in both directions, a hand-written vector from
RFC 6887's figures, every malformed form with its result code, a fuzz in
which only PcpError may escape, and RFC 6887 8.3's error responses.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwire import pcp
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP
from netwire.pcp import Opcode, PcpError, Result

# ----------------------------------------------------------------------------- strategies (also used by test_pcp_scapy)

nonces = st.binary(min_size=12, max_size=12)
ipv4 = st.integers(1, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
maybe_ipv4 = st.none() | ipv4
u16, u32, u64 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 2**64 - 1)
maybe_u64 = st.none() | u64
PORTLESS = (IPPROTO_ESP, IPPROTO_AH)


@st.composite
def port_fields(draw, count: int):
    protocol = draw(st.integers(0, 255))
    ports = [draw(u16) for _ in range(count)]
    if protocol in PORTLESS:
        ports = [0] * count
    if protocol == 0:
        ports[0] = 0
    return protocol, ports


@st.composite
def map_infos(draw):
    protocol, (internal, external) = draw(port_fields(2))
    return pcp.MapInfo(draw(nonces), protocol, internal, external, draw(maybe_ipv4))


@st.composite
def peer_infos(draw):
    protocol, (internal, external, remote) = draw(port_fields(3))
    return pcp.PeerInfo(draw(nonces), protocol, internal, external, draw(maybe_ipv4), remote, draw(maybe_ipv4))


@st.composite
def definitions(draw):
    underlying = draw(st.sampled_from([pcp.UNDERLYING_IP, pcp.UNDERLYING_UDP]))
    port = 0 if underlying == pcp.UNDERLYING_IP else draw(st.integers(1, 0xFFFF))
    length = draw(st.integers(1, 64))
    top = (1 << length) - 1
    low = draw(st.integers(0, top))
    return pcp.GpnDefinition(draw(nonces), draw(st.integers(0, 255)), underlying, port, draw(st.none() | u16),
                             draw(u16), length, low, draw(st.integers(low, top)), draw(st.integers(0, top)))


@st.composite
def lease_infos(draw):
    return pcp.LeaseInfo(draw(nonces), draw(st.integers(0, 255)), draw(maybe_u64), draw(maybe_u64), draw(maybe_ipv4),
                         draw(maybe_ipv4), port=draw(u16))


@st.composite
def entry_records(draw):
    return pcp.EntryRecord(draw(st.sampled_from(pcp.ENTRY_KINDS)), draw(st.integers(0, 255)), draw(maybe_ipv4),
                           draw(maybe_u64), draw(maybe_ipv4), draw(maybe_u64), draw(maybe_ipv4), draw(u32),
                           draw(u16))


read_requests = st.builds(pcp.ReadInfo, nonces, st.just(()), u16, st.none())
read_responses = st.builds(pcp.ReadInfo, nonces, st.lists(entry_records(), max_size=12).map(tuple), u16, u16)
options = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=2).map(tuple)
REQUEST_BODIES = {Opcode.ANNOUNCE: st.none(), Opcode.MAP: map_infos(), Opcode.PEER: peer_infos(),
                  Opcode.DEFINE: definitions(), Opcode.LEASE: lease_infos(), Opcode.READ: read_requests}
RESPONSE_BODIES = {**REQUEST_BODIES, Opcode.READ: read_responses}


@st.composite
def requests(draw, opcode: Opcode | None = None, with_options: bool = True):
    opcode = opcode if opcode is not None else draw(st.sampled_from(list(Opcode)))
    return pcp.Request(opcode, draw(u32), draw(ipv4), draw(REQUEST_BODIES[opcode]),
                       draw(options) if with_options else ())


@st.composite
def responses(draw, opcode: Opcode | None = None, with_options: bool = True):
    opcode = opcode if opcode is not None else draw(st.sampled_from(list(Opcode)))
    result = draw(st.sampled_from(list(Result)))
    info = draw(RESPONSE_BODIES[opcode])
    if result is not Result.SUCCESS and info is not None and draw(st.booleans()):
        info, with_options = None, False  # an error may come without a body (and so without options)
    return pcp.Response(opcode, result, draw(u32), draw(u32), info, draw(options) if with_options else ())


ALL_OPTIONS = frozenset(range(256))

# ----------------------------------------------------------------------------- round trips


@settings(deadline=None)
@given(requests())
def test_any_request_encodes_and_decodes_equal(request):
    wire = pcp.encode_request(request)
    assert len(wire) % 4 == 0 and len(wire) <= pcp.MAX_MESSAGE
    assert pcp.decode_request(wire, supported_options=ALL_OPTIONS) == request


@settings(deadline=None)
@given(responses())
def test_any_response_encodes_and_decodes_equal(response):
    wire = pcp.encode_response(response)
    assert len(wire) % 4 == 0 and len(wire) <= pcp.MAX_MESSAGE
    assert pcp.decode_response(wire) == response


@pytest.mark.parametrize("opcode", list(Opcode), ids=lambda o: o.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_opcode_round_trips_both_ways(opcode, data):
    request = data.draw(requests(opcode))
    assert pcp.decode_request(pcp.encode_request(request), supported_options=ALL_OPTIONS) == request
    response = data.draw(responses(opcode))
    assert pcp.decode_response(pcp.encode_response(response)) == response


# ----------------------------------------------------------------------------- known byte layouts

NONCE = bytes(range(1, 13))

# RFC 6887 7.1 (Figure 2, request header) followed by 11.1 (Figure 9, MAP request): a UDP mapping of
# internal port 5000 for client 10.0.0.1, suggesting external port 5000 on 203.0.113.1, for 3600 s.
MAP_REQUEST_VECTOR = bytes.fromhex(
    "02" "01" "0000"                            # version 2 | R=0, opcode 1 (MAP) | reserved
    "00000e10"                                  # requested lifetime 3600
    "00000000000000000000ffff0a000001"          # client IP ::ffff:10.0.0.1 (RFC 6887 5)
    "0102030405060708090a0b0c"                  # mapping nonce (96 bits)
    "11" "000000"                               # protocol 17 (UDP) | reserved 24 bits
    "1388" "1388"                               # internal port 5000 | suggested external port 5000
    "00000000000000000000ffffcb007101"          # suggested external IP ::ffff:203.0.113.1
)

# RFC 6887 7.2 (Figure 3, response header) followed by 11.1 (Figure 10, MAP response).
MAP_RESPONSE_VECTOR = bytes.fromhex(
    "02" "81" "00" "00"                         # version 2 | R=1, opcode 1 | reserved | result SUCCESS
    "00000e10"                                  # lifetime 3600
    "0000002a"                                  # epoch time 42
    "000000000000000000000000"                  # reserved 96 bits
    "0102030405060708090a0b0c" "11000000" "1388" "a000"
    "00000000000000000000ffffcb007101"          # assigned external 203.0.113.1:40960
)


def test_map_request_matches_the_rfc_6887_layout():
    request = pcp.Request(Opcode.MAP, 3600, "10.0.0.1", pcp.MapInfo(NONCE, 17, 5000, 5000, "203.0.113.1"))
    assert len(MAP_REQUEST_VECTOR) == 60
    assert pcp.encode_request(request) == MAP_REQUEST_VECTOR
    assert pcp.decode_request(MAP_REQUEST_VECTOR) == request


def test_map_response_matches_the_rfc_6887_layout():
    response = pcp.Response(Opcode.MAP, Result.SUCCESS, 3600, 42, pcp.MapInfo(NONCE, 17, 5000, 40960, "203.0.113.1"))
    assert pcp.encode_response(response) == MAP_RESPONSE_VECTOR
    assert pcp.decode_response(MAP_RESPONSE_VECTOR) == response


def test_lease_layout_flags_and_unspecified_fields():
    info = pcp.LeaseInfo(NONCE, 50, None, 0x1234, None, "203.0.113.100")
    body = pcp.encode_request(pcp.Request(Opcode.LEASE, 600, "10.0.0.1", info))[pcp.HEADER_LEN:]
    assert len(body) == pcp.LeaseInfo.SIZE == 64
    assert body[12:16] == bytes([50, pcp.LeaseInfo.FLAG_GLOBAL_GPN | pcp.LeaseInfo.FLAG_FOREIGN_IP, 0, 0])
    assert body[16:24] == bytes(8) and body[24:32] == (0x1234).to_bytes(8, "big")
    assert body[32:48] == bytes(10) + b"\xff\xff" + bytes(4)  # ::ffff:0.0.0.0, RFC 6887 11.1 "no suggestion"
    assert body[48:64] == bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 100])


def test_isakmp_lease_names_its_udp_port():
    info = pcp.LeaseInfo(NONCE, 17, None, None, None, None, port=500)
    body = pcp.encode_request(pcp.Request(Opcode.LEASE, 600, "10.0.0.1", info))[pcp.HEADER_LEN:]
    assert body[12:16] == bytes([17, 0]) + (500).to_bytes(2, "big")


def test_the_seed_definitions_are_the_ones_described():
    esp, ah, ike = pcp.ESP_DEFINITION, pcp.AH_DEFINITION, pcp.ISAKMP_DEFINITION
    assert (esp.protocol, esp.underlying, esp.src_offset_bits, esp.dst_offset_bits, esp.length_bits) == (50, 0, None,
                                                                                                        0, 32)
    assert (ah.protocol, ah.src_offset_bits, ah.dst_offset_bits, ah.length_bits) == (51, None, 32, 32)
    assert (ike.underlying, ike.port, ike.src_offset_bits, ike.dst_offset_bits, ike.length_bits) == (17, 500, 0, 0,
                                                                                                     64)
    assert esp.range_min == ah.range_min == 256  # RFC 4303 2.1: SPIs 1-255 reserved
    body = pcp.encode_request(pcp.Request(Opcode.DEFINE, 0, "10.0.0.1", _with_nonce(esp)))[pcp.HEADER_LEN:]
    assert body[12:16] == bytes([50, 0, 0, 0]) and body[16] == 0  # S clear: no source GPN
    assert body[16:24] == bytes([0, 32, 0, 0, 0, 0, 0, 0])


def _with_nonce(info):
    return dataclasses.replace(info, nonce=NONCE)


def test_read_response_pages_what_fits():
    records = tuple(pcp.EntryRecord("CLIENT-ALG", 50, "10.0.0.1", i + 256, "203.0.113.1", i + 256, None, 60)
                    for i in range(30))
    assert pcp.READ_PAGE_ENTRIES == 13
    whole = pcp.Response(Opcode.READ, Result.SUCCESS, 0, 1, pcp.ReadInfo(NONCE, records))
    first = pcp.decode_response(pcp.encode_response(whole)).info
    assert first.entries == records[:13] and first.total == 30 and first.start == 0
    second = pcp.Response(Opcode.READ, Result.SUCCESS, 0, 1, pcp.ReadInfo(NONCE, records, start=26))
    last = pcp.decode_response(pcp.encode_response(second)).info
    assert last.entries == records[26:] and last.total == 30 and last.start == 26
    with_options = pcp.Response(Opcode.READ, Result.SUCCESS, 0, 1, pcp.ReadInfo(NONCE, records),
                                options=((200, bytes(100)),))
    wire = pcp.encode_response(with_options)
    assert len(wire) <= pcp.MAX_MESSAGE and len(pcp.decode_response(wire).info.entries) == 12  # (1100-24-104-20) // 76


def test_options_are_padded_to_four_octets():
    request = pcp.Request(Opcode.ANNOUNCE, 0, "10.0.0.1", None, options=((130, b"abcde"),))
    wire = pcp.encode_request(request)
    assert wire[24:] == bytes([130, 0, 0, 5]) + b"abcde" + bytes(3)


def test_unspecified_addresses_normalise_to_none():
    assert pcp.MapInfo(NONCE, 17, 1, 0, "0.0.0.0").external_ip is None
    assert pcp.LeaseInfo(NONCE, 50, None, None, None, "0.0.0.0").foreign_ip is None


@pytest.mark.parametrize("make", [
    lambda: pcp.MapInfo(b"short", 17, 1, 1, None),
    lambda: pcp.MapInfo(NONCE, 0, 80, 0, None),  # protocol 0 = all: internal port must be 0
    lambda: pcp.MapInfo(NONCE, 50, 0, 500, None),  # ESP has no ports
    lambda: pcp.MapInfo(NONCE, 17, 70000, 0, None),
    lambda: pcp.LeaseInfo(NONCE, 50, 2**64, None, None, None),
    lambda: pcp.LeaseInfo(NONCE, 50, None, None, "10.0.0", None),
    lambda: pcp.GpnDefinition(NONCE, 50, 6, 0, None, 0, 32, 1, 2, 0),  # underlying TCP
    lambda: pcp.GpnDefinition(NONCE, 50, 0, 5, None, 0, 32, 1, 2, 0),  # IP with a port
    lambda: pcp.GpnDefinition(NONCE, 50, 0, 0, None, 0, 0, 0, 0, 0),  # 0 bits
    lambda: pcp.GpnDefinition(NONCE, 50, 0, 0, None, 0, 8, 5, 4, 0),  # empty range
    lambda: pcp.GpnDefinition(NONCE, 50, 0, 0, None, 0, 8, 1, 256, 0),  # range beyond 8 bits
    lambda: pcp.EntryRecord("ALG", 50, None, None, None, None, None, 0),
    lambda: pcp.Request(Opcode.MAP, 0, "10.0.0.1", pcp.LeaseInfo(NONCE, 50, None, None, None, None)),
    lambda: pcp.Request(Opcode.ANNOUNCE, 0, "10.0.0.1", pcp.MapInfo(NONCE, 17, 1, 0, None)),
    lambda: pcp.Request(Opcode.MAP, 2**32, "10.0.0.1", pcp.MapInfo(NONCE, 17, 1, 0, None)),
    lambda: pcp.Request(Opcode.READ, 0, "10.0.0.1", pcp.ReadInfo(NONCE, (), 0, 3)),
    lambda: pcp.Response(77, Result.SUCCESS, 0, 0, None),
])
def test_invalid_values_are_refused_at_construction(make):
    with pytest.raises(ValueError):
        make()


def test_a_placeholder_nonce_is_never_encoded():
    with pytest.raises(ValueError, match="nonce"):
        pcp.encode_request(pcp.Request(Opcode.DEFINE, 0, "10.0.0.1", pcp.ESP_DEFINITION))


# ----------------------------------------------------------------------------- malformed requests

GOOD_MAP = MAP_REQUEST_VECTOR
V4 = bytes(10) + b"\xff\xff"


def _lease_request(body: bytes) -> bytes:
    return bytes([2, Opcode.LEASE, 0, 0]) + (600).to_bytes(4, "big") + V4 + bytes([10, 0, 0, 1]) + body


GOOD_LEASE_BODY = pcp.LeaseInfo(NONCE, 50, None, None, None, None).pack()


def _patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


DEFINE_BODY = _with_nonce(pcp.ESP_DEFINITION).pack()


def _define_request(body: bytes) -> bytes:
    return bytes([2, Opcode.DEFINE, 0, 0]) + bytes(4) + V4 + bytes([10, 0, 0, 1]) + body


MALFORMED = {
    "empty": (b"", Result.MALFORMED_REQUEST),
    "one octet": (b"\x02", Result.MALFORMED_REQUEST),
    "response bit": (b"\x02\x81" + GOOD_MAP[2:], Result.MALFORMED_REQUEST),
    "version 1": (b"\x01" + GOOD_MAP[1:], Result.UNSUPP_VERSION),
    "NAT-PMP version 0, 2 octets": (b"\x00\x00", Result.UNSUPP_VERSION),
    "opcode 3": (_patch(GOOD_MAP, 1, b"\x03"), Result.UNSUPP_OPCODE),
    "opcode 127": (_patch(GOOD_MAP, 1, b"\x7f"), Result.UNSUPP_OPCODE),
    "shorter than the header": (GOOD_MAP[:20], Result.MALFORMED_REQUEST),
    "not a multiple of 4": (GOOD_MAP + b"\x00\x00", Result.MALFORMED_REQUEST),
    "longer than 1100": (GOOD_MAP + bytes(1044), Result.MALFORMED_REQUEST),
    "MAP body truncated": (GOOD_MAP[:56], Result.MALFORMED_REQUEST),
    "MAP all protocols with a port": (_patch(GOOD_MAP, 36, b"\x00"), Result.MALFORMED_REQUEST),
    "MAP ESP with ports": (_patch(GOOD_MAP, 36, b"\x32"), Result.MALFORMED_REQUEST),
    "client address not IPv4-mapped": (_patch(GOOD_MAP, 8, b"\x20\x01\x0d\xb8"), Result.ADDRESS_MISMATCH),
    "external address not IPv4-mapped": (_patch(GOOD_MAP, 44, b"\xfe\x80"), Result.MALFORMED_REQUEST),
    "LEASE body truncated": (_lease_request(GOOD_LEASE_BODY[:60]), Result.MALFORMED_REQUEST),
    "LEASE reserved flag bit": (_lease_request(_patch(GOOD_LEASE_BODY, 13, b"\x01")), Result.MALFORMED_REQUEST),
    "LEASE GPN without its flag": (_lease_request(_patch(GOOD_LEASE_BODY, 23, b"\x07")), Result.MALFORMED_REQUEST),
    "LEASE flag on the all-zeros address": (_lease_request(_patch(GOOD_LEASE_BODY, 13, b"\x20")),
                                            Result.MALFORMED_REQUEST),
    "DEFINE 0-bit GPN": (_define_request(_patch(DEFINE_BODY, 17, b"\x00")), Result.MALFORMED_REQUEST),
    "DEFINE 65-bit GPN": (_define_request(_patch(DEFINE_BODY, 17, b"\x41")), Result.MALFORMED_REQUEST),
    "DEFINE over TCP": (_define_request(_patch(DEFINE_BODY, 13, b"\x06")), Result.MALFORMED_REQUEST),
    "DEFINE source offset without S": (_define_request(_patch(DEFINE_BODY, 21, b"\x08")), Result.MALFORMED_REQUEST),
    "DEFINE reserved field": (_define_request(_patch(DEFINE_BODY, 19, b"\x01")), Result.MALFORMED_REQUEST),
    "DEFINE empty range": (_define_request(_patch(DEFINE_BODY, 24, b"\xff")), Result.MALFORMED_REQUEST),
    "READ request with records": (bytes([2, Opcode.READ]) + GOOD_MAP[2:24] + NONCE + bytes([0, 0, 0, 1, 0, 0, 0, 0]),
                                  Result.MALFORMED_REQUEST),
    "option header cut short": (GOOD_MAP + b"\x80\x00\x00\x00" + b"\x81\x00\x00\x08", Result.MALFORMED_OPTION),
    "option overruns": (GOOD_MAP + b"\x80\x00\x00\x09" + bytes(8), Result.MALFORMED_OPTION),
    "unknown mandatory option": (GOOD_MAP + b"\x01\x00\x00\x00", Result.UNSUPP_OPTION),
}


@pytest.mark.parametrize("wire, result", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_raise_the_result_to_answer(wire, result):
    with pytest.raises(PcpError) as caught:
        pcp.decode_request(wire)
    assert caught.value.result is result and caught.value.reason


def test_what_rfc_6887_says_to_ignore_is_ignored():
    reserved = _patch(_patch(GOOD_MAP, 2, b"\xff\xff"), 37, b"\xff\xff\xff")  # header and MAP reserved bits
    assert pcp.decode_request(reserved) == pcp.decode_request(GOOD_MAP)
    optional = pcp.decode_request(GOOD_MAP + b"\xc8\x00\x00\x02\xaa\xbb\x00\x00")  # unknown optional option 200
    assert optional.options == ((200, b"\xaa\xbb"),)
    assert pcp.decode_request(GOOD_MAP + b"\x01\x00\x00\x00", supported_options=frozenset({1})).options == ((1, b""),)


def test_an_error_response_to_an_unknown_opcode_still_decodes():
    response = pcp.decode_response(pcp.error_response(_patch(GOOD_MAP, 1, b"\x4d"), Result.UNSUPP_OPCODE, 9))
    assert (response.opcode, response.result, response.info) == (77, Result.UNSUPP_OPCODE, None)


@pytest.mark.parametrize("wire, result", [
    (b"\x02\x81\x00\x00", Result.MALFORMED_REQUEST),  # shorter than a header
    (GOOD_MAP, Result.MALFORMED_REQUEST),  # a request
    (b"\x01" + MAP_RESPONSE_VECTOR[1:], Result.UNSUPP_VERSION),
    (_patch(MAP_RESPONSE_VECTOR, 3, b"\x63"), Result.MALFORMED_REQUEST),  # result code 99 is not defined
    (_patch(MAP_RESPONSE_VECTOR, 1, b"\xcd"), Result.UNSUPP_OPCODE),  # success for unknown opcode 77
    (MAP_RESPONSE_VECTOR[:56], Result.MALFORMED_REQUEST),  # success with its body cut
])
def test_malformed_responses_raise(wire, result):
    with pytest.raises(PcpError) as caught:
        pcp.decode_response(wire)
    assert caught.value.result is result


def test_an_error_response_whose_body_does_not_parse_has_no_info():
    wire = _patch(MAP_RESPONSE_VECTOR, 3, bytes([Result.MALFORMED_REQUEST]))[:56]
    response = pcp.decode_response(wire)
    assert response.result is Result.MALFORMED_REQUEST and response.info is None


# ----------------------------------------------------------------------------- fuzz: only PcpError escapes


def _decode_all(wire: bytes) -> None:
    for decode in (pcp.decode_request, pcp.decode_response):
        try:
            message = decode(wire)
        except PcpError as exc:
            assert isinstance(exc.result, Result)
            continue
        encode = pcp.encode_request if isinstance(message, pcp.Request) else pcp.encode_response
        again = decode(encode(message))  # whatever decodes, re-encodes to the same message
        assert again == message


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1200))
def test_random_bytes_only_ever_raise_pcp_error(wire):
    _decode_all(wire)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([o.value for o in Opcode] + [3, 99, 126]), st.booleans(), st.integers(0, 255),
       st.binary(max_size=400).map(lambda b: b + bytes(-len(b) % 4)))
def test_random_bodies_behind_a_valid_header_only_raise_pcp_error(opcode, response, result, body):
    header = (bytes([2, 0x80 | opcode, 0, result]) + bytes(20)) if response else \
        (bytes([2, opcode, 0, 0, 0, 0, 1, 0]) + V4 + bytes([10, 0, 0, 1]))
    _decode_all(header + body)


@st.composite
def mutated(draw):
    wire = bytearray(draw(st.one_of(requests().map(pcp.encode_request), responses().map(pcp.encode_response))))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "grow", "set"]))
        if action == "flip" and wire:
            at = draw(st.integers(0, len(wire) - 1))
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and wire:
            wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
        elif action == "cut":
            del wire[draw(st.integers(0, len(wire))):]
        else:
            wire += draw(st.binary(min_size=1, max_size=16))
    return bytes(wire)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_valid_messages_only_raise_pcp_error(wire):
    _decode_all(wire)


# ----------------------------------------------------------------------------- error responses (RFC 6887 8.3)


def test_error_response_copies_opcode_and_body_and_sets_the_rest():
    with_option = GOOD_MAP + b"\xc8\x00\x00\x04abcd"
    wire = pcp.error_response(with_option, Result.NOT_AUTHORIZED, epoch=1234)
    version, r_opcode, reserved, result, lifetime, epoch = struct.unpack_from("!BBBBII", wire)
    assert (version, r_opcode, reserved, result) == (2, 0x81, 0, Result.NOT_AUTHORIZED)
    assert (lifetime, epoch) == (pcp.LONG_ERROR_LIFETIME, 1234)
    assert wire[12:24] == bytes(12) and wire[24:] == with_option[24:]
    response = pcp.decode_response(wire)
    assert response.info == pcp.decode_request(GOOD_MAP).info  # the client can match it by its nonce
    assert response.options == ((200, b"abcd"),)


@pytest.mark.parametrize("request_bytes", [b"", b"\x02", b"\x02\x01\x00", b"\x02\x81\x00\x00" + bytes(20),
                                           MAP_RESPONSE_VECTOR])
def test_no_error_response_to_fragments_or_responses(request_bytes):
    assert pcp.error_response(request_bytes, Result.MALFORMED_REQUEST, 0) is None


def test_error_response_to_short_long_and_odd_requests():
    short = pcp.error_response(b"\x02\x61\x00\x00\x00\x00", Result.MALFORMED_REQUEST, 5)
    assert len(short) == 24 and short[1] == 0x80 | Opcode.LEASE
    assert pcp.decode_response(short).info is None
    huge = pcp.error_response(GOOD_MAP + bytes(2000), Result.MALFORMED_REQUEST, 5)
    assert len(huge) == pcp.MAX_MESSAGE
    odd = pcp.error_response(GOOD_MAP + b"\x01", Result.MALFORMED_REQUEST, 5)
    assert len(odd) == 64 and odd[60:] == b"\x01\x00\x00\x00"
    version_one = pcp.error_response(b"\x01" + GOOD_MAP[1:], Result.UNSUPP_VERSION, 5)
    assert version_one[0] == pcp.PCP_VERSION  # the version this server speaks (RFC 6887 9)
    assert struct.unpack_from("!I", pcp.error_response(GOOD_MAP, Result.NO_RESOURCES, 5, lifetime=7), 4) == (7,)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200), st.sampled_from(list(Result)), u32)
def test_every_error_response_decodes(request_bytes, result, epoch):
    wire = pcp.error_response(request_bytes, result, epoch)
    if wire is None:
        assert len(request_bytes) < 4 or request_bytes[1] & 0x80
        return
    assert len(wire) % 4 == 0 and len(wire) <= pcp.MAX_MESSAGE
    if result is not Result.SUCCESS:
        response = pcp.decode_response(wire)
        assert (response.result, response.epoch, response.lifetime) == (result, epoch, pcp.error_lifetime(result))


def test_error_lifetimes_follow_rfc_6887_7_4():
    long = {Result.UNSUPP_VERSION, Result.NOT_AUTHORIZED, Result.MALFORMED_REQUEST, Result.UNSUPP_OPCODE,
            Result.UNSUPP_OPTION, Result.MALFORMED_OPTION, Result.UNSUPP_PROTOCOL, Result.ADDRESS_MISMATCH,
            Result.HAS_ALG, Result.PROTOCOL_NOT_DEFINED}
    for result in Result:
        expected = pcp.LONG_ERROR_LIFETIME if result in long else pcp.SHORT_ERROR_LIFETIME
        assert pcp.error_lifetime(result) == expected, result
    assert (pcp.SHORT_ERROR_LIFETIME, pcp.LONG_ERROR_LIFETIME) == (30, 1800)
    assert all(192 <= r <= 254 for r in (Result.HAS_ALG, Result.PROTOCOL_NOT_DEFINED, Result.GPN_IN_USE,
                                         Result.GPN_UNAVAILABLE, Result.DEFINITION_CONFLICT))  # IANA's private use
    assert all(96 <= o <= 126 for o in (Opcode.DEFINE, Opcode.LEASE, Opcode.READ))  # RFC 6887 19.2


def test_the_codec_pulls_in_no_scapy_and_no_sockets():
    code = "import sys, netwire.pcp; print(sorted(m for m in ('scapy', 'socket', 'os_ken') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
