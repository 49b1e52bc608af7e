"""Binding a parsed row filter to a table's schema: type checks and typed literals.

A filter is parsed when the YAML is loaded, before any column type is known. Once the source's
schema of a table is known, ``bind`` checks every operation against the column types and
converts string literals that stand for a typed value, so that evaluation never meets a
type it cannot compare (the row and Arrow evaluators then agree on every row).

Literal conversion, done once here and never per row: a string literal compared with (or
listed in ``in (...)`` against, or given to ``coalesce`` with) an expression of one of these
types is read as a value of that type:

* ``date``: ISO 8601 date (``'2026-01-31'``);
* ``time``: ISO 8601 time without offset (``'13:45:00'``);
* ``timestamp``: ISO 8601 date and time without offset (``'2026-01-31 13:45'``; a date alone is
  midnight);
* ``timestamptz``: ISO 8601 date and time; a literal without an offset is read as UTC
  (``'2026-01-31'`` is ``2026-01-31T00:00:00+00:00``);
* ``uuid``: canonical text; ``decimal``, integer and float columns: a number.

A literal that does not read as the type is a ``BindError``; so is an operation on types that do
not fit (comparing a number with text, ``lower()`` of a number, ``like`` on a date, ``and`` on a
non-boolean, a filter that is not a condition, any use of json/list/struct values other than
``is null``).
"""

from __future__ import annotations

import datetime
import decimal
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from zetl.filters.expr import Node, Predicate, compile_tree
from zetl.schema.types import DataType, Schema, TypeKind

__all__ = ["BindError", "bind"]

_NUMBERS = {TypeKind.INT16, TypeKind.INT32, TypeKind.INT64, TypeKind.FLOAT32, TypeKind.FLOAT64, TypeKind.DECIMAL}
_CLASS = {
    TypeKind.BOOLEAN: "boolean",
    TypeKind.STRING: "text",
    TypeKind.BINARY: "binary",
    TypeKind.DATE: "date",
    TypeKind.TIME: "time",
    TypeKind.TIMESTAMP: "timestamp",
    TypeKind.TIMESTAMPTZ: "timestamptz",
    TypeKind.UUID: "uuid",
    TypeKind.JSON: "json",
    TypeKind.LIST: "list",
    TypeKind.STRUCT: "struct",
    **{k: "number" for k in _NUMBERS},
}
_CONVERTIBLE = _NUMBERS | {TypeKind.DATE, TypeKind.TIME, TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ, TypeKind.UUID}
_NOT_COMPARABLE = {"json", "list", "struct"}
_INTEGER = re.compile(r"[+-]?\d+")


