"""The lease server and client-ALG translation, through NatCore and the fake switch.

Requests are built with the shared codec (netwire.pcp) and sent as UDP to the
gateway, exactly as a client on the link would; ESP/AH/ISAKMP packets are
crafted with scapy.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from nat_app.messages import PRIO_PUNT, PRIO_TRANSLATE
from nat_app.table import DataPath, EntryKind
from netwire import pcp
from netwire.plan import GATEWAY_IP
from tests.unit.fakeswitch import FakeSwitch

IN, OUT = 1, 2
R_IN, R_OUT = "02:4e:41:54:00:01", "02:4e:41:54:00:02"
GW, SRV1, SRV2 = GATEWAY_IP, "203.0.113.100", "203.0.113.101"


def mac(ip: str) -> str:
    third, fourth = (int(x) for x in ip.split(".")[2:])
    return f"00:00:00:00:{third:02x}:{fourth:02x}"


def switch_with(globals_: int = 1, **config) -> FakeSwitch:
    sw = FakeSwitch(NatCore(NatConfig(globals=global_pool(globals_), **config), rng=random.Random(5)))
    for server in (SRV1, SRV2):
        sw.receive(OUT, bytes(Ether(src=mac(server), dst="ff:ff:ff:ff:ff:ff") /
                              ARP(op=1, hwsrc=mac(server), psrc=server, pdst="203.0.113.1")))
    sw.take(OUT)
    return sw


class Client:
    """A host on the inside link speaking the lease protocol through the fake r1."""

    def __init__(self, sw: FakeSwitch, ip: str, src_mac: str | None = None, in_port: int = IN) -> None:
        self.sw, self.ip, self.mac, self.in_port = sw, ip, src_mac or mac(ip), in_port

    def ask(self, opcode, info, lifetime: int = 600, client_ip: str | None = None, now: float = 0.0):
        raw = pcp.encode_request(pcp.Request(opcode, lifetime, client_ip or self.ip, info))
        self.sw.receive(self.in_port, bytes(Ether(src=self.mac, dst=R_IN) / IP(src=self.ip, dst=GW) /
                                            UDP(sport=pcp.CLIENT_PORT, dport=pcp.SERVER_PORT) / raw), now)
        replies = [Ether(f) for f in self.sw.take(IN) if UDP in Ether(f) and Ether(f)[UDP].sport == pcp.SERVER_PORT]
        assert len(replies) == 1, replies
        assert replies[0][IP].dst == self.ip and replies[0].dst == self.mac
        return pcp.decode_response(bytes(replies[0][UDP].payload))

    def define(self, d: pcp.GpnDefinition, now: float = 0.0):
        return self.ask(pcp.Opcode.DEFINE, replace(d, nonce=os.urandom(12)), now=now)

    def lease(self, protocol: int, nonce: bytes | None = None, lifetime: int = 600, now: float = 0.0, **fields):
        args = {"private_gpn": None, "global_gpn": None, "global_ip": None, "foreign_ip": SRV1, **fields}
        info = pcp.LeaseInfo(nonce or os.urandom(12), protocol, **args)
        return self.ask(pcp.Opcode.LEASE, info, lifetime=lifetime, now=now)

    def send_raw(self, proto: int, payload: bytes, dst: str = SRV1, now: float = 0.0) -> None:
        self.sw.receive(self.in_port, bytes(Ether(src=self.mac, dst=R_IN) / IP(src=self.ip, dst=dst, proto=proto) /
                                            payload), now)


def esp_payload(spi: int, seq: int = 1) -> bytes:
    return spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + b"\xaa" * 24


def server_sends(sw: FakeSwitch, proto: int, payload: bytes, dst: str, src: str = SRV1) -> list[Ether]:
    sw.receive(OUT, bytes(Ether(src=mac(src), dst=R_OUT) / IP(src=src, dst=dst, proto=proto) / payload))
    return [Ether(f) for f in sw.take(IN)]


def test_define_a_protocol_the_nat_translates_itself_is_refused():
    c = Client(switch_with(), "10.0.0.1")
    tcp = pcp.GpnDefinition(os.urandom(12), 6, 0, 0, 0, 16, 16, 1, 65535, 0)
    response = c.ask(pcp.Opcode.DEFINE, tcp)
    assert response.result == pcp.Result.HAS_ALG and response.lifetime == pcp.LONG_ERROR_LIFETIME
    assert c.define(pcp.ESP_DEFINITION).result == pcp.Result.SUCCESS


def test_lease_before_define_is_refused_unless_the_nat_defined_the_protocol_itself():
    c = Client(switch_with(), "10.0.0.1")
    assert c.lease(47).result == pcp.Result.PROTOCOL_NOT_DEFINED  # GRE: nobody defined it
    assert c.lease(50).result == pcp.Result.SUCCESS  # ESP: the NAT's own definition, fixed at start


def test_unspecified_values_are_chosen_and_every_fig6_field_returned():
    sw = switch_with()
    c = Client(sw, "10.0.0.1")
    c.define(pcp.ESP_DEFINITION)
    r = c.lease(50)
    assert r.result == pcp.Result.SUCCESS and r.lifetime == 600
    info = r.info
    assert info.global_ip == "203.0.113.1" and info.global_gpn >= 256 and info.private_gpn == info.global_gpn
    assert info.foreign_ip == SRV1 and r.epoch == 0
    (entry,) = list(sw.core.table)
    assert (entry.kind, entry.protocol, entry.private_ip, entry.global_gpn) == (EntryKind.CLIENT_ALG, 50, "10.0.0.1",
                                                                                 info.global_gpn)


def test_spis_below_256_are_never_leased():
    c = Client(switch_with(), "10.0.0.1")
    c.define(pcp.ESP_DEFINITION)
    assert c.lease(50, global_gpn=255).result == pcp.Result.GPN_UNAVAILABLE


def test_esp_out_and_in_on_the_fast_path():
    sw = switch_with()
    c = Client(sw, "10.0.0.1")
    c.define(pcp.ESP_DEFINITION)
    spi = c.lease(50).info.global_gpn
    c.send_raw(50, esp_payload(0x5000))  # outbound carries the peer's SPI
    (out,) = [Ether(f) for f in sw.take(OUT)]
    assert out[IP].src == "203.0.113.1" and bytes(out[IP].payload)[:4] == (0x5000).to_bytes(4, "big")
    before = sw.packet_ins
    (back,) = server_sends(sw, 50, esp_payload(spi), "203.0.113.1")
    assert back[IP].dst == "10.0.0.1" and bytes(back[IP].payload)[:4] == spi.to_bytes(4, "big")
    assert sw.packet_ins == before  # a flow, not the controller
    assert server_sends(sw, 50, esp_payload(spi), "203.0.113.1", src=SRV2) == []  # another foreign: no entry


def test_three_clients_behind_one_global_ip_are_demultiplexed_by_spi():
    sw = switch_with()
    clients = [Client(sw, f"10.0.0.{i}") for i in (1, 2, 3)]
    clients[0].define(pcp.ESP_DEFINITION)
    spis = [c.lease(50).info.global_gpn for c in clients]
    assert len(set(spis)) == 3  # CL-UNIQ
    assert all(e.path is DataPath.SLOW for e in sw.core.table)
    for c, spi in zip(clients, spis, strict=True):
        (back,) = server_sends(sw, 50, esp_payload(spi), "203.0.113.1")
        assert back[IP].dst == c.ip and back.dst == c.mac
    assert server_sends(sw, 50, esp_payload(0x7777), "203.0.113.1") == []
    assert sw.core.counters["slow_path_packets"] == 3


def test_the_allocator_prefers_a_global_ip_that_keeps_the_fast_path():
    sw = switch_with(globals_=2)
    a, b = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.3")  # paired with the same global
    a.define(pcp.AH_DEFINITION)
    ra, rb = a.lease(51), b.lease(51)
    assert ra.info.global_ip != rb.info.global_ip
    assert all(e.path is DataPath.FAST for e in sw.core.table)
    assert b.lease(51).info.global_ip == rb.info.global_ip  # CL-SPI: keeping the same global IP


def test_ah_spi_is_read_four_bytes_into_the_header():
    sw = switch_with()
    clients = [Client(sw, f"10.0.0.{i}") for i in (1, 2)]
    clients[0].define(pcp.AH_DEFINITION)
    spis = [c.lease(51).info.global_gpn for c in clients]
    for c, spi in zip(clients, spis, strict=True):
        ah = bytes([50, 4, 0, 0]) + spi.to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x00" * 12
        (back,) = server_sends(sw, 51, ah, "203.0.113.1")
        assert back[IP].dst == c.ip


def test_isakmp_cookies_demultiplex_udp_500():
    sw = switch_with()
    clients = [Client(sw, f"10.0.0.{i}") for i in (1, 2)]
    clients[0].define(pcp.ISAKMP_DEFINITION)
    cookies = [c.lease(17, port=500).info.global_gpn for c in clients]
    for c, cookie in zip(clients, cookies, strict=True):
        c.sw.receive(IN, bytes(Ether(src=c.mac, dst=R_IN) / IP(src=c.ip, dst=SRV1) / UDP(sport=500, dport=500) /
                               (cookie.to_bytes(8, "big") + bytes(20))))
        (out,) = [Ether(f) for f in sw.take(OUT)]
        assert out[IP].src == "203.0.113.1" and out[UDP].sport == 500
    for c, cookie in zip(clients, cookies, strict=True):
        sw.receive(OUT, bytes(Ether(src=mac(SRV1), dst=R_OUT) / IP(src=SRV1, dst="203.0.113.1") /
                              UDP(sport=500, dport=500) / (cookie.to_bytes(8, "big") + bytes(20))))
        (back,) = [Ether(f) for f in sw.take(IN)]
        assert back[IP].dst == c.ip and back[UDP].dport == 500


def test_renewal_needs_the_owner_and_the_nonce():
    sw = switch_with()
    owner = Client(sw, "10.0.0.1")
    owner.define(pcp.ESP_DEFINITION)
    nonce = os.urandom(12)
    spi = owner.lease(50, nonce=nonce).info.global_gpn
    assert owner.lease(50, nonce=os.urandom(12), private_gpn=spi).result == pcp.Result.NOT_AUTHORIZED
    spoof = Client(sw, "10.0.0.1", src_mac="00:00:00:00:66:66")  # same IP, another MAC on the link
    assert spoof.lease(50, nonce=nonce, private_gpn=spi).result == pcp.Result.NOT_AUTHORIZED
    assert spoof.lease(50, nonce=nonce, private_gpn=spi, lifetime=0).result == pcp.Result.NOT_AUTHORIZED
    renewed = owner.lease(50, nonce=nonce, private_gpn=spi, lifetime=900, now=100)
    assert renewed.result == pcp.Result.SUCCESS and renewed.lifetime == 900
    (entry,) = list(sw.core.table)
    assert entry.expires == 1000


def test_release_by_lifetime_zero_and_expiry_erase_the_entry_and_its_flows():
    sw = switch_with()
    c = Client(sw, "10.0.0.1")
    c.define(pcp.ESP_DEFINITION)
    nonce = os.urandom(12)
    spi = c.lease(50, nonce=nonce).info.global_gpn
    c.send_raw(50, esp_payload(1000))
    assert len(sw.take(OUT)) == 1
    assert c.lease(50, nonce=nonce, private_gpn=spi, lifetime=0).result == pcp.Result.SUCCESS
    assert len(sw.core.table) == 0
    assert server_sends(sw, 50, esp_payload(spi), "203.0.113.1") == []
    c.send_raw(50, esp_payload(1000))
    assert sw.take(OUT) == []
    spi2 = c.lease(50, lifetime=200, now=10).info.global_gpn
    sw.apply(sw.core.tick(now=211), now=211)
    assert len(sw.core.table) == 0
    assert server_sends(sw, 50, esp_payload(spi2), "203.0.113.1") == []
    assert not [f for f in sw.flows if PRIO_TRANSLATE <= f.msg.priority < PRIO_PUNT]  # no translation left


def test_address_mismatch_quota_and_lifetime_clamp():
    sw = switch_with(lease_quota=2)
    c = Client(sw, "10.0.0.1")
    c.define(pcp.ESP_DEFINITION)
    r = c.ask(pcp.Opcode.LEASE, pcp.LeaseInfo(os.urandom(12), 50, None, None, None, SRV1), client_ip="10.0.0.9")
    assert r.result == pcp.Result.ADDRESS_MISMATCH
    assert c.lease(50, lifetime=5).lifetime == 120  # clamped to the minimum
    assert c.lease(50, lifetime=10**7).lifetime == 86400
    assert c.lease(50).result == pcp.Result.USER_EX_QUOTA


def test_read_out_lists_only_ones_own_entries():
    sw = switch_with()
    a, b = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.2")
    a.define(pcp.ESP_DEFINITION)
    nonce = os.urandom(12)
    a.lease(50, nonce=nonce)
    b.lease(50)
    mine = a.ask(pcp.Opcode.READ, pcp.ReadInfo(nonce, ()))
    assert mine.result == pcp.Result.SUCCESS and [e.private_ip for e in mine.info.entries] == ["10.0.0.1"]
    assert b.ask(pcp.Opcode.READ, pcp.ReadInfo(nonce, ())).result == pcp.Result.NOT_AUTHORIZED


def test_map_shares_the_port_space_with_napt():
    sw = switch_with()
    c = Client(sw, "10.0.0.1")
    r = c.ask(pcp.Opcode.MAP, pcp.MapInfo(os.urandom(12), 17, 7000, 0, None))
    assert r.result == pcp.Result.SUCCESS
    port = r.info.external_port
    # The NAT's own mapping of the same private port is the leased one (one port space).
    sw.receive(IN, bytes(Ether(src=c.mac, dst=R_IN) / IP(src=c.ip, dst=SRV1) / UDP(sport=7000, dport=9)))
    assert Ether(sw.take(OUT)[0])[UDP].sport == port
    sw.receive(OUT, bytes(Ether(src=mac(SRV2), dst=R_OUT) / IP(src=SRV2, dst="203.0.113.1") /
                          UDP(sport=1, dport=port)))
    assert Ether(sw.take(IN)[0])[UDP].dport == 7000  # MAP: any foreign may reach it


@pytest.mark.parametrize("garbage", [b"", b"\x02", b"\x02\x61" + b"\x00" * 22, b"\x02" + os.urandom(59), b"\x01" * 24])
def test_malformed_requests_are_answered_or_dropped_never_crash(garbage):
    sw = switch_with()
    sw.receive(IN, bytes(Ether(src=mac("10.0.0.1"), dst=R_IN) / IP(src="10.0.0.1", dst=GW) /
                         UDP(sport=pcp.CLIENT_PORT, dport=pcp.SERVER_PORT) / garbage))
    for frame in sw.take(IN):
        response = pcp.decode_response(bytes(Ether(frame)[UDP].payload))
        assert response.result != pcp.Result.SUCCESS
    sw.core.table.check_invariants()


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzzed_and_mutated_requests_never_corrupt_the_table(data):
    sw = switch_with(lease_quota=4)
    good = Client(sw, "10.0.0.1")
    good.define(pcp.ESP_DEFINITION)
    base = pcp.encode_request(pcp.Request(pcp.Opcode.LEASE, 600, "10.0.0.2",
                                          pcp.LeaseInfo(os.urandom(12), 50, None, None, None, SRV1)))
    for _ in range(data.draw(st.integers(1, 6))):
        raw = bytearray(base)
        for _ in range(data.draw(st.integers(0, 6))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        raw = bytes(raw[: data.draw(st.integers(0, len(raw)))]) + data.draw(st.binary(max_size=8))
        sw.receive(IN, bytes(Ether(src=mac("10.0.0.2"), dst=R_IN) / IP(src="10.0.0.2", dst=GW) /
                             UDP(sport=pcp.CLIENT_PORT, dport=pcp.SERVER_PORT) / raw))
        sw.take(IN)
        sw.core.table.check_invariants()
    assert good.lease(50).result == pcp.Result.SUCCESS  # good clients still get leases


def test_another_clients_lease_cannot_be_taken_renewed_or_released():
    sw = switch_with()
    owner, other = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.2")
    owner.define(pcp.ESP_DEFINITION)
    nonce = os.urandom(12)
    granted = owner.lease(50, nonce=nonce).info
    named = {"global_ip": granted.global_ip, "global_gpn": granted.global_gpn}
    assert other.lease(50, **named).result == pcp.Result.GPN_IN_USE  # asking for it
    assert other.lease(50, nonce=nonce, **named).result == pcp.Result.GPN_IN_USE  # a sniffed nonce changes nothing
    assert other.lease(50, lifetime=0, **named).result == pcp.Result.NOT_AUTHORIZED  # releasing it
    (entry,) = list(sw.core.table)
    assert entry.private_ip == "10.0.0.1" and entry.expires == 600
