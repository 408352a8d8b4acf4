"""SPD selectors and actions, SAD lookup, and the RFC 4301 section 5 processing a datapath calls."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from client_agent.ipsec import SAD, SPD, Action, Policy, Selector, inbound, outbound
from client_agent.ipsec.errors import DropReason, IPsecError, Malformed, NoSA, PolicyDrop
from client_agent.ipsec.processing import decapsulate, encapsulate
from client_agent.ipsec.sa import SecurityAssociation
from client_agent.ipsec.spd import ANY_PORT, packet_selectors

LOCAL, REMOTE, OTHER = "10.0.0.1", "203.0.113.100", "198.51.100.7"


def gcm(spi: int, **extra: object) -> SecurityAssociation:
    return SecurityAssociation(spi=spi, protocol="esp", encryption="ENCR_AES_GCM_16", enc_key=bytes([spi & 0xFF]) * 20,
                               **extra)


def tcp(src: str = LOCAL, dst: str = REMOTE, sport: int = 40000, dport: int = 80) -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport))


def sel(src: str, dst: str, protocol: int, sport: int | None, dport: int | None) -> tuple:
    """The fields Selector.matches() takes, addresses as integers."""
    return int(ipaddress.IPv4Address(src)), int(ipaddress.IPv4Address(dst)), protocol, sport, dport


def test_selector_matches_prefixes_protocol_and_port_ranges() -> None:
    web = Selector(src="10.0.0.0/24", dst="203.0.113.0/24", protocol=6, dst_ports=(80, 443))
    assert web.matches(*sel("10.0.0.9", "203.0.113.100", 6, 1234, 443))
    assert not web.matches(*sel("10.0.1.9", "203.0.113.100", 6, 1234, 443))  # source outside
    assert not web.matches(*sel("10.0.0.9", "203.0.114.1", 6, 1234, 443))  # destination outside
    assert not web.matches(*sel("10.0.0.9", "203.0.113.100", 17, 1234, 443))  # UDP
    assert not web.matches(*sel("10.0.0.9", "203.0.113.100", 6, 1234, 444))  # port above the range
    assert not web.matches(*sel("10.0.0.9", "203.0.113.100", 6, None, None))  # no ports: OPAQUE
    assert Selector().matches(*sel("1.2.3.4", "5.6.7.8", 1, None, None))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"src": "10.0.0.1/24"}, r"src='10.0.0.1/24': not an IPv4 prefix"),
        ({"dst": "nowhere"}, r"dst='nowhere': not an IPv4 prefix"),
        ({"protocol": 256}, r"protocol=256: must be 0..255"),
        ({"dst_ports": (443, 80)}, r"dst_ports=\(443, 80\): must be a \(low, high\) range"),
        ({"src_ports": (0, 70000)}, r"src_ports=\(0, 70000\)"),
    ],
)
def test_selector_validation_names_field_and_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selector(**kwargs)


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="action=protect needs an outbound or inbound SA"):
        Policy(Selector(), Action.PROTECT)
    state = SAD().add_outbound(gcm(0x100))
    with pytest.raises(ValueError, match="action=bypass takes no SA"):
        Policy(Selector(), "bypass", outbound=state)


def test_packet_selectors_reads_ports_only_where_they_exist() -> None:
    assert packet_selectors(tcp())[2:] == (6, 40000, 80)
    assert packet_selectors(bytes(IP(src=LOCAL, dst=REMOTE) / UDP(sport=1, dport=2)))[2:] == (17, 1, 2)
    assert packet_selectors(bytes(IP(src=LOCAL, dst=REMOTE) / ICMP()))[2:] == (1, None, None)
    later_fragment = bytes(IP(src=LOCAL, dst=REMOTE, frag=100, proto=6) / (b"\x00" * 8))
    assert packet_selectors(later_fragment)[2:] == (6, None, None)


def test_first_match_wins_and_default_is_discard() -> None:
    sad = SAD()
    out = sad.add_outbound(gcm(0x100))
    spd = SPD([
        Policy(Selector(dst="203.0.113.100/32", protocol=6, dst_ports=(22, 22)), Action.BYPASS, name="ssh"),
        Policy(Selector(dst="203.0.113.0/24"), Action.PROTECT, outbound=out, name="servers"),
        Policy(Selector(dst="198.51.100.0/24"), Action.DISCARD, name="blocked"),
    ])
    assert spd.lookup(tcp(dport=22)).name == "ssh"
    assert spd.lookup(tcp(dport=80)).name == "servers"
    assert spd.lookup(tcp(dst=OTHER)).name == "blocked"
    assert spd.lookup(tcp(dst="192.0.2.1")).action is Action.DISCARD
    assert SPD(default=Action.BYPASS).lookup(tcp()).action is Action.BYPASS


def test_inbound_lookup_mirrors_the_selectors() -> None:
    spd = SPD([Policy(Selector(src="10.0.0.1/32", dst="203.0.113.100/32", protocol=6, dst_ports=(80, 80)),
                      Action.BYPASS, name="web")])
    reply = tcp(src=REMOTE, dst=LOCAL, sport=80, dport=40000)
    assert spd.lookup(reply, inbound=True).name == "web"
    assert spd.lookup(reply).name == "default"


def host_pair() -> tuple[tuple[SAD, SPD], tuple[SAD, SPD]]:
    """Two hosts with one SA each way, policies written from each host's own point of view."""
    a_to_b, b_to_a = gcm(0x1001), gcm(0x1002)
    hosts = []
    for local, remote, out_sa, in_sa in ((LOCAL, REMOTE, a_to_b, b_to_a), (REMOTE, LOCAL, b_to_a, a_to_b)):
        sad = SAD()
        out_state, in_state = sad.add_outbound(out_sa), sad.add_inbound(in_sa)
        spd = SPD([
            Policy(Selector(src=f"{local}/32", dst=f"{remote}/32", protocol=17), Action.BYPASS, name="udp in clear"),
            Policy(Selector(src=f"{local}/32", dst=f"{remote}/32"), Action.PROTECT, outbound=out_state,
                   inbound=in_state, name="protect"),
        ])
        hosts.append((sad, spd))
    return hosts[0], hosts[1]


