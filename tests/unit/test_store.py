"""The state file: SQLite in WAL mode, one transaction per save, everything checked before use."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nat_app.store import APPLICATION_ID, StateLost, StateRefused, Store

BOOT = "boot-a"
RECORDS = {"entry:1": {"id": 1, "global_ip": "203.0.113.1"}, "table:next_id": 2, "owner:1": [1, "00" * 12]}


def saved(path: Path, records: dict) -> None:
    store = Store(path, BOOT)
    with pytest.raises(StateLost, match="no saved state"):
        store.load()
    store.save(records)
    store.close()


def test_records_written_are_loaded_back_and_deletions_take_effect(tmp_path):
    path = tmp_path / "state.db"
    saved(path, RECORDS)
    store = Store(path, BOOT)
    assert store.load() == RECORDS
    assert store.write({"table:next_id": 3}, {"entry:1", "owner:1"}) == 3
    store.close()
    assert Store(path, BOOT).load() == {"table:next_id": 3}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my precious notes\n" * 10)
    with pytest.raises(StateRefused, match="not an SQLite database"):
        Store(path, BOOT).load()
    assert path.read_text() == "my precious notes\n" * 10


def test_another_applications_database_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (42)")
    before = path.read_bytes()
    with pytest.raises(StateRefused, match="another application"):
        Store(path, BOOT).load()
    assert path.read_bytes() == before


def test_a_corrupt_state_file_is_set_aside_and_the_controller_starts_empty(tmp_path):
    path = tmp_path / "state.db"
    saved(path, {f"entry:{i}": {"id": i, "pad": "x" * 500} for i in range(1, 60)})
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    for page in range(3, len(data) // 4096):  # smash the header of every page from the records' root on
        data[page * 4096: page * 4096 + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))
    store = Store(path, BOOT)
    with pytest.raises(StateLost, match="not used") as lost:
        store.load()
    assert "kept as" in str(lost.value) and list(tmp_path.glob("state.db.lost-*"))
    assert store.save({"table:next_id": 1}) == 1  # a new, usable file
    store.close()
    assert Store(path, BOOT).load() == {"table:next_id": 1}


def test_state_from_another_boot_is_lost(tmp_path):
    path = tmp_path / "state.db"
    saved(path, RECORDS)
    with pytest.raises(StateLost, match="another boot"):
        Store(path, "boot-b").load()


def test_a_record_that_is_not_json_is_lost_state_never_half_loaded(tmp_path):
    path = tmp_path / "state.db"
    saved(path, RECORDS)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE records SET value = '{broken' WHERE key = 'owner:1'")
    with pytest.raises(StateLost, match="not JSON"):
        Store(path, BOOT).load()


def test_a_kill_between_writes_leaves_the_last_whole_save(tmp_path):
    path = tmp_path / "state.db"
    saved(path, RECORDS)
    script = textwrap.dedent(f"""
        import os, signal
        from nat_app.store import Store
        store = Store({str(path)!r}, {BOOT!r})
        store.load()
        real = store._db

        class KilledMidway:
            in_transaction = property(lambda self: real.in_transaction)
            def execute(self, *a):
                return real.execute(*a)
            def executemany(self, sql, rows):
                if sql.startswith("DELETE"):  # the upserts are written, the deletions not yet
                    os.kill(os.getpid(), signal.SIGKILL)
                return real.executemany(sql, rows)

        store._db = KilledMidway()
        store.save({{"table:next_id": 99, "entry:2": {{"id": 2}}}})
    """)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    assert Store(path, BOOT).load() == RECORDS


def test_natlab_controller_refuses_a_foreign_state_file_with_a_clear_message_and_status_2(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not yours\n")
    root = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "natlab", "controller", "--state", str(notes), "--listen-port",
                           str(port), "--control-socket", str(tmp_path / "c.sock")],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "not an SQLite database" in done.stderr and "refusing to overwrite" in done.stderr
    assert notes.read_text() == "not yours\n"
