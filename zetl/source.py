"""The contract every source fills in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, Iterator, TypeVar

from pydantic import BaseModel

from zetl.events import Batch, Position
from zetl.plugin import PluginContext
from zetl.schema.types import Schema

__all__ = ["Source", "SourceConfig"]


class SourceConfig(BaseModel):
    """Base of every source's config model: unknown keys are errors."""

    model_config = {"extra": "forbid", "frozen": True}


C = TypeVar("C", bound=SourceConfig)


class Source(ABC, Generic[C]):
    """Reads changes from a database: a consistent snapshot first, then the change stream.

    Lifecycle: ``Source(config, context)`` (cheap, no I/O) -> ``open()`` -> ``discover()`` ->
    ``read(start)`` -> ``close()``. Usable as a context manager (open/close).

    Class attributes:
        name: the registry name used as ``type:`` in YAML.
        config_class: the pydantic model of this source's YAML section.
        requires: modules that must be importable, with the extra that installs them.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[SourceConfig]]
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def __init__(self, config: C, context: PluginContext | None = None) -> None:
        self.config = config
        self.context = context or PluginContext()

    def open(self) -> None:
        """Connect and check preconditions; raise ``SourceError`` naming what is missing."""

    @abstractmethod
    def discover(self) -> list[Schema]:
        """The schemas of the selected tables as they are now, in canonical types."""

    @abstractmethod
    def read(self, start: Position | None) -> Iterator[Batch]:
        """Yield batches: the snapshot (unless configured off or already done), then the stream.

        Args:
            start: the last durable position (None: from the beginning).

        Guarantees:
            * The first batch mentioning a table starts with a ``CreateTable`` change for it, and
              every later change of its shape comes as a schema change leading a batch.
            * Batches never end inside a source transaction; ``end_position`` is non-decreasing.
            * Resuming from any yielded ``end_position`` gives no gap and no duplicate.
            * When idle, an empty batch is yielded at least every second, so that the runner can
              stop promptly and heartbeats can advance the position.
        """

    def durable(self, position: Position) -> None:
        """Everything up to ``position`` is durable in the sink; called before the checkpoint at
        ``position`` is saved (``ack`` follows the save). May be called from another thread.

        For what the source keeps in its own files about the shape of its tables (Postgres column
        identities): it must never be ahead of the sink, nor behind the checkpoint, or a restart
        would describe the tables as they were before changes the target already has.
        """

    def ack(self, position: Position) -> None:
        """Everything up to ``position`` is durable in the sink. May be called from another thread.

        Sources that hold server-side resources (replication slots) release them up to here.
        """

    def status(self) -> dict[str, Any]:
        """Extra figures for ``zetl status`` (lag, snapshot progress); cheap, any thread."""
        return {}

    def source_state(self) -> list[str]:
        """What this integration owns on the source server (e.g. ``replication slot 'zetl_x'``),
        one line each, for ``zetl reset --drop-source-state`` to show before it removes them.

        Called on a source that was constructed but not opened; it may connect. Only resources
        the integration can prove it created (recorded in ``context.state_dir``) are listed.
        The default: none.
        """
        return []

    def local_state_files(self) -> list[Path]:
        """Files this source keeps in ``context.state_dir`` (that exist), which ``zetl reset``
        removes with the checkpoint: what the source remembers of the position it resumes
        from (e.g. a schema history). The default: none. Never the sink's files."""
        return []

    def drop_source_state(self) -> list[str]:
        """Remove what ``source_state`` lists; returns what was removed. Idempotent: a resource
        already gone is not an error. Never removes a resource it cannot prove is its own."""
        return []

    def close(self) -> None:
        """Release connections. Idempotent; may be called from another thread to stop ``read``."""

    def __enter__(self) -> Source[C]:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
