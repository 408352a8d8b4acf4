"""What a client behind the extensible NAT leases, against the real NAT core (FIG. 8 steps 801-807).

:class:`LeasePlan` is sans-IO; here its datagrams go, framed in Ethernet as a
client on the inside link would send them, through the fake r1 of
tests/unit/fakeswitch.py into a real :class:`nat_app.decide.NatCore`, and the
answers come back out of port IN into ``plan.client.receive`` and
``plan.handle``. The NAT's own translation table is the oracle.
"""

from __future__ import annotations

import random

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from client_agent.agent_config import AgentConfig, parse
from client_agent.agent_leases import LEASE_WINDOW, LeasePlan, Wanted, wanted_leases
from client_agent.lease_client import LeaseClient
from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from netwire import pcp
from netwire.pcp import LeaseInfo, PeerInfo
from tests.unit.fakeswitch import FakeSwitch
from tests.unit.test_lease_server import GW, IN, R_IN, SRV1, SRV2, mac

G1, G2 = "203.0.113.1", "203.0.113.2"  # the NAT's pool; 10.0.0.1 is paired with G1, its config names G2
KEY_GCM = "00112233445566778899aabbccddeeff00112233"
KEY_SHA1 = "00112233445566778899aabbccddeeff00112233"


def agent_text(private: str = "10.0.0.1", spis: tuple[int, int] = (0x1002, 0x2002), global_ip: str = G2,
               tcp: tuple[int, int] | None = (20000, 20002), udp: tuple[int, int] | None = (20000, 20001),
               esp_from: str | None = SRV1) -> str:
    """h1 with ESP to srv1 and AH to srv2 (transport), behind the NAT with ``[nat]``."""
    esp_src = f'src = "{esp_from}"\n' if esp_from else ""
    nat = f'[nat]\nglobal_ip = "{global_ip}"\nlifetime = 120\n'
    nat += f"tcp_ports = [{tcp[0]}, {tcp[1]}]\n" if tcp else ""
    nat += f"udp_ports = [{udp[0]}, {udp[1]}]\n" if udp else ""
    return f"""
[agent]
name = "h1"
address = "{private}"
routes = ["{SRV1}/32", "{SRV2}/32"]

[[sa]]
name = "esp-out"
direction = "outbound"
spi = {spis[0] - 1}
protocol = "esp"
encryption = "ENCR_AES_GCM_16"
enc_key = "{KEY_GCM}"
dst = "{SRV1}"

[[sa]]
name = "esp-in"
direction = "inbound"
spi = {spis[0]}
protocol = "esp"
encryption = "ENCR_AES_GCM_16"
enc_key = "{KEY_GCM}"
{esp_src}dst = "{global_ip}"

[[sa]]
name = "ah-out"
direction = "outbound"
spi = {spis[1] - 1}
protocol = "ah"
integrity = "AUTH_HMAC_SHA1_96"
auth_key = "{KEY_SHA1}"
dst = "{SRV2}"

[[sa]]
name = "ah-in"
direction = "inbound"
spi = {spis[1]}
protocol = "ah"
integrity = "AUTH_HMAC_SHA1_96"
auth_key = "{KEY_SHA1}"
src = "{SRV2}"
dst = "{global_ip}"

[[policy]]
name = "srv1"
dst = "{SRV1}/32"
action = "protect"
outbound = "esp-out"
inbound = "esp-in"

[[policy]]
name = "srv2"
dst = "{SRV2}/32"
action = "protect"
outbound = "ah-out"
inbound = "ah-in"

{nat}"""


def agent(**kw) -> AgentConfig:
    return parse(agent_text(**kw))


def nat_switch(now: float = 0.0, globals_: int = 2) -> FakeSwitch:
    """r1 and a fresh NatCore; a lease epoch starts at ``now``."""
    return FakeSwitch(NatCore(NatConfig(globals=global_pool(globals_)), rng=random.Random(5)), now)


