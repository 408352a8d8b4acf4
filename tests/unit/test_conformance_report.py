"""The report: verdict rules, the files written, and the terminal summary."""

from __future__ import annotations

import base64
import html
import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import registry, report
from conformance.report import FAIL, NOT_IMPLEMENTED, PARTIAL, PASS, ReportError
from conformance.results import ScenarioResult

REG = registry.load()
ENV = {"kernel": "6.1.0-test", "ovs": "ovs-vsctl (Open vSwitch) 3.1.0", "os-ken": "4.2.2", "commit": "abc1234"}
CELL = {"ipsec": "ESP", "mode": "transport", "transport": "TCP"}


def res(behaviour: str, verdict: str = "pass", *, control: bool = False, **kw) -> ScenarioResult:
    kw.setdefault("scenario", f"{behaviour.lower()}/s")
    kw.setdefault("reason", "" if verdict == "pass" else "it broke")
    return ScenarioResult(
        behaviour=behaviour, verdict=verdict, control=control, started="2026-01-01T00:00:00+00:00", **kw
    )


# --- behaviour verdicts --------------------------------------------------------------


def test_behaviour_with_no_results_is_not_implemented():
    assert report.behaviour_verdict([]) == NOT_IMPLEMENTED


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (["pass"], PASS),
        (["pass", "pass"], PASS),
        (["pass", "fail"], FAIL),
        (["error"], FAIL),
        (["pass", "error"], FAIL),
    ],
)
def test_behaviour_verdict_rules(verdicts, expected):
    assert report.behaviour_verdict([res("NAT-AUTO", v) for v in verdicts]) == expected


def test_control_results_alone_never_make_a_pass_but_can_fail():
    assert report.behaviour_verdict([res("OUT-AH", control=True)]) == NOT_IMPLEMENTED
    assert report.behaviour_verdict([res("OUT-AH", "fail", control=True)]) == FAIL
    assert report.behaviour_verdict([res("OUT-AH"), res("OUT-AH", "fail", control=True)]) == FAIL


@given(st.lists(st.tuples(st.sampled_from(["pass", "fail", "error"]), st.booleans()), max_size=6))
def test_a_pass_always_has_a_passing_scenario(pairs):
    rs = [res("NAT-AUTO", v, control=c) for v, c in pairs]
    verdict = report.behaviour_verdict(rs)
    if verdict == PASS:
        assert any(r.verdict == "pass" and not r.control for r in rs)
    if not rs:
        assert verdict == NOT_IMPLEMENTED


# --- claim verdicts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([PASS, PASS], PASS),
        ([PASS, FAIL], FAIL),
        ([NOT_IMPLEMENTED, FAIL], FAIL),
        ([NOT_IMPLEMENTED, NOT_IMPLEMENTED], NOT_IMPLEMENTED),
        ([], NOT_IMPLEMENTED),
        ([PASS, NOT_IMPLEMENTED], PARTIAL),
    ],
)
def test_claim_verdict_rules(verdicts, expected):
    assert report.claim_verdict(verdicts) == expected


def test_claims_take_the_verdicts_of_their_behaviours():
    # claim 3: OUT-CSUM only; claim 15: OUT-CSUM and OUT-SEND (CLAIMS.md).
    def verdicts(rs):
        df = report.claims_frame(REG, rs).set_index("claim")
        return df.loc[3, "verdict"], df.loc[15, "verdict"], df.loc[1, "verdict"]

    assert verdicts([res("NAT-AUTO")]) == (NOT_IMPLEMENTED, NOT_IMPLEMENTED, NOT_IMPLEMENTED)
    assert verdicts([res("OUT-CSUM", cell=CELL)]) == (PASS, PARTIAL, NOT_IMPLEMENTED)
    assert verdicts([res("OUT-CSUM"), res("OUT-SEND")]) == (PASS, PASS, NOT_IMPLEMENTED)
    assert verdicts([res("OUT-CSUM"), res("OUT-SEND", "fail")]) == (PASS, FAIL, NOT_IMPLEMENTED)


def test_results_naming_unknown_behaviours_are_an_error():
    with pytest.raises(ReportError, match="unknown behaviour 'NAT-NOPE'"):
        report.behaviours_frame(REG, [res("NAT-AUTO"), res("NAT-NOPE")])
    with pytest.raises(ReportError, match="is a control, but the result has control=false"):
        report.check_results(REG, [res("CTRL-NOCOMP")])


