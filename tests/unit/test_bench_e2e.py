"""The pure parts of ``natlab bench e2e``: its configs, NAT-path deltas, core packets and figures, the table."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP

from client_agent.agent_config import INBOUND, OUTBOUND
from conformance import bench_e2e
from conformance.bench_e2e import NAT, PLAIN, checksum_ok, configs, nat_path, transport_packet, with_destination
from netwire.ipv4 import IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP


def test_both_modes_use_the_same_peers_suite_and_tun_mtu():
    pairs = configs()
    (nat_h1, nat_srv1), (plain_h1, plain_srv1) = pairs[NAT], pairs[PLAIN]
    assert [c.name for c in (nat_h1, nat_srv1, plain_h1, plain_srv1)] == ["h1", "srv1", "h1", "srv1"]
    assert nat_h1.nat is not None and nat_srv1.nat is None and plain_h1.nat is None and plain_srv1.nat is None
    mtus = {c.tun_mtu() for c in (nat_h1, nat_srv1, plain_h1, plain_srv1)}
    assert mtus == {nat_h1.mtu} and nat_h1.mtu < 1500
    suites = {(s.sa.protocol, s.sa.mode, s.sa.encryption, s.sa.integrity)
              for c in (nat_h1, nat_srv1, plain_h1, plain_srv1) for s in c.sas}
    assert len(suites) == 1
    assert plain_h1.routes == ("203.0.113.100/32",) and plain_srv1.routes == ("10.0.0.1/32",)


def test_every_run_gets_fresh_keys():
    first, second = configs()[NAT][0], configs()[NAT][0]
    key = {s.direction: s.sa.enc_key for s in first.sas}
    assert all(key[s.direction] != s.sa.enc_key for s in second.sas)
    assert {INBOUND, OUTBOUND} == set(key)


def test_nat_path_is_the_difference_of_two_snapshots():
    before = {"switch_packets": {"fast path": 10, "bypass": 5, "table miss": 3},
              "counters": {"slow_path_packets": 2, "packet_in": 7}, "entries": []}
    after = {"switch_packets": {"fast path": 1010, "bypass": 5, "table miss": 4},
             "counters": {"slow_path_packets": 2, "packet_in": 9},
             "entries": [{"protocol": IPPROTO_ESP, "path": "fast"}, {"protocol": IPPROTO_TCP, "path": "fast"}]}
    assert nat_path(before, after) == {"fast_path": 1000, "slow_path": 0, "bypass": 0, "to_controller": 2,
                                       "esp_entries": ["fast"]}
    assert nat_path({}, {})["fast_path"] == 0


def test_the_core_packets_are_what_scapy_reads():
    for protocol, layer in ((IPPROTO_TCP, TCP), (IPPROTO_UDP, UDP)):
        raw = transport_packet(protocol, "10.0.0.1", "203.0.113.100", 45000, 5201, 1400)
        assert len(raw) == 1400 and checksum_ok(raw, "10.0.0.1", "203.0.113.100")
        assert not checksum_ok(raw, "203.0.113.1", "203.0.113.100")
        pkt = IP(raw)
        assert (pkt[layer].sport, pkt[layer].dport) == (45000, 5201)
        del pkt[IP].chksum, pkt[layer].chksum
        assert bytes(IP(bytes(pkt))) == raw  # scapy recomputes the same checksums
        moved = with_destination(raw, "10.0.0.9")
        assert IP(moved).dst == "10.0.0.9" and bytes(IP(moved)) == moved


def test_core_figures_time_compensation_next_to_esp(monkeypatch):
    monkeypatch.setattr(bench_e2e, "CORE_REPEAT", 1)
    monkeypatch.setattr(bench_e2e, "CORE_BATCH", 8)
    row = bench_e2e.core_figures(IPPROTO_TCP, 200, budget=0.001)
    assert row["protocol"] == "tcp" and row["size"] == 200 and row["wire_size"] > 200
    assert all(v > 0 for v in row["us_per_packet"].values())
    assert all(0 < v < 1 for v in row["compensation_share"].values())


def test_the_table_names_both_paths_and_the_ratio():
    path = {"fast_path": 1000, "slow_path": 0, "bypass": 0, "to_controller": 1, "esp_entries": ["fast"]}
    run = {"bps": 2e8, "nat_path": path}
    plain = {"bps": 2.5e8, "nat_path": {**path, "fast_path": 0, "bypass": 1200, "esp_entries": []}}
    cpu = {"h1": {"user": 1.0, "system": 2.0}, "srv1": {"user": 1.0, "system": 2.0}}
    core = {"protocol": "tcp", "size": 1400, "us_per_packet": {"before_protect": 1, "encapsulate": 3,
                                                               "decapsulate": 3, "after_unprotect": 1},
            "compensation_share": {"outbound": 0.25, "inbound": 0.25}}
    text = bench_e2e.format_tables({
        "suite": "esp:AES_GCM_16-128:NONE", "mode": "transport", "tun_mtu": 1463,
        "iperf3_tcp": {NAT: [run], PLAIN: [plain]}, "median_bps": {NAT: 2e8, PLAIN: 2.5e8},
        "ratio_nat_to_plain": {"per_round": [0.8], "of_medians": 0.8, "median_of_rounds": 0.8},
        "agent_cpu_us_per_packet": {NAT: cpu, PLAIN: cpu}, "core": [core]})
    assert "0.80" in text and "1,000" in text and "1,200" in text and "25%" in text and "fast" in text


def test_the_agents_extra_cpu_is_set_next_to_the_core_at_the_runs_mix():
    def run(user, out=0, into=0):
        return {"cpu_us_per_packet": {"h1": {"user": user}}, "compensated": {"compensated_out": out,
                                                                              "compensated_in": into}}
    runs = {NAT: [run(60, 300, 100), run(70, 300, 100), run(65, 0, 0)], PLAIN: [run(30), run(20), run(25)]}
    core = [{"protocol": "udp", "us_per_packet": {"before_protect": 99, "after_unprotect": 99}},
            {"protocol": "tcp", "us_per_packet": {"before_protect": 12, "after_unprotect": 8}}]
    assert bench_e2e.compensation_in_the_agent(runs, core) == {"agent_extra_user": 40.0, "core": 11.0}