class Link:
    """The inside link between one client's LeasePlan and r1; ``sw`` may be swapped for a restarted NAT."""

    def __init__(self, sw: FakeSwitch, config: AgentConfig, seed: int = 1) -> None:
        self.sw, self.ip = sw, config.address
        self.plan = LeasePlan(LeaseClient(self.ip, GW, rng=random.Random(seed)), wanted_leases(config),
                              config.nat.lifetime)

    def exchange(self, now: float, rounds: int = 12, *, to_plan: bool = True) -> int:
        """Send what is due and hand every answer to the plan (as LeaseSocket.pump does); the datagrams sent."""
        client, sent = self.plan.client, 0
        for _ in range(rounds):
            datagrams = client.datagrams_to_send(now)
            if not datagrams:
                break
            for datagram in datagrams:
                sent += 1
                self.sw.receive(IN, bytes(Ether(src=mac(self.ip), dst=R_IN) / IP(src=self.ip, dst=GW) /
                                          UDP(sport=pcp.CLIENT_PORT, dport=pcp.SERVER_PORT) / datagram), now)
                for frame in self.sw.take(IN):
                    answer = Ether(frame)
                    if UDP in answer and answer[UDP].sport == pcp.SERVER_PORT and answer[IP].dst == self.ip:
                        events = client.receive(bytes(answer[UDP].payload), now, GW)
                        if to_plan:
                            self.plan.handle(events, now)
        return sent

    def start(self, now: float = 0.0, rounds: int = 12) -> int:
        self.plan.tick(now)
        return self.exchange(now, rounds)

    def timers(self, now: float) -> int:
        """What LeaseSocket.tick does: the lease client's timers, then send."""
        self.plan.handle(self.plan.client.handle_timer(now), now)
        return self.exchange(now)

    def entries(self) -> set[tuple[int, str, int, str | None]]:
        """This client's entries in the NAT's table: (GPN space, global IP, global GPN, foreign)."""
        return {(e.space, e.global_ip, e.global_gpn, e.foreign) for e in self.sw.core.table if e.private_ip == self.ip}


def as_asked(config: AgentConfig) -> set[tuple[int, str, int, str | None]]:
    """The entries the config's leases name, as the NAT's table would hold them."""
    rows = set()
    for want in wanted_leases(config):
        info = want.info
        if isinstance(info, LeaseInfo):
            rows.add((info.protocol, info.global_ip, info.global_gpn, info.foreign_ip))
        else:
            rows.add((info.protocol, info.external_ip, info.external_port, info.remote_ip))
    return rows


# ---------------------------------------------------------------- what the config needs


def test_wanted_leases_spis_first_then_one_peer_lease_per_port_per_peer_cl_spi_steps_802_805():
    wanted = wanted_leases(agent())
    spis = [Wanted("ESP SPI 0x00001002", LeaseInfo(b"", 50, 0x1002, 0x1002, G2, SRV1), 50),
            Wanted("AH SPI 0x00002002", LeaseInfo(b"", 51, 0x2002, 0x2002, G2, SRV2), 51)]
    ports = [Wanted(f"{name} port {port} for {peer}", PeerInfo(b"", proto, port, port, G2, 0, peer))
             for proto, name, (low, high) in ((6, "TCP", (20000, 20002)), (17, "UDP", (20000, 20001)))
             for peer in (SRV1, SRV2) for port in range(low, high + 1)]
    assert wanted == spis + ports
    assert len(wanted) == 2 + (3 + 2) * 2


def test_wanted_leases_twin_follow_the_config_no_udp_block_no_udp_leases_and_an_sa_without_src_any_foreign():
    wanted = wanted_leases(agent(udp=None, esp_from=None))
    assert wanted[0].info == LeaseInfo(b"", 50, 0x1002, 0x1002, G2, None)  # foreign "any"
    assert not [w for w in wanted if isinstance(w.info, PeerInfo) and w.info.protocol == 17]
    assert [w.info.global_gpn for w in wanted if isinstance(w.info, LeaseInfo)] == [0x1002, 0x2002]  # inbound only


def test_granted_as_asked_names_what_the_nat_gave_instead_steps_802_805():
    spi, port = wanted_leases(agent())[0], wanted_leases(agent())[2]
    assert spi.granted_as_asked(LeaseInfo(b"n" * 12, 50, 0x1002, 0x1002, G2, SRV1)) is None
    assert spi.granted_as_asked(LeaseInfo(b"n" * 12, 50, 0x1002, 0x1002, G1, SRV1)) == f"granted {G1} GPN 4098"
    assert port.granted_as_asked(PeerInfo(b"n" * 12, 6, 20000, 20000, G2, 0, SRV1)) is None
    assert port.granted_as_asked(PeerInfo(b"n" * 12, 6, 20000, 31337, G2, 0, SRV1)) == f"granted {G2}:31337"


# ---------------------------------------------------------------- against the real NAT