class BindError(ValueError):
    """The filter does not fit the table's column types; ``reason`` says where and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Typed:
    node: Node
    cls: str  # number, text, boolean, date, time, timestamp, timestamptz, uuid, binary, json, list, struct, null
    type: DataType | None  # the column type the value has, when it comes from one

    @property
    def is_text_literal(self) -> bool:
        return self.node.op == "literal" and isinstance(self.node.args[0], str)

    def describe(self) -> str:
        if self.node.op == "literal":
            value = self.node.args[0]
            return "null" if value is None else f"the {self.cls} {_show(value)}"
        if self.node.op == "column":
            return f"column {self.node.args[0]!r} ({self.type})"
        return f"a {self.cls} expression"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def bind(predicate: Predicate, schema: Schema) -> Predicate:
    """``predicate`` checked against ``schema``, with its string literals converted to the types
    they are compared with. Raises ``BindError`` naming the column, the literal and the reason.
    Every column the filter names must be in ``schema`` (checked by the caller first)."""
    typed = _Binder(schema).bind(predicate.tree)
    if typed.cls not in ("boolean", "null"):
        raise BindError(f"the row filter must be a condition (true or false), but it gives {typed.describe()}")
    return compile_tree(predicate.text, typed.node)


def convert_literal(text: str, type_: DataType) -> Any:
    """``text`` read as a value of ``type_`` (one of the convertible kinds); raises ``BindError``."""
    kind = type_.kind
    expected = {
        TypeKind.DATE: "an ISO 8601 date such as '2026-01-31'",
        TypeKind.TIME: "an ISO 8601 time such as '13:45:00', without an offset",
        TypeKind.TIMESTAMP: "an ISO 8601 date and time such as '2026-01-31 13:45:00', without an offset",
        TypeKind.TIMESTAMPTZ: "an ISO 8601 date and time such as '2026-01-31 13:45:00+02:00' (UTC when the offset is left out)",
        TypeKind.UUID: "a UUID such as '123e4567-e89b-12d3-a456-426614174000'",
    }.get(kind, "an integer" if type_.is_integer else "a number")
    value: Any = None
    text_ = text.strip()
    try:
        if kind is TypeKind.DATE:
            value = datetime.date.fromisoformat(text_)
        elif kind is TypeKind.TIME:
            value = datetime.time.fromisoformat(text_)
            if value.tzinfo is not None:
                value = None
        elif kind in (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ):
            value = datetime.datetime.fromisoformat(text_)
            if kind is TypeKind.TIMESTAMPTZ and value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            elif kind is TypeKind.TIMESTAMP and value.tzinfo is not None:
                value = None
        elif kind is TypeKind.UUID:
            value = uuid.UUID(text_)
        elif type_.is_integer:
            value = int(text_) if _INTEGER.fullmatch(text_) else None
        elif kind is TypeKind.DECIMAL:
            value = decimal.Decimal(text_)
            value = value if value.is_finite() else None
        else:
            number = float(text_)
            value = number if math.isfinite(number) else None
    except (ValueError, decimal.InvalidOperation):
        value = None
    if value is None:
        raise BindError(f"the literal {text!r} is not {expected}")
    return value


class _Binder:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    def bind(self, node: Node) -> _Typed:
        op, args = node.op, node.args
        if op == "literal":
            value = args[0]
            if value is None:
                return _Typed(node, "null", None)
            if isinstance(value, bool):
                return _Typed(node, "boolean", None)
            if isinstance(value, str):
                return _Typed(node, "text", None)
            return _Typed(node, "number", None)
        if op == "column":
            type_ = self.schema.field(args[0]).type
            return _Typed(node, _CLASS[type_.kind], type_)
        if op in ("and", "or", "not"):
            parts = [self.bind(a) for a in args]
            for part in parts:
                if part.cls not in ("boolean", "null"):
                    raise BindError(f"'{op}' needs conditions (true or false) on both sides, but got {part.describe()}")
            return _Typed(Node(op, tuple(p.node for p in parts)), "boolean", None)
        if op in ("eq", "ne", "lt", "le", "gt", "ge"):
            left, right = self._unify(self.bind(args[0]), self.bind(args[1]))
            self._comparable(left, right, _SYMBOL[op])
            return _Typed(Node(op, (left.node, right.node)), "boolean", None)
        if op == "in":
            inner = self.bind(args[0])
            values: list[Any] = []
            for value in args[1]:
                literal = self.bind(Node("literal", (value,)))
                _, literal = self._unify(inner, literal)
                self._comparable(inner, literal, "in")
                values.append(literal.node.args[0])
            return _Typed(Node("in", (inner.node, tuple(values))), "boolean", None)
        if op == "is_null":
            inner = self.bind(args[0])
            return _Typed(Node(op, (inner.node,)), "boolean", None)
        if op == "like":
            inner = self.bind(args[0])
            self._needs(inner, "text", "like")
            return _Typed(Node(op, (inner.node, args[1])), "boolean", None)
        if op in ("add", "sub", "mul", "div", "neg"):
            parts = [self.bind(a) for a in args]
            for part in parts:
                self._needs(part, "number", {"add": "+", "sub": "-", "mul": "*", "div": "/", "neg": "-"}[op])
            return _Typed(Node(op, tuple(p.node for p in parts)), "number", None)
        if op == "call":
            return self._call(args[0], [self.bind(a) for a in args[1]])
        raise AssertionError(f"unknown node {op}")

    def _call(self, function: str, parts: list[_Typed]) -> _Typed:
        if function == "coalesce":
            typed = next((p for p in parts if p.type is not None), None)
            if typed is not None:
                parts = [self._unify(typed, p)[1] for p in parts]
            classes = {p.cls for p in parts} - {"null"}
            if len(classes) > 1:
                listed = ", ".join(p.describe() for p in parts)
                raise BindError(f"coalesce() needs arguments of one type, but got {listed}")
            cls = classes.pop() if classes else "null"
            result_type = typed.type if typed is not None and typed.cls == cls else None
            return _Typed(Node("call", (function, tuple(p.node for p in parts))), cls, result_type)
        (part,) = parts
        self._needs(part, "text", f"{function}()")
        if function == "length":
            return _Typed(Node("call", (function, (part.node,))), "number", DataType(TypeKind.INT64))
        return _Typed(Node("call", (function, (part.node,))), "text", None)

    def _unify(self, left: _Typed, right: _Typed) -> tuple[_Typed, _Typed]:
        """Convert a text literal on one side to the type of the other side where it has one."""
        if left.is_text_literal and right.type is not None and right.type.kind in _CONVERTIBLE:
            left = self._converted(left, right)
        elif right.is_text_literal and left.type is not None and left.type.kind in _CONVERTIBLE:
            right = self._converted(right, left)
        return left, right

    def _converted(self, literal: _Typed, other: _Typed) -> _Typed:
        assert other.type is not None
        text = literal.node.args[0]
        try:
            value = convert_literal(text, other.type)
        except BindError as exc:
            raise BindError(f"{exc.reason}, as needed to compare it with {other.describe()}") from None
        return _Typed(Node("literal", (value,)), other.cls, other.type)

    def _comparable(self, left: _Typed, right: _Typed, operator: str) -> None:
        for part in (left, right):
            if part.cls in _NOT_COMPARABLE:
                raise BindError(f"{part.describe()} cannot be compared ('{operator}'); only 'is null' / 'is not null' apply to it")
        if "null" in (left.cls, right.cls) or left.cls == right.cls:
            return
        hint = ""
        if "text" in (left.cls, right.cls) and "number" in (left.cls, right.cls):
            hint = "; write numbers without quotes, or compare text with text"
        raise BindError(f"cannot compare {left.describe()} with {right.describe()} ('{operator}'){hint}")

    @staticmethod
    def _needs(part: _Typed, cls: str, operator: str) -> None:
        if part.cls not in (cls, "null"):
            raise BindError(f"'{operator}' needs a {cls} value, but got {part.describe()}")


_SYMBOL = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
