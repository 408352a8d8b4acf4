"""IPv4 fragments through the NAT (RFC 4787 REQ-14: a NAT MUST support receiving in-order and
out-of-order fragments), translated fragment by fragment, never reassembled.

OpenFlow cannot translate a fragment: OVS gives every fragment's L4 fields as 0 ("normal" frag
handling), so no port-matching flow applies. r1 therefore punts every fragment (the base flow
matching Nicira's ``ip_frag``), and the controller translates them here:

- the first fragment (offset 0) carries the transport header: the NAT decides on it as on an
  unfragmented packet (NAPT, leased protocols by their GPN, hairpinning), and the translation it
  got becomes the datagram's *verdict*: the new Ethernet and IP addresses and the port out;
- later fragments carry only the IP ID: they are matched to their datagram by (source,
  destination, protocol, IP ID), RFC 791's reassembly key, and get the verdict's IP header
  (RFC 1624 checksum update); the transport checksum in the first fragment was updated for the
  whole datagram, so the receiver's reassembly verifies;
- later fragments that arrive before the first (out of order) wait, bounded, for its verdict;
- a datagram whose source the NAT translated gets a new IP ID, every fragment alike (RFC 7857
  3.9): hosts behind one global address choose IDs independently and could collide at the far end.

Hostile fragments (RFC 1858, RFC 3128; RFC 5722's rule for IPv6, applied to IPv4 here) lose
nothing: a first fragment too short to hold its transport header, a later fragment that
reaches into that header (the "offset 1" port rewrite), overlaps (the datagram is then
poisoned: nothing more of it is forwarded), a datagram beyond 65,535 bytes, a datagram of more
than ``max_fragments`` pieces, more than ``max_datagrams`` open datagrams (``per_source`` per
source address, so one sender cannot take every slot), more than ``max_bytes`` buffered, and
datagrams not finished within ``timeout`` are dropped, each counted as ``drop:fragment-<why>``.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from nat_app.messages import Counters, DecTtl, Message, Output, PacketOut, SetField
from nat_app.translate import rewrite
from netwire.checksum import update16
from netwire.ethernet import ETH_HEADER_LEN, ETH_TYPE_IPV4
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HEADER_LEN, IPv4Header, dotted
from netwire.view import CHECKSUM_OFFSET, IDENT_OFFSET, PROTOCOL_OFFSET, IPv4View

__pure__ = True

# The bytes of its header a first fragment must hold, and a later fragment may not reach into.
# RFC 1858 section 3: TCP's 20 (ports and flags); UDP and ICMP 8; ESP 8 (SPI, sequence, RFC 4303);
# AH 12 (to its SPI and sequence, RFC 4302); other protocols 8 (RFC 791's smallest fragment).
MIN_HEADER = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_ICMP: 8, IPPROTO_AH: 12}
DEFAULT_MIN_HEADER = 8
MAX_DATAGRAM = 65535
MAX_ID_KEYS = 4096  # (global source, destination, protocol) IP ID counters kept
# Nicira's ip_frag match (OVS's NXM_NX_IP_FRAG, as os-ken's OFPMatch takes it): (value, mask) with
# bit 0 "any fragment"; r1 punts every fragment with it.
IP_FRAG_ANY = (1, 1)


@dataclass(frozen=True)
class FragmentLimits:
    """Bounds on what fragments may hold of the controller (RFC 4787 REQ-14 leaves them to us)."""

    timeout: float = 10.0  # seconds from a datagram's first fragment to its last (Linux: 30 s)
    max_datagrams: int = 256
    per_source: int = 32
    max_fragments: int = 64  # a 64 KiB datagram at a 1500-byte MTU has 45
    max_bytes: int = 1 << 20  # buffered out-of-order fragments, all datagrams together


@dataclass(frozen=True)
class Verdict:
    """What the first fragment became: every later fragment of its datagram gets the same."""

    eth: bytes  # destination and source MAC
    src: str
    dst: str
    port: int
    decrement_ttl: bool
    ident: int | None = None  # the IP ID the NAT gave the datagram (RFC 7857 3.9), None: kept


@dataclass
class Datagram:
    source: str
    started: float
    ranges: list[tuple[int, int]] = field(default_factory=list)
    waiting: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # (eth header, packet, in_port)
    verdict: Verdict | None = None
    poisoned: bool = False
    total: int | None = None  # the datagram's length, once its last fragment arrived

    def complete(self) -> bool:
        return self.total is not None and sum(end - start for start, end in self.ranges) == self.total


class Fragments:
    def __init__(self, counters: Counters, limits: FragmentLimits | None = None) -> None:
        self.counters = counters
        self.limits = limits or FragmentLimits()
        self.datagrams: dict[tuple, Datagram] = {}
        self._per_source: Counter[str] = Counter()
        self.buffered = 0
        self._idents: dict[tuple[str, str, int], int] = {}  # (global source, destination, protocol) -> last ID

    def handle(self, in_port: int, frame: bytes, ip: IPv4Header, packet: bytes, now: float,
               decide: Callable[[], list[Message]], parked: Callable[[], int]) -> list[Message]:
        """One fragment in; the PacketOuts of what may leave now. ``decide`` runs the NAT on the
        first fragment; ``parked`` counts frames waiting for ARP (the first fragment may wait too)."""
        self.expire(now)
        start, end = ip.fragment_offset * 8, ip.fragment_offset * 8 + ip.total_len - ip.header_len
        why = _refused(ip, start, end)
        if why:
            return self._drop(why)
        key = (ip.src, ip.dst, ip.protocol, IPv4View(packet).ident)
        datagram = self.datagrams.get(key) or self._open(key, ip.src, now)
        if datagram is None:
            return self._drop("table-full")
        if datagram.poisoned:
            return self._drop("of-poisoned")
        if any(start < e and s < end for s, e in datagram.ranges) or len(datagram.ranges) >= self.limits.max_fragments:
            self._poison(datagram, "of-poisoned")
            return self._drop("overlap" if len(datagram.ranges) < self.limits.max_fragments else "too-many")
        datagram.ranges.append((start, end))
        if not ip.more_fragments:
            datagram.total = end
        msgs = self._first(datagram, frame, packet, in_port, decide, parked) if start == 0 else \
            self._later(datagram, frame[:ETH_HEADER_LEN], packet, in_port)
        if datagram.complete():
            self._close(key)
        return msgs

    def expire(self, now: float) -> None:
        """Drop datagrams older than the timeout, with what they buffered (counted)."""
        for key in [k for k, d in self.datagrams.items() if now - d.started > self.limits.timeout]:
            datagram = self.datagrams[key]
            if datagram.waiting:
                self.counters.add("drop:fragment-timeout", len(datagram.waiting))
            self._close(key)

    # ------------------------------------------------------------------ helpers

    def _open(self, key: tuple, source: str, now: float) -> Datagram | None:
        if len(self.datagrams) >= self.limits.max_datagrams or self._per_source[source] >= self.limits.per_source:
            return None
        self._per_source[source] += 1
        datagram = self.datagrams[key] = Datagram(source, now)
        return datagram

    def _close(self, key: tuple) -> None:
        datagram = self.datagrams.pop(key)
        self._release_waiting(datagram)
        self._per_source[datagram.source] -= 1
        if self._per_source[datagram.source] <= 0:
            del self._per_source[datagram.source]

    def _release_waiting(self, datagram: Datagram) -> None:
        self.buffered -= sum(len(p) for _, p, _ in datagram.waiting)
        datagram.waiting = []

    def _poison(self, datagram: Datagram, why: str) -> None:
        """Nothing more of this datagram leaves; what waited is dropped, counted as ``why``."""
        datagram.poisoned = True
        if datagram.waiting:
            self.counters.add(f"drop:fragment-{why}", len(datagram.waiting))
        self._release_waiting(datagram)

    def _first(self, datagram: Datagram, frame: bytes, packet: bytes, in_port: int,
               decide: Callable[[], list[Message]], parked: Callable[[], int]) -> list[Message]:
        """Decide on the first fragment; its translation is the verdict for the rest."""
        waiting_before = parked()
        msgs, verdict = _translated(decide(), frame, packet, in_port, self._renumber)
        if verdict is None:
            if parked() > waiting_before:  # waiting for ARP: it comes back through packet_in
                datagram.ranges.pop()
                return msgs
            self._poison(datagram, "of-dropped")  # the NAT dropped it (and counted why): the rest goes too
            return msgs
        datagram.verdict = verdict
        self.counters.add("fragments_translated")
        waiting, datagram.waiting = datagram.waiting, []
        self.buffered -= sum(len(p) for _, p, _ in waiting)
        return msgs + [_apply(verdict, p, port) for _, p, port in waiting]

    def _later(self, datagram: Datagram, eth: bytes, packet: bytes, in_port: int) -> list[Message]:
        if datagram.verdict is not None:
            return [_apply(datagram.verdict, packet, in_port)]
        if self.buffered + len(packet) > self.limits.max_bytes:
            datagram.ranges.pop()
            return self._drop("buffer-full")
        self.buffered += len(packet)
        datagram.waiting.append((eth, packet, in_port))
        self.counters.add("fragments_waiting")
        return []

    def _drop(self, why: str) -> list[Message]:
        self.counters.add(f"drop:fragment-{why}")
        return []

    def _renumber(self, packet: bytes, src: str, dst: str) -> int | None:
        """A new IP ID for a datagram whose source the NAT translated (RFC 7857 3.9, RFC 6864 5.3.1):
        hosts behind one global address pick their IDs independently, so two of their datagrams to
        one destination could share (source, destination, protocol, ID) and be mixed in its
        reassembly. IDs count up per (global source, destination, protocol); other datagrams keep theirs."""
        view = IPv4View(packet)
        if src == dotted(view.src):
            return None
        key = (src, dst, view.protocol)
        if key not in self._idents and len(self._idents) >= MAX_ID_KEYS:
            self._idents.clear()  # bounded memory: counters restart (a collision needs a 16-bit wrap anyway)
        ident = self._idents.get(key, zlib.crc32(repr(key).encode()) & 0xFFFF) % 0xFFFF + 1
        self._idents[key] = ident
        return ident


def _refused(ip: IPv4Header, start: int, end: int) -> str | None:
    """Why a fragment is refused on its own, before any state: RFC 1858's tiny and offset-1
    fragments, RFC 791's multiple-of-8 rule, and datagrams beyond 65,535 bytes."""
    header = MIN_HEADER.get(ip.protocol, DEFAULT_MIN_HEADER)
    if end > MAX_DATAGRAM:
        return "too-long"
    if end <= start or (ip.more_fragments and (end - start) % 8):
        return "malformed"
    if start == 0 and end < header:
        return "tiny"
    if 0 < start < header:
        return "into-header"
    return None


