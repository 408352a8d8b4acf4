"""The BEHAVE ledger on the live testbed (issue 14): the scenario's traffic through real OVS, the
controller and Mininet hosts, judged row by row; the MUSTs the NAT claims must pass, the rows it
does not meet stay visible as fails, and coturn's RFC 5780 classifier (nobody here wrote it) agrees
with the ledger's REQ-1, REQ-8 and REQ-9 rows. A second test runs the same classifier through the
classic Linux NAT control, which must classify as what it is."""

from __future__ import annotations

import json

import pytest

from conformance import natdiscovery
from conformance.context import Context
from conformance.scenarios.behave import SRV1, SRV1_ALT, behave, listening

# Rows whose checks the NAT must pass on every run (the MUSTs of issue 14 and those it met before).
MUST_PASS = {
    "RFC 4787 REQ-1", "RFC 4787 REQ-3", "RFC 4787 REQ-5", "RFC 4787 REQ-6", "RFC 4787 REQ-8", "RFC 4787 REQ-9",
    "RFC 4787 REQ-12", "RFC 4787 REQ-14", "RFC 5382 REQ-1", "RFC 5382 REQ-2", "RFC 5382 REQ-4", "RFC 5382 REQ-5",
    "RFC 5382 REQ-8", "RFC 5382 REQ-10", "RFC 5508 REQ-1", "RFC 5508 REQ-2", "RFC 5508 REQ-3", "RFC 5508 REQ-4",
    "RFC 5508 REQ-5", "RFC 5508 REQ-7", "RFC 5508 REQ-10", "RFC 7857 3.1", "RFC 7857 3.9", "RFC 7857 3.11",
}
# Rows the NAT does not meet, shown as fails (the ledger says what the NAT is).
KNOWN_FAILS = {"RFC 6888 REQ-6"}


def test_the_nat_meets_its_behave_musts_and_coturn_agrees(make_testbed, tmp_path):
    tb = make_testbed(clients=3, servers=2, globals=2)
    results = behave(Context(tb, tmp_path))
    ledger = {f"RFC {row['rfc']} {row['req']}": row
              for row in json.loads(next(tmp_path.rglob("ledger.json")).read_text())}
    facts = json.loads(next(tmp_path.rglob("facts.json")).read_text())
    print("ledger:", {v: sum(r["verdict"] == v for r in ledger.values()) for v in {r["verdict"] for r in ledger.values()}},
          "oracle:", facts["oracle"], "not passed:",
          {n: r["verdict"] for n, r in ledger.items() if r["verdict"] != "pass"})
    assert not facts["block_errors"], facts["block_errors"]
    failed = {name: (row["verdict"], row["reason"]) for name, row in ledger.items()
              if name in MUST_PASS and row["verdict"] != "pass"}
    assert not failed, failed
    assert {n for n, r in ledger.items() if r["verdict"] == "fail"} == KNOWN_FAILS
    assert not [n for n, r in ledger.items() if r["verdict"] == "error"]
    assert facts["oracle"] == {"mapping": "endpoint-independent", "filtering": "address-dependent",
                               "hairpinning": "yes"}
    assert {r.cell["ledger"] for r in results} == {n for n, r in ledger.items() if r["verdict"] in ("pass", "fail")}


@pytest.mark.parametrize("nat", ["classic"])
def test_coturn_classifies_the_classic_linux_nat_as_what_it_is(make_testbed, nat):
    """Linux conntrack masquerade keeps the source port (so the mapping looks endpoint-independent here),
    filters by address and port (a conntrack entry is a 5-tuple), and does not hairpin without rules it
    has not got: the classifier must say so, differing from the extensible NAT where the NAT differs."""
    tb = make_testbed(clients=1, servers=1, globals=1, nat=nat)
    h1, srv1 = tb.host("h1"), tb.host("srv1")
    srv1.cmd(f"ip addr add {SRV1_ALT}/24 dev srv1-eth0")
    try:
        with listening(srv1, "udp", natdiscovery.STUN_PORT, natdiscovery.server_argv((SRV1, SRV1_ALT))):
            outs = {t: h1.cmd(" ".join(["timeout", "40", *natdiscovery.client_argv(SRV1, t)])) for t in
                    ("-m", "-f", "-H")}
    finally:
        srv1.cmd(f"ip addr del {SRV1_ALT}/24 dev srv1-eth0")
    got = natdiscovery.classify(outs["-m"], outs["-f"], outs["-H"])
    assert got == {"mapping": "endpoint-independent", "filtering": "address-and-port-dependent",
                   "hairpinning": "no"}, outs
