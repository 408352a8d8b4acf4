"""The conformance report: registry + scenario results -> CSV, Markdown, HTML.

Verdict rules (issue 2, item 4): a behaviour without a scenario is "not
implemented", never a pass; any failed or errored result fails it.  Claims
(1..40) take their verdict from the behaviours that carry them (CLAIMS.md).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from conformance import report_html
from conformance.registry import AXES, MATRIX_CELLS, Control, Registry
from conformance.results import ScenarioResult

PASS = "pass"
FAIL = "fail"
PARTIAL = "partial"
NOT_IMPLEMENTED = "not implemented"
VERDICT_ORDER = (PASS, PARTIAL, FAIL, NOT_IMPLEMENTED)  # claim verdicts
BEHAVIOUR_VERDICTS = (PASS, FAIL, NOT_IMPLEMENTED)  # behaviours and controls are never partial

TITLE = report_html.TITLE
RULES = (
    'A behaviour with no scenario result is "not implemented", never a pass. '
    "Any failed or errored result fails it; it passes when all its results pass. "
    'A claim passes when all its behaviours pass, fails when any fails, is "partial" when some pass '
    "and the others are not implemented. A control passes when it failed as the seed predicts."
)


class ReportError(ValueError):
    """Results that do not fit the registry (unknown behaviour ids)."""


# --- verdicts ---------------------------------------------------------------------------


def behaviour_verdict(results: Sequence[ScenarioResult]) -> str:
    """pass | fail | not implemented for one behaviour's results.

    Control results can fail a behaviour but never make it pass on their own:
    a pass needs at least one scenario that showed the behaviour.
    """
    if any(r.verdict != PASS for r in results):
        return FAIL
    if not any(not r.control for r in results):
        return NOT_IMPLEMENTED
    return PASS


def control_verdict(results: Sequence[ScenarioResult]) -> str:
    """pass | fail | not implemented for one control (its results are already relative)."""
    if not results:
        return NOT_IMPLEMENTED
    return PASS if all(r.verdict == PASS for r in results) else FAIL


def claim_verdict(verdicts: Iterable[str]) -> str:
    """pass | fail | partial | not implemented from the verdicts of a claim's behaviours."""
    vs = list(verdicts)
    if FAIL in vs:
        return FAIL
    if all(v == NOT_IMPLEMENTED for v in vs):  # also: no behaviour at all
        return NOT_IMPLEMENTED
    if all(v == PASS for v in vs):
        return PASS
    return PARTIAL


def check_results(registry: Registry, results: Iterable[ScenarioResult]) -> None:
    """Raise ReportError unless every result names a known behaviour or (as a control) a control."""
    bad = []
    for r in results:
        if r.behaviour in registry:
            continue
        if registry.control(r.behaviour) is not None:
            if not r.control:
                bad.append(f"{r.scenario}: {r.behaviour!r} is a control, but the result has control=false")
            continue
        bad.append(f"{r.scenario}: unknown behaviour {r.behaviour!r}")
    if bad:
        raise ReportError("results do not fit the registry:\n  " + "\n  ".join(bad))


# --- frames -----------------------------------------------------------------------------


def _group(results: Iterable[ScenarioResult]) -> dict[str, list[ScenarioResult]]:
    out: dict[str, list[ScenarioResult]] = {}
    for r in results:
        out.setdefault(r.behaviour, []).append(r)
    return out


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _tagged(r: ScenarioResult, text: str) -> str:
    """Evidence text prefixed with where it came from: "scenario [cell]: text"."""
    if not text:
        return ""
    where = r.scenario + (f" [{r.cell_label()}]" if r.cell else "")
    return f"{where}: {text}"


def _matrix_cells(results: Iterable[ScenarioResult]) -> list[str]:
    """The full matrix cells among `results`, in matrix order, as "AH/transport/TCP"."""
    seen = {tuple(r.cell.get(a) for a in AXES) for r in results if r.cell}
    return ["/".join(c.values()) for c in MATRIX_CELLS if tuple(c.values()) in seen]


