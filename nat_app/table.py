"""The translation table of FIG. 6: one entry per (protocol, private IP and
GPN, global IP and GPN, foreign address, expiry), of two kinds.

NAT-ALG entries are made by the NAT for protocols it translates itself
(TCP, UDP, ICMP); CLIENT-ALG entries are leased by clients for protocols
it cannot (ESP, AH, ISAKMP). Lookups are O(1) both ways, with a fallback to
foreign = any (None); expiry pops a heap, never scans; NAT-UNIQ (step 704: one
private (IP, GPN) per global (IP, GPN), protocol and foreign address) is
enforced on insertion.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from nat_app.gpn import GpnSpace

__pure__ = True

ANY = None  # foreign address "any" (FIG. 6 field 606 unspecified)
Key = tuple[int, str, "int | None", "str | None"]  # (protocol, IP, GPN, foreign): one side of an entry
Triple = tuple[int, str, "str | None"]  # (protocol, global IP, foreign)


class EntryKind(enum.Enum):
    NAT_ALG = "NAT-ALG"
    CLIENT_ALG = "CLIENT-ALG"


class DataPath(enum.Enum):
    """Where an entry's packets are translated (DESIGN.md "Fast path, slow path")."""

    FAST = "fast"  # flows in r1
    SLOW = "slow"  # the controller, packet by packet


class TableConflict(ValueError):
    """Inserting would break NAT-UNIQ or duplicate an outbound key."""


class TableCorrupt(RuntimeError):
    """The table's indices disagree with its entries: a bug, never hostile input."""


@dataclass
class Entry:
    id: int
    kind: EntryKind
    protocol: int
    private_ip: str
    private_gpn: int | None
    global_ip: str
    global_gpn: int | None
    foreign: str | None
    expires: float | None  # absolute time; None: kept alive by its flow's idle timeout
    idle_timeout: int | None
    path: DataPath
    created: float
    slow_packets: int = 0

    @property
    def space(self) -> GpnSpace:
        """The GPN space ``protocol`` holds: an IP protocol's, or a UDP port's for a leased UDP-borne protocol."""
        return GpnSpace(self.protocol)

    @property
    def out_key(self) -> Key:
        return (self.protocol, self.private_ip, self.private_gpn, self.foreign)

    @property
    def in_key(self) -> Key:
        return (self.protocol, self.global_ip, self.global_gpn, self.foreign)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["path"] = self.path.value
        return d


