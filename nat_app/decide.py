"""The NAT's decisions, without OpenFlow plumbing (compare FAUCET's valve).

``NatCore`` takes events (a switch connected, a packet-in, a flow removed, a
clock tick) with the time as an argument and returns Messages for r1. It does
NAPT for TCP, UDP and ICMP echo (NAT-AUTO): endpoint-independent mapping
(RFC 4787 REQ-1), address-dependent filtering (REQ-8), paired pooling (REQ-2),
port preservation when free (REQ-3 allows it); ICMP errors about translated
flows are translated back (RFC 5508 REQ-3). Anything else, and anything from
outside without an entry, is dropped (NAT-DROP). A private host gets at most
``napt_ports_per_host`` ports (or ICMP identifiers) of a global IP (RFC 6888
REQ-4); beyond that its new flows are dropped and it is told so with a
rate-limited ICMP "administratively prohibited" (RFC 5508 REQ-8).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import nat_app.natpmp_server as natpmp_server
from nat_app.allocate import Pool, PortLimitReached
from nat_app.client_alg import ClientAlgPaths
from nat_app.config import NatConfig
from nat_app.fragments import IP_FRAG_ANY, Fragments
from nat_app.ftp_alg import NatFtp
from nat_app.gpn import Definition, GpnSpace
from nat_app.hairpin import hairpin, icmp_checksum_ok, is_hairpin
from nat_app.lease_server import LeaseServer, Origin
from nat_app.messages import (
    COOKIE_INFRA,
    PRIO_BYPASS,
    PRIO_OUTSIDE_DROP,
    PRIO_PUNT,
    PRIO_SLOW_PATH,
    PRIO_TABLE_MISS,
    PRIO_TRANSLATE,
    Action,
    AddFlow,
    Barrier,
    Counters,
    DecTtl,
    DeleteFlows,
    Message,
    Output,
    PacketOut,
    SetField,
    SetMeter,
    ToController,
)
from nat_app.neighbours import NeighbourCache
from nat_app.savi import SaviCore
from nat_app.table import DataPath, Entry, EntryKind, TableConflict, TranslationTable, Triple
from nat_app.tcpstate import Phase, TcpTracker, first_phase
from nat_app.translate import rewrite, rewrite_icmp_error
from netwire import natpmp, pcp
from netwire.ethernet import (
    ARP_OP_REPLY,
    ARP_OP_REQUEST,
    BROADCAST_MAC,
    ETH_HEADER_LEN,
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    Arp,
    EthernetHeader,
    MalformedPacket,
    arp_frame,
)
from netwire.ipv4 import (
    ICMP_CODE_ADMIN_PROHIBITED,
    ICMP_DEST_UNREACHABLE,
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    ICMP_ERROR_TYPES,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    UDP_HEADER_LEN,
    IPv4Header,
    Transport,
    build_icmp_error,
    build_udp,
    parse_transport,
)
from netwire.view import IPv4View, ipv4_lengths

__pure__ = True

COOKIE_BYPASS = COOKIE_INFRA | 0xB1
COOKIE_SLOW_TRIPLE = 1 << 62  # | a counter: punt flows of contended triples
_PORT_FIELDS = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst")}
_ICMP_ERROR_HEADER_LEN = 8
# OVS caches flows in its datapath and drops a deleted flow's cache entries a
# few ms later, even after a barrier: measured, a reply misdelivered to the
# demoted host 3 ms after its flows were deleted. The packet whose reply would
# take that stale path is held this long.
DEMOTION_HOLD_S = 0.25
# RFC 5508 REQ-8 says to send the error; RFC 1812 4.3.2.8 lets a router rate-limit
# it. One per host per second: a host over its limit cannot make the NAT flood.
ADMIN_PROHIBITED_INTERVAL_S = 1.0
ADMIN_PROHIBITED_PER_S = 10
# Outside misses reach the controller through this meter: a flood from outside costs at most
# this many packet-ins a second (measured: a packet-in takes about 0.15 ms of the controller).
METER_OUTSIDE_MISS = 1
OUTSIDE_MISS_PPS = 1000
OUTSIDE_MISS_BURST = 200


class NatCore:
    def __init__(self, config: NatConfig, rng: random.Random | None = None, savi: SaviCore | None = None) -> None:
        self.config = config
        self.savi = savi  # s1's bindings (RFC 7039): where each inside (MAC, IP) is attached
        self._rng = rng or random.Random()
        self.counters = Counters()
        self._reset(0.0)

    def _reset(self, now: float) -> None:
        self.table = TranslationTable()
        self.neighbours = NeighbourCache()
        self.pool = Pool(self.config.globals, self.config.port_quarantine, self._rng,
                         ports_per_host=self.config.napt_ports_per_host)
        self.leases = LeaseServer(self.config, self.table, self.pool, self.counters, now)
        self.client_alg = ClientAlgPaths(self.config, self.table)
        self.ftp = NatFtp(self)  # the NAT's own FTP ALG (NAT-AUTO), on the slow path
        self.fragments = Fragments(self.counters)
        self.tcp = TcpTracker()  # connection phases of TCP NAT-ALG entries (RFC 5382 REQ-5)
        self._slow_triples: dict[Triple, int] = {}  # (proto, global IP, foreign) -> punt-flow cookie
        self._icmp_pairs: dict[tuple[str, str], Entry] = {}  # fast ICMP (private IP, foreign) -> entry
        self._triple_cookies = itertools.count(1)
        self._prohibited_sent: dict[str, float] = {}  # private host -> when it was last told it is over its limit
        self._prohibited_window: tuple[float, int] = (0.0, 0)  # (start of this second, errors sent in it)
        self.bypass = False
        self.state_lost = True  # started empty: clients must hear a PCP ANNOUNCE (nat_app/reconcile.py)

    # ----------------------------------------------------------------- events

    def switch_connected(self, now: float) -> list[Message]:
        """r1 (re)connected: forget all state (a new lease epoch) and install the base flows."""
        self._reset(now)
        return [DeleteFlows(None), *self.base_flows()]

    def base_flows(self) -> list[Message]:
        """The flows that belong to no entry: punts, the outside miss, the table miss.

        An outside packet no flow translates goes to the controller through a meter, not to a wide
        drop flow: OVS caches a drop as a megaflow masked on little more than the IP protocol, which
        outlived a new mapping's translate flows and lost the first answer to it (issue 9's bug,
        tests/testbed/test_first_answer_live.py). Through the controller such an answer is
        translated (``_inbound``: "raced its flow"); the rest is dropped and counted there (RFC 4787
        REQ-8's filtering still holds), and the meter keeps a flood from outside to a bounded
        packet-in rate (what exceeds it is dropped in r1)."""
        c = self.config
        return [
            SetMeter(METER_OUTSIDE_MISS, OUTSIDE_MISS_PPS, OUTSIDE_MISS_BURST),
            AddFlow(PRIO_PUNT, {"eth_type": ETH_TYPE_ARP}, (ToController(),)),
            *self._state_punts(),
            AddFlow(PRIO_PUNT, {"in_port": c.inside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": IPPROTO_UDP,
                                "ipv4_dst": c.gateway_ip, "udp_dst": pcp.SERVER_PORT}, (ToController(),)),
            *(AddFlow(PRIO_PUNT, {"in_port": c.outside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": IPPROTO_ICMP,
                                  "icmpv4_type": t}, (ToController(),), meter=METER_OUTSIDE_MISS)
              for t in sorted(ICMP_ERROR_TYPES)),
            *self.ftp.base_flows(),
            AddFlow(PRIO_OUTSIDE_DROP, {"in_port": c.outside_port}, (ToController(),), meter=METER_OUTSIDE_MISS),
            AddFlow(PRIO_TABLE_MISS, {}, (ToController(),)),
        ]

    def _state_punts(self) -> list[AddFlow]:
        """Fragments (nat_app/fragments.py) and TCP SYN, FIN, RST (nat_app/tcpstate.py) to the controller,
        from each side; from outside through the miss meter, so a flood of them costs a bounded packet-in
        rate (what exceeds it is dropped in r1, and TCP retransmits what mattered)."""
        flows = []
        for port, meter in ((self.config.inside_port, None), (self.config.outside_port, METER_OUTSIDE_MISS)):
            flows.append(AddFlow(PRIO_PUNT, {"in_port": port, "eth_type": ETH_TYPE_IPV4, "ip_frag": IP_FRAG_ANY},
                                 (ToController(),), meter=meter))
            flows += [AddFlow(PRIO_PUNT, {"in_port": port, "eth_type": ETH_TYPE_IPV4, "ip_proto": IPPROTO_TCP,
                                          "tcp_flags": (bit, bit)}, (ToController(),), meter=meter)
                      for bit in (TCP_SYN, TCP_FIN, TCP_RST)]
        return flows

    def packet_in(self, in_port: int, frame: bytes, now: float) -> list[Message]:
        self.counters.add("packet_in")
        try:
            eth = EthernetHeader.parse(frame)
            if eth.ethertype == ETH_TYPE_ARP:
                return self._arp(in_port, Arp.parse(frame[ETH_HEADER_LEN:]), now)
            if eth.ethertype != ETH_TYPE_IPV4:
                return self._drop("not-ipv4")
            packet = frame[ETH_HEADER_LEN:]
            _, total_len = ipv4_lengths(packet)  # netwire.view's one check: version, header and total lengths
            packet = packet[:total_len]
            ip = IPv4Header.parse(packet)
            if ip.is_fragment:  # RFC 4787 REQ-14: translated fragment by fragment (nat_app/fragments.py)
                frame = frame[: ETH_HEADER_LEN + ip.total_len]
                return self.fragments.handle(in_port, frame, ip, packet, now,
                                             lambda: self._route(in_port, frame, eth, packet, ip, now),
                                             lambda: self.counters["waiting_for_arp"])
            return self._route(in_port, frame, eth, packet, ip, now)
        except MalformedPacket:
            return self._drop("malformed")

    def _route(self, in_port: int, frame: bytes, eth: EthernetHeader, packet: bytes, ip: IPv4Header,
               now: float) -> list[Message]:
        """An IPv4 packet (or a first fragment) by the side it came from."""
        if in_port == self.config.inside_port:
            if self._access_port(eth.src, ip.src) is None:
                return self._drop("savi-unbound")
            if self.config.is_inside(ip.src):
                self.neighbours.learn(ip.src, eth.src)
            return self._outbound(frame, eth, packet, ip, now)
        if in_port == self.config.outside_port:
            return self._inbound(frame, packet, ip, now)
        return self._drop("unknown-port")

    def flow_removed(self, cookie: int, now: float) -> list[Message]:
        """A flow of an entry went (idle timeout or deletion): the entry goes too."""
        entry = self.table.get(cookie)
        if entry is None:
            return []
        self.counters.add("entries_idled_out")
        return self._forget(entry, now)

    def tick(self, now: float) -> list[Message]:
        """Erase entries whose expiry passed (steps 711-712)."""
        msgs: list[Message] = []
        for entry in self.table.pop_expired(now):
            self.counters.add("entries_expired")
            msgs += self._forget(entry, now, removed=True)
        self.leases.expire(now)
        self.fragments.expire(now)
        return msgs

    def set_bypass(self, on: bool) -> list[Message]:
        """Make r1 a plain two-port L2 switch above all translation (benchmark baseline)."""
        self.bypass = on
        c = self.config
        if not on:
            return [DeleteFlows(COOKIE_BYPASS)]
        return [AddFlow(PRIO_BYPASS, {"in_port": a}, (Output(b),), cookie=COOKIE_BYPASS)
                for a, b in ((c.inside_port, c.outside_port), (c.outside_port, c.inside_port))]

    def snapshot(self, now: float) -> dict[str, Any]:
        """The live table and counters, for ``natlab table`` and the report."""
        entries = []
        for entry in sorted(self.table, key=lambda e: e.id):
            row = entry.as_dict()
            row["expires_in"] = None if entry.expires is None else round(entry.expires - now, 1)
            phase = self.tcp.phase(entry.id)
            if phase is not None:
                row["tcp_phase"] = phase.value
            entries.append(row)
        return {
            "entries": entries,
            "counters": dict(sorted(self.counters.values.items())),
            "globals": list(self.config.globals),
            "bypass": self.bypass,
            "neighbours": dict(sorted(self.neighbours.known().items())),
            **({"savi": self.savi.snapshot()} if self.savi is not None else {}),
        }

    def reconcile(self, flows_seen: list[tuple[int, int]], now: float) -> list[Message]:
        """r1 (re)connected with these (cookie, priority) flows: keep what agrees (nat_app/reconcile.py)."""
        from nat_app.reconcile import reconcile

        return reconcile(self, flows_seen, now)

    # ------------------------------------------------------------------- ARP

    def _arp(self, in_port: int, arp: Arp, now: float) -> list[Message]:
        c = self.config
        side_ok = c.is_inside if in_port == c.inside_port else c.is_outside
        if in_port not in (c.inside_port, c.outside_port) or not side_ok(arp.sender_ip):
            return self._drop("arp-foreign-sender")
        if in_port == c.inside_port and self._access_port(arp.sender_mac, arp.sender_ip) is None:
            return self._drop("savi-unbound")
        msgs: list[Message] = []
        for parked_port, parked in self.neighbours.learn(arp.sender_ip, arp.sender_mac):
            msgs += self.packet_in(parked_port, parked, now)
        if arp.op == ARP_OP_REQUEST and self._owns(in_port, arp.target_ip):
            mac = self._mac_of_port(in_port)
            reply = Arp(ARP_OP_REPLY, mac, arp.target_ip, arp.sender_mac, arp.sender_ip)
            self.counters.add("arp_replies")
            msgs.append(PacketOut(arp_frame(reply, arp.sender_mac), (Output(in_port),)))
        return msgs

    def _owns(self, port: int, ip: str) -> bool:
        c = self.config
        return ip == c.gateway_ip if port == c.inside_port else ip in c.globals

    def _mac_of_port(self, port: int) -> str:
        return self.config.inside_mac if port == self.config.inside_port else self.config.outside_mac

    def _resolve(self, port: int, ip: str, frame: bytes, in_port: int, now: float) -> tuple[str | None, list[Message]]:
        """The MAC of next hop ``ip`` on ``port``; else park the frame and ARP for it."""
        mac = self.neighbours.lookup(ip)
        if mac is not None:
            return mac, []
        msgs: list[Message] = []
        if self.neighbours.wait_for(ip, (in_port, frame), now):
            c = self.config
            sender_ip = c.gateway_ip if port == c.inside_port else c.globals[0]
            request = Arp(ARP_OP_REQUEST, self._mac_of_port(port), sender_ip, "00:00:00:00:00:00", ip)
            msgs.append(PacketOut(arp_frame(request, BROADCAST_MAC), (Output(port),)))
        self.counters.add("waiting_for_arp")
        return None, msgs

    # -------------------------------------------------------------- outbound

    def _outbound(self, frame: bytes, eth: EthernetHeader, packet: bytes, ip: IPv4Header,
                  now: float) -> list[Message]:
        c = self.config
        if not c.is_inside(ip.src):
            return self._drop("spoofed-source")
        if ip.dst in c.globals or not c.is_outside(ip.dst):
            return self._not_outward(frame, eth, packet, ip, now)
        if ip.fragment_offset:  # later fragments never come here (nat_app/fragments.py)
            return self._drop("fragment")
        if ip.ttl <= 1:
            return self._drop("ttl-expired")
        segment = packet[ip.header_len:]
        transport = parse_transport(ip.protocol, segment)
        if ip.protocol == IPPROTO_ICMP and transport.icmp_type in ICMP_ERROR_TYPES:
            return self._icmp_error(frame, packet, ip, now, outbound=True)
        leased = self._leased_outbound(frame, ip, transport, now)
        if leased is not None:
            return leased
        if ip.protocol in _PORT_FIELDS or (ip.protocol == IPPROTO_ICMP and transport.icmp_type == ICMP_ECHO_REQUEST):
            return self._outbound_napt(frame, eth, packet, ip, transport, now)
        return self._drop("unsupported-protocol")

    def _not_outward(self, frame: bytes, eth: EthernetHeader, packet: bytes, ip: IPv4Header,
                     now: float) -> list[Message]:
        """An inside packet not bound for the outside: a lease request, a hairpin (RFC 4787 REQ-9), or a drop."""
        c = self.config
        if ip.dst == c.gateway_ip and ip.protocol == IPPROTO_UDP and not ip.is_fragment:
            return self._lease_request(eth, packet, ip, now)
        if is_hairpin(self, ip) and not ip.fragment_offset:
            return hairpin(self, frame, eth, packet, ip, now)
        if c.is_inside(ip.dst) or ip.dst in c.globals:
            return self._drop("not-routed")  # the router itself answers nothing
        return self._drop("no-route")

    def _outbound_napt(self, frame: bytes, eth: EthernetHeader, packet: bytes, ip: IPv4Header,
                       transport: Transport, now: float) -> list[Message]:
        """A protocol the NAT translates itself (TCP, UDP, ICMP echo): its entry, or a new one (step 704)."""
        c = self.config
        if transport.src_port is None:  # parse_transport sets it for TCP, UDP and echo; never trust it
            return self._drop("malformed")
        mac, msgs = self._resolve(c.outside_port, ip.dst, frame, c.inside_port, now)
        if mac is None:
            return msgs
        entry = self.table.lookup_out(ip.protocol, ip.src, transport.src_port, ip.dst)
        if self.ftp.is_control(ip.protocol, transport.dst_port):  # the NAT's own FTP ALG (nat_app/ftp_alg.py)
            return msgs + self.ftp.control_out(entry, packet, ip, transport.src_port, eth.src, mac, now)
        if entry is None and ip.protocol == IPPROTO_ICMP:
            entry = self._icmp_host_pair_entry(ip.src, ip.dst)
        if entry is None:
            entry, msgs = self._new_napt_entry(packet, ip, transport.src_port, eth.src, mac, now)
            if entry is None:
                return msgs
        elif ip.protocol == IPPROTO_TCP:
            msgs += self._tcp_seen(entry, transport.tcp_flags, outbound=True)
        if entry.path is DataPath.SLOW:
            demoted = any(isinstance(m, DeleteFlows) for m in msgs)
            return msgs + self._slow_out(entry, packet, mac, now, DEMOTION_HOLD_S if demoted else 0.0)
        return msgs + [PacketOut(frame, self._actions(entry, mac, outbound=True), c.inside_port)]

    def _new_napt_entry(self, packet: bytes, ip: IPv4Header, port: int, private_mac: str, foreign_mac: str,
                        now: float) -> tuple[Entry | None, list[Message]]:
        """Step 704 for a NAT-ALG entry: a global (IP, port) and the flows that use it."""
        c = self.config
        proto = ip.protocol
        if proto == IPPROTO_ICMP:
            return self._new_icmp_entry(packet, ip, port, private_mac, foreign_mac, now)
        try:
            mapping = self.pool.acquire_mapping(proto, ip.src, port, now)
        except PortLimitReached:
            return None, self._over_limit(packet, ip, private_mac, now)
        if mapping is None:
            return None, self._drop("ports-exhausted")
        global_ip, global_port = mapping
        flags = parse_transport(proto, packet[ip.header_len:]).tcp_flags
        timeout = self._tcp_timeout(first_phase(flags)) if proto == IPPROTO_TCP else c.udp_timeout
        try:
            entry = self.table.add(kind=EntryKind.NAT_ALG, protocol=proto, private_ip=ip.src, private_gpn=port,
                                   global_ip=global_ip, global_gpn=global_port, foreign=ip.dst, now=now,
                                   idle_timeout=timeout)
        except TableConflict:
            self.pool.release_mapping(proto, ip.src, port, now)
            return None, self._drop("table-conflict")
        self.counters.add("entries_created")
        if proto == IPPROTO_TCP:
            self.tcp.opened(entry.id, flags)
        return entry, self._translation_flows(entry, private_mac, foreign_mac)

    def _over_limit(self, packet: bytes, ip: IPv4Header, private_mac: str, now: float) -> list[Message]:
        """A host at its per-host limit (RFC 6888 REQ-4) gets ICMP Destination Unreachable,
        code 13 "administratively prohibited" (RFC 5508 REQ-8), at most once a second so
        that the NAT cannot be made to flood."""
        msgs = self._drop("port-limit")
        if not self._may_tell(ip.src, now):
            return msgs
        self.counters.add("icmp_admin_prohibited_sent")
        c = self.config
        error = build_icmp_error(c.gateway_ip, ip.src, ICMP_DEST_UNREACHABLE, ICMP_CODE_ADMIN_PROHIBITED, packet)
        return msgs + [PacketOut(self._eth(private_mac, c.inside_mac) + error, (Output(c.inside_port),))]

    def _may_tell(self, host: str, now: float) -> bool:
        """Rate limit of the errors (RFC 1812 4.3.2.8): one a second per host, and
        ADMIN_PROHIBITED_PER_S in all, however many source addresses are forged."""
        last = self._prohibited_sent.get(host)
        if last is not None and last <= now < last + ADMIN_PROHIBITED_INTERVAL_S:
            return False
        start, sent = self._prohibited_window
        if not start <= now < start + 1.0:
            start, sent = now, 0
        if sent >= ADMIN_PROHIBITED_PER_S:
            return False
        self._prohibited_window = (start, sent + 1)
        self._prohibited_sent[host] = now
        return True

    def _new_icmp_entry(self, packet: bytes, ip: IPv4Header, ident: int, private_mac: str, foreign_mac: str,
                        now: float) -> tuple[Entry | None, list[Message]]:
        """ICMP echo. OpenFlow cannot match or rewrite the identifier, so the fast
        path is a host-pair flow that keeps the identifier; it needs the triple
        (ICMP, global IP, foreign) to belong to one private host. Otherwise the
        controller translates each packet, by identifier (the slow path)."""
        c = self.config
        if self.table.count_of(IPPROTO_ICMP, ip.src) >= c.napt_ports_per_host:
            return None, self._over_limit(packet, ip, private_mac, now)
        global_ip = self.pool.paired(ip.src)
        sharers = self.table.private_hosts_of(IPPROTO_ICMP, global_ip, ip.dst) - {ip.src}
        triple = (IPPROTO_ICMP, global_ip, ip.dst)
        ids = self.pool.space(global_ip, IPPROTO_ICMP)
        msgs: list[Message] = []
        global_id: int | None
        fast = not sharers and triple not in self._slow_triples and ids.is_free(ident, now, any_range=True)
        if fast:
            ids.claim(ident, now)
            global_id = ident
        else:
            for host in sharers:
                other = self._icmp_pairs.get((host, ip.dst))
                if other is not None and other.global_ip == global_ip:
                    self.counters.add("icmp_demoted_to_slow_path")
                    msgs += self._forget(other, now)
            global_id = ids.reserve(now, preferred=ident) if ids.is_free(ident, now, any_range=True) else ids.reserve(now)
            if global_id is None:
                return None, msgs + self._drop("icmp-ids-exhausted")
        entry = self.table.add(
            kind=EntryKind.NAT_ALG, protocol=IPPROTO_ICMP, private_ip=ip.src, private_gpn=ident,
            global_ip=global_ip, global_gpn=global_id, foreign=ip.dst, now=now,
            idle_timeout=c.icmp_timeout if fast else None,
            expires=None if fast else now + c.icmp_timeout, path=DataPath.FAST if fast else DataPath.SLOW)
        self.counters.add("entries_created")
        if fast:
            self._icmp_pairs[(ip.src, ip.dst)] = entry
            return entry, msgs + self._translation_flows(entry, private_mac, foreign_mac)
        if triple not in self._slow_triples:
            cookie = self._slow_triples[triple] = COOKIE_SLOW_TRIPLE | next(self._triple_cookies)
            msgs.append(AddFlow(PRIO_SLOW_PATH, {
                "in_port": c.outside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": IPPROTO_ICMP,
                "ipv4_src": ip.dst, "ipv4_dst": global_ip, "icmpv4_type": ICMP_ECHO_REPLY}, (ToController(),),
                cookie=cookie))
        return entry, msgs + [Barrier()]

    def _icmp_host_pair_entry(self, private_ip: str, foreign: str) -> Entry | None:
        """A fast ICMP entry covers every identifier between its two hosts."""
        return self._icmp_pairs.get((private_ip, foreign))

    def _slow_out(self, entry: Entry, packet: bytes, foreign_mac: str, now: float, hold: float) -> list[Message]:
        c = self.config
        self._refresh(entry, now, c.icmp_timeout)
        entry.slow_packets += 1
        self.counters.add("slow_path_packets")
        out = rewrite(packet, src=entry.global_ip, src_port=entry.global_gpn)
        return [PacketOut(self._eth(foreign_mac, c.outside_mac) + out, (Output(c.outside_port),), delay=hold)]

    def _icmp_error(self, frame: bytes, packet: bytes, ip: IPv4Header, now: float, *,
                    outbound: bool) -> list[Message]:
        """An ICMP error about a translated flow, either way (RFC 5508 REQ-3): it quotes a packet of the
        flow going the other way, which names the flow's entry; the outer and quoted addresses on the
        NAT's side, and the quoted port, are rewritten to the other side's."""
        c = self.config
        if not icmp_checksum_ok(packet, ip):
            return self._drop("icmp-error-bad-checksum")  # RFC 5508 REQ-3
        entry = self._icmp_error_entry(packet, ip, outbound)
        if entry is None:
            return self._drop("icmp-error-no-entry")
        to_port, from_port = (c.outside_port, c.inside_port) if outbound else (c.inside_port, c.outside_port)
        mac, msgs = self._resolve(to_port, ip.dst if outbound else entry.private_ip, frame, from_port, now)
        if mac is None:
            return msgs
        if outbound:
            out = rewrite_icmp_error(packet, outer_src=entry.global_ip, inner_dst=entry.global_ip,
                                     inner_dst_port=entry.global_gpn)
        else:
            out = rewrite_icmp_error(packet, outer_dst=entry.private_ip, inner_src=entry.private_ip,
                                     inner_src_port=entry.private_gpn)
        self.counters.add("icmp_errors_translated")
        own_mac = c.outside_mac if outbound else c.inside_mac
        return [PacketOut(self._eth(mac, own_mac) + out, (Output(to_port),))]

    def _icmp_error_entry(self, packet: bytes, ip: IPv4Header, outbound: bool) -> Entry | None:
        """The entry an ICMP error's quoted packet belongs to, None unless the error comes from the
        quoted packet's NAT-side end: a private host about a packet sent to it (outbound), or the
        foreign end about a packet sent from a global address (inbound)."""
        inner, inner_t = self._quoted(packet, ip)
        if outbound:
            entry = self.table.lookup_out(inner.protocol, inner.dst, inner_t.dst_port, inner.src)
            return entry if inner.dst == ip.src else None
        entry = self.table.lookup_in(inner.protocol, inner.src, inner_t.src_port, inner.dst)
        return entry if inner.src == ip.dst else None

    # --------------------------------------------------------------- inbound

    def _inbound(self, frame: bytes, packet: bytes, ip: IPv4Header, now: float) -> list[Message]:
        c = self.config
        if ip.dst not in c.globals:
            return self._drop("not-a-global-address")
        if ip.src in c.globals:  # only hairpinning sends from a global address, and it never leaves r1
            return self._drop("spoofed-global-source")
        if ip.fragment_offset:  # later fragments never come here (nat_app/fragments.py)
            return self._drop("fragment")
        if ip.ttl <= 1:
            return self._drop("ttl-expired")
        transport = parse_transport(ip.protocol, packet[ip.header_len:])
        if ip.protocol == IPPROTO_ICMP and transport.icmp_type in ICMP_ERROR_TYPES:
            return self._icmp_error(frame, packet, ip, now, outbound=False)
        entry = self._inbound_entry(packet, ip, transport)
        if entry is None:
            syn = ip.protocol == IPPROTO_TCP and (transport.tcp_flags or 0) & TCP_SYN
            return self._drop("unsolicited-syn" if syn else "no-entry")  # RFC 5382 REQ-4 a: silently
        return self._inbound_to(entry, frame, packet, ip, transport, now)

    def _inbound_to(self, entry: Entry, frame: bytes, packet: bytes, ip: IPv4Header, transport: Transport,
                    now: float) -> list[Message]:
        """An inbound packet of ``entry`` that reached the controller: the FTP ALG's, a punted or raced
        fast-path packet sent the flow's way, or a slow-path entry's translated here."""
        c = self.config
        mac, msgs = self._resolve(c.inside_port, entry.private_ip, frame, c.outside_port, now)
        if mac is None:
            return msgs
        if self.ftp.owns(entry):
            return self.ftp.inbound(entry, packet, mac, now)
        if entry.path is DataPath.FAST:  # a punted SYN/FIN/RST, or raced its flow: send it the same way
            if ip.protocol == IPPROTO_TCP:
                msgs = self._tcp_seen(entry, transport.tcp_flags, outbound=False)
            return msgs + [PacketOut(frame, self._actions(entry, mac, outbound=False), c.outside_port)]
        entry.slow_packets += 1
        self.counters.add("slow_path_packets")
        if entry.kind is EntryKind.CLIENT_ALG:  # a lease: its GPN is never rewritten, its expiry never refreshed
            out = rewrite(packet, dst=entry.private_ip)
        else:
            self._refresh(entry, now, c.icmp_timeout)
            out = rewrite(packet, dst=entry.private_ip, dst_port=entry.private_gpn)
        return [PacketOut(self._eth(mac, c.inside_mac) + out, (Output(c.inside_port),))]

    def _inbound_entry(self, packet: bytes, ip: IPv4Header, transport: Transport) -> Entry | None:
        """The entry an inbound packet belongs to: a client-ALG lease by its GPN (FIG. 7), else NAPT's
        (a leased UDP port without a lease falls back to the NAT's own UDP entries)."""
        definition = self._definition_of(ip, transport.dst_port)
        if definition is not None:
            gpn = definition.read(packet, ip.header_len, "dst")
            entry = self.table.lookup_in(definition.key, ip.dst, gpn, ip.src)
            if entry is not None or ip.protocol != IPPROTO_UDP:
                return entry
        return self.table.lookup_in(ip.protocol, ip.dst, transport.dst_port, ip.src)

    # ------------------------------------------------------------- helpers

    def _translation_flows(self, entry: Entry, private_mac: str, foreign_mac: str) -> list[Message]:
        c = self.config
        out_match = {"in_port": c.inside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": entry.protocol,
                     "ipv4_src": entry.private_ip, "ipv4_dst": entry.foreign}
        in_match = {"in_port": c.outside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": entry.protocol,
                    "ipv4_src": entry.foreign, "ipv4_dst": entry.global_ip}
        if entry.port_keyed:
            src_field, dst_field = _PORT_FIELDS[entry.protocol]
            out_match[src_field] = entry.private_gpn
            in_match[dst_field] = entry.global_gpn
        else:
            out_match["icmpv4_type"] = ICMP_ECHO_REQUEST
            in_match["icmpv4_type"] = ICMP_ECHO_REPLY
        return [
            AddFlow(PRIO_TRANSLATE, out_match, self._actions(entry, foreign_mac, outbound=True), cookie=entry.id,
                    idle_timeout=entry.idle_timeout or 0, notify_removal=True),
            AddFlow(PRIO_TRANSLATE, in_match, self._actions(entry, private_mac, outbound=False), cookie=entry.id,
                    notify_removal=True),
        ]

    def _tcp_timeout(self, phase: Phase) -> int:
        c = self.config
        return c.tcp_timeout if phase is Phase.ESTABLISHED else c.tcp_transitory_timeout

    def _tcp_seen(self, entry: Entry, flags: int | None, outbound: bool) -> list[Message]:
        """A SYN, FIN or RST of a tracked connection (r1 punts them): if its phase changed, the
        entry's outbound flow is added again with the phase's idle timeout (RFC 5382 REQ-5)."""
        phase = self.tcp.seen(entry.id, flags, outbound)
        private_mac = self.neighbours.lookup(entry.private_ip)
        foreign_mac = None if entry.foreign is None else self.neighbours.lookup(entry.foreign)
        if phase is None or private_mac is None or foreign_mac is None or entry.kind is not EntryKind.NAT_ALG:
            return []
        entry.idle_timeout = self._tcp_timeout(phase)
        self.counters.add(f"tcp_{phase.value}")
        return self._translation_flows(entry, private_mac, foreign_mac)[:1]

    def _actions(self, entry: Entry, mac: str, *, outbound: bool) -> tuple[Action, ...]:
        """r1's rewrite of ``entry``'s packets one way (steps 707/709): the address on the side the packet
        leaves to the other side's, the port with it for a port-keyed entry (a leased GPN, UDP-borne
        too, is never rewritten), then on to ``mac`` through the port the packet leaves by."""
        c = self.config
        if outbound:
            field, address, gpn, end = "ipv4_src", entry.global_ip, entry.global_gpn, 0
        else:
            field, address, gpn, end = "ipv4_dst", entry.private_ip, entry.private_gpn, 1
        actions = [SetField(field, address)]
        if entry.port_keyed and entry.global_gpn != entry.private_gpn:
            actions.append(SetField(_PORT_FIELDS[entry.protocol][end], gpn))
        own_mac, port = (c.outside_mac, c.outside_port) if outbound else (c.inside_mac, c.inside_port)
        return (*actions, SetField("eth_src", own_mac), SetField("eth_dst", mac), DecTtl(), Output(port))

    def _forget(self, entry: Entry, now: float, removed: bool = False) -> list[Message]:
        """Remove an entry with its flows, and free what it held."""
        if not removed:
            self.table.remove(entry.id)
        self.tcp.forget(entry.id)
        msgs: list[Message] = [DeleteFlows(entry.id)] if entry.path is DataPath.FAST else []
        msgs += self.ftp.forget(entry)
        if entry.port_keyed and entry.private_gpn is not None:
            self.pool.release_mapping(entry.protocol, entry.private_ip, entry.private_gpn, now,
                                      leased=entry.kind is EntryKind.CLIENT_ALG)
        elif entry.global_gpn is not None:
            pair = (entry.private_ip, entry.foreign or "")
            if entry.protocol == IPPROTO_ICMP and self._icmp_pairs.get(pair) is entry:
                del self._icmp_pairs[pair]
            self.pool.space(entry.global_ip, entry.space).release(
                entry.global_gpn, now, owner=entry.private_ip if entry.kind is EntryKind.CLIENT_ALG else None)
        triple = (entry.space, entry.global_ip, entry.foreign)
        if triple in self._slow_triples and not self.table.private_hosts_of(*triple):
            msgs.append(DeleteFlows(self._slow_triples.pop(triple)))
        if entry.kind is EntryKind.CLIENT_ALG:
            self.leases.forget(entry.id, now)
            if entry.space in self.leases.definitions:
                msgs += self.client_alg.removed(entry)
        return msgs

    # ----------------------------------------------------------- leases

    def _lease_request(self, eth: EthernetHeader, packet: bytes, ip: IPv4Header, now: float) -> list[Message]:
        """A PCP-framed request to the gateway (FIG. 7), answered through r1."""
        c = self.config
        view = IPv4View(packet)
        ports = view.ports()
        if ports is None or view.payload_len < UDP_HEADER_LEN:
            return self._drop("malformed")
        sport, dport = ports
        if dport != pcp.SERVER_PORT:
            return self._drop("not-routed")
        try:
            start, end = view.udp_payload()
        except MalformedPacket:
            return self._drop("malformed")
        origin = Origin(self._access_port(eth.src, ip.src), eth.src, ip.src)
        datagram = packet[start:end]
        if natpmp.is_natpmp(datagram):  # version 0 beside PCP (RFC 6887 9, Appendix A)
            outcome = natpmp_server.handle(self.leases, datagram, origin, now)
        else:
            outcome = self.leases.handle(datagram, origin, now)
        msgs: list[Message] = []
        for entry in outcome.removed:
            msgs += self._forget(entry, now, removed=True)
        hold = False
        for entry in outcome.added:
            added, demoted = self._client_alg_added(entry, eth.src)
            msgs += added
            hold = hold or demoted
        if outcome.response is not None:
            reply = build_udp(c.gateway_ip, ip.src, pcp.SERVER_PORT, sport, outcome.response)
            msgs.append(PacketOut(self._eth(eth.src, c.inside_mac) + reply, (Output(c.inside_port),),
                                  delay=DEMOTION_HOLD_S if hold else 0.0))
        return msgs

    def _client_alg_added(self, entry: Entry, private_mac: str) -> tuple[list[Message], bool]:
        """Inbound flows for a new lease; MAP/PEER port leases translate like NAPT entries."""
        self.counters.add("leases_granted")
        if entry.port_keyed:
            c = self.config
            match = {"in_port": c.outside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": entry.protocol,
                     "ipv4_dst": entry.global_ip, _PORT_FIELDS[entry.protocol][1]: entry.global_gpn}
            if entry.foreign is not None:
                match["ipv4_src"] = entry.foreign
            return [AddFlow(PRIO_TRANSLATE, match, self._actions(entry, private_mac, outbound=False), cookie=entry.id)], False
        return self.client_alg.added(entry, self.leases.definitions[entry.space], private_mac)

    def _definition_of(self, ip: IPv4Header, udp_port: int | None) -> Definition | None:
        """The GPN definition that governs a packet: by IP protocol, or by UDP port."""
        if ip.protocol == IPPROTO_UDP:
            return self.leases.definitions.get(GpnSpace.udp(udp_port)) if udp_port else None
        return self.leases.definitions.get(GpnSpace.ip(ip.protocol))

    def _leased_outbound(self, frame: bytes, ip: IPv4Header, transport: Transport, now: float) -> list[Message] | None:
        """Steps 706-707 for leased protocols: source IP to the global IP, GPN untouched.
        None when the packet is not of a leased protocol (the NAT's own ALGs take it)."""
        definition = self._definition_of(ip, transport.src_port)
        if definition is None:
            return None
        entries = [e for e in self.table.entries_of(definition.key, ip.src) if e.foreign in (ip.dst, None)]
        if not entries:
            # NAT-DROP: a protocol the NAT does not translate itself, and nobody leased it.
            return None if ip.protocol == IPPROTO_UDP else self._drop("unsupported-protocol")
        c = self.config
        mac, msgs = self._resolve(c.outside_port, ip.dst, frame, c.inside_port, now)
        if mac is None:
            return msgs
        flows, actions = self.client_alg.outbound(entries[0], definition, ip.dst, mac)
        return msgs + flows + [PacketOut(frame, actions, c.inside_port)]

    def _refresh(self, entry: Entry, now: float, timeout: int) -> None:
        if entry.expires is not None and entry.expires < now + timeout - 1:  # at most one heap push a second
            self.table.set_expiry(entry.id, now + timeout)

    def _quoted(self, packet: bytes, ip: IPv4Header) -> tuple[IPv4Header, Transport]:
        at = ip.header_len + _ICMP_ERROR_HEADER_LEN
        inner = IPv4Header.parse(packet[at:], truncated_ok=True)
        return inner, parse_transport(inner.protocol, packet[at + inner.header_len:])

    def _access_port(self, mac: str, ip: str) -> int | None:
        """The port a lease's owner is pinned to: the s1 access port SAVI bound (MAC, IP) on,
        None if unbound (a forged frame that got past s1); r1's inside port when s1 is a plain
        bridge (no SAVI: the classic-L2 setting, RFC 7039 section 1's "no validation")."""
        if self.savi is None or not self.savi.connected:
            return self.config.inside_port
        return self.savi.port_of(mac, ip)

    def _eth(self, dst: str, src: str) -> bytes:
        return EthernetHeader(dst, src, ETH_TYPE_IPV4).build()

    def _drop(self, reason: str) -> list[Message]:
        self.counters.add(f"drop:{reason}")
        return []