def _summary_row(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """The columns common to behaviour and control rows."""
    return {
        "scenarios": len(results),
        "passed": sum(r.verdict == PASS for r in results),
        "failed": sum(r.verdict != PASS for r in results),
        "positive": _unique(_tagged(r, r.positive) for r in results),
        "negative": _unique(_tagged(r, r.negative) for r in results),
        "cells": _unique(r.cell_label() for r in results),
        "reasons": _unique(_tagged(r, r.reason) for r in results if r.verdict != PASS),
        "evidence": _unique(p for r in results for p in r.evidence),
    }


def behaviours_frame(registry: Registry, results: Sequence[ScenarioResult]) -> pd.DataFrame:
    """One row per CLAIMS.md behaviour, in registry order."""
    check_results(registry, results)
    by_id = _group(results)
    rows = []
    for b in registry:
        rs = by_id.get(b.id, [])
        covered = _matrix_cells(r for r in rs if not r.control)
        rows.append(
            {
                "id": b.id,
                "group": b.group,
                "verdict": behaviour_verdict(rs),
                "text": b.text,
                "claims": ", ".join(map(str, b.claims)),
                "steps": ", ".join(b.steps),
                "fails_without": b.variant,
                **_summary_row(rs),
                "cells_covered": f"{len(covered)}/{len(MATRIX_CELLS)}" if b.matrix else "",
            }
        )
    return pd.DataFrame(rows)


def claims_frame(registry: Registry, results: Sequence[ScenarioResult]) -> pd.DataFrame:
    """One row per claim 1..40 with the behaviours that carry it (CLAIMS.md)."""
    verdicts = behaviour_verdicts(registry, results)
    rows = []
    for claim, ids in registry.claims_index().items():
        rows.append(
            {
                "claim": claim,
                "verdict": claim_verdict(verdicts[i] for i in ids),
                "behaviours": ", ".join(ids),
                "behaviour_verdicts": [f"{i}: {verdicts[i]}" for i in ids],
            }
        )
    return pd.DataFrame(rows)


def behaviour_verdicts(registry: Registry, results: Sequence[ScenarioResult]) -> dict[str, str]:
    """Behaviour id -> verdict, for every behaviour of the registry."""
    check_results(registry, results)
    by_id = _group(results)
    return {b.id: behaviour_verdict(by_id.get(b.id, [])) for b in registry}


def _predicted_cells(control: Control) -> list[str]:
    return ["/".join(c.values()) for c in MATRIX_CELLS if any(p.covers(c) for p in control.predicts)]


SUMMARY_COLUMNS = ("scenarios", "passed", "failed", "positive", "negative", "cells", "reasons", "evidence")
CONTROL_COLUMNS = ("id", "verdict", "text", "predicts", "behaviours", *SUMMARY_COLUMNS, "cells_covered")


def controls_frame(registry: Registry, results: Sequence[ScenarioResult]) -> pd.DataFrame:
    """One row per control of the registry, from the results that name its id."""
    check_results(registry, results)
    by_id = _group(results)
    rows = []
    for c in registry.controls:
        rs = by_id.get(c.id, [])
        predicted = _predicted_cells(c)
        covered = [cell for cell in _matrix_cells(rs) if cell in predicted]
        rows.append(
            {
                "id": c.id,
                "verdict": control_verdict(rs),
                "text": c.text,
                "predicts": [f"{p.label()}: {p.failure}" for p in c.predicts],
                "behaviours": ", ".join(c.behaviours),
                **_summary_row(rs),
                "cells_covered": f"{len(covered)}/{len(predicted)}",
            }
        )
    return pd.DataFrame(rows, columns=list(CONTROL_COLUMNS))


CELL_COLUMNS = (
    "behaviour", "scenario", "control", *AXES, "cell", "verdict",
    "positive", "negative", "reason", "evidence", "started", "duration_s",
)  # fmt: skip


def cells_frame(results: Sequence[ScenarioResult]) -> pd.DataFrame:
    """One row per scenario result, with the matrix axes as columns."""
    rows = []
    for r in results:
        cell = r.cell or {}
        rows.append(
            {
                "behaviour": r.behaviour,
                "scenario": r.scenario,
                "control": r.control,
                **{axis: cell.get(axis, "") for axis in AXES},
                "cell": r.cell_label(),
                "verdict": r.verdict,
                "positive": r.positive,
                "negative": r.negative,
                "reason": r.reason,
                "evidence": list(r.evidence),
                "started": r.started,
                "duration_s": r.duration_s,
            }
        )
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


def counts(verdicts: Iterable[str], order: Sequence[str] = VERDICT_ORDER) -> dict[str, int]:
    """Verdict -> count: every verdict of `order` (zeros included), then any others seen."""
    c = Counter(verdicts)
    return {v: c.get(v, 0) for v in order} | {v: n for v, n in c.items() if v not in order}


# --- rendering --------------------------------------------------------------------------


def _csv_ready(df: pd.DataFrame) -> pd.DataFrame:
    """Lists become "a; b" strings so each CSV cell is one value."""
    return df.apply(lambda col: col.map(lambda v: "; ".join(map(str, v)) if isinstance(v, list) else v))


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs tabulate; we do not)."""

    def cell(v: Any) -> str:
        items = v if isinstance(v, list) else [v]
        text = "<br>".join(html.escape(str(i), quote=False) for i in items)
        return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _environment_frame(environment: Mapping[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"item": list(environment), "value": [str(v) for v in environment.values()]})


def _counts_frame(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.DataFrame([{"of": name, **counts(df["verdict"])} for name, df in frames.items()])


_BEHAVIOUR_VIEW = [
    "id", "verdict", "scenarios", "claims", "steps", "text",
    "positive", "negative", "fails_without", "cells", "cells_covered", "reasons", "evidence",
]  # fmt: skip
_CONTROL_VIEW = ["id", "verdict", "scenarios", "text", "predicts", "cells", "cells_covered", "reasons", "evidence"]
_CELL_VIEW = ["behaviour", "scenario", "control", "cell", "verdict", "duration_s", "reason", "evidence"]


BASELINE_SECTION = "Baseline: NAT traversal, not the seed's method"  # issue 15: the group of BASE-* rows


def _sections(
    environment: Mapping[str, Any], beh: pd.DataFrame, claims: pd.DataFrame, ctl: pd.DataFrame, cells: pd.DataFrame
) -> list[tuple[str, pd.DataFrame]]:
    """The report's sections, shared by the Markdown and HTML renderings."""
    return [
        ("Environment", _environment_frame(environment)),
        ("Summary", _counts_frame({"behaviours": beh, "claims": claims, "controls": ctl})),
        ("Behaviours", beh[_BEHAVIOUR_VIEW]),
        (BASELINE_SECTION, beh[beh["group"] == "baseline"][["id", "verdict", "text", "positive", "reasons"]]),
        ("Claims", claims[["claim", "verdict", "behaviour_verdicts"]]),
        ("Controls", ctl[_CONTROL_VIEW]),
        ("Scenario results", cells[_CELL_VIEW]),
    ]


