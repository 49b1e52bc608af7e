"""Every error zetl raises, in one tree.

    ZetlError                      base of everything below; ``retryable`` says what the runner does
    ├── ConfigError                the YAML is wrong; carries every ``ConfigIssue`` found (exit code 2)
    ├── PluginError                a plugin cannot be found or loaded
    │   ├── UnknownPluginError     no source/sink of that name ("Did you mean ...?")
    │   └── NotInstalledError      the plugin's extra is missing ("pip install 'zetl[iceberg]'")
    ├── SchemaError                a schema change the policy or the sink refuses
    ├── SourceError                raised while reading from a source
    │   └── SourceConnectionError  connection lost or refused (retryable)
    ├── SinkError                  raised while writing to a sink
    │   ├── SinkConnectionError    connection lost or refused (retryable)
    │   └── WriterFencedError      a newer run of the integration wrote to the target (this one stops)
    ├── CheckpointError            the checkpoint store cannot be read or written
    └── NeedsAttentionError        the integration cannot go on without a person (e.g. purged binlog)

Retryable versus fatal is a property of the instance, not only of the class: a driver error is
mapped to ``SourceError(..., retryable=True)`` when retrying can succeed (a dropped connection, a
serialization conflict) and to ``retryable=False`` otherwise. The runner retries retryable errors
with capped exponential backoff; fatal errors put the integration in the ``failed`` state and
``NeedsAttentionError`` in ``needs_attention``. Other integrations in the same daemon go on.

Errors shown to users say what went wrong, where (file:line, table, column), and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConfigIssue",
    "NeedsAttentionError",
    "NotInstalledError",
    "PluginError",
    "SchemaError",
    "SinkConnectionError",
    "SinkError",
    "SourceConnectionError",
    "SourceError",
    "UnknownPluginError",
    "WriterFencedError",
    "ZetlError",
    "exclude_advice",
]


def exclude_advice(table: object, column: str) -> str:
    """What to do about a value zetl cannot carry: the ``filters`` setting that leaves the
    column out (an excluded column is never read or decoded, so this makes the table run), or
    a change of the column's type in the source."""
    return (
        f"To replicate {table} without this column, add to the integration's file: "
        f"filters: {{tables: {{{table}: {{columns: {{exclude: [{column}]}}}}}}}} "
        "(an excluded column is never read); or change the column's type in the source."
    )


class ZetlError(Exception):
    """Base class of all zetl errors.

    Args:
        message: what went wrong, where, and what to do.
        retryable: whether running the same step again can succeed.
    """

    default_retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = self.default_retryable if retryable is None else retryable


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file.

    ``path`` is the dotted path of the field (``sink.catalog.uri``), ``line`` and ``column`` are
    1-based and point into ``file`` (0 when unknown).
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        text = f"{where}  {self.path or '<root>'}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(ZetlError):
    """One or more configuration files are invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue) -> None:
        self.issues: list[ConfigIssue] = [issues] if isinstance(issues, ConfigIssue) else list(issues)
        super().__init__("\n".join(str(i) for i in self.issues), retryable=False)


class PluginError(ZetlError):
    """A plugin could not be found or loaded."""


class UnknownPluginError(PluginError):
    """No plugin of that name is registered."""

    def __init__(self, message: str, *, kind: str, name: str, installed: list[str]) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.installed = installed


class NotInstalledError(PluginError):
    """The plugin's optional dependencies are not installed."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class SchemaError(ZetlError):
    """A schema change was refused by the policy or cannot be applied by the sink.

    ``table`` and ``column`` name the place (``column`` is None for table-level changes).
    """

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None) -> None:
        super().__init__(message)
        self.table = table
        self.column = column


class SourceError(ZetlError):
    """An error while reading from a source."""


class SourceConnectionError(SourceError):
    """The source's server could not be reached or dropped the connection."""

    default_retryable = True


class SinkError(ZetlError):
    """An error while writing to a sink."""


class SinkConnectionError(SinkError):
    """The sink's server could not be reached or dropped the connection."""

    default_retryable = True


class WriterFencedError(SinkError):
    """The target holds a writer epoch newer than this run's: another run of the integration took
    over (see ``Sink.stored_epoch``). Never retried: this run stops without committing."""


class CheckpointError(ZetlError):
    """The checkpoint store cannot be read or written."""


class NeedsAttentionError(ZetlError):
    """The integration cannot go on by itself; a person must act (the message says how).

    Never retried automatically: the integration goes to the ``needs_attention`` state.
    """
