"""natlab's IKEv2 initiator against its responder, in memory (RFC 7296): every transform, mode and protocol.

The keys both sides derive must protect a real packet with the existing ESP/AH
code in one direction and open it in the other; the exchanges' corner cases
(COOKIE, INVALID_KE_PAYLOAD, retransmission, the window of one, Delete,
liveness, CHILD_SA rekey, bad PSK, narrowing) each have their own test.
"""

from __future__ import annotations

import itertools

import pytest
from scapy.layers.inet import IP, TCP

from client_agent.ike.codec import NotifyPayload, decode_message, encode_message
from client_agent.ike.events import ChildDeleted, ChildEstablished, ChildFailed, IkeClosed, SpiReleased
from client_agent.ike.keyfile import security_associations
from client_agent.ike.registry import ExchangeType, Notify
from client_agent.ike.session import State
from client_agent.ipsec.processing import decapsulate, encapsulate
from client_agent.ipsec.sa import SAState
from client_agent.ipsec.sad import SAD
from tests.unit.ike_pair import H1, SRV, Pair, configs

IKE_SUITES = [
    "-".join(c) for c in itertools.product(("aes128", "aes256"), ("sha1", "sha256"), ("modp2048", "ecp256", "x25519"))
] + [f"{e}-prf{p}-{g}" for e, p, g in itertools.product(("aes128gcm16", "aes256gcm16"), ("sha1", "sha256"),
                                                        ("ecp256", "x25519"))]
ESP_SUITES = ["aes128-sha1", "aes256-sha256", "aes128gcm16", "aes256gcm16"]
AH_SUITES = ["sha1", "sha256"]


def established_pair(**options) -> Pair:
    left, right = configs(**options)
    pair = Pair(left, right)
    pair.start()
    pair.pump()
    return pair


def carries_traffic(pair: Pair) -> None:
    """A TCP packet protected with h1's outbound child SA opens with srv1's inbound one, and back."""
    (a,), (b,) = pair.children("a"), pair.children("b")
    a_in, a_out = security_associations(a, H1[0], SRV[0])
    b_in, b_out = security_associations(b, SRV[0], H1[0])
    for sender, receiver, src, dst in ((a_out, b_in, H1[0], SRV[0]), (b_out, a_in, SRV[0], H1[0])):
        packet = bytes(IP(src=src, dst=dst) / TCP(sport=40000, dport=80) / b"GET / HTTP/1.0")
        if sender.mode.value == "tunnel":
            packet = bytes(IP(src=src, dst=dst) / TCP(sport=40000, dport=80) / b"GET / HTTP/1.0")
        sad = SAD()
        sad.add_inbound(receiver)
        assert decapsulate(encapsulate(packet, SAState(sender)), sad).packet == packet


@pytest.mark.parametrize("ike", IKE_SUITES)
def test_ike_sa_established_with_every_ike_suite(ike):
    pair = established_pair(ike=(ike,), esp=("aes128-sha256",))
    (a,), (b,) = pair.established("a"), pair.established("b")
    assert (a.spi_i, a.spi_r, a.keys) == (b.spi_i, b.spi_r, b.keys)
    carries_traffic(pair)


@pytest.mark.parametrize(("protocol", "suite", "mode"),
                         [("esp", s, m) for s in ESP_SUITES for m in ("transport", "tunnel")]
                         + [("ah", s, m) for s in AH_SUITES for m in ("transport", "tunnel")])
def test_child_sa_for_every_protocol_suite_and_mode(protocol, suite, mode):
    options = {"esp": (suite,), "ah": ()} if protocol == "esp" else {"esp": (), "ah": (suite,)}
    pair = established_pair(mode=mode, **options)
    (a,), (b,) = pair.children("a"), pair.children("b")
    assert (a.protocol.name.lower(), a.mode, b.mode) == (protocol, mode, mode)
    assert (a.inbound_spi, a.outbound_spi) == (b.outbound_spi, b.inbound_spi)
    assert (a.encr_out, a.integ_out) == (b.encr_in, b.integ_in)
    carries_traffic(pair)


@pytest.mark.parametrize("identity", ["h1.natlab", "user@h1.natlab", "10.0.0.1"])
def test_identities_of_every_type_authenticate(identity):
    left, right = configs()
    left = type(left).build(local_id=identity, psk=left.psk, local_ts=("10.0.0.1",), remote_ts=("203.0.113.100",))
    right = type(right).build(local_id="srv1.natlab", remote_id=identity, psk=right.psk,
                              local_ts=("203.0.113.100",), remote_ts=("10.0.0.0/24",))
    pair = Pair(left, right)
    pair.start()
    pair.pump()
    assert pair.established("b")[0].peer_id.endswith(identity)


