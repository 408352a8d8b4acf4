"""SAVI at s1 (RFC 7039): a fake s1 driven by SaviCore in front of a fake r1 driven by NatCore.

Frames enter s1 on a host's access port; whatever s1 hands to NORMAL is what
would reach r1 (and the other hosts), and is fed to r1's inside port.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from nat_app.savi import (
    COOKIE_REFUSED,
    MAX_BINDINGS_PER_PORT,
    PORT_NORMAL,
    PRIO_BOUND,
    S1_UPLINK_PORT,
    SaviCore,
)
from netwire import pcp
from netwire.plan import GATEWAY_IP
from tests.unit.fakeswitch import FakeSwitch

R1_IN = 1
R_IN = "02:4e:41:54:00:01"
GW, SRV1 = GATEWAY_IP, "203.0.113.100"
H1, H2, H3 = ("10.0.0.1", "00:00:00:00:00:01", 1), ("10.0.0.2", "00:00:00:00:00:02", 2), \
    ("10.0.0.3", "00:00:00:00:00:03", 3)


class Link:
    """s1 in front of r1: frames s1 forwards (NORMAL) go into r1's inside port."""

    def __init__(self) -> None:
        config = NatConfig(globals=global_pool(1))
        self.savi = SaviCore(config)
        self.s1 = FakeSwitch(self.savi)
        self.core = NatCore(config, rng=random.Random(3), savi=self.savi)
        self.r1 = FakeSwitch(self.core)

    def send(self, port: int, frame: bytes, now: float = 0.0) -> int:
        """A host on access ``port`` sends ``frame``; how many frames s1 let through."""
        self.s1.receive(port, frame, now)
        passed = self.s1.take(PORT_NORMAL)
        for f in passed:
            self.r1.receive(R1_IN, f, now)
        return len(passed)

    def drops(self) -> dict:
        return {k: v for k, v in self.savi.counters.values.items() if k.startswith("drop:")}


def arp_from(ip: str, mac: str, target: str = GW, op: int = 1, sender_mac: str | None = None) -> bytes:
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=op, hwsrc=sender_mac or mac, psrc=ip, pdst=target))


def ping_from(ip: str, mac: str) -> bytes:
    return bytes(Ether(src=mac, dst=R_IN) / IP(src=ip, dst=SRV1) / ICMP(id=7))


def pcp_from(ip: str, mac: str, nonce: bytes, lifetime: int = 600) -> bytes:
    raw = pcp.encode_request(pcp.Request(pcp.Opcode.MAP, lifetime, ip, pcp.MapInfo(nonce, 17, 7000, 0, None)))
    return bytes(Ether(src=mac, dst=R_IN) / IP(src=ip, dst=GW) / UDP(sport=5350, dport=pcp.SERVER_PORT) / raw)


@pytest.fixture
def link() -> Link:
    return Link()


def test_first_arp_binds_port_mac_ip_and_later_frames_pass_in_s1_without_the_controller(link):
    ip, mac, port = H1
    assert link.send(port, arp_from(ip, mac)) == 1
    assert link.savi.snapshot()["bindings"] == [{"port": port, "mac": mac, "ip": ip}]
    assert link.r1.take(R1_IN)  # r1 answered the ARP: the frame reached it
    before = link.s1.packet_ins
    assert link.send(port, ping_from(ip, mac)) == 1  # first IPv4 frame: its flow is installed
    assert link.send(port, ping_from(ip, mac)) == 1
    assert link.send(port, arp_from(ip, mac)) == 1
    assert link.s1.packet_ins == before + 1
    assert len([f for f in link.s1.flows if f.msg.priority == PRIO_BOUND]) == 2


def test_uplink_frames_are_switched_by_ovs_not_the_controller(link):
    assert link.send(S1_UPLINK_PORT, arp_from(GW, R_IN, target="10.0.0.1", op=1)) == 1
    assert link.s1.packet_ins == 0


