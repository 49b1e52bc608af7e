"""The contract every sink fills in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from zetl.events import Batch, Position, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import SchemaChange
from zetl.schema.types import Schema

__all__ = ["Sink", "SinkCapabilities", "SinkConfig"]


class SinkConfig(BaseModel):
    """Base of every sink's config model: unknown keys are errors."""

    model_config = {"extra": "forbid", "frozen": True}


@dataclass(frozen=True)
class SinkCapabilities:
    """What a sink can do, so that the core adapts without special cases.

    Attributes:
        schema_changes: change kinds (``add.column``, ...) ``apply`` accepts; the planner asks
            for nothing else. ``Sink.can_apply`` refines this per change (e.g. which widenings).
        stores_checkpoint: ``write`` stores ``batch.end_position`` atomically with the data and
            ``stored_position`` returns it (exactly-once without the checkpoint store).
        nested_types: list/struct columns are stored natively (otherwise as json).
        max_identifier_length: longest table/column name (None: no limit).
        identifier_case: ``preserve``, ``lower`` or ``upper``.
    """

    schema_changes: frozenset[str] = frozenset()
    stores_checkpoint: bool = False
    nested_types: bool = False
    max_identifier_length: int | None = None
    identifier_case: str = "preserve"
    extra: dict[str, Any] = field(default_factory=dict)


C = TypeVar("C", bound=SinkConfig)


class Sink(ABC, Generic[C]):
    """Applies batches to a target so that it mirrors the source.

    Schemas and rows are in source terms: ``TableId`` and column names as the source reports
    them; mapping to the target's identifier rules is the sink's own business.

    Lifecycle: ``Sink(config, context)`` (cheap, no I/O) -> ``open()`` -> any number of
    ``current_schema``/``apply``/``write``/``flush`` -> ``close()``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[SinkConfig]]
    capabilities: ClassVar[SinkCapabilities] = SinkCapabilities()
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def __init__(self, config: C, context: PluginContext | None = None) -> None:
        self.config = config
        self.context = context or PluginContext()

    def open(self) -> None:
        """Connect; raise ``SinkError`` naming what is missing."""

    @abstractmethod
    def current_schema(self, table: TableId) -> Schema | None:
        """The target's schema of ``table`` in canonical types, or None if it does not exist."""

    def can_apply(self, change: SchemaChange) -> bool:
        """Whether ``apply(change)`` would succeed; default: the kind is in the capabilities."""
        return change.kind in self.capabilities.schema_changes

    @abstractmethod
    def apply(self, change: SchemaChange) -> None:
        """Apply one schema change. Idempotent: applying a change already in effect is a no-op."""

    @abstractmethod
    def write(self, batch: Batch) -> Position | None:
        """Write the batch's rows; return the greatest position now durable (None: none new).

        A sink that commits before returning returns ``batch.end_position``; one that buffers
        (see ``flush``) returns the position of its last commit. Idempotent: writing a batch again
        after a crash (same events, same positions) leaves the target as if written once.
        Unchanged markers (``UNCHANGED``) leave the target column as it is.
        """

    def flush(self, force: bool = False) -> Position | None:
        """Commit buffered rows if due (always when ``force``); return the new durable position."""
        return None

    def stored_position(self) -> Position | None:
        """The position stored with the data (only when ``capabilities.stores_checkpoint``)."""
        return None

    def stored_epoch(self) -> int | None:
        """The greatest writer epoch recorded in the target (only when
        ``capabilities.stores_checkpoint``; None: none recorded or not supported).

        Fencing: every run of an integration gets a ``context.writer_epoch`` greater than any
        earlier run's, set before the first ``apply``/``write``. A sink that stores positions
        records that epoch with each commit and refuses, in the same atomic step, to commit
        when the target already holds a greater one (``WriterFencedError``): a paused or
        partitioned old writer that wakes up cannot overwrite what a newer one wrote.
        """
        return None

    def managed_tables(self) -> list[TableId] | None:
        """The source tables this integration has created (and written) in the target, in source
        terms, sorted; None when the sink cannot tell (the default, so custom sinks keep working).

        Read only: it creates nothing, also on a sink opened with ``context.read_only``. Used by
        ``zetl drift`` to find tables that exist only in the target (dropped in the source,
        renamed away or no longer selected).
        """
        return None

    def status(self) -> dict[str, Any]:
        """Extra figures for ``zetl status``."""
        return {}

    def close(self) -> None:
        """Release connections without committing buffered rows. Idempotent."""

    def __enter__(self) -> Sink[C]:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