class TranslationTable:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._by_id: dict[int, Entry] = {}
        self._out: dict[Key, Entry] = {}
        self._in: dict[Key, Entry] = {}
        self._expiry: list[tuple[float, int]] = []
        self._triples: dict[Triple, Counter[str]] = defaultdict(Counter)
        self._by_global: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)  # (protocol, global IP) -> hosts
        self._by_private: dict[tuple[int, str], set[int]] = defaultdict(set)  # (protocol, private IP) -> entry ids

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._by_id.values()))

    def add(
        self, *, kind: EntryKind, protocol: int, private_ip: str, private_gpn: int | None,
        global_ip: str, global_gpn: int | None, foreign: str | None, now: float,
        expires: float | None = None, idle_timeout: int | None = None, path: DataPath = DataPath.FAST,
    ) -> Entry:
        """Insert an entry (step 704/705); raises TableConflict on a NAT-UNIQ violation."""
        entry = Entry(next(self._ids), kind, protocol, private_ip, private_gpn, global_ip, global_gpn,
                      foreign, expires, idle_timeout, path, now)
        if entry.in_key in self._in:
            raise TableConflict(f"global {global_ip}/{global_gpn} proto {protocol} foreign {foreign} is taken")
        if entry.out_key in self._out:
            raise TableConflict(f"private {private_ip}/{private_gpn} proto {protocol} foreign {foreign} exists")
        self._by_id[entry.id] = entry
        self._out[entry.out_key] = entry
        self._in[entry.in_key] = entry
        self._triples[(protocol, global_ip, foreign)][private_ip] += 1
        self._by_global[(protocol, global_ip)][private_ip] += 1
        self._by_private[(protocol, private_ip)].add(entry.id)
        if expires is not None:
            heapq.heappush(self._expiry, (expires, entry.id))
        return entry

    def get(self, entry_id: int) -> Entry | None:
        return self._by_id.get(entry_id)

    def remove(self, entry_id: int) -> Entry | None:
        entry = self._by_id.pop(entry_id, None)
        if entry is None:
            return None
        del self._out[entry.out_key]
        del self._in[entry.in_key]
        _uncount(self._triples, (entry.protocol, entry.global_ip, entry.foreign), entry.private_ip)
        _uncount(self._by_global, (entry.protocol, entry.global_ip), entry.private_ip)
        ids = self._by_private[(entry.protocol, entry.private_ip)]
        ids.discard(entry.id)
        if not ids:
            del self._by_private[(entry.protocol, entry.private_ip)]
        return entry

    def lookup_out(self, protocol: int, private_ip: str, private_gpn: int | None,
                   foreign: str | None) -> Entry | None:
        """Step 706: the entry for an outgoing packet, exact foreign first, then any."""
        return self._out.get((protocol, private_ip, private_gpn, foreign)) or self._out.get(
            (protocol, private_ip, private_gpn, ANY))

    def lookup_in(self, protocol: int, global_ip: str, global_gpn: int | None,
                  foreign: str | None) -> Entry | None:
        """Step 708: the entry for an incoming packet, exact foreign first, then any."""
        return self._in.get((protocol, global_ip, global_gpn, foreign)) or self._in.get(
            (protocol, global_ip, global_gpn, ANY))

    def set_expiry(self, entry_id: int, expires: float) -> None:
        """Renew (NAT-RENEW) or refresh a table-timed entry."""
        entry = self._by_id[entry_id]
        entry.expires = expires
        heapq.heappush(self._expiry, (expires, entry_id))

    def pop_expired(self, now: float) -> list[Entry]:
        """Steps 711-712: remove and return every entry whose expiry has passed."""
        gone = []
        while self._expiry and self._expiry[0][0] <= now:
            when, entry_id = heapq.heappop(self._expiry)
            entry = self._by_id.get(entry_id)
            if entry is not None and entry.expires == when:  # else stale heap item
                self.remove(entry_id)
                gone.append(entry)
        return gone

    def next_expiry(self) -> float | None:
        while self._expiry:
            when, entry_id = self._expiry[0]
            entry = self._by_id.get(entry_id)
            if entry is not None and entry.expires == when:
                return when
            heapq.heappop(self._expiry)
        return None

    def private_hosts_of(self, protocol: int, global_ip: str, foreign: str | None) -> frozenset[str]:
        """Private IPs sharing (protocol, global IP, foreign): one means OpenFlow can demux it."""
        return frozenset(self._triples.get((protocol, global_ip, foreign), ()))

    def hosts_on(self, protocol: int, global_ip: str) -> frozenset[str]:
        """Private IPs with entries of ``protocol`` on ``global_ip``, for any foreign address."""
        return frozenset(self._by_global.get((protocol, global_ip), ()))

    def entries_of(self, protocol: int, private_ip: str) -> list[Entry]:
        """A private host's entries of one protocol (outgoing ESP carries no GPN of ours to look up by)."""
        return [self._by_id[i] for i in sorted(self._by_private.get((protocol, private_ip), ()))]

    def count_of(self, protocol: int, private_ip: str) -> int:
        """How many entries of ``protocol`` a private host holds (per-host limits)."""
        return len(self._by_private.get((protocol, private_ip), ()))

    def _indexed(self, entry: Entry) -> bool:
        """Whether every index holds ``entry`` where its fields say it belongs."""
        protocol, private_ip = entry.protocol, entry.private_ip
        return (self._out.get((protocol, private_ip, entry.private_gpn, entry.foreign)) is entry
                and self._in.get((protocol, entry.global_ip, entry.global_gpn, entry.foreign)) is entry
                and self._triples.get((protocol, entry.global_ip, entry.foreign), Counter())[private_ip] > 0
                and entry.id in self._by_private.get((protocol, private_ip), ()))

    def check_invariants(self) -> None:
        """Raise TableCorrupt if the indices disagree (the control socket's "check", tests, the fuzzer).

        Real checks, not ``assert``: they must hold under ``python -O`` too.
        """
        _require(len(self._out) == len(self._in) == len(self._by_id), "index sizes differ")
        for entry in self._by_id.values():
            if not self._indexed(entry):
                raise TableCorrupt(f"entry {entry.id} is missing from an index: {entry}")
        _require(sum(len(ids) for ids in self._by_private.values()) == len(self._by_id), "per-host index size")
        for index in (self._triples, self._by_global):
            _require(sum(sum(c.values()) for c in index.values()) == len(self._by_id), "host count index size")
            _require(all(c and all(n > 0 for n in c.values()) for c in index.values()), "empty or zero count")

    # ------------------------------------------- persistence (nat_app/state.py, nat_app/store.py)

    def next_id(self) -> int:
        """The id the next entry gets: saved so that a restarted controller never reuses a flow cookie."""
        n = next(self._ids)
        self._ids = itertools.count(n)
        return n

    def restore(self, entries: list[Entry], next_id: int) -> None:
        """Rebuild an empty table from saved entries, ids kept (they are r1's flow cookies).
        Raises TableConflict (NAT-UNIQ) or ValueError; the caller discards the table then."""
        if self._by_id or any(e.id >= next_id or e.id < 1 for e in entries):
            raise ValueError("restore needs an empty table and ids below the saved counter")
        for entry in sorted(entries, key=lambda e: e.id):
            if entry.id in self._by_id or entry.in_key in self._in or entry.out_key in self._out:
                raise TableConflict(f"saved entry {entry.id} duplicates another")
            self._by_id[entry.id] = self._out[entry.out_key] = self._in[entry.in_key] = entry
            self._triples[(entry.protocol, entry.global_ip, entry.foreign)][entry.private_ip] += 1
            self._by_global[(entry.protocol, entry.global_ip)][entry.private_ip] += 1
            self._by_private[(entry.protocol, entry.private_ip)].add(entry.id)
            if entry.expires is not None:
                heapq.heappush(self._expiry, (entry.expires, entry.id))
        self._ids = itertools.count(next_id)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise TableCorrupt(what)


def entry_from_dict(d: dict[str, Any]) -> Entry:
    """The inverse of ``Entry.as_dict`` (a saved entry); KeyError/ValueError/TypeError if it is not one."""
    fields = dict(d, kind=EntryKind(d["kind"]), path=DataPath(d["path"]))
    entry = Entry(**fields)
    if not isinstance(entry.id, int) or not isinstance(entry.protocol, int):
        raise TypeError(f"entry {d!r}: id and protocol must be integers")
    return entry


def _uncount(index: dict[Any, Counter[str]], key: tuple[Any, ...], host: str) -> None:
    hosts = index[key]
    hosts[host] -= 1
    if hosts[host] <= 0:
        del hosts[host]
    if not hosts:
        del index[key]
