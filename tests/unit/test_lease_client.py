"""The sans-IO lease client (client_agent.lease_client), driven by a fake clock and a fake NAT.

RFC 6887's client rules: retransmission (8.1.1), renewal at 1/2-5/8 of the
lifetime and after (11.2.1), the epoch check and re-leasing after a NAT
restart (8.5), release by lifetime 0 (15), and response matching (11.4, 12.3).
"""

from __future__ import annotations

import ast
import dataclasses
import random
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import client_agent.lease_client as lc
from client_agent.lease_client import (
    MRT,
    Expired,
    Granted,
    Lease,
    LeaseClient,
    Refused,
    ServerRestarted,
    TimedOut,
)
from netwire import pcp
from netwire.pcp import Opcode, Result
from netwire.plan import GATEWAY_IP

A, B, GW, SRV = "10.0.0.1", "10.0.0.2", GATEWAY_IP, "203.0.113.100"
ESP_LEASE = pcp.LeaseInfo(b"", 50, None, None, None, SRV)


class FakeNat:
    """Answers as the NAT would: unspecified values chosen, the epoch counted from ``started``."""

    def __init__(self, started: float = 0.0) -> None:
        self.started = started
        self.next_gpn = 0x1000

    def epoch(self, now: float) -> int:
        return int(now - self.started)

    def answer(self, datagram: bytes, now: float, *, result: Result = Result.SUCCESS, lifetime: int | None = None,
               nonce: bytes | None = None, **changes) -> bytes:
        request = pcp.decode_request(datagram)
        info = request.info
        if result is not Result.SUCCESS:
            return pcp.encode_response(pcp.Response(request.opcode, result, pcp.error_lifetime(result),
                                                    self.epoch(now), info))
        if isinstance(info, pcp.LeaseInfo):
            gpn = info.global_gpn if info.global_gpn is not None else self._gpn()
            info = dataclasses.replace(info, global_gpn=gpn, private_gpn=info.private_gpn or gpn,
                                       global_ip=info.global_ip or "203.0.113.1")
        elif isinstance(info, pcp.MapInfo | pcp.PeerInfo) and request.lifetime:
            info = dataclasses.replace(info, external_port=info.external_port or self._gpn(),
                                       external_ip=info.external_ip or "203.0.113.1")
        if info is not None:
            info = dataclasses.replace(info, nonce=nonce or info.nonce, **changes)
        granted = request.lifetime if lifetime is None else lifetime
        return pcp.encode_response(pcp.Response(request.opcode, Result.SUCCESS, granted, self.epoch(now), info))

    def _gpn(self) -> int:
        self.next_gpn += 1
        return self.next_gpn


def drive(client: LeaseClient, start: float, end: float, answer=None):
    """Run the fake clock from ``start`` to ``end``, waking whenever the client asks to.

    Returns [(time, datagram)] sent and the events; ``answer(datagram, now)``
    may return a response to deliver at once.
    """
    sent, events, now = [], [], start
    for _ in range(100_000):
        for datagram in client.datagrams_to_send(now):
            sent.append((now, datagram))
            reply = answer(datagram, now) if answer else None
            if reply is not None:
                events += client.receive(reply, now, source=GW)
        events += client.handle_timer(now)
        wake = client.timer(now)
        if wake is None or wake > end:
            return sent, events
        now = wake
    raise AssertionError("the client keeps asking to be woken at the same time")


def granted_lease(client: LeaseClient, nat: FakeNat, now: float, lifetime: int = 600, info=ESP_LEASE) -> Lease:
    tx = client.request(info, 3600, now)
    (datagram,) = client.datagrams_to_send(now)
    (event,) = client.receive(nat.answer(datagram, now, lifetime=lifetime), now, source=GW)
    assert isinstance(event, Granted) and event.transaction is tx and tx.done
    return event.lease


