"""Hairpinning (RFC 4787 section 6 REQ-9, RFC 5382 REQ-8): a client reaches another client
(or itself) through a global address and port of the NAT.

A packet from inside to a global (IP, port) that a live mapping holds (a NAT-ALG mapping or a
MAP/PEER port lease, EIM: one global (IP, port) per private (IP, port)) goes back in by the
inside port with both ends translated: the destination to the mapping's private (IP, port),
the source to the *sender's* global (IP, port) ("External source IP address and port", REQ-9
a; RFC 5382 REQ-8), so the receiver sees the address an outside peer would see and the two
can talk as if across the Internet.

The sender gets a NAT-ALG entry whose foreign address is the global address it sent to: one
endpoint-independent mapping (REQ-1) shared with its other flows, released when the entry
goes. Each (sender, target) direction becomes one flow in r1 (cookie = the entry id, idle
timeout = the entry's), so a hairpinned conversation stays on the fast path.

Filtering (REQ-8's address-dependent filter) is not applied to hairpinned packets: their
sender is an inside host that already reaches the target directly on the inside link, so a
filter would protect nothing, and RFC 5780's hairpinning test (a second socket of the same
host sending to the first one's mapped address, as coturn's ``turnutils_natdiscovery -H``
does) expects delivery. Only a global (IP, port) that a live mapping holds is reachable;
anything else is dropped and counted (``drop:hairpin-no-mapping``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nat_app.allocate import PortLimitReached
from nat_app.messages import PORT_IN_PORT, PRIO_TRANSLATE, AddFlow, DecTtl, Message, Output, PacketOut, SetField
from nat_app.table import Entry, EntryKind, TableConflict
from nat_app.translate import rewrite_icmp_error
from netwire.checksum import internet_checksum
from netwire.ethernet import ETH_TYPE_IPV4, EthernetHeader
from netwire.ipv4 import ICMP_ERROR_TYPES, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPv4Header, parse_transport

__pure__ = True

if TYPE_CHECKING:
    from nat_app.decide import NatCore

PORT_FIELDS = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst")}


def is_hairpin(core: NatCore, ip: IPv4Header) -> bool:
    """An inside packet to one of the NAT's global addresses: TCP, UDP, or ICMP (errors about
    hairpinned packets, RFC 5508 REQ-7)."""
    return ip.dst in core.config.globals and (ip.protocol in PORT_FIELDS or ip.protocol == IPPROTO_ICMP)


def icmp_checksum_ok(packet: bytes, ip: IPv4Header) -> bool:
    """RFC 5508 REQ-3: an ICMP error whose checksum fails is dropped, not translated."""
    return internet_checksum(packet[ip.header_len: ip.total_len]) == 0


def is_hairpin_entry(core: NatCore, entry: Entry) -> bool:
    """A sender's hairpin entry: its foreign address is one of the NAT's own (one flow per target)."""
    return entry.foreign in core.config.globals


def hairpin(core: NatCore, frame: bytes, eth: EthernetHeader, packet: bytes, ip: IPv4Header,
            now: float) -> list[Message]:
    """Translate one hairpinned packet and install the flow that does it for the rest."""
    c = core.config
    if ip.ttl <= 1:
        return core._drop("ttl-expired")
    ports = parse_transport(ip.protocol, packet[ip.header_len:])
    if ip.protocol == IPPROTO_ICMP:
        if ports.icmp_type not in ICMP_ERROR_TYPES:
            return core._drop("not-routed")  # the NAT answers no queries to its own addresses
        return hairpin_icmp_error(core, frame, packet, ip, now)
    owner = core.pool.owner_of(ip.protocol, ip.dst, ports.dst_port)
    if owner is None:
        return core._drop("hairpin-no-mapping")
    target_mac, msgs = core._resolve(c.inside_port, owner[0], frame, c.inside_port, now)
    if target_mac is None:
        return msgs
    entry = core.table.lookup_out(ip.protocol, ip.src, ports.src_port, ip.dst)
    if entry is None:
        entry, refused = _sender_entry(core, packet, ip, _source_port(ports.src_port), eth.src, now)
        if entry is None:
            return msgs + refused
    actions = _actions(core, entry, owner, target_mac)
    match = {"in_port": c.inside_port, "eth_type": ETH_TYPE_IPV4, "ip_proto": ip.protocol, "ipv4_src": ip.src,
             "ipv4_dst": ip.dst, PORT_FIELDS[ip.protocol][0]: ports.src_port,
             PORT_FIELDS[ip.protocol][1]: ports.dst_port}
    core.counters.add("hairpinned")
    # A MAP/PEER lease (found by foreign = any) lives by its lifetime: its hairpin flow idles out quietly.
    own = entry.kind is EntryKind.NAT_ALG
    idle = (entry.idle_timeout or 0) if own else c.udp_timeout
    return msgs + [AddFlow(PRIO_TRANSLATE, match, actions, cookie=entry.id, idle_timeout=idle, notify_removal=own),
                   PacketOut(frame, actions, c.inside_port)]



def _source_port(port: int | None) -> int:
    """A hairpinned packet's source port: there, since its destination port had an owner (ports come in pairs)."""
    if port is None:
        raise RuntimeError("hairpin: a packet with a destination port has no source port")
    return port


