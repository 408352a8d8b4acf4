"""The behaviour registry: CLAIMS.md as validated data (`behaviours.toml`).

Sans-IO apart from reading one TOML file.  Every error names the offending
behaviour (or control) id and field, so a bad edit of the data is easy to find.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

PACKAGED = Path(__file__).with_name("behaviours.toml")

CLAIMS = range(1, 41)  # the seed has claims 1..40
GROUPS = ("client-outgoing", "client-incoming", "nat", "client-procedure", "baseline")  # baseline: NAT-T, not the seed

# The matrix of CLAIMS.md: {AH, ESP} x {transport, tunnel} x {TCP, UDP}.
IPSEC = ("AH", "ESP")
MODES = ("transport", "tunnel")
TRANSPORTS = ("TCP", "UDP")
AXES = {"ipsec": IPSEC, "mode": MODES, "transport": TRANSPORTS}
MATRIX_CELLS: tuple[Mapping[str, str], ...] = tuple(
    MappingProxyType({"ipsec": i, "mode": m, "transport": t}) for i, m, t in itertools.product(IPSEC, MODES, TRANSPORTS)
)

_ID = re.compile(r"^[A-Z]+(-[A-Z]+)+$")


class RegistryError(ValueError):
    """Bad registry data; the message names the entry id and the field."""


@dataclass(frozen=True)
class Behaviour:
    """One CLAIMS.md row."""

    id: str
    group: str
    text: str
    claims: tuple[int, ...]
    steps: tuple[str, ...]
    matrix: bool
    variant: str = ""  # how the behaviour could be absent, and the test that shows its verdict failing then


@dataclass(frozen=True)
class Prediction:
    """A failure a control must show in the cells it covers (CLAIMS.md "Controls")."""

    ipsec: tuple[str, ...]
    mode: tuple[str, ...]
    transport: tuple[str, ...]
    failure: str

    def covers(self, cell: Mapping[str, str] | None) -> bool:
        """True when `cell` is one of the matrix cells this prediction is about."""
        if not cell:
            return False
        return all(cell.get(axis) in getattr(self, axis) for axis in AXES)

    def label(self) -> str:
        """Short form, e.g. "ESP/transport/TCP+UDP"; an axis with every value is left out."""
        parts = ["+".join(getattr(self, axis)) for axis, values in AXES.items() if getattr(self, axis) != values]
        return "/".join(parts) or "all cells"


@dataclass(frozen=True)
class Control:
    """Traffic run without compensation, which must fail as predicted."""

    id: str
    text: str
    behaviours: tuple[str, ...]
    predicts: tuple[Prediction, ...]


@dataclass(frozen=True)
class Registry:
    """All behaviours and controls, with lookups by id and by claim."""

    behaviours: tuple[Behaviour, ...]
    controls: tuple[Control, ...] = ()
    _index: dict[str, Behaviour] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        entries: tuple[Behaviour | Control, ...] = (*self.behaviours, *self.controls)
        for entry in entries:
            if entry.id in seen:
                kind = "control" if isinstance(entry, Control) else "behaviour"
                raise RegistryError(f"{kind} {entry.id}: field 'id': duplicate id")
            seen.add(entry.id)
        object.__setattr__(self, "_index", {b.id: b for b in self.behaviours})
        for control in self.controls:
            for bid in control.behaviours:
                if bid not in self._index:
                    raise RegistryError(f"control {control.id}: field 'behaviours': unknown behaviour {bid!r}")

    def __iter__(self) -> Iterator[Behaviour]:
        return iter(self.behaviours)

    def __len__(self) -> int:
        return len(self.behaviours)

    def __contains__(self, bid: object) -> bool:
        return bid in self._index

    def __getitem__(self, bid: str) -> Behaviour:
        return self._index[bid]

    def get(self, bid: str) -> Behaviour | None:
        """The behaviour with this id, or None."""
        return self._index.get(bid)

    def behaviour_ids(self) -> tuple[str, ...]:
        return tuple(b.id for b in self.behaviours)

    def control(self, cid: str) -> Control | None:
        """The control with this id, or None."""
        return next((c for c in self.controls if c.id == cid), None)

    def by_claim(self, claim: int) -> tuple[Behaviour, ...]:
        """Behaviours that carry `claim`, in registry order."""
        return tuple(b for b in self.behaviours if claim in b.claims)

    def claims_index(self) -> dict[int, tuple[str, ...]]:
        """Claim number (every one of 1..40) -> ids of the behaviours that carry it."""
        return {n: tuple(b.id for b in self.by_claim(n)) for n in CLAIMS}

    def uncovered_claims(self) -> tuple[int, ...]:
        """Claims no behaviour carries; the packaged registry must have none."""
        return tuple(n for n, ids in self.claims_index().items() if not ids)


# --- loading and validation -------------------------------------------------------------


def load(path: str | Path | None = None) -> Registry:
    """Load and validate a registry file (default: the packaged `behaviours.toml`)."""
    path = Path(path) if path is not None else PACKAGED
    with path.open("rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise RegistryError(f"{path}: not valid TOML: {e}") from e
    return from_dict(data)


def loads(text: str) -> Registry:
    """Validate a registry given as TOML text (for tests and tools)."""
    try:
        return from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"not valid TOML: {e}") from e


def from_dict(data: Mapping[str, Any]) -> Registry:
    """Validate parsed TOML: `[[behaviour]]` and optional `[[control]]` tables."""
    unknown = set(data) - {"behaviour", "control"}
    if unknown:
        raise RegistryError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    rows = data.get("behaviour", [])
    if not isinstance(rows, list) or not rows:
        raise RegistryError("no [[behaviour]] entries")
    behaviours = tuple(_behaviour(i, row) for i, row in enumerate(rows, 1))
    controls = tuple(_control(i, row) for i, row in enumerate(data.get("control", []), 1))
    return Registry(behaviours, controls)


_BEHAVIOUR_FIELDS = ("id", "group", "text", "claims", "steps", "matrix", "variant")
_CONTROL_FIELDS = ("id", "text", "behaviours", "predicts")


class _Row:
    """Typed field access that raises RegistryError naming the entry and field."""

    def __init__(self, kind: str, index: int, row: Any, fields: tuple[str, ...], name: str = "") -> None:
        self.kind = kind
        if not isinstance(row, Mapping):
            raise RegistryError(f"{kind} {name or f'#{index}'}: not a table")
        self.row = row
        rid = row.get("id")
        self.name = name or (rid if isinstance(rid, str) and rid else f"#{index} (no id)")
        extra = set(row) - set(fields)
        if extra:
            self.fail(sorted(extra)[0], "unknown field")

    def fail(self, field: str, why: str) -> None:
        raise RegistryError(f"{self.kind} {self.name}: field {field!r}: {why}")

    def get(self, field: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
        if field not in self.row:
            if required:
                self.fail(field, "missing")
            return default
        value = self.row[field]
        # bool is an int subclass: never accept it where a number is expected.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(field, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def text(self, field: str) -> str:
        value = self.get(field, str)
        if not value.strip():
            self.fail(field, "empty")
        return value

    def strings(self, field: str, *, required: bool = True, choices: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list of non-empty strings (a single string is accepted as a one-item list)."""
        value = self.row.get(field)
        if value is None:
            if required:
                self.fail(field, "missing")
            return choices
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) and s.strip() for s in items):
            self.fail(field, f"expected a list of non-empty strings, got {value!r}")
        for s in items:
            if choices and s not in choices:
                self.fail(field, f"{s!r} is not one of {', '.join(choices)}")
        return tuple(items)