# ----------------------------------------------------------------------------- retransmission (RFC 6887 8.1.1)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_retransmission_follows_rfc_6887_8_1_1(seed):
    client = LeaseClient(A, GW, rng=random.Random(seed))
    tx = client.request(ESP_LEASE, 600, 0.0)
    sent, events = drive(client, 0.0, 20_000.0)
    times = [t for t, _ in sent]
    gaps = [b - a for a, b in pairwise(times)]
    assert times[0] == 0.0 and events == [] and not tx.done  # MRC = MRD = 0: it never stops on its own
    assert 0.9 * 3 <= gaps[0] <= 1.1 * 3  # RT = (1 + RAND) * IRT
    for previous, gap in pairwise(gaps):
        if gap < 0.9 * MRT:
            assert 1.9 * previous <= gap <= 2.1 * previous  # RT = (2 + RAND) * RTprev
        else:
            assert 0.9 * MRT <= gap <= 1.1 * MRT  # capped at (1 + RAND) * MRT
    assert sum(gap >= 0.9 * MRT for gap in gaps) >= 15
    assert {datagram for _, datagram in sent} == {tx.datagram}  # the same request, the same nonce
    assert client.counters["retransmitted"] == len(sent) - 1


def test_a_caller_deadline_ends_the_transaction_cleanly():
    client = LeaseClient(A, GW, rng=random.Random(1))
    tx = client.request(ESP_LEASE, 600, 0.0, give_up_after=10.0)
    sent, events = drive(client, 0.0, 1000.0)
    assert all(t < 10.0 for t, _ in sent) and len(sent) in (2, 3)
    assert events == [TimedOut(tx)] and tx.done and tx.outcome == TimedOut(tx)
    assert client.timer(10.0) is None and client.datagrams_to_send(2000.0) == []


def test_a_request_is_sent_at_least_once_even_with_no_time_to_wait():
    client = LeaseClient(A, GW)
    tx = client.request(ESP_LEASE, 600, 5.0, give_up_after=0.0)
    assert len(client.datagrams_to_send(5.0)) == 1
    assert client.handle_timer(5.0) == [TimedOut(tx)]


# ----------------------------------------------------------------------------- answers


def test_a_grant_returns_every_assigned_value_and_keeps_the_nonce():
    client, nat = LeaseClient(A, GW, rng=random.Random(2)), FakeNat()
    tx = client.request(ESP_LEASE, pcp.LIFETIME_UNSPECIFIED, 0.0)
    request = pcp.decode_request(client.datagrams_to_send(0.0)[0])
    assert request.client_ip == A and len(request.info.nonce) == 12 and request.info.nonce == tx.nonce
    (event,) = client.receive(nat.answer(tx.datagram, 1.0, lifetime=600), 1.0, source=GW)
    lease = event.lease
    assert lease.info.global_ip == "203.0.113.1" and lease.info.private_gpn == lease.info.global_gpn
    assert lease.nonce == tx.nonce and lease.expires == 601.0 and client.leases == {lease.nonce: lease}


def test_a_refusal_ends_the_transaction_with_its_code_and_lifetime():
    client = LeaseClient(A, GW, rng=random.Random(3))
    tx = client.request(ESP_LEASE, 600, 0.0)
    client.datagrams_to_send(0.0)
    (event,) = client.receive(FakeNat().answer(tx.datagram, 1.0, result=Result.PROTOCOL_NOT_DEFINED), 1.0)
    assert event == Refused(tx, Result.PROTOCOL_NOT_DEFINED, pcp.LONG_ERROR_LIFETIME, event.response)
    assert tx.done and client.leases == {} and client.timer(1.0) is None


def test_a_response_with_another_nonce_is_ignored_and_counted():
    client, nat = LeaseClient(A, GW, rng=random.Random(4)), FakeNat()
    tx = client.request(ESP_LEASE, 600, 0.0)
    client.datagrams_to_send(0.0)
    assert client.receive(nat.answer(tx.datagram, 1.0, nonce=b"x" * 12), 1.0) == []
    assert client.counters["unmatched"] == 1 and not tx.done
    assert len(client.datagrams_to_send(4.0)) == 1  # still retransmitting


