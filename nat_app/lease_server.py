"""The lease server (FIG. 7): DEFINE, LEASE, MAP, PEER and READ requests in,
responses and table changes out. Pure: the NAT core hands it each request
with where it came from and the time, and turns its table changes into flows.

Framing and semantics are PCP's (RFC 6887); what PCP cannot say is in the
private-use opcodes of ``netwire.pcp``. Ownership goes beyond PCP, which
trusts the inside network: a lease belongs to the (switch port, MAC, IP) it
came from and to its nonce, and only that owner may renew, release or read it
(DESIGN.md, "Ownership beyond PCP").

Strangers on the shared link must not subvert it (issue 9): the NAT's own
definitions (ESP, AH, ISAKMP) are fixed at start; a client's definition is
owned by its origin and expires with its last lease; quotas are per origin and
per MAC; foreign addresses are validated; and a non-owner's answer never
depends on the nonce it guessed.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from nat_app.allocate import Pool, PortLimitReached
from nat_app.config import NatConfig
from nat_app.gpn import NAT_DEFINITIONS, Definition, GpnSpace
from nat_app.messages import Counters
from nat_app.table import ANY, DataPath, Entry, EntryKind, TableConflict, TranslationTable
from netwire import pcp
from netwire.ipv4 import IPPROTO_TCP, IPPROTO_UDP
from netwire.pcp import UNDERLYING_UDP

__pure__ = True


@dataclass(frozen=True)
class Origin:
    """Where a request came from on the shared link."""

    in_port: int | None  # None: a source SAVI has not bound (it owns nothing then)
    mac: str
    ip: str


@dataclass
class Outcome:
    response: bytes | None
    added: list[Entry] = field(default_factory=list)
    removed: list[Entry] = field(default_factory=list)


@dataclass(frozen=True)
class _Owner:
    origin: Origin
    nonce: bytes
    opcode: int
    key: GpnSpace  # the entry's GPN space: the definition it keeps alive


_Body = TypeVar("_Body", pcp.MapInfo, pcp.PeerInfo, pcp.GpnDefinition, pcp.LeaseInfo, pcp.ReadInfo)
Handled = tuple[Outcome, "pcp.Info | None", int]  # the outcome, the response's body, its lifetime
Render = Callable[[Any, Entry], "pcp.Info"]  # a response body from the request's and the entry


class Refused(Exception):
    def __init__(self, result: pcp.Result, reason: str) -> None:
        super().__init__(reason)
        self.result = result


class LeaseServer:
    def __init__(self, config: NatConfig, table: TranslationTable, pool: Pool, counters: Counters,
                 now: float) -> None:
        self.config = config
        self.table = table
        self.pool = pool
        self.counters = counters
        self.started = now
        self.definitions: dict[GpnSpace, Definition] = dict(NAT_DEFINITIONS)
        self._definers: dict[GpnSpace, set[Origin]] = {}  # client definitions -> origins that defined them
        self._idle_since: dict[GpnSpace, float] = {}  # client definitions no lease holds -> since when
        self._leases_of: Counter[GpnSpace] = Counter()  # live leases per definition
        self._owners: dict[int, _Owner] = {}
        self._held: Counter[Origin] = Counter()  # leases per origin, for the quota
        self._held_by_mac: Counter[str] = Counter()  # leases per MAC, so IP cycling gains nothing

    def epoch(self, now: float) -> int:
        """Seconds since the server lost its state (RFC 6887 8.5); never negative, whatever ``now`` says."""
        return max(0, int(now - self.started))

    def owner_of(self, entry_id: int) -> Origin | None:
        owner = self._owners.get(entry_id)
        return owner.origin if owner else None

    def forget(self, entry_id: int, now: float = 0.0) -> None:
        """The core removed an entry (expiry, flow removal): drop its ownership record."""
        owner = self._owners.pop(entry_id, None)
        if owner is None:
            return
        _uncount(self._held, owner.origin)
        _uncount(self._held_by_mac, owner.origin.mac)
        _uncount(self._leases_of, owner.key)
        if owner.key in self._definers and not self._leases_of[owner.key]:
            self._idle_since[owner.key] = now

    def expire(self, now: float) -> None:
        """Forget client definitions that no lease has held for the grace period."""
        grace = self.config.definition_grace
        for key in [k for k, since in self._idle_since.items() if now >= since + grace]:
            del self._idle_since[key], self._definers[key], self.definitions[key]
            self.counters.add("definitions_expired")

    def largest_definition_share(self) -> int:
        """The most live client definitions any origin holds (checked against its quota)."""
        return max(Counter(o for owners in self._definers.values() for o in owners).values(), default=0)

    def _own(self, entry: Entry, origin: Origin, nonce: bytes, opcode: int) -> None:
        self._owners[entry.id] = _Owner(origin, nonce, opcode, entry.space)
        self._held[origin] += 1
        self._held_by_mac[origin.mac] += 1
        self._leases_of[entry.space] += 1
        self._idle_since.pop(entry.space, None)

    # ------------------------------------------------------------------ requests

    def handle(self, datagram: bytes, origin: Origin, now: float) -> Outcome:
        """Answer one request; never raises for bad input (it is answered or dropped, and counted)."""
        self.counters.add("lease_requests")
        self.expire(now)
        try:
            request = pcp.decode_request(datagram)
        except pcp.PcpError as exc:
            self.counters.add(f"lease_refused:{exc.result.name}")
            return Outcome(pcp.error_response(datagram, exc.result, self.epoch(now)))
        try:
            self._check_client(request.client_ip, origin)
            handler = {
                pcp.Opcode.DEFINE: self._define, pcp.Opcode.LEASE: self._lease, pcp.Opcode.MAP: self._map,
                pcp.Opcode.PEER: self._map, pcp.Opcode.READ: self._read,
            }.get(request.opcode)
            if handler is None:
                raise Refused(pcp.Result.UNSUPP_OPCODE, f"opcode {request.opcode}")
            outcome, info, lifetime = handler(request, origin, now)
            self.counters.add(f"lease_ok:{pcp.Opcode(request.opcode).name}")
            outcome.response = pcp.encode_response(pcp.Response(
                request.opcode, pcp.Result.SUCCESS, lifetime, self.epoch(now), info))
            return outcome
        except Refused as exc:
            self.counters.add(f"lease_refused:{exc.result.name}")
            response = pcp.Response(request.opcode, exc.result, pcp.error_lifetime(exc.result), self.epoch(now),
                                    request.info)
            return Outcome(pcp.encode_response(response))

    def _check_client(self, client_ip: str, origin: Origin) -> None:
        """RFC 6887 8.1: the client address must be the source; and a host's, not the NAT's or the net's."""
        if client_ip != origin.ip:
            raise Refused(pcp.Result.ADDRESS_MISMATCH, f"client address {client_ip} != {origin.ip}")
        if not self.config.is_inside_host(origin.ip):
            raise Refused(pcp.Result.ADDRESS_MISMATCH, f"{origin.ip} is no host address of the inside network")

    # ------------------------------------------------------------------ DEFINE

    def _define(self, request: pcp.Request, origin: Origin, now: float) -> Handled:
        """Step 701-703: accept a GPN definition the NAT can honour without harm to anyone else.

        The NAT's own definitions are matched exactly; a client's is refused if the
        NAT has an ALG for it (its NAPT owns UDP ports from DYNAMIC_LOW up), and is
        owned by its origin and whoever defines it identically."""
        definition = Definition.from_wire(_body(request, pcp.GpnDefinition))
        self._check_definable(definition)
        key = definition.key
        known = NAT_DEFINITIONS.get(key) or self.definitions.get(key)
        if known is not None and known != definition:
            raise Refused(pcp.Result.DEFINITION_CONFLICT, f"protocol {key} is defined differently")
        if key in NAT_DEFINITIONS:
            self.definitions[key] = definition  # the NAT's own: idempotent
            return Outcome(None), request.info, 0  # lasts as long as the NAT: nothing to renew
        if origin not in self._definers.get(key, ()):
            self._check_definition_quota(origin)
            self.definitions[key] = definition
            self._definers.setdefault(key, set()).add(origin)
        if not self._leases_of[key]:
            self._idle_since[key] = now  # a DEFINE starts (or restarts) the grace no lease has ended yet
        return Outcome(None), request.info, 0  # a client's definition lives by its leases, not by renewal

    def _check_definable(self, definition: Definition) -> None:
        if definition.has_nat_alg:
            raise Refused(pcp.Result.HAS_ALG, f"the NAT translates protocol {definition.protocol} itself")
        if definition.underlying == UNDERLYING_UDP and definition.protocol != IPPROTO_UDP:
            raise Refused(pcp.Result.MALFORMED_REQUEST, f"protocol {definition.protocol} over UDP: must be 17")
        if definition.in_napt_space:
            raise Refused(pcp.Result.HAS_ALG, f"UDP port {definition.port} belongs to the NAT's NAPT")
        problem = definition.problem()
        if problem:
            raise Refused(pcp.Result.MALFORMED_REQUEST, problem)

    def _check_definition_quota(self, origin: Origin) -> None:
        mine = sum(origin in owners for owners in self._definers.values())
        if mine >= self.config.definition_quota:
            raise Refused(pcp.Result.USER_EX_QUOTA, f"{origin.ip} has {mine} definitions")

    def _definition_for(self, info: pcp.LeaseInfo, origin: Origin) -> Definition:
        """The definition a LEASE names: the NAT's own, or one this origin defined."""
        if info.port and info.protocol != IPPROTO_UDP:
            raise Refused(pcp.Result.MALFORMED_REQUEST, f"an underlying port needs protocol 17, not {info.protocol}")
        key = GpnSpace.udp(info.port) if info.port else GpnSpace.ip(info.protocol)
        definition = self.definitions.get(key)
        if definition is None or (key not in NAT_DEFINITIONS and origin not in self._definers[key]):
            raise Refused(pcp.Result.PROTOCOL_NOT_DEFINED, f"protocol {key} has no GPN definition of this client")
        return definition

    # ------------------------------------------------------------------ LEASE

    def _lease(self, request: pcp.Request, origin: Origin, now: float) -> Handled:
        """Step 704-705 for a client-ALG entry; renewal and release (NAT-RENEW, NAT-DEALLOC)."""
        info = _body(request, pcp.LeaseInfo)
        definition = self._definition_for(info, origin)
        self._check_foreign(info.foreign_ip)
        existing = self._existing(definition.key, request, info, origin)
        if existing is not None:
            return self._renew_or_release(existing, request, origin, now, self._lease_info)
        if request.lifetime == 0:
            return Outcome(None), info, 0  # releasing what does not exist succeeds (RFC 6887 15)
        self._check_gpns(definition, info)
        self._check_quota(origin)
        lifetime = self._lifetime(request.lifetime)
        entry = self._add_lease(definition, info, origin, now, lifetime)
        self._own(entry, origin, info.nonce, request.opcode)
        return Outcome(None, added=[entry]), self._lease_info(info, entry), lifetime

    def _existing(self, key: int, request: pcp.Request, info: pcp.LeaseInfo, origin: Origin) -> Entry | None:
        """The entry a LEASE names, if the requester's IP holds it. Another host's entry is
        refused, and the answer does not depend on the nonce sent (a guess proves nothing)."""
        existing = self._find(key, origin.ip, info.private_gpn, info.global_ip, info.global_gpn, info.foreign_ip)
        if existing is None or existing.private_ip == origin.ip:
            return existing
        if request.lifetime == 0:
            raise Refused(pcp.Result.NOT_AUTHORIZED, f"entry {existing.id} belongs to another client")
        raise Refused(pcp.Result.GPN_IN_USE, f"global GPN {info.global_gpn} is in use on {info.global_ip}")

    def _add_lease(self, definition: Definition, info: pcp.LeaseInfo, origin: Origin, now: float, lifetime: int) -> Entry:
        """Choose the global IP and GPN (step 704) and insert the entry (NAT-UNIQ)."""
        key = definition.key
        global_ip = self._global_ip_for(key, info, origin)
        global_gpn = self._take_gpn(definition, global_ip, info, origin, now)
        private_gpn = info.private_gpn if info.private_gpn is not None else global_gpn
        try:
            return self.table.add(kind=EntryKind.CLIENT_ALG, protocol=definition.ip_protocol, private_ip=origin.ip,
                                  private_gpn=private_gpn, global_ip=global_ip, global_gpn=global_gpn,
                                  foreign=info.foreign_ip, now=now, expires=now + lifetime, path=DataPath.FAST,
                                  udp_port=definition.port if key.over_udp else None)
        except TableConflict as exc:
            self.pool.space(global_ip, key).release(global_gpn, now, owner=origin.ip)
            raise Refused(pcp.Result.GPN_IN_USE, str(exc)) from None

    @staticmethod
    def _check_gpns(definition: Definition, info: pcp.LeaseInfo) -> None:
        for name, value in (("private", info.private_gpn), ("global", info.global_gpn)):
            if value is not None and not definition.range_min <= value <= definition.range_max:
                raise Refused(pcp.Result.GPN_UNAVAILABLE, f"{name} GPN {value} outside {definition.range_min}-"
                                                          f"{definition.range_max}")
        if (definition.underlying != UNDERLYING_UDP and info.private_gpn is not None
                and info.global_gpn is not None and info.private_gpn != info.global_gpn):
            # The NAT never touches what ESP/AH protect: the SPI cannot be rewritten.
            raise Refused(pcp.Result.GPN_UNAVAILABLE, "private and global GPN must be equal for this protocol")

    def _global_ip_for(self, key: int, info: pcp.LeaseInfo, origin: Origin) -> str:
        keep = next((e.global_ip for e in self.table.entries_of(key, origin.ip)), None)
        if info.global_ip is not None and (info.global_ip not in self.config.globals
                                           or keep not in (None, info.global_ip)):
            raise Refused(pcp.Result.CANNOT_PROVIDE_EXTERNAL, f"global IP {info.global_ip} cannot be given")
        return info.global_ip or self.pool.for_client_alg(origin.ip, key, self.table, keep=keep)

    def _take_gpn(self, definition: Definition, global_ip: str, info: pcp.LeaseInfo, origin: Origin, now: float) -> int:
        """The global GPN: the one asked for, or (over IP, where private must equal global)
        the private one, or a free one the NAT picks."""
        space = self.pool.space(global_ip, definition.key, definition.range_min, definition.range_max)
        wanted = info.global_gpn
        if wanted is None and definition.underlying != UNDERLYING_UDP:
            wanted = info.private_gpn  # an SPI is never rewritten: the private one or none
        if wanted is not None:
            if not space.claim(wanted, now, owner=origin.ip):
                raise Refused(pcp.Result.GPN_IN_USE, f"global GPN {wanted} is in use on {global_ip}")
            return wanted
        gpn = space.reserve(now, preferred=info.private_gpn, owner=origin.ip)
        if gpn is None:
            raise Refused(pcp.Result.NO_RESOURCES, f"no free GPN on {global_ip}")
        return gpn

    # ------------------------------------------------------------------ MAP, PEER, READ

    def _map(self, request: pcp.Request, origin: Origin, now: float) -> Handled:
        """PCP MAP and PEER (RFC 6887 11, 12): a 16-bit port lease, foreign any or one peer."""
        info: pcp.MapInfo | pcp.PeerInfo = (_body(request, pcp.PeerInfo) if request.opcode == pcp.Opcode.PEER
                                             else _body(request, pcp.MapInfo))
        if info.protocol not in (IPPROTO_TCP, IPPROTO_UDP):
            raise Refused(pcp.Result.UNSUPP_PROTOCOL, f"protocol {info.protocol}: MAP and PEER lease TCP/UDP ports")
        if info.internal_port == 0:
            raise Refused(pcp.Result.MALFORMED_REQUEST, "internal port 0 (all ports) is not leased")
        foreign = info.remote_ip if isinstance(info, pcp.PeerInfo) else ANY
        self._check_foreign(foreign)
        existing = self.table.lookup_out(info.protocol, origin.ip, info.internal_port, foreign)
        if existing is not None and existing.kind is EntryKind.CLIENT_ALG and existing.foreign == foreign:
            return self._renew_or_release(existing, request, origin, now, self._map_info)
        if request.lifetime == 0:
            return Outcome(None), info, 0
        self._check_quota(origin)
        mapping = self._acquire_port(info, origin, now)
        lifetime = self._lifetime(request.lifetime)
        try:
            entry = self.table.add(kind=EntryKind.CLIENT_ALG, protocol=info.protocol, private_ip=origin.ip,
                                   private_gpn=info.internal_port, global_ip=mapping[0], global_gpn=mapping[1],
                                   foreign=foreign, now=now, expires=now + lifetime)
        except TableConflict as exc:
            self.pool.release_mapping(info.protocol, origin.ip, info.internal_port, now, leased=True)
            raise Refused(pcp.Result.CANNOT_PROVIDE_EXTERNAL, str(exc)) from None
        self._own(entry, origin, info.nonce, request.opcode)
        return Outcome(None, added=[entry]), self._map_info(info, entry), lifetime

    def map_port(self, request: pcp.Request, origin: Origin, now: float) -> Handled:
        """MAP's logic for a request that came in another framing (NAT-PMP: nat_app/natpmp_server.py)."""
        return self._map(request, origin, now)

    def _acquire_port(self, info: pcp.MapInfo | pcp.PeerInfo, origin: Origin, now: float) -> tuple[str, int]:
        """A global port from the NAPT space, within the host's share (RFC 6888 REQ-4)."""
        try:
            mapping = self.pool.acquire_mapping(info.protocol, origin.ip, info.internal_port, now,
                                                suggested_port=info.external_port or None,
                                                suggested_ip=info.external_ip, leased=True)
        except PortLimitReached as exc:
            raise Refused(pcp.Result.USER_EX_QUOTA, str(exc)) from None
        if mapping is None:
            raise Refused(pcp.Result.NO_RESOURCES, "no free port")
        return mapping

    def _read(self, request: pcp.Request, origin: Origin, now: float) -> Handled:
        """The client's own entries, proven by a nonce of one of them (never anyone else's)."""
        info = _body(request, pcp.ReadInfo)
        mine = [(eid, o) for eid, o in self._owners.items() if o.origin == origin]
        if not any(o.nonce == info.nonce for _, o in mine):
            raise Refused(pcp.Result.NOT_AUTHORIZED, "the nonce names none of this client's entries")
        records = []
        for entry_id, _ in sorted(mine):
            e = self.table.get(entry_id)
            if e is not None:
                records.append(pcp.EntryRecord(e.kind.value, e.protocol, e.private_ip, e.private_gpn, e.global_ip,
                                               e.global_gpn, e.foreign, max(0, int((e.expires or now) - now)),
                                               e.udp_port or 0))
        return Outcome(None), replace(info, entries=tuple(records)), request.lifetime

    # ------------------------------------------------------------------ helpers

    def _renew_or_release(self, entry: Entry, request: pcp.Request, origin: Origin, now: float,
                          render: Render) -> Handled:
        owner = self._owners.get(entry.id)
        if owner is None or request.info is None or owner.origin != origin or owner.nonce != request.info.nonce:
            raise Refused(pcp.Result.NOT_AUTHORIZED, f"entry {entry.id} belongs to another client or nonce")
        if request.lifetime == 0:
            self.table.remove(entry.id)
            self.forget(entry.id, now)
            self.counters.add("leases_released")
            return Outcome(None, removed=[entry]), render(request.info, entry), 0
        lifetime = self._lifetime(request.lifetime)
        self.table.set_expiry(entry.id, now + lifetime)
        self.counters.add("leases_renewed")
        return Outcome(None), render(request.info, entry), lifetime

    def _find(self, key: int, private_ip: str, private_gpn: int | None, global_ip: str | None,
              global_gpn: int | None, foreign: str | None) -> Entry | None:
        if global_ip is not None and global_gpn is not None:
            entry = self.table.lookup_in(key, global_ip, global_gpn, foreign)
            if entry is not None and entry.foreign == foreign:
                return entry
        if private_gpn is not None:
            entry = self.table.lookup_out(key, private_ip, private_gpn, foreign)
            if entry is not None and entry.foreign == foreign:
                return entry
        return None

    def _check_foreign(self, foreign: str | None) -> None:
        """A foreign (PEER: remote) address must be a unicast host outside: not loopback,
        multicast, broadcast, reserved, "this network" (RFC 6890), nor inside or the NAT's own."""
        if foreign is None:
            return
        address = ipaddress.IPv4Address(foreign)
        c = self.config
        if (address.is_multicast or address.is_loopback or address.is_link_local or address.is_reserved
                or address.packed[0] == 0 or c.is_inside(foreign) or foreign in c.globals):
            raise Refused(pcp.Result.MALFORMED_REQUEST, f"foreign address {foreign} is no outside host")

    def _check_quota(self, origin: Origin) -> None:
        c = self.config
        if self._held[origin] >= c.lease_quota:
            raise Refused(pcp.Result.USER_EX_QUOTA, f"{origin.ip} holds {self._held[origin]} leases "
                                                    f"(quota {c.lease_quota})")
        if self._held_by_mac[origin.mac] >= c.lease_mac_quota:
            raise Refused(pcp.Result.USER_EX_QUOTA, f"MAC {origin.mac} holds {self._held_by_mac[origin.mac]} "
                                                    f"leases (quota {c.lease_mac_quota})")

    def _lifetime(self, requested: int) -> int:
        """Requested lifetime clamped to [min, max]; all ones means the default (step 704)."""
        c = self.config
        if requested == pcp.LIFETIME_UNSPECIFIED:  # "an unspecified expiry means now + default" (step 704)
            return c.lease_default_lifetime
        return max(c.lease_min_lifetime, min(c.lease_max_lifetime, requested))

    @staticmethod
    def _lease_info(info: pcp.LeaseInfo, entry: Entry) -> pcp.LeaseInfo:
        return replace(info, private_gpn=entry.private_gpn, global_gpn=entry.global_gpn, global_ip=entry.global_ip,
                       foreign_ip=entry.foreign)

    @staticmethod
    def _map_info(info: pcp.MapInfo | pcp.PeerInfo, entry: Entry) -> pcp.MapInfo | pcp.PeerInfo:
        return replace(info, external_port=entry.global_gpn or 0, external_ip=entry.global_ip)

    # ------------------------------------------- persistence (nat_app/state.py, nat_app/store.py)

    def export(self) -> dict[str, object]:
        """Generic records: the epoch's start; each client definition with the origins that own it and
        since when no lease holds it (its grace); each lease's owner (origin, nonce, opcode). The NAT's
        own definitions are fixed at start, and the per-origin, per-MAC and per-definition lease counts
        follow from the owners, so neither is saved (one source per fact)."""
        records: dict[str, object] = {"leases:started": self.started}
        for key, definers in self._definers.items():
            records[f"definition:{key}"] = {"definition": asdict(self.definitions[key]),
                                            "definers": sorted([o.in_port, o.mac, o.ip] for o in definers),
                                            "idle_since": self._idle_since.get(key)}
        for entry_id, o in self._owners.items():
            records[f"owner:{entry_id}"] = [entry_id, o.origin.in_port, o.origin.mac, o.origin.ip, o.nonce.hex(),
                                            o.opcode]
        return records

    def restore(self, records: dict[str, Any]) -> None:
        """Rebuild from ``export()``'s records after the table; the epoch continues (RFC 6887 8.5).
        Quotas are recounted from the owners, so they hold as before. KeyError/ValueError/TypeError
        if malformed, if an owner names no leased entry or a lease no definition its owner may use."""
        self.started = float(records["leases:started"])
        for key, value in records.items():
            if key.startswith("definition:"):
                self._restore_definition(value)
        for key, value in records.items():
            if key.startswith("owner:"):
                entry_id, in_port, mac, ip, nonce, opcode = value
                entry = self.table.get(int(entry_id))
                if entry is None or entry.kind is not EntryKind.CLIENT_ALG or entry.private_ip != ip:
                    raise ValueError(f"saved owner {key} names no lease of {ip}")
                self._own(entry, Origin(int(in_port), str(mac), str(ip)), bytes.fromhex(nonce), int(opcode))
        self._check_restored()

    def _restore_definition(self, value: dict[str, Any]) -> None:
        """One client definition, checked as a DEFINE would be, with its owners and grace."""
        definition = Definition(**value["definition"])
        if definition.key in NAT_DEFINITIONS or definition.has_nat_alg or definition.in_napt_space \
                or definition.problem():
            raise ValueError(f"saved definition {value!r} is not one a client may hold")
        definers = {Origin(int(p), str(m), str(i)) for p, m, i in value["definers"]}
        if not definers:
            raise ValueError(f"saved definition of protocol {definition.key} has no owner")
        self.definitions[definition.key] = definition
        self._definers[definition.key] = definers
        if value["idle_since"] is not None:
            self._idle_since[definition.key] = float(value["idle_since"])

    def _check_restored(self) -> None:
        """Every lease of a leased protocol has a live definition, and a definition is idle exactly
        when no lease holds it: else the grace timers would be wrong after the restart."""
        for key, count in self._leases_of.items():
            if key not in self.definitions and key not in (IPPROTO_TCP, IPPROTO_UDP):  # MAP/PEER need none
                raise ValueError(f"{count} saved leases of protocol {key}, which has no definition")
        for key in self._definers:
            if (key in self._idle_since) == bool(self._leases_of[key]):
                raise ValueError(f"saved definition of protocol {key}: grace timer disagrees with its leases")


def _body(request: pcp.Request, kind: type[_Body]) -> _Body:
    """The request's body as its opcode's type. decode_request guarantees it; a hand-made request
    without it is refused like any malformed one, never trusted."""
    if not isinstance(request.info, kind):
        raise Refused(pcp.Result.MALFORMED_REQUEST, f"opcode {request.opcode} without its {kind.__name__}")
    return request.info


def _uncount(counter: Counter[Any], key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
