"""The agent keyed by IKE: ``[ike]`` validation (bad field named with its value) and events into SAD/SPD.

Two agents' databases keyed by an in-memory IKE exchange must carry a packet
each way through the real SPD/SAD processing; a rekey moves traffic to the new
SA, the delete removes the old one, and both key files follow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from client_agent.agent_config import ConfigError, databases, load, parse
from client_agent.agent_ike import IkeKeying
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ipsec.processing import inbound, outbound

EXAMPLES = Path(__file__).resolve().parents[2] / "client_agent" / "examples"
H1_CFG, SRV1_CFG = EXAMPLES / "ike-esp-transport-h1.toml", EXAMPLES / "ike-esp-transport-srv1.toml"
AGENT = '[agent]\nname = "h1"\nroutes = ["203.0.113.100/32"]\naddress = "10.0.0.1"\n'
IKE = ('[ike]\npeer = "203.0.113.100"\nlocal_id = "h1.natlab"\npsk = "long enough secret"\n'
       'local_ts = ["10.0.0.1/32"]\nremote_ts = ["203.0.113.100/32"]\n')


def test_example_configs_load():
    h1, srv1 = load(H1_CFG), load(SRV1_CFG)
    assert (h1.ike.role, srv1.ike.role, h1.sas, srv1.sas) == ("initiator", "responder", (), ())
    assert h1.tun_mtu() < 1500


@pytest.mark.parametrize(("line", "message"), [
    ('mode = "beet"', "mode='beet'"),
    ('role = "both"', "role='both'"),
    ('proposals = ["aes128-md5-modp768"]', "'aes128-md5-modp768'"),
    ('esp = ["rot13"]', "'rot13'"),
    ('child_rekey = -5', "child_rekey=-5"),
    ('colour = "blue"', "unknown field 'colour'"),
    ('natd = "yes"', "natd='yes'"),
])
def test_bad_ike_field_is_named_with_its_value(line, message):
    with pytest.raises(ConfigError) as error:
        parse(AGENT + IKE + line + "\n", source="h1.toml")
    assert "h1.toml" in str(error.value) and message in str(error.value)


def test_bad_selector_and_identity_are_named():
    with pytest.raises(ConfigError, match="local_ts.*'10.0.0.300/32'"):
        parse(AGENT + IKE.replace('"10.0.0.1/32"', '"10.0.0.300/32"'))
    with pytest.raises(ConfigError, match="local_id=''"):
        parse(AGENT + IKE.replace('local_id = "h1.natlab"', 'local_id = ""'))


def test_psk_rules():
    with pytest.raises(ConfigError, match="at least 8 bytes"):
        parse(AGENT + IKE.replace("long enough secret", "short"))
    with pytest.raises(ConfigError, match="exactly one"):
        parse(AGENT + IKE + 'psk_file = "/nonexistent"\n')
    with pytest.raises(ConfigError, match="psk_file='/nonexistent'"):
        parse(AGENT + IKE.replace('psk = "long enough secret"', 'psk_file = "/nonexistent"'))


def test_initiator_needs_a_peer_and_ike_takes_no_manual_sas():
    with pytest.raises(ConfigError, match="peer"):
        parse(AGENT + IKE.replace('peer = "203.0.113.100"\n', ""))
    manual = (EXAMPLES / "esp-transport-h1.toml").read_text()
    with pytest.raises(ConfigError, match=r"no \[\[sa\]\]"):
        parse(manual + "\n" + IKE)


def negotiate(**rekey):
    """h1's and srv1's agents' databases, keyed by one in-memory IKE exchange of the example configs."""
    h1, srv1 = load(H1_CFG), load(SRV1_CFG)
    if rekey:
        h1 = type(h1)(**{**h1.__dict__, "ike": type(h1.ike)(**{**h1.ike.__dict__, **rekey})})
    sides = {}
    for cfg, local, remote in ((h1, "10.0.0.1", "203.0.113.100"), (srv1, "203.0.113.100", "10.0.0.1")):
        sad, spd = databases(cfg)
        sides[cfg.name] = (IkeKeying(sad, spd, local, remote), sad, spd)
    a = IkeEndpoint(None, ("10.0.0.1", 500))
    b = IkeEndpoint(srv1.ike.config(), ("203.0.113.100", 500))
    session = a.initiate(h1.ike.config(), ("203.0.113.100", 500), 0.0)
    return sides, a, b, session


def pump(sides, a, b, now=0.0):
    for _ in range(10):
        for data, _ in a.datagrams_to_send():
            b.receive_datagram(data, ("10.0.0.1", 500), now)
        for data, _ in b.datagrams_to_send():
            a.receive_datagram(data, ("203.0.113.100", 500), now)
        for name, ep in (("h1", a), ("srv1", b)):
            for _, event in ep.next_events():
                sides[name][0].apply(event)


