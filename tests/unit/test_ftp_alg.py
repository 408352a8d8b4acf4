"""The client's FTP ALG through a Traversal: active FTP inside ESP/AH behind the extensible NAT (steps 813, 822).

Every cell of {ESP AES-GCM, ESP AES-CBC+HMAC-SHA1, AH HMAC-SHA1-96, AH
HMAC-SHA-256-128} x {transport, tunnel}: the client's PORT/EPRT reaches the
NAT-unaware peer naming the global address and a global port of the block
(OUT-ALG, claims 1, 7, 19, 27, 33), the server's data connection to that port
reaches the private port the client listens on, and the server's ACKs, which
count the rewritten bytes, come back in the sequence space the client's stack
sent (IN-ALG, claims 2, 13, 25, 28, 39). scapy judges checksums over the
addresses each receiver sees.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from client_agent.agent import traversal_of
from client_agent.agent_config import load
from client_agent.alg import AlgRegistry
from client_agent.ftp_alg import FtpAlg
from client_agent.ipsec.sa import Mode
from netwire.ftp import FTP_CONTROL_PORT, parse_data_command
from netwire.ipv4 import IPPROTO_TCP
from tests.unit.test_traversal import GLOBAL, PRIVATE, checksum_verifies, far_end, in_block, pair

ROOT = Path(__file__).resolve().parents[2]
CELLS = [pytest.param(s, m, id=f"{s}-{m}") for s in ("esp-gcm", "esp-cbc-sha1", "ah-sha1", "ah-sha256") for m in Mode]
CONTROL_PORT, LISTEN_PORT, ISN, SERVER_ISN = 40000, 45000, 0xFFFFFFF0, 7000  # the client's ISN wraps past 2^32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ftp_pair(suite_key: str, mode: Mode, *, alg: bool = True, clock: Clock | None = None, **traversal):
    client, peer = pair(suite_key, mode, algs=AlgRegistry(), clock=clock or Clock(), **traversal)
    if alg:
        t = client.traversal
        t.algs.register(IPPROTO_TCP, FTP_CONTROL_PORT, FtpAlg(t.blocks[IPPROTO_TCP], clock=t.clock,
                                                               expect_timeout=60, counters=t.algs.counters))
    return client, peer


def to_server(mode, seq: int, payload: bytes = b"", flags: str = "PA", ack: int = SERVER_ISN + 1) -> bytes:
    return bytes(IP(src=PRIVATE, dst=far_end(mode)) /
                 TCP(sport=CONTROL_PORT, dport=FTP_CONTROL_PORT, seq=seq % 2**32, ack=ack, flags=flags) / payload)


def from_server(mode, gport: int, ack: int, payload: bytes = b"", sport: int = FTP_CONTROL_PORT,
                flags: str = "PA", seq: int = SERVER_ISN + 1) -> bytes:
    return bytes(IP(src=far_end(mode), dst=GLOBAL) / TCP(sport=sport, dport=gport, seq=seq, ack=ack, flags=flags)
                 / payload)


def handshake(client, peer, mode) -> int:
    """SYN through the client's module; the global port the server saw."""
    seen = IP(peer.receive(client.send(to_server(mode, ISN, flags="S", ack=0))))
    return seen[TCP].sport


@pytest.mark.parametrize(("suite_key", "mode"), CELLS)
@pytest.mark.parametrize("command", [b"PORT 10,0,0,1,175,200\r\n", b"EPRT |1|10.0.0.1|45000|\r\n"])
def test_out_alg_the_server_reads_the_global_address_and_a_block_port_in_port_and_eprt_claims_1_7_step_813(
        suite_key, mode, command):
    client, peer = ftp_pair(suite_key, mode)
    handshake(client, peer, mode)
    delivered = IP(peer.receive(client.send(to_server(mode, ISN + 1, command))))
    seen = parse_data_command(bytes(delivered[TCP].payload))
    assert seen is not None and seen.ip == GLOBAL and in_block(seen.port)  # what pyftpdlib will accept
    assert seen.port != delivered[TCP].sport  # a port of its own, bound to the listening one
    assert checksum_verifies(bytes(delivered)) and delivered.len == len(bytes(delivered))
    assert client.traversal.blocks[IPPROTO_TCP].lookup(seen.port, 0).private_port == LISTEN_PORT
    assert client.traversal.algs.counters["ftp:out"] == 2
    assert client.traversal.algs.counters[f"ftp:{command[:4].decode()}"] == 1  # what status.json shows