def write_report(
    registry: Registry,
    results: Sequence[ScenarioResult],
    environment: Mapping[str, Any],
    out_dir: str | Path,
    *,
    evidence_base: str = "",
    bench_dir: Path | None = None,
) -> dict[str, Path]:
    """Write behaviours.csv, claims.csv, controls.csv, cells.csv, report.md, report.html into `out_dir`.

    `evidence_base` is prefixed to evidence paths in HTML links (the paths are
    relative to the run directory; leave "" when the report sits in it). The plots
    (``plots/*.png``, also embedded in the HTML) read ``natlab bench``'s JSON in
    ``bench_dir`` (default: ``out_dir``) and the run's files under ``out_dir/evidence_base``.
    Returns file name -> path.  Raises ReportError on results naming unknown behaviours.
    """
    results = list(results)
    check_results(registry, results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    beh = behaviours_frame(registry, results)
    claims = claims_frame(registry, results)
    ctl = controls_frame(registry, results)
    cells = cells_frame(results)
    paths = {name: out / name for name in ("behaviours.csv", "claims.csv", "controls.csv", "cells.csv",
                                                 "report.md", "report.html")}
    _csv_ready(beh).to_csv(paths["behaviours.csv"], index=False)
    _csv_ready(claims).to_csv(paths["claims.csv"], index=False)
    _csv_ready(cells).to_csv(paths["cells.csv"], index=False)
    _csv_ready(ctl).to_csv(paths["controls.csv"], index=False)
    sections = _sections(environment, beh, claims, ctl, cells)

    run_dir = out / evidence_base if evidence_base else out
    figures = report_html.plots_for(registry, results, environment, run_dir, bench_dir or out)
    (out / "plots").mkdir(exist_ok=True)
    for name, _, _, png in figures:
        paths[f"plots/{name}"] = out / "plots" / name
        paths[f"plots/{name}"].write_bytes(png)

    md = [f"# {TITLE}", "", RULES, ""]
    for title, df in sections:
        md += [f"## {title}", "", markdown_table(df) if len(df) else "_none_", ""]
    md += ["## Plots", ""] + [f"![{title}](plots/{name})" for name, title, _, _ in figures] + [""]
    paths["report.md"].write_text("\n".join(md), encoding="utf-8")

    frames = {"behaviours": beh, "claims": claims, "controls": ctl, "cells": cells}
    page = report_html.render(registry, results, environment, sections, frames, RULES, evidence_base, run_dir,
                              figures)
    paths["report.html"].write_text(page, encoding="utf-8")
    return paths


def _text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*map(str, r)).rstrip() for r in rows
    ]


def summary_table(registry: Registry, results: Sequence[ScenarioResult]) -> str:
    """A short plain-text table for the terminal at the end of a run, with counts by verdict."""
    results = list(results)
    beh = behaviours_frame(registry, results)
    ctl = controls_frame(registry, results)
    claims = claims_frame(registry, results)
    rows = [(r.id, r.verdict, r.scenarios) for r in beh.itertuples()]
    rows += [(f"{r.id} (control)", r.verdict, r.scenarios) for r in ctl.itertuples()]
    lines = _text_table(("behaviour", "verdict", "scenarios"), rows)

    def tally(name: str, df: pd.DataFrame, order: Sequence[str]) -> str:
        return f"{name}: " + ", ".join(f"{n} {v}" for v, n in counts(df["verdict"], order).items())

    lines += ["", tally("behaviours", beh, BEHAVIOUR_VERDICTS), tally("claims", claims, VERDICT_ORDER)]
    if len(ctl):
        lines.append(tally("controls", ctl, BEHAVIOUR_VERDICTS))
    return "\n".join(lines)
