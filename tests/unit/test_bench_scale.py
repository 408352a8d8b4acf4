"""``natlab bench scale``'s pure parts: its arguments, the figures from given measurements, the table and plot;
and that the addressing plan and the suite's configs hold its largest step."""

from __future__ import annotations

import argparse
import json
import math

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from client_agent.agent_leases import wanted_leases
from conformance import scale_report
from conformance.bench_scale import CELL, GLOBALS, IPERF_BASE, read_esp, read_pcp
from conformance.matrix import FIRST_PORT, behind_nat, clients
from conformance.plots import scale_steps
from conformance.scale_report import (
    Datagram,
    cpu_share,
    first_protected,
    format_table,
    goal_met,
    iperf3_result,
    lease_exchange,
    parse_seconds,
    parse_steps,
    path_share,
    step_row,
)
from nat_app.config import NatConfig
from natlab.cli import build_parser
from netwire import pcp
from netwire.pcp import Opcode, Result
from netwire.plan import GATEWAY_IP, MAX_HOSTS, client_ip, global_ips, server_ip

NONCE = bytes(range(12))


# ----------------------------------------------------------------------------- arguments


def test_steps_parse_as_increasing_client_counts():
    assert parse_steps("1,8,32,64") == (1, 8, 32, 64)
    assert parse_steps("64") == (64,)
    assert parse_steps(f"1,{MAX_HOSTS}") == (1, MAX_HOSTS)


@pytest.mark.parametrize("text, why", [
    ("0,8", "outside 1..99"), ("1,100", "outside 1..99"), ("-1", "outside"), ("8,1", "more clients"),
    ("1,1", "more clients"), ("a,b", "whole numbers"), ("", "whole numbers"), ("1,,2", "whole numbers"),
    ("1.5", "whole numbers"),
])
def test_steps_that_cannot_run_are_refused_with_a_reason(text, why):
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        parse_steps(text)


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "61", "x", ""])
def test_seconds_out_of_bounds_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_seconds(text)


