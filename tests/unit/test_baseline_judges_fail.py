"""The baseline group's judges (conformance/scenarios/baseline.py) fail on evidence without NAT-T.

Each judge is fed a run built by hand: first one in which NAT-T worked (it must pass), then the same
run with one thing taken away (raw ESP, no keepalive, a bad ICV, curl failing, charon not seeing
the NAT), which must fail for that reason. The no-NAT control passes only for its predicted reason.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conformance.context import Record
from conformance.natt_peers import NattWire
from conformance.scenarios.baseline import NattRun, judge_natt, judge_no_nat, judge_strongswan

WORKED = NattWire(esp_in_udp_to_srv1=40, esp_in_udp_from_srv1=30, keepalives=1, icv_good=70)
RAW = NattWire(raw_esp=12)  # no NAT: nothing floated to 4500


def _record(tmp_path: Path) -> Record:
    return Record(ctx=None, scenario="baseline", folder=tmp_path)


def _run(wire: NattWire = WORKED, fetched: bool = True, **kw) -> NattRun:
    return NattRun(fetched, wire, {"h1": 0, "srv1": 0}, **kw)


def test_natt_judge_passes_when_esp_rides_in_udp_with_keepalives_and_good_icvs(tmp_path):
    result = judge_natt(_record(tmp_path), "BASE-NATT", "natlab-natlab", _run(), "srv1")
    assert result.verdict == "pass", result.reason


@pytest.mark.parametrize(("change", "reason"), [
    ({"raw_esp": 3}, "raw ESP"),
    ({"esp_in_udp_from_srv1": 0}, "ESP-in-UDP"),
    ({"keepalives": 0}, "keepalives"),
    ({"icv_bad": 1}, "tshark"),
    ({"icv_good": 10}, "tshark"),
    ({"private_sources": 1}, "private address"),
    ({"marker_seen": True}, "in clear"),
], ids=["raw-esp", "one-way", "no-keepalive", "bad-icv", "unverified-icvs", "private-source", "cleartext"])
def test_natt_judge_fails_without_each_capture_property(tmp_path, change, reason):
    run = _run(dataclasses.replace(WORKED, **change))
    result = judge_natt(_record(tmp_path), "BASE-NATT", "natlab-natlab", run, "srv1")
    assert result.verdict == "fail" and reason in result.reason, result.reason


def test_natt_judge_fails_when_curl_fails_or_an_agent_exits_badly(tmp_path):
    assert judge_natt(_record(tmp_path), "BASE-NATT", "x", _run(fetched=False), "srv1").verdict == "fail"
    bad_exit = NattRun(True, WORKED, {"h1": 1})
    assert "exited 1" in judge_natt(_record(tmp_path), "BASE-NATT", "x", bad_exit, "srv1").reason


def test_natt_judge_fails_on_an_empty_wire(tmp_path):
    assert judge_natt(_record(tmp_path), "BASE-NATT", "x", _run(NattWire()), "srv1").verdict == "fail"


def test_strongswan_judge_needs_charons_own_account_of_the_nat_and_the_encapsulation(tmp_path):
    said = ["09[IKE] remote host is behind NAT", "  natlab: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128"]
    assert judge_strongswan(_record(tmp_path), _run(peer_log=said)).verdict == "pass"
    for missing in said:
        result = judge_strongswan(_record(tmp_path), _run(peer_log=[s for s in said if s != missing]))
        assert result.verdict == "fail" and result.behaviour == "BASE-SWAN", missing
    assert judge_strongswan(_record(tmp_path), _run(RAW, peer_log=said)).verdict == "fail"


def test_strongswan_judge_fails_when_ping_or_iperf3_fails_either_way(tmp_path):
    """BASE-SWAN runs ping, curl and iperf3 started from either side: each of both_ways_checks' failures fails it."""
    from conformance.natt_peers import IPERF3_FLOOR, WAYS, both_ways_checks

    said = ["09[IKE] remote host is behind NAT", "  natlab: #1, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128"]
    seen: dict[str, str | int] = {}
    for way in WAYS:
        seen |= {f"ping {way}": "3 packets transmitted, 3 received, 0% packet loss", f"curl {way}": "m" * 10,
                 f"iperf3 {way}": IPERF3_FLOOR}
    assert judge_strongswan(_record(tmp_path), _run(peer_log=said, apps=both_ways_checks(seen, "m" * 10))).verdict \
        == "pass"
    for key, broken in [(f"ping {WAYS[1]}", "3 packets transmitted, 2 received, 33% packet loss"),
                        (f"curl {WAYS[1]}", ""), (f"iperf3 {WAYS[0]}", IPERF3_FLOOR - 1)]:
        result = judge_strongswan(_record(tmp_path), _run(peer_log=said, apps=both_ways_checks(seen | {key: broken},
                                                                                              "m" * 10)))
        assert result.verdict == "fail" and key.split()[0] in result.reason, (key, result.reason)


def test_no_nat_control_passes_only_for_raw_esp_with_the_application_working(tmp_path):
    ok = judge_no_nat(_record(tmp_path), _run(RAW))
    assert ok.control and ok.verdict == "pass", ok.reason
    assert judge_no_nat(_record(tmp_path), _run(WORKED)).verdict == "fail"  # NAT-T happened: no failure to show
    broken = judge_no_nat(_record(tmp_path), _run(RAW, fetched=False))  # failed, but not for the predicted reason
    assert broken.verdict == "fail" and "curl" in broken.reason
    assert judge_no_nat(_record(tmp_path), _run(NattWire())).verdict == "fail"  # nothing on the wire at all


def test_tshark_keys_name_no_address_so_an_sa_logged_behind_the_nat_still_opens_srv1s_wire(tmp_path):
    from conformance.natt_peers import wildcard_keys
    from netwire.plan import client_ip, server_ip

    (tmp_path / "esp_sa").write_text(f'"IPv4","{client_ip(1)}","{server_ip(1)}","0x00001000","AES-GCM","0xab","NULL",""\n')
    out = wildcard_keys(tmp_path, tmp_path / "w")
    assert (out / "esp_sa").read_text() == '"IPv4","*","*","0x00001000","AES-GCM","0xab","NULL",""\n'
    assert (wildcard_keys(tmp_path / "none", tmp_path / "w2") / "esp_sa").read_text() == ""


def test_the_report_has_the_baseline_group_as_its_own_section_with_verdicts(tmp_path):
    from conformance import registry, report
    from conformance.results import ScenarioResult

    reg = registry.load()
    results = [ScenarioResult(behaviour="BASE-NATT", scenario="baseline-natt/natlab-natlab", verdict="pass",
                              started="2026-01-01T00:00:00+00:00")]
    beh = report.behaviours_frame(reg, results)
    sections = dict(report._sections({}, beh, report.claims_frame(reg, results), report.controls_frame(reg, results),
                                     report.cells_frame(results)))
    baseline = sections[report.BASELINE_SECTION].set_index("id")["verdict"].to_dict()
    assert baseline == {"BASE-NATT": "pass", "BASE-SWAN": "not implemented"}
