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
    assert all(r.na.strip() for r in ROWS if not r.check)


def test_the_oracle_sits_beside_mapping_filtering_and_hairpinning():
    assert {(r.rfc, r.req): r.oracle for r in ROWS if r.oracle} == {
        (4787, "REQ-1"): "mapping", (4787, "REQ-8"): "filtering", (4787, "REQ-9"): "hairpinning"}


@pytest.mark.parametrize("row,why", [
    ({"rfc": 4787, "req": "REQ-1", "level": "MUST", "text": "x"}, "needs a check or an na"),
    ({"rfc": 4787, "req": "REQ-1", "level": "MUST", "text": "x", "check": "a", "na": "b"}, "needs a check or an na"),
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
