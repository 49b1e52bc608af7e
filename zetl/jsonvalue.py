"""json values: carried as the source's text, parsed only where zetl must look inside.

A json value travels through zetl as ``JsonText``, the JSON text exactly as the source sent it
(Postgres ``json``: the text as written; ``jsonb``: the text Postgres prints for the stored
document; MySQL: see ``zetl_connectors.mysql.convert``). Sources wrap the text, nothing parses it
on the way, and sinks store it as it is (Iceberg as text, Redshift as ``SUPER`` from that text,
the test sinks as text). The snapshot (Arrow chunks: json as an Arrow string) and the change
stream (``ChangeEvent`` values: ``JsonText``) therefore deliver the same bytes for the same value.

Only flattening (and any code that needs the document itself) parses, with ``parse_json``:

* Numbers stay exact: integers in the int64 range become ``int``, every other number a
  ``decimal.Decimal`` (``1.5``, ``1e400``, ``123456789012345678901234567890``); never a float.
  An integer ``-0`` is ``0``; a fractional ``-0.0`` keeps its sign (``Decimal('-0.0')``).
* Duplicate keys: the last one wins, as in Postgres ``jsonb`` and MySQL.
* ``NaN`` and ``Infinity`` are not JSON and are refused.

``dump_json`` writes a parsed document back as compact JSON with the same exact numbers.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["JsonText", "as_json_text", "dump_json", "parse_json"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class JsonText(str):
    """The JSON text of one json value, exactly as the source sent it.

    A ``str`` (so it is stored, compared and hashed as its text, and Arrow takes it as a string
    value) whose type says that the text is a JSON document rather than a JSON string.
    ``document()`` parses it (see ``parse_json``).
    """

    __slots__ = ()

    def document(self) -> Any:
        """The parsed document: exact numbers, the last of duplicate keys (``parse_json``)."""
        return parse_json(self)

    def __repr__(self) -> str:
        return f"JsonText({str.__repr__(self)})"


def _number_int(text: str) -> int | Decimal:
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else Decimal(text)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


_decoder = json.JSONDecoder(parse_float=Decimal, parse_int=_number_int, parse_constant=_no_constant)


def parse_json(text: str | bytes) -> Any:
    """A JSON document with exact numbers (int64 range: ``int``; otherwise ``Decimal``) and the
    last of duplicate keys. Raises ``ValueError`` for text that is not JSON (also for a document
    nested too deeply for Python's parser, as ``RecursionError`` is turned into ``ValueError``)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    try:
        return _decoder.decode(text)
    except RecursionError:
        raise ValueError("the JSON document is nested too deeply to be parsed") from None


def _exact(value: Any) -> Any:
    """``value`` with every number orjson would not write exactly replaced by its text: a
    ``Decimal``, an integer beyond 64 bits, a ``JsonText`` (the JSON it holds)."""
    if isinstance(value, JsonText):
        return orjson.Fragment(str(value))
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): _exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_exact(v) for v in value]
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"{value} is not a JSON number")
        return orjson.Fragment(str(value))
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _INT64_MAX:
        return orjson.Fragment(str(value))  # orjson refuses integers beyond 64 bits
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"{value} is not a JSON number")
    return value


def dump_json(document: Any) -> str:
    """A document as compact JSON text; ``Decimal`` and integers of any size are written
    exactly, a ``JsonText`` inside it as the JSON it holds. Raises ``TypeError`` for a value
    JSON cannot hold (NaN, infinities, other types)."""
    try:
        return orjson.dumps(_exact(document)).decode()
    except orjson.JSONEncodeError as exc:
        raise TypeError(str(exc)) from None


def as_json_text(value: Any) -> JsonText | None:
    """The canonical value of a json column: ``JsonText`` stays as it is; any other value is a
    decoded document (from a source written before json was carried as text) and is written as
    compact JSON. None stays None."""
    if value is None or isinstance(value, JsonText):
        return value
    return JsonText(dump_json(value))