def test_plan_becomes_ready_with_every_spi_and_port_granted_as_asked_on_a_global_ip_not_the_paired_one():
    """CL-SPI (802) and steps 803-805, NAT-DEF (701), NAT-ENTRY: the NAT's table holds exactly what the config names."""
    config = agent()
    link = Link(nat_switch(), config)
    assert not link.plan.ready
    link.start()
    assert link.plan.ready and link.plan.problems == {}
    assert link.plan.counters["granted"] == len(link.plan.wanted) == 12
    assert link.entries() == as_asked(config)  # every SPI and port, on G2, for its peer
    assert {50, 51} <= set(link.sw.core.leases.definitions)  # ESP and AH defined first
    assert link.sw.core.pool.paired("10.0.0.1") == G1  # G2 was honoured although the NAT pairs h1 with G1


def test_plan_twin_a_nat_without_the_configured_global_ip_leaves_the_plan_not_ready_cl_spi_step_802():
    link = Link(nat_switch(globals_=1), agent())
    link.start(rounds=3)
    assert not link.plan.ready
    problems = link.plan.problems
    assert "CANNOT_PROVIDE_EXTERNAL" in problems["ESP SPI 0x00001002"]
    assert problems[f"TCP port 20000 for {SRV1}"].startswith(f"granted {G1}:")
    assert all(g != G2 for _, g, _, _ in link.entries())


def test_cl_uniq_a_second_client_asking_for_the_same_ports_on_the_same_global_ip_gets_problems_naming_the_port():
    sw = nat_switch()
    first = Link(sw, agent())
    first.start()
    before = first.entries()
    second = Link(sw, agent(private="10.0.0.2", spis=(0x3002, 0x4002)), seed=2)
    second.start(rounds=3)
    assert first.plan.ready and not second.plan.ready
    for name, (low, high) in (("TCP", (20000, 20002)), ("UDP", (20000, 20001))):
        for peer in (SRV1, SRV2):
            for port in range(low, high + 1):
                why = second.plan.problems[f"{name} port {port} for {peer}"]
                assert why.startswith(f"granted {G2}:") and f"{G2}:{port}," not in why
    assert "ESP SPI 0x00003002" not in second.plan.problems  # its own SPIs are its own
    assert first.entries() == before  # the first client keeps every port


def test_cl_uniq_twin_a_second_client_with_a_disjoint_block_is_ready_too_steps_803_805():
    sw = nat_switch()
    first, second = Link(sw, agent()), Link(sw, agent(private="10.0.0.2", spis=(0x3002, 0x4002),
                                                       tcp=(20016, 20018), udp=(20016, 20017)), seed=2)
    first.start()
    second.start()
    assert first.plan.ready and second.plan.ready
    assert not first.entries() & second.entries()


def test_cl_renew_a_lease_the_nat_will_not_give_as_asked_is_not_asked_again_in_the_same_instant_rfc_6887_7_2():
    sw = nat_switch()
    Link(sw, agent()).start()
    second = Link(sw, agent(private="10.0.0.2", spis=(0x3002, 0x4002)), seed=2)
    sent = second.start(rounds=4)  # 4 rounds of the same instant
    # every wanted lease asked once (12), each of the 6 mismatches released once, 2 definitions: 20
    assert sent <= 2 * len(second.plan.wanted), sent


def test_cl_renew_after_a_nat_restart_the_plan_redefines_and_leases_everything_again_rfc_6887_8_5():
    config = agent()
    link = Link(nat_switch(), config)
    link.start()
    assert link.plan.ready
    link.sw = nat_switch(now=50.0)  # r1 reconnected to a fresh controller: no table, no definitions, epoch 0 at 50
    assert link.timers(55.0) == 0 and link.entries() == set()  # twin: before the renewal point nothing is asked
    link.timers(76.0)  # every lease is past 5/8 of its 120 s: renewals go out, the epoch shows the restart
    assert link.plan.ready and link.plan.counters["nat_restarts"] == 1
    assert {50, 51} <= set(link.sw.core.leases.definitions)
    assert link.entries() == as_asked(config)
    assert link.timers(90.0) == 0 and link.plan.counters["nat_restarts"] == 1  # nothing more to do, no second restart


