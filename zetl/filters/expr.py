"""The row-filter language: a small, safe expression language parsed once into a predicate.

Grammar (keywords are case-insensitive)::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | predicate
    predicate  := sum [ compare sum
                      | ["not"] "in" "(" literal ("," literal)* ")"
                      | "is" ["not"] "null"
                      | ["not"] "like" string ]
    compare    := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | atom
    atom       := number | string | "true" | "false" | "null" | column
                | function "(" expr ("," expr)* ")" | "(" expr ")"
    column     := name | "double-quoted name"
    function   := lower | upper | length | coalesce

Semantics are SQL's: NULL compares to nothing (the result is NULL), ``and``/``or``/``not`` use
three-valued logic (``false and NULL`` is false, ``true or NULL`` is true, ``not NULL`` is NULL),
and, as in a SQL WHERE clause, a row is kept only when the whole expression is true: a NULL
result excludes the row, exactly like false. ``/`` divides as floating point and gives NULL when
dividing by zero. ``like`` matches the whole string: ``%`` any run of characters, ``_`` one
character, ``\\`` escapes the next one.

A parsed filter knows no column types; ``zetl.filters.bind`` checks it against the table's schema
and turns string literals compared with dates, times, timestamps (a timestamptz literal without
an offset is UTC), uuids and numbers into values of that type, once. Evaluating a bound filter
on values of the wrong type raises ``EvaluationError`` (never a bare TypeError or Arrow error).

There is no ``eval``: the text is tokenised and parsed here into a tree, and the tree is compiled
into Python closures (``Predicate.matches`` for single rows) or into a ``pyarrow.compute``
expression (``Predicate.arrow_filter`` for columnar chunks). Both give the same answer for every
row; the tests check that on every golden case.
"""

from __future__ import annotations

import datetime
import decimal
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from zetl.events import UNCHANGED

__all__ = ["EvaluationError", "ExpressionError", "Predicate", "compile_expression", "compile_tree"]

FUNCTIONS: dict[str, int | None] = {"lower": 1, "upper": 1, "length": 1, "coalesce": None}
"""Function name -> number of arguments (None: one or more)."""

_KEYWORDS = {"and", "or", "not", "in", "is", "null", "like", "true", "false"}
_COMPARE = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}


class ExpressionError(ValueError):
    """A row filter that cannot be parsed. ``column`` is 1-based, within the expression."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"invalid row filter at column {column}: {message}")
        self.reason = message
        self.column = column


class EvaluationError(ValueError):
    """A row the filter cannot be evaluated on (values of types it cannot combine, an overflow).
    A filter bound to its table's schema (``zetl.filters.bind``) meets this only on values that
    do not have their column's type."""


# -- tokens -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "quoted", "number", "string", "op", "end"
    text: str
    value: Any
    column: int

    def describe(self) -> str:
        return "the end of the expression" if self.kind == "end" else repr(self.text)


