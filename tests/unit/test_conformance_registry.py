"""The behaviour registry: the packaged data matches the repository's claims map (docs/CLAIMS.md), bad data is named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance import registry
from conformance.registry import CLAIMS, MATRIX_CELLS, RegistryError

CLAIMS_MD = Path(__file__).resolve().parents[2] / "docs" / "CLAIMS.md"

# Every row id of docs/CLAIMS.md, in its order.
CLAIMS_MD_IDS = [
    "OUT-ALG",
    "OUT-PORT",
    "OUT-TUNADDR",
    "OUT-CSUM",
    "OUT-AH",
    "OUT-SEND",
    "IN-RECV",
    "IN-AH",
    "IN-ALG",
    "IN-PORT",
    "IN-TUNADDR",
    "IN-CSUM",
    "NAT-DEF",
    "NAT-HASALG",
    "NAT-ALLOC",
    "NAT-UNIQ",
    "NAT-ENTRY",
    "NAT-OUT",
    "NAT-IN",
    "NAT-AUTO",
    "NAT-DROP",
    "NAT-RENEW",
    "NAT-DEALLOC",
    "NAT-EXPIRE",
    "CL-COOKIE",
    "CL-SPI",
    "CL-RENEW",
    "CL-UNIQ",
    "BASE-NATT",
    "BASE-SWAN",
]


@pytest.fixture(scope="module")
def reg() -> registry.Registry:
    return registry.load()


# --- the packaged data ---------------------------------------------------------------


def test_packaged_registry_has_every_claims_md_row(reg):
    assert list(reg.behaviour_ids()) == CLAIMS_MD_IDS


def test_every_claim_1_to_40_is_carried_by_a_behaviour(reg):
    assert reg.uncovered_claims() == ()
    carried = {n for b in reg for n in b.claims}
    assert carried == set(range(1, 41))


def test_claims_sit_on_the_client_rows_and_matrix_follows_the_group(reg):
    for b in reg:
        client_row = b.id.startswith(("OUT-", "IN-"))
        assert b.matrix is client_row, b.id
        assert bool(b.claims) is client_row, b.id
        expected_group = {"OUT": "client-outgoing", "IN": "client-incoming", "NAT": "nat", "CL": "client-procedure",
                          "BASE": "baseline"}
        assert b.group == expected_group[b.id.split("-")[0]], b.id
        assert b.steps, b.id


def test_controls_are_data_with_the_predicted_failures(reg):
    assert [c.id for c in reg.controls] == ["CTRL-NOCOMP", "CTRL-CLASSIC", "CTRL-NOALG", "CTRL-NOVERIFY",
                                           "CTRL-NONAT"]
    for c in reg.controls[:2]:  # the seed's predictions; the others are fault variants
        ah, esp = c.predicts
        assert "authentication" in ah.failure and "checksum" in esp.failure
        assert [cell for cell in MATRIX_CELLS if ah.covers(cell)] == [m for m in MATRIX_CELLS if m["ipsec"] == "AH"]
        assert [dict(cell) for cell in MATRIX_CELLS if esp.covers(cell)] == [
            {"ipsec": "ESP", "mode": "transport", "transport": "TCP"},
            {"ipsec": "ESP", "mode": "transport", "transport": "UDP"},
        ]
        assert ah.label() == "AH" and esp.label() == "ESP/transport"
        assert not ah.covers(None)


def _claims_md_rows(text: str) -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| ((?:OUT|IN|NAT|CL|BASE)-[A-Z]+) \| (.*) \| (.*) \| (.*) \|$", line)
        if m:
            rows[m[1]] = (m[2], m[3], m[4])
    return rows


def test_packaged_registry_matches_the_claims_map_in_the_repository(reg):
    rows = _claims_md_rows(CLAIMS_MD.read_text())
    assert list(rows) == CLAIMS_MD_IDS
    for b in reg:
        text, claims, steps = rows[b.id]
        assert b.text == text, b.id
        assert b.claims == (tuple(int(n) for n in claims.split(",")) if claims != "-" else ()), b.id
        assert b.steps == tuple(steps.split("; ")), b.id


def test_the_claims_map_lists_every_control(reg):
    ids = re.findall(r"^\| (CTRL-[A-Z]+) \|", CLAIMS_MD.read_text(), re.MULTILINE)
    assert ids == [c.id for c in reg.controls]


def test_the_claims_map_cites_the_seed_by_title_authors_and_date():
    text = " ".join(CLAIMS_MD.read_text().split())
    for part in ("Application-Independent End-to-End Security in Shared-Link Access Networks", "Brustoloni",
                 "Garay", "27 October 2000"):
        assert part in text


# --- lookups -------------------------------------------------------------------------------


def test_lookup_by_id_and_by_claim(reg):
    assert reg["NAT-AUTO"].group == "nat"
    assert "NAT-AUTO" in reg and "NOPE-X" not in reg
    assert reg.get("NOPE-X") is None
    with pytest.raises(KeyError):
        reg["NOPE-X"]
    assert [b.id for b in reg.by_claim(15)] == ["OUT-CSUM", "OUT-SEND"]
    assert reg.claims_index()[28] == ("IN-RECV", "IN-ALG")
    assert list(reg.claims_index()) == list(CLAIMS)
    assert reg.control("CTRL-NOCOMP") is not None and reg.control("NAT-AUTO") is None
    assert len(reg) == len(CLAIMS_MD_IDS)


def test_load_a_given_path(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(_toml())
    assert registry.load(p).behaviour_ids() == ("OUT-X", "NAT-Y")


# --- validation errors name the offender -------------------------------------------------

GOOD_A = {"id": '"OUT-X"', "group": '"client-outgoing"', "text": '"x"', "claims": "[1, 2]", "steps": '["812"]'}
GOOD_A["matrix"] = "true"
GOOD_B = dict(GOOD_A, id='"NAT-Y"', group='"nat"', claims="[]", matrix="false")


def _table(fields: dict[str, str], name: str = "behaviour") -> str:
    return f"[[{name}]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())


def _toml(a: dict[str, str] | None = None, b: dict[str, str] | None = None, extra: str = "") -> str:
    return _table(a or GOOD_A) + "\n" + _table(b or GOOD_B) + "\n" + extra


@pytest.mark.parametrize(
    ("claims", "shown"),
    [("[41]", "41"), ("[0]", "0"), ('["3"]', "'3'"), ("[true]", "True"), ("[1.5]", "1.5")],
)
def test_bad_claim_number_names_behaviour_and_field(claims, shown):
    with pytest.raises(RegistryError, match=rf"behaviour NAT-Y: field 'claims': {re.escape(shown)} is not a claim"):
        registry.loads(_toml(b=dict(GOOD_B, claims=claims)))


def test_claim_listed_twice():
    with pytest.raises(RegistryError, match="behaviour OUT-X: field 'claims': a claim is listed twice"):
        registry.loads(_toml(a=dict(GOOD_A, claims="[3, 3]")))


def test_duplicate_id_is_named():
    with pytest.raises(RegistryError, match="behaviour OUT-X: field 'id': duplicate id"):
        registry.loads(_toml(b=dict(GOOD_A)))


@pytest.mark.parametrize("field", ["group", "text", "claims", "steps", "matrix"])
def test_missing_field_names_behaviour_and_field(field):
    fields = {k: v for k, v in GOOD_B.items() if k != field}
    with pytest.raises(RegistryError, match=f"behaviour NAT-Y: field '{field}': missing"):
        registry.loads(_toml(b=fields))


def test_missing_id_names_the_position():
    fields = {k: v for k, v in GOOD_B.items() if k != "id"}
    with pytest.raises(RegistryError, match=r"behaviour #2 \(no id\): field 'id': missing"):
        registry.loads(_toml(b=fields))


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("group", '"router"', "'router' is not one of"),
        ("id", '"lower-case"', "not of the form"),
        ("text", '"  "', "empty"),
        ("matrix", '"yes"', "expected bool"),
        ("steps", "[1]", "expected a list of non-empty strings"),
        ("claims", '"1"', "expected list"),
        ("colour", '"red"', "unknown field"),
    ],
)
def test_bad_field_value_names_behaviour_and_field(field, value, why):
    with pytest.raises(RegistryError, match=f"field '{field}': .*{re.escape(why)}"):
        registry.loads(_toml(b=dict(GOOD_B, **{field: value})))


CONTROL = {"id": '"CTRL-Z"', "text": '"no compensation"', "behaviours": '["OUT-X"]'}
PREDICTS = '[[control.predicts]]\nipsec = "AH"\nfailure = "authentication fails"\n'


def test_control_loads():
    reg = registry.loads(_toml(extra=_table(CONTROL, "control") + PREDICTS))
    (c,) = reg.controls
    assert c.behaviours == ("OUT-X",) and c.predicts[0].ipsec == ("AH",)
    assert c.predicts[0].mode == ("transport", "tunnel")


@pytest.mark.parametrize(
    ("control", "predicts", "message"),
    [
        (dict(CONTROL, behaviours='["OUT-NOPE"]'), PREDICTS, "control CTRL-Z: field 'behaviours': unknown behaviour"),
        (CONTROL, PREDICTS.replace('"AH"', '"GRE"'), "control CTRL-Z predicts: field 'ipsec': 'GRE' is not one of"),
        (CONTROL, PREDICTS + 'mode = "bent"\n', "control CTRL-Z predicts: field 'mode': 'bent'"),
        (CONTROL, PREDICTS + "oops = 1\n", "control CTRL-Z predicts: field 'oops': unknown field"),
        (CONTROL, "", "control CTRL-Z: field 'predicts': missing"),
        (dict(CONTROL, id='"OUT-X"'), PREDICTS, "control OUT-X: field 'id': duplicate id"),
    ],
)
def test_bad_control_is_named(control, predicts, message):
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.loads(_toml(extra=_table(control, "control") + predicts))


def test_not_toml_and_empty_and_unknown_top_level():
    with pytest.raises(RegistryError, match="not valid TOML"):
        registry.loads("[[behaviour]\n")
    with pytest.raises(RegistryError, match=r"no \[\[behaviour\]\] entries"):
        registry.loads("")
    with pytest.raises(RegistryError, match="unknown top-level key"):
        registry.loads(_toml(extra="[[behavior]]\nid = 'X-Y'\n"))
