"""The local state file: one SQLite database holding checkpoints, integration status and the
schema history. WAL mode, so ``zetl status`` can read while the daemon writes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["StateDB"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    integration TEXT PRIMARY KEY,
    position    TEXT NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS status (
    integration TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    pid         INTEGER,
    details     TEXT NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    integration TEXT NOT NULL,
    at          REAL NOT NULL,
    table_name  TEXT NOT NULL,
    change      TEXT NOT NULL,
    position    TEXT,
    decision    TEXT NOT NULL,
    reason      TEXT NOT NULL
);
"""


class StateDB:
    """A thread-safe handle on the state file (one connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as conn:
            conn.executescript(_SCHEMA)

    def connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a checkpoint row that was reported saved survives a power loss.
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
