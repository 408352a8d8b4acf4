"""The BEHAVE ledger (issue 14): RFC 4787, 5382, 5508, 6888 and 7857, requirement by requirement,
as validated data (``ledger.toml``), joined with the live checks of ``conformance/scenarios/behave.py``.

Each row has a check (a named function that sees the behaviour and, where it must be absent,
its absence) or a reasoned N/A. A row whose check did not run, or raised, is an error, never a
pass; a MAY or SHOULD that the NAT does not do is a "fail" at its level, shown as such, so the
ledger says plainly what the NAT is. Rows become ScenarioResults under the registry behaviour
the NAT's own translation belongs to (NAT-AUTO), one per requirement, so the existing report
shows them; the whole ledger is also written as JSON beside the run's evidence.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PACKAGED = Path(__file__).with_name("ledger.toml")
RFCS = {4787: 14, 5382: 10, 5508: 11, 6888: 15, 7857: 11}  # requirements per RFC (7857: sections 3.1-3.11)
LEVELS = ("MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "RECOMMENDED", "MAY")
ORACLE_FIELDS = ("mapping", "filtering", "hairpinning")
BEHAVIOUR = "NAT-AUTO"  # registry row of the NAT's own translation (NAT-ALG entries), where ledger results go
_FIELDS = {"rfc", "req", "level", "text", "check", "na", "gap", "oracle", "unit"}


class LedgerError(ValueError):
    """Bad ledger data; the message names the row and the field."""


class NotChecked(Exception):
    """A check that could not judge on this run, with why (e.g. it needs more time than a scenario has):
    its rows are "not checked", never a pass, and give no result (as a behaviour without a scenario)."""


@dataclass(frozen=True)
class Requirement:
    rfc: int
    req: str
    level: str
    text: str
    check: str = ""
    na: str = ""
    gap: str = ""  # a requirement natlab knowingly does not meet, and why: "not met", never a pass
    oracle: str = ""
    unit: str = ""

    @property
    def name(self) -> str:
        return f"RFC {self.rfc} {self.req}"


@dataclass(frozen=True)
class Outcome:
    """What one check saw: ``ok`` is its verdict; ``positive``/``negative`` the evidence sentences."""

    ok: bool
    positive: str
    negative: str
    evidence: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class Line:
    """One ledger row with its verdict: pass | fail | error | n/a | not checked."""

    requirement: Requirement
    verdict: str
    positive: str = ""
    negative: str = ""
    reason: str = ""
    evidence: tuple[str, ...] = ()
    oracle: str = ""  # the external classifier's word for this row, when it has one


def load(path: str | Path | None = None) -> list[Requirement]:
    """The ledger's rows, validated; LedgerError names the row and field of a bad one."""
    data = tomllib.loads(Path(path or PACKAGED).read_text())
    rows = [_requirement(i, row) for i, row in enumerate(data.get("requirement", []), 1)]
    names = [r.name for r in rows]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise LedgerError(f"requirements listed twice: {sorted(dup)}")
    return rows


def _requirement(index: int, row: Mapping[str, Any]) -> Requirement:
    where = f"requirement #{index} ({row.get('rfc')} {row.get('req')})"
    extra = set(row) - _FIELDS
    if extra:
        raise LedgerError(f"{where}: unknown field {sorted(extra)[0]!r}")
    for name in ("rfc", "req", "level", "text"):
        if name not in row:
            raise LedgerError(f"{where}: field {name!r} missing")
    if row["rfc"] not in RFCS:
        raise LedgerError(f"{where}: field 'rfc': {row['rfc']!r} is not one of {sorted(RFCS)}")
    if row["level"] not in LEVELS:
        raise LedgerError(f"{where}: field 'level': {row['level']!r} is not one of {', '.join(LEVELS)}")
    if sum(bool(row.get(k)) for k in ("check", "na", "gap")) != 1:
        raise LedgerError(f"{where}: needs exactly one of a check, an na reason or a gap reason")
    if row.get("oracle", "") not in ("", *ORACLE_FIELDS):
        raise LedgerError(f"{where}: field 'oracle': {row['oracle']!r} is not one of {', '.join(ORACLE_FIELDS)}")
    return Requirement(**{k: row[k] for k in row})


def judge(rows: Iterable[Requirement], outcomes: Mapping[str, Outcome | Exception],
          oracle: Mapping[str, str] | None = None) -> list[Line]:
    """Each row's verdict from its check's outcome; a missing or failed check is an error."""
    lines = []
    for r in rows:
        word = (oracle or {}).get(r.oracle, "") if r.oracle else ""
        if r.na or r.gap:
            lines.append(Line(r, "n/a" if r.na else "not met", reason=r.na or r.gap, oracle=word))
            continue
        got = outcomes.get(r.check)
        if isinstance(got, NotChecked):
            lines.append(Line(r, "not checked", reason=str(got), oracle=word))
            continue
        if got is None or isinstance(got, Exception):
            why = f"check {r.check!r} did not run" if got is None else f"check {r.check!r} raised {got!r}"
            lines.append(Line(r, "error", reason=why, oracle=word))
            continue
        verdict = "pass" if got.ok else "fail"
        reason = "" if got.ok else (got.reason or f"{r.level} not met: {got.negative or got.positive}")
        lines.append(Line(r, verdict, got.positive, got.negative, reason, got.evidence, word))
    return lines


def summary(lines: Iterable[Line]) -> dict[str, int]:
    """Counts of verdicts, for the scenario's log and the report's first screen."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.verdict] = counts.get(line.verdict, 0) + 1
    return counts


def write_json(lines: Iterable[Line], path: Path) -> None:
    """The whole ledger (N/A rows included) as evidence beside the run."""
    rows = [{**asdict(line.requirement), **{k: v for k, v in asdict(line).items() if k != "requirement"}}
            for line in lines]
    path.write_text(json.dumps(rows, indent=1) + "\n")
