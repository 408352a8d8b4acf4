"""Why a packet was dropped: one exception type per reason, for counters and logs.

Every failure of the IPsec core raises an :class:`IPsecError` subclass whose
``reason`` is a short stable string, so a datapath can count drops with one
``except IPsecError as err: drops[err.reason] += 1`` (RFC 4303 section 3.4 and
RFC 4302 section 3.4 call most of these "auditable events").
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class DropReason(StrEnum):
    """The drop counters a datapath keeps."""

    MALFORMED = "malformed"
    NO_SA = "no_sa"
    BAD_ICV = "bad_icv"
    REPLAY = "replay"
    BAD_PADDING = "bad_padding"
    POLICY = "policy"
    FRAGMENT = "fragment"
    DUMMY = "dummy"
    SEQ_EXHAUSTED = "seq_exhausted"
    # module 109, behind the extensible NAT (client_agent.traversal)
    NO_GLOBAL_PORT = "no_global_port"
    NO_BINDING = "no_binding"
    NOT_COMPENSABLE = "not_compensable"


class IPsecError(Exception):
    """Base class: the packet is dropped; ``reason`` says why."""

    reason: ClassVar[DropReason]


class Malformed(IPsecError):
    """Bytes that do not parse as the IPv4/ESP/AH packet they claim to be."""

    reason = DropReason.MALFORMED


class NoSA(IPsecError):
    """No inbound SA for this SPI and protocol (RFC 4303 section 3.4.2)."""

    reason = DropReason.NO_SA


class BadICV(IPsecError):
    """The integrity check failed (RFC 4303 section 3.4.4, RFC 4302 section 3.4.4)."""

    reason = DropReason.BAD_ICV


class Replayed(IPsecError):
    """The sequence number was already seen or lies left of the window (RFC 4303 section 3.4.3)."""

    reason = DropReason.REPLAY

    def __init__(self, seq: int, *, duplicate: bool) -> None:
        self.seq = seq
        self.duplicate = duplicate
        super().__init__(f"sequence number {seq} " + ("already received" if duplicate else "below the replay window"))


class BadPadding(IPsecError):
    """Decrypted padding that is not 1, 2, 3, ... or overruns the payload (RFC 4303 section 2.4)."""

    reason = DropReason.BAD_PADDING


class PolicyDrop(IPsecError):
    """The SPD says DISCARD, or a packet did not arrive the way its policy demands (RFC 4301 section 5)."""

    reason = DropReason.POLICY


class Fragment(IPsecError):
    """An IP fragment where a whole datagram is required (RFC 4303 section 3.4.1, RFC 4302 section 3.4.1)."""

    reason = DropReason.FRAGMENT


class DummyPacket(IPsecError):
    """A valid ESP packet with next header 59: traffic-flow-confidentiality filler to discard (RFC 4303 section 2.6)."""

    reason = DropReason.DUMMY


class SequenceExhausted(IPsecError):
    """The outbound sequence number would cycle: the SA must be replaced (RFC 4303 section 3.3.3)."""

    reason = DropReason.SEQ_EXHAUSTED
