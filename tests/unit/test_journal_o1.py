"""The state journal writes what an event touched, never the whole table nor a whole port space (issue 16).

The table notes changed entries itself (``TranslationTable.take_changed``), the pool its mappings and
ports (``Pool.take_changes``); a controller restart still loses nothing (tests/unit/test_persistence.py
holds the restore side), and a hostile or damaged state file is still refused whole.
"""

from __future__ import annotations

import json
import random
import sqlite3

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from nat_app import state
from nat_app.config import NatConfig
from nat_app.store import Store
from netwire.ipv4 import IPPROTO_TCP
from tests.unit.test_lease_server import SRV1, esp_payload, mac, server_sends
from tests.unit.test_persistence import CONFIG, IN, T0, busy_switch, full_view, held_after, server_tcp, tcp_from


def test_a_new_connection_is_journalled_without_walking_the_table(monkeypatch):
    sw, _, _ = busy_switch()
    journal, held = state.Journal(), {}
    held_after(journal, sw.core, held)
    for port in range(40000, 40300):  # a table of a few hundred entries
        sw.receive(IN, tcp_from("10.0.0.2", port), T0 + 1)
    held_after(journal, sw.core, held)

    def refuse(self):
        raise AssertionError("the journal walked the whole table")

    monkeypatch.setattr(type(sw.core.table), "__iter__", refuse)
    monkeypatch.setattr(type(sw.core.pool), "export", refuse)
    sw.receive(IN, tcp_from("10.0.0.3", 41000), T0 + 2)
    written = held_after(journal, sw.core, held)
    monkeypatch.undo()
    assert written == 4  # the entry, its mapping, its port, the id counter: not the table, not the port space
    assert held == full_view(sw.core)


def test_a_port_space_is_saved_port_by_port():
    sw, _, _ = busy_switch()
    journal, held = state.Journal(), {}
    held_after(journal, sw.core, held)
    sw.receive(IN, tcp_from("10.0.0.3", 41000), T0 + 1)
    upserts, _ = journal.changes(sw.core)
    port_keys = [k for k in upserts if k.startswith("port:")]
    assert len(port_keys) == 1 and not [k for k in upserts if k.startswith("space:")]
    assert upserts[port_keys[0]][3] is None  # in use
    entry = next(e for e in sw.core.table if e.private_gpn == 41000)
    sw.remove_flow(entry.id, T0 + 2)  # idled out: the port rests for the quarantine, for nobody in particular
    upserts, deletes = journal.changes(sw.core)
    assert upserts[port_keys[0]][3] == [T0 + 2 + sw.core.config.port_quarantine, None]
    assert f"entry:{entry.id}" in deletes and any(k.startswith("mapping:") for k in deletes)
    sw.apply(sw.core.tick(T0 + 2 + sw.core.config.port_quarantine + 1), T0 + 500)
    sw.core.pool.space(entry.global_ip, IPPROTO_TCP).is_free(entry.global_gpn, T0 + 500)  # wakes the port
    _, deletes = journal.changes(sw.core)
    assert port_keys[0] in deletes  # rested: free again, its record goes


def test_changes_made_to_entries_by_any_path_are_journalled():
    """A demotion to the slow path (other entries' path), slow-path packets, TCP phases (idle timeouts)."""
    sw, clients, spis = busy_switch()
    journal, held = state.Journal(), {}
    held_after(journal, sw.core, held)
    sw.receive(IN, tcp_from("10.0.0.1", 42000), T0 + 1)
    server_tcp(sw, 42000, "SA", T0 + 1)  # established: the entry's idle timeout changes
    held_after(journal, sw.core, held)
    assert held == full_view(sw.core)
    server_sends(sw, 50, esp_payload(spis[0]), sw.core.config.globals[0])  # a slow-path packet counted
    held_after(journal, sw.core, held)
    assert held == full_view(sw.core)
    server_tcp(sw, 42000, "FA", T0 + 2)
    sw.receive(IN, tcp_from_flags("10.0.0.1", 42000, "FA"), T0 + 2)  # both FINs: transitory again
    held_after(journal, sw.core, held)
    assert held == full_view(sw.core)
    upserts, deletes = journal.changes(sw.core, full=True)
    assert not upserts and not deletes  # the safety net finds nothing the journal missed


