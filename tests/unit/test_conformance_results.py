"""Scenario results as JSON Lines: round trip, append-and-flush, bad lines named."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.results import ResultError, ResultWriter, ScenarioResult, read_results, write_results

BASE = {
    "behaviour": "NAT-AUTO",
    "scenario": "nat-auto/tcp-curl",
    "cell": None,
    "verdict": "pass",
    "control": False,
    "positive": "srv1 capture: only 203.0.113.1",
    "negative": "srv1 capture: no 10.0.0.0/8 source",
    "reason": "",
    "evidence": ["pcaps/srv1.pcap", "logs/controller.log"],
    "started": "2026-01-02T03:04:05+00:00",
    "duration_s": 1.25,
}


def result(**kw) -> ScenarioResult:
    return ScenarioResult.from_dict(dict(BASE, **kw))


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
results = st.builds(
    ScenarioResult,
    behaviour=st.sampled_from(["NAT-AUTO", "OUT-AH", "CTRL-NOCOMP"]),
    scenario=st.text(min_size=1, max_size=20).filter(str.strip),
    verdict=st.just("pass"),
    started=st.datetimes().map(lambda d: d.isoformat()),
    cell=st.none() | st.fixed_dictionaries({"ipsec": st.sampled_from(["AH", "ESP"]), "mode": st.just("tunnel")}),
    control=st.booleans(),
    positive=texts,
    negative=texts,
    reason=texts,
    evidence=st.lists(st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_][a-z0-9_.]{0,7}){0,2}", fullmatch=True), max_size=3),
    duration_s=st.floats(min_value=0, max_value=1e6),
)


@given(st.lists(results, max_size=5))
def test_jsonl_round_trip(tmp_path_factory, rs):
    path = tmp_path_factory.mktemp("rt") / "results.jsonl"
    write_results(path, rs)
    assert read_results(path) == rs
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(rs)  # one line per record


def test_fields_are_normalised():
    r = result(evidence=["a.pcap"], duration_s=2)
    assert r.evidence == ("a.pcap",) and r.duration_s == 2.0 and isinstance(r.duration_s, float)
    assert r.to_dict() == dict(BASE, evidence=["a.pcap"], duration_s=2.0)
    assert result(cell={"ipsec": "ESP", "mode": "transport", "transport": "UDP"}).cell_label() == "ESP/transport/UDP"
    assert result().cell_label() == ""
    shuffled = {"transport": "TCP", "extra": "v6", "ipsec": "AH", "mode": "tunnel"}
    assert result(cell=shuffled).cell_label() == "AH/tunnel/TCP/v6"


def test_writer_appends_and_flushes_each_line(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"
    with ResultWriter(path) as w:
        w.write(result(scenario="one"))
        assert [r.scenario for r in read_results(path)] == ["one"]  # visible before close
        w.write(result(scenario="two"))
    with ResultWriter(path) as w:  # a second writer appends, never truncates
        w.write(result(scenario="three"))
    assert [r.scenario for r in read_results(path)] == ["one", "two", "three"]
    with pytest.raises(ValueError, match="closed"):
        w.write(result())


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n" + result().to_json() + "\n\n")
    assert len(read_results(path)) == 1


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        ({"verdict": "maybe"}, "verdict", "'maybe' is not one of pass, fail, error"),
        ({"verdict": "fail"}, "reason", "needs a reason"),
        ({"verdict": "error", "reason": " "}, "reason", "needs a reason"),
        ({"behaviour": ""}, "behaviour", "non-empty string"),
        ({"scenario": 7}, "scenario", "non-empty string"),
        ({"control": "yes"}, "control", "true or false"),
        ({"started": "yesterday"}, "started", "not an ISO 8601"),
        ({"duration_s": -1}, "duration_s", "number >= 0"),
        ({"duration_s": True}, "duration_s", "number >= 0"),
        ({"cell": "ESP"}, "cell", "object or null"),
        ({"cell": {"ipsec": 50}}, "cell", "non-empty strings"),
        ({"evidence": "a.pcap"}, "evidence", "list of paths"),
        ({"evidence": ["/tmp/a.pcap"]}, "evidence", "relative to the run directory"),
        ({"evidence": ["../a.pcap"]}, "evidence", "relative to the run directory"),
        ({"positive": None}, "positive", "expected a string"),
        ({"colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_line_names_line_number_and_field(tmp_path, change, field, why):
    bad = dict(BASE, **change)
    path = tmp_path / "r.jsonl"
    path.write_text(result().to_json() + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ResultError) as e:
        read_results(path)
    assert e.value.field == field
    assert f"{path}:3: field '{field}'" in str(e.value)
    assert why in str(e.value)


@pytest.mark.parametrize("missing", sorted(BASE))
def test_missing_field_is_named(tmp_path, missing):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({k: v for k, v in BASE.items() if k != missing}) + "\n")
    with pytest.raises(ResultError, match=rf":1: field '{missing}': missing"):
        read_results(path)


@pytest.mark.parametrize(("line", "why"), [('{"behaviour": ', "not valid JSON"), ("[1, 2]", "expected a JSON object")])
def test_unparsable_line_is_named(tmp_path, line, why):
    path = tmp_path / "r.jsonl"
    path.write_text(result().to_json() + "\n" + line + "\n")
    with pytest.raises(ResultError, match=rf"r\.jsonl:2: .*{why}"):
        read_results(path)
