"""The controller's state on disk: SQLite (standard library), WAL, one transaction per event.

The shell hands ``save`` the core's records (nat_app/state.py) after each
event that changed them; only records that differ from the last save are
written, all in one transaction, so a controller killed at any moment leaves
the file as it was after some whole event (SQLite's atomic commit).

``synchronous=NORMAL`` in WAL mode: a killed process loses nothing (the WAL
is in the kernel's page cache); only a power loss may drop the last commits,
and a power loss also ends the boot, which makes the file unusable anyway
(see ``load``). So a full fsync per event would buy nothing here.

Loading checks everything before any of it is used: the SQLite header, ``PRAGMA
application_id`` (a natlab file), ``user_version`` (our schema),
``integrity_check``, the boot id (CLOCK_MONOTONIC times and r1's flows do not
outlive a reboot), then every record's JSON. A file that is not a natlab
state file is refused (``StateRefused``): it may be someone else's, so it is
never overwritten. A natlab file that fails a check is lost state
(``StateLost``): the controller says why, moves it aside and starts empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path

from nat_app import state
from nat_app.config import NatConfig
from nat_app.decide import NatCore
from nat_app.state import READABLE_VERSIONS, SCHEMA_VERSION

APPLICATION_ID = 0x4E41544C  # "NATL": PRAGMA application_id of a natlab state file
SQLITE_HEADER = b"SQLite format 3\x00"  # https://sqlite.org/fileformat.html 1.3.1
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_SCHEMA = ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
           "CREATE TABLE records (key TEXT PRIMARY KEY, value TEXT NOT NULL);")


class StateRefused(RuntimeError):
    """The file is not a natlab state file: it is left alone and the controller does not start."""


class StateLost(RuntimeError):
    """A natlab state file that cannot be used: the controller starts empty (and announces it)."""


def boot_id() -> str:
    try:
        return Path(BOOT_ID_PATH).read_text().strip()
    except OSError:
        return "unknown"


class Store:
    """One connection, used from os-ken's green threads one at a time (the app's lock), hence
    ``check_same_thread=False``."""

    def __init__(self, path: str | Path, boot: str | None = None) -> None:
        self.path = Path(path)
        self.boot = boot or boot_id()
        self._db: sqlite3.Connection | None = None

    def load(self) -> dict[str, object]:
        """The saved records; StateLost (file made new, ready for saves) or StateRefused."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._create()
            raise StateLost(f"no saved state at {self.path}")
        _check_header(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            records = _read_checked(db, self.path, self.boot)
        except (sqlite3.DatabaseError, StateLost, StateRefused) as exc:
            db.close()
            if isinstance(exc, StateRefused):
                raise
            self._set_aside(str(exc) if isinstance(exc, StateLost) else f"unreadable ({exc})")
        self._db = db
        _configure(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # an older layout is read, then saved as ours
        return records

    def write(self, upserts: dict[str, object], deletes: set[str] | frozenset[str] = frozenset()) -> int:
        """One event's changes (state.Journal) in one transaction; the number of rows written."""
        if not upserts and not deletes:
            return 0
        db = self._connection()
        with _transaction(db):
            db.executemany("INSERT OR REPLACE INTO records (key, value) VALUES (?, ?)",
                           [(k, _json(v)) for k, v in upserts.items()])
            db.executemany("DELETE FROM records WHERE key = ?", [(k,) for k in deletes])
        return len(upserts) + len(deletes)

    def save(self, records: dict[str, object]) -> int:
        """Make the file hold exactly ``records`` (one transaction); rows written."""
        existing = {k for (k,) in self._connection().execute("SELECT key FROM records")}
        return self.write(records, existing - records.keys())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("load() the store before saving to it")
        return self._db

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        _configure(db)
        db.executescript(f"BEGIN; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID};"
                         f" PRAGMA user_version = {SCHEMA_VERSION};")
        db.execute("INSERT INTO meta (key, value) VALUES ('boot_id', ?)", (self.boot,))
        db.execute("COMMIT")
        self._db = db

    def set_aside(self, why: str) -> None:
        """Records that load() returned do not make a consistent core (state.StateError): lost state."""
        self.close()
        self._set_aside(why)

    def _set_aside(self, why: str) -> None:
        """Keep the unusable file for a post-mortem, start a new one, and say so."""
        aside = self.path.with_name(f"{self.path.name}.lost-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        self._create()
        raise StateLost(f"saved state {self.path} not used: {why}; kept as {aside}")


def open_state(config: NatConfig, path: str | Path) -> tuple[NatCore, Store, state.Journal, str]:
    """The core to start with, the store to save it to, the journal of what the store holds, and what
    happened (for the log and `natlab table`). Raises StateRefused (the caller exits) for a file that
    is not natlab's."""
    store = Store(path)
    try:
        records = store.load()
        core = state.restore(config, records)
    except StateLost as exc:
        return state.new_core(config), store, state.Journal(), f"started empty: {exc}"
    except state.StateError as exc:
        try:
            store.set_aside(str(exc))
        except StateLost as lost:
            return state.new_core(config), store, state.Journal(), f"started empty: {lost}"
    note = f"restored from {path}: {len(core.table)} entries, epoch start {core.leases.started:.1f}"
    return core, store, state.Journal(records), note


def _check_header(path: Path) -> None:
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StateRefused(f"{path} is not an SQLite database, so not a natlab state file; refusing to overwrite "
                           "it (remove it or choose another --state)")


def _read_checked(db: sqlite3.Connection, path: Path, boot: str) -> dict[str, object]:
    app = db.execute("PRAGMA application_id").fetchone()[0]
    if app != APPLICATION_ID:
        raise StateRefused(f"{path} is an SQLite database of another application (application_id {app:#x}, "
                           f"natlab's is {APPLICATION_ID:#x}); refusing to overwrite it")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in READABLE_VERSIONS:
        raise StateLost(f"schema version {version}, this controller reads {READABLE_VERSIONS}")
    check = [row[0] for row in db.execute("PRAGMA integrity_check")]
    if check != ["ok"]:
        raise StateLost(f"integrity check failed: {'; '.join(check[:3])}")
    saved_boot = dict(db.execute("SELECT key, value FROM meta")).get("boot_id")
    if saved_boot != boot:
        raise StateLost(f"saved during another boot ({saved_boot}): r1's flows and the monotonic clock are gone")
    try:
        return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM records")}
    except ValueError as exc:
        raise StateLost(f"a record is not JSON ({exc})") from None


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection):
    """All or nothing (autocommit connection, explicit BEGIN/COMMIT)."""
    if not db.in_transaction:
        db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
