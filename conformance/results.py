"""One scenario run's result, stored as JSON Lines (one object per line).

The runner appends a line as each scenario ends, so a crash or a killed
testbed loses nothing already written; the report is built from the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from conformance.registry import AXES

VERDICTS = ("pass", "fail", "error")


class ResultError(ValueError):
    """A bad result record; the message names the field (and the file line when read)."""

    def __init__(self, field: str, why: str, *, where: str = "") -> None:
        self.field = field
        self.why = why
        self.where = where
        super().__init__(f"{where + ': ' if where else ''}field {field!r}: {why}")


@dataclass(frozen=True, kw_only=True)
class ScenarioResult:
    """The outcome of one scenario (one matrix cell, or one non-matrix check).

    `verdict` of a control (`control=True`) is relative to its predicted failure:
    "pass" means the traffic failed as the seed predicts (CLAIMS.md "Controls").
    """

    behaviour: str  # a registry behaviour id, or a control id when control=True
    scenario: str  # e.g. "nat-auto/tcp-curl"
    verdict: str  # pass | fail | error
    started: str  # ISO 8601
    cell: dict[str, str] | None = field(default=None, hash=False)  # e.g. {"ipsec": "ESP", ...}
    control: bool = False
    positive: str = ""  # evidence that the behaviour happened
    negative: str = ""  # evidence that the wrong thing did not happen
    reason: str = ""  # why, for fail/error
    evidence: tuple[str, ...] = ()  # paths relative to the run directory
    duration_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("behaviour", "scenario", "verdict", "started"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ResultError(name, f"expected a non-empty string, got {getattr(self, name)!r}")
        for name in ("positive", "negative", "reason"):
            if not isinstance(getattr(self, name), str):
                raise ResultError(name, f"expected a string, got {getattr(self, name)!r}")
        if self.verdict not in VERDICTS:
            raise ResultError("verdict", f"{self.verdict!r} is not one of {', '.join(VERDICTS)}")
        if self.verdict != "pass" and not self.reason.strip():
            raise ResultError("reason", f"a {self.verdict!r} verdict needs a reason")
        if not isinstance(self.control, bool):
            raise ResultError("control", f"expected true or false, got {self.control!r}")
        try:
            datetime.fromisoformat(self.started)
        except ValueError:
            raise ResultError("started", f"{self.started!r} is not an ISO 8601 date-time") from None
        if isinstance(self.duration_s, bool) or not isinstance(self.duration_s, int | float) or self.duration_s < 0:
            raise ResultError("duration_s", f"expected a number >= 0, got {self.duration_s!r}")
        object.__setattr__(self, "duration_s", float(self.duration_s))
        self._check_cell()
        self._check_evidence()

    def _check_cell(self) -> None:
        if self.cell is None:
            return
        if not isinstance(self.cell, Mapping) or not self.cell:
            raise ResultError("cell", f"expected an object or null, got {self.cell!r}")
        for k, v in self.cell.items():
            if not isinstance(k, str) or not isinstance(v, str) or not v:
                raise ResultError("cell", f"keys and values must be non-empty strings, got {k!r}: {v!r}")
        object.__setattr__(self, "cell", dict(self.cell))

    def _check_evidence(self) -> None:
        if isinstance(self.evidence, str) or not isinstance(self.evidence, list | tuple):
            raise ResultError("evidence", f"expected a list of paths, got {self.evidence!r}")
        for p in self.evidence:
            if not isinstance(p, str) or not p:
                raise ResultError("evidence", f"expected a non-empty path string, got {p!r}")
            pp = PurePosixPath(p)
            if pp.is_absolute() or ".." in pp.parts:
                raise ResultError("evidence", f"{p!r} must be relative to the run directory")
        object.__setattr__(self, "evidence", tuple(self.evidence))

    def cell_label(self) -> str:
        """The cell as "ESP/transport/TCP" (ipsec, mode, transport, then any other keys), or ""."""
        if not self.cell:
            return ""
        order = {axis: i for i, axis in enumerate(AXES)}
        return "/".join(self.cell[k] for k in sorted(self.cell, key=lambda k: (order.get(k, len(order)), k)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = list(self.evidence)
        return d

    def to_json(self) -> str:
        """One line of JSON.

        ASCII-escaped, so no character (not even U+0085 or U+2028) can read as a
        line break to a line-oriented tool.
        """
        return json.dumps(self.to_dict(), ensure_ascii=True)

    @classmethod
    def from_dict(cls, data: Any) -> ScenarioResult:
        """Build from a parsed JSON object; every field must be present, none unknown."""
        if not isinstance(data, Mapping):
            raise ResultError("(record)", f"expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        for name in names:
            if name not in data:
                raise ResultError(name, "missing")
        for name in data:
            if name not in names:
                raise ResultError(name, "unknown field")
        return cls(**data)


class ResultWriter:
    """Appends results to a .jsonl file, one flushed line each.

    Use as a context manager; the file is opened in append mode so a re-run
    of part of the suite adds to, never truncates, what is there.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] | None = self.path.open("a", encoding="utf-8")

    def write(self, result: ScenarioResult) -> None:
        if self._f is None:
            raise ValueError(f"{self.path}: writer is closed")
        self._f.write(result.to_json() + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_results(path: str | Path, results: Iterable[ScenarioResult]) -> None:
    """Append all `results` to `path`."""
    with ResultWriter(path) as w:
        for r in results:
            w.write(r)


def iter_results(path: str | Path) -> Iterator[ScenarioResult]:
    """Yield the records of a .jsonl file; blank lines are skipped.

    Raises ResultError naming the file, line number and field of the first bad line.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise ResultError("(line)", f"not valid JSON: {e.msg}", where=where) from None
            try:
                yield ScenarioResult.from_dict(data)
            except ResultError as e:
                raise ResultError(e.field, e.why, where=where) from None
            except TypeError as e:  # defensive: a field of an impossible type
                raise ResultError("(record)", str(e), where=where) from None


def read_results(path: str | Path) -> list[ScenarioResult]:
    """All records of a .jsonl file, validated (see iter_results)."""
    return list(iter_results(path))
