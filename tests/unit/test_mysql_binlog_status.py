"""The binlog coordinate of the MySQL snapshot on servers the tests cannot start (MySQL 8.4 has no
SHOW MASTER STATUS any more): answers recorded from those servers."""

from __future__ import annotations

from typing import Any, Self

import pymysql
import pytest
from zetl_connectors.mysql.snapshot import current_position

from zetl.errors import SourceError

GTID_SET = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-77,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"


class RecordedCursor:
    """Answers statements from a recording; a statement mapped to an exception raises it."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.executed: list[str] = []
        self.row: Any = None

    def execute(self, sql: str, params: Any = None) -> None:
        self.executed.append(sql)
        answer = self.answers[sql]
        if isinstance(answer, BaseException):
            raise answer
        self.row = answer

    def fetchone(self) -> Any:
        return self.row

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class RecordedConnection:
    def __init__(self, cursor: RecordedCursor) -> None:
        self._cursor = cursor

    def cursor(self) -> RecordedCursor:
        return self._cursor


def test_mysql_84_coordinate_comes_from_show_binary_log_status() -> None:
    syntax = pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax; ... near 'MASTER STATUS'")
    cur = RecordedCursor({"SHOW MASTER STATUS": syntax, "SHOW BINARY LOG STATUS": ("binlog.000042", 1234, "", "", GTID_SET)})
    position = current_position(RecordedConnection(cur), mariadb=False)
    assert cur.executed == ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"]
    assert (position.file, position.pos) == ("binlog.000042", 1234)
    assert position.gtid == GTID_SET.replace("\n", "")


def test_other_errors_and_a_binlog_that_is_off_are_not_hidden() -> None:
    denied = pymysql.err.OperationalError(1227, "Access denied; you need (at least one of) the REPLICATION CLIENT privilege(s)")
    with pytest.raises(pymysql.err.OperationalError):
        current_position(RecordedConnection(RecordedCursor({"SHOW MASTER STATUS": denied})), mariadb=False)
    with pytest.raises(SourceError, match="the binlog is off"):
        current_position(RecordedConnection(RecordedCursor({"SHOW MASTER STATUS": None})), mariadb=False)