def test_a_forger_with_the_victims_ip_and_mac_on_another_port_is_dropped_before_r1_and_counted(link):
    ip, mac, port = H1
    nonce = os.urandom(12)
    assert link.send(port, pcp_from(ip, mac, nonce)) == 1
    (entry,) = list(link.core.table)
    requests = link.core.counters["lease_requests"]
    forger_port = H3[2]
    assert link.send(forger_port, pcp_from(ip, mac, nonce, lifetime=0)) == 0  # a release with the leaked nonce
    assert link.send(forger_port, pcp_from(ip, mac, nonce, lifetime=0)) == 0  # the second dies in s1's drop flow
    assert link.core.counters["lease_requests"] == requests
    assert entry.id in {e.id for e in link.core.table}
    assert link.drops() == {"drop:ip-bound-on-other-port": 1}
    (drop,) = [f.msg.cookie for f in link.s1.flows if f.msg.cookie & COOKIE_REFUSED == COOKIE_REFUSED]
    link.s1.expire_flow(drop, 10.0)
    assert link.drops() == {"drop:ip-bound-on-other-port": 2}  # the flow's packets are counted when it goes
    assert link.send(port, ping_from(ip, mac)) == 1  # the victim is unaffected


def test_an_ip_claimed_on_two_ports_stays_with_the_first_and_arp_poison_never_reaches_r1(link):
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac))
    _, forger_mac, forger_port = H3
    assert link.send(forger_port, arp_from(ip, forger_mac, op=2)) == 0  # "10.0.0.1 is at me"
    assert link.send(forger_port, ping_from(ip, forger_mac)) == 0
    assert link.core.neighbours.lookup(ip) == mac
    assert link.drops() == {"drop:ip-bound-on-other-port": 2}


def test_a_mac_bound_on_one_port_cannot_appear_on_another(link):
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac))
    assert link.send(H3[2], arp_from("10.0.0.77", mac)) == 0
    assert link.drops() == {"drop:mac-bound-on-other-port": 1}


def test_another_mac_on_the_same_port_cannot_take_a_bound_ip(link):
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac))
    assert link.send(port, ping_from(ip, "00:00:00:00:00:99")) == 0
    assert link.drops() == {"drop:ip-bound-to-other-mac": 1}


def test_router_addresses_foreign_sources_group_macs_and_arp_with_two_senders_are_refused(link):
    _, mac, port = H1
    assert link.send(port, arp_from(GW, mac, op=2)) == 0
    assert link.send(port, ping_from("10.0.0.5", R_IN)) == 0
    assert link.send(port, ping_from("8.8.8.8", mac)) == 0
    assert link.send(port, ping_from("10.0.0.5", "01:00:5e:00:00:01")) == 0
    assert link.send(port, arp_from("10.0.0.5", mac, sender_mac="00:00:00:00:00:42")) == 0
    assert link.drops() == {"drop:router-address": 2, "drop:not-inside": 1, "drop:group-source-mac": 1,
                            "drop:malformed": 1}
    assert link.savi.snapshot()["bindings"] == []


def test_a_port_binds_at_most_its_limit_of_addresses(link):
    _, mac, port = H1
    for n in range(MAX_BINDINGS_PER_PORT):
        assert link.send(port, arp_from(f"10.0.0.{10 + n}", mac)) == 1
    assert link.send(port, arp_from("10.0.0.99", mac)) == 0
    assert link.drops() == {"drop:port-full": 1}
    assert link.send(H2[2], arp_from(H2[0], H2[1])) == 1  # other ports are not affected


def test_a_binding_ends_when_its_port_goes_and_the_address_may_then_move(link):
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac))
    link.send(port, ping_from(ip, mac))
    link.s1.apply(link.savi.port_gone(port, 5.0))
    assert link.savi.snapshot()["bindings"] == []
    assert not [f for f in link.s1.flows if f.msg.priority == PRIO_BOUND]
    assert link.send(H3[2], arp_from(ip, mac)) == 1
    assert link.savi.port_of(mac, ip) == H3[2]
    assert link.savi.counters["bindings_port_gone"] == 1


def test_a_binding_ends_only_when_both_of_its_flows_idled_out(link):
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac))
    link.send(port, ping_from(ip, mac))
    arp_flow, ipv4_flow = sorted({f.msg.cookie for f in link.s1.flows if f.msg.priority == PRIO_BOUND},
                                 key=lambda c: -(c & 1))
    link.s1.expire_flow(ipv4_flow, 600.0)
    assert link.savi.port_of(mac, ip) == port
    assert link.send(port, ping_from(ip, mac), 601.0) == 1  # re-installed from the binding
    link.s1.expire_flow(ipv4_flow, 1200.0)
    link.s1.expire_flow(arp_flow, 1200.0)
    assert link.savi.port_of(mac, ip) is None
    assert link.savi.counters["bindings_idled_out"] == 1