def test_wrong_psk_fails_authentication_on_both_sides():
    left, right = configs()
    right = type(right).build(local_id="srv1.natlab", remote_id="h1.natlab", psk=b"another secret 123",
                              local_ts=("203.0.113.100",), remote_ts=("10.0.0.0/24",))
    pair = Pair(left, right)
    session = pair.start()
    pair.pump()
    assert session.state is State.CLOSED
    assert IkeClosed("peer_refused:AUTHENTICATION_FAILED") in pair.events["a"]
    assert any(isinstance(e, IkeClosed) and e.reason.startswith("authentication_failed") for e in pair.events["b"])
    assert any(isinstance(e, SpiReleased) for e in pair.events["a"])  # the proposed inbound SPI goes back


def test_responder_narrows_traffic_selectors():
    """Section 2.9: h1 asks for 10.0.0.0/24 <-> anything; srv1 allows only 10.0.0.1 <-> itself, TCP."""
    left, right = configs()
    left = type(left).build(local_id="h1.natlab", psk=left.psk, local_ts=("10.0.0.0/24",), remote_ts=("0.0.0.0/0",))
    right = type(right).build(local_id="srv1.natlab", psk=right.psk, local_ts=("203.0.113.100[tcp]",),
                              remote_ts=("10.0.0.1",))
    pair = Pair(left, right)
    pair.start()
    pair.pump()
    (child,) = pair.children("a")
    assert [(str(t.start), str(t.end), t.ip_protocol) for t in child.local_ts] == [("10.0.0.1", "10.0.0.1", 0)]
    assert [(str(t.start), str(t.end), t.ip_protocol) for t in child.remote_ts] == [
        ("203.0.113.100", "203.0.113.100", 6)]


def test_disjoint_selectors_refuse_the_child_but_keep_the_ike_sa():
    left, right = configs()
    right = type(right).build(local_id="srv1.natlab", psk=right.psk, local_ts=("203.0.113.100",),
                              remote_ts=("192.0.2.0/24",))
    pair = Pair(left, right)
    session = pair.start()
    pair.pump()
    assert session.state is State.ESTABLISHED
    assert ChildFailed("TS_UNACCEPTABLE") in pair.events["a"]
    assert not pair.children("a")


def test_no_common_proposal_is_refused_statelessly():
    left, right = configs(ike=("aes128-sha256-modp2048",))
    right = type(right).build(local_id="srv1.natlab", psk=right.psk, ike=("aes256-sha1-ecp256",))
    pair = Pair(left, right)
    session = pair.start()
    pair.pump()
    assert IkeClosed("peer_refused:NO_PROPOSAL_CHOSEN") in pair.events["a"]
    assert session.state is State.CLOSED and not pair.b.sessions
    assert pair.b.counters["no_proposal_chosen"] == 1


def test_invalid_ke_payload_names_the_group_and_the_initiator_retries_with_it():
    """Section 1.2: h1 guesses MODP-2048, srv1 only takes Curve25519; the retry keeps the (leased) SPIi."""
    left, right = configs(ike=("aes128-sha256-modp2048", "aes128-sha256-x25519"))
    right = type(right).build(local_id="srv1.natlab", psk=right.psk, ike=("aes128-sha256-x25519",),
                              local_ts=("203.0.113.100",), remote_ts=("10.0.0.0/24",))
    pair = Pair(left, right)
    session = pair.start(spi=bytes.fromhex("00000000deadbeef"))
    pair.pump()
    assert session.state is State.ESTABLISHED and session.suite.dh == 31
    assert session.spi_i == bytes.fromhex("00000000deadbeef")
    assert pair.b.counters["invalid_ke_payload"] == 1 and session.counters["invalid_ke_payload"] == 1


def test_cookie_demanded_under_load_and_answered():
    """Section 2.6: with the threshold at 0 every new IKE_SA_INIT must echo the responder's cookie."""
    left, right = configs()
    pair = Pair(left, right)
    pair.b.cookie_threshold = 0
    session = pair.start()
    pair.pump()
    assert session.state is State.ESTABLISHED
    assert pair.b.counters["cookie_demanded"] == 1 and session.counters["cookie_requested"] == 1
    first, second = [decode_message(d)[1] for side, d in pair.wire if side == "a"][:2]
    assert not isinstance(first[0], NotifyPayload) and second[0].type == Notify.COOKIE  # the cookie comes first