def _translated(msgs: list[Message], frame: bytes, packet: bytes, in_port: int,
                renumber: Callable[[bytes, str, str], int | None]) -> tuple[list[Message], Verdict | None]:
    """The core's answer to a first fragment with its translation done here (OVS cannot do it to a
    fragment), and the verdict it implies; None if the fragment itself was not sent on."""
    out: list[Message] = []
    verdict = None
    for m in msgs:
        if isinstance(m, PacketOut) and _same_fragment(m.data, packet):
            data, port, dec = (_do_actions(frame, m.actions, in_port) if m.data == frame
                               else (m.data, _port_of(m.actions, in_port), True))
            sent = IPv4View(data[ETH_HEADER_LEN:])
            src, dst = dotted(sent.src), dotted(sent.dst)
            ident = renumber(packet, src, dst)
            if ident is not None:
                data = data[:ETH_HEADER_LEN] + _with_ident(data[ETH_HEADER_LEN:], ident)
            verdict = Verdict(data[:12], src, dst, port, dec, ident)
            out.append(PacketOut(data, (Output(port),), in_port, m.delay))
        else:
            out.append(m)
    return out, verdict


def _same_fragment(data: bytes, packet: bytes) -> bool:
    """Whether a PacketOut carries this fragment: same IP ID, flags and offset, and protocol."""
    ip = data[ETH_HEADER_LEN:]
    same = slice(IDENT_OFFSET, IDENT_OFFSET + 4)  # Identification, flags and fragment offset
    return len(ip) >= IPV4_MIN_HEADER_LEN and ip[same] == packet[same] and ip[PROTOCOL_OFFSET] == packet[PROTOCOL_OFFSET]