def test_the_lease_origin_carries_the_access_port(link):
    ip, mac, port = H2  # s1 port 2: not r1's inside port (1), so the origin shows where the pin comes from
    assert link.send(port, pcp_from(ip, mac, os.urandom(12))) == 1
    (entry,) = list(link.core.table)
    assert link.core.leases.owner_of(entry.id).in_port == port


def test_r1_neither_learns_nor_serves_a_source_that_s1_has_not_bound(link):
    """Defence in depth: a frame that reached r1 without passing s1's checks."""
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac))
    link.r1.receive(R1_IN, ping_from(ip, "00:00:00:00:00:66"))
    link.r1.receive(R1_IN, arp_from(ip, "00:00:00:00:00:66", op=2))
    link.r1.receive(R1_IN, pcp_from(ip, "00:00:00:00:00:66", os.urandom(12)))
    assert link.core.neighbours.lookup(ip) == mac
    assert not list(link.core.table)
    assert link.core.counters["drop:savi-unbound"] == 3


def test_without_s1_connected_the_origin_is_r1s_inside_port():
    config = NatConfig(globals=global_pool(1))
    core = NatCore(config, rng=random.Random(3), savi=SaviCore(config))
    r1 = FakeSwitch(core)
    ip, mac, _ = H2
    r1.receive(R1_IN, pcp_from(ip, mac, os.urandom(12)))
    (entry,) = list(core.table)
    assert core.leases.owner_of(entry.id).in_port == R1_IN


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.binary(max_size=80)), max_size=30))
def test_hostile_frames_never_crash_savi_or_corrupt_its_bindings(frames):
    link = Link()
    link.send(H1[2], arp_from(H1[0], H1[1]))
    for port, junk in frames:
        link.send(port, bytes(Ether(src=H3[1], dst=R_IN)) + junk)
        link.send(port, bytes(Ether(src=H3[1], dst=R_IN, type=0x0806)) + junk)
        link.send(port, bytes(Ether(src=H3[1], dst=R_IN, type=0x0800)) + junk)
    bindings = link.savi.snapshot()["bindings"]
    assert {"port": H1[2], "mac": H1[1], "ip": H1[0]} in bindings
    assert len({b["ip"] for b in bindings}) == len(bindings)
    assert link.savi.port_of(H1[1], H1[0]) == H1[2]


def test_natlab_table_shows_the_bindings_and_the_savi_drops(link):
    from nat_app.cli import format_table

    link.send(H1[2], arp_from(H1[0], H1[1]))
    link.send(H3[2], ping_from(H1[0], H3[1]))
    text = format_table({**link.core.snapshot(0.0), "connected": True, "s1_connected": True})
    assert "SAVI on s1 (connected): bindings port 1 00:00:00:00:00:01 10.0.0.1" in text
    assert "drop:ip-bound-on-other-port=1" in text


def test_the_topology_puts_s1_where_the_app_expects_it():
    """One fact, one source (netwire.plan): the topology and the app read the same s1."""
    from nat_app import savi
    from topo import natlab

    assert natlab.S1_DPID == savi.S1_DPID and natlab.S1_UPLINK_PORT == savi.S1_UPLINK_PORT
    assert natlab.LIMITS["clients"][1] < savi.S1_UPLINK_PORT


def test_a_flood_of_junk_costs_one_packet_in_per_source_and_hold_and_every_frame_is_counted(link):
    _, mac, port = H3
    for _ in range(50):
        link.send(port, bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff", type=0x86DD)) + bytes(40))
        link.send(port, bytes(Ether(src=mac, dst=R_IN) / IP(src=GATEWAY_IP, dst=SRV1)))
    assert link.s1.packet_ins == 2
    for cookie in {f.msg.cookie for f in link.s1.flows if f.msg.cookie & COOKIE_REFUSED == COOKIE_REFUSED}:
        link.s1.expire_flow(cookie, 10.0)
    assert link.drops() == {"drop:not-ipv4-or-arp": 50, "drop:router-address": 50}
    assert link.send(port, arp_from(H3[0], mac)) == 1  # its honest frames still bind
