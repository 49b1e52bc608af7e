"""The local state file: one SQLite database holding checkpoints, integration status, the schema
history, the schema changes applied to the target (``zetl.pipeline.SchemaLedger``) and the writer
epochs. WAL mode, so ``zetl status`` can read while the daemon writes;
``close`` folds the write-ahead log back into the file, so after a clean stop ``state.db`` alone
is complete (a copy of it is a full backup)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from zetl.errors import CheckpointError

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
CREATE TABLE IF NOT EXISTS writer_epochs (
    integration TEXT PRIMARY KEY,
    epoch       INTEGER NOT NULL,
    claimed_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS resets (
    integration TEXT PRIMARY KEY,
    at          REAL NOT NULL
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
CREATE TABLE IF NOT EXISTS schema_applies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    integration TEXT NOT NULL,
    at          REAL NOT NULL,
    table_id    TEXT NOT NULL,
    position    TEXT,
    changes     TEXT NOT NULL,
    renames     TEXT NOT NULL,
    before      TEXT,
    after       TEXT,
    state       TEXT NOT NULL
);
"""


class StateDB:
    """A thread-safe handle on the state file (one connection per thread)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open (and with ``read_only`` False, create) the state file. A read-only handle
        writes nothing, so it works on a full disk (``zetl status``, ``zetl drift``)."""
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        if read_only:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as conn:
            conn.executescript(_SCHEMA)

    def connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: a checkpoint row that was reported saved survives a power loss.
                conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def claim_epoch(self, integration: str, at_least: int = 0) -> int:
        """A writer epoch for a new run of ``integration``: greater than every epoch claimed
        before in this file and at least ``at_least``; durable before it is returned."""
        try:
            row = self.connect().execute(
                "INSERT INTO writer_epochs (integration, epoch, claimed_at) VALUES (?, max(1, ?), ?) "
                "ON CONFLICT (integration) DO UPDATE SET epoch = max(writer_epochs.epoch + 1, ?), claimed_at = excluded.claimed_at "
                "RETURNING epoch",
                (integration, at_least, time.time(), at_least),
            ).fetchone()
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot write the state file {self.path} (writer epoch of '{integration}'): {exc}", retryable=True) from exc
        return int(row[0])

    def checkpoint_wal(self) -> None:
        """Fold the write-ahead log into the state file (best effort: a reader may hold it)."""
        conn = getattr(self._local, "conn", None) or self.connect()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close this thread's connection; the last connection to close folds in the WAL."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                if not self.read_only:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:  # a full or read-only disk: the WAL stays and is replayed on open
                pass
            conn.close()
            self._local.conn = None
