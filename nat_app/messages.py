"""What the pure NAT core asks the switch to do, independent of OpenFlow libraries.

``flows.py`` turns these into os-ken messages; unit tests apply them to a fake
switch. Match fields use OpenFlow 1.3 OXM names (``ipv4_src``, ``tcp_dst``...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__pure__ = True

# Priority bands of r1's single table, highest first.
PRIO_BYPASS = 60000  # benchmark: r1 as a plain L2 switch, no translation
PRIO_PUNT = 50000  # ARP and ICMP errors to the controller
PRIO_SLOW_PATH = 40000  # contended (protocol, global IP, foreign) triples, demuxed by the controller
PRIO_TRANSLATE = 30000  # per-entry translation flows
PRIO_OUTSIDE_DROP = 10  # outside misses: to the controller through a meter, which drops what has no entry
PRIO_OUTSIDE_MISS = PRIO_OUTSIDE_DROP
PRIO_TABLE_MISS = 0  # first packets from inside go to the controller

_BANDS = ((PRIO_BYPASS, "bypass"), (PRIO_PUNT, "punt"), (PRIO_SLOW_PATH, "slow-path punt"),
          (PRIO_TRANSLATE, "fast path"), (PRIO_OUTSIDE_DROP, "outside miss"), (PRIO_TABLE_MISS, "table miss"))


def priority_band(priority: int) -> str:
    """The band a flow's priority falls in, for counting packets per path."""
    return next(name for floor, name in _BANDS if priority >= floor)


# OFPP_IN_PORT (OpenFlow 1.3 section 7.2.1): out of the port the packet came in by, which a
# plain Output(in_port) may not do. Hairpinned packets leave r1 by the inside port they came from.
PORT_IN_PORT = 0xFFFFFFF8

COOKIE_INFRA = 0x4E41540000000000  # flows that belong to no entry ("NAT" << 40)


@dataclass(frozen=True)
class SetField:
    name: str
    value: object


@dataclass(frozen=True)
class Output:
    port: int


@dataclass(frozen=True)
class DecTtl:
    pass


@dataclass(frozen=True)
class ToController:
    pass


Action = SetField | Output | DecTtl | ToController


@dataclass(frozen=True)
class AddFlow:
    priority: int
    match: dict[str, Any]
    actions: tuple[Action, ...]
    cookie: int = COOKIE_INFRA
    idle_timeout: int = 0
    hard_timeout: int = 0
    notify_removal: bool = False  # OFPFF_SEND_FLOW_REM
    meter: int | None = None  # OFPIT_METER: the packets pass this meter first (rate-limited punts)


@dataclass(frozen=True)
class SetMeter:
    """(Re)define meter ``meter_id`` (OpenFlow 1.3 section 5.7): a drop band at ``rate_pps``
    packets a second with bursts of ``burst`` packets. Sent as a delete then an add, so that it
    holds whether or not r1 still had the meter (a reconnect), without an error either way."""

    meter_id: int
    rate_pps: int
    burst: int


@dataclass(frozen=True)
class DeleteFlows:
    """Delete every flow with this cookie (all flows when cookie is None)."""

    cookie: int | None


@dataclass(frozen=True)
class PacketOut:
    """Send ``data`` after applying ``actions`` (which end in an Output)."""

    data: bytes
    actions: tuple[Action, ...]
    in_port: int | None = None
    delay: float = 0.0  # seconds to hold it (see decide.DEMOTION_HOLD_S)


@dataclass(frozen=True)
class Barrier:
    """Messages after this one act only once r1 has applied those before it.

    Needed where a deleted flow must stop matching before a packet is sent
    whose reply it would otherwise misdeliver (OVS caches flows in its datapath).
    """


Message = AddFlow | DeleteFlows | Barrier | PacketOut | SetMeter


@dataclass
class Counters:
    """Why packets went where: shown by ``natlab table`` and the report."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)
