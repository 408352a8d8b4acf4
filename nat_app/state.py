"""The NAT core's state as generic records, and the core rebuilt from them.

A record is a key and a JSON value. Entries, lease owners, mappings and GPN
spaces get one record each, so that the store (nat_app/store.py) writes only
what an event changed. What a restart must not lose: every entry with its id
(r1's flow cookies) and the id counter; lease owners (origin, nonce, opcode)
and client definitions with their owning origins and grace timers (quotas
per origin, per MAC and per-host port counts are recounted from owners and
mappings, not saved); each (global IP, protocol) space's in-use and resting ports
with who rested them; the pool's pairings and mapping user counts; the
client-ALG paths (group cookies, punts, outbound flows); the ICMP fast pairs
and slow triples; the neighbour cache (flows are re-derived from it); the
lease server's epoch start (RFC 6887 8.5: the epoch continues); s1's SAVI
bindings (port, MAC, IP), so no forger gets a first-come window after a
restart (reconciled with s1's flows like r1's: ``SaviCore.reconcile``).

Times are CLOCK_MONOTONIC seconds, system-wide since boot, so they stay valid
across a controller restart on the same boot; the store refuses a file from
another boot. Pure: no files, no clock.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from nat_app.config import NatConfig
from nat_app.decide import NatCore
from nat_app.savi import SaviCore
from nat_app.table import CHANGED_LINK, Entry, TableConflict, entry_from_dict

__pure__ = True

SCHEMA_VERSION = 4  # 2: client definitions carry their owners and grace timer (harden); 3: SAVI bindings;
# 4: a GPN space's ports one record each ("port:"), not listed in its "space:" record (3 still loads)
READABLE_VERSIONS = (3, SCHEMA_VERSION)
_PREFIXES = ("core:", "client_alg", "neighbours", "table:", "entry:", "pool:", "mapping:", "space:", "port:", "leases:",
             "definition:", "owner:", "savi")


class StateError(ValueError):
    """Saved records that do not make a consistent core: nothing of them is used."""


def export(core: NatCore) -> dict[str, Any]:
    """Every record of ``core``'s state (see the module docstring)."""
    records = _small_records(core)
    records.update({f"entry:{e.id}": _entry_record(e) for e in core.table})
    records.update(core.pool.export())
    return records


class Journal:
    """What changed since the last call, as records to write and keys to delete: the store's per-event
    write in O(what the event touched), never a scan of the table nor a re-encoding of a port space
    (``natlab bench nat-core``: the scan cost 227 us per event at 500 entries, 4,351 us at 3,000). The
    table notes the entries that changed (``TranslationTable.take_changed``), the pool the mappings and
    ports (``Pool.take_changes``); the small records are compared whole. One journal per core: taking
    the changes consumes them. A core whose table is not the one last seen (a new core after a
    restart, or r1 reconnected: ``NatCore.switch_connected`` starts afresh) is compared whole."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self._last: dict[str, Any] = dict(saved or {})  # as the store holds them
        self._table: object | None = None  # the table last compared; None: the first call is full
        self._small: set[str] = set()  # keys of the last small records (owners, definitions come and go)

    def changes(self, core: NatCore, full: bool = False) -> tuple[dict[str, Any], set[str]]:
        """(records to write, keys to delete); ``full`` compares everything (a safety net, and the start)."""
        changed, pool = core.table.take_changed(), core.pool.take_changes()
        if full or changed is None or pool is None or self._table is not core.table:
            candidates, looked_at = export(core), set(self._last)
            self._small = set(_small_records(core))
        else:
            candidates, looked_at = self._partial(core, changed)
            candidates.update(pool[0])
            looked_at |= pool[0].keys() | pool[1]
        self._table = core.table
        upserts = {k: v for k, v in candidates.items() if self._last.get(k, _ABSENT) != v}
        deletes = {k for k in looked_at - candidates.keys() if k in self._last}
        self._last.update(upserts)
        for key in deletes:
            del self._last[key]
        return upserts, deletes

    def _partial(self, core: NatCore, changed: set[int]) -> tuple[dict[str, Any], set[str]]:
        records = _small_records(core)
        looked_at = self._small | records.keys()
        self._small = set(records)
        for entry_id in changed:
            key = f"entry:{entry_id}"
            looked_at.add(key)
            entry = core.table.get(entry_id)
            if entry is not None:
                records[key] = _entry_record(entry)
        return records, looked_at


_ABSENT = object()


def _small_records(core: NatCore) -> dict[str, Any]:
    """Records whose size does not grow with the table's (lease owners grow with the quota at most)."""
    records: dict[str, Any] = {
        "core:config": _fingerprint(core.config),
        "core:paths": {
            "slow_triples": [[*t, c] for t, c in core._slow_triples.items()],
            "icmp_pairs": [[p, f, e.id] for (p, f), e in core._icmp_pairs.items()],
            "next_triple_cookie": _peek(core, "_triple_cookies"),
            "bypass": core.bypass,
        },
        "client_alg": core.client_alg.export(),
        "neighbours": core.neighbours.known(),
        "table:next_id": core.table.next_id(),
    }
    records.update(core.leases.export())
    if core.savi is not None:
        records["savi"] = core.savi.export()  # s1's bindings: at most MAX_BINDINGS_PER_PORT per access port
    return records


