"""A security association: its parameters (frozen, validated) and its running state.

:class:`SecurityAssociation` is what configuration (and later IKE) produces: the
SAD fields of RFC 4301 section 4.4.2.1 that manual keying needs. It is
immutable and checked when built, so a bad key length or a reserved SPI fails
at load time with the field name and value, never on the first packet.

:class:`SAState` is the running side: the crypto objects keyed once, the
outbound sequence counter and the inbound anti-replay window. ESP and AH
functions take an ``SAState``; its ``sa`` attribute holds the parameters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TypeVar

from client_agent.ipsec.algorithms import EncryptionAlgorithm, IntegrityAlgorithm, encryption, integrity
from client_agent.ipsec.errors import NoSA, SequenceExhausted
from client_agent.ipsec.replay import MIN_WINDOW, ReplayWindow
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, MAX_SPI, MIN_SPI

_Algorithm = TypeVar("_Algorithm", EncryptionAlgorithm, IntegrityAlgorithm)
MAX_SEQ = 2**32 - 1  # 32-bit sequence numbers; no ESN


class Protocol(IntEnum):
    """The IPsec protocol of an SA, as its IP protocol number."""

    ESP = IPPROTO_ESP
    AH = IPPROTO_AH


class Mode(StrEnum):
    """RFC 4301 section 4.1: transport protects the payload, tunnel a whole inner packet."""

    TRANSPORT = "transport"
    TUNNEL = "tunnel"


_PROTOCOLS: dict[object, Protocol] = {**{p: p for p in Protocol}, "esp": Protocol.ESP, "ah": Protocol.AH}
_MODES: dict[object, Mode] = {m.value: m for m in Mode}


@dataclass(frozen=True)
class SecurityAssociation:
    """The parameters of one unidirectional SA.

    ``src``/``dst`` are the SA's endpoints: the outer header addresses in tunnel
    mode (required), and in transport mode optional. When ``dst`` is set,
    inbound lookup requires it (RFC 4301 section 4.1: SPI + destination); both
    go into the Wireshark key file. ``udp_encap`` marks an SA negotiated with
    NAT traversal (RFC 3948): in transport mode its inbound packets' TCP/UDP
    checksums are fixed after decryption (section 3.1.2). ``enc_key`` is the keying material,
    including the 4-byte salt for AES-GCM (RFC 4106 section 8.1). Algorithm
    names are normalised to their IANA names.
    """

    spi: int
    protocol: Protocol
    mode: Mode = Mode.TRANSPORT
    encryption: str = "ENCR_NULL"
    enc_key: bytes = field(default=b"", repr=False)  # keys stay out of logs
    integrity: str = "NONE"
    auth_key: bytes = field(default=b"", repr=False)
    src: str | None = None
    dst: str | None = None
    replay_window: int = MIN_WINDOW
    udp_encap: bool = False  # RFC 3948: ESP travels in UDP/4500 (NAT-T); set by IKE, never by manual keying

    def __post_init__(self) -> None:
        if not isinstance(self.spi, int) or not MIN_SPI <= self.spi <= MAX_SPI:
            raise ValueError(f"spi={self.spi!r}: must be {MIN_SPI}..{MAX_SPI} (RFC 4303 section 2.1 reserves 0-255)")
        self._normalise("protocol", _PROTOCOLS)
        self._normalise("mode", _MODES)
        enc, auth = self._algorithms()
        self._check_key("enc_key", self.enc_key, enc.keymat_lengths, enc.name)
        self._check_key("auth_key", self.auth_key, (auth.key_length,), auth.name)
        self._check_combination(enc, auth)
        for name in ("src", "dst"):
            self._check_address(name)
        if self.mode is Mode.TUNNEL and (self.src is None or self.dst is None):
            raise ValueError(f"src={self.src!r}, dst={self.dst!r}: tunnel mode needs both tunnel endpoints")
        if not isinstance(self.replay_window, int) or self.replay_window < MIN_WINDOW:
            raise ValueError(
                f"replay_window={self.replay_window!r}: must be at least {MIN_WINDOW} (RFC 4303 section 3.4.3)"
            )

    @property
    def encryption_algorithm(self) -> EncryptionAlgorithm:
        return encryption(self.encryption)

    @property
    def integrity_algorithm(self) -> IntegrityAlgorithm:
        return integrity(self.integrity)

    def _normalise(self, name: str, spellings: dict[object, Protocol] | dict[object, Mode]) -> None:
        value = getattr(self, name)
        try:
            normal = spellings.get(value.lower() if isinstance(value, str) else value)
        except TypeError:  # unhashable
            normal = None
        if normal is None:
            names = ", ".join(k for k in spellings if isinstance(k, str))
            raise ValueError(f"{name}={value!r}: must be one of {names}")
        object.__setattr__(self, name, normal)

    def _algorithms(self) -> tuple[EncryptionAlgorithm, IntegrityAlgorithm]:
        return self._algorithm("encryption", encryption), self._algorithm("integrity", integrity)

    def _algorithm(self, name: str, lookup: Callable[[str], _Algorithm]) -> _Algorithm:
        """The algorithm a field names, the field normalised to its IANA name; ValueError names the field."""
        value = getattr(self, name)
        try:
            algorithm = lookup(value)
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{name}={value!r}: {err}") from None
        object.__setattr__(self, name, algorithm.name)
        return algorithm

    @staticmethod
    def _check_key(name: str, key: object, lengths: tuple[int, ...], algorithm: str) -> None:
        if not isinstance(key, bytes):
            raise ValueError(f"{name}: must be bytes, not {type(key).__name__}")
        if len(key) not in lengths:
            wanted = " or ".join(str(n) for n in lengths)
            raise ValueError(f"{name}: {len(key)} bytes, but {algorithm} needs {wanted}")

    def _check_combination(self, enc: EncryptionAlgorithm, auth: IntegrityAlgorithm) -> None:
        if self.protocol is Protocol.AH:
            if enc.name != "ENCR_NULL":
                raise ValueError(f"encryption={enc.name!r}: AH does not encrypt (RFC 4302 section 1)")
            if auth.hash is None:
                raise ValueError(f"integrity={auth.name!r}: AH needs an integrity algorithm")
        elif enc.combined_mode and auth.hash is not None:
            raise ValueError(
                f"integrity={auth.name!r}: {enc.name} provides integrity itself and takes NONE (RFC 4303 section 3.2.3)"
            )
        elif not enc.combined_mode and auth.hash is None:
            raise ValueError(
                f"integrity={auth.name!r}: {enc.name} needs an integrity algorithm "
                "(confidentiality-only ESP is not offered)"
            )

    def _check_address(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        try:
            ipaddress.IPv4Address(value)
        except (ValueError, TypeError):
            raise ValueError(f"{name}={value!r}: not an IPv4 address") from None


class SAState:
    """The running side of an SA: keyed crypto objects, sequence counter, replay window, counters.

    Sequence numbers start at 1 and never cycle (RFC 4303 section 3.3.3,
    RFC 4302 section 3.3.2): when 2**32 - 1 has been sent,
    :meth:`next_seq` raises :class:`SequenceExhausted` and the SA must be replaced.
    """

    __slots__ = (
        "sa", "protocol", "tunnel", "src_bytes", "dst_bytes", "cipher", "mac", "seq", "window", "packets", "octets",
        "verify_icv", "natt_transport",
    )

    def __init__(self, sa: SecurityAssociation) -> None:
        self.sa = sa
        # Plain copies of what the datapath tests on every packet (enum lookups cost more).
        self.protocol = int(sa.protocol)
        self.tunnel = sa.mode is Mode.TUNNEL
        self.src_bytes = None if sa.src is None else ipaddress.IPv4Address(sa.src).packed
        self.dst_bytes = None if sa.dst is None else ipaddress.IPv4Address(sa.dst).packed
        self.cipher = sa.encryption_algorithm.new(sa.enc_key)
        self.mac = sa.integrity_algorithm.new(sa.auth_key)
        self.seq = 0  # the last sequence number sent
        self.window = ReplayWindow(sa.replay_window)
        self.packets = 0
        self.octets = 0
        # RFC 3948 3.1.2: a NAT rewrote the addresses the peer's inner TCP/UDP checksum was computed over
        self.natt_transport = sa.udp_encap and sa.mode is Mode.TRANSPORT
        self.verify_icv = True  # False only in a conformance fault control (CTRL-NOVERIFY): AH accepts any ICV

    def endpoints(self) -> tuple[bytes, bytes]:
        """A tunnel-mode SA's outer addresses (RFC 4301 5.1.2.1; SecurityAssociation requires them)."""
        if self.src_bytes is None or self.dst_bytes is None:
            raise NoSA(f"tunnel-mode SA 0x{self.sa.spi:08x} has no endpoints")
        return self.src_bytes, self.dst_bytes

    def next_seq(self) -> int:
        if self.seq >= MAX_SEQ:
            raise SequenceExhausted(f"SA 0x{self.sa.spi:08x} has sent sequence number {MAX_SEQ}")
        self.seq += 1
        return self.seq

    def count(self, octets: int) -> None:
        self.packets += 1
        self.octets += octets

    def __repr__(self) -> str:
        sa = self.sa
        return f"SAState({sa.protocol.name} 0x{sa.spi:08x} {sa.mode}, seq={self.seq}, packets={self.packets})"
