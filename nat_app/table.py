"""The translation table of FIG. 6: one entry per (protocol, private IP and
GPN, global IP and GPN, foreign address, expiry), of two kinds.

NAT-ALG entries are made by the NAT for protocols it translates itself
(TCP, UDP, ICMP); CLIENT-ALG entries are leased by clients for protocols
it cannot (ESP, AH, ISAKMP). Lookups are O(1) both ways, with a fallback to
foreign = any (None); expiry pops a heap, never scans; NAT-UNIQ (step 704: one
private (IP, GPN) per global (IP, GPN), protocol and foreign address) is
enforced on insertion.

An entry's ``protocol`` is always an IP protocol; a leased protocol carried
over UDP (ISAKMP on port 500, FIG. 7's underlying UDP) also names its port in
``udp_port``. The indices key by the GPN space the two make
(:class:`nat_app.gpn.GpnSpace`), so such a lease never meets NAPT's own UDP
entries of the same global number.
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
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP

__pure__ = True

ANY = None  # foreign address "any" (FIG. 6 field 606 unspecified)
CHANGED_LINK = "_changed"  # an indexed entry's link to its table's set of changed ids (not a field: never saved)
Key = tuple[int, str, "int | None", "str | None"]  # (GPN space, IP, GPN, foreign): one side of an entry
Triple = tuple[int, str, "str | None"]  # (GPN space, global IP, foreign)


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
    udp_port: int | None = None  # a leased UDP-borne protocol's port (ISAKMP: 500); ``protocol`` is then UDP

    @property
    def space(self) -> GpnSpace:
        """The GPN space the table keys this entry by (FIG. 7): its IP protocol's, or its UDP port's;
        ValueError if the fields name none (the table refuses such an entry before indexing it)."""
        return GpnSpace.ip(self.protocol) if self.udp_port is None else _udp_space(self.protocol, self.udp_port)

    @property
    def space_key(self) -> int:
        """``space`` as the plain int the indices hold: an IP protocol's is the protocol number itself
        (a shared small int: measured, GpnSpace objects in the keys cost 14% more memory per entry and
        12-16% of lookups/s, ``natlab bench nat-core``)."""
        return self.protocol if self.udp_port is None else int(GpnSpace.udp(self.udp_port))

    @property
    def port_keyed(self) -> bool:
        """TCP or UDP keyed by its own ports (NAPT's entries, MAP/PEER leases): r1 rewrites those
        ports; a leased GPN riding on UDP (``udp_port`` set) is keyed by its GPN instead."""
        return self.udp_port is None and self.protocol in (IPPROTO_TCP, IPPROTO_UDP)

    @property
    def out_key(self) -> Key:
        return (self.space_key, self.private_ip, self.private_gpn, self.foreign)

    @property
    def in_key(self) -> Key:
        return (self.space_key, self.global_ip, self.global_gpn, self.foreign)

    def __setattr__(self, name: str, value: Any) -> None:
        """Any field set on an entry of a table is noted in that table's set of changed ids
        (``TranslationTable.take_changed``): the state journal then writes just those entries, and
        a change made anywhere (path, expiry, idle timeout, slow-path count) cannot be missed."""
        object.__setattr__(self, name, value)
        changed = self.__dict__.get(CHANGED_LINK)
        if changed is not None:
            changed.add(self.id)

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
        self._changed: set[int] | None = None  # ids changed since take_changed(); None: nobody asks (no journal)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._by_id.values()))

    def add(
        self, *, kind: EntryKind, protocol: int, private_ip: str, private_gpn: int | None,
        global_ip: str, global_gpn: int | None, foreign: str | None, now: float,
        expires: float | None = None, idle_timeout: int | None = None, path: DataPath = DataPath.FAST,
        udp_port: int | None = None,
    ) -> Entry:
        """Insert an entry (step 704/705); raises TableConflict on a NAT-UNIQ violation.
        ``protocol`` is an IP protocol; ``udp_port`` the port of a leased UDP-borne GPN space."""
        entry = Entry(next(self._ids), kind, protocol, private_ip, private_gpn, global_ip, global_gpn,
                      foreign, expires, idle_timeout, path, now, udp_port=udp_port)
        space = entry.space  # validates protocol and port: ValueError before anything is indexed
        if entry.in_key in self._in:
            raise TableConflict(f"global {global_ip}/{global_gpn} space {space!r} foreign {foreign} is taken")
        if entry.out_key in self._out:
            raise TableConflict(f"private {private_ip}/{private_gpn} space {space!r} foreign {foreign} exists")
        self._index(entry)
        if expires is not None:
            heapq.heappush(self._expiry, (expires, entry.id))
        return entry

    def get(self, entry_id: int) -> Entry | None:
        return self._by_id.get(entry_id)

    def remove(self, entry_id: int) -> Entry | None:
        entry = self._by_id.pop(entry_id, None)
        if entry is None:
            return None
        space = entry.space_key
        del self._out[entry.out_key]
        del self._in[entry.in_key]
        _uncount(self._triples, (space, entry.global_ip, entry.foreign), entry.private_ip)
        _uncount(self._by_global, (space, entry.global_ip), entry.private_ip)
        ids = self._by_private[(space, entry.private_ip)]
        ids.discard(entry.id)
        if not ids:
            del self._by_private[(space, entry.private_ip)]
        if self._changed is not None:
            self._changed.add(entry_id)
            entry.__dict__.pop(CHANGED_LINK, None)  # a removed entry's later changes are nobody's
        return entry

    def _index(self, entry: Entry) -> None:
        """Enter ``entry`` in every index (after the caller checked NAT-UNIQ)."""
        space = entry.space_key
        self._by_id[entry.id] = self._out[entry.out_key] = self._in[entry.in_key] = entry
        self._triples[(space, entry.global_ip, entry.foreign)][entry.private_ip] += 1
        self._by_global[(space, entry.global_ip)][entry.private_ip] += 1
        self._by_private[(space, entry.private_ip)].add(entry.id)
        if self._changed is not None:
            entry.__dict__[CHANGED_LINK] = self._changed
            self._changed.add(entry.id)

    def take_changed(self) -> set[int] | None:
        """Ids of the entries added, changed or removed since the last call (nat_app/state.py's Journal
        writes only those: O(1) per event, not a scan of the table); None on the first call, which
        starts the tracking (a controller without a journal keeps no set that grows)."""
        if self._changed is None:
            self._changed = set()
            for entry in self._by_id.values():
                entry.__dict__[CHANGED_LINK] = self._changed
            return None
        ids = set(self._changed)
        self._changed.clear()  # in place: the indexed entries hold this very set
        return ids

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
        protocol, private_ip = entry.space_key, entry.private_ip
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
            self._index(entry)
            if entry.expires is not None:
                heapq.heappush(self._expiry, (entry.expires, entry.id))
        self._ids = itertools.count(next_id)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise TableCorrupt(what)


def entry_from_dict(d: dict[str, Any]) -> Entry:
    """The inverse of ``Entry.as_dict`` (a saved entry); KeyError/ValueError/TypeError if it is not one.
    A record of the old layout (no ``udp_port``; ``protocol`` held the GPN space's int) is read as
    its space says: nat_app/state.py's files from before keep loading."""
    space = space_of_record(d)
    fields = dict(d, kind=EntryKind(d["kind"]), path=DataPath(d["path"]), protocol=space.protocol,
                  udp_port=space.port if space.over_udp else None)
    entry = Entry(**fields)
    if not isinstance(entry.id, int):
        raise TypeError(f"entry {d!r}: id must be an integer")
    return entry


def space_of_record(d: dict[str, Any]) -> GpnSpace:
    """The GPN space of an entry's record (``Entry.as_dict``, ``natlab table``, a saved file of either
    layout); ValueError/TypeError for a protocol or port out of range or not an integer."""
    protocol, udp_port = d["protocol"], d.get("udp_port")
    if not isinstance(protocol, int) or not (udp_port is None or isinstance(udp_port, int)):
        raise TypeError(f"entry {d!r}: protocol and udp_port must be integers")
    return GpnSpace.legacy(protocol) if udp_port is None else _udp_space(protocol, udp_port)


def _udp_space(protocol: int, udp_port: int) -> GpnSpace:
    """A UDP port's GPN space (FIG. 7, underlying UDP): its packets are UDP, nothing else."""
    if protocol != IPPROTO_UDP:
        raise ValueError(f"a UDP port's GPN space rides on UDP, not on protocol {protocol}")
    return GpnSpace.udp(udp_port)


def _uncount(index: dict[Any, Counter[str]], key: tuple[Any, ...], host: str) -> None:
    hosts = index[key]
    hosts[host] -= 1
    if hosts[host] <= 0:
        del hosts[host]
    if not hosts:
        del index[key]
