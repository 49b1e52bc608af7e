"""Where the MySQL/MariaDB source is: a binlog coordinate, the GTID state, and snapshot progress."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import re
from collections.abc import Mapping
from typing import Any

from zetl.events import Position

__all__ = ["MySQLPosition", "SnapshotProgress", "binlog_index"]

_SUFFIX = re.compile(r"\.(\d+)$")


def binlog_index(file: str) -> int:
    """The sequence number of a binlog file name (``binlog.000012`` -> 12)."""
    m = _SUFFIX.search(file)
    if not m:
        raise ValueError(f"binlog file name {file!r} does not end with a sequence number")
    return int(m.group(1))


def _encode_key(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, decimal.Decimal):
        return {"dec": str(value)}
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return {"iso": value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()}
    return {"str": str(value)}


def _from_iso(text: str) -> Any:
    if " " in text or "T" in text:
        return dt.datetime.fromisoformat(text)
    if ":" in text:
        return dt.time.fromisoformat(text)
    return dt.date.fromisoformat(text)


def _decode_key(value: Any) -> Any:
    if isinstance(value, dict):
        if "b64" in value:
            return base64.b64decode(value["b64"])
        if "dec" in value:
            return decimal.Decimal(value["dec"])
        if "iso" in value:
            return _from_iso(value["iso"])
        return value.get("str")
    return value


class SnapshotProgress:
    """How far the snapshot got: tables finished, the table being read and its last key read.

    ``rows`` counts every row emitted so far (it orders snapshot positions).
    """

    __slots__ = ("after", "done", "rows", "table")

    def __init__(self, done: tuple[str, ...] = (), table: str | None = None, after: tuple[Any, ...] | None = None, rows: int = 0) -> None:
        self.done = tuple(done)
        self.table = table
        self.after = tuple(after) if after is not None else None
        self.rows = rows

    def to_json(self) -> dict[str, Any]:
        return {
            "done": list(self.done),
            "table": self.table,
            "after": [_encode_key(v) for v in self.after] if self.after is not None else None,
            "rows": self.rows,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SnapshotProgress:
        after = data.get("after")
        return cls(tuple(data.get("done") or ()), data.get("table"), tuple(_decode_key(v) for v in after) if after is not None else None, int(data.get("rows", 0)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SnapshotProgress) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"SnapshotProgress({self.to_json()})"


class MySQLPosition(Position):
    """A point in a server's binlog, always between two transactions.

    ``file``/``pos``: the binlog coordinate where the next transaction starts. ``gtid``: the
    server's GTID state up to here (MySQL: executed GTID set ``uuid:1-42,...``; MariaDB: the
    ``domain-server-seq`` list), None when the server has none. ``snapshot``: set while the initial
    copy is in progress (the coordinate is then where streaming starts once it is done).

    Order: by binlog coordinate, then snapshot positions before stream positions at the same
    coordinate, then by rows copied. Positions of different servers are not comparable.
    """

    kind = "mysql"

    __slots__ = ("file", "gtid", "pos", "snapshot")

    def __init__(self, file: str, pos: int, gtid: str | None = None, snapshot: SnapshotProgress | None = None) -> None:
        self.file = file
        self.pos = int(pos)
        self.gtid = gtid or None
        self.snapshot = snapshot

    @property
    def in_snapshot(self) -> bool:
        return self.snapshot is not None

    def sort_key(self) -> tuple[Any, ...]:
        phase = 0 if self.snapshot is not None else 1
        rows = self.snapshot.rows if self.snapshot is not None else 0
        return (binlog_index(self.file), self.pos, phase, rows)

    def _fields_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "pos": self.pos, "gtid": self.gtid}
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot.to_json()
        return out

    @classmethod
    def _from_fields(cls, data: Mapping[str, Any]) -> MySQLPosition:
        snap = data.get("snapshot")
        return cls(str(data["file"]), int(data["pos"]), data.get("gtid"), SnapshotProgress.from_json(snap) if snap else None)

    def streaming(self) -> MySQLPosition:
        """The same coordinate with the snapshot finished."""
        return MySQLPosition(self.file, self.pos, self.gtid)

    def __str__(self) -> str:
        text = f"{self.file}:{self.pos}"
        if self.gtid:
            text += f" gtid={self.gtid}"
        if self.snapshot is not None:
            text += f" (snapshot: {len(self.snapshot.done)} tables done, {self.snapshot.rows} rows)"
        return text
