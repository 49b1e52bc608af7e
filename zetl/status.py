"""Integration states and figures, written by the daemon and read by ``zetl status``."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import orjson

from zetl.statedb import StateDB

__all__ = ["IntegrationStatus", "State", "StatusStore"]


class State(str, Enum):
    STARTING = "starting"
    SNAPSHOTTING = "snapshotting"
    STREAMING = "streaming"
    RETRYING = "retrying"
    NEEDS_ATTENTION = "needs_attention"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass
class IntegrationStatus:
    """What ``zetl status`` shows for one integration.

    ``lag_seconds`` is the time between the source commit of the last written change and its
    write (None until a change with a commit time was written). ``state_error`` is the last
    failure to write the state file, from ``state_error_since`` until ``state_error_until``
    (None while it lasts): a status saved with ``state_error_until`` None was written by a daemon
    that could not write its state file at the time (and ``updated_at`` then stops moving).
    """

    integration: str
    state: State = State.STARTING
    rows_written: int = 0
    batches_written: int = 0
    schema_changes: int = 0
    lag_seconds: float | None = None
    position: str | None = None
    last_error: str | None = None
    attempts: int = 0
    started_at: float = field(default_factory=time.time)
    last_write_at: float | None = None
    source: dict[str, Any] = field(default_factory=dict)
    sink: dict[str, Any] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    updated_at: float = 0.0
    state_file: str | None = None
    writer_epoch: int | None = None
    state_error: str | None = None
    state_error_since: float | None = None
    state_error_until: float | None = None


class StatusStore:
    """Status rows in the state file; any process can read them."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def save(self, status: IntegrationStatus) -> None:
        status.updated_at = time.time()
        details = asdict(status)
        details["state"] = str(status.state)
        self.db.connect().execute(
            "INSERT INTO status (integration, state, pid, details, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (integration) DO UPDATE SET state = excluded.state, pid = excluded.pid, "
            "details = excluded.details, updated_at = excluded.updated_at",
            (status.integration, str(status.state), status.pid, orjson.dumps(details, default=str).decode(), status.updated_at),
        )

    def load_all(self) -> list[IntegrationStatus]:
        """Every integration's last saved status ([] for a state file that holds none)."""
        conn = self.db.connect()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'status'").fetchone() is None:
            return []
        rows = conn.execute("SELECT details FROM status ORDER BY integration").fetchall()
        out = []
        for (details,) in rows:
            data = orjson.loads(details)
            data["state"] = State(data["state"])
            known = IntegrationStatus.__dataclass_fields__
            out.append(IntegrationStatus(**{k: v for k, v in data.items() if k in known}))
        return out
