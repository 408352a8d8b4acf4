"""The BEHAVE ledger: complete per RFC, every row checked or reasoned N/A, every check able to fail
(fed the facts of a NAT without the behaviour), and coturn's output read as coturn prints it."""

from __future__ import annotations

import pytest

from conformance import ledger, natdiscovery
from conformance.scenarios.behave import CHECKS

ROWS = ledger.load()


def test_every_requirement_of_each_rfc_is_a_row():
    for rfc, count in ledger.RFCS.items():
        reqs = [r.req for r in ROWS if r.rfc == rfc]
        want = [f"3.{i}" for i in range(1, count + 1)] if rfc == 7857 else [f"REQ-{i}" for i in range(1, count + 1)]
        assert reqs == want, rfc


def test_every_check_named_exists_and_every_check_is_used():
    named = {r.check for r in ROWS if r.check}
    assert named == set(CHECKS)
    assert all((r.na or r.gap).strip() for r in ROWS if not r.check)


def test_the_oracle_sits_beside_mapping_filtering_and_hairpinning():
    assert {(r.rfc, r.req): r.oracle for r in ROWS if r.oracle} == {
        (4787, "REQ-1"): "mapping", (4787, "REQ-8"): "filtering", (4787, "REQ-9"): "hairpinning"}


@pytest.mark.parametrize("row,why", [
    ({"rfc": 4787, "req": "REQ-1", "level": "MUST", "text": "x"}, "needs exactly one of a check"),
    ({"rfc": 4787, "req": "REQ-1", "level": "MUST", "text": "x", "check": "a", "na": "b"}, "needs exactly one of a check"),
    ({"rfc": 1918, "req": "REQ-1", "level": "MUST", "text": "x", "check": "a"}, "'rfc'"),
    ({"rfc": 4787, "req": "REQ-1", "level": "MAYBE", "text": "x", "check": "a"}, "'level'"),
    ({"rfc": 4787, "req": "REQ-1", "level": "MUST", "text": "x", "check": "a", "colour": 1}, "unknown field"),
])
def test_bad_rows_are_named(tmp_path, row, why):
    path = tmp_path / "l.toml"
    path.write_text("[[requirement]]\n" + "\n".join(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str)
                                                     else f"{k} = {v}" for k, v in row.items()))
    with pytest.raises(ledger.LedgerError, match=why.replace("'", ".")):
        ledger.load(path)


def test_judge_never_passes_what_was_not_seen():
    rows = [r for r in ROWS if r.check in ("eim_udp", "fragments", "admin_prohibited", "hairpin_udp")] + \
        [r for r in ROWS if r.na][:1]
    outcomes = {"eim_udp": ledger.Outcome(True, "seen", "none"), "fragments": ledger.Outcome(False, "", "lost"),
                "admin_prohibited": ledger.NotChecked("needs time"), "hairpin_udp": KeyError("hairpin_logs")}
    verdicts = {r.check or "na": line.verdict for r, line in zip(rows, ledger.judge(rows, outcomes), strict=True)}
    assert verdicts == {"eim_udp": "pass", "fragments": "fail", "admin_prohibited": "not checked",
                        "hairpin_udp": "error", "na": "n/a"}
    assert ledger.judge(rows[:1], {})[0].verdict == "error"  # a check that never ran