def test_forged_cookie_is_refused():
    left, right = configs()
    pair = Pair(left, right)
    pair.b.cookie_threshold = 0
    pair.start()
    (request, _), = pair.a.datagrams_to_send()
    pair.b.receive_datagram(request, H1, 0.0)
    (reply, _), = pair.b.datagrams_to_send()
    (cookie,) = decode_message(reply)[1]
    header, original = decode_message(request)
    bad = NotifyPayload(Notify.COOKIE, cookie.data[:-1] + bytes([cookie.data[-1] ^ 1]))  # right length, wrong value
    forged = encode_message(header, [bad, *original])
    pair.b.receive_datagram(forged, H1, 0.0)
    assert pair.b.counters["bad_cookie"] == 1 and not pair.b.sessions


def test_lost_requests_are_retransmitted_with_backoff_then_given_up():
    """Section 2.1: 1, 2, 4, 8 s between the 5 sends, then the SA is abandoned."""
    left, right = configs()
    pair = Pair(left, right)
    session = pair.start()
    sent = [0.0]
    pair.a.datagrams_to_send()
    while session.state is not State.CLOSED:
        deadline = pair.a.get_timer()
        pair.a.handle_timer(deadline)
        if pair.a.datagrams_to_send():
            sent.append(deadline)
    assert sent == [0.0, 1.0, 3.0, 7.0, 15.0]
    assert [e for _, e in pair.a.next_events()] == [IkeClosed("peer_not_responding")]


def test_a_lost_response_is_recovered_by_the_cached_answer():
    """The IKE_AUTH response is lost once: the retransmitted request gets the same bytes back, counted."""
    left, right = configs()
    pair = Pair(left, right)
    session = pair.start()
    lost = []

    def drop(side, data):
        header, _ = decode_message(data)
        if side == "b" and header.exchange == ExchangeType.IKE_AUTH and not lost:
            lost.append(data)
            return True
        return False

    pair.pump(drop)
    assert session.state is State.AUTH_SENT
    pair.now = pair.a.get_timer()
    pair.a.handle_timer(pair.now)
    pair.pump()
    assert session.state is State.ESTABLISHED
    assert pair.wire[-1][1] == lost[0]
    assert sum(s.counters["retransmitted_request"] for s in pair.b.sessions.values()) == 1


def test_out_of_window_and_replayed_requests_are_dropped():
    pair = established_pair()
    a = next(iter(pair.a.sessions.values()))
    b = next(iter(pair.b.sessions.values()))
    a.check_liveness(1.0)
    (probe, _), = pair.a.datagrams_to_send()
    a._my_mid = 7  # noqa: SLF001 - forge a request beyond the window
    a._pending = None  # noqa: SLF001
    a.check_liveness(1.0)
    (ahead, _), = pair.a.datagrams_to_send()
    b.receive_datagram(ahead, H1, 1.0)
    assert b.counters["dropped:out_of_window"] == 1 and not b.datagrams_to_send()
    b.receive_datagram(probe, H1, 1.0)
    assert len(b.datagrams_to_send()) == 1
    b.receive_datagram(probe, H1, 1.0)  # a replay of an answered request gets the cached answer, nothing new
    assert b.counters["retransmitted_request"] == 1


def test_liveness_check_is_answered():
    pair = established_pair(liveness=10.0)
    a = next(iter(pair.a.sessions.values()))
    assert pair.a.get_timer() == 10.0
    pair.now = 10.0
    pair.a.handle_timer(10.0)
    pair.pump()
    exchanges = [decode_message(d)[0].exchange for _, d in pair.wire[-2:]]
    assert exchanges == [ExchangeType.INFORMATIONAL] * 2 and a.state is State.ESTABLISHED
    assert pair.a.get_timer() == 20.0


def test_delete_child_releases_spis_on_both_sides():
    pair = established_pair()
    (child,) = pair.children("a")
    session = next(iter(pair.a.sessions.values()))
    session.delete_child(child.inbound_spi, 1.0)
    pair.pump()
    assert ChildDeleted(child) in pair.events["a"]
    assert SpiReleased(child.protocol, child.inbound_spi) in pair.events["a"]
    (peer_child,) = pair.children("b")
    assert SpiReleased(peer_child.protocol, peer_child.inbound_spi) in pair.events["b"]
    assert not session.children and not next(iter(pair.b.sessions.values())).children


