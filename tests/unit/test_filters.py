"""Golden tests of the row-filter language (tests/golden/filters/*.txt): every case runs both
the row evaluator and the Arrow evaluator, which must agree."""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from typing import Any

import orjson
import pyarrow as pa
import pytest
from golden_util import Case, check, params

from zetl.arrow import arrow_schema
from zetl.errors import ConfigError, SchemaError
from zetl.events import ChangeEvent, Op, RowChunk, SequencePosition, TableId
from zetl.filters.apply import TableFilter
from zetl.filters.config import FiltersConfig
from zetl.filters.expr import EvaluationError, ExpressionError, Predicate, compile_expression
from zetl.schema.types import DataType, Field, Schema, T, TypeKind


@params("filters/expressions.txt", 3)
def test_expression(case: Case) -> None:
    expression, row_text = case.inputs
    try:
        predicate = compile_expression(expression)
    except ExpressionError as exc:
        check(case, f"error: {exc}")
        return
    row = orjson.loads(row_text)
    result = predicate.matches(row)
    check(case, "unknown" if result is None else str(result).lower())
    if result is not None:
        table = pa.Table.from_pylist([row])
        # A column that is null in the one row has no type; real chunks always carry one.
        table = table.cast(pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]))
        assert predicate.arrow_mask(table).to_pylist() == [result], f"{case.id}: the Arrow evaluator disagrees"


@params("filters/errors.txt", 2)
def test_invalid_expression(case: Case) -> None:
    (expression,) = case.inputs
    try:
        compile_expression(expression)
    except ExpressionError as exc:
        check(case, str(exc))
    else:
        pytest.fail(f"{case.id}: {expression!r} was accepted")


def test_arrow_filter_keeps_only_true_rows_on_a_record_batch() -> None:
    batch = pa.RecordBatch.from_pylist([{"a": 1}, {"a": None}, {"a": 3}])
    kept = compile_expression("a >= 2 or a is null").arrow_filter(batch)
    assert isinstance(kept, pa.RecordBatch)
    assert kept.to_pylist() == [{"a": None}, {"a": 3}]


def test_no_python_evaluation_is_reachable() -> None:
    # Names are only ever column lookups: a column called like a builtin is just a column.
    predicate = compile_expression("__import__ = 'os' and exec is null")
    assert predicate.columns == frozenset({"__import__", "exec"})
    assert predicate.matches({"__import__": "os", "exec": None}) is True


# -- filters bound to a table's schema ------------------------------------------------------
def _schema(spec: str) -> Schema:
    fields = [Field("id", T.int64)]
    for part in re.split(r",(?![^()]*\))", spec):  # commas inside decimal(p,s) belong to the type
        name, _, type_text = part.strip().partition(":")
        fields.append(Field(name, DataType.parse(type_text)))
    return Schema.of(TableId("shop", "t"), fields, ["id"])


def _python(value: Any, type_: DataType) -> Any:
    """A JSON value of a golden row as the Python value a source gives for the column's type."""
    if value is None:
        return None
    kind = type_.kind
    if kind is TypeKind.DATE:
        return datetime.date.fromisoformat(value)
    if kind is TypeKind.TIME:
        return datetime.time.fromisoformat(value)
    if kind in (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ):
        return datetime.datetime.fromisoformat(value)
    if kind is TypeKind.UUID:
        return uuid.UUID(value)
    if kind is TypeKind.DECIMAL:
        return decimal.Decimal(value)
    return value


def _bound(spec: str, expression: str) -> Predicate:
    schema = _schema(spec)
    config = FiltersConfig.model_validate({"tables": {"shop.t": {"rows": expression}}})
    table_filter = TableFilter.build(config, schema)
    assert table_filter is not None and table_filter.predicate is not None
    return table_filter.predicate


@params("filters/typed.txt", 4)
def test_bound_expression_row_and_arrow_paths_agree(case: Case) -> None:
    spec, expression, row_text = case.inputs
    schema = _schema(spec)
    predicate = _bound(spec, expression)
    row = {"id": 1, **{k: _python(v, schema.field(k).type) for k, v in orjson.loads(row_text).items()}}
    result = predicate.matches(row)
    check(case, "unknown" if result is None else str(result).lower())
    # The same row as a snapshot chunk in the core's Arrow layout (uuid and json as text).
    arrow_row = {k: str(v) if isinstance(v, uuid.UUID) else orjson.dumps(v).decode() if isinstance(v, dict) else v for k, v in row.items()}
    table = pa.Table.from_pylist([arrow_row], schema=arrow_schema(schema))
    assert predicate.arrow_mask(table).to_pylist() == [result], f"{case.id}: the Arrow evaluator disagrees"


@params("filters/bind_errors.txt", 3)
def test_filter_that_does_not_fit_the_table(case: Case) -> None:
    spec, expression = case.inputs
    try:
        _bound(spec, expression)
    except SchemaError as exc:
        check(case, f"SchemaError: {exc}")
    except ConfigError as exc:
        (issue,) = exc.issues
        check(case, f"ConfigError: {issue.path}: {issue.message}")
    else:
        pytest.fail(f"{case.id}: {expression!r} was accepted on {spec}")


def test_evaluation_errors_name_the_table_and_the_filter() -> None:
    # Values that do not have their column's type (a source bug) are a clear error on both paths.
    table_filter = TableFilter.build(FiltersConfig.model_validate({"tables": {"shop.*": {"rows": "at >= '2026-01-01'"}}}), _schema("at:timestamptz"))
    assert table_filter is not None
    event = ChangeEvent.insert(TableId("shop", "t"), {"id": 1, "at": "2026-02-01"}, SequencePosition("stream", 1))
    with pytest.raises(ConfigError, match=r"filters\.tables\.shop\.\*\.rows: the row filter \"at >= '2026-01-01'\" cannot be evaluated on a row of shop\.t: cannot compare str"):
        table_filter.apply_event(event)
    rows = pa.table({"id": pa.array([1], pa.int64()), "at": pa.array(["2026-02-01"])})
    with pytest.raises(ConfigError, match=r"cannot be evaluated on a row of shop\.t"):
        table_filter.apply_chunk(RowChunk(TableId("shop", "t"), Op.READ, rows, SequencePosition("stream", 1)))


def test_columns_inside_function_arguments_are_found() -> None:
    predicate = compile_expression("lower(stauts) = 'x' or coalesce(a, upper(b)) like 'c%'")
    assert predicate.columns == frozenset({"stauts", "a", "b"})


def test_integer_overflow_is_an_error_on_both_paths() -> None:
    predicate = _bound("n:int64", "n * 2 > 0")
    with pytest.raises(EvaluationError, match="integer overflow"):
        predicate.matches({"id": 1, "n": 2**62})
    with pytest.raises(EvaluationError, match="overflow"):
        predicate.arrow_mask(pa.table({"id": pa.array([1], pa.int64()), "n": pa.array([2**62], pa.int64())}))
