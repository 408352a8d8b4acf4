"""What an IKE session tells its shell: SAs up and down, SPIs to release, the keys for Wireshark.

The shell installs :class:`ChildEstablished` children in the SAD/SPD, removes
:class:`ChildDeleted` ones, releases the leases of :class:`SpiReleased` SPIs
(FIG. 8 step 802's other half) and writes key files from
:class:`IkeEstablished`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from client_agent.ike.codec import TrafficSelector
from client_agent.ike.crypto import IkeKeys, IkeSuite
from client_agent.ike.proposals import ChildSuite
from client_agent.ike.registry import ProtocolId


@dataclass
class ChildSa:
    """A negotiated pair of ESP or AH SAs, from this side's point of view (``inbound``/``outbound``)."""

    protocol: ProtocolId
    mode: str
    inbound_spi: int
    outbound_spi: int
    suite: ChildSuite
    encr_in: bytes = field(repr=False)
    integ_in: bytes = field(repr=False)
    encr_out: bytes = field(repr=False)
    integ_out: bytes = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    established: float
    rekey_at: float | None = None
    udp_encap: bool = False  # RFC 3948: ESP travels in UDP/4500 (a NAT was detected or encapsulation forced)


@dataclass(frozen=True)
class IkeEstablished:
    spi_i: bytes
    spi_r: bytes
    suite: IkeSuite
    keys: IkeKeys = field(repr=False)
    peer_id: str
    nat_detected_local: bool
    nat_detected_peer: bool


@dataclass(frozen=True)
class ChildEstablished:
    child: ChildSa
    replaces: ChildSa | None = None


@dataclass(frozen=True)
class ChildDeleted:
    child: ChildSa


@dataclass(frozen=True)
class ChildFailed:
    """The IKE SA is up but its CHILD_SA was refused (``reason``: the notify or our check)."""

    reason: str


@dataclass(frozen=True)
class SpiReleased:
    """An inbound SPI this side allocated is no longer used: its lease can go."""

    protocol: ProtocolId
    spi: int


@dataclass(frozen=True)
class IkeClosed:
    reason: str


@dataclass(frozen=True)
class IkeRekeyed:
    """This IKE SA was rekeyed (section 2.18): ``successor`` (an IkeSession) now holds the CHILD_SAs."""

    successor: Any


Event = IkeEstablished | ChildEstablished | ChildDeleted | ChildFailed | SpiReleased | IkeClosed | IkeRekeyed


def describe(event: Event) -> dict:
    """A JSON-able summary of an event, for logs and the shells' output (never a key)."""
    out: dict = {"event": type(event).__name__}
    if isinstance(event, IkeEstablished):
        out |= {"spi_i": event.spi_i.hex(), "spi_r": event.spi_r.hex(), "peer": event.peer_id,
                "suite": [event.suite.encr, event.suite.encr_key_bits, event.suite.prf, event.suite.integ,
                          event.suite.dh],
                "nat_local": event.nat_detected_local, "nat_peer": event.nat_detected_peer}
    elif isinstance(event, ChildEstablished):
        child = event.child
        out |= {"protocol": child.protocol.name, "mode": child.mode, "inbound_spi": f"{child.inbound_spi:08x}",
                "outbound_spi": f"{child.outbound_spi:08x}", "pfs": child.suite.dh}  # the PFS group, or None
    elif isinstance(event, ChildDeleted):
        out |= {"protocol": event.child.protocol.name, "inbound_spi": f"{event.child.inbound_spi:08x}"}
    elif isinstance(event, SpiReleased):
        out |= {"protocol": event.protocol.name, "spi": f"{event.spi:08x}"}
    elif isinstance(event, ChildFailed | IkeClosed):
        out["reason"] = event.reason
    return out
