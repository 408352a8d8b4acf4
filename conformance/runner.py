"""``natlab demo``: build the testbed, run every scenario, write the report.

Results go to ``<out>/runs/<stamp>/results.jsonl`` as they come (a crash
loses nothing written), evidence beside them; the report (CSV, Markdown,
HTML) is written to ``<out>/`` and into the run folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from conformance import registry as registry_mod
from conformance.context import Context
from conformance.environment import collect
from conformance.report import summary_table, write_report
from conformance.results import ResultWriter, ScenarioResult, read_results
from conformance.scenario import ScenarioRecord, check, registered
from topo.testbed import Testbed, TestbedError

Log = Callable[[str], None]
# NAT-EXPIRE watches a lease run out: allow 1 s leases (RFC 6887's 120 s minimum is a default, not a rule).
CONTROLLER_ARGS = ["--lease-min-lifetime", "1"]


def run_suite(out: Path, clients: int = 3, servers: int = 2, globals: int = 2,
              scenarios: Sequence[ScenarioRecord] | None = None, log: Log = print) -> tuple[Path, list[ScenarioResult]]:
    """Run the registered scenarios (or ``scenarios``) on a fresh testbed; return the run folder and the results.

    Records are checked against behaviours.toml before any testbed starts. Those
    whose testbed is ``classic`` (the CTRL-CLASSIC control) run afterwards on a
    second testbed whose r1 is a classic Linux NAT (one testbed at a time).
    """
    records = tuple(scenarios) if scenarios is not None else registered()
    check(records, registry_mod.load())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (out / "runs" / stamp).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    extensible = [r for r in records if r.testbed == "extensible"]
    classic = [r for r in records if r.testbed == "classic"]
    results_path = run_dir / "results.jsonl"
    log(f"natlab: run folder {run_dir}")
    done = 0
    with ResultWriter(results_path) as writer:
        if extensible:
            with Testbed(clients=clients, servers=servers, globals=globals, workdir=run_dir / "testbed",
                         controller_args=CONTROLLER_ARGS) as testbed:
                log(f"natlab: testbed up ({clients} clients, {servers} servers, {globals} global addresses)")
                done = _run_all(Context(testbed, run_dir), extensible, writer, done, len(records), log)
                time.sleep(2.5)  # one more reading of r1's flow counters
                paths = path_summary(testbed.table())
                problems = testbed.controller.problems() if testbed.controller else []
                if testbed.controller:
                    shutil.copy(testbed.controller.log, run_dir / "controller.log")
            if problems:
                log("natlab: the controller logged problems:\n  " + "\n  ".join(problems))
            (run_dir / "paths.txt").write_text(paths + "\n")
        if classic:
            with Testbed(clients=1, servers=1, globals=1, workdir=run_dir / "testbed-classic", nat="classic") as tb:
                log("natlab: classic-NAT testbed up (r1 masquerades with Linux conntrack)")
                _run_all(Context(tb, run_dir), classic, writer, done, len(records), log)
    return run_dir, read_results(results_path)


def _run_all(ctx: Context, records: Sequence[ScenarioRecord], writer: ResultWriter, done: int, total: int,
             log: Log) -> int:
    """Run ``records`` in order, writing each result as it comes; returns how many have run in all."""
    for record in records:
        done += 1
        name = record.name
        log(f"[{done}/{total}] {name} ...")
        t0 = time.monotonic()
        try:
            batch = record.run(ctx)
        except Exception as exc:  # a broken scenario is an error verdict, never a silent pass
            batch = [ScenarioResult(behaviour=behaviour, scenario=name, verdict="error",
                                    reason=f"{type(exc).__name__}: {exc}"[:500], control=behaviour.startswith("CTRL-"),
                                    started=datetime.now(UTC).isoformat(timespec="seconds"))
                     for behaviour in record.covers]
            (ctx.run_dir / f"{name}-traceback.txt").write_text(traceback.format_exc())
        for result in batch:
            writer.write(result)
            log(f"      {result.scenario}: {result.verdict}" + (f" ({result.reason})" if result.reason else ""))
        log(f"      {time.monotonic() - t0:.1f}s")
    return done


def path_summary(snapshot: dict) -> str:
    """How much traffic took each path over the whole run (DESIGN.md: the report shows it)."""
    switch = snapshot.get("switch_packets", {})
    counters = snapshot.get("counters", {})
    return (f"packets matched in r1: fast path {switch.get('fast path', 0)}, to the controller "
            f"{switch.get('table miss', 0) + switch.get('punt', 0) + switch.get('slow-path punt', 0)}; "
            f"translated by the controller (slow path) {counters.get('slow_path_packets', 0)}; "
            f"leases granted {counters.get('leases_granted', 0)}")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    only = getattr(args, "only", None)
    try:
        run_dir, results = run_suite(out, scenarios=[r for r in registered() if r.name in only] if only else None)
    except TestbedError as exc:
        print(f"natlab demo: {exc}", file=sys.stderr)
        return 1
    registry = registry_mod.load()
    env = collect()
    paths = run_dir / "paths.txt"
    env["NAT paths"] = paths.read_text().strip() if paths.exists() else "not measured"
    if only:
        env["Scenarios run"] = f"only {', '.join(only)} (natlab demo --only)"
    for folder, base in ((run_dir, ""), (out, str(run_dir.relative_to(out.resolve())) + "/")):
        write_report(registry, results, env, folder, evidence_base=base)
    print(summary_table(registry, results))
    print(f"\nnatlab: report written to {out / 'report.html'} (also report.md, behaviours.csv, claims.csv, controls.csv, "
          f"cells.csv); evidence in {run_dir}")
    return 0 if all(r.verdict == "pass" for r in results) else 1