def test_a_response_for_another_client_is_ignored():
    a, b, nat = LeaseClient(A, GW, rng=random.Random(5)), LeaseClient(B, GW, rng=random.Random(6)), FakeNat()
    tx_a, tx_b = a.request(ESP_LEASE, 600, 0.0), b.request(ESP_LEASE, 600, 0.0)
    a.datagrams_to_send(0.0)
    for_b = nat.answer(b.datagrams_to_send(0.0)[0], 1.0)
    assert a.receive(for_b, 1.0, source=GW) == [] and not tx_a.done  # its nonce is b's
    assert a.receive(nat.answer(tx_a.datagram, 1.0), 1.0, source="10.0.0.99") == []  # not from the server
    assert a.counters["foreign_source"] == 1 and not tx_a.done
    assert isinstance(b.receive(for_b, 1.0, source=GW)[0], Granted) and tx_b.done


def test_map_and_peer_answers_must_match_protocol_and_ports():
    client, nat = LeaseClient(A, GW, rng=random.Random(7)), FakeNat()
    tx = client.request(pcp.MapInfo(b"", 17, 5000, 0, None), 600, 0.0)
    client.datagrams_to_send(0.0)
    assert client.receive(nat.answer(tx.datagram, 1.0, internal_port=5001), 1.0) == []  # RFC 6887 11.4
    peer = client.request(pcp.PeerInfo(b"", 6, 80, 0, None, 443, SRV), 600, 0.0)
    client.datagrams_to_send(0.0)
    assert client.receive(nat.answer(peer.datagram, 1.0, remote_ip="203.0.113.101"), 1.0) == []  # 12.3
    assert client.counters["unmatched"] == 2
    assert isinstance(client.receive(nat.answer(tx.datagram, 1.0), 1.0)[0], Granted)
    assert isinstance(client.receive(nat.answer(peer.datagram, 1.0), 1.0)[0], Granted)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_garbage_is_counted_never_raised(datagram):
    client = LeaseClient(A, GW, rng=random.Random(8))
    client.request(ESP_LEASE, 600, 0.0)
    assert client.receive(datagram, 1.0) == []
    assert client.counters["malformed"] + client.counters["unmatched"] == 1


# ----------------------------------------------------------------------------- renewal (RFC 6887 11.2.1)


@settings(max_examples=80, deadline=None)
@given(st.integers(8, 10**6), st.integers(0, 2**32))
def test_renewal_times_follow_rfc_6887_11_2_1(lifetime, seed):
    client, nat = LeaseClient(A, GW, rng=random.Random(seed)), FakeNat()
    lease = granted_lease(client, nat, 1.0, lifetime)
    assert 1.0 + lifetime / 2 <= lease.renew_at <= 1.0 + lifetime * 5 / 8
    sent, events = drive(client, 1.0, 1.0 + lifetime + 1)  # the NAT never answers
    times = [t for t, _ in sent]
    assert times and times[0] == lease.renew_at
    for k, (t, datagram) in enumerate(sent, 1):
        low = 1 - 2.0 ** -k
        fraction = (t - 1.0) / lifetime
        assert fraction >= low - 1e-9
        assert fraction <= low + 2.0 ** -(k + 2) + 1e-9 or t == pytest.approx(times[k - 2] + 4)
        renewal = pcp.decode_request(datagram)
        assert renewal.info == lease.info and renewal.lifetime == 3600  # same nonce, assigned values, asked lifetime
    assert all(b - a >= 4 - 1e-9 for a, b in pairwise(times))  # "MUST NOT be sent less than four seconds apart"
    assert all(t < 1.0 + lifetime for t in times)
    assert Expired(lease) in events and client.leases == {} and not lease.alive