def new_core(config: NatConfig, rng: random.Random | None = None) -> NatCore:
    """An empty core with s1's SAVI core (the app dispatches s1 to ``core.savi``)."""
    return NatCore(config, rng, savi=SaviCore(config))


def restore(config: NatConfig, records: dict[str, Any], rng: random.Random | None = None) -> NatCore:
    """A new core holding exactly ``records``, or StateError: never a half-built one."""
    try:
        core = new_core(config, rng)
        _check_keys(records, config)
        entries = [entry_from_dict(v) for k, v in records.items() if k.startswith("entry:")]
        if any(e.global_ip not in config.globals or not config.is_inside(e.private_ip) for e in entries):
            raise ValueError("a saved entry lies outside this NAT's networks")
        core.table.restore(entries, int(records["table:next_id"]))
        core.pool.restore(records)
        core.leases.restore(records)
        core.client_alg.restore(records["client_alg"])
        core.neighbours.restore(records["neighbours"])
        _restore_paths(core, records["core:paths"])
        if "savi" in records and core.savi is not None:
            core.savi.restore(records["savi"])
        else:  # saved by a core without s1 (SAVI off): restore it as it was
            core.savi = None
        core.table.check_invariants()
    except (KeyError, ValueError, TypeError, AttributeError, AssertionError, RuntimeError, TableConflict) as exc:
        # RuntimeError: check_invariants' own exception type on branches that replace its asserts
        raise StateError(f"saved state is inconsistent ({type(exc).__name__}: {exc})") from None
    core.state_lost = False
    return core


def _entry_record(entry: Entry) -> dict[str, Any]:
    """``Entry.as_dict()``'s value, made without dataclasses.asdict's deep copy (this runs per event)."""
    record = dict(entry.__dict__)
    record.pop(CHANGED_LINK, None)  # the table's link, not a field
    record["kind"], record["path"] = entry.kind.value, entry.path.value
    return record


def _restore_paths(core: NatCore, paths: dict[str, Any]) -> None:
    core._slow_triples = {(int(p), g, f): int(c) for p, g, f, c in paths["slow_triples"]}
    for private, foreign, entry_id in paths["icmp_pairs"]:
        entry = core.table.get(int(entry_id))
        if entry is None:
            raise ValueError(f"ICMP pair {private}->{foreign} names no entry")
        core._icmp_pairs[(private, foreign)] = entry
    core._triple_cookies = itertools.count(int(paths["next_triple_cookie"]))
    core.bypass = bool(paths["bypass"])


def _check_keys(records: dict[str, Any], config: NatConfig) -> None:
    unknown = [k for k in records if not k.startswith(_PREFIXES)]
    if unknown:
        raise ValueError(f"unknown records {unknown[:3]}")
    if records["core:config"] != _fingerprint(config):
        raise ValueError(f"saved for another NAT configuration: {records['core:config']}")


def _fingerprint(config: NatConfig) -> dict[str, Any]:
    """What a saved state depends on: the networks, the pool and r1's ports."""
    return {"inside_net": config.inside_net, "outside_net": config.outside_net, "gateway_ip": config.gateway_ip,
            "globals": list(config.globals), "ports": [config.inside_port, config.outside_port]}


def _peek(core: NatCore, name: str) -> int:
    """The next value of one of the core's cookie counters, without using it up."""
    n: int = next(getattr(core, name))
    setattr(core, name, itertools.count(n))
    return n
