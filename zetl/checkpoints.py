"""Checkpoint stores: where an integration's last durable position is kept.

Invariant kept by the runner: a position is saved only after the sink reported the data up to it
durable, so resuming from a saved position never loses a change.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

import orjson

from zetl.errors import CheckpointError
from zetl.events import Position
from zetl.statedb import StateDB

__all__ = ["CheckpointStore", "SQLiteCheckpointStore"]


class CheckpointStore(ABC):
    """Keeps one position per integration."""

    @abstractmethod
    def load(self, integration: str) -> Position | None:
        """The last saved position, or None if the integration never saved one."""

    @abstractmethod
    def save(self, integration: str, position: Position) -> None:
        """Save atomically: after it returns, ``load`` returns ``position`` even after a crash."""

    def reset(self, integration: str) -> None:
        """Forget the position (the next run starts from the beginning)."""

    def was_reset(self, integration: str) -> bool:
        """Whether ``reset`` ran and no position was saved since: the next run starts over and
        ignores a position the sink stored with the data before the reset."""
        return False


class SQLiteCheckpointStore(CheckpointStore):
    """One row per integration in the state file; each save is one committed transaction."""

    def __init__(self, db: StateDB | str | Path) -> None:
        self.db = db if isinstance(db, StateDB) else StateDB(db)

    def load(self, integration: str) -> Position | None:
        try:
            row = self.db.connect().execute("SELECT position FROM checkpoints WHERE integration = ?", (integration,)).fetchone()
        except Exception as exc:  # sqlite3.Error and decoding errors
            raise CheckpointError(f"cannot read the checkpoint of '{integration}' from {self.db.path}: {exc}") from exc
        if row is None:
            return None
        try:
            return Position.from_json(orjson.loads(row[0]))
        except ValueError as exc:
            raise CheckpointError(
                f"the checkpoint of '{integration}' in {self.db.path} cannot be decoded ({exc}); "
                f"remove it with `zetl reset {integration}` to start over"
            ) from exc

    def save(self, integration: str, position: Position) -> None:
        conn = self.db.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO checkpoints (integration, position, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (integration) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                    (integration, orjson.dumps(position.to_json()).decode(), time.time()),
                )
                conn.execute("DELETE FROM resets WHERE integration = ?", (integration,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            raise CheckpointError(
                f"cannot save the checkpoint of '{integration}' to {self.db.path}: {exc} "
                "(free disk space or fix the file's permissions; zetl retries from the last saved checkpoint)",
                retryable=True,
            ) from exc

    def load_raw(self, integration: str) -> str | None:
        """The saved position as stored (JSON text), without decoding it: works whatever
        plugins are installed (``zetl reset``)."""
        row = self.db.connect().execute("SELECT position FROM checkpoints WHERE integration = ?", (integration,)).fetchone()
        return None if row is None else str(row[0])

    def reset(self, integration: str) -> None:
        conn = self.db.connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM checkpoints WHERE integration = ?", (integration,))
            conn.execute("INSERT OR REPLACE INTO resets (integration, at) VALUES (?, ?)", (integration, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def was_reset(self, integration: str) -> bool:
        return self.db.connect().execute("SELECT 1 FROM resets WHERE integration = ?", (integration,)).fetchone() is not None