def _sender_entry(core: NatCore, packet: bytes, ip: IPv4Header, port: int, private_mac: str,
                  now: float) -> tuple[Entry | None, list[Message]]:
    """The sender's NAT-ALG entry towards a global address: its EIM mapping, no flows of its own."""
    c = core.config
    try:
        mapping = core.pool.acquire_mapping(ip.protocol, ip.src, port, now)
    except PortLimitReached:
        return None, core._over_limit(packet, ip, private_mac, now)
    if mapping is None:
        return None, core._drop("ports-exhausted")
    timeout = c.tcp_timeout if ip.protocol == IPPROTO_TCP else c.udp_timeout
    try:
        entry = core.table.add(kind=EntryKind.NAT_ALG, protocol=ip.protocol, private_ip=ip.src, private_gpn=port,
                               global_ip=mapping[0], global_gpn=mapping[1], foreign=ip.dst, now=now,
                               idle_timeout=timeout)
    except TableConflict:
        core.pool.release_mapping(ip.protocol, ip.src, port, now)
        return None, core._drop("table-conflict")
    core.counters.add("entries_created")
    return entry, []


def _actions(core: NatCore, entry: Entry, target: tuple[str, int], target_mac: str) -> tuple:
    """Source to the sender's global (IP, port), destination to the target's private (IP, port)."""
    c = core.config
    src_field, dst_field = PORT_FIELDS[entry.protocol]
    return (SetField("ipv4_src", entry.global_ip), SetField(src_field, entry.global_gpn),
            SetField("ipv4_dst", target[0]), SetField(dst_field, target[1]),
            SetField("eth_src", c.inside_mac), SetField("eth_dst", target_mac), DecTtl(), Output(PORT_IN_PORT))


def hairpin_icmp_error(core: NatCore, frame: bytes, packet: bytes, ip: IPv4Header, now: float) -> list[Message]:
    """RFC 5508 REQ-7: an inside host's ICMP error about a hairpinned packet it got goes back to that
    packet's sender, translated as if it had come from outside: the quoted packet as the sender sent
    it (its private source, the receiver's global destination), the outer source the receiver's
    global address, the outer destination the sender (REQ-7 a)."""
    c = core.config
    if not icmp_checksum_ok(packet, ip):
        return core._drop("icmp-error-bad-checksum")
    at = ip.header_len + 8
    inner = IPv4Header.parse(packet[at:], truncated_ok=True)
    quoted = parse_transport(inner.protocol, packet[at + inner.header_len:])
    if inner.protocol not in PORT_FIELDS or inner.dst != ip.src or inner.src != ip.dst:
        return core._drop("icmp-error-no-entry")
    sender = core.pool.owner_of(inner.protocol, inner.src, quoted.src_port)
    receiver = core.pool.mapping_of(inner.protocol, ip.src, quoted.dst_port)
    if sender is None or receiver is None:
        return core._drop("icmp-error-no-entry")
    sender_mac, msgs = core._resolve(c.inside_port, sender[0], frame, c.inside_port, now)
    if sender_mac is None:
        return msgs
    out = rewrite_icmp_error(packet, outer_src=receiver[0], outer_dst=sender[0], inner_src=sender[0],
                             inner_src_port=sender[1], inner_dst=receiver[0], inner_dst_port=receiver[1])
    core.counters.add("icmp_errors_translated")
    eth = EthernetHeader(sender_mac, c.inside_mac, ETH_TYPE_IPV4).build()
    return [PacketOut(eth + out, (Output(PORT_IN_PORT),), c.inside_port)]
