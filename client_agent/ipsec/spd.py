"""The Security Policy Database (RFC 4301 section 4.4.1): ordered policies, the first match wins.

Selectors are written from this host's point of view for outbound traffic
(``src`` is local, ``dst`` remote); an inbound packet is matched mirrored, its
source against ``dst`` and its destination against ``src``, so one policy
covers both directions of a conversation, with an SA for each.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from client_agent.ipsec.errors import Malformed
from client_agent.ipsec.sa import SAState
from netwire.ethernet import MalformedPacket
from netwire.view import IPPROTO_SCTP, PROTOCOL_OFFSET, SRC_OFFSET, IPv4View, Packet

__all__ = ["IPPROTO_SCTP", "ANY_PORT", "CACHE_SIZE", "Action", "Selector", "Policy", "SPD", "packet_selectors"]
ANY_PORT = (0, 65535)
CACHE_SIZE = 4096  # cached decisions per direction
_ADDRESSES = struct.Struct("!II")  # source and destination, as integers for prefix matching


class Action(StrEnum):
    """RFC 4301 section 4.4.1: what happens to traffic a policy selects."""

    PROTECT = "protect"
    BYPASS = "bypass"
    DISCARD = "discard"


@dataclass(frozen=True)
class Selector:
    """Traffic selectors (RFC 4301 section 4.4.1.1): prefixes, a protocol, inclusive port ranges.

    ``protocol`` None means any. Packets without ports (other protocols,
    non-initial fragments) match only selectors whose port ranges are
    :data:`ANY_PORT`, like the RFC's OPAQUE.
    """

    src: str = "0.0.0.0/0"
    dst: str = "0.0.0.0/0"
    protocol: int | None = None
    src_ports: tuple[int, int] = ANY_PORT
    dst_ports: tuple[int, int] = ANY_PORT
    _src: tuple[int, int] = field(init=False, repr=False, compare=False)
    _dst: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            value = getattr(self, name)
            try:
                network = ipaddress.IPv4Network(value)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{name}={value!r}: not an IPv4 prefix ({err})") from None
            object.__setattr__(self, "_" + name, (int(network.network_address), int(network.netmask)))
        if self.protocol is not None and not (isinstance(self.protocol, int) and 0 <= self.protocol <= 255):
            raise ValueError(f"protocol={self.protocol!r}: must be 0..255 or None (any)")
        for name in ("src_ports", "dst_ports"):
            ports = getattr(self, name)
            if not (isinstance(ports, tuple) and len(ports) == 2 and 0 <= ports[0] <= ports[1] <= 65535):
                raise ValueError(f"{name}={ports!r}: must be a (low, high) range within 0..65535")

    def matches(self, src: int, dst: int, protocol: int, src_port: int | None, dst_port: int | None) -> bool:
        """Whether a packet with these fields (addresses as integers) is selected."""
        net, mask = self._src
        if src & mask != net:
            return False
        net, mask = self._dst
        if dst & mask != net:
            return False
        if self.protocol is not None and protocol != self.protocol:
            return False
        if src_port is None or dst_port is None:
            return self.src_ports == ANY_PORT and self.dst_ports == ANY_PORT
        return (
            self.src_ports[0] <= src_port <= self.src_ports[1] and self.dst_ports[0] <= dst_port <= self.dst_ports[1]
        )


@dataclass(frozen=True, eq=False)
class Policy:
    """One SPD entry. PROTECT names the SA for outbound traffic and the SA inbound traffic must arrive under."""

    selector: Selector
    action: Action
    outbound: SAState | None = None
    inbound: SAState | None = None
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        has_sa = self.outbound is not None or self.inbound is not None
        if self.action is Action.PROTECT and not has_sa:
            raise ValueError(f"policy {self.name!r}: action=protect needs an outbound or inbound SA")
        if self.action is not Action.PROTECT and has_sa:
            raise ValueError(f"policy {self.name!r}: action={self.action} takes no SA")


class SPD:
    """Ordered policies; a packet no policy selects gets ``default`` (DISCARD unless told otherwise).

    Lookups go through a cache of decisions by the packet's selector values
    (RFC 4301 section 4.4.1.2's SPD caches; the ordered list stays the
    authority): a connection's packets all carry the same five values, so only
    its first packet walks the list. The cache holds at most
    :data:`CACHE_SIZE` decisions per direction and starts over when full, so a
    flood of distinct ports costs list walks, never memory; :meth:`add`, :meth:`prepend` and :meth:`remove` empty it.
    """

    def __init__(self, policies: Iterable[Policy] = (), *, default: Action = Action.DISCARD) -> None:
        self.policies: tuple[Policy, ...] = tuple(policies)
        self.default = Policy(Selector(), default, name="default")
        self._cache: tuple[dict[Selectors, Policy], dict[Selectors, Policy]] = ({}, {})  # outbound, inbound

    def add(self, policy: Policy) -> None:
        """Append ``policy`` after the existing ones (it matches only what they leave)."""
        self.policies = (*self.policies, policy)
        self._cache = ({}, {})

    def prepend(self, policies: Iterable[Policy]) -> None:
        """Put ``policies`` before the existing ones (a rekeyed SA's policies win at once)."""
        self.policies = (*policies, *self.policies)
        self._cache = ({}, {})

    def remove(self, policy: Policy) -> None:
        """Take ``policy`` out (its SA was deleted); decisions that named it are forgotten."""
        self.policies = tuple(p for p in self.policies if p is not policy)
        self._cache = ({}, {})

    def lookup(self, packet: Packet, *, inbound: bool = False) -> Policy:
        """The first policy selecting ``packet``; ``inbound`` matches it mirrored."""
        key = packet_selectors(packet)
        cache = self._cache[inbound]
        policy = cache.get(key)
        if policy is None:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            policy = cache[key] = self._walk(key, inbound)
        return policy

    def _walk(self, key: tuple[int, int, int, int | None, int | None], inbound: bool) -> Policy:
        src, dst, protocol, src_port, dst_port = key
        if inbound:
            src, dst, src_port, dst_port = dst, src, dst_port, src_port
        for policy in self.policies:
            if policy.selector.matches(src, dst, protocol, src_port, dst_port):
                return policy
        return self.default


Selectors = tuple[int, int, int, int | None, int | None]  # (src, dst, protocol, src_port, dst_port)


def packet_selectors(packet: Packet) -> tuple[int, int, int, int | None, int | None]:
    """``(src, dst, protocol, src_port, dst_port)`` of an IPv4 packet; ports None when it has none."""
    try:
        view = IPv4View(packet)
    except MalformedPacket as err:
        raise Malformed(str(err)) from None
    ports = view.ports()
    src, dst = _ADDRESSES.unpack_from(packet, SRC_OFFSET)
    if ports is None:
        return src, dst, packet[PROTOCOL_OFFSET], None, None
    return src, dst, packet[PROTOCOL_OFFSET], ports[0], ports[1]
