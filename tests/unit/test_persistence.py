"""A controller restart loses nothing: the core's state as records, rebuilt, and reconciled with r1.

The core is driven through the fake r1 (scapy matches and rewrites); the
records go through JSON as they do through the store.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from nat_app import state
from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from nat_app.messages import COOKIE_INFRA, DeleteFlows, PacketOut
from nat_app.reconcile import ALL_HOSTS, ALL_HOSTS_MAC, ANNOUNCE_COUNT
from netwire import pcp
from netwire.ipv4 import IPPROTO_TCP
from netwire.plan import GATEWAY_IP
from tests.unit.test_lease_attacks import udp_out
from tests.unit.test_lease_server import OUT, SRV1, SRV2, Client, esp_payload, mac, server_sends, switch_with

IN = 1
T0 = 1000.0  # CLOCK_MONOTONIC of the first controller
CONFIG = {"globals": global_pool(1)}


def busy_switch():
    """A NAT with NAPT TCP, ESP leases of three clients on one global IP (slow path), a PEER lease."""
    sw = switch_with(1)
    clients = [Client(sw, f"10.0.0.{i}") for i in (1, 2, 3)]
    clients[0].define(pcp.ESP_DEFINITION, now=T0)
    spis = [c.lease(50, nonce=bytes([i]) * 12, now=T0).info.global_gpn for i, c in enumerate(clients, 1)]
    peer = pcp.PeerInfo(b"\x09" * 12, 6, 40000, 40000, None, 5001, SRV2)
    assert clients[0].ask(pcp.Opcode.PEER, peer, now=T0).result == pcp.Result.SUCCESS
    sw.receive(IN, tcp_from("10.0.0.2", 33000), T0)
    sw.take(OUT)
    return sw, clients, spis


def tcp_from(ip: str, sport: int) -> bytes:
    return bytes(Ether(src=mac(ip), dst="02:4e:41:54:00:01") / IP(src=ip, dst=SRV1) / TCP(sport=sport, dport=80))


def restarted(sw, now: float) -> NatCore:
    """The records through JSON (as the store keeps them) into a new core, reconciled with the same r1."""
    records = json.loads(json.dumps(state.export(sw.core)))
    core = state.restore(NatConfig(**CONFIG), records, random.Random(9))
    sw.core = core
    sw.apply(core.reconcile([(f.msg.cookie, f.msg.priority) for f in sw.flows], now), now)
    return core


def test_a_restored_core_has_the_same_entries_owners_spaces_and_epoch():
    sw, clients, spis = busy_switch()
    before, epoch = state.export(sw.core), sw.core.leases.epoch(T0 + 50)
    core = restarted(sw, T0 + 50)
    assert state.export(core) == before
    assert core.leases.epoch(T0 + 50) == epoch  # RFC 6887 8.5: the epoch continues
    renewal = clients[1].lease(50, nonce=bytes([2]) * 12, now=T0 + 60, global_gpn=spis[1], private_gpn=spis[1],
                               global_ip=global_pool(1)[0])
    assert renewal.result == pcp.Result.SUCCESS and renewal.info.global_gpn == spis[1]
    stolen = clients[2].lease(50, nonce=bytes([3]) * 12, global_gpn=spis[0], now=T0 + 60)
    assert stolen.result in (pcp.Result.NOT_AUTHORIZED, pcp.Result.GPN_IN_USE)


def test_reconcile_keeps_r1s_flows_and_traffic_goes_on():
    sw, clients, spis = busy_switch()
    flows_before = {(f.msg.cookie, f.msg.priority, json.dumps(f.msg.match, sort_keys=True)) for f in sw.flows}
    restarted(sw, T0 + 5)
    assert {(f.msg.cookie, f.msg.priority, json.dumps(f.msg.match, sort_keys=True)) for f in sw.flows} == flows_before
    sw.receive(IN, tcp_from("10.0.0.2", 33000), T0 + 6)
    assert Ether(sw.take(OUT)[0])[IP].src == global_pool(1)[0]
    delivered = server_sends(sw, 50, esp_payload(spis[2]), global_pool(1)[0])
    assert [p[IP].dst for p in delivered] == ["10.0.0.3"]  # slow path demultiplexed by SPI, as before


def test_flows_whose_cookie_names_nothing_are_deleted():
    sw, _, _ = busy_switch()
    stale = 77777
    sw.flows.append(type(sw.flows[0])(sw.flows[0].msg.__class__(30000, {"in_port": 9}, (), cookie=stale)))
    restarted(sw, T0 + 5)
    assert not sw.flows_with_cookie(stale)
    assert sw.core.counters["stale_flows_deleted"] == 1


def test_an_entry_whose_flow_idled_out_while_away_is_forgotten_and_its_port_rests():
    sw, _, _ = busy_switch()
    napt = next(e for e in sw.core.table if e.private_ip == "10.0.0.2" and e.protocol == 6)
    out_flow = next(f for f in sw.flows if f.msg.cookie == napt.id and f.msg.idle_timeout)
    sw.flows.remove(out_flow)  # its FlowRemoved went to nobody
    core = restarted(sw, T0 + 5)
    assert core.table.get(napt.id) is None and not sw.flows_with_cookie(napt.id)
    assert core.counters["entries_lost_while_away"] == 1
    assert not core.pool.space(napt.global_ip, 6).is_free(napt.global_gpn, T0 + 6)  # resting, not reused at once


def test_r1_without_its_base_flows_means_the_state_is_lost_and_clients_hear_announce():
    sw, _, _ = busy_switch()
    records = json.loads(json.dumps(state.export(sw.core)))
    core = state.restore(NatConfig(**CONFIG), records)
    msgs = core.reconcile([(5, 30000)], T0 + 100)  # a restarted r1 has no COOKIE_INFRA flow
    assert msgs[0] == DeleteFlows(None) and len(core.table) == 0
    assert_announces(msgs, T0 + 100, core)


def test_a_core_that_started_empty_wipes_r1_and_announces_ten_times():
    core = NatCore(NatConfig(**CONFIG))
    msgs = core.reconcile([(COOKIE_INFRA, 0), (12, 30000)], T0)
    assert msgs[0] == DeleteFlows(None)
    assert_announces(msgs, T0, core)
    assert core.reconcile([(COOKIE_INFRA, 0)], T0 + 1)[0] != DeleteFlows(None)  # announced once, not again


def assert_announces(msgs, now: float, core: NatCore) -> None:
    outs = [m for m in msgs if isinstance(m, PacketOut) and Ether(m.data).dst == ALL_HOSTS_MAC]
    assert len(outs) == ANNOUNCE_COUNT
    delays = [m.delay for m in outs]
    assert delays[:4] == [0.0, 0.25, 0.75, 1.75]  # RFC 6887 14.1.3: gaps from 250 ms, doubling
    for m in outs:
        frame = Ether(m.data)
        assert frame[IP].dst == ALL_HOSTS and frame[IP].src == GATEWAY_IP and frame[IP].ttl == 1
        assert frame[UDP].dport == pcp.CLIENT_PORT and frame[UDP].sport == pcp.SERVER_PORT
        response = pcp.decode_response(bytes(frame[UDP].payload))
        assert response.opcode == pcp.Opcode.ANNOUNCE and response.epoch == core.leases.epoch(now + m.delay)


@pytest.mark.parametrize("damage", [
    lambda r: r.pop(next(k for k in r if k.startswith("entry:"))),  # an owner now names no entry
    lambda r: r.__setitem__("entry:999", {**r[next(k for k in r if k.startswith("entry:"))], "id": 999}),
    lambda r: r.__setitem__("surprise", 1),
    lambda r: r["core:config"].__setitem__("globals", ["198.51.100.1"]),
    lambda r: r.__setitem__("table:next_id", "many"),
    lambda r: r["core:paths"]["icmp_pairs"].append(["10.0.0.9", SRV1, 4242]),
    lambda r: r.__setitem__("owner:1", [1, 1, "00:00:00:00:00:01", "10.0.0.7", "00" * 12, 97]),
], ids=["owner-without-entry", "duplicate-entry", "unknown-record", "other-pool", "bad-counter",
        "dangling-icmp-pair", "owner-of-another-host"])
def test_inconsistent_records_are_refused_whole(damage):
    sw, _, _ = busy_switch()
    records = json.loads(json.dumps(state.export(sw.core)))
    damage(records)
    with pytest.raises(state.StateError):
        state.restore(NatConfig(**CONFIG), records)


def test_records_of_an_untouched_core_restore_to_an_empty_table():
    core = NatCore(NatConfig(**CONFIG), random.Random(os.getpid()))
    again = state.restore(NatConfig(**CONFIG), json.loads(json.dumps(state.export(core))))
    assert len(again.table) == 0 and not again.state_lost


def test_the_journal_writes_what_a_full_export_would_hold_and_little_per_event():
    """The store's per-event write (state.Journal) against the truth, a full export, event after event."""
    sw, clients, spis = busy_switch()
    journal, held = state.Journal(), {}

    def apply(upserts, deletes):
        held.update(upserts)
        for key in deletes:
            del held[key]
        return len(upserts) + len(deletes)

    apply(*journal.changes(sw.core))
    assert held == json.loads(json.dumps(state.export(sw.core)))
    sw.receive(IN, tcp_from("10.0.0.3", 34000), T0 + 1)  # a new NAPT connection
    written = apply(*journal.changes(sw.core))
    assert held == state.export(sw.core) and written <= 6  # entry, mapping, space, counters: not the table
    napt = next(e for e in sw.core.table if e.private_ip == "10.0.0.2" and e.protocol == 6)
    sw.remove_flow(napt.id, T0 + 2)  # idled out: the entry goes, its port rests
    clients[1].lease(50, nonce=bytes([2]) * 12, lifetime=0, now=T0 + 3, global_gpn=spis[1], private_gpn=spis[1],
                     global_ip=global_pool(1)[0])  # a release
    sw.apply(sw.core.tick(T0 + 4000), T0 + 4000)  # every lease expires
    apply(*journal.changes(sw.core))
    assert held == state.export(sw.core)
    upserts, deletes = journal.changes(sw.core, full=True)
    assert not upserts and not deletes  # the full comparison finds nothing the journal missed


