"""Golden tests of the row-filter language (tests/golden/filters/*.txt): every case runs both
the row evaluator and the Arrow evaluator, which must agree."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from golden_util import Case, check, params
from zetl.filters.expr import ExpressionError, compile_expression


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
