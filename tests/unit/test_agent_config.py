"""The agent's TOML configuration: the examples, a round trip, and every mistake named with its field and value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from client_agent import agent_config
from client_agent.agent_config import ConfigError, Peer, databases, load, parse
from client_agent.ipsec.keyfile import esp_sa_file
from client_agent.ipsec.sa import Mode, SAState
from client_agent.ipsec.spd import Action
from client_agent.ipsec.suites import all_suites, suite
from netwire.plan import GATEWAY_IP

EXAMPLES = agent_config.examples()
PAIRS = [("esp-transport", "srv1"), ("ah-transport", "srv1"), ("esp-tunnel", "sgw1")]

GOOD = """
[agent]
name = "h1"
routes = ["203.0.113.100/32"]

[[sa]]
name = "out"
direction = "outbound"
spi = 0x1001
protocol = "esp"
encryption = "ENCR_AES_CBC"
enc_key = "00112233445566778899aabbccddeeff"
integrity = "AUTH_HMAC_SHA1_96"
auth_key = "0x00112233445566778899aabbccddeeff00112233"

[[sa]]
name = "in"
direction = "inbound"
spi = 0x1002
protocol = "esp"
encryption = "ENCR_AES_CBC"
enc_key = "00112233445566778899aabbccddeeff"
integrity = "AUTH_HMAC_SHA1_96"
auth_key = "00112233445566778899aabbccddeeff00112233"

