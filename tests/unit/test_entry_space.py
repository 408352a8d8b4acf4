"""A table entry's protocol is an IP protocol; a leased UDP-borne GPN space (ISAKMP's cookies on UDP
500, seed FIG. 7) is named by its own field, ``Entry.udp_port``. The NAT's table keys entries by the
GPN space the two make, so a leased UDP GPN never collides with NAPT's UDP entries, and the state
files written when ``protocol`` held the space's int (0x10000 | port) still load; hostile ones do not.
"""

from __future__ import annotations

import json
import random

import pytest

from nat_app import state
from nat_app.config import NatConfig, global_pool
from nat_app.decide import NatCore
from nat_app.gpn import GpnSpace
from nat_app.messages import SetField
from nat_app.table import EntryKind, TranslationTable, space_of_record
from netwire import pcp
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_UDP
from tests.unit.test_lease_server import SRV1, Client, switch_with

ISAKMP_PORT = pcp.ISAKMP_DEFINITION.port
CONFIG = {"globals": global_pool(1)}
GLOBAL = global_pool(1)[0]


def isakmp_switch():
    """A NAT where one client leased an ISAKMP cookie (UDP 500) and another an ESP SPI."""
    sw = switch_with(1)
    first, second = Client(sw, "10.0.0.1"), Client(sw, "10.0.0.2")
    first.define(pcp.ISAKMP_DEFINITION)
    first.define(pcp.ESP_DEFINITION)
    assert first.lease(IPPROTO_UDP, port=ISAKMP_PORT).result == pcp.Result.SUCCESS
    assert second.lease(IPPROTO_ESP).result == pcp.Result.SUCCESS
    return sw, first


def test_a_leased_isakmp_entry_holds_udp_as_its_protocol_and_its_port_apart():
    sw, _ = isakmp_switch()
    (entry,) = [e for e in sw.core.table if e.private_ip == "10.0.0.1"]
    assert (entry.protocol, entry.udp_port) == (IPPROTO_UDP, ISAKMP_PORT)
    assert entry.space == GpnSpace.udp(ISAKMP_PORT) and not entry.port_keyed
    (row,) = [r for r in sw.core.snapshot(0.0)["entries"] if r["private_ip"] == "10.0.0.1"]
    assert (row["protocol"], row["udp_port"]) == (IPPROTO_UDP, ISAKMP_PORT)  # natlab table shows both
    assert all(e.protocol <= 0xFF for e in sw.core.table)


def test_a_leased_udp_gpn_and_a_napt_entry_of_the_same_global_number_do_not_collide():
    table = TranslationTable()
    common = {"private_ip": "10.0.0.1", "private_gpn": 40000, "global_ip": GLOBAL, "global_gpn": 40000,
              "foreign": SRV1, "now": 0.0}
    napt = table.add(kind=EntryKind.NAT_ALG, protocol=IPPROTO_UDP, **common)
    leased = table.add(kind=EntryKind.CLIENT_ALG, protocol=IPPROTO_UDP, udp_port=ISAKMP_PORT, **common)
    assert table.lookup_in(IPPROTO_UDP, GLOBAL, 40000, SRV1) is napt
    assert table.lookup_in(GpnSpace.udp(ISAKMP_PORT), GLOBAL, 40000, SRV1) is leased
    assert table.entries_of(IPPROTO_UDP, "10.0.0.1") == [napt]
    table.remove(leased.id)
    table.check_invariants()
    assert list(table) == [napt]


@pytest.mark.parametrize("protocol, udp_port", [(IPPROTO_UDP, 0), (IPPROTO_UDP, 65536), (IPPROTO_ESP, 500),
                                                (256, None)])
def test_an_entry_outside_every_gpn_space_is_refused_before_it_is_indexed(protocol, udp_port):
    table = TranslationTable()
    with pytest.raises(ValueError):
        table.add(kind=EntryKind.CLIENT_ALG, protocol=protocol, udp_port=udp_port, private_ip="10.0.0.1",
                  private_gpn=1, global_ip=GLOBAL, global_gpn=1, foreign=None, now=0.0)
    assert len(table) == 0
    table.check_invariants()


def test_releasing_a_leased_isakmp_entry_returns_no_napt_mapping(monkeypatch):
    """The entry's protocol is UDP, but its GPN is a cookie: forgetting it must not free a NAPT port."""
    sw, first = isakmp_switch()
    released = []
    monkeypatch.setattr(sw.core.pool, "release_mapping", lambda *a, **k: released.append(a))
    (entry,) = [e for e in sw.core.table if e.private_ip == "10.0.0.1"]
    sw.apply(sw.core.tick(10_000.0), 10_000.0)  # every lease expires
    assert entry.id not in {e.id for e in sw.core.table} and released == []
    assert first.lease(IPPROTO_UDP, port=ISAKMP_PORT, global_gpn=entry.global_gpn, now=10_001.0).result \
        == pcp.Result.SUCCESS  # its cookie went back to the UDP 500 space


