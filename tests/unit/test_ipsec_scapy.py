"""Cross-checks against scapy's independent IPsec (``scapy.layers.ipsec.SecurityAssociation``).

For every suite and mode both support: ours protects and scapy verifies and
unprotects; scapy protects and ours does. Each direction has a tampered twin.
Scapy's ``decrypt`` mutates its argument, so it always gets a fresh parse.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.ipsec import IPSecIntegrityError
from scapy.layers.ipsec import SecurityAssociation as ScapySA

from client_agent.ipsec import ah
from client_agent.ipsec.errors import BadICV
from client_agent.ipsec.processing import decapsulate, encapsulate
from client_agent.ipsec.sa import Mode, Protocol, SAState, SecurityAssociation
from client_agent.ipsec.sad import SAD
from client_agent.ipsec.suites import Suite, all_suites
from conformance.oracles import SCAPY_ENCRYPTION, SCAPY_INTEGRITY, scapy_sa
from netwire.checksum import internet_checksum, ip_bytes

TUNNEL = {"src": "198.51.100.1", "dst": "203.0.113.200"}
CASES = [(suite, mode) for suite in all_suites() for mode in Mode]


def make_sa(suite: Suite, mode: Mode) -> SecurityAssociation:
    return suite.sa(0x4001, mode, **(TUNNEL if mode is Mode.TUNNEL else {}))


def packets() -> list[bytes]:
    return [
        bytes(IP(src="10.0.0.1", dst="203.0.113.100", ttl=63) / TCP(sport=40000, dport=80, flags="PA") / (b"x" * 333)),
        bytes(IP(src="10.0.0.1", dst="203.0.113.100", flags="DF") / UDP(sport=5353, dport=53) / b"q"),
    ]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x80]) + data[index + 1 :]


def scapy_unprotect(sa: ScapySA, wire: bytes) -> bytes:
    return bytes(sa.decrypt(IP(wire)))


@pytest.mark.parametrize(("suite", "mode"), CASES, ids=lambda v: v.name if isinstance(v, Suite) else str(v))
def test_ours_protects_scapy_verifies(suite: Suite, mode: Mode) -> None:
    sa = make_sa(suite, mode)
    ours, theirs = SAState(sa), scapy_sa(sa)
    for packet in packets():
        wire = encapsulate(packet, ours)
        assert scapy_unprotect(theirs, wire) == packet
        with pytest.raises(IPSecIntegrityError):  # the tampered twin: last payload byte (ESP) or ICV region (AH)
            scapy_unprotect(theirs, flip(wire, len(wire) - 1))


@pytest.mark.parametrize(("suite", "mode"), CASES, ids=lambda v: v.name if isinstance(v, Suite) else str(v))
def test_scapy_protects_ours_verifies(suite: Suite, mode: Mode) -> None:
    sa = make_sa(suite, mode)
    sad, theirs = SAD(), scapy_sa(sa)
    sad.add_inbound(sa)
    for packet in packets():
        wire = bytes(theirs.encrypt(IP(packet)))
        with pytest.raises(BadICV):  # checked first: the genuine packet would close the replay window on its twin
            decapsulate(flip(wire, len(wire) - 1), sad)
        inner, state = decapsulate(wire, sad)
        assert inner == packet and state.sa == sa


def test_scapy_agrees_on_ah_with_mutable_and_immutable_options() -> None:
    """RFC 4302 Appendix A.1 as scapy implements it: Record Route zeroed, Router Alert covered."""
    sa = make_sa(next(s for s in all_suites() if s.protocol is Protocol.AH), Mode.TRANSPORT)
    packet = bytes(
        IP(src="10.0.0.1", dst="203.0.113.100", options=[IPOption_Router_Alert(), IPOption_RR(routers=["0.0.0.0"])])
        / UDP(sport=1, dport=2) / b"opts"
    )
    theirs = scapy_sa(sa)
    assert scapy_unprotect(theirs, ah.encapsulate(packet, SAState(sa))) == packet
    assert ah.decapsulate(bytes(theirs.encrypt(IP(packet))), SAState(sa)) == packet


def _rewrite_address(wire: bytes, offset: int, address: str) -> bytes:
    header = bytearray(wire[:20])
    header[offset : offset + 4] = ip_bytes(address)
    header[10:12] = b"\x00\x00"
    header[10:12] = internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + wire[20:]


@pytest.mark.parametrize("mode", list(Mode))
def test_scapy_verifies_our_as_if_icv_after_the_nat(mode: Mode) -> None:
    """Claim 8 judged by scapy: signed as if from the global address, rewritten by the NAT, verified by the peer."""
    sa = make_sa(next(s for s in all_suites() if s.protocol is Protocol.AH), mode)
    packet = packets()[1]
    wire = ah.encapsulate(packet, SAState(sa), icv_src="203.0.113.1")
    after_nat = _rewrite_address(wire, 12, "203.0.113.1")
    expected = packet if mode is Mode.TUNNEL else _rewrite_address(packet, 12, "203.0.113.1")
    assert scapy_unprotect(scapy_sa(sa), after_nat) == expected
    with pytest.raises(IPSecIntegrityError):
        scapy_unprotect(scapy_sa(sa), _rewrite_address(ah.encapsulate(packet, SAState(sa)), 12, "203.0.113.1"))


def test_we_verify_scapys_icv_as_if_to_the_global_address() -> None:
    """Claim 14 against scapy: scapy signs for the global address, the NAT rewrites it to the private one."""
    sa = make_sa(next(s for s in all_suites() if s.protocol is Protocol.AH), Mode.TRANSPORT)
    sent = bytes(scapy_sa(sa).encrypt(IP(src="203.0.113.100", dst="203.0.113.1") / UDP(sport=7, dport=5000) / b"pong"))
    after_nat = _rewrite_address(sent, 16, "10.0.0.1")
    with pytest.raises(BadICV):
        ah.decapsulate(after_nat, SAState(sa))
    assert IP(ah.decapsulate(after_nat, SAState(sa), icv_dst="203.0.113.1")).dst == "10.0.0.1"


def test_every_suite_is_cross_checked() -> None:
    """Scapy supports every algorithm we offer; no suite is silently left out of the matrix."""
    assert {s.encryption for s in all_suites()} <= set(SCAPY_ENCRYPTION)
    assert {s.integrity for s in all_suites()} <= set(SCAPY_INTEGRITY)
    assert len(CASES) == 36