[[policy]]
name = "p"
dst = "203.0.113.100/32"
protocol = "tcp"
dst_ports = 80
action = "protect"
outbound = "out"
inbound = "in"
"""


def test_a_good_config_builds_the_sad_and_spd() -> None:
    config = parse(GOOD)
    assert config.name == "h1" and config.tun == "ipsec0" and config.default is Action.DISCARD
    assert config.sas[0].sa.auth_key == bytes.fromhex("00112233445566778899aabbccddeeff00112233")
    assert config.policies[0].selector.protocol == 6 and config.policies[0].selector.dst_ports == (80, 80)
    sad, spd = databases(config)
    assert len(sad) == 2 and spd.policies[0].outbound is sad.outbound[0] and spd.policies[0].inbound is sad.inbound[0]
    assert config.run_directory == Path("/run/natlab/agent-h1")
    # AES-CBC + HMAC-SHA1-96: ESP header 8, IV 16, padding up to 15, trailer 2, ICV 12
    assert config.tun_mtu() == 1500 - (8 + 16 + 15 + 2 + 12)


@pytest.mark.parametrize(("side", "peer"), PAIRS)
def test_the_examples_load_and_mirror_each_other(side: str, peer: str) -> None:
    h1, other = load(EXAMPLES / f"{side}-h1.toml"), load(EXAMPLES / f"{side}-{peer}.toml")
    for me, them in ((h1, other), (other, h1)):
        sent = {s.sa for s in me.sas if s.direction == agent_config.OUTBOUND}
        received = {s.sa for s in them.sas if s.direction == agent_config.INBOUND}
        assert sent == received, f"{me.name}'s outbound SAs are not {them.name}'s inbound ones"
        assert me.routes and me.policies[0].action is Action.PROTECT
    assert h1.policies[0].selector.src == other.policies[0].selector.dst
    assert h1.tun_mtu() == other.tun_mtu() < 1500


def test_the_key_file_of_an_example_names_its_esp_sas() -> None:
    sad, _ = databases(load(EXAMPLES / "esp-transport-h1.toml"))
    lines = esp_sa_file(sad).splitlines()
    assert len(lines) == 2 and all("AES-GCM with 16 octet ICV [RFC4106]" in line for line in lines)
    assert '"0x00001001"' in lines[0]


@pytest.mark.parametrize("mode", list(Mode))
def test_render_reads_back_equal_and_peer_pair_mirrors(mode: Mode) -> None:
    left, right = agent_config.peer_pair(
        suite("esp:AES_GCM_16-128:NONE"), Peer("h1", "10.0.0.1"), Peer("sgw1", "203.0.113.200", "172.16.0.0/24"),
        mode=mode, run_dir="/tmp/x",
    )
    for config in (left, right):
        assert parse(agent_config.render(config)) == config
    assert left.routes == ("172.16.0.0/24",) and right.routes == ("10.0.0.1/32",)
    assert left.address == "10.0.0.1" and right.address is None  # sgw1's own address is not in what it protects
    assert left.sas[0].sa == right.sas[1].sa and left.sas[1].sa == right.sas[0].sa


def test_overhead_bounds_every_suite_and_mode() -> None:
    """The MTU left in the TUN device must fit the largest packet each SA can produce."""
    from client_agent.ipsec.processing import encapsulate
    from netwire.ipv4 import IPPROTO_UDP, build_ipv4_header

    for chosen in all_suites():
        for mode in Mode:
            sa = chosen.sa(0x1000, mode, src="10.0.0.1", dst="203.0.113.100")
            state, most = SAState(sa), 0
            for payload_len in range(8, 8 + 48):
                packet = build_ipv4_header(src="10.0.0.1", dst="203.0.113.100", protocol=IPPROTO_UDP,
                                           payload_len=payload_len) + bytes(payload_len)
                most = max(most, len(encapsulate(packet, state)) - len(packet))
            assert most <= agent_config.overhead(sa), f"{chosen.name} {mode}"


def _with(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BAD = [
    (("enc_key = \"00112233445566778899aabbccddeeff\"", "enc_key = \"zz\""), "sa[0] 'out' enc_key='zz': not hexadecimal"),
    (("enc_key = \"00112233445566778899aabbccddeeff\"", "enc_key = \"0011\""), "sa[0] 'out': enc_key: 2 bytes"),
    (("encryption = \"ENCR_AES_CBC\"", "encryption = \"ENCR_DES\""), "encryption='ENCR_DES'"),
    (("spi = 0x1001", "spi = 7"), "spi=7"),
    (("spi = 0x1001", "spi = \"0x1001\""), "spi='0x1001'"),
    (("spi = 0x1001\n", ""), "sa[0] 'out': spi is missing"),
    (("direction = \"outbound\"", "direction = \"out\""), "direction='out': must be one of inbound, outbound"),
    (("protocol = \"esp\"", "protocol = \"gre\""), "protocol='gre'"),
    (("name = \"out\"", "name = \"in\""), "sa name='in': used twice"),
    (("outbound = \"out\"", "outbound = \"nope\""), "outbound='nope': no [[sa]] has that name"),
    (("outbound = \"out\"", "outbound = \"in\""), "outbound='in': that SA is installed inbound"),
    (("action = \"protect\"", "action = \"bypass\""), "action=bypass takes no SA"),
    (("action = \"protect\"", "action = \"encrypt\""), "action='encrypt': must be one of protect, bypass, discard"),
    (("protocol = \"tcp\"", "protocol = \"sctp\""), "protocol='sctp'"),
    (("dst_ports = 80", "dst_ports = [90, 80]"), "dst_ports=(90, 80)"),
    (("dst = \"203.0.113.100/32\"", "dst = \"203.0.113.300/32\""), "policy[0] 'p': dst='203.0.113.300/32'"),
    (("routes = [\"203.0.113.100/32\"]", "routes = [\"10.0.0.1/33\"]"), "[agent] routes: '10.0.0.1/33'"),
    (("routes = [\"203.0.113.100/32\"]", "routes = \"10.0.0.0/8\""), "[agent] routes='10.0.0.0/8': must be a list"),
    (("name = \"h1\"", "name = \"h1\"\ntable = 254"), "table=254: reserved"),
    (("name = \"h1\"", "name = \"h1\"\ntun = \"a-name-far-too-long\""), "tun='a-name-far-too-long'"),
    (("name = \"h1\"", "name = \"h1\"\nmtu = 100"), "mtu=100: must be a whole number in 576..65535"),
    (("name = \"h1\"", "name = \"h1\"\naddress = \"h1\""), "[agent] address='h1': not an IPv4 address"),
    (("name = \"h1\"", "name = \"h1\"\ndefault = \"protect\""), "default='protect'"),
    (("name = \"h1\"", "name = \"h1\"\nroute = []"), "[agent]: unknown field 'route'"),
    (("auth_key = \"0x", "auth_keys = \"0x"), "sa[0] 'out': unknown field 'auth_keys'"),
    (("[agent]\nname = \"h1\"", "[agent]"), "[agent] name=None: must be a non-empty string"),
    (("[agent]", "[agnet]"), "top level: unknown field 'agnet'"),
    (("[[policy]]", "[policy]"), "policy: must be an array of tables"),
    (("spi = 0x1001", "spi = 0x1001 ="), "not valid TOML"),
]


@pytest.mark.parametrize(("edit", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_config_names_the_field_and_the_value(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(_with(GOOD, *edit), source="h1.toml")
    assert str(caught.value).startswith("h1.toml: ")
    assert message in str(caught.value)


def test_a_tunnel_sa_needs_its_endpoints() -> None:
    text = _with(GOOD, "protocol = \"esp\"", "protocol = \"esp\"\nmode = \"tunnel\"")
    with pytest.raises(ConfigError, match=r"sa\[0\] 'out': src=None, dst=None: tunnel mode needs both"):
        parse(text)


def test_a_protect_policy_needs_an_sa_and_inbound_spis_are_unique() -> None:
    with pytest.raises(ConfigError, match="action=protect needs an outbound or inbound SA name"):
        parse(_with(_with(GOOD, "outbound = \"out\"\n", ""), "inbound = \"in\"\n", ""))
    twin = _with(GOOD, "spi = 0x1002", "spi = 0x1001")
    twin = _with(twin, "direction = \"outbound\"", "direction = \"inbound\"")
    config = parse(_with(twin, "outbound = \"out\"\n", ""))
    with pytest.raises(ConfigError, match="spi=0x00001001: an inbound ESP SA"):
        databases(config)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "none.toml")



# ---------------------------------------------------------------- [nat]: module 109 (seed FIG. 8-10)

NAT_GOOD = """
[agent]
name = "h1"
address = "10.0.0.1"
routes = ["203.0.113.100/32"]

