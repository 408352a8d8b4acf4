"""SAVI across a controller restart: s1's bindings are saved with the core's state and reconciled
with the flows s1 kept (fail mode secure), so a forger gets no first-come window after a restart."""

from __future__ import annotations

import json
import os
import random

import pytest

from nat_app import state
from nat_app.savi import COOKIE_REFUSED, PRIO_BOUND
from netwire.plan import GATEWAY_IP
from tests.unit.test_savi import H1, H2, H3, Link, arp_from, pcp_from, ping_from

T0 = 1000.0


def restart(link: Link, now: float, s1_reconnects: bool = True) -> None:
    """The controller dies and comes back from its saved records; r1 and s1 keep their flows."""
    records = json.loads(json.dumps(state.export(link.core)))
    core = state.restore(link.core.config, records, random.Random(4))
    assert json.loads(json.dumps(state.export(core))) == records
    link.core, link.savi, link.r1.core, link.s1.core = core, core.savi, core, core.savi
    link.r1.apply(core.reconcile([(f.msg.cookie, f.msg.priority) for f in link.r1.flows], now), now)
    if s1_reconnects:
        link.s1.apply(core.savi.reconcile([(f.msg.cookie, f.msg.priority) for f in link.s1.flows], now), now)


def bound_flows(link: Link) -> set:
    return {(f.msg.cookie, json.dumps(f.msg.match, sort_keys=True)) for f in link.s1.flows
            if f.msg.priority == PRIO_BOUND}


def victim_with_a_lease(link: Link) -> bytes:
    ip, mac, port = H1
    nonce = os.urandom(12)
    assert link.send(port, arp_from(ip, mac), T0) == 1
    assert link.send(port, pcp_from(ip, mac, nonce), T0) == 1
    return nonce


def test_after_a_restart_a_forger_claiming_a_bound_ip_from_another_port_is_still_dropped():
    link = Link()
    nonce = victim_with_a_lease(link)
    ip, mac, port = H1
    restart(link, T0 + 5)
    (entry,) = list(link.core.table)
    assert link.send(H3[2], pcp_from(ip, mac, nonce, lifetime=0), T0 + 6) == 0  # release with the leaked nonce
    assert link.send(H3[2], arp_from(ip, mac, op=2), T0 + 6) == 0
    assert link.drops() == {"drop:ip-bound-on-other-port": 2}
    assert [e.id for e in link.core.table] == [entry.id]
    assert link.send(port, ping_from(ip, mac), T0 + 7) == 1  # the victim goes on
    assert link.send(port, pcp_from(ip, mac, nonce), T0 + 7) == 1  # and renews: its origin kept its port
    assert link.core.counters["leases_renewed"] == 1


def test_s1_keeps_its_binding_flows_across_a_restart():
    link = Link()
    victim_with_a_lease(link)
    link.send(H2[2], arp_from(H2[0], H2[1]), T0)
    before = bound_flows(link)
    restart(link, T0 + 5)
    assert bound_flows(link) == before and len(before) == 3
    packet_ins = link.s1.packet_ins
    assert link.send(H1[2], ping_from(H1[0], H1[1]), T0 + 6) == 1
    assert link.s1.packet_ins == packet_ins  # still switched by s1's own flow


def test_before_s1_reconnects_lease_origins_still_carry_the_saved_access_port():
    link = Link()
    nonce = victim_with_a_lease(link)
    ip, mac, port = H1
    restart(link, T0 + 5, s1_reconnects=False)
    assert link.savi.port_of(mac, ip) == port
    assert link.send(port, pcp_from(ip, mac, nonce), T0 + 6) == 1  # s1's flow passes it; r1 renews it
    assert link.core.counters["leases_renewed"] == 1


def test_a_binding_whose_flows_idled_out_while_away_is_forgotten():
    link = Link()
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac), T0)
    (cookie,) = {f.msg.cookie for f in link.s1.flows if f.msg.priority == PRIO_BOUND}
    link.s1.flows = [f for f in link.s1.flows if f.msg.cookie != cookie]  # its FlowRemoved went to nobody
    restart(link, T0 + 700)
    assert link.savi.port_of(mac, ip) is None
    assert link.savi.counters["bindings_lost_while_away"] == 1
    assert link.send(port, arp_from(ip, mac), T0 + 701) == 1  # the host binds again on its next frame


def test_flows_of_s1_that_name_nothing_are_deleted_and_the_base_flows_stay():
    link = Link()
    ip, mac, port = H1
    link.send(port, arp_from(ip, mac), T0)
    link.send(H3[2], arp_from(ip, H3[1]), T0)  # refused: a drop flow, not saved
    assert [f for f in link.s1.flows if f.msg.cookie & COOKIE_REFUSED == COOKIE_REFUSED]
    restart(link, T0 + 5)
    assert not [f for f in link.s1.flows if f.msg.cookie & COOKIE_REFUSED == COOKIE_REFUSED]
    assert link.savi.counters["stale_flows_deleted"] == 1
    assert {f.msg.priority for f in link.s1.flows} == {100, PRIO_BOUND, 0}


@pytest.mark.parametrize("damage", [
    lambda s: s["bindings"].append([s["next"] - 1, 5, "00:00:00:00:00:05", s["bindings"][0][3], 0.0, [0]]),
    lambda s: s["bindings"].__setitem__(0, [*s["bindings"][0][:1], 100, *s["bindings"][0][2:]]),
    lambda s: s["bindings"].__setitem__(0, [*s["bindings"][0][:3], GATEWAY_IP, *s["bindings"][0][4:]]),
    lambda s: s["bindings"].__setitem__(0, [*s["bindings"][0][:5], []]),
    lambda s: s.__setitem__("next", 1),
], ids=["ip-bound-twice", "uplink-port", "router-address", "no-flow", "id-counter-behind"])
def test_inconsistent_bindings_are_refused_whole(damage):
    link = Link()
    link.send(H1[2], arp_from(H1[0], H1[1]), T0)
    records = json.loads(json.dumps(state.export(link.core)))
    damage(records["savi"])
    with pytest.raises(state.StateError):
        state.restore(link.core.config, records)
