"""Where an integration's state lives, whatever the current directory.

The state of an integration is its checkpoint, status, schema history and writer epoch (rows in
one SQLite file) plus a directory beside that file named after the integration (plugin files:
Postgres column identities and slot ownership, MySQL schema history, the embedded Iceberg
catalog and warehouse). Resolution, first match wins:

1. ``checkpoint.path`` in the YAML file: that file (a relative path is relative to the YAML file).
2. A location recorded in the home's state file for this integration (see 4).
3. ``$ZETL_HOME/state.db``, when it holds a checkpoint of the integration.
4. A state of an earlier zetl, whose default was ``.zetl/state.db`` in the current directory:
   ``.zetl/state.db`` in the current directory or beside the YAML file, when it holds a
   checkpoint of the integration. It is used where it is (moving it would break the absolute
   paths an embedded Iceberg catalog stores) and, when the daemon adopts it, its absolute path
   is recorded in the home, so every later run finds it from any directory (rule 2).
5. ``$ZETL_HOME/state.db``.

``ZETL_HOME`` defaults to ``$XDG_STATE_HOME/zetl``, that is ``~/.local/state/zetl``. Every path
returned is absolute: a daemon started by cron or systemd in another working directory finds the
same state.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

__all__ = ["StateLocation", "StateOrigin", "forget_location", "home_state_file", "locate_state", "record_location", "recorded_locations", "zetl_home"]

STATE_FILE = "state.db"
LEGACY_DIR = ".zetl"


class StateOrigin(str, Enum):
    """Why a state file was chosen (shown in the start-up log and ``zetl status``)."""

    CONFIGURED = "checkpoint.path"
    RECORDED = "recorded in the zetl home"
    HOME = "zetl home"
    LEGACY = "found at an earlier default location"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StateLocation:
    """The state file of one integration and why it was chosen. ``path`` is absolute."""

    path: Path
    origin: StateOrigin

    @property
    def directory(self) -> Path:
        """The directory that holds the state file (plugin directories and locks live in it)."""
        return self.path.parent

    def describe(self) -> str:
        return f"{self.path} ({self.origin})"


def zetl_home() -> Path:
    """``$ZETL_HOME``, else ``$XDG_STATE_HOME/zetl``, else ``~/.local/state/zetl``; absolute."""
    env = os.environ.get("ZETL_HOME")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".local" / "state"
    return (base / "zetl").absolute()


def home_state_file() -> Path:
    return zetl_home() / STATE_FILE


def _read_only(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to an existing state file (never creates one)."""
    if not path.is_file():
        return None
    try:
        return sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None


def _has_checkpoint(path: Path, integration: str) -> bool:
    conn = _read_only(path)
    if conn is None:
        return False
    try:
        return conn.execute("SELECT 1 FROM checkpoints WHERE integration = ?", (integration,)).fetchone() is not None
    except sqlite3.Error:  # no checkpoints table: not a state file of ours, or an empty one
        return False
    finally:
        conn.close()


def _recorded(integration: str) -> Path | None:
    conn = _read_only(home_state_file())
    if conn is None:
        return None
    try:
        row = conn.execute("SELECT path FROM state_locations WHERE integration = ?", (integration,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return Path(row[0]) if row else None


def locate_state(integration: str, configured: str | None, config_file: Path | None) -> StateLocation:
    """The state file of ``integration`` (see the module docstring). Reads only; creates nothing."""
    if configured:
        p = Path(os.path.expanduser(configured))
        if not p.is_absolute() and config_file is not None:
            p = Path(config_file).absolute().parent / p
        return StateLocation(p.absolute(), StateOrigin.CONFIGURED)
    recorded = _recorded(integration)
    if recorded is not None:
        return StateLocation(recorded, StateOrigin.RECORDED)
    home = home_state_file()
    if _has_checkpoint(home, integration):
        return StateLocation(home, StateOrigin.HOME)
    candidates = [Path.cwd() / LEGACY_DIR / STATE_FILE]
    if config_file is not None:
        candidates.append(Path(config_file).absolute().parent / LEGACY_DIR / STATE_FILE)
    for candidate in candidates:
        candidate = candidate.absolute()
        if candidate != home and _has_checkpoint(candidate, integration):
            return StateLocation(candidate, StateOrigin.LEGACY)
    return StateLocation(home, StateOrigin.HOME)


def record_location(integration: str, path: Path) -> None:
    """Record in the home that ``integration``'s state is at ``path`` (an adopted legacy state)."""
    home = home_state_file()
    home.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(home, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS state_locations (integration TEXT PRIMARY KEY, path TEXT NOT NULL, recorded_at REAL NOT NULL)")
        conn.execute(
            "INSERT INTO state_locations (integration, path, recorded_at) VALUES (?, ?, ?) "
            "ON CONFLICT (integration) DO UPDATE SET path = excluded.path, recorded_at = excluded.recorded_at",
            (integration, str(path.absolute()), time.time()),
        )
    finally:
        conn.close()


def forget_location(integration: str) -> bool:
    """Remove a recorded location (``zetl reset``); whether there was one."""
    home = home_state_file()
    if not home.is_file():
        return False
    conn = sqlite3.connect(home, timeout=30, isolation_level=None)
    try:
        cur = conn.execute("DELETE FROM state_locations WHERE integration = ?", (integration,))
        return cur.rowcount > 0
    except sqlite3.OperationalError:  # no such table
        return False
    finally:
        conn.close()


def recorded_locations() -> list[Path]:
    """Every state file recorded in the home (adopted earlier states), for ``zetl status``."""
    conn = _read_only(home_state_file())
    if conn is None:
        return []
    try:
        return [Path(row[0]) for row in conn.execute("SELECT DISTINCT path FROM state_locations ORDER BY path")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()
