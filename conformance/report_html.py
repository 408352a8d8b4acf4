"""The HTML report, laid out so that its first screen (1400 px wide) answers "what passed?".

First screen: the summary counts, a compact colour-coded verdict matrix
(behaviours x matrix cells), the claims as 40 squares, the controls labelled by
what they show ("failed as predicted" / "did not fail: check failed"), and any
further registry tables (e.g. a requirement ledger) as one coloured strip
each. Below: the plots (PNG, embedded as data: URIs, so the page is one file),
then every behaviour, control and claim with its long evidence behind a
``<details>`` click, links to the pcaps and key files, and the environment.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from conformance import plots, report_data
from conformance.report_data import NO_CELL, cell_labels, control_label
from netwire.pcp import SERVER_PORT as PCP_PORT

TITLE = "natlab conformance report"
KEY_FILES = ("results.jsonl", "controller.log", "paths.txt")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cls(verdict: str) -> str:
    return "v-" + verdict.replace(" ", "-").replace(":", "")


def _chip(verdict: str, text: str = "", href: str = "", title: str = "") -> str:
    """A small coloured square (or a labelled badge when ``text``), a link when ``href``."""
    label = _e(text) if text else ""
    tag = "a" if href else "span"
    ref = f' href="{_e(href)}"' if href else ""
    kind = "badge" if text else "chip"
    return f'<{tag} class="{kind} {_cls(verdict)}"{ref} title="{_e(title or verdict)}">{label}</{tag}>'


def _counts_line(name: str, verdicts: Sequence[str], labels: Mapping[str, str] | None = None) -> str:
    tally: dict[str, int] = {}
    for v in verdicts:
        tally[v] = tally.get(v, 0) + 1
    parts = " ".join(_chip(v, f"{n} {labels.get(v, v) if labels else v}") for v, n in tally.items())
    return f'<div class="count"><b>{_e(name)}</b> {parts or "<em>none</em>"}</div>'


def summary(beh: pd.DataFrame, claims: pd.DataFrame, ctl: pd.DataFrame, cells: pd.DataFrame) -> str:
    """One line per kind of verdict: behaviours, claims, controls (by what they show), scenario results."""
    return "\n".join([
        _counts_line("Behaviours", list(beh["verdict"])),
        _counts_line("Claims 1-40", list(claims["verdict"])),
        _counts_line("Controls", [control_label(v) for v in ctl["verdict"]],),
        _counts_line("Scenario results", list(cells["verdict"])),
    ])


def _matrix_header() -> str:
    """Three header rows: IPsec protocol, mode, transport (each cell's label read top-down)."""
    parts = [c.split("/") for c in cell_labels()]
    rows = []
    for level in range(3):
        spans: list[tuple[str, int]] = []
        for p in parts:
            key = "/".join(p[: level + 1])
            if spans and spans[-1][0] == key:
                spans[-1] = (key, spans[-1][1] + 1)
            else:
                spans.append((key, 1))
        first = '<th rowspan="3">behaviour</th>' if level == 0 else ""
        last = f'<th rowspan="3">{_e(NO_CELL)}</th><th rowspan="3">verdict</th>' if level == 0 else ""
        cols = "".join(f'<th colspan="{n}">{_e(k.split("/")[-1])}</th>' for k, n in spans)
        rows.append(f"<tr>{first}{cols}{last}</tr>")
    return "\n".join(rows)


def verdict_matrix(matrix: Mapping[str, Mapping[str, str]], beh: pd.DataFrame) -> str:
    """The compact matrix: a row per behaviour, a square per matrix cell, its overall verdict last."""
    overall = dict(zip(beh["id"], beh["verdict"], strict=True))
    texts = dict(zip(beh["id"], beh["text"], strict=True))
    body = []
    for bid, per_cell in matrix.items():
        squares = "".join(
            f"<td>{_chip(per_cell[c], href=f'#b-{bid}', title=f'{bid} {c}: {per_cell[c]}')}</td>"
            if c in per_cell else '<td class="na"></td>' for c in [*cell_labels(), NO_CELL])
        name = f'<a href="#b-{_e(bid)}" title="{_e(texts[bid])}">{_e(bid)}</a>'
        body.append(f"<tr><th>{name}</th>{squares}<td>{_chip(overall[bid], overall[bid])}</td></tr>")
    legend = "".join(f"{_chip(v)}{_e(v)}" for v in ("pass", "fail", "error", "not run", "not implemented"))
    return (f'<table class="matrix">\n<thead>{_matrix_header()}</thead>\n<tbody>\n' + "\n".join(body)
            + f'\n</tbody>\n</table>\n<div class="legend">{legend}</div>')


def claims_grid(claims: pd.DataFrame) -> str:
    squares = "".join(
        _chip(r.verdict, str(r.claim), href="#claims", title=f"claim {r.claim}: {r.verdict} ({r.behaviours})")
        for r in claims.itertuples())
    return f'<div class="claims">{squares}</div>'


def controls_list(ctl: pd.DataFrame) -> str:
    items = "".join(
        f'<li>{_chip(r.verdict, control_label(r.verdict), href=f"#c-{r.id}")} <a href="#c-{_e(r.id)}">'
        f"{_e(r.id)}</a> <span class=\"muted\">breaks {_e(r.behaviours)}</span></li>" for r in ctl.itertuples())
    return f'<ul class="controls">{items}</ul>'


def strip(title: str, df: pd.DataFrame) -> str:
    """Any further table with an id and a verdict column (a ledger) as one strip of squares."""
    key = df.columns[0]
    anchor = "s-" + title.lower().replace(" ", "-")
    squares = "".join(_chip(str(r["verdict"]), href=f"#{anchor}", title=f"{r[key]}: {r['verdict']}")
                      for _, r in df.iterrows())
    return f'<h3>{_e(title)}</h3><div class="strip">{squares}</div>'


def ledger_strip(rows: Sequence[Mapping[str, Any]]) -> str:
    """The ledger on the first screen: per RFC, one square per requirement, coloured by its verdict."""
    by_rfc: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_rfc.setdefault(str(row["rfc"]), []).append(row)
    lines = "".join(
        f'<div class="ledger-rfc"><span class="rfc">RFC {_e(rfc)}</span>' + "".join(
            _chip(str(r["verdict"]), href="#ledger", title=f"RFC {rfc} {r['req']} ({r['level']}): {r['verdict']}")
            for r in mine) + "</div>" for rfc, mine in by_rfc.items())
    return f"<h3>BEHAVE ledger</h3>{_counts_line('Requirements', [str(r['verdict']) for r in rows])}{lines}"


def ledger_table(rows: Sequence[Mapping[str, Any]], base: str) -> str:
    columns = [c for c in ("rfc", "req", "level", "verdict", "oracle", "text", "positive", "negative", "reason", "na",
                           "evidence") if any(c in r for r in rows)]
    frame = pd.DataFrame([{c: r.get(c, "") for c in columns} for r in rows], columns=columns)
    return table(frame, base)


# --- the long part ------------------------------------------------------------------------------------------


def _links(paths: Sequence[str], base: str) -> str:
    return " ".join(f'<a class="file" href="{_e(base + p)}">{_e(p)}</a>' for p in paths)


def _list(title: str, items: Sequence[str]) -> str:
    if not items:
        return ""
    return f"<h4>{_e(title)}</h4><ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def behaviour_details(beh: pd.DataFrame, base: str) -> str:
    """Every behaviour behind a click: the sentence in the summary line, the evidence inside."""
    out = []
    for r in beh.itertuples():
        facts = f"claims {_e(r.claims or '-')}; steps {_e(r.steps)}; {r.scenarios} scenario results" + (
            f"; cells {_e(r.cells_covered)}" if r.cells_covered else "")
        out.append(
            f'<details id="b-{_e(r.id)}"><summary>{_chip(r.verdict, r.verdict)} <b>{_e(r.id)}</b> {_e(r.text)}'
            f'</summary><div class="body"><p class="muted">{facts}</p>'
            + _list("Shown (positive evidence)", r.positive) + _list("Not happened (negative evidence)", r.negative)
            + _list("Why it failed", r.reasons) + _list("Fails without", [r.fails_without] if r.fails_without else [])
            + (f"<h4>Evidence</h4><p>{_links(r.evidence, base)}</p>" if r.evidence else "")
            + "</div></details>")
    return "\n".join(out)


def control_details(ctl: pd.DataFrame, base: str) -> str:
    out = []
    for r in ctl.itertuples():
        label = control_label(r.verdict)
        out.append(
            f'<details id="c-{_e(r.id)}"><summary>{_chip(r.verdict, label)} <b>{_e(r.id)}</b> {_e(r.text)}'
            f'</summary><div class="body"><p class="muted">cells {_e(r.cells_covered)}; breaks '
            f"{_e(r.behaviours)}</p>" + _list("Predicted failures", r.predicts) + _list("Seen", r.positive)
            + _list("Why the check failed", r.reasons)
            + (f"<h4>Evidence</h4><p>{_links(r.evidence, base)}</p>" if r.evidence else "") + "</div></details>")
    return "\n".join(out)


def table(df: pd.DataFrame, base: str = "") -> str:
    """A plain table for the long sections (claims, scenario results, environment, extra tables)."""

    def cell(col: str, v: Any) -> str:
        items = v if isinstance(v, list) else [v]
        if col == "evidence":
            return _links([str(i) for i in items], base)
        if col == "verdict":
            return _chip(str(v), str(v))
        return "<br>".join(_e(i) for i in items)

    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    rows = "\n".join("<tr>" + "".join(f"<td>{cell(c, v)}</td>" for c, v in zip(df.columns, row, strict=True))
                     + "</tr>" for row in df.itertuples(index=False))
    return f'<table class="long">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>'


def key_files(run_dir: Path | None, base: str) -> list[str]:
    """The run's pcaps, Wireshark key files (esp_sa) and logs, relative to the run folder."""
    if run_dir is None or not run_dir.is_dir():
        return []
    found = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and (
        p.suffix == ".pcap" or p.name == "esp_sa" or p.name in KEY_FILES)]
    return [str(p.relative_to(run_dir)) for p in found]


