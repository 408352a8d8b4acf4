"""IKEv2 NAT detection and floating (RFC 7296 section 2.23) across a simulated NAPT, two sans-IO endpoints.

The NAPT rewrites the initiator's source address and port, a new mapping per private port, as a
classic Linux masquerade does: IKE from port 500 and IKE from port 4500 leave with different public
ports, so the responder must follow the initiator to the second one.
"""

from __future__ import annotations

import pytest

from client_agent.ike.config import IkeConfig
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ike.events import ChildEstablished, ChildFailed, ChildSa, IkeEstablished
from client_agent.ike.registry import IKE_PORT, NATT_PORT
from client_agent.ike.session import IkeSession
from tests.unit.ike_pair import H1, SRV, configs

GLOBAL = "198.51.100.1"
Address = tuple[str, int]


class Napt:
    """Source NAT for the initiator's flows: a fresh public port per private (address, port)."""

    def __init__(self, public: str, first_port: int = 40000, keep_ports: bool = False) -> None:
        self.public, self.next_port, self.keep_ports = public, first_port, keep_ports
        self.out: dict[Address, Address] = {}
        self.back: dict[Address, Address] = {}

    def outbound(self, private: Address) -> Address:
        if private not in self.out:
            port = private[1] if self.keep_ports else self.next_port
            self.next_port += 1
            self.out[private] = (self.public, port)
            self.back[(self.public, port)] = private
        return self.out[private]


class NattWire:
    """h1 (behind ``napt``, or direct when it is None) and srv1, pumped until quiet."""

    def __init__(self, left: IkeConfig, right: IkeConfig, napt: Napt | None) -> None:
        self.a, self.b, self.napt, self.left = IkeEndpoint(None, H1), IkeEndpoint(right, SRV), napt, left
        self.seen_by_b: list[Address] = []  # the source of every datagram srv1 received
        self.sent_by_a: list[Address] = []  # the destination of every datagram h1 sent
        self.events: dict[str, list[object]] = {"a": [], "b": []}
        self.now = 0.0

    def run(self) -> IkeSession:
        session = self.a.initiate(self.left, SRV, self.now, None)
        self.pump()
        return session

    def pump(self) -> None:
        for _ in range(20):
            if not self._move():
                break

    def _move(self) -> bool:
        moved = False
        for data, dst in self.a.datagrams_to_send():
            src = (H1[0], dst[1])  # the shell sends from the socket of the same port (500 or 4500)
            self.sent_by_a.append(dst)
            seen = self.napt.outbound(src) if self.napt else src
            self.seen_by_b.append(seen)
            self.b.receive_datagram(data, seen, self.now)
            moved = True
        for data, dst in self.b.datagrams_to_send():
            private = self.napt.back[dst] if self.napt else dst
            self.a.receive_datagram(data, (SRV[0], private[1]), self.now)
            moved = True
        for side, endpoint in (("a", self.a), ("b", self.b)):
            self.events[side] += [e for _, e in endpoint.next_events()]
        return moved

    def responder(self) -> IkeSession:
        (session,) = self.b.sessions.values()
        return session

    def children(self, side: str) -> list[ChildSa]:
        return [e.child for e in self.events[side] if isinstance(e, ChildEstablished)]

    def established(self, side: str) -> IkeEstablished:
        (event,) = [e for e in self.events[side] if isinstance(e, IkeEstablished)]
        return event


def test_behind_a_napt_the_initiator_floats_to_4500_and_the_children_are_udp_encapsulated() -> None:
    wire = NattWire(*configs(mode="tunnel"), Napt(GLOBAL))
    initiator = wire.run()
    assert wire.established("a").nat_detected_local and wire.established("b").nat_detected_peer
    assert wire.sent_by_a[0] == SRV and set(wire.sent_by_a[1:]) == {(SRV[0], NATT_PORT)}
    assert initiator.remote == (SRV[0], NATT_PORT) and initiator.udp_encap
    assert [c.udp_encap for c in wire.children("a")] == [True] and [c.udp_encap for c in wire.children("b")] == [True]


def test_the_responder_follows_the_initiator_to_its_new_public_port() -> None:
    napt = Napt(GLOBAL)
    wire = NattWire(*configs(), napt)
    wire.run()
    floated = napt.out[(H1[0], NATT_PORT)]
    assert napt.out[(H1[0], IKE_PORT)] != floated  # a masquerade maps the 4500 flow to another port
    assert wire.responder().remote == floated and wire.responder().counters["peer_address_updated"] == 1


def test_without_a_nat_nothing_floats_and_esp_stays_raw() -> None:
    wire = NattWire(*configs(), None)
    initiator = wire.run()
    assert set(wire.sent_by_a) == {SRV} and not initiator.udp_encap
    assert [c.udp_encap for c in wire.children("a") + wire.children("b")] == [False, False]


def test_force_encap_floats_without_a_nat_and_the_responder_sees_one() -> None:
    left, right = configs()
    wire = NattWire(IkeConfig(**{**left.__dict__, "force_encap": True}), right, None)
    initiator = wire.run()
    assert wire.established("b").nat_detected_peer and initiator.udp_encap and wire.responder().udp_encap
    assert [c.udp_encap for c in wire.children("a") + wire.children("b")] == [True, True]


def test_pre_compensated_natd_through_the_extensible_nat_hides_it_so_nothing_floats() -> None:
    """The seed's method (claim 8): NAT-D over the leased global address and port 500, a NAT that keeps the port."""
    left, right = configs()
    wire = NattWire(IkeConfig(**{**left.__dict__, "natd_source": (GLOBAL, IKE_PORT)}), right, Napt(GLOBAL, keep_ports=True))
    initiator = wire.run()
    assert not wire.established("b").nat_detected_peer and not initiator.udp_encap
    assert [c.udp_encap for c in wire.children("a") + wire.children("b")] == [False, False]


def test_an_ike_rekey_keeps_the_encapsulation_and_the_floated_addresses() -> None:
    napt = Napt(GLOBAL)
    wire = NattWire(*configs(ike_rekey=10.0), napt)
    wire.run()
    wire.now = 10.0
    wire.a.handle_timer(10.0)
    wire.pump()
    (new_a,), (new_b,) = wire.a.sessions.values(), wire.b.sessions.values()
    assert new_a.udp_encap and new_b.udp_encap
    assert new_a.remote == (SRV[0], NATT_PORT) and new_b.remote == napt.out[(H1[0], NATT_PORT)]


def test_behind_a_nat_the_responder_never_chooses_ah() -> None:
    wire = NattWire(*configs(esp=(), ah=("sha256",)), Napt(GLOBAL))
    wire.run()
    assert wire.established("b").nat_detected_peer and not wire.children("a") and not wire.children("b")
    assert ChildFailed("NO_PROPOSAL_CHOSEN") in wire.events["b"]


def test_without_a_nat_ah_is_still_chosen() -> None:
    wire = NattWire(*configs(esp=(), ah=("sha256",)), None)
    wire.run()
    assert [c.protocol.name for c in wire.children("b")] == ["AH"]


def test_force_encap_with_ah_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="force_encap=True with ah"):
        IkeConfig.build(local_id="h1.natlab", psk="x" * 16, esp=(), ah=("sha256",), force_encap=True)


def test_force_encap_without_natd_is_refused() -> None:
    with pytest.raises(ValueError, match="force_encap=True: needs natd"):
        IkeConfig.build(local_id="h1.natlab", psk="x" * 16, natd=False, force_encap=True)