_NUMBER = re.compile(r"\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = ("==", "!=", "<>", "<=", ">=", "=", "<", ">", "(", ")", ",", "+", "-", "*", "/")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        col = i + 1
        if ch == "'" or ch == '"':
            j = i + 1
            parts: list[str] = []
            while True:
                end = text.find(ch, j)
                if end < 0:
                    what = "string" if ch == "'" else "quoted column name"
                    raise ExpressionError(f"unterminated {what} (a closing {ch} is missing)", col)
                parts.append(text[j:end])
                if text[end + 1 : end + 2] == ch:  # doubled quote: a literal quote
                    parts.append(ch)
                    j = end + 2
                    continue
                i = end + 1
                break
            value = "".join(parts)
            if ch == '"' and not value:
                raise ExpressionError("empty quoted column name", col)
            tokens.append(_Token("string" if ch == "'" else "quoted", text[col - 1 : i], value, col))
            continue
        m = _NUMBER.match(text, i)
        if m and (ch.isdigit() or ch == "."):
            raw = m.group(0)
            i = m.end()
            if i < len(text) and (text[i].isalpha() or text[i] == "_"):
                raise ExpressionError(f"invalid number {raw + text[i]!r}", col)
            value = int(raw) if raw.isdigit() else decimal.Decimal(raw)
            tokens.append(_Token("number", raw, value, col))
            continue
        m = _NAME.match(text, i)
        if m:
            i = m.end()
            tokens.append(_Token("name", m.group(0), m.group(0), col))
            continue
        op = next((o for o in _OPS if text.startswith(o, i)), None)
        if op is None:
            hint = "; attribute access is not supported" if ch == "." else ""
            raise ExpressionError(f"unexpected character {ch!r}{hint}", col)
        tokens.append(_Token("op", op, op, col))
        i += len(op)
    tokens.append(_Token("end", "", None, len(text) + 1))
    return tokens


# -- tree ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """One node of the parsed expression. ``op`` names it; ``args`` are children or values."""

    op: str  # literal, column, and, or, not, eq..ge, in, is_null, like, add, sub, mul, div, neg, call
    args: tuple[Any, ...]

    def columns(self) -> set[str]:
        """Every column the expression reads, including inside function arguments."""
        if self.op == "column":
            return {self.args[0]}
        found: set[str] = set()
        pending: list[Any] = list(self.args)
        while pending:
            arg = pending.pop()
            if isinstance(arg, Node):
                found |= arg.columns()
            elif isinstance(arg, tuple):  # the arguments of a call
                pending.extend(arg)
        return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def keyword(self, word: str) -> bool:
        t = self.tok
        if t.kind == "name" and t.text.lower() == word:
            self.i += 1
            return True
        return False

    def op(self, *ops: str) -> str | None:
        t = self.tok
        if t.kind == "op" and t.text in ops:
            self.i += 1
            return t.text
        return None

    def expect_op(self, op: str, context: str) -> None:
        if self.op(op) is None:
            raise ExpressionError(f"expected {op!r} {context}, got {self.tok.describe()}", self.tok.column)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ExpressionError("the expression is empty", 1)
        node = self.parse_or()
        if self.tok.kind != "end":
            raise ExpressionError(f"unexpected {self.tok.describe()} after a complete expression", self.tok.column)
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.keyword("or"):
            node = Node("or", (node, self.parse_and()))
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.keyword("and"):
            node = Node("and", (node, self.parse_not()))
        return node

    def parse_not(self) -> Node:
        if self.keyword("not"):
            return Node("not", (self.parse_not(),))
        return self.parse_predicate()

    def parse_predicate(self) -> Node:
        left = self.parse_sum()
        compare = self.op(*_COMPARE)
        if compare is not None:
            return Node(_COMPARE[compare], (left, self.parse_sum()))
        if self.keyword("is"):
            negate = self.keyword("not")
            if not self.keyword("null"):
                raise ExpressionError(f"expected 'null' after 'is{' not' if negate else ''}', got {self.tok.describe()}", self.tok.column)
            node = Node("is_null", (left,))
            return Node("not", (node,)) if negate else node
        negate = self.keyword("not")
        if self.keyword("in"):
            node = Node("in", (left, tuple(self.parse_list())))
        elif self.keyword("like"):
            pattern = self.tok
            if pattern.kind != "string":
                raise ExpressionError(f"expected a quoted pattern after 'like', got {pattern.describe()}", pattern.column)
            self.i += 1
            node = Node("like", (left, pattern.value))
        elif negate:
            raise ExpressionError(f"expected 'in' or 'like' after 'not', got {self.tok.describe()}", self.tok.column)
        else:
            return left
        return Node("not", (node,)) if negate else node

    def parse_list(self) -> list[Any]:
        self.expect_op("(", "after 'in'")
        values: list[Any] = []
        while True:
            values.append(self.parse_literal())
            if self.op(")"):
                return values
            if self.op(",") is None:
                raise ExpressionError(f"expected ',' or ')' in the 'in' list, got {self.tok.describe()}", self.tok.column)

    def parse_literal(self) -> Any:
        t = self.tok
        sign = 1
        if t.kind == "op" and t.text == "-":
            self.i += 1
            sign, t = -1, self.tok
            if t.kind != "number":
                raise ExpressionError(f"expected a number after '-', got {t.describe()}", t.column)
        if t.kind in ("number", "string"):
            self.i += 1
            return t.value * sign if t.kind == "number" else t.value
        if t.kind == "name" and t.text.lower() in ("true", "false", "null"):
            self.i += 1
            return {"true": True, "false": False, "null": None}[t.text.lower()]
        raise ExpressionError(f"expected a literal value in the 'in' list, got {t.describe()}", t.column)

    def parse_sum(self) -> Node:
        node = self.parse_product()
        while (op := self.op("+", "-")) is not None:
            node = Node("add" if op == "+" else "sub", (node, self.parse_product()))
        return node

    def parse_product(self) -> Node:
        node = self.parse_unary()
        while (op := self.op("*", "/")) is not None:
            node = Node("mul" if op == "*" else "div", (node, self.parse_unary()))
        return node

    def parse_unary(self) -> Node:
        if self.op("-"):
            inner = self.parse_unary()
            if inner.op == "literal" and isinstance(inner.args[0], (int, decimal.Decimal)) and not isinstance(inner.args[0], bool):
                return Node("literal", (-inner.args[0],))
            return Node("neg", (inner,))
        return self.parse_atom()

    def parse_atom(self) -> Node:
        t = self.tok
        if t.kind in ("number", "string"):
            self.i += 1
            return Node("literal", (t.value,))
        if t.kind == "quoted":
            self.i += 1
            return Node("column", (t.value,))
        if t.kind == "op" and t.text == "(":
            self.i += 1
            node = self.parse_or()
            if self.op(")") is None:
                raise ExpressionError(f"expected ')' to close the '(' at column {t.column}, got {self.tok.describe()}", self.tok.column)
            return node
        if t.kind == "name":
            word = t.text.lower()
            if word in ("true", "false", "null"):
                self.i += 1
                return Node("literal", ({"true": True, "false": False, "null": None}[word],))
            if word in _KEYWORDS:
                raise ExpressionError(f"expected a value, got the keyword {t.text!r}", t.column)
            self.i += 1
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.parse_call(t)
            return Node("column", (t.text,))
        raise ExpressionError(f"expected a value, got {t.describe()}", t.column)

    def parse_call(self, name: _Token) -> Node:
        function = name.text.lower()
        if function not in FUNCTIONS:
            raise ExpressionError(f"unknown function {name.text!r}; functions are: {', '.join(sorted(FUNCTIONS))}", name.column)
        self.i += 1  # "("
        args: list[Node] = []
        if self.op(")") is None:
            while True:
                args.append(self.parse_or())
                if self.op(")"):
                    break
                if self.op(",") is None:
                    raise ExpressionError(f"expected ',' or ')' in the arguments of {function}(), got {self.tok.describe()}", self.tok.column)
        wanted = FUNCTIONS[function]
        if (wanted is not None and len(args) != wanted) or (wanted is None and not args):
            count = "1 argument" if wanted == 1 else "at least 1 argument"
            raise ExpressionError(f"{function}() takes {count}, got {len(args)}", name.column)
        return Node("call", (function, tuple(args)))


# -- row-by-row evaluation ----------------------------------------------------------------
class _Unknown(Exception):
    """A column the expression needs is missing from the row or carries ``UNCHANGED``."""


Evaluator = Callable[[Mapping[str, Any]], Any]


def _arith(op: str, a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    if isinstance(a, float) or isinstance(b, float) or op == "div":
        a, b = float(a), float(b)
    if op == "add":
        return _int64(a + b)
    if op == "sub":
        return _int64(a - b)
    if op == "mul":
        return _int64(a * b)
    return None if b == 0 else a / b


_INT64 = (-(2**63), 2**63 - 1)


def _int64(value: Any) -> Any:
    """Integer arithmetic is 64-bit, as on the Arrow path: a result out of range is an error."""
    if type(value) is int and not _INT64[0] <= value <= _INT64[1]:
        raise OverflowError(f"integer overflow: {value} is out of the 64-bit range")
    return value


def _compare(op: str, a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    if isinstance(a, decimal.Decimal) and isinstance(b, float) or isinstance(a, float) and isinstance(b, decimal.Decimal):
        a, b = float(a), float(b)
    try:
        if op == "eq":
            return bool(a == b)
        if op == "ne":
            return bool(a != b)
        if op == "lt":
            return bool(a < b)
        if op == "le":
            return bool(a <= b)
        if op == "gt":
            return bool(a > b)
        return bool(a >= b)
    except TypeError:
        raise TypeError(f"cannot compare {type(a).__name__} {a!r} with {type(b).__name__} {b!r}") from None


def like_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a ``like`` pattern (whole-string match)."""
    out: list[str] = []
    escaped = False
    for ch in pattern:
        if escaped:
            out.append(re.escape(ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    if escaped:
        out.append(re.escape("\\"))
    return re.compile("".join(out), re.DOTALL)


def _compile_row(node: Node) -> Evaluator:
    op, args = node.op, node.args
    if op == "literal":
        value = args[0]
        return lambda row: value
    if op == "column":
        name = args[0]

        def column(row: Mapping[str, Any]) -> Any:
            try:
                value = row[name]
            except KeyError:
                raise _Unknown(name) from None
            if value is UNCHANGED:
                raise _Unknown(name)
            return value

        return column
    if op in ("and", "or"):
        left, right = _compile_row(args[0]), _compile_row(args[1])
        if op == "and":

            def and_(row: Mapping[str, Any]) -> bool | None:
                a = left(row)
                if a is False:
                    return False
                b = right(row)
                if b is False:
                    return False
                return None if a is None or b is None else True

            return and_

        def or_(row: Mapping[str, Any]) -> bool | None:
            a = left(row)
            if a is True:
                return True
            b = right(row)
            if b is True:
                return True
            return None if a is None or b is None else False

        return or_
    if op == "not":
        inner = _compile_row(args[0])
        return lambda row: None if (v := inner(row)) is None else not v
    if op in ("eq", "ne", "lt", "le", "gt", "ge"):
        left, right = _compile_row(args[0]), _compile_row(args[1])
        return lambda row: _compare(op, left(row), right(row))
    if op == "in":
        inner = _compile_row(args[0])
        values = [v for v in args[1] if v is not None]
        has_null = len(values) != len(args[1])

        def in_(row: Mapping[str, Any]) -> bool | None:
            v = inner(row)
            if v is None:
                return None
            if any(_compare("eq", v, candidate) for candidate in values):
                return True
            return None if has_null else False

        return in_
    if op == "is_null":
        inner = _compile_row(args[0])
        return lambda row: inner(row) is None
    if op == "like":
        inner = _compile_row(args[0])
        regex = like_regex(args[1])
        return lambda row: None if (v := inner(row)) is None else regex.fullmatch(str(v)) is not None
    if op in ("add", "sub", "mul", "div"):
        left, right = _compile_row(args[0]), _compile_row(args[1])
        return lambda row: _arith(op, left(row), right(row))
    if op == "neg":
        inner = _compile_row(args[0])
        return lambda row: None if (v := inner(row)) is None else _int64(-v)
    if op == "call":
        function, call_args = args[0], [_compile_row(a) for a in args[1]]
        if function == "coalesce":
            def coalesce(row: Mapping[str, Any]) -> Any:
                for arg in call_args:
                    v = arg(row)
                    if v is not None:
                        return v
                return None

            return coalesce
        (arg,) = call_args
        if function == "lower":
            return lambda row: None if (v := arg(row)) is None else str(v).lower()
        if function == "upper":
            return lambda row: None if (v := arg(row)) is None else str(v).upper()
        return lambda row: None if (v := arg(row)) is None else len(str(v))
    raise AssertionError(f"unknown node {op}")


# -- Arrow evaluation ---------------------------------------------------------------------
def _is_decimal(node: Node, schema: Any) -> bool:
    """Whether ``node`` evaluates to an Arrow decimal on ``schema`` (number literals next to a
    decimal are then given a decimal type, so comparisons stay exact as in ``matches``)."""
    import pyarrow as pa

    if node.op == "column":
        index = schema.get_field_index(node.args[0])
        return index >= 0 and pa.types.is_decimal(schema.field(index).type)
    if node.op in ("add", "sub", "mul", "neg"):
        return any(_is_decimal(a, schema) for a in node.args if isinstance(a, Node))
    if node.op == "call" and node.args[0] == "coalesce":
        return any(_is_decimal(a, schema) for a in node.args[1])
    return False


def _decimal_scalar(value: Any) -> Any:
    import pyarrow as pa

    d = decimal.Decimal(value)
    sign, digits, exponent = d.as_tuple()
    scale = max(0, -int(exponent))
    precision = max(len(digits), scale + 1)
    return pa.scalar(d, pa.decimal128(precision, scale))


def _arrow_type(node: Node, schema: Any) -> Any:
    """The Arrow type of a column (or of a coalesce over one) on ``schema``; None otherwise."""
    if node.op == "column":
        index = schema.get_field_index(node.args[0])
        return schema.field(index).type if index >= 0 else None
    if node.op == "call" and node.args[0] == "coalesce":
        return next((t for t in (_arrow_type(a, schema) for a in node.args[1]) if t is not None), None)
    return None


_TYPED_LITERALS = (datetime.date, datetime.time, uuid.UUID)  # datetime.datetime is a date


def _typed_scalar(value: Any, arrow_type: Any) -> Any:
    """A bound literal (date, time, timestamp, uuid) as a scalar of the column's Arrow type, so
    the comparison kernel sees one type on both sides (uuid columns are text or 16 bytes)."""
    import pyarrow as pa

    if isinstance(value, uuid.UUID):
        storage = arrow_type.storage_type if isinstance(arrow_type, pa.ExtensionType) else arrow_type
        if pa.types.is_fixed_size_binary(storage) or pa.types.is_binary(storage) or pa.types.is_large_binary(storage):
            return pa.scalar(value.bytes, storage)
        return pa.scalar(str(value), arrow_type)
    return pa.scalar(value, arrow_type)


def _pair(left: Node, right: Node, schema: Any) -> list[Any]:
    decimal_context = _is_decimal(left, schema) or _is_decimal(right, schema)
    return [
        _compile_arrow(left, schema, decimal_context, _arrow_type(right, schema)),
        _compile_arrow(right, schema, decimal_context, _arrow_type(left, schema)),
    ]


def _compile_arrow(node: Node, schema: Any, decimal_context: bool = False, hint: Any = None) -> Any:
    """``node`` as a ``pyarrow.compute`` expression on ``schema``. ``hint`` is the Arrow type of
    the value a literal is compared with (bound date/time/uuid literals take that type)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    op, args = node.op, node.args
    if op == "literal":
        value = args[0]
        if value is None:
            return pc.scalar(pa.scalar(None, pa.null()))
        if isinstance(value, _TYPED_LITERALS) and hint is not None:
            return pc.scalar(_typed_scalar(value, hint))
        if isinstance(value, (int, decimal.Decimal)) and not isinstance(value, bool):
            if decimal_context:
                return pc.scalar(_decimal_scalar(value))
            if isinstance(value, decimal.Decimal):
                return pc.scalar(float(value))
        return pc.scalar(value)
    if op == "column":
        index = schema.get_field_index(args[0])
        if index >= 0 and pa.types.is_integer(schema.field(index).type) and schema.field(index).type != pa.int64():
            # Narrower integers are widened so that arithmetic overflows at 64 bits on both paths.
            return pc.Expression._call("cast", [pc.field(args[0])], pc.CastOptions.safe(pa.int64()))
        return pc.field(args[0])
    if op == "and":
        return _compile_arrow(args[0], schema) & _compile_arrow(args[1], schema)
    if op == "or":
        return _compile_arrow(args[0], schema) | _compile_arrow(args[1], schema)
    if op == "not":
        return ~_compile_arrow(args[0], schema)
    if op in ("eq", "ne", "lt", "le", "gt", "ge"):
        names = {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal"}
        return pc.Expression._call(names[op], _pair(args[0], args[1], schema))
    if op == "in":
        inner = _compile_arrow(args[0], schema)
        values = [v for v in args[1] if v is not None]
        inner_type = _arrow_type(args[0], schema)
        if values and inner_type is not None and isinstance(values[0], _TYPED_LITERALS):
            plain: list[Any] = [_typed_scalar(v, inner_type).as_py() for v in values]
            candidates = pa.array(plain, type=_typed_scalar(values[0], inner_type).type)
        elif _is_decimal(args[0], schema):
            candidates = pa.array([decimal.Decimal(v) if isinstance(v, (int, decimal.Decimal)) and not isinstance(v, bool) else v for v in values])
        else:
            candidates = pa.array([float(v) if isinstance(v, decimal.Decimal) else v for v in values])
        found = inner.isin(candidates) if values else pc.scalar(False)
        null = pc.scalar(pa.scalar(None, pa.bool_()))
        if len(values) != len(args[1]):  # SQL: x in (.., null) is null when not found
            found = pc.Expression._call("if_else", [found, pc.scalar(True), null])
        return pc.Expression._call("if_else", [inner.is_null(), null, found])
    if op == "is_null":
        return _compile_arrow(args[0], schema).is_null()
    if op == "like":
        return pc.Expression._call("match_like", [_compile_arrow(args[0], schema)], pc.MatchSubstringOptions(args[1]))
    if op in ("add", "sub", "mul"):
        kernel = {"add": "add_checked", "sub": "subtract_checked", "mul": "multiply_checked"}[op]
        return pc.Expression._call(kernel, _pair(args[0], args[1], schema))
    if op == "div":
        float64 = pc.CastOptions.safe(pa.float64())
        left = pc.Expression._call("cast", [_compile_arrow(args[0], schema)], float64)
        right = pc.Expression._call("cast", [_compile_arrow(args[1], schema)], float64)
        zero = pc.Expression._call("equal", [right, pc.scalar(0.0)])
        quotient = pc.Expression._call("divide", [left, right])
        return pc.Expression._call("if_else", [zero, pc.scalar(pa.scalar(None, pa.float64())), quotient])
    if op == "neg":
        return pc.Expression._call("negate_checked", [_compile_arrow(args[0], schema, decimal_context)])
    if op == "call":
        function = args[0]
        if function == "coalesce":
            context = any(_is_decimal(a, schema) for a in args[1])
            typed = _arrow_type(node, schema) or hint
            return pc.Expression._call("coalesce", [_compile_arrow(a, schema, context, typed) for a in args[1]])
        kernel = {"lower": "utf8_lower", "upper": "utf8_upper", "length": "utf8_length"}[function]
        return pc.Expression._call(kernel, [_compile_arrow(a, schema) for a in args[1]])
    raise AssertionError(f"unknown node {op}")


@dataclass(frozen=True)
class Predicate:
    """A compiled row filter.

    ``matches(row)`` is True (keep), False (drop, including SQL NULL), or None when the row lacks
    a column the expression needs (or holds ``UNCHANGED`` there). ``arrow_filter(table)`` keeps
    the rows of an Arrow table or record batch for which the expression is true.
    """

    text: str
    tree: Node
    columns: frozenset[str]
    _row: Evaluator

    def matches(self, row: Mapping[str, Any]) -> bool | None:
        """Raises ``EvaluationError`` when the row's values cannot be evaluated."""
        try:
            return self._row(row) is True
        except _Unknown:
            return None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise EvaluationError(str(exc)) from exc

    def arrow_mask(self, rows: Any) -> Any:
        """A boolean array: True where the row is kept (nulls are already False)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        try:
            expression = _compile_arrow(self.tree, table.schema)
            kept = ds.dataset(table).to_table(columns={"keep": expression})["keep"]
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise EvaluationError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        if not pa.types.is_boolean(kept.type):
            raise EvaluationError(f"the filter gives {kept.type} values, not true/false")
        return pc.fill_null(kept, False)

    def arrow_filter(self, rows: Any) -> Any:
        """The rows for which the expression is true, same type as ``rows`` (table or batch)."""
        import pyarrow as pa

        mask = self.arrow_mask(rows)
        if isinstance(rows, pa.RecordBatch):
            return rows.filter(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask)
        return rows.filter(mask)


def parse_expression(text: str) -> Node:
    """The tree of ``text``; raises ``ExpressionError`` with the 1-based column of the problem."""
    return _Parser(text).parse()


def compile_expression(text: str) -> Predicate:
    """Parse and compile a row filter once. Raises ``ExpressionError`` on a syntax error."""
    return compile_tree(text, parse_expression(text))


def compile_tree(text: str, tree: Node) -> Predicate:
    """The predicate of an already parsed (or bound) tree."""
    return Predicate(text, tree, frozenset(tree.columns()), _compile_row(tree))


def referenced_columns(text: str) -> Sequence[str]:
    return sorted(parse_expression(text).columns())
