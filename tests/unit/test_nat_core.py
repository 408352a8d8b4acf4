"""NatCore against a fake switch (scapy does the matching and rewriting).

Each test sends real frames into the fake r1 and checks what comes out of
the other port, as the testbed tests do with OVS.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether

from nat_app.config import NatConfig, global_pool
from nat_app.decide import DEMOTION_HOLD_S, NatCore
from nat_app.messages import PRIO_TRANSLATE
from nat_app.table import DataPath
from netwire.plan import GATEWAY_IP
from tests.unit.fakeswitch import FakeSwitch, checksums_valid

IN, OUT = 1, 2
R_IN, R_OUT = "02:4e:41:54:00:01", "02:4e:41:54:00:02"
SRV1, SRV2 = "203.0.113.100", "203.0.113.101"
MACS = {SRV1: "00:00:00:00:01:00", SRV2: "00:00:00:00:01:01"}
G1, G2 = "203.0.113.1", "203.0.113.2"


def host_mac(ip: str) -> str:
    return MACS.get(ip) or "00:00:00:00:00:{:02x}".format(int(ip.split(".")[-1]))


def from_client(ip: str, l4, dst: str = SRV1, ttl: int = 64) -> bytes:
    return bytes(Ether(src=host_mac(ip), dst=R_IN) / IP(src=ip, dst=dst, ttl=ttl) / l4)


def from_server(src: str, dst: str, l4) -> bytes:
    return bytes(Ether(src=host_mac(src), dst=R_OUT) / IP(src=src, dst=dst) / l4)


@pytest.fixture
def switch() -> FakeSwitch:
    sw = FakeSwitch(NatCore(NatConfig(globals=global_pool(2)), rng=random.Random(7)))
    for server in (SRV1, SRV2):  # servers announce themselves, as their ARP for a global would
        sw.receive(OUT, bytes(Ether(src=host_mac(server), dst="ff:ff:ff:ff:ff:ff") /
                              ARP(op=1, hwsrc=host_mac(server), psrc=server, pdst=G1)))
    sw.take(OUT)
    return sw


def test_arp_answered_for_gateway_inside_and_globals_outside(switch):
    switch.receive(IN, bytes(Ether(src=host_mac("10.0.0.1"), dst="ff:ff:ff:ff:ff:ff") /
                             ARP(op=1, hwsrc=host_mac("10.0.0.1"), psrc="10.0.0.1", pdst=GATEWAY_IP)))
    reply = Ether(switch.take(IN)[0])
    assert reply[ARP].op == 2 and reply[ARP].hwsrc == R_IN and reply[ARP].psrc == GATEWAY_IP
    switch.receive(OUT, bytes(Ether(src=host_mac(SRV1), dst="ff:ff:ff:ff:ff:ff") /
                              ARP(op=1, hwsrc=host_mac(SRV1), psrc=SRV1, pdst=G2)))
    assert Ether(switch.take(OUT)[0])[ARP].hwsrc == R_OUT
    # Not ours: a client's address asked for on the inside, a non-global outside.
    switch.receive(IN, bytes(Ether(src=host_mac("10.0.0.1")) / ARP(op=1, psrc="10.0.0.1", pdst="10.0.0.2")))
    switch.receive(OUT, bytes(Ether(src=host_mac(SRV1)) / ARP(op=1, psrc=SRV1, pdst="203.0.113.50")))
    assert switch.take(IN) == [] and switch.take(OUT) == []


def test_outbound_tcp_translated_with_port_preserved_and_flows_installed(switch):
    switch.receive(IN, from_client("10.0.0.1", TCP(sport=40000, dport=80, flags="S")))
    (frame,) = switch.take(OUT)
    pkt = Ether(frame)
    assert (pkt[IP].src, pkt[TCP].sport, pkt[IP].dst, pkt[IP].ttl) == (G1, 40000, SRV1, 63)
    assert (pkt.src, pkt.dst) == (R_OUT, host_mac(SRV1))
    assert checksums_valid(frame)
    # The SYN-ACK visits the controller (the connection's phase, RFC 5382 REQ-5); the rest of the
    # connection takes flows.
    before = switch.packet_ins
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="SA")))
    assert switch.packet_ins == before + 1
    switch.receive(IN, from_client("10.0.0.1", TCP(sport=40000, dport=80, flags="A")))
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="PA") / b"data"))
    assert switch.packet_ins == before + 1
    back, _data = (Ether(f) for f in switch.take(IN))
    assert (back[IP].dst, back[TCP].dport, back.dst, back.src) == ("10.0.0.1", 40000, host_mac("10.0.0.1"), R_IN)
    assert len(switch.take(OUT)) == 1


def test_first_packet_waits_for_arp_of_an_unknown_server():
    sw = FakeSwitch(NatCore(NatConfig()))
    sw.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=53)))
    (request,) = sw.take(OUT)
    arp = Ether(request)[ARP]
    assert (arp.op, arp.pdst, arp.hwsrc) == (1, SRV1, R_OUT)
    sw.receive(OUT, bytes(Ether(src=host_mac(SRV1), dst=R_OUT) /
                          ARP(op=2, hwsrc=host_mac(SRV1), psrc=SRV1, hwdst=R_OUT, pdst=G1)))
    (frame,) = sw.take(OUT)
    assert Ether(frame)[IP].src == G1 and Ether(frame).dst == host_mac(SRV1)


def test_endpoint_independent_mapping_with_address_dependent_filtering(switch):
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=7)))
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=7), dst=SRV2))
    a, b = (Ether(f) for f in switch.take(OUT))
    assert (a[IP].src, a[UDP].sport) == (b[IP].src, b[UDP].sport)  # RFC 4787 REQ-1
    # A third server never contacted cannot use the mapping (REQ-8, address-dependent).
    switch.receive(OUT, from_server("203.0.113.102", a[IP].src, UDP(sport=7, dport=a[UDP].sport)))
    assert switch.take(IN) == []
    switch.receive(OUT, from_server(SRV2, a[IP].src, UDP(sport=9999, dport=a[UDP].sport)))
    assert Ether(switch.take(IN)[0])[UDP].dport == 5000  # any port of a contacted host


def test_same_private_port_on_two_clients_sharing_a_global_gets_distinct_ports():
    sw = FakeSwitch(NatCore(NatConfig(globals=global_pool(1)), rng=random.Random(1)))
    sw.apply(sw.core.packet_in(OUT, bytes(Ether(src=host_mac(SRV1)) / ARP(op=1, hwsrc=host_mac(SRV1), psrc=SRV1,
                                                                           pdst=G1)), 0))
    sw.take(OUT)
    sw.receive(IN, from_client("10.0.0.1", TCP(sport=40000, dport=80, flags="S")))
    sw.receive(IN, from_client("10.0.0.2", TCP(sport=40000, dport=80, flags="S")))
    a, b = (Ether(f) for f in sw.take(OUT))
    assert a[TCP].sport == 40000 and b[TCP].sport != 40000 and a[IP].src == b[IP].src == G1
    sw.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=b[TCP].sport, flags="SA")))
    (back,) = sw.take(IN)
    assert Ether(back)[IP].dst == "10.0.0.2" and Ether(back)[TCP].dport == 40000
    sw.core.table.check_invariants()


def test_paired_pooling_spreads_hosts_and_keeps_each_on_one_global(switch):
    for i in (1, 2, 3):
        switch.receive(IN, from_client(f"10.0.0.{i}", UDP(sport=6000, dport=7)))
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=6001, dport=7)))
    srcs = [Ether(f)[IP].src for f in switch.take(OUT)]
    assert srcs == [G1, G2, G1, G1]


def test_inbound_without_entry_and_unsupported_outbound_are_dropped(switch):
    switch.receive(OUT, from_server(SRV1, G1, TCP(sport=80, dport=40000, flags="S")))
    switch.receive(OUT, from_server(SRV1, G1, UDP(sport=53, dport=5000)))
    assert switch.take(IN) == []
    esp = bytes(Ether(src=host_mac("10.0.0.1"), dst=R_IN) / IP(src="10.0.0.1", dst=SRV1, proto=50) / (b"\x00" * 24))
    ah = bytes(Ether(src=host_mac("10.0.0.1"), dst=R_IN) / IP(src="10.0.0.1", dst=SRV1, proto=51) / (b"\x00" * 24))
    switch.receive(IN, esp)
    switch.receive(IN, ah)
    assert switch.take(OUT) == []
    assert switch.core.counters["drop:unsupported-protocol"] == 2


def test_ttl_one_is_not_forwarded(switch):
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=1, dport=2), ttl=1))
    assert switch.take(OUT) == [] and switch.core.counters["drop:ttl-expired"] == 1


def test_mapping_timeouts_meet_the_rfc_minimums(switch):
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=7)))
    switch.receive(IN, from_client("10.0.0.1", TCP(sport=5001, dport=80, flags="S")))
    switch.receive(IN, from_client("10.0.0.1", ICMP(type=8, id=77)))
    timeouts = {f.msg.match["ip_proto"]: f.msg.idle_timeout for f in switch.flows
                if f.msg.priority == PRIO_TRANSLATE and f.msg.idle_timeout}
    assert timeouts[17] >= 120 and timeouts[6] >= 240 and timeouts[1] >= 60  # RFC 4787, 5382 (transitory), 5508


def test_flow_removal_erases_entry_and_port_rests_before_reuse(switch):
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=7)))
    (entry,) = list(switch.core.table)
    switch.remove_flow(entry.id, now=10)
    assert len(switch.core.table) == 0 and switch.flows_with_cookie(entry.id) == []
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=7)), now=20)
    assert Ether(switch.take(OUT)[-1])[UDP].sport != 5000  # RFC 6888 REQ-8: 120 s quarantine
    switch.receive(IN, from_client("10.0.0.3", UDP(sport=5000, dport=7)), now=200)  # paired with G1 too
    assert Ether(switch.take(OUT)[-1])[UDP].sport == 5000


def test_icmp_echo_fast_path_when_the_triple_is_exclusive(switch):
    switch.receive(IN, from_client("10.0.0.1", ICMP(type=8, id=77, seq=1)))
    (out,) = switch.take(OUT)
    assert Ether(out)[IP].src == G1 and Ether(out)[ICMP].id == 77 and checksums_valid(out)
    before = switch.packet_ins
    switch.receive(OUT, from_server(SRV1, G1, ICMP(type=0, id=77, seq=1)))
    assert Ether(switch.take(IN)[0])[IP].dst == "10.0.0.1" and switch.packet_ins == before


def test_icmp_echo_from_hosts_sharing_a_global_is_demultiplexed_by_identifier(switch):
    # h1 and h3 share G1 (paired pooling); both ping srv1 with the same identifier.
    switch.receive(IN, from_client("10.0.0.1", ICMP(type=8, id=5, seq=1)))
    switch.receive(IN, from_client("10.0.0.2", ICMP(type=8, id=5, seq=1)))
    switch.receive(IN, from_client("10.0.0.3", ICMP(type=8, id=5, seq=1)))
    outs = [Ether(f) for f in switch.take(OUT)]
    assert all(checksums_valid(bytes(p)) for p in outs)
    h3_out = outs[2]
    assert h3_out[IP].src == G1 and h3_out[ICMP].id != 5
    paths = {e.private_ip: e.path for e in switch.core.table}
    assert paths["10.0.0.3"] is DataPath.SLOW and paths["10.0.0.2"] is DataPath.FAST
    assert "10.0.0.1" not in paths  # demoted: its next packet makes a slow entry
    assert switch.barriers >= 1 and switch.delays == [DEMOTION_HOLD_S]  # h1's flows go before h3's request
    switch.receive(IN, from_client("10.0.0.1", ICMP(type=8, id=5, seq=2)))
    h1_out = Ether(switch.take(OUT)[0])
    for host, sent in (("10.0.0.1", h1_out), ("10.0.0.3", h3_out)):
        switch.receive(OUT, from_server(SRV1, G1, ICMP(type=0, id=sent[ICMP].id, seq=9) / b"x"))
        (back,) = switch.take(IN)
        assert Ether(back)[IP].dst == host and Ether(back)[ICMP].id == 5 and checksums_valid(back)


def test_slow_icmp_entries_expire_and_their_punt_flow_goes(switch):
    for i in (1, 2, 3):  # h1 and h3 share G1
        switch.receive(IN, from_client(f"10.0.0.{i}", ICMP(type=8, id=5)), now=0)
    slow = [e for e in switch.core.table if e.path is DataPath.SLOW]
    assert slow
    switch.apply(switch.core.tick(now=61), now=61)
    assert all(e.path is not DataPath.SLOW for e in switch.core.table)
    assert not any(f.msg.priority > PRIO_TRANSLATE and f.msg.match.get("ip_proto") == 1
                   and "ipv4_src" in f.msg.match for f in switch.flows)


def test_inbound_icmp_error_about_a_translated_flow_is_translated_back(switch):
    switch.receive(IN, from_client("10.0.0.3", UDP(sport=5000, dport=9)))
    sent = Ether(switch.take(OUT)[0])
    quoted = bytes(sent[IP])[:28]
    switch.receive(OUT, from_server(SRV1, sent[IP].src, ICMP(type=3, code=3) / quoted))
    (back,) = switch.take(IN)
    pkt = Ether(back)
    assert pkt[IP].dst == "10.0.0.3" and pkt[IPerror].src == "10.0.0.3" and pkt[UDPerror].sport == 5000
    assert checksums_valid(back)
    # An error quoting a flow that does not exist is dropped.
    bogus = bytes(IP(src=G1, dst=SRV1) / UDP(sport=1, dport=9))[:28]
    switch.receive(OUT, from_server(SRV1, G1, ICMP(type=3, code=3) / bogus))
    assert switch.take(IN) == []


def test_outbound_icmp_error_about_an_inbound_packet_is_translated(switch):
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=9)))
    sent = Ether(switch.take(OUT)[0])
    switch.receive(OUT, from_server(SRV1, sent[IP].src, UDP(sport=9, dport=sent[UDP].sport)))
    inbound = Ether(switch.take(IN)[0])
    switch.receive(IN, from_client("10.0.0.1", ICMP(type=3, code=3) / bytes(inbound[IP])[:28]))
    (err,) = switch.take(OUT)
    pkt = Ether(err)
    assert pkt[IP].src == sent[IP].src and pkt[IPerror].dst == sent[IP].src
    assert pkt[UDPerror].dport == sent[UDP].sport and checksums_valid(err)


def test_bypass_makes_r1_a_plain_l2_switch_and_back(switch):
    switch.apply(switch.core.set_bypass(True))
    frame = from_client("10.0.0.1", UDP(sport=1, dport=2))
    switch.receive(IN, frame)
    assert switch.take(OUT) == [frame]
    switch.apply(switch.core.set_bypass(False))
    switch.receive(IN, frame)
    assert Ether(switch.take(OUT)[0])[IP].src == G1


def test_snapshot_lists_every_fig6_field(switch):
    switch.receive(IN, from_client("10.0.0.1", UDP(sport=5000, dport=7)))
    (row,) = switch.core.snapshot(now=0)["entries"]
    for field in ("protocol", "private_ip", "private_gpn", "global_ip", "global_gpn", "foreign", "expires_in",
                  "kind"):
        assert field in row
    assert row["kind"] == "NAT-ALG" and row["foreign"] == SRV1


MALFORMED = [
    b"",
    b"\x00" * 13,
    bytes(Ether(type=0x0800)) + b"\x45\x00",
    bytes(Ether(type=0x0800)) + b"\x46" + b"\x00" * 19,  # IHL beyond the packet
    bytes(Ether(type=0x0800)) + b"\x65" + b"\x00" * 19,  # version 6
    bytes(Ether(type=0x0806)) + b"\x00\x01\x08\x00",
    bytes(Ether(src=host_mac("10.0.0.1")) / IP(src="10.0.0.1", dst=SRV1, len=200) / UDP()),
    bytes(Ether(src=host_mac("10.0.0.1")) / IP(src="10.0.0.1", dst=SRV1, proto=6) / b"\x01"),
    bytes(Ether(src=host_mac(SRV1)) / IP(src=SRV1, dst=G1) / ICMP(type=3) / b"\x45"),
]


@pytest.mark.parametrize("frame", MALFORMED)
def test_malformed_frames_are_counted_not_crashed(switch, frame):
    for port in (IN, OUT):
        switch.apply(switch.core.packet_in(port, frame, 0))
    assert switch.core.counters["drop:malformed"] >= 1 or switch.take(OUT) == []
    switch.core.table.check_invariants()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80), port=st.sampled_from([IN, OUT, 3]), base=st.sampled_from(range(4)))
def test_fuzzed_frames_never_crash_or_corrupt_the_table(data, port, base):
    prefixes = [b"", bytes(Ether(src=host_mac("10.0.0.1"), type=0x0800)),
                bytes(Ether(src=host_mac("10.0.0.1")) / IP(src="10.0.0.1", dst=SRV1, proto=17))[:34],
                bytes(Ether(src=host_mac(SRV1)) / IP(src=SRV1, dst=G1, proto=1))[:34]]
    core = NatCore(NatConfig())
    core.packet_in(port, prefixes[base] + data, 0)
    core.table.check_invariants()
