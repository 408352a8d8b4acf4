"""The registry of scenarios: one record per scenario, declared beside its function.

A scenario is a function ``(Context) -> [ScenarioResult]``. Its record says what
the runner needs and nothing else: its name in the report, the behaviours (and
controls) it covers (a scenario that crashes reports an error for each), the
testbed it needs, the matrix cells it runs and where it comes in the run. The
runner reads only this registry (``registered()``); nothing is attached to
functions and nothing is looked up with a default, so a mistake in a record
fails at import (a field name or a testbed kind) or before any testbed starts
(a behaviour id, ``check``) instead of quietly running a scenario wrongly::

    @scenario(covers=("NAT-AUTO",), order=10)
    def nat_auto(ctx: Context) -> list[ScenarioResult]: ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conformance.registry import IPSEC, MODES, Registry

if TYPE_CHECKING:
    from conformance.context import Context
    from conformance.results import ScenarioResult

Run = Callable[["Context"], "list[ScenarioResult]"]
TESTBEDS = ("extensible", "classic")  # r1 the extensible NAT (OpenFlow + controller), or a Linux masquerade
CELLS = tuple(f"{p.lower()}-{m}" for p in IPSEC for m in MODES)  # conformance.matrix.Cell.name
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_ID = re.compile(r"^[A-Z]+(-[A-Z0-9]+)+$")


class ScenarioError(ValueError):
    """A scenario record is wrong; the message names the record and the field."""


@dataclass(frozen=True)
class ScenarioRecord:
    name: str  # in the report and the evidence folders ("nat-auto")
    run: Run
    covers: tuple[str, ...]  # behaviour and control ids of behaviours.toml
    order: int  # the runner runs scenarios by increasing order (the classic testbed's after the rest)
    testbed: str = "extensible"  # one of TESTBEDS
    cells: tuple[str, ...] = ()  # the matrix cells it runs, by name (CELLS)

    def __post_init__(self) -> None:
        where = f"scenario {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ScenarioError(f"{where}: name must be lower-case words joined by '-'")
        if not callable(self.run):
            raise ScenarioError(f"{where}: run {self.run!r} is not callable")
        if not isinstance(self.covers, tuple) or not self.covers or not all(_ID.match(str(b)) for b in self.covers):
            raise ScenarioError(f"{where}: covers {self.covers!r} must be a non-empty tuple of ids like 'NAT-AUTO'")
        if isinstance(self.order, bool) or not isinstance(self.order, int):
            raise ScenarioError(f"{where}: order {self.order!r} must be a whole number")
        if self.testbed not in TESTBEDS:
            raise ScenarioError(f"{where}: testbed {self.testbed!r} is none of {TESTBEDS}")
        unknown = [c for c in self.cells if c not in CELLS]
        if not isinstance(self.cells, tuple) or unknown:
            raise ScenarioError(f"{where}: cells {unknown or self.cells!r} are not matrix cells {CELLS}")


_REGISTRY: dict[str, ScenarioRecord] = {}


def scenario(*, covers: Iterable[str], order: int, testbed: str = "extensible", cells: Iterable[str] = (),
             name: str | None = None) -> Callable[[Run], Run]:
    """Declare the decorated function a scenario (keyword arguments only: a misspelt one is a TypeError)."""
    def register(run: Run) -> Run:
        record = ScenarioRecord(name or run.__name__.replace("_", "-"), run, tuple(covers), order, testbed,
                                tuple(cells))
        add(record)
        return run
    return register


def add(record: ScenarioRecord) -> None:
    """Register ``record``; another scenario by its name or at its order is refused (a reload replaces)."""
    old = _REGISTRY.get(record.name)
    if old is not None and _origin(old.run) != _origin(record.run):
        raise ScenarioError(f"scenario {record.name!r}: declared twice ({_origin(old.run)}, {_origin(record.run)})")
    clash = [r.name for r in _REGISTRY.values() if r.order == record.order and r.name != record.name]
    if clash:
        raise ScenarioError(f"scenario {record.name!r}: order {record.order} is {clash[0]!r}'s")
    _REGISTRY[record.name] = record


def _origin(run: Run) -> str:
    return f"{getattr(run, '__module__', '?')}.{getattr(run, '__qualname__', repr(run))}"


def registered() -> tuple[ScenarioRecord, ...]:
    """Every declared scenario, in run order. Importing ``conformance.scenarios`` declares them."""
    import conformance.scenarios  # noqa: F401  (its modules register their scenarios when imported)

    return tuple(sorted(_REGISTRY.values(), key=lambda r: r.order))


def check(records: Iterable[ScenarioRecord], behaviours: Registry) -> None:
    """Every id a record covers is a behaviour or a control of ``behaviours`` (behaviours.toml)."""
    for record in records:
        unknown = [b for b in record.covers if b not in behaviours and behaviours.control(b) is None]
        if unknown:
            raise ScenarioError(f"scenario {record.name!r}: covers {unknown}, which behaviours.toml does not define")
