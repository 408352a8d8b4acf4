"""IKE SA rekeying (RFC 7296 section 2.18) behind the extensible NAT and in collision (section 2.8.2).

Behind the NAT the new IKE SA's SPIi must be a leased one (FIG. 8 step 801: the NAT demultiplexes inbound IKE
on SPIi), so the rekey waits for the spare lease, and a peer's rekey (which would make the peer's SPI the
SPIi) is answered TEMPORARY_FAILURE and redone by us. When both peers rekey at once, both end with the same
one new IKE SA holding the CHILD_SAs: the one created with the lowest of the four nonces is deleted by its
creator.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import pytest

from client_agent.agent_ike_shell import LeasedIke
from client_agent.ike.codec import SaPayload
from client_agent.ike.events import ChildDeleted, IkeClosed, SpiReleased
from client_agent.ike.registry import Notify
from client_agent.ike.session import IKE_SPI_WAIT, NONCE_LEN, IkeSession, State
from tests.unit.ike_pair import Pair, configs
from tests.unit.test_ike_session import carries_traffic_after_rekey

IKE = ("aes128gcm16-prfsha256-x25519",)


def established(**options) -> Pair:
    left, right = configs(ike=IKE, **options)
    pair = Pair(left, right)
    pair.start()
    pair.pump()
    return pair


def only(pair: Pair) -> tuple[IkeSession, IkeSession]:
    (a,), (b,) = pair.a.sessions.values(), pair.b.sessions.values()
    return a, b


def low_nonces() -> Callable[[int], bytes]:
    """Randomness whose nonces are 1, 2, 3...: lower than any random one, so this side's new IKE SA (whose
    Ni is the first) loses a collision."""
    count = itertools.count(1)
    return lambda n: next(count).to_bytes(n, "big") if n == NONCE_LEN else os.urandom(n)


def assert_one_shared_ike_sa_with_the_child(pair: Pair) -> tuple[IkeSession, IkeSession]:
    a, b = only(pair)
    assert (a.spi_i, a.spi_r) == (b.spi_i, b.spi_r) and a.keys == b.keys
    assert len(a.children) == len(b.children) == 1
    assert not [e for side in "ab" for e in pair.events[side] if isinstance(e, ChildDeleted | SpiReleased)]
    return a, b


@pytest.mark.parametrize("loser", ["a", "b"])
def test_simultaneous_ike_sa_rekeys_leave_one_new_sa_on_both_sides(loser):
    """Section 2.8.2: both rekey at once; the SA with the lowest nonce is deleted by its creator, the other
    one's creator deletes the old SA; both sides agree, the CHILD_SA lives on and can be rekeyed again."""
    pair = established()
    a, b = only(pair)
    (a if loser == "a" else b)._random = low_nonces()  # noqa: SLF001
    old = (a.spi_i, a.spi_r)
    pair.now = 1.0
    a.rekey_ike(1.0)
    b.rekey_ike(1.0)
    pair.pump()
    new_a, new_b = assert_one_shared_ike_sa_with_the_child(pair)
    assert (new_a.spi_i, new_a.spi_r) != old
    winner = b if loser == "a" else a
    assert new_a.initiator == (winner is a)  # the surviving SA is the one the winner created
    counters = pair.a.counters + pair.b.counters
    assert counters["ike_rekey_collision_won"] == counters["ike_rekey_collision_lost"] == 1
    for side in "ab":
        assert IkeClosed("rekeyed") in pair.events[side] and IkeClosed("rekey_collision") in pair.events[side]
    new_a.rekey_child(next(iter(new_a.children)), 2.0)
    pair.pump()
    carries_traffic_after_rekey(pair)
    assert len(only(pair)[1].children) == 1


def test_a_rekey_request_for_an_sa_being_closed_gets_temporary_failure():
    """Section 2.25.2: once our rekey is done the old SA is going; a late rekey of it is refused, not crashed."""
    pair = established()
    a, _ = only(pair)
    old_proposals = pair.left.ike_proposals
    a.rekey_ike(1.0)
    pair.pump()
    assert a.state is State.CLOSED
    answer = a._answer_ike_rekey(SaPayload(old_proposals), bytes(NONCE_LEN), [], 1.0)  # noqa: SLF001
    assert [p.type for p in answer] == [Notify.TEMPORARY_FAILURE]


def test_the_rekey_waits_for_its_leased_spi_then_uses_it():
    """FIG. 8 step 801 again: no held spare yet, the rekey is tried again later; then the spare is the SPIi."""
    pair = established(ike_rekey=10.0)
    a, _ = only(pair)
    spare = bytes.fromhex("1122334455667788")
    sources = iter([None, spare])
    a.ike_spi_source = lambda: next(sources)
    pair.now = 10.0
    pair.a.handle_timer(10.0)
    pair.pump()
    assert a.state is State.ESTABLISHED and a.counters["ike_rekey_waiting_for_spi"] == 1
    assert pair.a.get_timer() == 10.0 + IKE_SPI_WAIT
    pair.now = 10.0 + IKE_SPI_WAIT
    pair.a.handle_timer(pair.now)
    pair.pump()
    new_a, _ = assert_one_shared_ike_sa_with_the_child(pair)
    assert new_a.spi_i == spare and new_a.initiator