@pytest.mark.parametrize(("suite_key", "mode"), CELLS)
def test_in_alg_the_data_connection_reaches_the_listening_port_and_acks_come_back_unshifted_claims_2_13_step_822(
        suite_key, mode):
    client, peer = ftp_pair(suite_key, mode)
    control_gport = handshake(client, peer, mode)
    command = b"PORT 10,0,0,1,175,200\r\n"
    delivered = IP(peer.receive(client.send(to_server(mode, ISN + 1, command))))
    rewritten = bytes(delivered[TCP].payload)
    data_gport = parse_data_command(rewritten).port
    # the server acknowledges the rewritten bytes and answers: the client's stack sees its own sequence space
    r_end = (ISN + 1 + len(rewritten)) % 2**32
    back = IP(client.receive(peer.send(from_server(mode, control_gport, r_end, b"200 Active data connection\r\n"))))
    assert back[TCP].ack == (ISN + 1 + len(command)) % 2**32 and back[TCP].dport == CONTROL_PORT
    assert checksum_verifies(bytes(back))
    # the server's data connection to the global port is admitted and lands on the listening port
    syn = IP(client.receive(peer.send(from_server(mode, data_gport, 0, sport=20, flags="S", seq=99))))
    assert syn.dst == PRIVATE and syn[TCP].dport == LISTEN_PORT and checksum_verifies(bytes(syn))
    # the client's next command is shifted by what the rewrite added, and the reply to the SYN goes out
    nxt = IP(peer.receive(client.send(to_server(mode, (ISN + 1 + len(command)) % 2**32, b"LIST\r\n"))))
    assert nxt[TCP].seq == r_end and checksum_verifies(bytes(nxt))
    synack = bytes(IP(src=PRIVATE, dst=far_end(mode)) / TCP(sport=LISTEN_PORT, dport=20, seq=5, ack=100, flags="SA"))
    assert IP(peer.receive(client.send(synack)))[TCP].sport == data_gport


def test_control_without_the_ftp_alg_the_server_reads_the_private_address_claim_7():
    """Negative twin of OUT-ALG: what pyftpdlib rejects ("501 Rejected data connection to foreign address")."""
    client, peer = ftp_pair("esp-gcm", Mode.TRANSPORT, alg=False)
    handshake(client, peer, Mode.TRANSPORT)
    delivered = IP(peer.receive(client.send(to_server(Mode.TRANSPORT, ISN + 1, b"PORT 10,0,0,1,175,200\r\n"))))
    assert parse_data_command(bytes(delivered[TCP].payload)).ip == PRIVATE
    assert client.traversal.blocks[IPPROTO_TCP].lookup(20001, 0) is None  # nothing expected


def test_a_port_command_split_across_two_segments_is_sent_whole_with_the_second():
    client, peer = ftp_pair("esp-gcm", Mode.TRANSPORT)
    handshake(client, peer, Mode.TRANSPORT)
    first = IP(peer.receive(client.send(to_server(Mode.TRANSPORT, ISN + 1, b"TYPE I\r\nPORT 10,0,0"))))
    assert bytes(first[TCP].payload) == b"TYPE I\r\n"  # the partial command is held
    second = IP(peer.receive(client.send(to_server(Mode.TRANSPORT, ISN + 1 + 19, b",1,175,200\r\n"))))
    assert second[TCP].seq == (ISN + 1 + 8) % 2**32
    assert parse_data_command(bytes(second[TCP].payload)).ip == GLOBAL and checksum_verifies(bytes(second))


def test_an_unanswered_port_offer_frees_its_global_port_after_the_expect_timeout():
    clock = Clock()
    client, peer = ftp_pair("esp-gcm", Mode.TRANSPORT, clock=clock, block=(20000, 20001))
    handshake(client, peer, Mode.TRANSPORT)  # the control connection takes 20000
    client.send(to_server(Mode.TRANSPORT, ISN + 1, b"PORT 10,0,0,1,175,200\r\n"))  # 20001 expected
    block = client.traversal.blocks[IPPROTO_TCP]
    clock.now += 30
    alg = client.traversal.algs.lookup(IPPROTO_TCP, FTP_CONTROL_PORT)
    assert alg.expected(46000) is None  # the block is full, the offer still stands
    clock.now += 31
    assert alg.expected(46000) == 20001 and block.reclaimed == 1  # 61 s: the offer lapsed, the port is free


def test_a_full_block_leaves_the_command_alone_and_counts_it():
    client, peer = ftp_pair("esp-gcm", Mode.TRANSPORT, block=(20000, 20000))
    handshake(client, peer, Mode.TRANSPORT)
    delivered = IP(peer.receive(client.send(to_server(Mode.TRANSPORT, ISN + 1, b"PORT 10,0,0,1,175,200\r\n"))))
    assert parse_data_command(bytes(delivered[TCP].payload)).ip == PRIVATE
    assert client.traversal.algs.lookup(IPPROTO_TCP, FTP_CONTROL_PORT).counters["ftp:no-global-port"] == 1


def test_the_example_config_runs_the_ftp_alg_on_tcp_21():
    traversal = traversal_of(load(ROOT / "client_agent" / "examples" / "esp-transport-nat-h1.toml"))
    assert traversal.algs.lookup(IPPROTO_TCP, FTP_CONTROL_PORT).name == "ftp"