def test_delete_ike_sa_closes_both_sides():
    pair = established_pair()
    session = next(iter(pair.a.sessions.values()))
    session.close(1.0)
    pair.pump()
    assert IkeClosed("deleted") in pair.events["a"] and IkeClosed("deleted_by_peer") in pair.events["b"]
    assert not pair.a.sessions and not pair.b.sessions


def test_child_rekey_before_lifetime_replaces_and_releases_the_old_spis():
    """Section 1.3.3 and 2.8: new pair first, then the old one deleted; new keys differ, old SPIs released."""
    pair = established_pair(child_rekey=5.0)
    (old,) = pair.children("a")
    (peer_old,) = pair.children("b")
    assert pair.a.get_timer() == 5.0
    pair.now = 5.0
    pair.a.handle_timer(5.0)
    pair.pump()
    new = pair.children("a")[-1]
    rekeyed = [e for e in pair.events["a"] if isinstance(e, ChildEstablished) and e.replaces is not None]
    assert rekeyed and rekeyed[0].replaces == old
    assert new.inbound_spi != old.inbound_spi and new.encr_in != old.encr_in
    assert SpiReleased(old.protocol, old.inbound_spi) in pair.events["a"]
    assert SpiReleased(peer_old.protocol, peer_old.inbound_spi) in pair.events["b"]
    session = next(iter(pair.a.sessions.values()))
    assert list(session.children) == [new.inbound_spi]
    assert new.rekey_at == 10.0
    carries_traffic_after_rekey(pair)


def carries_traffic_after_rekey(pair: Pair) -> None:
    a = pair.children("a")[-1]
    b = pair.children("b")[-1]
    assert (a.inbound_spi, a.outbound_spi) == (b.outbound_spi, b.inbound_spi)
    assert (a.encr_out, a.integ_out, a.encr_in) == (b.encr_in, b.integ_in, b.encr_out)


def test_ike_sa_rekey_without_a_new_spi_is_refused_not_crashed():
    """An IKE proposal in CREATE_CHILD_SA must carry the new 8-byte SPI (section 1.3.2): NO_PROPOSAL_CHOSEN."""
    from client_agent.ike.codec import KePayload, NoncePayload, SaPayload
    from client_agent.ike.crypto import ModpKeyExchange

    pair = established_pair()
    a = next(iter(pair.a.sessions.values()))
    ke = ModpKeyExchange()
    a._request(ExchangeType.CREATE_CHILD_SA,  # noqa: SLF001
               [SaPayload(pair.left.ike_proposals), NoncePayload(bytes(32)), KePayload(14, ke.public)],
               lambda h, p, t: pair.events["a"].append(("answer", [x.type for x in p])), 1.0)
    pair.pump()
    assert ("answer", [Notify.NO_PROPOSAL_CHOSEN]) in pair.events["a"]
    assert a.state is State.ESTABLISHED


def test_ike_sa_rekey_moves_the_child_sas_to_the_new_sa_and_deletes_the_old():
    """Section 2.18: new SPIs and keys from SK_d(old) and a fresh DH; the CHILD_SAs live on; the old SA goes."""
    pair = established_pair(ike=("aes128gcm16-prfsha256-x25519",), ike_rekey=10.0)
    old_a = next(iter(pair.a.sessions.values()))
    (old_keys,) = [e.keys for e in pair.established("a")]
    (child,) = pair.children("a")
    assert pair.a.get_timer() == 10.0
    pair.now = 10.0
    pair.a.handle_timer(10.0)
    pair.pump()
    assert old_a.state is State.CLOSED and IkeClosed("rekeyed") in pair.events["a"]
    assert IkeClosed("rekeyed") in pair.events["b"]
    (new_a,), (new_b,) = pair.a.sessions.values(), pair.b.sessions.values()
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r) != (old_a.spi_i, old_a.spi_r)
    assert new_a.keys == new_b.keys and new_a.keys != old_keys
    assert list(new_a.children) == [child.inbound_spi] and len(new_b.children) == 1
    assert not [e for side in "ab" for e in pair.events[side] if isinstance(e, ChildDeleted | SpiReleased)]
    new_a.check_liveness(11.0)
    pair.pump()
    assert new_a.state is State.ESTABLISHED and not new_a._pending  # noqa: SLF001 - the new SA answers
    assert pair.a.get_timer() == 20.0  # and rekeys again in its turn