@settings(max_examples=40, deadline=None)
@given(st.integers(60, 10**5), st.integers(0, 2**32))
def test_an_answered_renewal_extends_the_lease_and_schedules_the_next(lifetime, seed):
    client, nat = LeaseClient(A, GW, rng=random.Random(seed)), FakeNat()
    lease = granted_lease(client, nat, 0.0, lifetime)
    first = lease.renew_at
    sent, events = drive(client, 0.0, first, answer=lambda d, now: nat.answer(d, now, lifetime=lifetime))
    assert [t for t, _ in sent] == [first]
    (event,) = events
    assert isinstance(event, Granted) and event.lease is lease and event.transaction.purpose == "renew"
    assert lease.granted_at == first and lease.expires == first + lifetime and lease.alive
    assert first + lifetime / 2 <= lease.renew_at <= first + lifetime * 5 / 8


def test_a_renewal_refused_for_good_drops_the_lease_and_a_short_refusal_retries():
    client, nat = LeaseClient(A, GW, rng=random.Random(9)), FakeNat()
    lost, kept = granted_lease(client, nat, 0.0), granted_lease(client, nat, 0.0)

    def answer(datagram, now):
        nonce = pcp.decode_request(datagram).info.nonce
        result = Result.NOT_AUTHORIZED if nonce == lost.nonce else Result.NO_RESOURCES
        return nat.answer(datagram, now, result=result)

    _, events = drive(client, 0.0, 380.0, answer=answer)
    assert {type(e) for e in events} == {Refused}
    assert not lost.alive and kept.alive and set(client.leases) == {kept.nonce}
    assert kept.renew_at is not None and kept.transaction is None  # tries again after the 30 s error lifetime


def test_adopting_a_lease_from_a_state_file_and_renewing_it_now():
    client, nat = LeaseClient(A, GW, rng=random.Random(10)), FakeNat()
    info = pcp.LeaseInfo(b"n" * 12, 50, 0x5000, 0x5000, "203.0.113.1", SRV)
    lease = client.adopt(Lease(Opcode.LEASE, info, 3600, 600, granted_at=-100.0))
    assert 200 <= lease.renew_at <= 275
    tx = client.renew(lease, 0.0, give_up_after=5)
    (datagram,) = client.datagrams_to_send(0.0)
    assert pcp.decode_request(datagram).info == info
    (event,) = client.receive(nat.answer(datagram, 0.5), 0.5, source=GW)
    assert isinstance(event, Granted) and event.lease is lease and tx.done and lease.expires == 3600.5


# ----------------------------------------------------------------------------- release (RFC 6887 15)


def test_release_sends_lifetime_zero_and_stops_renewing():
    client, nat = LeaseClient(A, GW, rng=random.Random(11)), FakeNat()
    lease = granted_lease(client, nat, 0.0)
    tx = client.release(lease, 10.0)
    assert not lease.alive and client.leases == {}
    (datagram,) = client.datagrams_to_send(10.0)
    request = pcp.decode_request(datagram)
    assert request.lifetime == 0 and request.info == lease.info  # named by its nonce and assigned values
    (event,) = client.receive(nat.answer(datagram, 10.5), 10.5, source=GW)
    assert isinstance(event, Granted) and event.lease is lease and tx.done
    assert client.timer(10.5) is None
    assert drive(client, 10.5, 10_000.0) == ([], [])


def test_releasing_a_map_zeroes_the_suggested_external_fields():
    client, nat = LeaseClient(A, GW, rng=random.Random(12)), FakeNat()
    lease = granted_lease(client, nat, 0.0, info=pcp.MapInfo(b"", 17, 5000, 0, None))
    assert lease.info.external_port and lease.info.external_ip
    client.release(lease, 1.0)
    request = pcp.decode_request(client.datagrams_to_send(1.0)[0])
    assert (request.lifetime, request.info.external_port, request.info.external_ip) == (0, 0, None)
    assert request.info.nonce == lease.nonce  # RFC 6887 15, erratum 3621