def nothing_worked() -> dict:
    """The facts of a NAT without any of the behaviours (each the opposite of what a pass needs)."""
    private = ("10.0.0.1", 40001)
    log = [{"src": private[0], "sport": 40007, "text": "203.0.113.1:40007"},  # an ALG rewrote the text
           {"src": "203.0.113.1", "sport": 40002, "text": "10.0.0.1:40001"}]
    refused = {"refused": False, "reply": False}
    return {
        "h1_ip": "10.0.0.1", "client_ips": ["10.0.0.1", "10.0.0.2"], "oracle": {"mapping": "address-dependent",
                                                                              "filtering": "endpoint-independent",
                                                                              "hairpinning": "no"},
        "udp_logs": {"srv1": log[:1], "srv2": log[1:]}, "tcp_logs": {"srv1": [], "srv2": []},
        "overload_sent": [0, 0], "refused_in": "TimeoutError", "after_refused": 0, "after_refused_entries": [],
        "filter_target": ("203.0.113.1", 40002), "filter_srv1": refused, "filter_srv2": {"refused": True},
        "tcp_sends": [], "tcp_closed_entries": [{"tcp_phase": "established"}], "tcp_open_entries": [],
        "flows": "", "flows_after_close": "tcp,tcp_src=41001 idle_timeout=7440",
        "flows_while_open": "tcp,tcp_src=41002 idle_timeout=240", "tcp_target": ("203.0.113.1", 41001),
        "syn_srv2": {"connected": False, "error": "ConnectionRefusedError"}, "unsolicited_counted": 0,
        "syn_srv1": {"connected": False, "error": "TimeoutError"},
        "simopen": {"h1": {"connected": False}, "srv1": {"connected": True}},
        "ping": (3, 0), "icmp_entries": [{"idle_timeout": 30}],
        "icmp_counters": {"drop:icmp-error-bad-checksum": 0, "icmp_errors_translated": 0,
                          "drop:icmp-error-no-entry": 0},
        "icmp_entry_after_errors": [], "router_advert_counted": 0,
        "map_udp_out": "refused", "map_tcp_out": "refused",
        "hairpin_udp": {"reply_len": 0}, "hairpin_tcp": {"connected": False}, "hairpin_icmp": {"error": "TimeoutError"},
        "hairpin_targets": {"udp": {"global_ip": "203.0.113.2", "global_gpn": 1}, "tcp": {}},
        "hairpin_logs": {"udp": [{"src": "10.0.0.1"}], "tcp": []}, "h1_entries": [],
        "frag_orders": {"in": {"reply_len": 3000}, "reversed": {"reply_len": 0}}, "frag_kernel": {"reply_len": 4000},
        "frag_iperf3": {"packets": 0, "lost": 0}, "ip_id_mate": "h3", "ip_id_second": {"reply_len": 0},
        "frag_counters": {}, "frag_log": [{"src": "203.0.113.1"}],
        "controller_log": "flow to 203.0.113.100 translated",
    }


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_every_check_fails_without_its_behaviour(name):
    try:
        outcome = CHECKS[name](nothing_worked())
    except ledger.NotChecked:
        return  # judged "not checked", never a pass
    assert outcome.ok is False, outcome


def test_every_check_fails_on_empty_evidence():
    for name, check in CHECKS.items():
        try:
            outcome = check({})
        except Exception:
            continue  # an error, never a pass
        assert outcome.ok is False, name


MAPPING_OUT = """
-= Mapping Behavior Discovery =-
========================================
RFC 5780 response 1
0: : IPv4. UDP reflexive addr: 203.0.113.1:58882

========================================
NAT with Endpoint Independent Mapping!
========================================
"""


def test_natdiscovery_output_is_read_as_printed():
    filt = MAPPING_OUT.replace("Mapping!", "Filtering!").replace("Endpoint Independent", "Address Dependent")
    hair = "\n-= Hairpinning Behavior Discovery =-\nReceived a request (maybe a successful hairpinning)\n"
    got = natdiscovery.classify(MAPPING_OUT, filt, hair)
    assert got == {"mapping": "endpoint-independent", "filtering": "address-dependent", "hairpinning": "yes"}
    none = natdiscovery.classify("STUN receive timeout..", "", "\n-= Hairpinning Behavior Discovery =-\nSTUN "
                                 "receive timeout..\n")
    assert none == {"mapping": "unknown", "filtering": "unknown", "hairpinning": "no"}


