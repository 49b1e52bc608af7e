"""The integration envelope: one YAML file = one integration.

Plugins own their own sections (``source``, ``sink``): the envelope only requires their ``type``;
``zetl.config.load`` validates the rest with the plugin's ``config_class``.
"""

from __future__ import annotations

from pathlib import Path
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from zetl.config.types import Duration
from zetl.filters.config import FiltersConfig
from zetl.flatten import FlattenConfig
from zetl.schema.policy import SchemaEvolutionConfig
from zetl.tables import TableSelection, compile_pattern

if TYPE_CHECKING:
    from zetl.statehome import StateLocation

__all__ = ["BatchingConfig", "CheckpointConfig", "IntegrationConfig", "PluginSection", "RetryConfig", "TablesConfig"]


class _Section(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


class PluginSection(BaseModel):
    """``source:`` or ``sink:``: a ``type`` plus the plugin's own keys."""

    model_config = {"extra": "allow", "frozen": True}

    type: str
    """Registered plugin name (``postgres``, ``iceberg``) or ``package.module:Class``."""

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _valid_pattern(value: str) -> str:
    compile_pattern(value)
    return value


TablePatternText = Annotated[str, AfterValidator(_valid_pattern)]
"""A table pattern: ``db.table``, a glob (``schema.*``) or ``re:<regular expression>``."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TablesConfig(_Section):
    include: list[TablePatternText] = Field(default_factory=list)
    """Patterns of tables to replicate (all when empty): ``db.table``, ``schema.*``, ``re:regex``."""
    exclude: list[TablePatternText] = Field(default_factory=list)
    """Patterns of tables to leave out."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `tables: [a.b, c.*]` is the common case: a list means include.
        if isinstance(value, list):
            return {"include": value}
        return value

    def selection(self) -> TableSelection:
        return TableSelection.of(self.include, self.exclude)


class BatchingConfig(_Section):
    max_rows: int = Field(10_000, ge=1)
    """Largest number of rows written in one batch."""
    max_delay: Duration = 1.0
    """Longest time rows wait before they are written (e.g. 500ms, 2s)."""
    queue_size: int = Field(4, ge=1)
    """Batches read ahead of the sink; bounds memory (a slow sink slows reading)."""


class CheckpointConfig(_Section):
    store: Literal["sqlite"] = "sqlite"
    """Where positions are kept. ``sqlite``: one row per integration in a local file."""
    path: str | None = None
    """The SQLite file; relative paths are relative to the YAML file. Default:
    ``$ZETL_HOME/state.db`` (``~/.local/state/zetl/state.db``), the same from any directory."""


class RetryConfig(_Section):
    initial_backoff: Duration = 1.0
    """Wait before the first retry of a retryable error; doubles each time."""
    max_backoff: Duration = 60.0
    """Longest wait between retries."""
    max_attempts: int | None = Field(None, ge=1)
    """Give up (state ``failed``) after this many consecutive failures (never when unset)."""


class IntegrationConfig(_Section):
    version: Literal[1] = 1
    """Version of this file format."""
    name: str = Field(max_length=100)
    """Unique name; checkpoints are kept under it (letters, digits, '_', '.', '-')."""
    description: str | None = None
    source: PluginSection
    sink: PluginSection
    tables: TablesConfig = Field(default_factory=TablesConfig)
    schema_evolution: SchemaEvolutionConfig = Field(default_factory=SchemaEvolutionConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    flatten: FlattenConfig = Field(default_factory=FlattenConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("a name starts with a letter or digit and has only letters, digits, '_', '.' and '-'")
        return value

    def locate_state(self, config_file: Path | None) -> StateLocation:
        """Where this integration's state lives (``zetl.statehome`` states the rules)."""
        from zetl.statehome import locate_state

        return locate_state(self.name, self.checkpoint.path, config_file)

    def state_path(self, config_file: Path | None) -> Path:
        """The absolute path of this integration's state file."""
        return self.locate_state(config_file).path