def test_behind_the_nat_a_peer_rekey_is_refused_and_redone_by_us_with_a_leased_spi():
    """The peer's rekey would make its SPI the SPIi, which the NAT cannot demultiplex: TEMPORARY_FAILURE
    (section 2.25), and we rekey at once with our spare lease."""
    pair = established(own_ike_rekeys=True)
    a, b = only(pair)
    spare = bytes.fromhex("0102030405060708")
    a.ike_spi_source = lambda: spare
    pair.now = 1.0
    b.rekey_ike(1.0)
    pair.pump()
    assert a.counters["refused_peer_ike_rekey"] == 1 and pair.a.get_timer() == 1.0
    pair.a.handle_timer(1.0)
    pair.pump()
    new_a, _ = assert_one_shared_ike_sa_with_the_child(pair)
    assert new_a.spi_i == spare and new_a.initiator
    assert pair.b.counters["ike_rekey_failed:TEMPORARY_FAILURE"] == 1


def test_the_spare_ike_spi_is_handed_out_only_once_held_and_replaced():
    held: set[int] = set()
    taken, released = [], []
    leased = LeasedIke("203.0.113.1", 0x1111, [], spare_spi_i=0x2222, ike_held=held.__contains__,
                       on_ike_spi_taken=lambda spi: taken.append(spi) or 0x3333,
                       on_ike_spi_released=released.append)
    assert leased.next_ike_spi() is None  # its lease is not granted yet
    held.add(0x2222)
    assert leased.next_ike_spi() == (0x2222).to_bytes(8, "big") and taken == [0x2222]
    assert leased.spare_spi_i == 0x3333 and leased.next_ike_spi() is None
    leased.ike_sa_gone((0x1111).to_bytes(8, "big"))
    assert released == [0x1111]


def test_the_spare_ike_spi_is_leased_with_the_first_one():
    from client_agent.agent_leases import ike_leases
    from tests.unit.test_agent_ike import NAT_H1, load

    wanted = ike_leases(load(NAT_H1), 0x1111, [(50, 0x1234)], 0x2222)
    assert [(w.info.protocol, w.info.global_gpn) for w in wanted] == [(17, 0x1111), (17, 0x2222), (50, 0x1234)]
    assert wanted[1].info.port == 500 and wanted[1].label == "IKE SPI 0x0000000000002222"


def test_a_child_rekey_queued_behind_an_ike_sa_rekey_runs_on_the_new_sa():
    """Window of one (section 2.3): the CHILD_SA's timer fires while the IKE SA rekey is in flight; once the
    child has moved to the new IKE SA (section 2.18) it is rekeyed there, not forgotten."""
    pair = established(child_rekey=6.0, ike_rekey=5.0)
    pair.now = 5.0
    pair.a.handle_timer(5.0)  # the IKE SA rekey goes out
    pair.now = 6.0
    pair.a.handle_timer(6.0)  # the child's timer: its rekey waits behind the IKE SA's
    pair.pump()
    assert pair.a.get_timer() == 6.0  # due at once on the new IKE SA
    pair.a.handle_timer(6.0)
    pair.pump()
    new_a, new_b = only(pair)
    assert len(pair.children("a")) == 2 and len(new_a.children) == len(new_b.children) == 1
    assert next(iter(new_a.children.values())).rekey_at == 12.0
    carries_traffic_after_rekey(pair)


@pytest.mark.parametrize("loser", ["a", "b"])
@pytest.mark.parametrize("esp", ["aes128gcm16", "aes128gcm16-ecp256"])
def test_simultaneous_child_sa_rekeys_leave_one_new_pair_on_both_sides(loser, esp):
    """Section 2.8.1: both rekey the CHILD_SA at once; the new pair with the lowest nonce is deleted by its
    creator, the old pair by both; one pair is left, the same on both sides, and it carries traffic."""
    pair = established(esp=(esp,))
    a, b = only(pair)
    (a if loser == "a" else b)._random = low_nonces()  # noqa: SLF001
    (old_a,), (old_b,) = a.children.values(), b.children.values()
    pair.now = 1.0
    a.rekey_child(old_a.inbound_spi, 1.0)
    b.rekey_child(old_b.inbound_spi, 1.0)
    pair.pump()
    (new_a,), (new_b,) = a.children.values(), b.children.values()
    assert (new_a.inbound_spi, new_a.outbound_spi) == (new_b.outbound_spi, new_b.inbound_spi)
    assert old_a.inbound_spi not in a.children and len(pair.children("a")) == 3  # the old and two new ones
    counters = a.counters + b.counters
    assert counters["child_rekey_collision_won"] == counters["child_rekey_collision_lost"] == 1
    winner = b if loser == "a" else a
    assert winner.counters["child_rekey_collision_won"] == 1
    a_keys = (new_a.encr_out, new_a.integ_out, new_a.encr_in)
    assert a_keys == (new_b.encr_in, new_b.integ_in, new_b.encr_out)
