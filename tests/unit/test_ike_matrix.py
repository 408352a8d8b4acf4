"""The client matrix keyed by IKE: its configs, its key files read back, its SPDs, sans-IO.

Three clients of one cell behind one global IP negotiate, in memory, with the
cell's responder exactly as the live matrix does (``ike_behind_nat``): each
client's SPD must select its own traffic by its private address and any port
(pre-compensation maps every port into the leased block), the responder's SPD
must tell the clients apart by the port blocks they offered as traffic
selectors, and the key files the agents write must read back to the SAs they
installed, since the oracles check the captures with those files.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from client_agent.agent_config import databases, parse, render
from client_agent.agent_ike import IkeKeying
from client_agent.agent_ike_shell import LeasedIke
from client_agent.ike.endpoint import IkeEndpoint
from client_agent.ipsec.keyfile import ah_sa_file, ah_sa_line, esp_sa_file, parse_key_file
from client_agent.ipsec.sa import Mode, Protocol, SecurityAssociation
from client_agent.ipsec.spd import Action
from conformance.keying import agent_events, await_keys, key_file
from conformance.matrix import CELLS, MANUAL_CELLS, Cell, clients, ike_behind_nat
from netwire.ipv4 import IPPROTO_AH, IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP

IKE_CELLS = [c for c in CELLS if c.keying == "ike"]


def test_exactly_one_cell_keeps_manual_keys() -> None:
    assert [c.name for c in CELLS if c.keying == "manual"] == sorted(MANUAL_CELLS) and len(MANUAL_CELLS) == 1


@pytest.mark.parametrize("cell", IKE_CELLS, ids=lambda c: c.name)
def test_the_matrix_ike_configs_render_and_parse_back_equal(cell: Cell) -> None:
    configs, peer = ike_behind_nat(cell, clients(3, 1))
    for config in [*configs, peer]:
        assert parse(render(config)) == config
    assert configs[0].ike is not None and configs[0].ike.local_ts == (
        "203.0.113.1/32[tcp/20000-20015]", "203.0.113.1/32[udp/20000-20015]")


def _negotiate(cell: Cell):
    """Three clients of ``cell`` on one global IP and its responder, in memory, through a NAT that
    rewrites each client's source to the global IP (port 500 kept: the cookie lease, step 801)."""
    members = clients(3, 1)
    configs, peer = ike_behind_nat(cell, members)
    protocol = IPPROTO_ESP if cell.protocol == "esp" else IPPROTO_AH
    peer_sad, peer_spd = databases(peer)
    peer_keys = IkeKeying(peer_sad, peer_spd, cell.peer_ip, "0.0.0.0")
    responder = IkeEndpoint(peer.ike.config(), (cell.peer_ip, 500))
    sides = []
    for i, (c, cfg) in enumerate(zip(members, configs, strict=True)):
        leased = LeasedIke(c.global_ip, 0x1000 + i, [(protocol, 0x7000 + i)])
        sad, spd = databases(cfg)
        keys = IkeKeying(sad, spd, c.private_ip, cell.peer_ip, c.global_ip)
        endpoint = IkeEndpoint(None, (c.private_ip, 500), child_spi=leased.take)
        endpoint.initiate(cfg.ike.config(natd_source=(c.global_ip, 500)), (cell.peer_ip, 500), 0.0,
                          leased.spi_i.to_bytes(8, "big"))
        sides.append((c, endpoint, keys, spd))
    for _ in range(6):
        for c, endpoint, keys, _spd in sides:
            for data, _ in endpoint.datagrams_to_send():
                responder.receive_datagram(data, (c.global_ip, 500), 0.0)
            for _, event in endpoint.next_events():
                keys.apply(event)
        for session, event in responder.next_events():
            peer_keys.remote = session.remote[0]
            peer_keys.apply(event)
        answers = responder.datagrams_to_send()
        for _c, endpoint, _keys, _spd in sides:
            for data, _ in answers:
                endpoint.receive_datagram(data, (cell.peer_ip, 500), 0.0)  # the NAT demuxes by SPIi; others drop it
    return members, sides, peer_keys, peer_spd


@pytest.mark.parametrize("cell", IKE_CELLS, ids=lambda c: c.name)
def test_three_clients_on_one_global_ip_get_spds_the_datapath_can_use(cell: Cell) -> None:
    members, sides, peer_keys, peer_spd = _negotiate(cell)
    for c, _endpoint, keys, spd in sides:
        assert len(keys.installed) == 1, f"{c.name}: no CHILD_SA"
        selectors = {(p.selector.src, p.selector.protocol, p.selector.src_ports) for p in spd.policies}
        # before pre-compensation: the private address and any port of it, per transport protocol
        assert selectors == {(f"{c.private_ip}/32", IPPROTO_TCP, (0, 65535)), (f"{c.private_ip}/32", IPPROTO_UDP,
                                                                               (0, 65535))}
    assert len(peer_keys.installed) == 3
    for c in members:
        for proto in (IPPROTO_TCP, IPPROTO_UDP):
            chosen = [p for p in peer_spd.policies if p.action is Action.PROTECT and p.selector.protocol == proto
                      and p.selector.dst_ports == c.ports]
            assert len(chosen) == 1, f"{c.name}: the responder's SPD cannot pick its SA by port ({proto})"


