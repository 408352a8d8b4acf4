"""What one IKE peering is configured with: identities, PSK, proposals, selectors, mode, timers.

Validated when built, so a bad value fails at load time with its field name
and value (like :class:`client_agent.ipsec.sa.SecurityAssociation`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from client_agent.ike.codec import IdPayload, Proposal, TrafficSelector
from client_agent.ike.proposals import parse_proposal
from client_agent.ike.registry import IdType, ProtocolId
from client_agent.ike.selectors import parse_selector

MODES = ("transport", "tunnel")


@dataclass(frozen=True)
class Identity:
    """An IKE identity (section 3.5): ID_FQDN, ID_RFC822_ADDR or ID_IPV4_ADDR."""

    id_type: IdType
    value: str

    @classmethod
    def parse(cls, text: str) -> Identity:
        """``fqdn:host.example``, ``rfc822:user@example``, ``ipv4:10.0.0.1``, or the bare value (type guessed)."""
        kind, sep, value = text.partition(":")
        if sep and kind.lower() in ("fqdn", "rfc822", "email", "ipv4"):
            id_type = {"fqdn": IdType.ID_FQDN, "rfc822": IdType.ID_RFC822_ADDR, "email": IdType.ID_RFC822_ADDR,
                       "ipv4": IdType.ID_IPV4_ADDR}[kind.lower()]
        else:
            value = text
            id_type = IdType.ID_RFC822_ADDR if "@" in text else IdType.ID_FQDN
            try:
                ipaddress.IPv4Address(text)
                id_type = IdType.ID_IPV4_ADDR
            except ValueError:
                pass
        identity = cls(id_type, value)
        identity.data  # noqa: B018 - validates the value for its type
        return identity

    @property
    def data(self) -> bytes:
        if self.id_type == IdType.ID_IPV4_ADDR:
            return ipaddress.IPv4Address(self.value).packed
        if not self.value or not self.value.isascii():
            raise ValueError(f"identity {self.value!r}: must be non-empty ASCII")
        return self.value.encode()

    @property
    def body(self) -> bytes:
        """RestOfIDPayload: the ID payload without its generic header (section 2.15)."""
        return struct.pack("!B3x", self.id_type) + self.data

    def payload(self, initiator: bool) -> IdPayload:
        return IdPayload(initiator, self.id_type, self.data)

    def matches(self, payload: IdPayload) -> bool:
        return payload.id_type == self.id_type and payload.data == self.data

    def __str__(self) -> str:
        return f"{self.id_type.name}:{self.value}"


def describe_id(payload: IdPayload) -> str:
    """A peer's identity for logs; unknown types as hex."""
    try:
        if payload.id_type == IdType.ID_IPV4_ADDR:
            return f"ipv4:{ipaddress.IPv4Address(payload.data)}"
        return f"{IdType(payload.id_type).name}:{payload.data.decode('ascii')}"
    except (ValueError, UnicodeDecodeError):
        return f"type{payload.id_type}:{payload.data.hex()}"


@dataclass(frozen=True)
class Retransmission:
    """Section 2.1: resend after ``timeout``, multiplying by ``backoff``, give up after ``tries`` sends."""

    timeout: float = 1.0
    backoff: float = 2.0
    tries: int = 5

    def delay(self, sent: int) -> float:
        return self.timeout * self.backoff ** (sent - 1)


@dataclass(frozen=True)
class IkeConfig:
    """One peering. ``natd_source`` is the (address, port) NAT detection is computed over: behind the
    extensible NAT, the leased global address and port 500 (pre-compensation, claim 8); ``natd=False``
    sends no NAT-D at all."""

    local_id: Identity
    psk: bytes = field(repr=False)
    remote_id: Identity | None = None
    ike_proposals: tuple[Proposal, ...] = ()
    child_proposals: tuple[Proposal, ...] = ()
    mode: str = "transport"
    local_ts: tuple[TrafficSelector, ...] = ()
    remote_ts: tuple[TrafficSelector, ...] = ()
    child_rekey: float | None = None
    ike_rekey: float | None = None
    liveness: float | None = None
    half_open_timeout: float = 30.0
    retransmission: Retransmission = Retransmission()
    natd: bool = True
    natd_source: tuple[str, int] | None = None
    own_ike_rekeys: bool = False  # behind the extensible NAT: only we rekey the IKE SA (leased SPIi, step 801)
    force_encap: bool = False

    def __post_init__(self) -> None:
        if len(self.psk) < 8:
            raise ValueError("psk: must be at least 8 bytes")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: must be one of {MODES}")
        if not self.ike_proposals or any(p.protocol != ProtocolId.IKE for p in self.ike_proposals):
            raise ValueError(f"ike_proposals={self.ike_proposals!r}: need at least one IKE proposal")
        if not self.child_proposals or any(p.protocol == ProtocolId.IKE for p in self.child_proposals):
            raise ValueError(f"child_proposals={self.child_proposals!r}: need ESP or AH proposals")
        if not self.local_ts or not self.remote_ts:
            raise ValueError("local_ts/remote_ts: need at least one selector each")
        self._check_encap()
        for name in ("child_rekey", "ike_rekey", "liveness"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value!r}: must be positive")

    def _check_encap(self) -> None:
        """RFC 3948 encapsulates ESP only (AH's ICV covers the addresses a NAT rewrites), and forcing it
        works through NAT-D (RFC 7296 section 2.23), so ``force_encap`` needs ``natd`` and no AH proposal."""
        if not self.force_encap:
            return
        if not self.natd:
            raise ValueError("force_encap=True: needs natd=True (encapsulation is forced through NAT-D)")
        if any(p.protocol == ProtocolId.AH for p in self.child_proposals):
            raise ValueError("force_encap=True with ah proposals: AH cannot be UDP-encapsulated (RFC 3948 is ESP only)")

    @classmethod
    def build(cls, *, local_id: str, psk: bytes | str, remote_id: str | None = None,
              ike: tuple[str, ...] = ("aes128-sha256-modp2048",), esp: tuple[str, ...] = ("aes128-sha256",),
              ah: tuple[str, ...] = (), local_ts: tuple[str, ...] = ("0.0.0.0/0",),
              remote_ts: tuple[str, ...] = ("0.0.0.0/0",), **options: object) -> IkeConfig:
        """A config from strings: identities, proposal texts, selectors (for tests and the agent's ``[ike]``)."""
        child = [parse_proposal(p, ProtocolId.ESP) for p in esp] + [parse_proposal(p, ProtocolId.AH) for p in ah]
        return cls(
            local_id=Identity.parse(local_id), psk=psk.encode() if isinstance(psk, str) else psk,
            remote_id=Identity.parse(remote_id) if remote_id else None,
            ike_proposals=tuple(parse_proposal(p, ProtocolId.IKE, i + 1) for i, p in enumerate(ike)),
            child_proposals=tuple(Proposal(i + 1, p.protocol, p.spi, p.transforms) for i, p in enumerate(child)),
            local_ts=tuple(parse_selector(s) for s in local_ts), remote_ts=tuple(parse_selector(s) for s in remote_ts),
            **options,  # type: ignore[arg-type]
        )