def carry(sides):
    """One TCP packet each way through the real SPD/SAD processing."""
    there = bytes(IP(src="10.0.0.1", dst="203.0.113.100") / TCP(sport=40000, dport=80) / b"GET /")
    back = bytes(IP(src="203.0.113.100", dst="10.0.0.1") / TCP(sport=80, dport=40000) / b"200 OK")
    _, h1_sad, h1_spd = sides["h1"]
    _, srv_sad, srv_spd = sides["srv1"]
    assert inbound(outbound(there, h1_spd), srv_sad, srv_spd) == there
    assert inbound(outbound(back, srv_spd), h1_sad, h1_spd) == back


def test_negotiated_child_sa_carries_traffic_through_the_agents_databases():
    sides, a, b, _ = negotiate()
    pump(sides, a, b)
    carry(sides)
    keying = sides["h1"][0]
    assert keying.ikev2_table().count("\n") == 1 and keying.esp_sa().count("\n") == 2


def test_rekey_moves_traffic_to_the_new_sa_and_delete_removes_the_old():
    sides, a, b, session = negotiate(child_rekey=5.0)
    pump(sides, a, b)
    first = set(sides["h1"][0].installed)
    a.handle_timer(5.0)
    pump(sides, a, b, now=5.0)
    second = set(sides["h1"][0].installed)
    assert len(second) == 1 and second != first
    assert len(sides["h1"][1]) == 2 and len(sides["srv1"][1]) == 2  # one pair left on each side
    carry(sides)


NAT_H1, NAT_SRV1 = EXAMPLES / "ike-esp-transport-nat-h1.toml", EXAMPLES / "ike-esp-transport-nat-srv1.toml"


def test_behind_the_nat_the_ike_spi_and_child_spis_are_leased_first():
    """FIG. 8 steps 801-802: ISAKMP's GPN (UDP 500, 64 bits) = SPIi, then the CHILD SPIs, all on the global IP."""
    from client_agent.agent_leases import ike_leases

    config = load(NAT_H1)
    wanted = ike_leases(config, 0x1122334455667788, [(50, 0x1234), (50, 0x5678)])
    ike, *children = [w.info for w in wanted]
    assert (ike.protocol, ike.port, ike.private_gpn, ike.global_gpn) == (17, 500, 0x1122334455667788,
                                                                         0x1122334455667788)
    assert (ike.global_ip, ike.foreign_ip) == ("203.0.113.1", "203.0.113.100")
    assert [(c.protocol, c.global_gpn, c.global_ip, c.foreign_ip) for c in children] == [
        (50, 0x1234, "203.0.113.1", "203.0.113.100"), (50, 0x5678, "203.0.113.1", "203.0.113.100")]
    assert wanted[0].needs_definition == 17


def test_responder_on_the_server_side_is_refused_behind_the_nat():
    text = NAT_H1.read_text().replace('role = "initiator"', 'role = "responder"')
    with pytest.raises(ConfigError, match="client initiates"):
        parse(text)


def test_keys_through_the_nat_use_the_leased_spis_and_the_global_address():
    """h1's IKE crosses a NAT that rewrites 10.0.0.1 to 203.0.113.1; NAT-D over the global address hides it."""
    from client_agent.agent_ike_shell import LeasedIke

    h1, srv1 = load(NAT_H1), load(NAT_SRV1)
    leased = LeasedIke("203.0.113.1", 0xABCDEF0123456789, [(50, 0x7001), (50, 0x7002)])
    h1_sad, h1_spd = databases(h1)
    srv_sad, srv_spd = databases(srv1)
    h1_keys = IkeKeying(h1_sad, h1_spd, "10.0.0.1", "203.0.113.100", "203.0.113.1")
    srv_keys = IkeKeying(srv_sad, srv_spd, "203.0.113.100", "203.0.113.1")
    a = IkeEndpoint(None, ("10.0.0.1", 500), child_spi=leased.take)
    b = IkeEndpoint(srv1.ike.config(), ("203.0.113.100", 500))
    session = a.initiate(h1.ike.config(natd_source=("203.0.113.1", 500)), ("203.0.113.100", 500), 0.0,
                         leased.spi_i.to_bytes(8, "big"))
    for _ in range(10):
        for data, _ in a.datagrams_to_send():
            b.receive_datagram(data, ("203.0.113.1", 500), 0.0)  # what the NAT does to the source
        for data, _ in b.datagrams_to_send():
            a.receive_datagram(data, ("203.0.113.100", 500), 0.0)
        for keys, ep in ((h1_keys, a), (srv_keys, b)):
            for _, event in ep.next_events():
                keys.apply(event)
                if type(event).__name__ == "IkeEstablished" and keys is srv_keys:
                    assert not event.nat_detected_peer  # srv1 sees no NAT
    assert session.spi_i == bytes.fromhex("abcdef0123456789")
    (inbound_state,) = h1_sad.inbound
    assert (inbound_state.sa.spi, inbound_state.sa.dst) == (0x7001, "203.0.113.1")
    (policy,) = h1_spd.policies
    assert (policy.selector.src, policy.selector.dst) == ("10.0.0.1/32", "203.0.113.100/32")
    (srv_policy,) = srv_spd.policies
    assert (srv_policy.selector.src, srv_policy.selector.dst) == ("203.0.113.100/32", "203.0.113.1/32")