def _address(fields: dict[str, object], name: str) -> str | None:
    """An IPv4 address a flow sets (SetField ipv4_src/ipv4_dst carry dotted strings), None if it sets none."""
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"SetField {name}={value!r} is no address string")
    return value


def _port(fields: dict[str, object], tcp: str, udp: str) -> int | None:
    """The port a flow sets: its TCP field if it has one, else its UDP field, None if neither."""
    value = fields.get(tcp, fields.get(udp))
    if value is not None and not isinstance(value, int):
        raise ValueError(f"SetField {tcp}/{udp}={value!r} is no port number")
    return value


def _do_actions(frame: bytes, actions: tuple, in_port: int) -> tuple[bytes, int, bool]:
    """Apply a flow's actions (SetField, DecTtl, Output) to a fragment in software, as OVS would."""
    fields = {a.name: a.value for a in actions if isinstance(a, SetField)}
    dec = any(isinstance(a, DecTtl) for a in actions)
    packet = rewrite(frame[ETH_HEADER_LEN:], src=_address(fields, "ipv4_src"), dst=_address(fields, "ipv4_dst"),
                     src_port=_port(fields, "tcp_src", "udp_src"), dst_port=_port(fields, "tcp_dst", "udp_dst"),
                     decrement_ttl=dec)
    eth = _mac(fields.get("eth_dst")) or frame[0:6]
    eth += _mac(fields.get("eth_src")) or frame[6:12]
    return eth + frame[12:ETH_HEADER_LEN] + packet, _port_of(actions, in_port), dec