def test_outbound_and_inbound_processing_between_two_hosts() -> None:
    (sad_a, spd_a), (sad_b, spd_b) = host_pair()
    request = tcp()
    wire = outbound(request, spd_a)
    assert wire[9] == 50 and inbound(wire, sad_b, spd_b) == request
    reply = tcp(src=REMOTE, dst=LOCAL, sport=80, dport=40000)
    assert inbound(outbound(reply, spd_b), sad_a, spd_a) == reply
    clear = bytes(IP(src=LOCAL, dst=REMOTE) / UDP(sport=1, dport=2))
    assert outbound(clear, spd_a) == clear and inbound(clear, sad_b, spd_b) == clear


def test_inbound_refuses_cleartext_that_policy_wants_protected() -> None:
    (_, _), (sad_b, spd_b) = host_pair()
    with pytest.raises(PolicyDrop, match="cleartext packet refused by policy 'protect'"):
        inbound(tcp(), sad_b, spd_b)


def test_inbound_refuses_a_packet_under_an_sa_its_policy_does_not_name() -> None:
    """RFC 4301 section 5.2: after decryption, the packet must match the policy of the SA it came under."""
    (sad_a, spd_a), (sad_b, spd_b) = host_pair()
    sneaky = encapsulate(bytes(IP(src=LOCAL, dst=REMOTE) / UDP(sport=1, dport=2)), sad_a.outbound[0])
    with pytest.raises(PolicyDrop, match="not what policy 'udp in clear' expects"):
        inbound(sneaky, sad_b, spd_b)


def test_outbound_discard_raises_policy_drop() -> None:
    spd = SPD()
    with pytest.raises(PolicyDrop) as err:
        outbound(tcp(), spd)
    assert err.value.reason == DropReason.POLICY == "policy"


def test_sad_lookup_by_spi_protocol_and_destination() -> None:
    sad = SAD()
    anywhere = sad.add_inbound(gcm(0x2000))
    to_me = sad.add_inbound(gcm(0x2000, dst=LOCAL))
    assert sad.lookup(50, 0x2000, bytes([10, 0, 0, 1])) is to_me  # SPI + destination first (RFC 4301 4.1)
    assert sad.lookup(50, 0x2000, bytes([10, 0, 0, 2])) is anywhere
    with pytest.raises(NoSA):
        sad.lookup(51, 0x2000, None)  # same SPI, other protocol
    with pytest.raises(ValueError, match="spi=0x00002000: an inbound ESP SA for dst=10.0.0.1 already exists"):
        sad.add_inbound(gcm(0x2000, dst=LOCAL))
    sad.remove(to_me)
    assert sad.lookup(50, 0x2000, bytes([10, 0, 0, 1])) is anywhere
    assert len(sad) == 1 and list(sad) == [anywhere]
    with pytest.raises(KeyError):
        sad.remove(to_me)


def test_decapsulate_needs_esp_or_ah_and_a_known_spi() -> None:
    sad = SAD()
    with pytest.raises(Malformed, match="neither ESP nor AH"):
        decapsulate(tcp(), sad)
    wire = encapsulate(tcp(), SAD().add_outbound(gcm(0x3000)))
    with pytest.raises(NoSA) as err:
        decapsulate(wire, sad)
    assert err.value.reason == "no_sa"
    with pytest.raises(Malformed, match="too short for an SPI"):
        decapsulate(wire[:2] + (22).to_bytes(2, "big") + wire[4:22], sad)


def test_every_drop_is_an_ipsec_error_with_a_reason() -> None:
    """What a datapath relies on: one except clause, one counter per reason."""
    drops: dict[str, int] = {}
    for packet in (tcp(), b"\x45" + bytes(5), encapsulate(tcp(), SAD().add_outbound(gcm(0x3000)))):
        try:
            inbound(packet, SAD(), SPD())
        except IPsecError as err:
            drops[err.reason] = drops.get(err.reason, 0) + 1
    assert drops == {"policy": 1, "malformed": 1, "no_sa": 1}
    assert ANY_PORT == (0, 65535)