@pytest.mark.parametrize("cell", IKE_CELLS, ids=lambda c: c.name)
def test_the_key_files_read_back_to_the_installed_sas(cell: Cell, tmp_path: Path) -> None:
    _members, sides, _peer_keys, _ = _negotiate(cell)
    run_dirs = {}
    for c, _endpoint, keys, _spd in sides:
        folder = tmp_path / c.name
        folder.mkdir()
        text = keys.esp_sa() if cell.protocol == "esp" else keys.ah_sa()
        (folder / key_file(cell.protocol)).write_text(text)
        run_dirs[c.name] = folder
    pairs = await_keys(run_dirs, cell.protocol, cell.mode, cell.peer_ip, timeout=0.1)
    for c, _endpoint, keys, _spd in sides:
        (installed,) = keys.installed.values()
        out, into = pairs[c.name]
        assert (out.sa, into.sa) == (installed.outbound.sa, installed.inbound.sa)
        assert into.sa.dst == c.global_ip and out.sa.src == c.private_ip


def test_await_keys_names_the_clients_without_keys(tmp_path: Path) -> None:
    (tmp_path / "h1").mkdir()
    with pytest.raises(RuntimeError, match=r"\['h1'\]"):
        await_keys({"h1": tmp_path / "h1"}, "ah", "tunnel", "203.0.113.200", timeout=0.1)


def _sa(protocol: Protocol, spi: int, **kw) -> SecurityAssociation:
    if protocol is Protocol.AH:
        return SecurityAssociation(spi=spi, protocol=protocol, mode=Mode.TUNNEL, integrity="AUTH_HMAC_SHA2_256_128",
                                   auth_key=bytes(range(32)), src="10.0.0.1", dst="203.0.113.200", **kw)
    return SecurityAssociation(spi=spi, protocol=protocol, encryption="ENCR_AES_GCM_16", enc_key=bytes(range(20)),
                               src="203.0.113.100", dst="203.0.113.1", **kw)


def test_esp_and_ah_key_files_round_trip_and_keep_to_their_protocol() -> None:
    esp, ah = _sa(Protocol.ESP, 0x1234), _sa(Protocol.AH, 0x5678)
    assert parse_key_file(esp_sa_file([esp, ah]), Protocol.ESP, Mode.TRANSPORT) == [esp]
    assert parse_key_file(ah_sa_file([esp, ah]), Protocol.AH, Mode.TUNNEL) == [ah]
    assert ah_sa_line(ah).split(",")[4:6] == ['"NULL"', '""']
    with pytest.raises(ValueError, match="AH SAs only"):
        ah_sa_line(esp)


@pytest.mark.parametrize("line", [
    '"IPv4","*","*","0x00001234"',  # too few fields
    '"IPv4","*","*","0x00001234","ROT13","","NULL",""',  # unknown label
    '"IPv4","*","*","0x00001234","NULL","","HMAC-SHA-256-128 [RFC4868]","0xzz"',  # not hex
    '"IPv6","*","*","0x00001234","NULL","","HMAC-SHA-256-128 [RFC4868]","0x00"',  # not IPv4
    '"IPv4","*","*","0x00000001","NULL","","HMAC-SHA-256-128 [RFC4868]","0x' + "00" * 32 + '"',  # reserved SPI
    '"IPv4","*","*","0x00001234","NULL","","HMAC-SHA-256-128 [RFC4868]","0x00"',  # key too short
    'IPv4,*,*,0x00001234,NULL,,NULL,',  # unquoted
])
def test_a_key_file_line_that_cannot_be_read_is_refused_by_number(line: str) -> None:
    good = ah_sa_line(_sa(Protocol.AH, 0x5678))
    with pytest.raises(ValueError, match="line 2"):
        parse_key_file(f"{good}\n{line}\n", Protocol.AH, Mode.TUNNEL)


def test_agent_events_are_read_from_the_ike_shells_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text('2026 natlab.agent.ike INFO ike: {"event": "IkeEstablished", "spi_i": "00000000000010a0"}\n'
                   "2026 natlab.agent INFO agent h1: 42 leases\n"
                   '2026 natlab.agent.ike INFO ike: {"event": "ChildEst\n'
                   '2026 natlab.agent.ike INFO ike: {"event": "ChildEstablished", "inbound_spi": "00007000"}\n')
    assert [e["event"] for e in agent_events(log)] == ["IkeEstablished", "ChildEstablished"]
    assert agent_events(tmp_path / "absent.log") == []


def test_the_global_ip_with_a_port_block_becomes_the_private_ip_with_any_port() -> None:
    from client_agent.ike.selectors import parse_selector

    keying = IkeKeying(*databases(parse('[agent]\nname = "h1"\nroutes = []\n')), "10.0.0.1", "203.0.113.100",
                       "203.0.113.1")
    mine = keying._private(parse_selector("203.0.113.1/32[udp/20000-20015]"))
    assert (mine.start, mine.ip_protocol, mine.start_port, mine.end_port) == (
        ipaddress.IPv4Address("10.0.0.1"), IPPROTO_UDP, 0, 65535)
    other = parse_selector("203.0.113.2/32[udp/20000-20015]")
    assert keying._private(other) == other


def test_natlab_agent_help_names_both_ways_of_keying(capsys) -> None:
    from natlab.cli import build_parser

    for argv in (["agent", "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert "IKEv2" in out and ("manual keys" in out or "by hand" in out), out[:300]
