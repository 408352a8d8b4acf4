"""PFS for CHILD_SAs (RFC 7296 sections 1.3.1, 1.3.2, 2.17): KE in CREATE_CHILD_SA, KEYMAT from the new g^ir,
INVALID_KE_PAYLOAD answered with the right group, and every way a peer can get the KE wrong refused, never crashed.

The KEYMAT is checked against an independent prf+ (hashlib/hmac, not :mod:`client_agent.ike.crypto`), fed with
the g^ir and nonces the session used, so the order g^ir | Ni | Nr is judged by this file, not by the code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_agent.agent_ike import parse_ike
from client_agent.ike import crypto
from client_agent.ike.codec import KePayload, NotifyPayload, Proposal, Transform
from client_agent.ike.config import IkeConfig
from client_agent.ike.events import ChildFailed
from client_agent.ike.pfs import dh_group, initiator_problem, offered_groups, prefer_group, without_dh
from client_agent.ike.proposals import parse_proposal
from client_agent.ike.registry import DhGroup, ExchangeType, Notify, ProtocolId, TransformType
from client_agent.ike.session import NONCE_LEN, IkeSession, State
from netwire.ipv4 import UDP_HEADER_LEN
from tests.unit.ike_pair import Pair, configs
from tests.unit.test_ike_session import carries_traffic_after_rekey

PFS_ESP = "aes128gcm16-ecp256"


def pair_with(left_esp: tuple[str, ...], right_esp: tuple[str, ...], **options) -> Pair:
    """An established pair whose two sides have their own CHILD_SA proposals."""
    left, right = configs(esp=left_esp, **options)
    right = dataclasses.replace(right, child_proposals=IkeConfig.build(local_id="x.natlab", psk=right.psk,
                                                                       esp=right_esp).child_proposals)
    pair = Pair(left, right)
    pair.start()
    pair.pump()
    return pair


def sessions(pair: Pair) -> tuple[IkeSession, IkeSession]:
    (a,), (b,) = pair.a.sessions.values(), pair.b.sessions.values()
    return a, b


def rekey(pair: Pair, side: str = "a") -> None:
    a, b = sessions(pair)
    session = a if side == "a" else b
    pair.now += 1
    session.rekey_child(next(iter(session.children)), pair.now)
    pair.pump()


def request(pair: Pair, payloads) -> list:
    """Send ``payloads`` as a CREATE_CHILD_SA request from h1; the responder's answer payloads come back."""
    a, _ = sessions(pair)
    answers: list = []
    a._request(ExchangeType.CREATE_CHILD_SA, payloads, lambda h, p, t: answers.append(p), pair.now)  # noqa: SLF001
    pair.pump()
    assert len(answers) == 1
    return answers[0]


def rekey_payloads(pair: Pair, ke: KePayload | None, *extra) -> list:
    a, _ = sessions(pair)
    old = next(iter(a.children.values()))
    payloads = a._child_request_payloads(ExchangeType.CREATE_CHILD_SA, nonce=bytes(range(NONCE_LEN)),  # noqa: SLF001
                                         rekey=old, ke=ke)
    return [*payloads[:-2], *extra, *payloads[-2:]]


def independent_prf_plus(key: bytes, seed: bytes, length: int) -> bytes:
    out, block, n = b"", b"", 1
    while len(out) < length:
        block = hmac.new(key, block + seed + bytes([n]), hashlib.sha256).digest()
        out, n = out + block, n + 1
    return out[:length]


