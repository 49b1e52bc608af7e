"""Finding the value Redshift rejected, so that the error names the column and the value.

Redshift reports a failed multi-row INSERT or COPY without saying which value broke it. After the
batch's transaction is rolled back, ``locate_rejected_value`` loads each column's values of the
failing segment into a one-column temporary table of the column's type (one statement per column),
and bisects the first column that fails down to one value: about ``columns + log2(rows)``
statements, run only on this error path, outside any transaction, touching no user table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .identifiers import quote
from .layout import ColumnLayout, TableLayout
from .plan import StagedRow
from .values import ValueEncoder

__all__ = ["RejectedValue", "locate_rejected_value"]

PROBE_TABLE = "zetl_probe"
MAX_VALUES_PER_STATEMENT = 500


@dataclass(frozen=True)
class RejectedValue:
    column: ColumnLayout
    value: Any
    key: tuple[Any, ...]
    reason: str

    def describe(self, layout: TableLayout) -> str:
        text = repr(self.value)
        text = text if len(text) <= 80 else text[:77] + "..."
        key = ", ".join(f"{k}={v!r}" for k, v in zip(layout.primary_key, self.key)) if self.key else "no primary key"
        return (
            f"rejected value {text} in column {self.column.source} (Redshift column {self.column.target}, {self.column.redshift_type}) "
            f"of the row with {key}: {self.reason}"
        )


def locate_rejected_value(
    execute: Callable[[str, Any], Any],
    layout: TableLayout,
    rows: list[StagedRow],
    encoder: ValueEncoder,
) -> RejectedValue | None:
    """The first (column, value) that fails to load on its own; None if every value loads.

    ``execute(sql, params)`` must run in autocommit mode (a failed probe must not abort anything).
    """
    key_index = [i for i, c in enumerate(layout.columns) if c.primary_key]
    for i, column in enumerate(layout.columns):
        candidates = [(r, r.values[i]) for r in rows if r.values[i] is not None and i not in r.keep]
        if not candidates:
            continue
        expr = "JSON_PARSE(%s)" if column.redshift_type == "SUPER" else "%s"
        execute(f"DROP TABLE IF EXISTS {quote(PROBE_TABLE)}", None)
        execute(f"CREATE TEMP TABLE {quote(PROBE_TABLE)} (v {column.staged_type})", None)
        try:

            def fails(part: list[tuple[StagedRow, Any]]) -> str | None:
                try:
                    for begin in range(0, len(part), MAX_VALUES_PER_STATEMENT):
                        chunk = part[begin : begin + MAX_VALUES_PER_STATEMENT]
                        placeholders = ", ".join(f"({expr})" for _ in chunk)
                        execute(f"INSERT INTO {quote(PROBE_TABLE)} (v) VALUES {placeholders}", [encoder.param(column, v) for _, v in chunk])
                except Exception as exc:  # the probe's purpose is to see which values fail
                    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
                    return str(fields.get("M") or exc)
                return None

            reason = fails(candidates)
            if reason is None:
                continue
            part = candidates
            while len(part) > 1:
                half = part[: len(part) // 2]
                found = fails(half)
                if found is not None:
                    part, reason = half, found
                else:
                    part = part[len(part) // 2 :]
            row, value = part[0]
            return RejectedValue(column, value, tuple(row.values[k] for k in key_index), reason)
        finally:
            execute(f"DROP TABLE IF EXISTS {quote(PROBE_TABLE)}", None)
    return None