def tcp_from_flags(ip: str, sport: int, flags: str) -> bytes:
    return bytes(Ether(src=mac(ip), dst="02:4e:41:54:00:01") / IP(src=ip, dst=SRV1) / TCP(sport=sport, dport=80,
                                                                                        flags=flags))


def test_a_core_without_a_journal_keeps_no_growing_record_of_changes():
    """An ephemeral controller (--state none) never asks: nothing may pile up per connection."""
    sw, _, _ = busy_switch()
    for port in range(40000, 40200):
        sw.receive(IN, tcp_from("10.0.0.2", port), T0 + 1)
    assert sw.core.table._changed is None and sw.core.pool._changed is None
    assert all(space._changed is None for space in sw.core.pool._spaces.values())


# ------------------------------------------------------------- hostile and old state files

def _records():
    sw, _, _ = busy_switch()
    return json.loads(json.dumps(state.export(sw.core)))


def _a_port(records: dict) -> str:
    return next(k for k in records if k.startswith("port:"))


@pytest.mark.parametrize("damage", [
    lambda r: r.__setitem__("port:203.0.113.1:132:9", ["203.0.113.1", 132, 9, None]),  # names no saved space
    lambda r: r.__setitem__("port:203.0.113.1:6:99999", ["203.0.113.1", 6, 100000, None]),  # key and value differ
    lambda r: r[_a_port(r)].__setitem__(3, "resting"),
    lambda r: r[_a_port(r)].__setitem__(3, [1.0, "x", "y"]),
    lambda r: r[_a_port(r)].__setitem__(2, "9"),
    lambda r: r.__setitem__("port:198.51.100.9:6:9", ["198.51.100.9", 6, 9, None]),  # outside the pool
    lambda r: r[next(k for k in r if k.startswith("space:"))][2].__setitem__("in_use", [r[_a_port(r)][2]]),
], ids=["no-space", "key-mismatch", "bad-record", "bad-resting", "port-not-int", "outside-pool", "saved-twice"])
def test_damaged_port_records_are_refused_whole(damage):
    records = _records()
    damage(records)
    with pytest.raises(state.StateError):
        state.restore(NatConfig(**CONFIG), records)


def _as_schema_3(records: dict) -> dict:
    """The layout before issue 16: a space's ports listed inside its record, no port records."""
    old = {k: v for k, v in json.loads(json.dumps(records)).items() if not k.startswith("port:")}
    for gip, proto, port, rec in (v for k, v in records.items() if k.startswith("port:")):
        space = old[f"space:{gip}:{proto}"][2]
        if rec is None:
            space.setdefault("in_use", []).append(port)
        else:
            space.setdefault("resting", []).append([port, *rec])
    return old


def test_a_schema_3_state_file_still_loads_and_is_rewritten_port_by_port(tmp_path):
    sw, _, _ = busy_switch()
    entry = next(e for e in sw.core.table if e.protocol == IPPROTO_TCP)
    sw.remove_flow(entry.id, T0 + 1)  # one resting port beside the ones in use
    new = full_view(sw.core)
    path = tmp_path / "state.db"
    store = Store(path, "boot")
    with pytest.raises(state_lost()):
        store.load()
    store.save(_as_schema_3(new))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 3")
    store = Store(path, "boot")
    records = store.load()
    core = state.restore(NatConfig(**CONFIG), records, random.Random(1))
    assert full_view(core) == new
    journal = state.Journal(records)
    store.write(*journal.changes(core))
    store.close()
    assert Store(path, "boot").load() == new


def state_lost():
    from nat_app.store import StateLost

    return StateLost