def test_controls_frame():
    cells = [dict(CELL, ipsec="AH"), CELL, dict(CELL, transport="UDP")]
    rs = [res("CTRL-NOCOMP", control=True, cell=c) for c in cells]
    df = report.controls_frame(REG, rs).set_index("id")
    assert df.loc["CTRL-NOCOMP", "verdict"] == PASS
    assert df.loc["CTRL-NOCOMP", "cells_covered"] == "3/6"  # 4 AH cells + ESP transport TCP/UDP
    assert df.loc["CTRL-CLASSIC", "verdict"] == NOT_IMPLEMENTED
    rs.append(res("CTRL-NOCOMP", "fail", control=True, reason="AH verified without compensation"))
    assert report.controls_frame(REG, rs).set_index("id").loc["CTRL-NOCOMP", "verdict"] == FAIL


# --- the files --------------------------------------------------------------------------

RESULTS = [
    res(
        "NAT-AUTO",
        scenario="nat-auto/tcp-curl",
        positive="srv1 sees only 203.0.113.1",
        negative="no 10.0.0.0/8 on srv1 <capture>",
        evidence=("pcaps/srv1.pcap", "logs/controller.log"),
        duration_s=2.5,
    ),
    res("NAT-AUTO", scenario="nat-auto/udp-iperf3", positive="iperf3 | 0 loss", evidence=("pcaps/srv1.pcap",)),
    res("OUT-CSUM", scenario="out-csum/esp-tcp", cell=CELL, positive="inner checksum ok"),
    res("OUT-SEND", "fail", scenario="out-send/esp-tcp", cell=CELL, reason="no packet at srv1"),
    res("CTRL-NOCOMP", control=True, scenario="ctrl/ah-tcp", cell=dict(CELL, ipsec="AH"), positive="ICV mismatch"),
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return report.write_report(REG, RESULTS, ENV, out / "nested", evidence_base="runs/1/")


def test_all_files_are_written(written):
    assert sorted(written) == ["behaviours.csv", "cells.csv", "claims.csv", "controls.csv", "plots/verdict-matrix.png",
                               "report.html", "report.md"]  # no bench JSON, no CL-RENEW capture, no path counts here
    assert all(p.exists() and p.stat().st_size > 0 for p in written.values())


def test_behaviours_csv(written):
    df = pd.read_csv(written["behaviours.csv"], keep_default_na=False).set_index("id")
    assert list(df.index) == list(REG.behaviour_ids())
    assert df.loc["NAT-AUTO", "verdict"] == PASS
    assert df.loc["NAT-AUTO", "scenarios"] == 2
    assert df.loc["NAT-AUTO", "evidence"] == "pcaps/srv1.pcap; logs/controller.log"  # each path once
    assert "nat-auto/tcp-curl: srv1 sees only 203.0.113.1" in df.loc["NAT-AUTO", "positive"]
    assert df.loc["OUT-CSUM", "verdict"] == PASS and df.loc["OUT-CSUM", "cells_covered"] == "1/8"
    assert df.loc["OUT-SEND", "verdict"] == FAIL and "no packet at srv1" in df.loc["OUT-SEND", "reasons"]
    assert (
        df.loc["OUT-ALG", "claims"] == "1, 7, 19, 27, 33"
        and df.loc["NAT-ENTRY", "steps"] == "FIG. 6 (601-607), step 705"
    )
    untouched = set(REG.behaviour_ids()) - {"NAT-AUTO", "OUT-CSUM", "OUT-SEND"}
    assert set(df.loc[sorted(untouched), "verdict"]) == {NOT_IMPLEMENTED}
    assert (df.loc[sorted(untouched), "scenarios"] == 0).all()


def test_claims_csv(written):
    df = pd.read_csv(written["claims.csv"], keep_default_na=False).set_index("claim")
    assert list(df.index) == list(range(1, 41))
    assert df.loc[3, "verdict"] == PASS
    assert df.loc[15, "verdict"] == FAIL and df.loc[15, "behaviours"] == "OUT-CSUM, OUT-SEND"
    assert df.loc[15, "behaviour_verdicts"] == "OUT-CSUM: pass; OUT-SEND: fail"
    assert df.loc[40, "verdict"] == NOT_IMPLEMENTED


def test_cells_csv_has_one_row_per_result(written):
    df = pd.read_csv(written["cells.csv"], keep_default_na=False)
    assert len(df) == len(RESULTS)
    assert list(df["scenario"]) == [r.scenario for r in RESULTS]
    row = df.set_index("scenario").loc["out-csum/esp-tcp"]
    assert (row["ipsec"], row["mode"], row["transport"], row["cell"]) == (
        "ESP",
        "transport",
        "TCP",
        "ESP/transport/TCP",
    )
    assert list(df["control"]) == [False, False, False, False, True]


def test_markdown_report(written):
    md = written["report.md"].read_text()
    for title in ("Environment", "Summary", "Behaviours", "Claims", "Controls", "Scenario results"):
        assert f"## {title}" in md
    for value in ENV.values():
        assert value in md
    for bid in REG.behaviour_ids():
        assert re.search(rf"^\| {bid} \| ", md, re.M), bid
    assert "iperf3 \\| 0 loss" in md  # a pipe inside a cell is escaped
    assert "&lt;capture&gt;" in md
    behaviours = md.split("## Behaviours")[1].split("## ")[0]
    rows = [line for line in behaviours.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + len(REG)  # header, rule, one row per behaviour
    assert {line.replace("\\|", "").count("|") for line in rows} == {14}  # 13 columns, no stray pipes


def test_html_report_is_self_contained_with_coloured_verdicts(written):
    page = written["report.html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<(link|script)\b|https?://", page)  # no external assets
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(b"\x89PNG") for s in sources)
    assert '<a class="file" href="runs/1/pcaps/srv1.pcap">pcaps/srv1.pcap</a>' in page
    assert html.escape("no 10.0.0.0/8 on srv1 <capture>") in page and "<capture>" not in page
    for value in ENV.values():
        assert html.escape(value) in page
    _WellFormed().feed(page)


def test_html_first_screen_is_the_summary_and_a_compact_verdict_matrix(written):
    first = written["report.html"].read_text().split('<section id="first-screen">')[1].split("</section>")[0]
    matrix = first.split('<table class="matrix">')[1].split("</table>")[0]
    assert matrix.split("<tbody>")[1].count("<tr>") == len(REG)  # one row per behaviour
    assert 'title="OUT-SEND ESP/transport/TCP: fail"' in matrix and 'title="OUT-CSUM ESP/transport/TCP: pass"' in matrix
    assert 'title="OUT-CSUM AH/transport/TCP: not run"' in matrix
    assert 'title="OUT-AH AH/transport/TCP: not implemented"' in matrix
    assert 'title="NAT-AUTO single check: pass"' in matrix
    assert first.count('class="badge v-') >= 40  # the 40 claims, and the counts
    assert "1 failed as predicted" in first and "did not fail" not in first  # controls by what they show
    assert "<details" not in first and "srv1 sees only" not in first  # the long evidence is behind a click


def test_html_evidence_sits_behind_a_click_per_behaviour_and_control(written):
    page = written["report.html"].read_text()
    for bid in REG.behaviour_ids():
        assert f'<details id="b-{bid}">' in page, bid
    nat_auto = page.split('<details id="b-NAT-AUTO">')[1].split("</details>")[0]
    assert "srv1 sees only 203.0.113.1" in nat_auto and 'href="runs/1/logs/controller.log"' in nat_auto
    control = page.split('<details id="c-CTRL-NOCOMP">')[1].split("</details>")[0]
    assert "failed as predicted" in control and "ICV mismatch" in control


def test_a_control_that_did_not_fail_is_labelled_a_failed_check(tmp_path):
    results = [res("CTRL-NOCOMP", "fail", control=True, cell=dict(CELL, ipsec="AH"), reason="AH verified")]
    page = report.write_report(REG, results, ENV, tmp_path)["report.html"].read_text()
    assert "did not fail: check failed" in page.split('<section id="first-screen">')[1].split("</section>")[0]


class _WellFormed(HTMLParser):
    """Fails on a closing tag that does not match the open one."""

    VOID = {"meta", "br", "img"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag


def test_report_refuses_unknown_behaviours(tmp_path):
    with pytest.raises(ReportError):
        report.write_report(REG, [res("XX-YY")], ENV, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_report_with_no_results_is_all_not_implemented(tmp_path):
    paths = report.write_report(REG, [], {}, tmp_path)
    df = pd.read_csv(paths["behaviours.csv"], keep_default_na=False)
    assert set(df["verdict"]) == {NOT_IMPLEMENTED}
    assert set(pd.read_csv(paths["claims.csv"])["verdict"]) == {NOT_IMPLEMENTED}
    assert len(pd.read_csv(paths["cells.csv"])) == 0


# --- helpers and the terminal summary ----------------------------------------------------


def test_markdown_table_escapes_cells():
    df = pd.DataFrame({"a": ["x|y", "two\nlines"], "b": [["p", "q"], 3]})
    assert report.markdown_table(df).splitlines() == [
        "| a | b |",
        "| --- | --- |",
        "| x\\|y | p<br>q |",
        "| two<br>lines | 3 |",
    ]


def test_summary_table():
    text = report.summary_table(REG, RESULTS)
    lines = text.splitlines()
    assert lines[0].split() == ["behaviour", "verdict", "scenarios"]
    assert re.search(r"^NAT-AUTO +pass +2$", text, re.M)
    assert re.search(r"^OUT-SEND +fail +1$", text, re.M)
    assert re.search(r"^OUT-ALG +not implemented +0$", text, re.M)
    assert re.search(r"^CTRL-NOCOMP \(control\) +pass +1$", text, re.M)
    n = len(REG)
    assert f"behaviours: 2 pass, 1 fail, {n - 3} not implemented" in text
    # OUT-CSUM passes claims 3-5, 16, 17, 29-31 (15 is shared with the failing OUT-SEND, as is 27)
    assert "claims: 8 pass, 0 partial, 2 fail, 30 not implemented" in text
    assert f"controls: 1 pass, 0 fail, {len(REG.controls) - 1} not implemented" in text


def test_a_further_table_with_verdicts_gets_a_strip_on_the_first_screen(tmp_path, monkeypatch):
    """A requirement ledger (issue 14, items 1-3) added to the report's sections shows at a glance."""
    ledger = pd.DataFrame({"requirement": ["RFC 4787 REQ-1", "RFC 4787 REQ-9"], "verdict": [PASS, FAIL]})
    sections = report._sections
    monkeypatch.setattr(report, "_sections", lambda *a: [*sections(*a), ("Ledger", ledger)])
    page = report.write_report(REG, RESULTS, ENV, tmp_path)["report.html"].read_text()
    first = page.split('<section id="first-screen">')[1].split("</section>")[0]
    assert "<h3>Ledger</h3>" in first and 'title="RFC 4787 REQ-9: fail"' in first
    assert '<h2 id="s-ledger">Ledger</h2>' in page
    _WellFormed().feed(page)


def test_the_behave_ledger_a_run_wrote_shows_on_the_first_screen(tmp_path):
    """The ledger (issue 14, items 1-3) is evidence of its scenario (``ledger.json``, one object per
    requirement): a square per requirement, grouped by RFC, and the whole table behind a click."""
    rows = [{"rfc": 4787, "req": "REQ-1", "level": "MUST", "verdict": "pass", "text": "EIM", "evidence": []},
            {"rfc": 4787, "req": "REQ-9", "level": "MUST", "verdict": "fail", "text": "hairpinning",
             "reason": "no hairpin <seen>"},
            {"rfc": 5508, "req": "REQ-2", "level": "MAY", "verdict": "n/a", "text": "x", "na": "no such path"}]
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "ledger.json").write_text(json.dumps(rows))
    results = [res("NAT-AUTO", scenario="behave/ledger", evidence=("evidence/ledger.json",))]
    page = report.write_report(REG, results, ENV, tmp_path)["report.html"].read_text()
    first = page.split('<section id="first-screen">')[1].split("</section>")[0]
    assert "BEHAVE ledger" in first and "RFC 4787" in first and "RFC 5508" in first
    assert 'title="RFC 4787 REQ-9 (MUST): fail"' in first and 'title="RFC 5508 REQ-2 (MAY): n/a"' in first
    assert '<h2 id="ledger">' in page and html.escape("no hairpin <seen>") in page
    _WellFormed().feed(page)
    (tmp_path / "evidence" / "ledger.json").write_text("[{\"rfc\": 4787}]")  # not a ledger: nothing shown
    assert "BEHAVE ledger" not in report.write_report(REG, results, ENV, tmp_path)["report.html"].read_text()