def figure(title: str, caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{_e(title)}.</b> {_e(caption)}</figcaption></figure>")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; max-width: 1360px; }
h1 { font-size: 1.4em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin-top: 1.6em; } h3 { font-size: 1em; }
.muted { color: #666; font-size: 0.9em; }
.first { display: flex; gap: 2em; align-items: flex-start; }
.count { margin: 0.25em 0; }
.chip { display: inline-block; width: 14px; height: 14px; border-radius: 2px; vertical-align: middle; }
.badge { display: inline-block; padding: 0 0.45em; border-radius: 3px; font-size: 0.85em; font-weight: bold;
         color: #fff; white-space: nowrap; text-decoration: none; }
.v-pass { background: #3a9d4a; } .v-fail, .v-did-not-fail-check-failed { background: #d43d3d; }
.v-error { background: #8e2b8e; } .v-partial { background: #e0a526; }
.v-not-implemented { background: #b8b8b8; } .v-not-run { background: #e6e6e6; } .badge.v-not-run { color: #333; }
.legend { font-size: 0.8em; margin: 0.3em 0; } .legend .chip { margin: 0 0.2em 0 0.8em; }
.v-failed-as-predicted { background: #3a9d4a; }
.v-na { background: #fff; border: 1px solid #bbb; } .badge.v-na { color: #333; }
.v-not-checked { background: #dcdcdc; } .badge.v-not-checked { color: #333; }
.ledger-rfc { margin: 2px 0; } .ledger-rfc .rfc { display: inline-block; width: 6.5em; font-size: 0.85em; }
.ledger-rfc .chip { margin: 1px; }
table { border-collapse: collapse; font-size: 0.85em; }
table.matrix th, table.matrix td { border: 1px solid #ddd; padding: 1px 3px; text-align: center; }
table.matrix tbody th { text-align: left; font-weight: normal; white-space: nowrap; }
table.matrix td.na { background: #fafafa; }
table.long { margin: 0.5em 0; } table.long th, table.long td { border: 1px solid #ccc; padding: 0.2em 0.4em;
  text-align: left; vertical-align: top; }
.claims { display: grid; grid-template-columns: repeat(8, 34px); gap: 3px; }
.claims .badge { text-align: center; padding: 2px 0; }
.strip .chip { margin: 1px; }
ul.controls { list-style: none; padding: 0; } ul.controls li { margin: 0.3em 0; }
details { border-bottom: 1px solid #eee; padding: 0.2em 0; } summary { cursor: pointer; }
details .body { padding: 0.2em 1.5em; } h4 { margin: 0.4em 0 0.1em; font-size: 0.9em; }
a.file { display: inline-block; margin-right: 0.8em; font-family: monospace; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
""".strip()


def page(head: str, first_screen: str, rest: Sequence[str]) -> str:
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{_e(TITLE)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n{head}\n"
            f'<section id="first-screen">\n{first_screen}\n</section>\n' + "\n".join(rest) + "\n</body>\n</html>\n")


# --- the whole page --------------------------------------------------------------------------------------

STANDARD = ("Environment", "Summary", "Behaviours", "Claims", "Controls", "Scenario results")


def plots_for(registry, results, environment: Mapping[str, Any], run_dir: Path | None,
              bench_dir: Path | None) -> list[tuple[str, str, str, bytes]]:
    """(file name, title, caption, PNG) of each plot the run has data for."""
    out = [("verdict-matrix.png", "Verdict matrix", "behaviours x {AH, ESP} x {transport, tunnel} x {TCP, UDP}; "
            "white: no such column for the behaviour",
            plots.verdict_matrix(report_data.verdict_matrix(registry, results),
                                 [*report_data.cell_labels(), report_data.NO_CELL]))]
    benches = report_data.bench_rounds(bench_dir) if bench_dir and bench_dir.is_dir() else {}
    if benches:
        out.append(("throughput.png", "Throughput of every benchmark variant", "natlab bench: median of the "
                    "rounds, the bar's range from the slowest to the fastest round, each round a dot; "
                    "compare variants within one benchmark (measured side by side)", plots.throughput(benches)))
    capture = report_data.renew_capture(results, run_dir) if run_dir else None
    events = report_data.lease_events(capture, PCP_PORT) if capture else []
    if events and capture is not None and run_dir is not None:  # events come from a capture of run_dir
        out.append(("lease-timeline.png", "Lease timeline of CL-RENEW", "every successful PCP answer to h1 on its "
                    "wire (the first one seen is the grant when the capture began before it; then renewals, "
                    "releases) and the validity each gave, till expiry; read from "
                    f"{capture.relative_to(run_dir)}", plots.lease_timeline(events)))
    shares = report_data.path_shares(environment)
    if shares:
        out.append(("path-shares.png", "Fast vs slow path", "translated packets over the whole run: by r1's "
                    "flows (fast path) and by the controller (slow path)", plots.path_shares(shares)))
    return out


def render(registry, results, environment: Mapping[str, Any], sections: Sequence[tuple[str, pd.DataFrame]],
           frames: Mapping[str, pd.DataFrame], rules: str, base: str, run_dir: Path | None,
           figures: Sequence[tuple[str, str, str, bytes]]) -> str:
    """The page: head, first screen, plots, then the long evidence behind clicks."""
    beh, claims, ctl, cells = (frames[k] for k in ("behaviours", "claims", "controls", "cells"))
    extra = [(t, df) for t, df in sections if t not in STANDARD]
    ledger = report_data.ledger_rows(results, run_dir) if run_dir else []
    stamp = " · ".join(_e(f"{k} {v}") for k, v in environment.items() if k in ("commit", "date", "kernel"))
    head = f'<h1>{_e(TITLE)}</h1><p class="muted">{stamp}</p>'
    right = (summary(beh, claims, ctl, cells) + "<h3>Claims</h3>" + claims_grid(claims) + "<h3>Controls</h3>"
             + controls_list(ctl) + "".join(strip(t, df) for t, df in extra if "verdict" in df.columns)
             + (ledger_strip(ledger) if ledger else ""))
    first = (f'<div class="first"><div>{verdict_matrix(report_data.verdict_matrix(registry, results), beh)}</div>'
             f"<div>{right}</div></div>")
    rest = ['<h2 id="plots">Plots</h2>' + "".join(figure(t, c, png) for _, t, c, png in figures),
            f'<h2 id="behaviours">Behaviours</h2><p class="muted">{_e(rules)}</p>' + behaviour_details(beh, base),
            '<h2 id="controls">Controls</h2>' + control_details(ctl, base),
            f'<h2 id="claims">Claims</h2><details><summary>40 claims and the behaviours that carry them</summary>'
            f'{table(claims[["claim", "verdict", "behaviour_verdicts"]])}</details>']
    if ledger:
        rest.append(f'<h2 id="ledger">BEHAVE ledger</h2><details><summary>{len(ledger)} requirements, each with '
                    f"its verdict and evidence</summary>{ledger_table(ledger, base)}</details>")
    rest += [f'<h2 id="s-{_e(t.lower().replace(" ", "-"))}">{_e(t)}</h2><details open><summary>{len(df)} rows'
             f"</summary>{table(df, base)}</details>" for t, df in extra]
    files = key_files(run_dir, base)
    rest += [f'<h2 id="scenario-results">Scenario results</h2><details><summary>{len(cells)} results</summary>'
             f'{table(dict(sections)["Scenario results"], base)}</details>',
             f'<h2 id="files">Pcaps and key files</h2><p>{_links(files, base) or "<em>none in this folder</em>"}</p>',
             f'<h2 id="environment">Environment</h2>{table(dict(sections)["Environment"])}']
    return page(head, first, rest)