def test_the_command_line_refuses_a_bad_step_before_any_testbed(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bench", "scale", "--steps", "1,200"])
    assert exit_.value.code == 2 and "outside 1..99" in capsys.readouterr().err
    args = build_parser().parse_args(["bench", "scale", "--steps", "1,8", "--seconds", "2"])
    assert (args.steps, args.seconds, args.table) == ((1, 8), 2.0, 100_000)
    assert build_parser().parse_args(["bench", "scale"]).steps == (1, 8, 32, 64)


# ----------------------------------------------------------------------------- the largest step fits the plan


def test_sixty_four_clients_fit_the_plan_the_ports_and_the_quota():
    members = clients(64, GLOBALS)
    configs, peer = behind_nat(CELL, members)
    assert len({c.private_ip for c in members}) == 64 and members[-1].private_ip == client_ip(64)
    assert {c.global_ip for c in members} == set(global_ips(GLOBALS))
    assert len({c.spi_in for c in members} | {c.spi_out for c in members}) == 128
    blocks = sorted(c.ports for c in members)
    assert all(a[1] < b[0] for a, b in zip(blocks, blocks[1:], strict=False)) and blocks[0][0] == FIRST_PORT
    assert blocks[-1][1] < 32768  # below Linux's ephemeral range: no local socket of a client takes one
    per_client = {len(wanted_leases(c)) for c in configs}
    assert per_client == {33} and max(per_client) <= NatConfig().lease_quota  # 1 SPI, 16 TCP + 16 UDP ports
    assert len(peer.sas) == 128 and len(peer.policies) == 64
    assert IPERF_BASE + 63 < 65536


# ----------------------------------------------------------------------------- figures from measurements


def _request(src: str, t: float) -> Datagram:
    info = pcp.LeaseInfo(NONCE, 50, 0x5001, 0x5001, global_ips(1)[0], server_ip(1))
    return Datagram(t, src, GATEWAY_IP, pcp.encode_request(pcp.Request(Opcode.LEASE, 120, src, info)))


def _answer(dst: str, t: float, opcode=Opcode.LEASE, result=Result.SUCCESS, lifetime=120) -> Datagram:
    info = None
    if result is Result.SUCCESS and opcode is Opcode.LEASE:
        info = pcp.LeaseInfo(NONCE, 50, 0x5001, 0x5001, global_ips(1)[0], server_ip(1))
    elif result is Result.SUCCESS and opcode is Opcode.PEER:
        info = pcp.PeerInfo(NONCE, 6, 20000, 20000, global_ips(1)[0], 0, server_ip(1))
    body = pcp.encode_response(pcp.Response(opcode, result, lifetime, 7, info))
    return Datagram(t, GATEWAY_IP, dst, body)


def test_lease_rate_is_grants_over_first_request_to_last_grant():
    a, b = client_ip(1), client_ip(2)
    wire = [_request(a, 10.0), _answer(a, 10.1), _request(b, 10.5), _answer(b, 11.0, Opcode.PEER),
            _answer(a, 12.0, Opcode.PEER), _request(a, 10.2)]
    figures = lease_exchange(wire, GATEWAY_IP)
    assert figures["grants"] == 3 and figures["span_s"] == 2.0 and figures["per_second"] == 1.5
    assert figures["clients_asking"] == figures["clients_granted"] == 2
    assert figures["per_client_s"] == {"median": 1.25, "max": 2.0}  # a: 10.0 -> 12.0, b: 10.5 -> 11.0
    assert figures["refused"] == {} and figures["undecodable"] == 0


def test_refusals_releases_and_definitions_are_not_grants():
    a = client_ip(1)
    wire = [_request(a, 1.0), _answer(a, 1.1, result=Result.USER_EX_QUOTA, lifetime=30),
            _answer(a, 1.2, result=Result.NOT_AUTHORIZED, lifetime=30), _answer(a, 1.3, lifetime=0),
            _answer(a, 1.4, Opcode.PEER, lifetime=0)]  # releases: success with lifetime 0
    figures = lease_exchange(wire, GATEWAY_IP)
    assert figures["grants"] == 0 and figures["per_second"] == 0.0 and figures["clients_granted"] == 0
    assert figures["refused"] == {"NOT_AUTHORIZED": 1, "USER_EX_QUOTA": 1}


@pytest.mark.parametrize("payload", [b"", b"\x02", b"\x02\x81", bytes(24), b"\x02\x81\x00\x00" + bytes(20),
                                     b"\x00\x80\x00\x00" + bytes(8), bytes(1100)])
def test_answers_that_do_not_decode_are_counted_never_trusted(payload):
    wire = [_request(client_ip(1), 1.0), Datagram(1.5, GATEWAY_IP, client_ip(1), payload)]
    figures = lease_exchange(wire, GATEWAY_IP)
    assert figures["grants"] == 0 and figures["undecodable"] == 1


def test_nothing_captured_gives_no_rate():
    assert lease_exchange([], GATEWAY_IP) == {
        "clients_asking": 0, "clients_granted": 0, "grants": 0, "refused": {}, "undecodable": 0, "span_s": 0.0,
        "per_second": 0.0, "per_client_s": {"median": None, "max": None}}


def test_first_protected_packet_per_client_by_its_spi():
    spis = {0x5000: "h1", 0x5002: "h2", 0x5004: "h3"}
    esp = [(105.0, 0x5002), (103.5, 0x5000), (104.0, 0x5000), (101.0, 0x9999), (102.0, 0x5001)]
    assert first_protected(esp, spis, 100.0) == {"h1": 3.5, "h2": 5.0, "h3": None}


def test_iperf3_output_gives_goodput_or_an_error():
    good = json.dumps({"end": {"sum_received": {"bits_per_second": 1.5e8, "bytes": 93_750_000}}})
    assert iperf3_result("Connecting...\n" + good) == {"bps": 1.5e8, "bytes": 93_750_000}
    failed = iperf3_result(json.dumps({"start": {}, "error": "unable to connect to server"}))
    assert failed["bps"] == 0.0 and failed["error"] == "unable to connect to server"
    for junk in ("", "iperf3: error - no route", "{", '{"end": 3}', "[1, 2]"):
        assert iperf3_result(junk)["bps"] == 0.0 and iperf3_result(junk)["error"]


def test_path_and_cpu_shares():
    assert path_share({"fast_path": 300, "slow_path": 100}) == 0.75
    assert path_share({"fast_path": 0, "slow_path": 0}) is None
    assert cpu_share({"cpu": 1.0, "wall": 10.0}, {"cpu": 2.5, "wall": 12.0}) == 0.75
    assert cpu_share({"cpu": 1.0, "wall": 10.0}, {"cpu": 1.0, "wall": 10.0}) is None


def _raw(n: int = 2, **changes) -> dict:
    names = [f"h{i + 1}" for i in range(n)]
    raw = {
        "clients": n, "t0": 0.0,
        "launch": {"running": {h: 1.0 for h in names}, "failed": {}},
        "leases": {"grants": 33 * n, "per_second": 800.0, "refused": {}},
        "first_protected": {h: 2.0 + i for i, h in enumerate(names)},
        "accepted_by_peer": names,
        "table": {"entries": 33 * n, "client_alg": 33 * n, "slow": 0},
        "controller": {"rss_kib": 102_400, "hwm_kib": 110_000, "cpu_leases": 0.9},
        "cpu_traffic": {"controller": 0.5, "srv1_agent": 0.95, "ovs": 0.4},
        "iperf3": {h: {"bps": 5e7, "bytes": 1} for h in names},
        "path": {"fast_path": 900, "slow_path": 100, "to_controller": 120},
        "agents": {h: {"granted": 33, "lost": 0} for h in names}, "leftover": 0,
        "ovs_drops_traffic": {"rconn_overflow": 0, "datapath_drop_userspace_action_error": 0},
    }
    raw.update(changes)
    return raw


def test_a_step_row_from_given_measurements():
    row = step_row(_raw())
    assert row == {
        "clients": 2, "refused": 0, "lost": 0, "left_after_release": 0, "leases_granted": 66,
        "leases_granted_by_agents": 66, "leases_per_s": 800.0,
        "lease_refusals": 0, "table_entries": 66, "controller_rss_mib": 100.0, "controller_cpu_leases": 0.9,
        "controller_cpu_traffic": 0.5, "srv1_agent_cpu_traffic": 0.95, "ovs_cpu_traffic": 0.4,
        "goodput_mbit": 100.0, "iperf3_failed": 0, "fast_share": 0.9, "packet_ins": 120, "slow_path_packets": 100,
        "ovs_drops_traffic": 0,
        "unprotected": 0, "first_protected_s": 3.0}
    assert goal_met(row)


def test_a_refused_client_a_lost_lease_or_an_unprotected_one_misses_the_goal():
    refused = _raw(launch={"running": {"h1": 1.0}, "failed": {"h2": "exited with 1: USER_EX_QUOTA"}},
                   iperf3={"h1": {"bps": 5e7, "bytes": 1}})
    row = step_row(refused)
    assert row["refused"] == 1 and row["iperf3_failed"] == 1 and not goal_met(row)
    lost = step_row(_raw(agents={"h1": {"lost": 2}, "h2": {"lost": 0}}))
    assert lost["lost"] == 2 and not goal_met(lost)
    rejected = step_row(_raw(accepted_by_peer=["h1"]))  # h2's ESP reached srv1's wire, its agent accepted none
    assert rejected["unprotected"] == 1 and rejected["first_protected_s"] is None and not goal_met(rejected)
    unseen = step_row(_raw(first_protected={"h1": 2.0, "h2": None}))
    assert unseen["unprotected"] == 1 and not goal_met(unseen)


def test_the_table_shows_every_step_and_its_verdict():
    rows = [step_row(_raw(1)), step_row(_raw(2, leftover=3, agents={"h1": {"lost": 1}, "h2": {}}))]
    rows[1]["fast_share"] = None
    text = format_table(rows, 5)
    lines = text.splitlines()
    assert "5 s of iperf3" in lines[0] and "clients" in lines[1] and "leases/s" in lines[1]
    assert lines[2].rstrip().endswith("met") and not lines[2].rstrip().endswith("NOT met")
    assert lines[3].rstrip().endswith("NOT met") and " - " in lines[3]  # no translated packets: no share
    assert "100.0%" not in lines[2] and "90.0%" in lines[2]


def test_the_plot_is_a_png_even_with_missing_figures():
    rows = [step_row(_raw(1)), step_row(_raw(2, first_protected={"h1": None, "h2": None}))]
    png = scale_steps(rows)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


# ----------------------------------------------------------------------------- the shell's capture readers


def test_captures_are_read_by_scapy(tmp_path):
    request = _request(client_ip(3), 0.0).payload
    frames = [Ether() / IP(src=client_ip(3), dst=GATEWAY_IP) / UDP(sport=5350, dport=5351) / request,
              Ether() / IP(src=global_ips(1)[0], dst=server_ip(1)) / ESP(spi=0x5004, seq=1, data=b"x" * 40),
              Ether() / IP(src=client_ip(3), dst=server_ip(1), proto=6) / b"not udp"]
    for i, frame in enumerate(frames):
        frame.time = 1000.0 + i
    wrpcap(str(tmp_path / "c.pcap"), frames)
    (pcp_datagram,) = read_pcp(tmp_path / "c.pcap")
    assert (pcp_datagram.src, pcp_datagram.dst, pcp_datagram.payload) == (client_ip(3), GATEWAY_IP, request)
    assert math.isclose(pcp_datagram.time, 1000.0)
    assert read_esp(tmp_path / "c.pcap") == [(1001.0, 0x5004)]
    assert scale_report.MAX_SECONDS >= 5


def test_a_profile_summary_in_one_line():
    summary = {"busy_seconds": 4.25, "share": {"crypto": 0.1, "syscalls": 0.3, "python": 0.6},
               "top": [{"function": "/x/client_agent/datapath.py:10(run)", "share": 0.2}]}
    line = scale_report.format_profile("srv1's agent", summary)
    assert line == ("srv1's agent under cProfile: busy 4.2 s, crypto 10%, system calls 30%, Python 60%; "
                    "top: datapath.py:10(run) 20%")
