"""NAT-PMP (RFC 6886) beside PCP on UDP 5351, through NatCore and the fake r1 (issue 14, item 6).

The attacks come first: a stranger deleting or renewing another host's mapping,
quota exhaustion, malformed frames, version 0 carrying PCP's opcodes. Frames are
built with the one codec (netwire.natpmp) and sent as UDP to the gateway, as
libnatpmp's ``natpmpc`` sends them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from nat_app import state
from nat_app.config import NatConfig, global_pool
from nat_app.natpmp_server import NATPMP_NONCE
from nat_app.table import EntryKind
from netwire import natpmp, pcp
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from netwire.natpmp import Result
from tests.unit.test_lease_server import GW, IN, OUT, R_IN, R_OUT, SRV1, Client, mac, switch_with

G1 = "203.0.113.1"
SPORT = 40123  # libnatpmp sends from an ephemeral port and reads the answer there


def send(sw, ip: str, payload: bytes, src_mac: str | None = None, now: float = 0.0) -> list[Ether]:
    """A NAT-PMP frame from ``ip`` to the gateway; the answers r1 sends back."""
    sw.receive(IN, bytes(Ether(src=src_mac or mac(ip), dst=R_IN) / IP(src=ip, dst=GW) /
                         UDP(sport=SPORT, dport=natpmp.SERVER_PORT) / payload), now)
    return [Ether(f) for f in sw.take(IN)]


def ask(sw, ip: str, request: natpmp.Request, src_mac: str | None = None, now: float = 0.0) -> natpmp.Response:
    (answer,) = send(sw, ip, natpmp.encode_request(request), src_mac, now)
    assert answer[IP].src == GW and answer[IP].dst == ip and answer[UDP].sport == natpmp.SERVER_PORT
    assert answer[UDP].dport == SPORT
    return natpmp.decode_response(bytes(answer[UDP].payload))


def map_tcp(sw, ip: str, port: int = 8080, lifetime: int = 120, src_mac: str | None = None, now: float = 0.0):
    return ask(sw, ip, natpmp.MapRequest(IPPROTO_TCP, port, port, lifetime), src_mac, now)


def syn_from_srv1(sw, global_port: int) -> list[Ether]:
    sw.receive(OUT, bytes(Ether(src=mac(SRV1), dst=R_OUT) / IP(src=SRV1, dst=G1) /
                          TCP(sport=5555, dport=global_port, flags="S")))
    return [Ether(f) for f in sw.take(IN)]


def leases(sw) -> list:
    return [e for e in sw.core.table if e.kind is EntryKind.CLIENT_ALG]


# ------------------------------------------------------------------ attacks


def test_a_stranger_cannot_delete_or_renew_another_hosts_mapping():
    sw = switch_with()
    granted = map_tcp(sw, "10.0.0.1")
    assert granted.result is Result.SUCCESS
    # Another host names the same internal port: that is its own (absent) mapping, never the victim's.
    assert map_tcp(sw, "10.0.0.2", lifetime=0).result is Result.SUCCESS
    # A forger with the victim's IP from another MAC (SAVI would drop it at s1; the server refuses too).
    forged = "00:00:00:00:66:66"
    assert map_tcp(sw, "10.0.0.1", lifetime=0, src_mac=forged).result is Result.NOT_AUTHORIZED
    assert map_tcp(sw, "10.0.0.1", lifetime=86400, src_mac=forged).result is Result.NOT_AUTHORIZED
    assert ask(sw, "10.0.0.1", natpmp.MapRequest(IPPROTO_TCP, 0, 0, 0), src_mac=forged).result is Result.SUCCESS
    (entry,) = leases(sw)
    assert entry.private_ip == "10.0.0.1" and entry.expires == 120
    (syn,) = syn_from_srv1(sw, granted.external_port)
    assert syn[IP].dst == "10.0.0.1" and syn[TCP].dport == 8080
    assert sw.core.counters["natpmp_refused:NOT_AUTHORIZED"] == 2


def test_natpmp_and_pcp_cannot_take_over_each_others_leases():
    sw = switch_with()
    pcp_client = Client(sw, "10.0.0.1")
    nonce = os.urandom(12)
    assert pcp_client.ask(pcp.Opcode.MAP, pcp.MapInfo(nonce, IPPROTO_TCP, 9090, 0, None)).result == pcp.Result.SUCCESS
    assert map_tcp(sw, "10.0.0.1", port=9090, lifetime=0).result is Result.NOT_AUTHORIZED
    assert map_tcp(sw, "10.0.0.1").result is Result.SUCCESS
    stranger_nonce = pcp.MapInfo(os.urandom(12), IPPROTO_TCP, 8080, 0, None)
    assert pcp_client.ask(pcp.Opcode.MAP, stranger_nonce, lifetime=0).result == pcp.Result.NOT_AUTHORIZED
    assert ask(sw, "10.0.0.1", natpmp.MapRequest(IPPROTO_TCP, 0, 0, 0)).result is Result.SUCCESS  # delete all
    (left,) = leases(sw)
    assert left.private_gpn == 9090  # the PCP client's lease survives NAT-PMP's "delete all"


def test_quota_exhaustion_is_out_of_resources_and_counted():
    sw = switch_with(lease_quota=3)
    for port in (8001, 8002, 8003):
        assert map_tcp(sw, "10.0.0.1", port=port).result is Result.SUCCESS
    refused = map_tcp(sw, "10.0.0.1", port=8004)
    assert (refused.result, refused.external_port, refused.lifetime) == (Result.OUT_OF_RESOURCES, 0, 0)
    assert sw.core.counters["natpmp_refused:OUT_OF_RESOURCES"] == 1
    assert map_tcp(sw, "10.0.0.2", port=8004).result is Result.SUCCESS  # another host is not starved


def test_the_per_host_port_limit_holds_for_natpmp_too():
    sw = switch_with(napt_ports_per_host=2)
    assert [map_tcp(sw, "10.0.0.1", port=p).result for p in (8001, 8002, 8003)] == [
        Result.SUCCESS, Result.SUCCESS, Result.OUT_OF_RESOURCES]


@pytest.mark.parametrize("opcode", [pcp.Opcode.DEFINE, pcp.Opcode.LEASE, pcp.Opcode.READ, 3, 127])
def test_version_0_with_pcp_opcodes_is_unsupported_opcode_and_changes_nothing(opcode):
    sw = switch_with()
    frame = bytes([0, opcode]) + os.urandom(58)
    (answer,) = send(sw, "10.0.0.1", frame)
    raw = bytes(answer[UDP].payload)
    assert raw[:2] == bytes([0, 128 | opcode]) and int.from_bytes(raw[2:4], "big") == Result.UNSUPP_OPCODE
    assert raw[8:] == frame[8:]  # RFC 6886 3.5: the request comes back
    assert list(sw.core.table) == [] and sw.core.counters["natpmp_refused:UNSUPP_OPCODE"] == 1


@pytest.mark.parametrize("frame", [
    bytes([0, 1]) + bytes(58),  # version 0, opcode MAP with a PCP body: not NAT-PMP's 12 octets
    bytes([0, 2]) + bytes(9),  # a mapping request cut short
    bytes([0, 0, 0]),  # an address request with a tail
    bytes([0]),  # a version alone
    bytes([0, 129]) + bytes(14),  # a response sent to the server (RFC 6886 3.5: ignored)
    bytes([0, 0]) + bytes(1200),  # longer than any request
])
def test_malformed_natpmp_frames_are_dropped_and_counted(frame):
    sw = switch_with()
    assert send(sw, "10.0.0.1", frame) == []
    assert sw.core.counters["natpmp_dropped:malformed"] == 1 and list(sw.core.table) == []


def test_a_source_outside_the_inside_hosts_gets_nothing():
    sw = switch_with()
    assert ask(sw, "10.0.0.255", natpmp.AddressRequest()).result is Result.NOT_AUTHORIZED
    assert map_tcp(sw, "10.0.0.255").result is Result.NOT_AUTHORIZED
    assert list(sw.core.table) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=20), st.integers(0, 255))
def test_fuzzed_version_0_frames_never_corrupt_the_table(tail, opcode):
    sw = switch_with(lease_quota=4)
    for answer in send(sw, "10.0.0.2", bytes([0, opcode]) + tail):
        assert bytes(answer[UDP].payload)[0] == 0
    sw.core.table.check_invariants()
    assert map_tcp(sw, "10.0.0.1").result is Result.SUCCESS


# ------------------------------------------------------------------ the protocol


def test_external_address_is_the_hosts_global_ip_and_the_epoch_is_pcps():
    sw = switch_with(globals_=2)
    first, second = ask(sw, "10.0.0.1", natpmp.AddressRequest(), now=42), ask(sw, "10.0.0.2", natpmp.AddressRequest())
    assert (first.result, first.external_ip) == (Result.SUCCESS, G1)
    assert second.external_ip == "203.0.113.2"  # one global address per private host (RFC 4787 REQ-2)
    pcp_epoch = Client(sw, "10.0.0.1").ask(pcp.Opcode.MAP, pcp.MapInfo(os.urandom(12), 6, 1, 0, None), now=42).epoch
    assert first.epoch == pcp_epoch == 42  # one epoch for both (RFC 6887 Appendix A)


def test_map_renew_delete_and_only_while_it_lives_does_srv1_reach_the_host():
    sw = switch_with()
    granted = map_tcp(sw, "10.0.0.1")
    assert (granted.result, granted.internal_port, granted.lifetime) == (Result.SUCCESS, 8080, 120)
    (syn,) = syn_from_srv1(sw, granted.external_port)
    assert (syn[IP].dst, syn[TCP].dport, syn[IP].src) == ("10.0.0.1", 8080, SRV1)
    renewed = map_tcp(sw, "10.0.0.1", now=100)
    assert renewed.external_port == granted.external_port and renewed.epoch == 100
    (entry,) = leases(sw)
    assert entry.expires == 220 and sw.core.counters["leases_renewed"] == 1
    deleted = map_tcp(sw, "10.0.0.1", lifetime=0, now=101)
    assert (deleted.result, deleted.external_port, deleted.lifetime) == (Result.SUCCESS, 0, 0)
    assert leases(sw) == [] and syn_from_srv1(sw, granted.external_port) == []


def test_a_mapping_expires_with_its_lifetime():
    sw = switch_with()
    granted = ask(sw, "10.0.0.1", natpmp.MapRequest(IPPROTO_UDP, 5000, 0, 150), now=10)
    assert granted.result is Result.SUCCESS and granted.lifetime == 150
    sw.apply(sw.core.tick(now=161), now=161)
    assert leases(sw) == []


def test_lifetimes_are_clamped_like_maps():
    sw = switch_with()
    assert map_tcp(sw, "10.0.0.1", port=8001, lifetime=5).lifetime == 120
    assert map_tcp(sw, "10.0.0.1", port=8002, lifetime=natpmp.RECOMMENDED_LIFETIME).lifetime == 7200
    assert map_tcp(sw, "10.0.0.1", port=8003, lifetime=10**7).lifetime == 86400


def test_natpmp_mappings_are_owned_by_the_origin_with_the_natpmp_nonce():
    sw = switch_with()
    entry_port = map_tcp(sw, "10.0.0.1").external_port
    (entry,) = leases(sw)
    assert entry.global_gpn == entry_port
    owner = sw.core.leases._owners[entry.id]
    assert (owner.origin.ip, owner.origin.mac, owner.nonce) == ("10.0.0.1", mac("10.0.0.1"), NATPMP_NONCE)


def test_codec_round_trips_and_sizes():
    for request, size in ((natpmp.AddressRequest(), 2), (natpmp.MapRequest(6, 8080, 8080, 120), 12)):
        raw = natpmp.encode_request(request)
        assert len(raw) == size and natpmp.decode_request(raw) == request
    address = natpmp.AddressResponse(Result.SUCCESS, 7, G1)
    mapping = natpmp.MapResponse(17, Result.SUCCESS, 7, 5000, 5001, 120)
    assert len(natpmp.encode_response(address)) == 12 and len(natpmp.encode_response(mapping)) == 16
    assert natpmp.decode_response(natpmp.encode_response(address)) == address
    assert natpmp.decode_response(natpmp.encode_response(mapping)) == mapping
    refused = natpmp.AddressResponse(Result.NOT_AUTHORIZED, 7, G1)
    assert natpmp.decode_response(natpmp.encode_response(refused)).external_ip == "0.0.0.0"  # RFC 6886 3.2
    with pytest.raises(natpmp.NatPmpError) as version:
        natpmp.decode_request(bytes([1, 0]))
    assert version.value.result is Result.UNSUPP_VERSION
    assert len(natpmp.error_answer(bytes([1, 0]), Result.UNSUPP_VERSION, 3)) == 8
    with pytest.raises(ValueError):
        natpmp.MapRequest(50, 1, 1, 1)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed (apt-get install tshark)")
def test_wiresharks_natpmp_dissector_reads_our_answers_as_meant(tmp_path):
    """An oracle nobody here wrote: tshark's NAT-PMP dissector on the NAT's own answers."""
    sw = switch_with()
    frames = send(sw, "10.0.0.1", natpmp.encode_request(natpmp.AddressRequest()), now=9)
    frames += send(sw, "10.0.0.1", natpmp.encode_request(natpmp.MapRequest(IPPROTO_TCP, 8080, 8080, 120)), now=9)
    wrpcap(str(tmp_path / "natpmp.pcap"), frames)
    fields = ("nat-pmp.version", "nat-pmp.opcode", "nat-pmp.result_code", "nat-pmp.sssoe", "nat-pmp.external_ip",
              "nat-pmp.internal_port", "nat-pmp.external_port", "nat-pmp.pml")
    out = subprocess.run(["tshark", "-n", "-r", str(tmp_path / "natpmp.pcap"), "-T", "fields",
                          *sum((["-e", f] for f in fields), [])], capture_output=True, text=True, check=True).stdout
    address, mapped = (dict(zip(fields, line.split("\t"), strict=False)) for line in out.splitlines())
    assert (address["nat-pmp.opcode"], address["nat-pmp.result_code"], address["nat-pmp.sssoe"],
            address["nat-pmp.external_ip"]) == ("128", "0", "9", G1)
    (entry,) = leases(sw)
    assert (mapped["nat-pmp.opcode"], mapped["nat-pmp.internal_port"], mapped["nat-pmp.external_port"],
            mapped["nat-pmp.pml"]) == ("130", "8080", str(entry.global_gpn), "120")


def test_the_servers_error_answers_decode_whatever_opcode_they_echo():
    """Found by the fuzzer (conformance/fuzz.py): an UNSUPP_OPCODE answer echoes any opcode 3-127."""
    sw = switch_with()
    (answer,) = send(sw, "10.0.0.1", bytes([0, 32, 0, 0]))
    assert natpmp.decode_response(bytes(answer[UDP].payload)) == natpmp.ErrorAnswer(32, Result.UNSUPP_OPCODE, 0)
    assert natpmp.decode_response(natpmp.error_answer(bytes([1, 0]), Result.UNSUPP_VERSION, 5)) == \
        natpmp.ErrorAnswer(0, Result.UNSUPP_VERSION, 5)
    with pytest.raises(natpmp.NatPmpError):
        natpmp.decode_response(bytes([0, 128 | 32, 0, 0]) + bytes(4))  # SUCCESS for an opcode nobody speaks


def test_a_natpmp_mapping_survives_a_controller_restart_with_its_owner():
    """Its owner record (origin, the NAT-PMP nonce) is saved like any MAP's (nat_app/state.py)."""
    sw = switch_with()
    granted = map_tcp(sw, "10.0.0.1", lifetime=600, now=10)
    records = json.loads(json.dumps(state.export(sw.core)))
    sw.core = state.restore(NatConfig(globals=global_pool(1)), records, random.Random(9))
    sw.apply(sw.core.reconcile([(f.msg.cookie, f.msg.priority) for f in sw.flows], 20), 20)
    assert map_tcp(sw, "10.0.0.1", src_mac="00:00:00:00:66:66", lifetime=0, now=30).result is Result.NOT_AUTHORIZED
    renewed = map_tcp(sw, "10.0.0.1", lifetime=600, now=30)
    assert (renewed.result, renewed.external_port, renewed.epoch) == (Result.SUCCESS, granted.external_port, 30)
    (syn,) = syn_from_srv1(sw, granted.external_port)
    assert syn[IP].dst == "10.0.0.1" and syn[TCP].dport == 8080
