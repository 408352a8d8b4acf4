"""The NAT's configuration: addresses, ports of r1, timeouts.

Defaults are the testbed's addressing plan (:mod:`netwire.plan`); every value is validated at
construction and a bad one is reported by field name and value.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from netwire import plan
from netwire.checksum import ip_bytes

__pure__ = True

# RFC 4787 REQ-5: UDP mappings live at least 2 min; 5 min recommended.
UDP_MAPPING_TIMEOUT_S = 300
# RFC 5382 REQ-5: established TCP at least 2 h 4 min, transitory at least 4 min
# (r1 punts SYN, FIN and RST to the controller, which follows the phase: nat_app/tcpstate.py).
TCP_ESTABLISHED_TIMEOUT_S = 7440
TCP_TRANSITORY_TIMEOUT_S = 240
# RFC 5508 REQ-1: ICMP query mappings at least 60 s.
ICMP_QUERY_TIMEOUT_S = 60
# RFC 6888 REQ-8: a freed external port is not reused for 120 s.
PORT_QUARANTINE_S = 120

DEFAULT_CONTROL_SOCKET = "/run/natlab/controller.sock"
# Lease lifetimes clamped to [min, max] as PCP suggests (RFC 6887 15: 120 s .. 24 h).
LEASE_MIN_LIFETIME_S = 120
LEASE_MAX_LIFETIME_S = 86400
LEASE_DEFAULT_LIFETIME_S = 3600
LEASE_QUOTA = 64  # leases per origin (switch port, MAC, IP)
# One MAC cycling source IPs gets no more than one origin's quota (issue 9).
LEASE_MAC_QUOTA = 64
# RFC 6888 REQ-4: a per-subscriber port limit, per (private host, global IP,
# protocol), NAPT mappings and MAP/PEER leases together: 4096 of the 64,512
# dynamic ports lets 15 hosts share one global IP before any can exhaust it.
NAPT_PORTS_PER_HOST = 4096
# A client's GPN definition outlives its last lease (or a DEFINE no LEASE
# followed) by this long, then is forgotten so nobody can squat a protocol.
DEFINITION_GRACE_S = 60
DEFINITION_QUOTA = 4  # live definitions per origin


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and value."""


def global_pool(size: int, first: str = plan.global_ips(1)[0]) -> tuple[str, ...]:
    """``size`` consecutive global addresses starting at ``first``."""
    start = ipaddress.IPv4Address(first)
    return tuple(str(start + i) for i in range(size))


@dataclass(frozen=True)
class NatConfig:
    inside_net: str = plan.INSIDE_NET
    gateway_ip: str = plan.GATEWAY_IP
    outside_net: str = plan.OUTSIDE_NET
    globals: tuple[str, ...] = field(default_factory=lambda: global_pool(2))
    inside_port: int = plan.R1_INSIDE_PORT
    outside_port: int = plan.R1_OUTSIDE_PORT
    inside_mac: str = plan.R1_INSIDE_MAC
    outside_mac: str = plan.R1_OUTSIDE_MAC
    dpid: int | None = None
    udp_timeout: int = UDP_MAPPING_TIMEOUT_S
    tcp_timeout: int = TCP_ESTABLISHED_TIMEOUT_S
    tcp_transitory_timeout: int = TCP_TRANSITORY_TIMEOUT_S
    icmp_timeout: int = ICMP_QUERY_TIMEOUT_S
    port_quarantine: int = PORT_QUARANTINE_S
    control_socket: str = DEFAULT_CONTROL_SOCKET
    lease_min_lifetime: int = LEASE_MIN_LIFETIME_S
    lease_max_lifetime: int = LEASE_MAX_LIFETIME_S
    lease_default_lifetime: int = LEASE_DEFAULT_LIFETIME_S
    lease_quota: int = LEASE_QUOTA
    lease_mac_quota: int = LEASE_MAC_QUOTA
    napt_ports_per_host: int = NAPT_PORTS_PER_HOST
    definition_grace: int = DEFINITION_GRACE_S
    definition_quota: int = DEFINITION_QUOTA

    def __post_init__(self) -> None:
        """Refuse a bad value at construction, naming its field (hostile configs lose nothing)."""
        self._check_addresses()
        self._check_ports()
        self._check_numbers()

    def _check_addresses(self) -> None:
        inside = _net("inside_net", self.inside_net)
        outside = _net("outside_net", self.outside_net)
        if inside.overlaps(outside):
            raise ConfigError(f"inside_net {self.inside_net!r} overlaps outside_net {self.outside_net!r}")
        if _addr("gateway_ip", self.gateway_ip) not in inside:
            raise ConfigError(f"gateway_ip {self.gateway_ip!r} is not in inside_net {self.inside_net!r}")
        if not self.globals:
            raise ConfigError("globals: the global pool is empty")
        for g in self.globals:
            if _addr("globals", g) not in outside:
                raise ConfigError(f"globals: {g!r} is not in outside_net {self.outside_net!r}")
        if len(set(self.globals)) != len(self.globals):
            raise ConfigError(f"globals: duplicate addresses in {list(self.globals)!r}")

    def _check_ports(self) -> None:
        for name in ("inside_port", "outside_port"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value < 0xFFFFFF00:
                raise ConfigError(f"{name}: {value!r} is not an OpenFlow port number")
        if self.inside_port == self.outside_port:
            raise ConfigError(f"outside_port: {self.outside_port!r} equals inside_port")

    def _check_numbers(self) -> None:
        for name in ("udp_timeout", "tcp_timeout", "tcp_transitory_timeout", "icmp_timeout", "port_quarantine"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 < value <= 0xFFFF:
                raise ConfigError(f"{name}: {value!r} is not a timeout in seconds (1..65535)")
        for name in ("lease_min_lifetime", "lease_max_lifetime", "lease_default_lifetime", "lease_quota",
                     "lease_mac_quota", "napt_ports_per_host", "definition_grace", "definition_quota"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: {value!r} is not a positive whole number")
        if not self.lease_min_lifetime <= self.lease_default_lifetime <= self.lease_max_lifetime:
            raise ConfigError(f"lease_default_lifetime: {self.lease_default_lifetime!r} is outside "
                              f"[lease_min_lifetime, lease_max_lifetime] = [{self.lease_min_lifetime}, "
                              f"{self.lease_max_lifetime}]")

    def is_inside(self, ip: str) -> bool:
        return _in(ip, self.inside_net)

    def is_outside(self, ip: str) -> bool:
        return _in(ip, self.outside_net)

    def is_inside_host(self, ip: str) -> bool:
        """An inside address a host may use: not the gateway, nor the network or broadcast address."""
        low, high = _bounds(self.inside_net)
        value = int.from_bytes(ip_bytes(ip), "big")
        return low < value < high and ip != self.gateway_ip


@functools.lru_cache(maxsize=64)
def _bounds(net: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(net)
    return int(n.network_address), int(n.broadcast_address)


def _in(ip: str, net: str) -> bool:
    """Membership test on the per-packet path, without building ipaddress objects."""
    low, high = _bounds(net)
    return low <= int.from_bytes(ip_bytes(ip), "big") <= high


def _net(name: str, value: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {value!r} is not an IPv4 network ({exc})") from None


def _addr(name: str, value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{name}: {value!r} is not an IPv4 address") from None