[[sa]]
name = "out"
direction = "outbound"
spi = 0x1001
protocol = "esp"
encryption = "ENCR_AES_GCM_16"
enc_key = "00112233445566778899aabbccddeeff00112233"
src = "10.0.0.1"
dst = "203.0.113.100"

[[sa]]
name = "in"
direction = "inbound"
spi = 0x1002
protocol = "esp"
encryption = "ENCR_AES_GCM_16"
enc_key = "00112233445566778899aabbccddeeff00112233"
src = "203.0.113.100"
dst = "203.0.113.1"

[[policy]]
name = "p"
dst = "203.0.113.100/32"
action = "protect"
outbound = "out"
inbound = "in"

[nat]
global_ip = "203.0.113.1"
tcp_ports = [20000, 20015]
udp_ports = [20000, 20015]
"""


def test_nat_a_good_table_parses_with_its_defaults_and_render_round_trips() -> None:
    config = parse(NAT_GOOD)
    nat = config.nat
    assert nat is not None and nat.global_ip == "203.0.113.1"
    assert nat.ports == {6: (20000, 20015), 17: (20000, 20015)}
    assert (nat.server, nat.lifetime, nat.lease_timeout, nat.compensate, nat.algs) == (GATEWAY_IP, 120, 10, True, ())
    assert parse(agent_config.render(config)) == config
    full = parse(NAT_GOOD + 'server = "10.0.0.253"\nlifetime = 600\nlease_timeout = 3\ncompensate = false\n'
                            'algs = ["address-text"]\n')
    assert (full.nat.server, full.nat.lifetime, full.nat.lease_timeout, full.nat.compensate, full.nat.algs) == (
        "10.0.0.253", 600, 3, False, ("address-text",))
    assert parse(agent_config.render(full)) == full and full != config
    sad, _ = databases(full)
    assert sad.inbound[0].sa.dst == "203.0.113.1"


def test_nat_twin_without_the_table_no_nat_settings_and_a_block_of_exactly_256_ports_is_allowed() -> None:
    plain = _with(NAT_GOOD, NAT_GOOD[NAT_GOOD.index("[nat]"):], "")
    assert parse(plain).nat is None and "[nat]" not in agent_config.render(parse(plain))
    assert parse(_with(NAT_GOOD, "tcp_ports = [20000, 20015]", "tcp_ports = [20000, 20255]")).nat.ports[6] == (
        20000, 20255)
    assert parse(_with(NAT_GOOD, "udp_ports = [20000, 20015]\n", "")).nat.ports == {6: (20000, 20015)}
    no_dst = _with(NAT_GOOD, 'src = "203.0.113.100"\ndst = "203.0.113.1"\n', 'src = "203.0.113.100"\n')
    assert parse(no_dst).sas[1].sa.dst is None  # an inbound SA may leave dst out


NAT_BAD = [
    (('address = "10.0.0.1"\n', ""), "[nat]: needs [agent] address"),
    (('global_ip = "203.0.113.1"', 'global_ip = "203.0.113.300"'), "[nat] global_ip='203.0.113.300': not an IPv4"),
    (('global_ip = "203.0.113.1"\n', ""), "[nat] global_ip=None: not an IPv4 address"),
    (("tcp_ports = [20000, 20015]", "tcp_ports = [20000, 20256]"), "[nat] tcp_ports=[20000, 20256]: a block of 1..256"),
    (("udp_ports = [20000, 20015]", "udp_ports = [20015, 20000]"), "[nat] udp_ports=[20015, 20000]: a block of 1..256"),
    (("udp_ports = [20000, 20015]", "udp_ports = [0, 15]"), "[nat] udp_ports=[0, 15]"),
    (("udp_ports = [20000, 20015]", 'udp_ports = "20000-20015"'), "[nat] udp_ports='20000-20015': must be a port"),
    (('src = "203.0.113.100"\ndst = "203.0.113.1"', 'src = "203.0.113.100"\ndst = "10.0.0.1"'),
     "[nat]: sa 'in' dst='10.0.0.1': behind the NAT the peer sends to the global IP 203.0.113.1"),
    (('src = "10.0.0.1"\ndst = "203.0.113.100"\n', 'src = "10.0.0.1"\n'), "[nat]: sa 'out' needs dst"),
    (("udp_ports = [20000, 20015]", 'udp_ports = [20000, 20015]\nalgs = ["sip"]'),
     "[nat] algs: 'sip' is not a client ALG (known: address-text, ftp)"),
    (("udp_ports = [20000, 20015]", 'udp_ports = [20000, 20015]\nalgs = "address-text"'),
     "[nat] algs='address-text': must be a list"),
    (("udp_ports = [20000, 20015]", 'udp_ports = [20000, 20015]\ncompensate = "yes"'),
     "[nat] compensate='yes': must be true or false"),
    (("udp_ports = [20000, 20015]", "udp_ports = [20000, 20015]\ncompensate = 1"),
     "[nat] compensate=1: must be true or false"),
    (("udp_ports = [20000, 20015]", "udp_ports = [20000, 20015]\nglobal = 1"), "[nat]: unknown field 'global'"),
    (("udp_ports = [20000, 20015]", 'udp_ports = [20000, 20015]\nserver = "gw"'), "[nat] server='gw': not an IPv4"),
    (("udp_ports = [20000, 20015]", "udp_ports = [20000, 20015]\nlifetime = 0"), "[nat] lifetime=0: must be a whole"),
]


@pytest.mark.parametrize(("edit", "message"), NAT_BAD, ids=[m for _, m in NAT_BAD])
def test_nat_a_bad_table_names_the_field_and_the_value(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(_with(NAT_GOOD, *edit), source="h1.toml")
    assert str(caught.value).startswith("h1.toml: ")
    assert message in str(caught.value)


def test_nat_a_port_block_beyond_65535_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"tcp_ports=\[65500, 65600\]"):
        parse(_with(NAT_GOOD, "tcp_ports = [20000, 20015]", "tcp_ports = [65500, 65600]"))


def test_the_nat_example_pair_shares_keys_and_the_peer_selects_the_leased_block() -> None:
    h1, srv1 = load(EXAMPLES / "esp-transport-nat-h1.toml"), load(EXAMPLES / "esp-transport-nat-srv1.toml")
    assert h1.nat is not None and srv1.nat is None  # only the client knows about the NAT
    for me, them in ((h1, srv1), (srv1, h1)):
        sent = {(s.sa.spi, s.sa.enc_key) for s in me.sas if s.direction == agent_config.OUTBOUND}
        received = {(s.sa.spi, s.sa.enc_key) for s in them.sas if s.direction == agent_config.INBOUND}
        assert sent == received
    assert srv1.policies[0].selector.dst == f"{h1.nat.global_ip}/32"
    assert srv1.policies[0].selector.dst_ports == h1.nat.ports[6] == h1.nat.ports[17]
    assert all(s.sa.dst == h1.nat.global_ip for s in h1.sas if s.direction == agent_config.INBOUND)


def test_verify_icv_is_a_fault_switch_that_defaults_on_and_round_trips() -> None:
    left, _ = agent_config.peer_pair(suite("ah:HMAC_SHA1_96"), Peer("h1", "10.0.0.1"),
                                     Peer("srv1", "203.0.113.100"), mode=Mode.TRANSPORT, run_dir="/tmp/x")
    assert left.verify_icv and "verify_icv" not in agent_config.render(left)
    off = dataclasses.replace(left, verify_icv=False)
    assert parse(agent_config.render(off)) == off
    with pytest.raises(ConfigError, match="verify_icv"):
        parse(agent_config.render(left).replace("[agent]\n", "[agent]\nverify_icv = \"no\"\n"))
