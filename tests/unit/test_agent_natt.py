"""The agent's NAT-T shell on real UDP sockets (loopback, port 4500): ESP in UDP, IKE behind the marker,
keepalives, and every refused datagram counted by its reason next to ESP's own drop counters.

Two datapaths with the example ESP tunnel SAs stand for h1 and sgw1 (called srv1 here); their UDP/4500 sockets are
bound to 127.0.0.1 and 127.0.0.2, so the "wire" between them is the kernel's, as in the agent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, TCP

from client_agent.agent_config import databases, examples, load
from client_agent.agent_ike import IkeConfigError, parse_ike
from client_agent.datapath import Datapath
from client_agent.ipsec.errors import DropReason
from client_agent.ipsec.udpencap import KEEPALIVE, KEEPALIVE_INTERVAL, NATT_PORT, NON_ESP_MARKER
from client_agent.natt import NattSocket
from tests.unit.test_agent_datapath import Endpoint, pair

EXAMPLES = examples()
MARKER = b"natlab-secret-payload"
H1, SRV1 = "127.0.0.1", "127.0.0.2"
REQUEST = bytes(IP(src="10.0.0.1", dst="172.16.0.10") / TCP(sport=40000, dport=80, flags="PA") / MARKER)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Side:
    datapath: Datapath
    kernel: Endpoint
    natt: NattSocket
    raw: list[bytes]
    ike: list[tuple[bytes, tuple[str, int]]]


def side(config: str, bind: str, own: str, clock: Clock) -> Side:
    sad, spd = databases(load(EXAMPLES / config))
    kernel, tun = pair()
    raw: list[bytes] = []
    ike: list[tuple[bytes, tuple[str, int]]] = []
    natt = NattSocket(bind, own, 0, keepalive=5.0, on_ike=lambda data, addr: ike.append((data, addr)), clock=clock)
    datapath = Datapath(tun, tun.write, [natt], natt.sender(raw.append), sad, spd, drop_log=lambda *a: None)
    natt.drop = datapath._drop
    return Side(datapath, kernel, natt, raw, ike)


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side, Clock]]:
    clock = Clock()
    h1 = side("esp-tunnel-h1.toml", H1, "10.0.0.1", clock)
    srv1 = side("esp-tunnel-sgw1.toml", SRV1, "203.0.113.200", clock)
    yield h1, srv1, clock
    h1.natt.close()
    srv1.natt.close()


def outbound_spi(s: Side) -> int:
    return s.datapath.sad.outbound[0].sa.spi


def test_esp_of_an_encapsulated_sa_crosses_in_udp_4500_and_comes_out_unchanged(sides) -> None:
    h1, srv1, _ = sides
    h1.natt.route(outbound_spi(h1), (SRV1, NATT_PORT))
    h1.kernel.write(REQUEST)
    assert h1.datapath.pump_outbound() == 1
    assert h1.raw == [] and h1.natt.counters["esp_sent"] == 1
    srv1.datapath.pump_inbound(srv1.natt)
    assert srv1.kernel.read() == REQUEST
    assert srv1.natt.counters["esp_received"] == 1 and srv1.datapath.counters.drops == {}


def test_esp_of_a_plain_sa_still_goes_raw(sides) -> None:
    h1, _, _ = sides
    h1.kernel.write(REQUEST)
    h1.datapath.pump_outbound()
    assert len(h1.raw) == 1 and h1.raw[0][9] == 50 and h1.natt.counters["esp_sent"] == 0


def test_ike_behind_the_marker_goes_to_the_ike_shell_and_back_out_marked(sides) -> None:
    h1, srv1, _ = sides
    message = bytes(range(28)) + b"ike"
    h1.natt.send_ike(message, (SRV1, NATT_PORT))
    assert srv1.datapath.pump_inbound(srv1.natt) == 0
    assert srv1.ike == [(message, (H1, NATT_PORT))]


def test_keepalives_are_sent_when_due_and_counted_on_arrival(sides) -> None:
    h1, srv1, clock = sides
    h1.natt.route(outbound_spi(h1), (SRV1, NATT_PORT))
    h1.natt.tick()
    assert h1.natt.counters["keepalive_sent"] == 0
    clock.now = 5.0
    h1.natt.tick()
    srv1.datapath.pump_inbound(srv1.natt)
    assert h1.natt.counters["keepalive_sent"] == 1 and srv1.natt.counters["keepalive_received"] == 1


def test_hostile_datagrams_are_counted_by_reason_with_esp_drops(sides) -> None:
    h1, srv1, _ = sides
    h1.natt.route(outbound_spi(h1), (SRV1, NATT_PORT))
    h1.kernel.write(REQUEST)
    h1.datapath.pump_outbound()
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind((H1, 0))
    good = _sent_esp(h1)
    for datagram in (NON_ESP_MARKER, (7).to_bytes(4, "big") + bytes(20), b"\x01\x02", good[:6],
                     good[:-1] + bytes([good[-1] ^ 1]), good, good, (0xDEAD).to_bytes(4, "big") + good[4:]):
        attacker.sendto(datagram, (SRV1, NATT_PORT))
    srv1.datapath.pump_inbound(srv1.natt)
    attacker.close()
    assert [srv1.kernel.read() for _ in range(3)] == [REQUEST, REQUEST, None]  # sequence numbers 1 and 2, once each
    assert srv1.datapath.counters.drops == {
        "natt_truncated_ike": 1, "natt_reserved_spi": 1, "natt_short": 1, "natt_truncated_esp": 1,
        DropReason.REPLAY: 1, DropReason.BAD_ICV: 1, DropReason.NO_SA: 1,
    }


def _sent_esp(h1: Side) -> bytes:
    """Capture what h1 sends for REQUEST by sending it once more to a socket of our own."""
    catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    catcher.bind(("127.0.0.3", NATT_PORT))
    h1.natt.route(outbound_spi(h1), ("127.0.0.3", NATT_PORT))
    h1.kernel.write(REQUEST)
    h1.datapath.pump_outbound()
    data = catcher.recv(65535)
    catcher.close()
    return data


def test_keepalive_is_20_seconds_unless_configured() -> None:
    base = {"role": "responder", "local_id": "srv1.natlab", "psk": "x" * 16, "local_ts": ["203.0.113.100"],
            "remote_ts": ["0.0.0.0/0"]}
    assert parse_ike(base).keepalive == KEEPALIVE_INTERVAL == 20.0
    assert parse_ike({**base, "keepalive": 2}).keepalive == 2.0


def test_ah_with_nat_t_is_refused_at_config_time_naming_the_field() -> None:
    table = {"role": "initiator", "peer": "203.0.113.100", "local_id": "h1.natlab", "psk": "x" * 16,
             "ah": ["sha256"], "force_encap": True, "local_ts": ["10.0.0.1"], "remote_ts": ["203.0.113.100"]}
    with pytest.raises(IkeConfigError, match=r"force_encap=true with ah=\['sha256'\]: AH cannot be UDP-encapsulated"):
        parse_ike(table)


def test_a_lone_ff_is_a_keepalive_byte() -> None:
    assert KEEPALIVE == b"\xff"
