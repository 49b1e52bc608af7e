"""GTID states: MySQL executed-GTID sets and MariaDB domain-server-seq lists."""

from __future__ import annotations

__all__ = ["MariaDBGtidState", "MySQLGtidSet"]


class MySQLGtidSet:
    """A MySQL GTID set (``uuid:1-5:7,uuid2:1-3``) that transactions are added to."""

    def __init__(self, text: str | None = None) -> None:
        self.intervals: dict[str, list[list[int]]] = {}
        for part in (text or "").replace("\n", "").split(","):
            part = part.strip()
            if not part:
                continue
            sid, *ranges = part.split(":")
            for r in ranges:
                lo, _, hi = r.partition("-")
                self._add_range(sid.lower(), int(lo), int(hi or lo))

    def _add_range(self, sid: str, lo: int, hi: int) -> None:
        ranges = self.intervals.setdefault(sid, [])
        ranges.append([lo, hi])
        ranges.sort()
        merged: list[list[int]] = []
        for r in ranges:
            if merged and r[0] <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], r[1])
            else:
                merged.append(r)
        self.intervals[sid] = merged

    def add(self, gtid: str) -> None:
        """Add one transaction, ``uuid:gno``."""
        sid, _, gno = gtid.rpartition(":")
        self._add_range(sid.lower(), int(gno), int(gno))

    def __contains__(self, gtid: str) -> bool:
        sid, _, gno = gtid.rpartition(":")
        n = int(gno)
        return any(lo <= n <= hi for lo, hi in self.intervals.get(sid.lower(), []))

    def __str__(self) -> str:
        return ",".join(
            sid + "".join(f":{lo}" if lo == hi else f":{lo}-{hi}" for lo, hi in ranges) for sid, ranges in sorted(self.intervals.items())
        )


class MariaDBGtidState:
    """The last GTID of every replication domain (``0-1-42,1-2-7``)."""

    def __init__(self, text: str | None = None) -> None:
        self.domains: dict[int, tuple[int, int]] = {}
        for part in (text or "").split(","):
            part = part.strip()
            if part:
                self.add(part)

    def add(self, gtid: str) -> None:
        """Record ``domain-server-seq`` as the last transaction of its domain."""
        domain, server, seq = (int(x) for x in gtid.split("-"))
        self.domains[domain] = (server, seq)

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.domains.items()))
