"""What the report's first screen and plots show, from recorded data (tests/vectors/report-run: a real
``natlab demo`` run's results.jsonl, its paths line, and the PCP frames of CL-RENEW's capture of h1's wire)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance import plots, registry, report_data
from conformance.report_data import NO_CELL, NOT_RUN, LeaseEvent
from conformance.results import ScenarioResult, read_results
from netwire.pcp import SERVER_PORT

RUN = Path(__file__).resolve().parents[1] / "vectors" / "report-run"
REG = registry.load()
PNG = b"\x89PNG\r\n\x1a\n"


def res(behaviour: str, verdict: str = "pass", cell: dict | None = None, control: bool = False) -> ScenarioResult:
    return ScenarioResult(behaviour=behaviour, scenario="s", verdict=verdict, started="2026-01-01T00:00:00+00:00",
                          cell=cell, control=control, reason="" if verdict == "pass" else "broke")


def test_a_cell_is_as_bad_as_its_worst_result_and_not_run_without_any():
    assert report_data.cell_verdict([]) == NOT_RUN
    assert report_data.cell_verdict([res("NAT-IN"), res("NAT-IN", "fail")]) == "fail"
    assert report_data.cell_verdict([res("NAT-IN", "fail"), res("NAT-IN", "error")]) == "error"
    assert report_data.cell_verdict([res("NAT-IN"), res("NAT-IN")]) == "pass"


def test_the_matrix_has_a_square_per_cell_for_matrix_behaviours_and_one_otherwise():
    esp = {"ipsec": "ESP", "mode": "tunnel", "transport": "UDP"}
    results = [res("OUT-CSUM", cell=esp), res("OUT-CSUM", "fail", cell=esp, control=True), res("NAT-IN")]
    matrix = report_data.verdict_matrix(REG, results)
    assert list(matrix) == list(REG.behaviour_ids())
    assert matrix["OUT-CSUM"]["ESP/tunnel/UDP"] == "pass"  # a control's result never colours a behaviour's cell
    assert matrix["OUT-CSUM"]["AH/tunnel/UDP"] == NOT_RUN and len(matrix["OUT-CSUM"]) == 8
    assert matrix["NAT-IN"] == {NO_CELL: "pass"} and matrix["NAT-OUT"] == {NO_CELL: "not implemented"}
    assert set(matrix["OUT-AH"].values()) == {"not implemented"} and len(matrix["OUT-AH"]) == 8


def test_controls_are_labelled_by_what_they_show():
    assert report_data.control_label("pass") == "failed as predicted"
    assert report_data.control_label("fail") == "did not fail: check failed"
    assert report_data.control_label("not implemented") == "not run"


def test_bench_rounds_read_every_format_and_skip_what_does_not_parse(tmp_path):
    (tmp_path / "bench-nat.json").write_text(json.dumps({"iperf3_tcp_bps": {"nat": [3e8, 2e8], "plain": [4e8]}}))
    (tmp_path / "bench-e2e.json").write_text(json.dumps({"iperf3_tcp": {"nat": [{"bps": 1e8}], "plain": []}}))
    (tmp_path / "bench-leases.json").write_text(json.dumps({"per_second": 1850}))
    (tmp_path / "bench-broken.json").write_text("{not json")
    (tmp_path / "bench-odd.json").write_text(json.dumps({"iperf3_tcp": {"x": [{"no_bps": 1}]}}))
    assert report_data.bench_rounds(tmp_path) == {"e2e": {"nat": [1e8]}, "nat": {"nat": [3e8, 2e8], "plain": [4e8]}}


def test_lease_timeline_of_the_recorded_cl_renew_capture():
    results = read_results(RUN / "results.jsonl")
    capture = report_data.renew_capture(results, RUN)
    assert capture == RUN / "evidence/client-renew/pcap/h1-eth0.pcap"
    events = report_data.lease_events(capture, SERVER_PORT)
    leases = {e.lease for e in events}
    assert len(leases) == 33  # the recorded run: "33 leases of 4 s"
    assert len(events) == 132  # "tshark read 132 PCP grants to h1": its dissector and our codec agree
    first = [e for e in events if e.kind == "first"]
    assert len(first) == 33 and all(e.lifetime == 4 for e in events)
    assert all(e.time >= 0 for e in events) and min(e.time for e in events) == 0
    for lease in leases:  # renewed in place, before expiry: each answer comes while the previous one holds
        mine = sorted((e for e in events if e.lease == lease), key=lambda e: e.time)
        assert all(b.time <= a.time + a.lifetime for a, b in zip(mine, mine[1:], strict=False)), lease


def test_events_name_leases_by_opcode_and_nonce_and_mark_releases():
    answers = [(10.0, "MAP", b"a" * 12, 120), (11.0, "MAP", b"b" * 12, 120), (70.0, "MAP", b"a" * 12, 120),
               (80.0, "MAP", b"a" * 12, 0)]
    assert report_data._events(answers) == [
        LeaseEvent("MAP 1", 0.0, 120, "first"), LeaseEvent("MAP 2", 1.0, 120, "first"),
        LeaseEvent("MAP 1", 60.0, 120, "renew"), LeaseEvent("MAP 1", 70.0, 0, "release")]


def test_path_shares_from_the_runners_line():
    environment = json.loads((RUN / "environment.json").read_text())
    assert report_data.path_shares(environment) == {"fast": 83532, "slow": 12504, "to_controller": 1767}
    assert report_data.path_shares({"NAT paths": "not measured"}) is None


@pytest.mark.parametrize("draw", [
    lambda: plots.verdict_matrix(report_data.verdict_matrix(REG, []), [*report_data.cell_labels(), NO_CELL]),
    lambda: plots.throughput({"nat": {"nat": [3e8, 3.2e8], "plain": [3.4e8]}}),
    lambda: plots.lease_timeline([LeaseEvent("MAP 1", 0, 4, "first"), LeaseEvent("MAP 1", 2, 0, "release")]),
    lambda: plots.path_shares({"fast": 0, "slow": 0, "to_controller": 0}),
])
def test_every_plot_is_a_png(draw):
    assert draw().startswith(PNG)


def test_lease_timeline_from_the_grants_to_the_releases():
    """A CL-RENEW capture that began before the agent (tests/vectors/report-renew-grants.pcap): every lease
    is granted, renewed in place and released; the agent's DEFINE (lifetime 0: it lives by its leases)
    is no lease and stays off the timeline."""
    events = report_data.lease_events(RUN.parent / "report-renew-grants.pcap", SERVER_PORT)
    by_lease: dict[str, list[str]] = {}
    for e in events:
        by_lease.setdefault(e.lease, []).append(e.kind)
    assert len(by_lease) == 33 and not any(name.startswith("DEFINE") for name in by_lease)
    for lease, kinds in by_lease.items():
        assert kinds[0] == "first" and kinds[-1] == "release" and set(kinds[1:-1]) == {"renew"}, lease
