"""What the runner hands to every source and sink, and the helper that loads optional drivers."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Protocol

from zetl.errors import NotInstalledError
from zetl.events import TableId

__all__ = ["ColumnSelector", "PluginContext", "Progress", "TableSelector", "require"]


class TableSelector(Protocol):
    """Decides which tables an integration replicates (the YAML ``tables`` section)."""

    def matches(self, table: TableId) -> bool: ...


class _AllTables:
    def matches(self, table: TableId) -> bool:
        return True


class ColumnSelector(Protocol):
    """Decides which columns of a table the integration uses (the YAML ``filters`` section).

    ``reads(table, column)`` is False for a column whose values nothing after the source needs
    (excluded by the column filter and not named by the row filter). A source must not decode
    such a column's values, so that a value it cannot decode never stops the table: it leaves
    the column out of ``ChangeEvent`` rows and sends it as NULL in snapshot chunks (whose layout
    stays the table's). Primary-key columns are always read.
    """

    def reads(self, table: TableId, column: str) -> bool: ...


class _AllColumns:
    def reads(self, table: TableId, column: str) -> bool:
        return True


class Progress(Protocol):
    """Receives snapshot progress: rows done and the estimated total (None when unknown)."""

    def __call__(self, table: TableId, done: int, total: int | None) -> None: ...


def _no_progress(table: TableId, done: int, total: int | None) -> None:
    return None


@dataclass
class PluginContext:
    """Everything a plugin may use besides its own config.

    Attributes:
        integration: the integration's name (unique per daemon; use it for slot names, server ids,
            checkpoint rows).
        tables: the table selection; sources must not read tables it rejects.
        columns: the columns the integration uses; sources must not decode the others
            (``ColumnSelector``).
        state_dir: a directory the plugin may keep local files in (exists).
        logger: the integration's logger.
        progress: called by sources while snapshotting.
        config_file: the YAML file the integration came from (None in library use).
        writer_epoch: the fencing epoch of this run (see ``Sink.stored_epoch``): greater than
            that of every earlier run of the integration; 0 in library use and inspections.
        read_only: the caller only inspects (``zetl drift``): ``open``, ``discover`` and
            ``current_schema`` must not create or change anything (no slot, publication,
            namespace or table); a resource that does not exist is reported as missing.
    """

    integration: str = "default"
    tables: TableSelector = field(default_factory=_AllTables)
    columns: ColumnSelector = field(default_factory=_AllColumns)
    state_dir: Path = field(default_factory=lambda: Path(".zetl"))
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("zetl"))
    progress: Callable[[TableId, int, int | None], None] = _no_progress
    config_file: Path | None = None
    read_only: bool = False
    writer_epoch: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def require(module: str, *, extra: str, what: str) -> ModuleType:
    """Import an optional dependency or explain how to install it.

    Raises:
        NotInstalledError: ``"<what> not installed: pip install 'zetl[<extra>]'"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NotInstalledError(
            f"{what} not installed: pip install 'zetl[{extra}]' (missing module {module!r}: {exc})", extra=extra
        ) from exc
