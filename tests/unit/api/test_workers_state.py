"""What the `--workers` processes share on disk: the SQLite state file (logins, stored responses)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from h2ogpt_api.workers import STATE_FILE, open_state_db


def test_the_state_file_is_opened_at_once_beside_a_writer_once_prepared(tmp_path: Path) -> None:
    """The supervisor sets WAL before the workers start; a worker then only reads the mode, so it opens
    the file at once while another worker holds a write. Switching a new file to WAL instead needs the
    exclusive lock, which a concurrent opener may be refused (seen: 'database is locked' at start)."""
    path = tmp_path / STATE_FILE
    open_state_db(path).close()  # what the supervisor does before starting the workers
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")  # another worker in the middle of a write
    writer.execute("INSERT INTO t VALUES (1)")
    started = time.monotonic()
    reader = open_state_db(path)
    assert time.monotonic() - started < 1.0  # no wait for the writer (the busy wait is 5 s)
    assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # WAL: reads go on
    writer.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_an_unprepared_file_is_switched_to_wal_by_its_first_opener(tmp_path: Path) -> None:
    db = open_state_db(tmp_path / STATE_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
