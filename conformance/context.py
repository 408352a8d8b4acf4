"""What a scenario gets: the live testbed, where to put evidence, and the
book-keeping every scenario repeats (flow dumps and the table before/after)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from conformance.evidence import save_json, save_text
from conformance.results import ScenarioResult
from topo.testbed import Testbed


@dataclass
class Context:
    testbed: Testbed
    run_dir: Path

    def folder(self, scenario: str) -> Path:
        path = self.run_dir / "evidence" / scenario.replace("/", "_")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.run_dir.resolve()))

    def clients(self) -> list:
        return [h for h in self.testbed.net.hosts if h.name.startswith("h")]

    @contextmanager
    def recorded(self, scenario: str):
        """Flows and table before and after the block; yields a Record to fill in."""
        folder = self.folder(scenario)
        record = Record(self, scenario, folder)
        if self.testbed.controller is None:  # a classic NAT: its nftables ruleset is all there is to record
            record.evidence.append(self.rel(save_text(folder / "nat-ruleset.txt", self.testbed.nat_ruleset())))
            yield record
            return
        record.evidence.append(self.rel(save_text(folder / "flows-before.txt", self.testbed.dump_flows())))
        record.table_before = self.testbed.table()
        try:
            yield record
        finally:
            record.evidence.append(self.rel(save_text(folder / "flows-after.txt", self.testbed.dump_flows())))
            record.table_after = self.testbed.table()
            record.evidence.append(self.rel(save_json(folder / "table-after.json", record.table_after)))


@dataclass
class Record:
    ctx: Context
    scenario: str
    folder: Path
    evidence: list[str] = field(default_factory=list)
    table_before: dict = field(default_factory=dict)
    table_after: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def counter_delta(self, name: str) -> int:
        return self.table_after.get("counters", {}).get(name, 0) - self.table_before.get("counters", {}).get(name, 0)

    def result(self, behaviour: str, name: str, checks: list[tuple[bool, str]], positive: str, negative: str,
               cell: dict | None = None, extra_evidence: Sequence[Path] = ()) -> ScenarioResult:
        """A verdict from named checks: pass only if every check holds; the failed ones are the reason."""
        failed = [text for ok, text in checks if not ok]
        return ScenarioResult(
            behaviour=behaviour, scenario=f"{self.scenario}/{name}", cell=cell,
            verdict="fail" if failed else "pass", reason="; ".join(failed), positive=positive, negative=negative,
            evidence=tuple(self.evidence + [self.ctx.rel(p) for p in extra_evidence]),
            started=self.started_at, duration_s=round(time.monotonic() - self.started, 2))


Scenario = Callable[[Context], list[ScenarioResult]]
