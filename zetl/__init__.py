"""zetl: Zero-ETL change data capture.

Public API for library use and for writing plugins::

    from zetl import Sink, SinkConfig, SinkCapabilities, Batch, ChangeEvent, Op

Importing zetl imports no database driver; plugins load their drivers when they open.
"""

from zetl.errors import (
    CheckpointError,
    ConfigError,
    NeedsAttentionError,
    NotInstalledError,
    PluginError,
    SchemaError,
    SinkConnectionError,
    SinkError,
    WriterFencedError,
    SourceConnectionError,
    SourceError,
    UnknownPluginError,
    ZetlError,
)
from zetl.events import UNCHANGED, Batch, ChangeEvent, Op, Position, RowChunk, SequencePosition, TableId
from zetl.plugin import PluginContext, require
from zetl.schema import (
    AddColumn,
    AlterColumnType,
    CreateTable,
    DataType,
    DropColumn,
    DropTable,
    Field,
    MakeColumnNullable,
    RenameColumn,
    Schema,
    SchemaChange,
    T,
    TruncateTable,
    TypeKind,
)
from zetl.sink import Sink, SinkCapabilities, SinkConfig
from zetl.source import Source, SourceConfig

__version__ = "0.1.0"

__all__ = [
    "AddColumn",
    "AlterColumnType",
    "Batch",
    "ChangeEvent",
    "CheckpointError",
    "ConfigError",
    "CreateTable",
    "DataType",
    "DropColumn",
    "DropTable",
    "Field",
    "MakeColumnNullable",
    "NeedsAttentionError",
    "NotInstalledError",
    "Op",
    "PluginContext",
    "PluginError",
    "Position",
    "RenameColumn",
    "RowChunk",
    "Schema",
    "SchemaChange",
    "SchemaError",
    "SequencePosition",
    "Sink",
    "SinkCapabilities",
    "SinkConfig",
    "SinkConnectionError",
    "SinkError",
    "WriterFencedError",
    "Source",
    "SourceConfig",
    "SourceConnectionError",
    "SourceError",
    "T",
    "TableId",
    "TruncateTable",
    "TypeKind",
    "UNCHANGED",
    "UnknownPluginError",
    "ZetlError",
    "require",
]