def _old_layout(records: dict) -> dict:
    """``records`` as the state files before ``Entry.udp_port`` held them: the space's int in ``protocol``."""
    for key, record in records.items():
        if key.startswith("entry:"):
            record["protocol"] = int(space_of_record(record))
            del record["udp_port"]
    return records


def test_a_state_file_of_the_old_layout_restores_to_the_same_core():
    sw, _ = isakmp_switch()
    records = json.loads(json.dumps(state.export(sw.core)))
    old = _old_layout(json.loads(json.dumps(records)))
    assert any(r["protocol"] > 0xFF for k, r in old.items() if k.startswith("entry:"))
    core = state.restore(NatConfig(**CONFIG), old, random.Random(9))
    assert json.loads(json.dumps(state.export(core))) == records


@pytest.mark.parametrize("damage", [
    {"protocol": 0x20000 | ISAKMP_PORT}, {"protocol": 0x10000}, {"protocol": 256}, {"protocol": -1},
    {"protocol": "17"}, {"udp_port": 0}, {"udp_port": 65536}, {"udp_port": "500"},
    {"protocol": IPPROTO_AH, "udp_port": ISAKMP_PORT},
], ids=["unknown-encoding", "udp-port-zero-old", "protocol-256", "negative", "string-protocol", "udp-port-zero",
        "udp-port-too-big", "string-port", "port-on-ah"])
def test_a_saved_entry_outside_every_gpn_space_is_refused_whole(damage):
    sw, _ = isakmp_switch()
    records = json.loads(json.dumps(state.export(sw.core)))
    key = next(k for k, r in records.items() if k.startswith("entry:") and r["udp_port"] is not None)
    records[key].update(damage)
    with pytest.raises(state.StateError):
        state.restore(NatConfig(**CONFIG), records)


def test_the_journal_follows_a_leased_isakmp_entry_to_its_udp_port_space():
    """The store's per-event write names the pool's record of the entry's space (UDP 500's), not UDP's."""
    sw, _ = isakmp_switch()
    journal, held = state.Journal(), {}
    held.update(journal.changes(sw.core)[0])
    sw.apply(sw.core.tick(10_000.0), 10_000.0)
    upserts, deletes = journal.changes(sw.core)
    held.update(upserts)
    for key in deletes:
        del held[key]
    assert held == json.loads(json.dumps(state.export(sw.core)))
    assert not any(journal.changes(sw.core, full=True))


def test_a_space_saved_as_its_int_reads_back_as_the_same_space():
    for space in (GpnSpace.ip(IPPROTO_ESP), GpnSpace.ip(0), GpnSpace.udp(ISAKMP_PORT), GpnSpace.udp(0xFFFF)):
        assert GpnSpace.legacy(int(space)) == space and repr(GpnSpace.legacy(int(space))) == repr(space)
    for bad in (-1, 256, 0x10000, 0x20000 | 1, 0x1FFFF + 1):
        with pytest.raises(ValueError):
            GpnSpace.legacy(bad)


def test_r1_rewrites_the_ports_of_napt_entries_but_never_a_leased_udp_borne_gpn():
    """An ISAKMP lease's protocol is UDP, yet its GPN is a cookie: r1 must leave UDP 500 as it is."""
    core = NatCore(NatConfig(**CONFIG), random.Random(1))
    common = {"private_ip": "10.0.0.1", "private_gpn": 40001, "global_ip": GLOBAL, "global_gpn": 40002,
              "foreign": SRV1, "now": 0.0}
    leased = core.table.add(kind=EntryKind.CLIENT_ALG, protocol=IPPROTO_UDP, udp_port=ISAKMP_PORT, **common)
    napt = core.table.add(kind=EntryKind.NAT_ALG, protocol=IPPROTO_UDP, **common)

    def ports_set(entry, outbound):
        return {a.name: a.value for a in core._actions(entry, "02:00:00:00:00:09", outbound=outbound)
                if isinstance(a, SetField) and a.name.startswith("udp_")}

    assert ports_set(leased, True) == ports_set(leased, False) == {}
    assert ports_set(napt, True) == {"udp_src": 40002} and ports_set(napt, False) == {"udp_dst": 40001}