def test_an_unanswered_release_gives_up_when_the_lease_would_have_expired():
    client, nat = LeaseClient(A, GW, rng=random.Random(13)), FakeNat()
    lease = granted_lease(client, nat, 0.0, lifetime=120)
    tx = client.release(lease, 100.0)
    sent, events = drive(client, 100.0, 1000.0)
    assert events == [TimedOut(tx)] and all(t < 120 for t, _ in sent)


# ----------------------------------------------------------------------------- epoch (RFC 6887 8.5)


def test_a_nat_restart_seen_in_a_response_re_requests_every_other_live_lease():
    client, nat = LeaseClient(A, GW, rng=random.Random(14)), FakeNat(started=0.0)
    first, second, third = (granted_lease(client, nat, 10.0) for _ in range(3))
    rebooted = FakeNat(started=95.0)  # at t=100 its epoch is 5 where 100 was expected
    tx = client.renew(first, 100.0)
    (datagram,) = client.datagrams_to_send(100.0)
    events = client.receive(rebooted.answer(datagram, 100.0), 100.0, source=GW)
    restarted, granted = events
    assert isinstance(restarted, ServerRestarted) and (restarted.previous_epoch, restarted.epoch) == (10, 5)
    assert isinstance(granted, Granted) and granted.transaction is tx
    assert {t.lease for t in restarted.renewals} == {second, third}  # the first was just granted again
    again = [pcp.decode_request(d) for d in client.datagrams_to_send(100.0)]
    assert {r.info for r in again} == {second.info, third.info} and {r.lifetime for r in again} == {3600}


def test_an_unsolicited_announce_with_a_younger_epoch_re_requests_the_leases():
    client, nat = LeaseClient(A, GW, rng=random.Random(15)), FakeNat(started=0.0)
    lease = granted_lease(client, nat, 50.0)
    announce = pcp.encode_response(pcp.Response(Opcode.ANNOUNCE, Result.SUCCESS, 0, 0, None))
    (event,) = client.receive(announce, 60.0, source=GW)
    assert isinstance(event, ServerRestarted) and [t.lease for t in event.renewals] == [lease]
    assert pcp.decode_request(client.datagrams_to_send(60.0)[0]).info == lease.info


@pytest.mark.parametrize("later, epoch_then, restart", [
    (100.0, 150, False),  # both clocks moved 100 s
    (0.5, 49, False),  # back by 1 s half a second later: packet reordering, tolerated
    (0.5, 48, True),  # back by 2 s: time does not go backwards
    (100.0, 50 + 100 + 2 + 100 // 15 + 2, True),  # server ran much faster than the client
    (1000.0, 50 + 900, True),  # server ran much slower: client_delta - client_delta/16 > server_delta + 2
    (1000.0, 50 + 1000 - 1000 // 16 + 1, False),  # within the 1/16 + 2 s slack
])
def test_the_epoch_check_is_rfc_6887_8_5s(later, epoch_then, restart):
    client = LeaseClient(A, GW, rng=random.Random(16))
    assert client._check_epoch(50, 0.0) is None  # the first epoch is taken as valid
    assert (client._check_epoch(epoch_then, later) is not None) is restart


def test_an_announce_we_asked_for_is_granted():
    client = LeaseClient(A, GW, rng=random.Random(17))
    tx = client.request(None, 0, 0.0)
    assert pcp.decode_request(client.datagrams_to_send(0.0)[0]).opcode is Opcode.ANNOUNCE
    (event,) = client.receive(pcp.encode_response(pcp.Response(Opcode.ANNOUNCE, Result.SUCCESS, 0, 9, None)), 0.1)
    assert isinstance(event, Granted) and event.transaction is tx and client.epoch == (9, 0.1)


# ----------------------------------------------------------------------------- purity


def test_the_client_core_does_no_io_and_reads_no_clock():
    tree = ast.parse(Path(lc.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"socket", "select", "selectors", "asyncio", "time", "os", "subprocess", "scapy"}
