"""Traffic selectors: parsing from configuration and narrowing (RFC 7296 section 2.9).

A responder answers with the intersection of what the initiator proposed and
what its own policy allows; the initiator accepts an answer only if it is a
subset of its proposal. Selectors are IPv4 ranges (TS_IPV4_ADDR_RANGE).
"""

from __future__ import annotations

import ipaddress

from client_agent.ike.codec import TrafficSelector

_PROTOCOLS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17}


def parse_selector(text: str) -> TrafficSelector:
    """``10.0.0.0/24``, ``10.0.0.1``, ``10.0.0.1-10.0.0.9``, optionally ``[tcp]`` or ``[udp/80]`` or ``[tcp/1-1024]``."""
    spec, _, rest = text.strip().partition("[")
    start, end = _range(spec.strip())
    protocol, first_port, last_port = 0, 0, 65535
    if rest:
        name, _, ports = rest.rstrip("]").partition("/")
        protocol = int(name) if name.isdigit() else _PROTOCOLS[name.lower()]
        if ports:
            low, _, high = ports.partition("-")
            first_port, last_port = int(low), int(high or low)
    if not (0 <= first_port <= last_port <= 65535 and 0 <= protocol <= 255 and start <= end):
        raise ValueError(f"selector {text!r}: empty or out of range")
    return TrafficSelector(start, end, protocol, first_port, last_port)


def _range(spec: str) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    if "-" in spec:
        low, high = spec.split("-", 1)
        return ipaddress.IPv4Address(low.strip()), ipaddress.IPv4Address(high.strip())
    network = ipaddress.IPv4Network(spec, strict=False)
    return network.network_address, network.broadcast_address


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector both allow, or None; protocol 0 is "any"."""
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    start, end = max(a.start, b.start), min(a.end, b.end)
    first, last = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if start > end or first > last:
        return None
    return TrafficSelector(start, end, a.ip_protocol or b.ip_protocol, first, last)


def narrow(offered: tuple[TrafficSelector, ...], allowed: tuple[TrafficSelector, ...]) -> tuple[TrafficSelector, ...]:
    """Section 2.9: every non-empty intersection of an offered selector with an allowed one, deduplicated."""
    out: list[TrafficSelector] = []
    for a in offered:
        for b in allowed:
            both = intersect(a, b)
            if both is not None and both not in out:
                out.append(both)
    return tuple(out)


def covered(narrowed: tuple[TrafficSelector, ...], offered: tuple[TrafficSelector, ...]) -> bool:
    """The initiator's check: every returned selector lies inside one it offered."""
    return bool(narrowed) and all(any(intersect(n, o) == n for o in offered) for n in narrowed)


def describe(selectors: tuple[TrafficSelector, ...]) -> str:
    """A compact human form, for logs and events."""
    parts = []
    for s in selectors:
        addr = f"{s.start}" if s.start == s.end else f"{s.start}-{s.end}"
        proto = "" if not s.ip_protocol else f"[{s.ip_protocol}/{s.start_port}-{s.end_port}]"
        parts.append(addr + proto)
    return ",".join(parts)