def _behaviour(index: int, raw: Any) -> Behaviour:
    row = _Row("behaviour", index, raw, _BEHAVIOUR_FIELDS)
    bid = row.text("id")
    if not _ID.match(bid):
        row.fail("id", f"{bid!r} is not of the form WORD-WORD (capitals)")
    group = row.text("group")
    if group not in GROUPS:
        row.fail("group", f"{group!r} is not one of {', '.join(GROUPS)}")
    claims = row.get("claims", list)
    for n in claims:
        if not isinstance(n, int) or isinstance(n, bool) or n not in CLAIMS:
            row.fail("claims", f"{n!r} is not a claim number ({CLAIMS.start}..{CLAIMS.stop - 1})")
    if len(set(claims)) != len(claims):
        row.fail("claims", "a claim is listed twice")
    return Behaviour(
        id=bid,
        group=group,
        text=row.text("text"),
        claims=tuple(claims),
        steps=row.strings("steps"),
        matrix=row.get("matrix", bool),
        variant=row.get("variant", str, required=False, default=""),
    )


def _control(index: int, raw: Any) -> Control:
    row = _Row("control", index, raw, _CONTROL_FIELDS)
    cid = row.text("id")
    if not _ID.match(cid):
        row.fail("id", f"{cid!r} is not of the form WORD-WORD (capitals)")
    predicts = row.get("predicts", list)
    if not predicts:
        row.fail("predicts", "a control must predict at least one failure")
    return Control(
        id=cid,
        text=row.text("text"),
        behaviours=row.strings("behaviours"),
        predicts=tuple(_prediction(row, p) for p in predicts),
    )


def _prediction(control: _Row, raw: Any) -> Prediction:
    row = _Row("control", 0, raw, ("ipsec", "mode", "transport", "failure"), name=f"{control.name} predicts")
    return Prediction(
        ipsec=row.strings("ipsec", choices=IPSEC),
        mode=row.strings("mode", required=False, choices=MODES),
        transport=row.strings("transport", required=False, choices=TRANSPORTS),
        failure=row.text("failure"),
    )
