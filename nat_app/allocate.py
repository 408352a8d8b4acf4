"""Step 704's choices: which global IP, and which GPN within it.

The pool hands each private host one global IP for the NAT's own mappings
(RFC 4787 REQ-2, "paired"), and keeps one GPN space per (global IP,
protocol): 16-bit ports for TCP and UDP (shared by NAPT mappings and ports
that clients lease, so the two never collide), ICMP identifiers, and the
wide spaces of leased protocols (ESP/AH SPIs, ISAKMP cookies).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from nat_app.ports import PortSpace
from nat_app.table import TranslationTable

__pure__ = True


class PortLimitReached(Exception):
    """The private host already holds its share of a global IP's ports (RFC 6888 REQ-4)."""


class Pool:
    def __init__(self, globals: tuple[str, ...], quarantine: float, rng: random.Random,
                 ports_per_host: int | None = None) -> None:
        self.globals = globals
        self._quarantine = quarantine
        self._rng = rng
        self._ports_per_host = ports_per_host
        self._paired: dict[str, str] = {}
        self._spaces: dict[tuple[str, int], PortSpace] = {}
        self._mappings: dict[tuple[int, str, int], list[Any]] = {}  # key -> [global IP, global port, users]
        self._owners: dict[tuple[int, str, int], tuple[str, int]] = {}  # (proto, global IP, port) -> private
        self._held: Counter[tuple[int, str, str]] = Counter()  # (protocol, private IP, global IP) -> ports
        self._changed: set[tuple[int, str, int]] | None = None  # mappings changed since take_changes(); None: untracked
        self._changed_spaces: set[tuple[str, int]] = set()  # spaces made since take_changes()
        self._paired_changed = False

    def largest_share(self) -> int:
        """The most ports any host holds of one global IP (the fuzzer checks it against the limit)."""
        return max(self._held.values(), default=0)

    def ports_held(self, protocol: int, private_ip: str, global_ip: str) -> int:
        """Global ports of ``global_ip`` that the host's mappings and port leases hold."""
        return self._held[(protocol, private_ip, global_ip)]

    def paired(self, private_ip: str) -> str:
        """The private host's global IP, the least used one at first sight (RFC 4787 REQ-2)."""
        global_ip = self._paired.get(private_ip)
        if global_ip is None:
            load = dict.fromkeys(self.globals, 0)
            for g in self._paired.values():
                load[g] += 1
            global_ip = self._paired[private_ip] = min(self.globals, key=lambda g: (load[g], g))
            self._paired_changed = True
        return global_ip

    def for_client_alg(self, private_ip: str, protocol: int, table: TranslationTable,
                       keep: str | None = None) -> str:
        """A global IP for a leased entry: ``keep`` if the client already uses one for this
        protocol (CL-SPI: "keeping the same global IP"), else one that no other private
        host uses for the protocol, so OpenFlow alone can demultiplex it (the fast path),
        the paired one first; else the paired one (the controller demultiplexes)."""
        if keep is not None:
            return keep
        paired = self.paired(private_ip)
        for g in (paired, *[g for g in self.globals if g != paired]):
            if table.hosts_on(protocol, g) <= {private_ip}:
                return g
        return paired

    def space(self, global_ip: str, protocol: int, low: int = 1024, high: int = 65535) -> PortSpace:
        """The GPN space of (global IP, protocol); its range is fixed when first asked for."""
        space = self._spaces.get((global_ip, protocol))
        if space is None:
            space = self._spaces[(global_ip, protocol)] = PortSpace(low, high, self._quarantine, self._rng)
            self._changed_spaces.add((global_ip, protocol))
            if self._changed is not None:
                space.take_changed()  # tracked from its start
        return space

    def acquire_mapping(self, protocol: int, private_ip: str, port: int, now: float,
                        suggested_port: int | None = None, suggested_ip: str | None = None,
                        leased: bool = False) -> tuple[str, int] | None:
        """Endpoint-independent mapping (RFC 4787 REQ-1): the one global (IP, port) of a
        private (IP, port), made on first use, counted per user (NAT-ALG entries, MAP/PEER
        leases). None when the global IP has no free port.

        A MAP/PEER client may suggest the global IP (RFC 6887 11.3: honoured if
        possible): a client behind the NAT leases its ports on the global IP of
        its SPI leases, which need not be the one paired with it. A ``leased``
        mapping may take back a port the same host released within the quarantine.

        Raises PortLimitReached for a new mapping of a host at its per-host limit
        (RFC 6888 REQ-4), so that one host cannot exhaust a global IP."""
        key = (protocol, private_ip, port)
        mapping = self._mappings.get(key)
        if mapping is None:
            global_ip = suggested_ip if suggested_ip in self.globals else self.paired(private_ip)
            held = (protocol, private_ip, global_ip)
            if self._ports_per_host is not None and self._held[held] >= self._ports_per_host:
                raise PortLimitReached(f"{private_ip} holds {self._held[held]} ports of {global_ip}")
            preferred = suggested_port if suggested_port else port
            global_port = self.space(global_ip, protocol).reserve(now, preferred=preferred,
                                                                     owner=private_ip if leased else None)
            if global_port is None:
                return None
            mapping = self._mappings[key] = [global_ip, global_port, 0]
            self._owners[(protocol, global_ip, global_port)] = (private_ip, port)
            self._held[held] += 1
        mapping[2] += 1
        self._note(key)
        return mapping[0], mapping[1]

    def mapping_of(self, protocol: int, private_ip: str, port: int | None) -> tuple[str, int] | None:
        """The global (IP, port) of a private (IP, port)'s live mapping, without making one."""
        if port is None:  # a portless packet has no mapping
            return None
        mapping = self._mappings.get((protocol, private_ip, port))
        return None if mapping is None else (mapping[0], mapping[1])

    def owner_of(self, protocol: int, global_ip: str, global_port: int | None) -> tuple[str, int] | None:
        """The private (IP, port) whose mapping holds a global (IP, port): hairpinning's target
        (RFC 4787 REQ-9, RFC 5382 REQ-8), found in O(1)."""
        if global_port is None:  # a portless packet has no owner
            return None
        return self._owners.get((protocol, global_ip, global_port))

    def release_mapping(self, protocol: int, private_ip: str, port: int, now: float, leased: bool = False) -> None:
        """One user fewer; the last one frees the global port (after its quarantine)."""
        key = (protocol, private_ip, port)
        mapping = self._mappings.get(key)
        if mapping is None:
            return
        mapping[2] -= 1
        self._note(key)
        if mapping[2] <= 0:
            del self._mappings[key]
            self._owners.pop((protocol, mapping[0], mapping[1]), None)
            self.space(mapping[0], protocol).release(mapping[1], now, owner=private_ip if leased else None)
            held = (protocol, private_ip, mapping[0])
            self._held[held] -= 1
            if self._held[held] <= 0:
                del self._held[held]

    # ------------------------------------------- persistence (nat_app/state.py, nat_app/store.py)

    def export(self) -> dict[str, Any]:
        """Every record: the paired map, each mapping with its user count, each GPN space's range and
        each of its taken ports (one record each, so that an event rewrites only what it touched)."""
        records: dict[str, Any] = {"pool:paired": dict(sorted(self._paired.items()))}
        for key, (gip, gport, users) in self._mappings.items():
            records[_mapping_key(key)] = [*key, gip, gport, users]
        for skey, space in self._spaces.items():
            records[_space_key(skey)] = [*skey, space.export()]
            records.update({_port_key(skey, p): [*skey, p, r] for p, r in space.port_records().items()})
        return records

    def _note(self, key: tuple[int, str, int]) -> None:
        if self._changed is not None:
            self._changed.add(key)

    def take_changes(self) -> tuple[dict[str, Any], set[str]] | None:
        """(records of what changed since the last call, keys of records that no longer exist): the
        mappings made, used or freed, the ports taken, released or woken, new spaces, the pairings.
        None on the first call, which starts the tracking (the caller reads everything then)."""
        if self._changed is None:
            self._changed, self._changed_spaces, self._paired_changed = set(), set(), False
            for space in self._spaces.values():
                space.take_changed()
            return None
        records: dict[str, Any] = {"pool:paired": dict(sorted(self._paired.items()))} if self._paired_changed else {}
        gone: set[str] = set()
        for key in self._changed:
            mapping = self._mappings.get(key)
            if mapping is None:
                gone.add(_mapping_key(key))
            else:
                records[_mapping_key(key)] = [*key, *mapping]
        for skey in self._changed_spaces:
            records[_space_key(skey)] = [*skey, self._spaces[skey].export()]
        for skey, space in self._spaces.items():
            ports = space.take_changed()
            taken = space.port_records(ports)
            records.update({_port_key(skey, p): [*skey, p, r] for p, r in taken.items()})
            gone.update(_port_key(skey, p) for p in ports - taken.keys())
        self._changed, self._changed_spaces, self._paired_changed = set(), set(), False
        return records, gone

    def restore(self, records: dict[str, Any]) -> None:
        """Rebuild an empty pool from ``export()``'s records, the per-host port counts (RFC 6888 REQ-4)
        derived from the mappings; KeyError/ValueError/TypeError if malformed."""
        paired = records.get("pool:paired", {})
        if not all(g in self.globals for g in paired.values()):
            raise ValueError("a saved pairing names a global IP outside the pool")
        self._paired = {str(k): str(v) for k, v in paired.items()}
        for key, value in records.items():
            if key.startswith("mapping:"):
                proto, ip, port, gip, gport, users = value
                if gip not in self.globals or int(users) < 1:
                    raise ValueError(f"saved mapping {key} is not valid")
                self._mappings[(int(proto), str(ip), int(port))] = [gip, int(gport), int(users)]
                self._owners[(int(proto), gip, int(gport))] = (str(ip), int(port))
                self._held[(int(proto), str(ip), gip)] += 1  # per-host port counts follow from the mappings
            elif key.startswith("space:"):
                gip, proto, saved = value
                if gip not in self.globals:
                    raise ValueError(f"saved space {key} is outside the pool")
                self._spaces[(gip, int(proto))] = PortSpace.restored(saved, self._quarantine, self._rng)
        for key, value in records.items():  # ports after their spaces
            if key.startswith("port:"):
                gip, proto, port, record = value
                if (gip, proto) not in self._spaces or key != _port_key((gip, proto), port):
                    raise ValueError(f"saved port {key} names no saved space or another port")
                self._spaces[(gip, proto)].restore_port(port, record)


def _mapping_key(key: tuple[int, str, int]) -> str:
    return "mapping:{}:{}:{}".format(*key)


def _space_key(skey: tuple[str, int]) -> str:
    return "space:{}:{}".format(*skey)


def _port_key(skey: tuple[str, int], port: int) -> str:
    return "port:{}:{}:{}".format(*skey, port)
