"""Preflight of the MySQL source on Amazon RDS/Aurora (recorded server settings: no RDS server
runs in the tests): binlog retention is RDS's own 'binlog retention hours'."""

from __future__ import annotations

from zetl_connectors.mysql.preflight import (
    RDS_RETENTION,
    ServerInfo,
    check_settings,
    is_rds,
)

READY = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}
# RDS leaves binlog_expire_logs_seconds at MySQL's 30 days; it does not govern retention there
RDS = {**READY, "basedir": "/rdsdbbin/mysql-8.0.36.R2/", "binlog_expire_logs_seconds": "2592000"}


def _problems(variables: dict[str, str], min_retention: float = 86_400) -> list[str]:
    return [str(p) for p in check_settings(ServerInfo("8.0.36", False, variables), min_retention)]


def test_rds_and_aurora_are_recognised_and_others_are_not() -> None:
    assert is_rds(RDS)
    assert is_rds({**READY, "basedir": "/rdsdbbin/oscar-8.0.mysql_aurora.3.05.2/", "aurora_version": "3.05.2"})
    assert not is_rds({**READY, "basedir": "/usr/"})


def test_rds_retention_null_or_short_is_a_problem_with_the_call_that_fixes_it() -> None:
    assert _problems({**RDS, RDS_RETENTION: "NULL"}) == [
        (
            "binlog retention hours is 'NULL', needs >= 24 hours of binlog retention:"
            " run CALL mysql.rds_set_configuration('binlog retention hours', 24); as the master user"
        )
    ]
    assert _problems({**RDS, RDS_RETENTION: "12"}, 2 * 86_400) == [
        (
            "binlog retention hours is '12', needs >= 48 hours of binlog retention:"
            " run CALL mysql.rds_set_configuration('binlog retention hours', 48); as the master user"
        )
    ]
    assert _problems({**RDS, RDS_RETENTION: "24"}) == []
    assert _problems({**RDS, RDS_RETENTION: "NULL"}, 0) == []  # min_binlog_retention: 0 turns the check off


def test_rds_retention_the_user_cannot_read_says_what_to_grant() -> None:
    (problem,) = _problems({**RDS, RDS_RETENTION: "unreadable"})
    assert "GRANT SELECT ON mysql.rds_configuration" in problem
    assert "CALL mysql.rds_set_configuration('binlog retention hours', 24);" in problem
    assert "min_binlog_retention: 0" in problem


def test_rds_other_settings_are_still_checked() -> None:
    problems = _problems({**RDS, "binlog_row_metadata": "MINIMAL", RDS_RETENTION: "168"})
    assert len(problems) == 1 and problems[0].startswith("binlog_row_metadata is 'MINIMAL', needs FULL")
    assert "DB parameter group" in problems[0]
