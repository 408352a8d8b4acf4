"""IPsec processing of whole IPv4 packets (RFC 4301 section 5): what a datapath calls.

Outbound, a datapath either asks the SPD (:func:`outbound`) or, when it already
knows the SA, protects directly (:func:`encapsulate`). Inbound,
:func:`decapsulate` finds the SA by SPI and unprotects; :func:`inbound` also
applies the SPD to the result and to cleartext arrivals. Every refusal is an
:class:`~client_agent.ipsec.errors.IPsecError` whose ``reason`` names a drop counter.

The ``icv_src``/``icv_dst`` overrides are the addresses the protected packet is
considered to carry: the AH ICV is computed (outbound) or verified (inbound)
over them, and inbound the SAD matches ``icv_dst``. A client behind the
extensible NAT passes the NAT's global address: ``icv_src`` when sending,
``icv_dst`` when receiving.

``before`` and ``after`` are where such a client changes the cleartext
packet (seed FIG. 9 steps 810-813, FIG. 10 steps 822-826): ``before(packet,
state)`` runs after the SPD has chosen the SA and before ESP/AH; ``after(packet,
state)`` runs after ESP/AH and before the SPD checks the inner packet, which it
then sees as the application will.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from client_agent.ipsec import ah, esp, ipheader
from client_agent.ipsec.ah import Address
from client_agent.ipsec.errors import Malformed, PolicyDrop
from client_agent.ipsec.sa import SAState
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.spd import SPD, Action
from client_agent.ipsec.udpencap import fix_transport_checksum
from netwire.checksum import ip_bytes
from netwire.ethernet import MalformedPacket
from netwire.ipv4 import IPPROTO_ESP
from netwire.view import PROTOCOL_OFFSET, SPI_OFFSET, IPv4View, Packet

Hook = Callable[[Packet, SAState], Packet]  # a rewrite may hand on its bytearray uncopied


class Decapsulated(NamedTuple):
    """An unprotected packet and the SA it arrived under."""

    packet: bytes
    state: SAState


def encapsulate(packet: Packet, state: SAState, *, icv_src: Address = None, icv_dst: Address = None) -> bytes:
    """Protect the IPv4 ``packet`` with the outbound SA ``state`` (ESP or AH, as the SA says)."""
    if state.protocol == IPPROTO_ESP:
        return esp.encapsulate(packet, state)
    return ah.encapsulate(packet, state, icv_src=icv_src, icv_dst=icv_dst)


def decapsulate(packet: bytes, sad: SAD, *, icv_src: Address = None, icv_dst: Address = None) -> Decapsulated:
    """Find the inbound SA of a received ESP/AH ``packet`` and unprotect it (RFC 4301 section 5.2).

    Under a UDP-encapsulated transport-mode SA the inner TCP/UDP checksum is recomputed over the
    addresses as received (RFC 3948 section 3.1.2; :func:`~client_agent.ipsec.udpencap.fix_transport_checksum`
    says why that option): the peer computed it over addresses a NAT has since rewritten.
    """
    try:
        view = IPv4View(packet)
        spi = view.spi()
    except MalformedPacket as err:
        raise Malformed(str(err)) from None
    protocol = packet[PROTOCOL_OFFSET]
    dst = view.dst if icv_dst is None else ip_bytes(icv_dst)
    state = sad.lookup(protocol, spi, dst)
    if protocol == IPPROTO_ESP:
        inner = esp.decapsulate(packet, state)
        return Decapsulated(fix_transport_checksum(inner) if state.natt_transport else inner, state)
    return Decapsulated(ah.decapsulate(packet, state, icv_src=icv_src, icv_dst=icv_dst), state)


def outbound(packet: bytes, spd: SPD, *, icv_src: Address = None, icv_dst: Address = None,
             before: Hook | None = None) -> bytes:
    """RFC 4301 section 5.1: the packet to send for ``packet`` (protected or bypassed), or PolicyDrop."""
    policy = spd.lookup(packet)
    if policy.action is Action.BYPASS:
        return packet
    if policy.action is Action.DISCARD or policy.outbound is None:
        raise PolicyDrop(f"outbound packet discarded by policy {policy.name!r}")
    cleartext = packet if before is None else before(packet, policy.outbound)
    return encapsulate(cleartext, policy.outbound, icv_src=icv_src, icv_dst=icv_dst)


def inbound(packet: bytes, sad: SAD, spd: SPD, *, icv_src: Address = None, icv_dst: Address = None,
            after: Hook | None = None) -> Packet:
    """RFC 4301 section 5.2: the packet to deliver for a received ``packet``, or an IPsecError.

    ESP/AH is unprotected, and the result must be selected by a PROTECT policy
    whose inbound SA is the one it arrived under; anything else must be
    selected by a BYPASS policy.
    """
    ipheader.lengths(packet)
    if packet[PROTOCOL_OFFSET] in SPI_OFFSET:
        inner: Packet
        inner, state = decapsulate(packet, sad, icv_src=icv_src, icv_dst=icv_dst)
        if after is not None:
            inner = after(inner, state)
        policy = spd.lookup(inner, inbound=True)
        if policy.action is not Action.PROTECT or policy.inbound is not state:
            raise PolicyDrop(f"packet under SA 0x{state.sa.spi:08x} is not what policy {policy.name!r} expects")
        return inner
    policy = spd.lookup(packet, inbound=True)
    if policy.action is not Action.BYPASS:
        raise PolicyDrop(f"cleartext packet refused by policy {policy.name!r} ({policy.action})")
    return packet
