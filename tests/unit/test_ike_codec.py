"""The IKEv2 codec and crypto (RFC 7296 section 3, 2.13-2.15, 2.23) and what hostile bytes do to them.

Hostile input loses nothing: arbitrary, truncated, bit-flipped or replayed
datagrams only ever move a drop counter; an established SA keeps working.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.tls.crypto.groups import modp2048

from client_agent.ike import crypto
from client_agent.ike.codec import (
    DeletePayload,
    Header,
    KePayload,
    Malformed,
    NoncePayload,
    NotifyPayload,
    SaPayload,
    TrafficSelector,
    TsPayload,
    UnsupportedCritical,
    decode_chain,
    decode_message,
    encode_chain,
    encode_message,
)
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.events import IkeEstablished
from client_agent.ike.proposals import parse_proposal
from client_agent.ike.registry import HEADER_LEN, ExchangeType, Flag, Notify, PayloadType, Prf, ProtocolId
from client_agent.ike.session import State
from tests.unit.ike_pair import H1, SRV, Pair, configs

HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample_payloads():
    selector = TrafficSelector(ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.9"), 6, 80, 443)
    return [
        SaPayload((parse_proposal("aes128-sha256-modp2048", ProtocolId.IKE),
                   parse_proposal("aes256gcm16-prfsha1-x25519", ProtocolId.IKE, 2))),
        KePayload(31, bytes(range(32))), NoncePayload(b"n" * 32),
        NotifyPayload(Notify.REKEY_SA, b"", ProtocolId.ESP, b"\x00\x00\x10\x00"),
        DeletePayload(ProtocolId.ESP, (b"\x00\x00\x10\x00", b"\x00\x00\x20\x00")),
        TsPayload(True, (selector,)), TsPayload(False, (selector, selector)),
    ]


def test_payload_chain_round_trips():
    payloads = sample_payloads()
    first, chain = encode_chain(payloads)
    assert decode_chain(first, chain) == payloads


def test_message_round_trips_and_length_is_the_datagram():
    header = Header(b"i" * 8, bytes(8), 0, ExchangeType.IKE_SA_INIT, Flag.INITIATOR, 0)
    data = encode_message(header, sample_payloads())
    decoded, payloads = decode_message(data)
    assert (decoded.length, decoded.spi_i, payloads) == (len(data), b"i" * 8, sample_payloads())


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: d[:20], "truncated_header"),
    (lambda d: d + b"\0", "length_mismatch"),
    (lambda d: d[:17] + b"\x30" + d[18:], "invalid_major_version"),
    (lambda d: d[:18] + b"\x99" + d[19:], "unknown_exchange"),
    (lambda d: d[:HEADER_LEN + 2] + b"\xff\xff" + d[HEADER_LEN + 4:], "bad_payload_length"),
])
def test_malformed_headers_are_named(mutate, reason):
    data = encode_message(Header(b"i" * 8, bytes(8), 0, ExchangeType.IKE_SA_INIT, Flag.INITIATOR, 0),
                          sample_payloads())
    with pytest.raises(Malformed) as error:
        decode_message(mutate(data))
    assert error.value.reason == reason


def test_unknown_critical_payload_refuses_the_message_unknown_normal_one_is_kept():
    body = b"\x00\x80\x00\x08abcd"  # next NONE, critical, length 8
    with pytest.raises(UnsupportedCritical):
        decode_chain(200, body)
    (kept,) = decode_chain(200, b"\x00\x00\x00\x08abcd")
    assert (kept.TYPE, kept.body) == (200, b"abcd")


def test_ipv6_selectors_are_skipped_not_refused():
    ipv6 = b"\x08\x00\x00\x28" + bytes(36)  # TS_IPV6_ADDR_RANGE, 40 bytes
    ipv4 = TrafficSelector(ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.0.0.1")).encode()
    body = b"\x02\x00\x00\x00" + ipv6 + ipv4
    (payload,) = decode_chain(PayloadType.TSi, b"\x00\x00" + (4 + len(body)).to_bytes(2, "big") + body)
    assert len(payload.selectors) == 1


@HYPOTHESIS
@given(st.binary(max_size=600))
def test_decoder_raises_only_malformed(data):
    with contextlib.suppress(Malformed):
        decode_message(data)


@HYPOTHESIS
@given(st.integers(0, 255), st.binary(max_size=300))
def test_chain_decoder_raises_only_malformed(first, data):
    with contextlib.suppress(Malformed):
        decode_chain(first, data)


@HYPOTHESIS
@given(st.binary(max_size=400))
def test_endpoint_counts_garbage_and_keeps_no_state(data):
    _, right = configs()
    endpoint = IkeEndpoint(right, SRV)
    endpoint.receive_datagram(data, H1, 0.0)
    assert not endpoint.sessions or all(s.state is State.INIT_DONE for s in endpoint.sessions.values())


@pytest.fixture(scope="module")
def exchange():
    """One recorded exchange: IKE_SA_INIT, IKE_AUTH and a liveness check, both directions."""
    pair = Pair(*configs())
    session = pair.start()
    pair.pump()
    session.check_liveness(1.0)
    pair.pump()
    return pair


def _fresh_established() -> tuple[Pair, object, object]:
    pair = Pair(*configs())
    pair.start()
    pair.pump()
    return pair, next(iter(pair.a.sessions.values())), next(iter(pair.b.sessions.values()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_messages_are_dropped_and_the_sa_keeps_working(data):
    """Truncate, extend or flip bits of a genuine protected request: dropped with a reason, SA intact."""
    pair, a, b = _fresh_established()
    a.check_liveness(1.0)
    (genuine, _), = pair.a.datagrams_to_send()
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(genuine) - 1))
        bad = genuine[:at] + bytes([genuine[at] ^ data.draw(st.integers(1, 255))]) + genuine[at + 1:]
    elif kind == "truncate":
        bad = genuine[: data.draw(st.integers(0, len(genuine) - 1))]
    else:
        bad = genuine + data.draw(st.binary(min_size=1, max_size=40))
    before = dict(b.children)
    pair.b.receive_datagram(bad, H1, 1.0)
    dropped = sum(pair.b.counters.values()) + sum(v for k, v in b.counters.items() if k.startswith("dropped:"))
    assert dropped == 1 and not pair.b.datagrams_to_send()
    assert b.state is State.ESTABLISHED and b.children == before
    pair.b.receive_datagram(genuine, H1, 1.0)
    assert len(pair.b.datagrams_to_send()) == 1  # the genuine one is still answered


def test_unauthenticated_message_is_dropped_as_bad_icv():
    pair, a, b = _fresh_established()
    a.check_liveness(1.0)
    (genuine, _), = pair.a.datagrams_to_send()
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    pair.b.receive_datagram(forged, H1, 1.0)
    assert b.counters["dropped:bad_icv"] == 1


def test_unprotected_informational_is_refused():
    pair, a, b = _fresh_established()
    plain = encode_message(Header(b.spi_i, b.spi_r, 0, ExchangeType.INFORMATIONAL, Flag.INITIATOR, 2),
                           [DeletePayload(ProtocolId.IKE)])
    pair.b.receive_datagram(plain, H1, 1.0)
    assert b.counters["dropped:unprotected_payloads"] == 1 and b.state is State.ESTABLISHED


def test_unknown_spi_is_counted():
    pair, a, b = _fresh_established()
    a.check_liveness(1.0)
    (genuine, _), = pair.a.datagrams_to_send()
    stranger = genuine[:8] + b"x" * 8 + genuine[16:]
    pair.b.receive_datagram(stranger, H1, 1.0)
    assert pair.b.counters["dropped:unknown_spi"] == 1


# ---------------------------------------------------------------- crypto


def test_modp_2048_prime_is_rfc_3526_as_scapy_has_it():
    assert modp2048.m == crypto.MODP_2048_PRIME


@pytest.mark.parametrize("group", sorted(crypto.KEY_EXCHANGES))
def test_both_sides_agree_on_the_shared_secret(group):
    a, b = crypto.KEY_EXCHANGES[group](), crypto.KEY_EXCHANGES[group]()
    assert len(a.public) == crypto.KE_LENGTHS[group]
    assert a.shared(b.public) == b.shared(a.public)


@pytest.mark.parametrize(("group", "value"), [
    (14, bytes(256)), (14, (crypto.MODP_2048_PRIME - 1).to_bytes(256, "big")), (14, b"\x01" * 255),
    (19, bytes(64)), (19, b"\x01" * 63), (31, bytes(32)), (31, b"\x01" * 31),
])
def test_bad_peer_key_exchange_values_are_refused(group, value):
    with pytest.raises(Malformed):
        crypto.KEY_EXCHANGES[group]().shared(value)


def test_prf_plus_is_the_section_2_13_iteration():
    key, seed = b"k" * 32, b"seed"
    t1 = hmac.new(key, seed + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(key, t1 + seed + b"\x02", hashlib.sha256).digest()
    assert crypto.prf_plus(Prf.PRF_HMAC_SHA2_256, key, seed, 40) == (t1 + t2)[:40]


def test_psk_auth_is_the_section_2_15_formula():
    inner = hmac.new(b"secret", b"Key Pad for IKEv2", hashlib.sha1).digest()
    maced = hmac.new(b"skp", b"\x02\x00\x00\x00id", hashlib.sha1).digest()
    expected = hmac.new(inner, b"msg" + b"nonce" + maced, hashlib.sha1).digest()
    assert crypto.psk_auth(Prf.PRF_HMAC_SHA1, b"secret", b"msg", b"nonce", b"skp", b"\x02\x00\x00\x00id") == expected


def test_natd_hash_is_sha1_of_spis_address_and_port():
    expected = hashlib.sha1(b"i" * 8 + b"r" * 8 + bytes([203, 0, 113, 1]) + b"\x01\xf4").digest()
    assert crypto.natd_hash(b"i" * 8, b"r" * 8, bytes([203, 0, 113, 1]), 500) == expected


def test_natd_over_the_global_address_hides_the_nat_and_over_the_private_one_shows_it():
    """Section 2.23 pre-compensated (claim 8): h1 at 10.0.0.1 claims 203.0.113.1:500; srv1 sees 203.0.113.1."""
    global_address = ("203.0.113.1", 500)
    for natd_source, detected in ((global_address, False), (None, True)):
        left, right = configs()
        left = dataclasses.replace(left, natd_source=natd_source)
        pair = Pair(left, right)
        pair.start()
        for _ in range(10):  # the wire rewrites h1's source the way the NAT does
            for data, _ in pair.a.datagrams_to_send():
                pair.wire.append(("a", data))
                pair.b.receive_datagram(data, global_address, 0.0)
            for data, _ in pair.b.datagrams_to_send():
                pair.a.receive_datagram(data, SRV, 0.0)
        (b,) = [e for _, e in pair.b.next_events() if isinstance(e, IkeEstablished)]
        (a,) = [e for _, e in pair.a.next_events() if isinstance(e, IkeEstablished)]
        assert (b.nat_detected_peer, b.nat_detected_local) == (detected, False), natd_source
        assert (a.nat_detected_local, a.nat_detected_peer) == (detected, False), natd_source


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_answers_never_crash_the_initiator(data):
    """The responder's IKE_SA_INIT or IKE_AUTH answer, mutated: the initiator drops it or gives up, never raises."""
    pair = Pair(*configs())
    session = pair.start()
    (request, _), = pair.a.datagrams_to_send()
    pair.b.receive_datagram(request, H1, 0.0)
    (answer, _), = pair.b.datagrams_to_send()
    if data.draw(st.booleans()):  # mutate the IKE_AUTH answer instead
        pair.a.receive_datagram(answer, SRV, 0.0)
        (auth, _), = pair.a.datagrams_to_send()
        pair.b.receive_datagram(auth, H1, 0.0)
        (answer, _), = pair.b.datagrams_to_send()
    at = data.draw(st.integers(0, len(answer) - 1))
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        bad = answer[:at] + bytes([answer[at] ^ data.draw(st.integers(1, 255))]) + answer[at + 1:]
    elif kind == "truncate":
        bad = answer[:at]
    else:
        bad = answer + data.draw(st.binary(min_size=1, max_size=40))
    pair.a.receive_datagram(bad, SRV, 0.0)
    pair.a.next_events()
    counted = sum(pair.a.counters.values()) + sum(session.counters.values())
    assert counted >= 1 or session.state in (State.CLOSED, State.AUTH_SENT, State.INIT_SENT)
    assert session.state is not State.ESTABLISHED or bad == answer
