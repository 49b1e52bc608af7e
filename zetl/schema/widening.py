"""Type widening: the one place that says which type changes keep every value.

``can_widen(old, new)`` is True when every value of ``old`` is exactly a value of ``new``:

=====================  ==========================================================
from                   widens to
=====================  ==========================================================
int16                  int32, int64
int32                  int64
float32                float64
decimal(p,s)           decimal(p',s) with p' >= p (same scale)
string(n)              string(m) with m >= n, and unbounded string
date                   timestamp (midnight; lossless)
any type               itself
=====================  ==========================================================

Everything else (int64 -> float64, timestamp -> date, string -> int, ...) is incompatible: the
planner treats it as a breaking change and the policy decides.

``unify(a, b)`` is the type that holds values of both, used where zetl infers types from data
(flattened JSON keys): it widens where the rules allow, and falls back to ``string`` (or to
``json`` when one side is nested), so an inferred type only ever moves up, never back.
"""

from __future__ import annotations

from zetl.schema.types import DataType, T, TypeKind

__all__ = ["can_widen", "type_suffix", "unify"]

_INT_RANK = {TypeKind.INT16: 0, TypeKind.INT32: 1, TypeKind.INT64: 2}


def can_widen(old: DataType, new: DataType) -> bool:
    """Whether every value of ``old`` is a value of ``new`` (True when equal)."""
    if old == new:
        return True
    if old.kind in _INT_RANK and new.kind in _INT_RANK:
        return _INT_RANK[old.kind] <= _INT_RANK[new.kind]
    if old.kind is TypeKind.FLOAT32 and new.kind is TypeKind.FLOAT64:
        return True
    if old.kind is TypeKind.DECIMAL and new.kind is TypeKind.DECIMAL:
        return new.scale == old.scale and (new.precision or 0) >= (old.precision or 0)
    if old.kind is TypeKind.STRING and new.kind is TypeKind.STRING:
        return new.length is None or (old.length is not None and new.length >= old.length)
    if old.kind is TypeKind.DATE and new.kind is TypeKind.TIMESTAMP:
        return True
    return False


def unify(a: DataType | None, b: DataType | None) -> DataType | None:
    """The narrowest type holding the values of ``a`` and of ``b`` (None means "no value seen").

    Guarantees: symmetric (``unify(a, b) == unify(b, a)``), and monotone: the result is ``a``
    itself whenever ``b`` fits into ``a``, and ``a`` always widens or converts to the result, so
    a type inferred from data only moves up (int64 -> float64 -> string), never back.
    """
    if a is None:
        return b
    if b is None or can_widen(b, a):
        return a
    if can_widen(a, b):
        return b
    numeric = (TypeKind.INT16, TypeKind.INT32, TypeKind.INT64, TypeKind.FLOAT32, TypeKind.FLOAT64)
    if a.kind in numeric and b.kind in numeric:
        return T.float64
    if a.is_nested or b.is_nested:
        return T.json
    return T.string()


def type_suffix(dtype: DataType) -> str:
    """A column-name-safe spelling of a type, for the columns an incompatible change adds:
    ``string``, ``int64``, ``decimal_12_4``, ``list``, ``struct``."""
    if dtype.kind is TypeKind.DECIMAL:
        return f"decimal_{dtype.precision}_{dtype.scale}"
    return dtype.kind.value