def everything_worked() -> dict:
    """The facts a conforming NAT leaves (shaped as the scenario's blocks record them)."""
    g1, g2, h1 = "203.0.113.1", "203.0.113.2", "10.0.0.1"
    text = f"{h1}:40001"
    srv1 = [{"src": g1, "sport": 40001, "text": text + "..."}, {"src": g1, "sport": 40001, "text": text + "..."},
            {"src": g1, "sport": 40005, "text": "natlab"}, {"src": g2, "sport": 40005, "text": "natlab"},
            {"src": g1, "sport": 51234, "text": "natlab"}]
    flows = (f"cookie=0x5, priority=30000,udp,in_port=1,nw_src={h1},tp_src=40001 idle_timeout=300 "
             "actions=set_field:203.0.113.1->ip_src\n"
             f" cookie=0x5, priority=30000,udp,in_port=2,nw_dst={g1},udp_dst=40001 actions=output:1\n"
             " cookie=0x9, priority=30000,icmp,in_port=1 idle_timeout=60 actions=output:2\n").replace(
                 "tp_src", "udp_src")
    return {
        "h1_ip": h1, "client_ips": [h1, "10.0.0.2", "10.0.0.3"],
        "oracle": {"mapping": "endpoint-independent", "filtering": "address-dependent", "hairpinning": "yes"},
        "udp_logs": {"srv1": srv1, "srv2": [{"src": g1, "sport": 40001, "text": text}]},
        "tcp_logs": {n: [{"src": g1, "sport": 41001, "text": f"{h1}:41001"}] for n in ("srv1", "srv2")},
        "overload_sent": [6, 6, 6], "refused_in": "ConnectionRefusedError", "after_refused": 64,
        "filter_target": (g1, 40002), "filter_srv1": {"refused": True},
        "filter_srv2": {"refused": False, "reply": False},
        "tcp_closed_entries": [{"tcp_phase": "transitory"}], "tcp_open_entries": [{"tcp_phase": "established"}],
        "flows": flows, "flows_after_close": "priority=30000,tcp,in_port=1,tcp_src=41001 idle_timeout=240 actions=x",
        "flows_while_open": "priority=30000,tcp,in_port=1,tcp_src=41002 idle_timeout=7440 actions=x",
        "tcp_target": (g1, 41001), "syn_srv2": {"connected": False, "error": "TimeoutError"},
        "unsolicited_counted": 1, "syn_srv1": {"connected": False, "error": "ConnectionRefusedError"},
        "simopen": {"h1": {"connected": True}, "srv1": {"connected": True}},
        "ping": (3, 3), "icmp_entries": [{"idle_timeout": 60}],
        "icmp_counters": {"drop:icmp-error-bad-checksum": 1, "icmp_errors_translated": 3,
                          "drop:icmp-error-no-entry": 1},
        "icmp_entry_after_errors": [{"global_gpn": 40003}], "router_advert_counted": 1,
        "map_udp_out": "granted 1a2b3c4d  MAP udp", "map_tcp_out": "granted 5e6f7a8b  MAP tcp",
        "hairpin_udp": {"reply_len": 64}, "hairpin_tcp": {"connected": True},
        "hairpin_icmp": {"error": "ConnectionRefusedError"},
        "hairpin_targets": {"udp": {"global_ip": g2, "global_gpn": 44001}, "tcp": {"global_ip": g2, "global_gpn": 44003}},
        "hairpin_logs": {"udp": [{"src": g1, "sport": 44002}], "tcp": [{"src": g1, "sport": 44004}]},
        "h1_entries": [{"kind": "NAT-ALG", "global_ip": g1, "protocol": p} for p in (1, 6, 17)],
        "frag_orders": {o: {"reply_len": 3000} for o in ("in", "reversed", "first-last")},
        "frag_kernel": {"reply_len": 4000}, "frag_counters": {"fragments_translated": 8},
        "frag_iperf3": {"packets": 83, "lost": 0}, "ip_id_mate": "h3", "ip_id_second": {"reply_len": 3000},
        "frag_log": [{"src": g1, "sport": 45001, "len": 3000}], "controller_log": "r1 connected",
    }


# Checks of requirements the NAT does not meet: they fail even on a conforming run's facts (known gaps
# are declared in ledger.toml as ``gap`` instead, and have no check).
NOT_MET: set[str] = set()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_every_check_can_pass(name):
    try:
        outcome = CHECKS[name](everything_worked())
    except ledger.NotChecked:
        return
    assert outcome.ok is (name not in NOT_MET), outcome