def _apply(verdict: Verdict, packet: bytes, in_port: int) -> PacketOut:
    """A later fragment given its datagram's verdict: IP addresses and TTL only (RFC 1624 update)."""
    out = rewrite(packet, src=verdict.src, dst=verdict.dst, decrement_ttl=verdict.decrement_ttl)
    if verdict.ident is not None:
        out = _with_ident(out, verdict.ident)
    return PacketOut(verdict.eth + ETH_TYPE_IPV4.to_bytes(2, "big") + out, (Output(verdict.port),), in_port)


def _with_ident(packet: bytes, ident: int) -> bytes:
    """The IP packet with its Identification replaced, the header checksum updated (RFC 1624)."""
    buf = bytearray(packet)
    old = IPv4View(buf).ident
    buf[IDENT_OFFSET:IDENT_OFFSET + 2] = ident.to_bytes(2, "big")
    at = slice(CHECKSUM_OFFSET, CHECKSUM_OFFSET + 2)
    buf[at] = update16(int.from_bytes(buf[at], "big"), old, ident).to_bytes(2, "big")
    return bytes(buf)


def _port_of(actions: tuple, in_port: int) -> int:
    """The port a PacketOut's actions send to (PORT_IN_PORT kept: OVS sends nothing to in_port itself)."""
    return next(a.port for a in actions if isinstance(a, Output))


def _mac(value: object) -> bytes | None:
    return bytes.fromhex(str(value).replace(":", "")) if value else None

