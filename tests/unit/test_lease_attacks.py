"""Attacks on the lease server and NAPT by strangers on the shared inside link (issue 9, part 1).

Each test replays one attack found at the sans-IO level, through NatCore and the
fake r1, exactly as a host on the link would send it, and checks the NAT refuses
it with a PCP result code, counts it, and leaves honest hosts unharmed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP, UDPerror
from scapy.layers.l2 import Ether

from nat_app.table import EntryKind, TableCorrupt, TranslationTable
from netwire import pcp
from netwire.plan import GATEWAY_IP
from tests.unit.test_lease_server import IN, OUT, R_IN, R_OUT, SRV1, Client, mac, switch_with

G1 = "203.0.113.1"
ATTACKER_MAC = "00:00:00:00:66:66"


def udp_out(sw, client: Client, sport: int, dport: int = 9, dst: str = SRV1, now: float = 0.0) -> list[Ether]:
    sw.receive(IN, bytes(Ether(src=client.mac, dst=R_IN) / IP(src=client.ip, dst=dst) /
                         UDP(sport=sport, dport=dport) / b"x"), now)
    return [Ether(f) for f in sw.take(OUT)]


def udp_in(sw, dport: int, src: str = SRV1, sport: int = 9, dst: str = G1) -> list[Ether]:
    sw.receive(OUT, bytes(Ether(src=mac(src), dst=R_OUT) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) /
                          b"reply"))
    return [Ether(f) for f in sw.take(IN)]


def esp_switch(**config):
    """A NAT on which an honest host has defined ESP (needed before issue 9; harmless since)."""
    sw = switch_with(**config)
    assert Client(sw, "10.0.0.100").define(pcp.ESP_DEFINITION).result == pcp.Result.SUCCESS
    return sw


def udp_definition(port: int, length: int = 1, protocol: int = 17) -> pcp.GpnDefinition:
    return pcp.GpnDefinition(b"", protocol, 17, port, None, 0, length, 0, (1 << length) - 1, 0)


# ------------------------------------------------------------------ hijack


@pytest.mark.parametrize("protocol, port", [(17, 40000), (17, 5351), (17, 1024), (17, 65535)])
def test_defining_a_udp_port_of_the_napt_space_is_refused(protocol, port):
    sw = switch_with()
    attacker = Client(sw, "10.0.0.9")
    response = attacker.define(udp_definition(port, protocol=protocol))
    assert response.result == pcp.Result.HAS_ALG
    assert sw.core.counters["lease_refused:HAS_ALG"] == 1


def test_a_udp_definition_must_name_udp_as_its_protocol():
    attacker = Client(switch_with(), "10.0.0.9")
    assert attacker.define(udp_definition(80, protocol=6)).result == pcp.Result.MALFORMED_REQUEST


def test_a_stranger_cannot_lease_another_hosts_napt_replies():
    sw = switch_with()
    victim, attacker = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.9")
    (out,) = udp_out(sw, victim, 40000)
    global_port = out[UDP].sport
    assert attacker.define(udp_definition(global_port)).result == pcp.Result.HAS_ALG
    for gpn in (0, 1):
        assert attacker.lease(17, port=global_port, private_gpn=gpn, foreign_ip=None).result != pcp.Result.SUCCESS
    (back,) = udp_in(sw, global_port)
    assert back[IP].dst == victim.ip and back[UDP].dport == 40000


def test_a_udp_definition_below_the_napt_space_never_shadows_a_napt_mapping():
    sw = switch_with()
    victim, definer = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.9")
    assert definer.define(udp_definition(53)).result == pcp.Result.SUCCESS
    assert definer.lease(17, port=53, private_gpn=0, foreign_ip=None).result == pcp.Result.SUCCESS
    (out,) = udp_out(sw, victim, 53)  # the victim's own DNS client port 53
    assert out[UDP].sport != 53 and out[UDP].sport >= 1024  # NAPT never hands out a defined port
    (back,) = udp_in(sw, out[UDP].sport)
    assert back[IP].dst == victim.ip


def test_napt_and_map_never_take_the_ike_port_500():
    sw = switch_with()
    (out,) = udp_out(sw, Client(sw, "10.0.0.1"), 500, dport=500)
    assert out[UDP].sport != 500
    r = Client(sw, "10.0.0.2").ask(pcp.Opcode.MAP, pcp.MapInfo(os.urandom(12), 17, 500, 500, None))
    assert r.result == pcp.Result.SUCCESS and r.info.external_port >= 1024


# ----------------------------------------------------------------- squatting


def test_the_nats_own_definitions_cannot_be_redefined():
    sw = switch_with()
    squatter, honest = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    narrow = replace(pcp.ESP_DEFINITION, range_min=256, range_max=257)
    assert squatter.define(narrow).result == pcp.Result.DEFINITION_CONFLICT
    assert squatter.define(replace(pcp.ISAKMP_DEFINITION, length_bits=1, range_min=0, range_max=1,
                                   unspecified=0)).result == pcp.Result.DEFINITION_CONFLICT
    for d in (pcp.ESP_DEFINITION, pcp.AH_DEFINITION, pcp.ISAKMP_DEFINITION):
        assert honest.define(d).result == pcp.Result.SUCCESS
    assert honest.lease(50).result == pcp.Result.SUCCESS
    assert sw.core.counters["lease_refused:DEFINITION_CONFLICT"] == 2


def test_a_client_definition_is_owned_and_expires_without_leases():
    sw = switch_with()
    squatter, honest = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    gre = pcp.GpnDefinition(b"", 47, 0, 0, None, 32, 32, 1, 0xFFFFFFFF, 0)
    assert squatter.define(replace(gre, range_max=2)).result == pcp.Result.SUCCESS
    assert honest.define(gre).result == pcp.Result.DEFINITION_CONFLICT
    assert honest.lease(47).result == pcp.Result.PROTOCOL_NOT_DEFINED  # not its definition
    sw.apply(sw.core.tick(now=1000), now=1000)  # grace over, no lease ever followed
    assert honest.define(gre, now=1000).result == pcp.Result.SUCCESS
    assert honest.lease(47, now=1000).result == pcp.Result.SUCCESS


def test_a_client_definition_lives_as_long_as_its_leases():
    sw = switch_with()
    owner, other = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    gre = pcp.GpnDefinition(b"", 47, 0, 0, None, 32, 32, 1, 0xFFFFFFFF, 0)
    owner.define(gre)
    assert owner.lease(47, lifetime=3000).result == pcp.Result.SUCCESS
    sw.apply(sw.core.tick(now=1000), now=1000)
    assert other.define(replace(gre, range_max=5), now=1000).result == pcp.Result.DEFINITION_CONFLICT
    sw.apply(sw.core.tick(now=3001), now=3001)  # the lease expires; the definition rests its grace
    sw.apply(sw.core.tick(now=3100), now=3100)
    assert other.define(replace(gre, range_max=5), now=3100).result == pcp.Result.SUCCESS


def test_one_origin_cannot_define_unboundedly_many_protocols():
    sw = switch_with()
    squatter = Client(sw, "10.0.0.9")
    results = [squatter.define(pcp.GpnDefinition(b"", p, 0, 0, None, 0, 32, 1, 0xFFFFFFFF, 0)).result
               for p in range(100, 140)]
    assert pcp.Result.USER_EX_QUOTA in results
    assert results.count(pcp.Result.SUCCESS) == sw.core.config.definition_quota


# ------------------------------------------------------------- quota theft


def test_a_forged_ip_does_not_spend_the_victims_quota():
    sw = esp_switch(lease_quota=2)
    victim = Client(sw, "10.0.0.1")
    thief = Client(sw, "10.0.0.1", src_mac=ATTACKER_MAC)
    assert [thief.lease(50).result for _ in range(3)][-1] == pcp.Result.USER_EX_QUOTA
    assert victim.lease(50).result == pcp.Result.SUCCESS


def test_cycling_source_ips_from_one_mac_cannot_multiply_the_quota():
    sw = esp_switch(lease_quota=4)
    granted = 0
    for host in range(1, 20):
        thief = Client(sw, f"10.0.0.{host}", src_mac=ATTACKER_MAC)
        granted += sum(thief.lease(50).result == pcp.Result.SUCCESS for _ in range(4))
    assert granted == sw.core.config.lease_mac_quota
    assert sw.core.counters["lease_refused:USER_EX_QUOTA"] > 0


# ---------------------------------------------------------- port exhaustion


def test_one_host_cannot_take_every_napt_port():
    sw = switch_with(napt_ports_per_host=8)
    hog, honest = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    for port in range(2000, 2020):
        udp_out(sw, hog, port)
    assert sw.core.pool.ports_held(17, hog.ip, G1) == 8
    assert sw.core.counters["drop:port-limit"] == 12
    assert len(udp_out(sw, honest, 3000)) == 1
    r = honest.ask(pcp.Opcode.MAP, pcp.MapInfo(os.urandom(12), 17, 7000, 0, None))
    assert r.result == pcp.Result.SUCCESS
    r = hog.ask(pcp.Opcode.MAP, pcp.MapInfo(os.urandom(12), 17, 7000, 0, None))
    assert r.result == pcp.Result.USER_EX_QUOTA


def test_map_leases_count_toward_the_per_host_port_limit():
    sw = switch_with(napt_ports_per_host=2)
    c = Client(sw, "10.0.0.1")
    for port in (7000, 7001):
        assert c.ask(pcp.Opcode.MAP, pcp.MapInfo(os.urandom(12), 17, port, 0, None)).result == pcp.Result.SUCCESS
    assert udp_out(sw, c, 3000) == []
    assert sw.core.counters["drop:port-limit"] == 1


def test_a_host_over_its_limit_gets_one_rate_limited_admin_prohibited_per_second():
    sw = switch_with(napt_ports_per_host=1)
    hog = Client(sw, "10.0.0.9")
    udp_out(sw, hog, 2000)
    sw.take(IN)
    for port in range(2001, 2050):
        udp_out(sw, hog, port, now=0.5)
    errors = [Ether(f) for f in sw.take(IN)]
    assert len(errors) == 1
    (error,) = errors
    assert error[IP].src == GATEWAY_IP and error[IP].dst == hog.ip and error.dst == hog.mac
    assert (error[ICMP].type, error[ICMP].code) == (3, 13)  # RFC 5508 REQ-8
    assert error[UDPerror].sport == 2001  # quotes the refused packet (RFC 792)
    udp_out(sw, hog, 2051, now=1.6)
    assert len(sw.take(IN)) == 1
    assert sw.core.counters["icmp_admin_prohibited_sent"] == 2


def test_forged_source_addresses_cannot_make_the_nat_flood_errors():
    sw = switch_with(napt_ports_per_host=1)
    for host in range(1, 60):
        forger = Client(sw, f"10.0.0.{host}", src_mac=ATTACKER_MAC)
        udp_out(sw, forger, 2000, now=5.0)
        udp_out(sw, forger, 2001, now=5.0)  # over its limit of 1
    assert len(sw.take(IN)) == 10  # decide.ADMIN_PROHIBITED_PER_S, whatever the number of sources
    assert sw.core.counters["drop:port-limit"] == 59


def test_icmp_echo_identifiers_count_toward_the_per_host_limit():
    sw = switch_with(napt_ports_per_host=3)
    hog, other = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    sw.receive(IN, bytes(Ether(src=other.mac, dst=R_IN) / IP(src=other.ip, dst=SRV1) / ICMP(id=77)), 0.0)
    for ident in range(10):  # two hosts ping SRV1 through one global IP: one entry per identifier (slow path)
        sw.receive(IN, bytes(Ether(src=hog.mac, dst=R_IN) / IP(src=hog.ip, dst=SRV1) / ICMP(id=ident)), 0.0)
    assert sw.core.table.count_of(1, hog.ip) == 3
    assert sw.core.counters["drop:port-limit"] == 7


# ------------------------------------------------------------------ lower


def test_a_taken_private_spi_is_not_swapped_for_another_global_spi():
    sw = esp_switch()
    a, b = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.2")
    spi = a.lease(50).info.global_gpn
    r = b.lease(50, private_gpn=spi)
    assert r.result == pcp.Result.GPN_IN_USE


def test_a_port_with_a_non_udp_protocol_is_malformed():
    c = Client(esp_switch(), "10.0.0.1")
    assert c.lease(50, port=500).result == pcp.Result.MALFORMED_REQUEST
    assert not list(c.sw.core.table)


@pytest.mark.parametrize("foreign", [GATEWAY_IP, "10.0.0.2", "127.0.0.1", "224.0.0.1", "255.255.255.255",
                                     "0.1.2.3", "169.254.1.1", "240.0.0.1", G1])
def test_foreign_and_remote_addresses_are_validated(foreign):
    sw = esp_switch()
    c = Client(sw, "10.0.0.1")
    assert c.lease(50, foreign_ip=foreign).result == pcp.Result.MALFORMED_REQUEST
    peer = pcp.PeerInfo(os.urandom(12), 17, 7000, 0, None, 9, foreign)
    assert c.ask(pcp.Opcode.PEER, peer).result == pcp.Result.MALFORMED_REQUEST
    assert not list(sw.core.table)


@pytest.mark.parametrize("client", [GATEWAY_IP, "10.0.0.0", "10.0.0.255"])
def test_the_gateway_network_and_broadcast_addresses_are_no_clients(client):
    sw = esp_switch()
    assert Client(sw, client).lease(50).result == pcp.Result.ADDRESS_MISMATCH
    assert not list(sw.core.table)


def test_a_guessed_nonce_gets_the_same_answer_as_a_wrong_one():
    sw = esp_switch()
    owner, other = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.2")
    forger = Client(sw, "10.0.0.1", src_mac=ATTACKER_MAC)
    nonce = os.urandom(12)
    granted = owner.lease(50, nonce=nonce).info
    named = {"global_ip": granted.global_ip, "global_gpn": granted.global_gpn}
    for who in (other, forger):
        for lifetime in (600, 0):
            right = who.lease(50, nonce=nonce, lifetime=lifetime, **named)
            wrong = who.lease(50, nonce=os.urandom(12), lifetime=lifetime, **named)
            assert (right.result, right.lifetime) == (wrong.result, wrong.lifetime)
            assert right.result != pcp.Result.SUCCESS


def test_a_request_timed_before_the_switch_connected_is_answered():
    sw = esp_switch()
    sw.apply(sw.core.switch_connected(100.0), 100.0)
    c = Client(sw, "10.0.0.1")
    r = c.lease(50, now=50.0)
    assert r.epoch == 0


def test_a_corrupt_table_raises_a_named_exception_even_under_python_o():
    code = ("from nat_app.table import EntryKind, TableCorrupt, TranslationTable\n"
            "t = TranslationTable()\n"
            "e = t.add(kind=EntryKind.NAT_ALG, protocol=17, private_ip='10.0.0.1', private_gpn=1,"
            " global_ip='203.0.113.1', global_gpn=1, foreign=None, now=0)\n"
            "t._in.pop(e.in_key)\n"
            "try:\n    t.check_invariants()\nexcept TableCorrupt:\n    print('caught')\n")
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "caught", result.stderr


def test_a_corrupt_table_raises_a_named_exception():
    t = TranslationTable()
    entry = t.add(kind=EntryKind.NAT_ALG, protocol=17,
                  private_ip="10.0.0.1", private_gpn=1, global_ip=G1, global_gpn=1, foreign=None, now=0)
    t._out.pop(entry.out_key)
    with pytest.raises(TableCorrupt):
        t.check_invariants()
