"""Source-address validation on the shared link (SAVI, RFC 7039), at the access switch s1.

Every client reaches r1 through one inside port, so r1 alone cannot tell a
host from one that forges its MAC and IP. s1 can: each client has its own
port there. This core binds (access port, MAC, IP) first-come-first-served
from a host's first ARP or IPv4 frame (RFC 6620's idea, for IPv4 without
DHCP), installs one flow per bound (port, MAC, IP) and kind (IPv4, ARP) that
hands the frame to OVS's own L2 switching (NORMAL), and sends everything
else from an access port to the controller, which learns it or drops it,
counted by reason. A binding ends when its port goes (OpenFlow PortStatus)
or when both its flows idle out (FlowRemoved), as RFC 7039 section 3.3 asks
bindings to follow the host's attachment.

Sans-IO like ``decide.NatCore``: events and ``now`` in, Messages out (the
same ``switch_connected``/``packet_in``/``flow_removed`` interface, so the
unit tests' fake switch drives either).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from nat_app.config import NatConfig
from nat_app.messages import COOKIE_INFRA, AddFlow, Counters, DeleteFlows, Message, Output, PacketOut, ToController
from netwire.ethernet import ETH_HEADER_LEN, ETH_TYPE_ARP, ETH_TYPE_IPV4, Arp, EthernetHeader, MalformedPacket
from netwire.ipv4 import IPv4Header
from netwire.plan import S1_DPID, S1_UPLINK_PORT

__pure__ = True

PORT_NORMAL = 0xFFFFFFFA  # OFPP_NORMAL (OpenFlow 1.3 section 7.2.1): the switch's own L2 forwarding
MAX_BINDINGS_PER_PORT = 4  # RFC 7039 section 5.2.5: bound the state a single attachment can create
BINDING_IDLE_S = 600  # a binding's flows idle this long: the host has left (RFC 7039 section 3.3)
DROP_HOLD_S = 10  # a refused source is dropped in s1 this long before the controller sees it again
MAX_DROP_FLOWS = 512  # past this, refusals are dropped by the controller itself (still counted)

# s1's single table, highest first.
PRIO_UPLINK = 100  # from r1: OVS switches it
PRIO_BOUND = 50  # a binding's (in_port, eth_src, ipv4_src | arp_spa + arp_sha)
PRIO_REFUSED = 40  # a refused source, for DROP_HOLD_S
PRIO_MISS = 0  # everything else from an access port: learn or refuse

COOKIE_BINDING = 0x5341560000000000  # "SAV" << 40, | binding id << 1 | kind
COOKIE_REFUSED = 0x5344520000000000  # "SDR" << 40, | a counter
_KIND_IPV4, _KIND_ARP = 0, 1


@dataclass(frozen=True)
class SaviConfig:
    dpid: int = S1_DPID
    uplink_port: int = S1_UPLINK_PORT
    max_per_port: int = MAX_BINDINGS_PER_PORT
    idle_timeout: int = BINDING_IDLE_S
    drop_hold: int = DROP_HOLD_S


@dataclass(frozen=True)
class Claim:
    """What a frame claims about its sender: MAC, IPv4 address, and which kind of frame said it."""

    mac: str
    ip: str
    kind: int


@dataclass
class Binding:
    id: int
    port: int
    mac: str
    ip: str
    since: float
    live: set[int] = field(default_factory=set)  # kinds whose flow is in s1

    def cookie(self, kind: int) -> int:
        return COOKIE_BINDING | self.id << 1 | kind


class SaviCore:
    def __init__(self, config: NatConfig, savi: SaviConfig | None = None) -> None:
        self.config = config
        self.savi = savi or SaviConfig()
        self.counters = Counters()
        self.connected = False
        self.generation = 0  # counts bindings made and ended: the shell saves when it moves
        self._reset()

    def _reset(self) -> None:
        self._by_ip: dict[str, Binding] = {}
        self._by_cookie: dict[int, tuple[Binding, int]] = {}
        self._refused: dict[int, str] = {}  # drop-flow cookie -> reason
        self._ids = itertools.count(1)
        self._drop_ids = itertools.count(1)

    # ----------------------------------------------------------------- events

    def switch_connected(self, now: float) -> list[Message]:
        """s1 (re)connected: bindings start afresh (they are re-learned from the next frames)."""
        self._reset()
        self.connected = True
        return [DeleteFlows(None), *self._base_flows()]

    def packet_in(self, in_port: int, frame: bytes, now: float) -> list[Message]:
        """An unbound frame from an access port: bind its source, or drop it and say why."""
        self.counters.add("packet_in")
        if in_port == self.savi.uplink_port:
            return [PacketOut(frame, (Output(PORT_NORMAL),), in_port)]
        try:
            eth = EthernetHeader.parse(frame)
        except MalformedPacket:
            return self._drop("malformed")
        kind = {"in_port": in_port, "eth_src": eth.src, "eth_type": eth.ethertype}  # this source, this ethertype
        try:
            claim = claim_of(frame)
        except MalformedPacket:
            return self._refuse("malformed", kind)
        if claim is None:
            return self._refuse("not-ipv4-or-arp", kind)
        reason = self._refusal(in_port, claim)
        if reason is not None:
            return self._refuse(reason, _match(in_port, claim))
        binding = self._by_ip.get(claim.ip) or self._bind(in_port, claim, now)
        return self._install(binding, claim.kind) + [PacketOut(frame, (Output(PORT_NORMAL),), in_port)]

    def flow_removed(self, cookie: int, now: float, packets: int = 0) -> list[Message]:
        """A binding's flow idled out (the binding ends with its last flow), or a drop flow
        expired (the frames it dropped are counted under its reason)."""
        reason = self._refused.pop(cookie, None)
        if reason is not None:
            self.counters.add(f"drop:{reason}", packets)
            return []
        found = self._by_cookie.pop(cookie, None)
        if found is None:
            return []
        binding, kind = found
        binding.live.discard(kind)
        if binding.live:
            return []
        self.counters.add("bindings_idled_out")
        return self._unbind(binding)

    def port_gone(self, port: int, now: float) -> list[Message]:
        """The port was deleted or lost its link: its hosts left, their bindings end (RFC 7039 3.3)."""
        msgs: list[Message] = []
        for binding in [b for b in self._by_ip.values() if b.port == port]:
            self.counters.add("bindings_port_gone")
            msgs += self._unbind(binding)
        return msgs

    # ---------------------------------------------------------------- queries

    def port_of(self, mac: str, ip: str) -> int | None:
        """The access port (MAC, IP) is bound on; None when unbound (it cannot have passed s1)."""
        binding = self._by_ip.get(ip)
        return binding.port if binding is not None and binding.mac == mac else None

    def snapshot(self) -> dict[str, Any]:
        """Bindings and counters, for ``natlab table``."""
        return {"connected": self.connected,
                "bindings": [{"port": b.port, "mac": b.mac, "ip": b.ip}
                             for b in sorted(self._by_ip.values(), key=lambda b: (b.port, b.ip))],
                "counters": dict(sorted(self.counters.values.items()))}

    # ---------------------------------------------------------------- helpers

    def _refusal(self, port: int, claim: Claim) -> str | None:
        """Why this (port, MAC, IP) may not be used, or None (RFC 7039 section 3.1's checks)."""
        c = self.config
        if int(claim.mac.split(":")[0], 16) & 1:
            return "group-source-mac"
        if claim.ip == c.gateway_ip or claim.mac == c.inside_mac:
            return "router-address"
        if not c.is_inside(claim.ip):
            return "not-inside"
        bound = self._by_ip.get(claim.ip)
        if bound is not None:
            if bound.port != port:
                return "ip-bound-on-other-port"
            return None if bound.mac == claim.mac else "ip-bound-to-other-mac"
        if any(b.mac == claim.mac and b.port != port for b in self._by_ip.values()):
            return "mac-bound-on-other-port"
        if sum(b.port == port for b in self._by_ip.values()) >= self.savi.max_per_port:
            return "port-full"
        return None

    def _bind(self, port: int, claim: Claim, now: float) -> Binding:
        binding = Binding(next(self._ids), port, claim.mac, claim.ip, now)
        self._by_ip[claim.ip] = binding
        self.generation += 1
        self.counters.add("bindings_learned")
        return binding

    def _install(self, binding: Binding, kind: int) -> list[Message]:
        """The binding's flow for this kind of frame, unless it is already in s1."""
        if kind in binding.live:
            return []
        binding.live.add(kind)
        cookie = binding.cookie(kind)
        self._by_cookie[cookie] = (binding, kind)
        match = _match(binding.port, Claim(binding.mac, binding.ip, kind))
        return [AddFlow(PRIO_BOUND, match, (Output(PORT_NORMAL),), cookie=cookie,
                        idle_timeout=self.savi.idle_timeout, notify_removal=True)]

    def _unbind(self, binding: Binding) -> list[Message]:
        del self._by_ip[binding.ip]
        self.generation += 1
        msgs: list[Message] = []
        for kind in (_KIND_IPV4, _KIND_ARP):
            self._by_cookie.pop(binding.cookie(kind), None)
            msgs.append(DeleteFlows(binding.cookie(kind)))
        return msgs

    def _refuse(self, reason: str, match: dict[str, Any]) -> list[Message]:
        """Drop and count; keep dropping what ``match`` names in s1 for a while (flood guard:
        one packet-in per refused source and hold; a binding's own flows rank above it)."""
        msgs = self._drop(reason)
        if len(self._refused) >= MAX_DROP_FLOWS:
            return msgs
        cookie = COOKIE_REFUSED | next(self._drop_ids)
        self._refused[cookie] = reason
        return [AddFlow(PRIO_REFUSED, match, (), cookie=cookie, hard_timeout=self.savi.drop_hold,
                        notify_removal=True)]

    def _drop(self, reason: str) -> list[Message]:
        self.counters.add(f"drop:{reason}")
        return []


    # ------------------------------------------- persistence (nat_app/state.py, nat_app/store.py)

    def export(self) -> dict[str, Any]:
        """The bindings, so a restarted controller validates sources as before: no first-come
        window for a forger after a restart (RFC 7039 section 3.3: bindings follow the host's
        attachment, not the controller's life). Refusals are not kept: they are brief and re-made."""
        n = next(self._ids)
        self._ids = itertools.count(n)
        return {"connected": self.connected, "next": n,
                "bindings": [[b.id, b.port, b.mac, b.ip, b.since, sorted(b.live)]
                             for b in sorted(self._by_ip.values(), key=lambda b: b.id)]}

    def restore(self, saved: dict[str, Any]) -> None:
        """Rebuild from ``export()``; KeyError/ValueError/TypeError if malformed or not bindable."""
        self._reset()
        self._ids = itertools.count(int(saved["next"]))
        for binding_id, port, mac, ip, since, live in saved["bindings"]:
            binding = Binding(int(binding_id), int(port), str(mac), str(ip), float(since), {int(k) for k in live})
            self._check_restorable(binding, int(saved["next"]))
            self._by_ip[binding.ip] = binding
            self._by_cookie.update({binding.cookie(k): (binding, k) for k in binding.live})
        self.connected = bool(saved["connected"])  # s1 kept its flows (fail mode secure): still validating

    def _check_restorable(self, binding: Binding, next_id: int) -> None:
        if not 1 <= binding.id < next_id or binding.live - {_KIND_IPV4, _KIND_ARP} or not binding.live:
            raise ValueError(f"saved SAVI binding {binding} has a bad id or no flow")
        if binding.port == self.savi.uplink_port or binding.ip in self._by_ip or any(
                b.id == binding.id or (b.mac == binding.mac and b.port != binding.port)
                for b in self._by_ip.values()):
            raise ValueError(f"saved SAVI binding {binding} conflicts with another")
        if self._refusal(binding.port, Claim(binding.mac, binding.ip, _KIND_IPV4)) not in (None, "port-full"):
            raise ValueError(f"saved SAVI binding {binding} is not one s1 could have made")

    def reconcile(self, flows_seen: list[tuple[int, int]], now: float) -> list[Message]:
        """s1 (re)connected with these (cookie, priority) flows: keep each binding whose flows s1
        still has, forget those whose flows idled out while the controller was away (their
        FlowRemoved went to nobody), delete flows whose cookie names nothing, re-add the base flows.
        Unlike ``switch_connected`` nothing is wiped, so a forger gets no first-come window."""
        cookies = {cookie for cookie, _priority in flows_seen}
        msgs: list[Message] = []
        for binding in list(self._by_ip.values()):
            binding.live = {k for k in (_KIND_IPV4, _KIND_ARP) if binding.cookie(k) in cookies}
            if not binding.live:
                self.counters.add("bindings_lost_while_away")
                msgs += self._unbind(binding)
        self._by_cookie = {b.cookie(k): (b, k) for b in self._by_ip.values() for k in b.live}
        for cookie in sorted(cookies - self._by_cookie.keys() - {COOKIE_INFRA}):
            self.counters.add("stale_flows_deleted")
            msgs.append(DeleteFlows(cookie))
        self._refused.clear()
        self.connected = True
        self.counters.add("reconciled")
        return msgs + self._base_flows()

    def _base_flows(self) -> list[Message]:
        return [AddFlow(PRIO_UPLINK, {"in_port": self.savi.uplink_port}, (Output(PORT_NORMAL),)),
                AddFlow(PRIO_MISS, {}, (ToController(),))]


def claim_of(frame: bytes) -> Claim | None:
    """The sender a frame claims to be: ARP's sender (which must be the frame's source MAC,
    or the frame claims two senders) or IPv4's source. None for any other ethertype."""
    eth = EthernetHeader.parse(frame)
    if eth.ethertype == ETH_TYPE_IPV4:
        return Claim(eth.src, IPv4Header.parse(frame[ETH_HEADER_LEN:]).src, _KIND_IPV4)
    if eth.ethertype == ETH_TYPE_ARP:
        arp = Arp.parse(frame[ETH_HEADER_LEN:])
        if arp.sender_mac != eth.src:
            raise MalformedPacket("ARP sender hardware address is not the frame's source")
        return Claim(eth.src, arp.sender_ip, _KIND_ARP)
    return None


def _match(port: int, claim: Claim) -> dict[str, Any]:
    if claim.kind == _KIND_IPV4:
        return {"in_port": port, "eth_src": claim.mac, "eth_type": ETH_TYPE_IPV4, "ipv4_src": claim.ip}
    return {"in_port": port, "eth_src": claim.mac, "eth_type": ETH_TYPE_ARP, "arp_spa": claim.ip,
            "arp_sha": claim.mac}