EVENTS = st.lists(st.tuples(st.sampled_from(["connect", "synack", "fin", "idle", "lease", "release", "esp",
                                             "tick", "restart"]),
                            st.integers(1, 3), st.integers(0, 40)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None)
@given(EVENTS)
def test_any_sequence_of_events_saved_by_the_journal_restores_to_the_same_state(events):
    """Whatever happened, after every event the journal's rows are what a full export holds, and they rebuild a
    core equal to the live one, restart after restart."""
    sw, clients, spis = busy_switch()
    journal, held, now = state.Journal(), {}, T0
    for kind, who, n in events:
        now += 1 + n
        apply_event(sw, clients, spis, kind, who, n, now)
        held_after(journal, sw.core, held)
        live = full_view(sw.core)
        assert held == live, kind
        assert state.export(state.restore(NatConfig(**CONFIG), held)) == live, kind


def held_after(journal: state.Journal, core, held: dict) -> int:
    """Apply the journal's changes to ``held`` (as the store would); the rows written."""
    upserts, deletes = journal.changes(core)
    held.update(json.loads(json.dumps(upserts)))
    for key in deletes:
        del held[key]
    return len(upserts) + len(deletes)


def full_view(core) -> dict:
    return json.loads(json.dumps(state.export(core)))


def server_tcp(sw, dst_port: int, flags: str, now: float) -> None:
    """The server's segment to the global address of the connection from ``dst_port`` (through r1)."""
    entry = next(e for e in sw.core.table if e.protocol == IPPROTO_TCP and e.private_gpn == dst_port)
    frame = Ether(src="00:00:00:00:01:00", dst="02:4e:41:54:00:02") / IP(src=SRV1, dst=entry.global_ip) / TCP(
        sport=80, dport=entry.global_gpn, flags=flags)
    sw.receive(OUT, bytes(frame), now)


def apply_event(sw, clients, spis, kind: str, who: int, n: int, now: float) -> None:
    """One of EVENTS' kinds, by client ``who`` with number ``n``: what the journal and the store must follow."""
    tcp = sorted(e.private_gpn for e in sw.core.table if e.protocol == IPPROTO_TCP and e.private_gpn >= 30000)
    if kind == "connect":
        sw.receive(IN, tcp_from(f"10.0.0.{who}", 30000 + n), now)
    elif kind in ("synack", "fin") and tcp:
        server_tcp(sw, tcp[n % len(tcp)], "SA" if kind == "synack" else "FA", now)
    elif kind == "idle" and tcp:
        entry = next(e for e in sw.core.table if e.private_gpn == tcp[n % len(tcp)])
        sw.remove_flow(entry.id, now)
    elif kind == "lease":
        clients[who - 1].lease(50, nonce=bytes([who, n]) * 6, now=now)
    elif kind == "release":
        clients[who - 1].lease(50, nonce=bytes([who]) * 12, lifetime=0, now=now)
    elif kind == "esp":
        server_sends(sw, 50, esp_payload(spis[who - 1]), sw.core.config.globals[0])
    elif kind == "tick":
        sw.apply(sw.core.tick(now + 600 * n), now)
    elif kind == "restart":
        restarted(sw, now)
        for c in clients:
            c.sw = sw


# ------------------------------------------------ what the lease server's hardening holds (issue 9 part 1)

GRE = pcp.GpnDefinition(b"", 47, 0, 0, None, 32, 32, 1, 0xFFFFFFFF, 0)


def restart(sw, now: float) -> NatCore:
    """``restarted`` for a switch of any configuration: export, JSON, restore, reconcile with the same r1."""
    before = json.loads(json.dumps(state.export(sw.core)))
    sw.core = state.restore(sw.core.config, before, random.Random(9))
    sw.apply(sw.core.reconcile([(f.msg.cookie, f.msg.priority) for f in sw.flows], now), now)
    assert json.loads(json.dumps(state.export(sw.core))) == before
    return sw.core


def test_after_a_restart_a_stranger_still_cannot_use_or_redefine_a_clients_definition():
    sw = switch_with()
    owner, stranger = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    assert owner.define(GRE, now=T0).result == pcp.Result.SUCCESS
    restart(sw, T0 + 10)
    assert stranger.lease(47, now=T0 + 10).result == pcp.Result.PROTOCOL_NOT_DEFINED
    assert stranger.define(replace(GRE, range_max=5), now=T0 + 10).result == pcp.Result.DEFINITION_CONFLICT
    assert owner.lease(47, now=T0 + 10).result == pcp.Result.SUCCESS


def test_a_definitions_grace_runs_on_across_a_restart():
    sw = switch_with()
    owner, other = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    owner.define(GRE, now=T0)  # no lease follows: its grace starts now
    restart(sw, T0 + 30)
    sw.apply(sw.core.tick(T0 + 59), T0 + 59)
    assert other.define(replace(GRE, range_max=5), now=T0 + 59).result == pcp.Result.DEFINITION_CONFLICT
    sw.apply(sw.core.tick(T0 + 60), T0 + 60)  # definition_grace (60 s) after the DEFINE, not after the restart
    assert other.define(replace(GRE, range_max=5), now=T0 + 60).result == pcp.Result.SUCCESS


def test_a_leased_definition_outlives_a_restart_and_idles_when_its_lease_ends():
    sw = switch_with()
    owner, other = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    owner.define(GRE, now=T0)
    assert owner.lease(47, lifetime=300, now=T0).result == pcp.Result.SUCCESS
    restart(sw, T0 + 100)
    sw.apply(sw.core.tick(T0 + 200), T0 + 200)  # leased: no grace running, the definition stays
    assert other.define(replace(GRE, range_max=5), now=T0 + 200).result == pcp.Result.DEFINITION_CONFLICT
    sw.apply(sw.core.tick(T0 + 301), T0 + 301)  # the lease expires, the grace starts
    sw.apply(sw.core.tick(T0 + 361), T0 + 361)
    assert other.define(replace(GRE, range_max=5), now=T0 + 361).result == pcp.Result.SUCCESS


def test_lease_quotas_per_origin_and_per_mac_still_hold_after_a_restart():
    sw = switch_with(lease_quota=2, lease_mac_quota=3)
    client = Client(sw, "10.0.0.1")
    cycler = Client(sw, "10.0.0.2", src_mac=client.mac)  # the same MAC, another IP
    assert [client.lease(50, now=T0).result for _ in range(2)] == [pcp.Result.SUCCESS] * 2
    restart(sw, T0 + 5)
    assert client.lease(50, now=T0 + 5).result == pcp.Result.USER_EX_QUOTA
    assert cycler.lease(50, now=T0 + 5).result == pcp.Result.SUCCESS  # third for the MAC
    assert cycler.lease(50, now=T0 + 5).result == pcp.Result.USER_EX_QUOTA  # the MAC's quota


def test_the_definition_quota_still_holds_after_a_restart():
    sw = switch_with(definition_quota=2)
    squatter = Client(sw, "10.0.0.9")
    for protocol in (100, 101):
        assert squatter.define(replace(GRE, protocol=protocol), now=T0).result == pcp.Result.SUCCESS
    restart(sw, T0 + 5)
    assert squatter.define(replace(GRE, protocol=102), now=T0 + 5).result == pcp.Result.USER_EX_QUOTA


def test_the_per_host_port_limit_still_holds_after_a_restart():
    sw = switch_with(napt_ports_per_host=2)
    hog, honest = Client(sw, "10.0.0.9"), Client(sw, "10.0.0.1")
    for port in (2000, 2001):
        assert len(udp_out(sw, hog, port, now=T0)) == 1
    restart(sw, T0 + 5)
    assert sw.core.pool.ports_held(17, hog.ip, global_pool(1)[0]) == 2
    assert udp_out(sw, hog, 2002, now=T0 + 5) == []
    assert sw.core.counters["drop:port-limit"] == 1
    assert hog.ask(pcp.Opcode.MAP, pcp.MapInfo(os.urandom(12), 17, 7000, 0, None), now=T0 + 5).result == \
        pcp.Result.USER_EX_QUOTA
    assert len(udp_out(sw, honest, 3000, now=T0 + 5)) == 1


def _damage_definition(records, **changes) -> None:
    key = next(k for k in records if k.startswith("definition:"))
    records[key].update(changes)


@pytest.mark.parametrize("damage", [
    lambda r: _damage_definition(r, definers=[]),
    lambda r: _damage_definition(r, idle_since=None),  # no lease holds it, yet no grace runs: it would never go
    lambda r: _damage_definition(r, definition=dict(r[next(k for k in r if k.startswith("definition:"))]
                                                    ["definition"], port=40000, underlying=17, protocol=17)),
    lambda r: r.__setitem__("definition:50", {"definition": {}, "definers": [[1, "00:00:00:00:00:09", "10.0.0.9"]],
                                              "idle_since": None}),
], ids=["definition-without-owner", "idle-without-grace", "definition-in-napt-space", "nat-definition-saved"])
def test_inconsistent_definitions_are_refused_whole(damage):
    sw = switch_with()
    Client(sw, "10.0.0.9").define(GRE, now=T0)
    records = json.loads(json.dumps(state.export(sw.core)))
    damage(records)
    with pytest.raises(state.StateError):
        state.restore(sw.core.config, records)