def test_a_nat_that_lost_its_state_announces_it_and_the_plan_leases_everything_again_at_once_rfc_6887_14_1_3():
    config = agent()
    link = Link(nat_switch(), config)
    link.start()
    link.timers(40.0)
    assert link.plan.ready
    fresh = FakeSwitch(NatCore(NatConfig(globals=global_pool(2)), rng=random.Random(6)), 0.0)
    fresh.apply(fresh.core.reconcile([], 50.0), 50.0)  # a controller that started empty: new epoch, ANNOUNCE
    link.sw = fresh
    announces = [Ether(f) for f in fresh.take(IN) if UDP in Ether(f) and Ether(f)[UDP].dport == pcp.CLIENT_PORT]
    assert len(announces) == 10
    assert link.timers(50.0) == 0 and link.entries() == set()  # twin: without the ANNOUNCE nothing is asked yet
    link.plan.handle(link.plan.client.receive(bytes(announces[0][UDP].payload), 50.0, GW), 50.0)
    link.exchange(50.0)
    assert link.plan.counters["nat_restarts"] == 1
    link.timers(50.5)
    assert link.plan.ready, link.plan.status()
    assert link.entries() == as_asked(config)
    for later, delay in zip(announces[1:], fresh.delays, strict=True):  # each arrives when sent: no second restart
        link.plan.handle(link.plan.client.receive(bytes(later[UDP].payload), 50.0 + delay, GW), 50.0 + delay)
    assert link.plan.counters["nat_restarts"] == 1


def test_a_nat_that_forgot_its_definitions_before_the_epoch_shows_it_gets_them_again():
    """Seen live: a NAT restarted within seconds of its first start has an epoch the RFC 6887 8.5 check
    cannot tell from the old one; a LEASE then meets PROTOCOL_NOT_DEFINED (a 30-minute error), and the plan
    must define again at once instead of waiting the error out."""
    config = agent()
    link = Link(nat_switch(), config)
    link.start()
    assert link.plan.ready
    restarted = nat_switch()  # same epoch origin: no restart to see
    restarted.core.leases.definitions.clear()
    link.sw = restarted
    link.timers(76.0)
    assert link.plan.counters["nat_restarts"] == 0  # the twin of the epoch case: nothing betrayed the restart
    link.timers(77.0)
    assert link.plan.ready, link.plan.status()
    assert {50, 51} <= set(link.sw.core.leases.definitions)
    assert link.entries() == as_asked(config)


def test_release_all_gives_every_lease_back_step_807_nat_dealloc():
    link = Link(nat_switch(), agent())
    link.start(10.0)
    assert len(link.entries()) == len(link.plan.wanted)  # twin: before, all 12 entries are there
    releases = link.plan.release_all(20.0)
    assert len(releases) == len(link.plan.wanted)
    link.exchange(20.0, to_plan=False)  # answers to the lease client only
    assert all(tx.done for tx in releases) and link.plan.client.leases == {}
    assert link.entries() == set() and not link.plan.ready


def test_release_all_leaves_the_nat_table_empty_when_answers_go_through_the_plan_step_807_nat_dealloc():
    link = Link(nat_switch(), agent())
    link.start(10.0)
    link.plan.release_all(20.0)
    link.exchange(20.0)  # as Agent._release does: LeaseSocket.pump -> plan.handle
    assert link.entries() == set()


def test_an_unanswered_release_is_sent_again_before_the_plan_gives_up():
    """RFC 6887 8.1.1: a request is retransmitted after IRT (3 s, +-10 %). A release that gives up sooner
    (it gave up after 1 s) is never sent twice, so one lost datagram leaves the entry to its lifetime."""
    link = Link(nat_switch(), agent())
    link.start(10.0)
    releases = link.plan.release_all(20.0)
    first = link.plan.client.datagrams_to_send(20.0)  # lost: the NAT never sees them
    assert len(first) == len(releases)
    sent_again = 0
    for now in (21.0, 22.0, 23.0, 24.0):
        link.plan.handle(link.plan.client.handle_timer(now), now)
        sent_again += link.exchange(now)  # as Agent._release does: LeaseSocket.tick, then pump
    assert sent_again == len(releases)
    assert all(tx.done for tx in releases) and link.entries() == set()


def test_an_agent_keeps_at_most_a_window_of_requests_in_flight_and_still_gets_them_all():
    config = agent()
    link = Link(nat_switch(), config)
    link.plan.tick(0.0)
    assert len(link.plan.client.transactions) == LEASE_WINDOW < len(link.plan.wanted)
    link.exchange(0.0)  # each answer asks for the next
    assert link.plan.ready and link.entries() == as_asked(config)