def test_child_rekey_with_pfs_derives_keymat_from_the_new_shared_secret(monkeypatch):
    """Section 2.17: KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr), the same g^ir on both sides, i-to-r keys first."""
    calls: list[tuple] = []
    real = crypto.child_keymat

    def spy(prf_id, sk_d, ni, nr, length, shared=b""):
        calls.append((sk_d, ni, nr, length, shared))
        return real(prf_id, sk_d, ni, nr, length, shared)

    monkeypatch.setattr(crypto, "child_keymat", spy)
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    first_a, first_b = pair.children("a")[0], pair.children("b")[0]
    assert first_a.suite.dh is None and first_b.suite.dh is None  # IKE_AUTH has no KE (section 1.2)
    assert [c[4] for c in calls] == [b"", b""]
    rekey(pair)
    new_a, new_b = pair.children("a")[-1], pair.children("b")[-1]
    assert new_a.suite.dh == new_b.suite.dh == DhGroup.ECP_256
    (sk_d, ni, nr, length, shared_a), (_, _, _, _, shared_b) = calls[2:]
    assert len(shared_a) == 32 and shared_a == shared_b  # ECP-256: the x coordinate (RFC 5903 section 7)
    keymat = independent_prf_plus(sk_d, shared_a + ni + nr, length)
    assert new_a.encr_out == keymat[: length // 2] and new_a.encr_in == keymat[length // 2:]
    assert keymat != independent_prf_plus(sk_d, ni + nr, length)
    carries_traffic_after_rekey(pair)
    assert [c.inbound_spi for c in sessions(pair)[0].children.values()] == [new_a.inbound_spi]


def test_ike_auth_proposals_carry_no_dh_transform_but_create_child_sa_ones_do():
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    a, _ = sessions(pair)
    auth = [p for p in a._child_request_payloads(ExchangeType.IKE_AUTH) if hasattr(p, "proposals")]  # noqa: SLF001
    create = [p for p in a._child_request_payloads(ExchangeType.CREATE_CHILD_SA) if hasattr(p, "proposals")]  # noqa: SLF001
    assert not auth[0].proposals[0].of_type(TransformType.DH)
    assert [t.id for t in create[0].proposals[0].of_type(TransformType.DH)] == [DhGroup.ECP_256]


def test_the_responder_may_rekey_with_pfs_too():
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    rekey(pair, side="b")
    assert pair.children("a")[-1].suite.dh == DhGroup.ECP_256
    carries_traffic_after_rekey(pair)


def test_invalid_ke_payload_names_the_group_and_the_rekey_is_retried_in_it_with_the_same_spis():
    """Section 1.3: h1 offers ECP-256 or Curve25519 and sends KEi in ECP-256; srv1 takes only Curve25519."""
    pair = pair_with(("aes128gcm16-ecp256-x25519",), ("aes128gcm16-x25519",))
    a, b = sessions(pair)
    rekey(pair)
    new = pair.children("a")[-1]
    assert new.suite.dh == DhGroup.CURVE25519 and len(pair.children("a")) == 2
    assert a.counters["child_invalid_ke_payload"] == 1 and b.counters["refused_child_sa:invalid_ke_payload"] == 1
    assert ChildFailed("invalid_ke_payload") in pair.events["b"]
    carries_traffic_after_rekey(pair)


def test_the_responder_picks_the_ke_group_among_several_it_accepts():
    pair = pair_with(("aes128gcm16-x25519-ecp256",), ("aes128gcm16-ecp256-x25519",))
    rekey(pair)
    assert pair.children("a")[-1].suite.dh == DhGroup.CURVE25519
    assert not sessions(pair)[1].counters["refused_child_sa:invalid_ke_payload"]


def test_no_common_group_is_refused_with_no_proposal_chosen_and_the_old_child_kept():
    pair = pair_with(("aes128gcm16-ecp256",), ("aes128gcm16-modp2048",))
    (old,) = pair.children("a")
    rekey(pair)
    a, b = sessions(pair)
    assert ChildFailed("NO_PROPOSAL_CHOSEN") in pair.events["a"] and ChildFailed("NO_PROPOSAL_CHOSEN") in pair.events["b"]
    assert list(a.children) == [old.inbound_spi] and a.state is State.ESTABLISHED


def test_a_rekey_without_pfs_is_refused_where_policy_requires_it():
    """No silent downgrade: srv1 requires ECP-256, h1 offers no group: NO_PROPOSAL_CHOSEN, counted."""
    pair = pair_with(("aes128gcm16",), (PFS_ESP,))
    rekey(pair)
    _, b = sessions(pair)
    assert b.counters["refused_child_sa:pfs_required"] == 1
    assert ChildFailed("NO_PROPOSAL_CHOSEN") in pair.events["a"]


@pytest.mark.parametrize(("value", "reason"), [
    (b"\x01" * 63, "bad_ke_value"),  # ECP-256 takes 64 bytes (RFC 5903 section 7)
    (b"", "bad_ke_value"),
    (bytes(64), "bad_ke_value"),  # not a point on the curve
])
def test_a_ke_of_the_wrong_length_or_off_the_curve_is_refused_with_invalid_syntax(value, reason):
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    answer = request(pair, rekey_payloads(pair, KePayload(DhGroup.ECP_256, value)))
    a, b = sessions(pair)
    assert [p.type for p in answer] == [Notify.INVALID_SYNTAX]
    assert b.counters[f"refused_child_sa:{reason}"] == 1 and b.state is State.ESTABLISHED
    assert len(b.children) == 1 and len(pair.children("b")) == 1


@pytest.mark.parametrize("group", [DhGroup.CURVE25519, DhGroup.MODP_2048, 999])
def test_a_ke_in_a_group_the_chosen_proposal_lacks_gets_invalid_ke_payload_naming_ours(group):
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    answer = request(pair, rekey_payloads(pair, KePayload(group, bytes(32))))
    assert [(p.type, p.data) for p in answer] == [(Notify.INVALID_KE_PAYLOAD, DhGroup.ECP_256.to_bytes(2, "big"))]
    assert sessions(pair)[1].state is State.ESTABLISHED


def test_a_missing_ke_where_the_proposal_names_a_group_gets_invalid_ke_payload():
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    answer = request(pair, rekey_payloads(pair, None))
    assert [(p.type, p.data) for p in answer] == [(Notify.INVALID_KE_PAYLOAD, DhGroup.ECP_256.to_bytes(2, "big"))]


def test_a_ke_without_pfs_configured_is_refused_with_no_proposal_chosen():
    pair = pair_with(("aes128gcm16",), ("aes128gcm16",))
    answer = request(pair, rekey_payloads(pair, KePayload(DhGroup.ECP_256, crypto.EcpKeyExchange().public)))
    assert [p.type for p in answer] == [Notify.NO_PROPOSAL_CHOSEN]
    assert sessions(pair)[1].counters["refused_child_sa:ke_without_pfs"] == 1


def test_two_ke_payloads_are_refused_with_invalid_syntax():
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    ke = KePayload(DhGroup.ECP_256, crypto.EcpKeyExchange().public)
    answer = request(pair, rekey_payloads(pair, ke, ke))
    assert [p.type for p in answer] == [Notify.INVALID_SYNTAX]


def test_invalid_ke_payload_for_a_group_we_never_offered_fails_the_rekey_without_a_retry():
    pair = pair_with((PFS_ESP,), (PFS_ESP,))
    a, _ = sessions(pair)
    answer = [NotifyPayload(Notify.INVALID_KE_PAYLOAD, DhGroup.MODP_2048.to_bytes(2, "big"))]
    assert a._child_group_wanted(answer, DhGroup.ECP_256, 0) is None  # noqa: SLF001
    assert a.counters["child_invalid_ke_group:14"] == 1
    assert a._child_group_wanted([NotifyPayload(Notify.INVALID_KE_PAYLOAD, b"\x00")], 19, 0) is None  # noqa: SLF001


# ---------------------------------------------------------------- the rules, one by one

ESP_ECP = parse_proposal(PFS_ESP, ProtocolId.ESP)
ESP_PLAIN = parse_proposal("aes128gcm16", ProtocolId.ESP)


def chosen(proposal: Proposal, group: int | None) -> Proposal:
    transforms = tuple(t for t in proposal.transforms if t.type != TransformType.DH)
    extra = (Transform(TransformType.DH, group),) if group is not None else ()
    return Proposal(proposal.number, proposal.protocol, b"\0\0\1\0", transforms + extra)


@pytest.mark.parametrize(("answer", "sent", "ke", "problem"), [
    (chosen(ESP_ECP, None), DhGroup.ECP_256, None, "pfs_dropped_by_responder"),
    (chosen(ESP_ECP, DhGroup.CURVE25519), DhGroup.ECP_256, KePayload(31, bytes(32)), "ke_group_mismatch"),
    (chosen(ESP_ECP, DhGroup.ECP_256), DhGroup.ECP_256, None, "need_one_KePayload"),
    (chosen(ESP_ECP, DhGroup.ECP_256), DhGroup.ECP_256, KePayload(31, bytes(32)), "need_one_KePayload"),
    (chosen(ESP_PLAIN, None), None, KePayload(19, bytes(64)), "unexpected_ke"),
    (chosen(ESP_ECP, DhGroup.ECP_256), DhGroup.ECP_256, KePayload(19, bytes(64)), None),
    (chosen(ESP_PLAIN, None), None, None, None),
])
def test_the_initiator_refuses_answers_that_drop_or_change_the_group(answer, sent, ke, problem):
    offered = (ESP_PLAIN,) if sent is None else (ESP_ECP,)
    assert initiator_problem(answer, offered, sent, ke) == problem


def test_proposal_helpers():
    both = parse_proposal("aes128gcm16-ecp256-x25519", ProtocolId.ESP)
    assert offered_groups((both, ESP_PLAIN)) == [DhGroup.ECP_256, DhGroup.CURVE25519]
    assert [t.id for t in prefer_group((both,), DhGroup.CURVE25519)[0].of_type(TransformType.DH)] == [31, 19]
    assert not without_dh((both,))[0].of_type(TransformType.DH) and dh_group(ESP_PLAIN) is None
    assert dh_group(chosen(ESP_ECP, 0)) is None  # NONE is no group


def test_the_agent_config_accepts_an_esp_proposal_with_a_group():
    table = parse_ike({"role": "initiator", "peer": "203.0.113.100", "local_id": "h1.natlab", "psk": "12345678",
                       "esp": [PFS_ESP], "local_ts": ["10.0.0.1/32"], "remote_ts": ["203.0.113.100/32"]})
    (proposal,) = table.config().child_proposals
    assert dh_group(proposal) == DhGroup.ECP_256
    assert table.largest_overhead(lambda sa: 1) == 1 + UDP_HEADER_LEN  # room for NAT-T's UDP header (RFC 3948)


@pytest.mark.parametrize(("protocol", "proposal", "mode"), [("ah", "sha256-modp2048", "transport"),
                                                            ("esp", "aes256-sha256-x25519", "tunnel")])
def test_pfs_rekeys_ah_and_tunnel_mode_children_too(protocol, proposal, mode):
    options = {"esp": (), "ah": (proposal,)} if protocol == "ah" else {"esp": (proposal,), "ah": ()}
    left, right = configs(mode=mode, **options)
    pair = Pair(left, right)
    pair.start()
    pair.pump()
    rekey(pair)
    new = pair.children("a")[-1]
    assert new.protocol.name.lower() == protocol and new.mode == mode and new.suite.dh is not None
    carries_traffic_after_rekey(pair)


@settings(max_examples=30, deadline=None)
@given(group=st.sampled_from([0, 1, 14, 19, 31, 65535]) | st.integers(0, 65535),
       value=st.binary(max_size=300), twice=st.booleans())
def test_any_ke_in_a_rekey_request_is_answered_never_crashes(group, value, twice):
    """Hostile KE payloads (any group, any bytes, one or two of them): answered with one error notify (random
    bytes are not a point on the curve); the responder stays established and keeps its old child."""
    pair = pair_with((PFS_ESP,), (PFS_ESP,), ike=("aes128gcm16-prfsha256-x25519",))
    ke = KePayload(group, value)
    answer = request(pair, rekey_payloads(pair, ke, *([ke] if twice else [])))
    _, b = sessions(pair)
    kinds = [type(p).__name__ for p in answer]
    assert b.state is State.ESTABLISHED and len(b.children) >= 1
    assert kinds == ["NotifyPayload"] and answer[0].type in {
        Notify.INVALID_KE_PAYLOAD, Notify.INVALID_SYNTAX, Notify.NO_PROPOSAL_CHOSEN}, kinds
