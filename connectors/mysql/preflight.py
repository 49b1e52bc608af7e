"""Checks run before reading: the binlog must be ROW, FULL images, FULL metadata, kept long enough."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PreflightProblem", "ServerInfo", "check_settings", "server_info"]


@dataclass(frozen=True)
class ServerInfo:
    version: str
    mariadb: bool
    variables: dict[str, str]


@dataclass(frozen=True)
class PreflightProblem:
    setting: str
    found: str
    wanted: str
    fix: str

    def __str__(self) -> str:
        return f"{self.setting} is {self.found!r}, needs {self.wanted}: {self.fix}"


_VARIABLES = (
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_expire_logs_seconds",
    "expire_logs_days",
    "gtid_mode",
    "server_id",
    "gtid_strict_mode",
    "binlog_row_value_options",
    "basedir",
    "aurora_version",
)

# Amazon RDS/Aurora keep binlogs by their own setting ('binlog retention hours', NULL: purged
# within minutes once no replica of their own needs them), not by binlog_expire_logs_seconds.
# server_info puts it among the variables under this name: the hours, "NULL", or "unreadable".
RDS_RETENTION = "rds:binlog retention hours"
_RDS_SET = "CALL mysql.rds_set_configuration('binlog retention hours', {hours});"


def server_info(conn: Any) -> ServerInfo:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        version = str(cur.fetchone()[0])
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ", ".join(["%s"] * len(_VARIABLES)) + ")", _VARIABLES)
        variables = {str(k).lower(): str(v) for k, v in cur.fetchall()}
        if is_rds(variables):
            variables[RDS_RETENTION] = _rds_retention_hours(cur)
    return ServerInfo(version, "mariadb" in version.lower(), variables)


def is_rds(variables: dict[str, str]) -> bool:
    """Amazon RDS or Aurora MySQL (their server binaries live under /rdsdbbin/; Aurora has aurora_version)."""
    return "/rdsdbbin/" in variables.get("basedir", "") or bool(variables.get("aurora_version"))


def _rds_retention_hours(cur: Any) -> str:
    from zetl_connectors.mysql.connection import pymysql

    try:
        cur.execute("SELECT value FROM mysql.rds_configuration WHERE name = %s", ("binlog retention hours",))
        row = cur.fetchone()
    except pymysql().err.MySQLError:
        return "unreadable"
    return "NULL" if row is None or row[0] is None else str(row[0])


def _fix(setting: str, value: str, mariadb: bool) -> str:
    section = "[mariadbd]" if mariadb else "[mysqld]"
    return (
        f"run SET GLOBAL {setting} = '{value}'; and add {setting}={value} under {section} in the server's"
        f" configuration file (RDS/Aurora: set {setting} = {value} in the DB parameter group)"
    )


def retention_seconds(info: ServerInfo) -> float:
    """How long the server keeps binlogs (0 = forever)."""
    seconds = float(info.variables.get("binlog_expire_logs_seconds") or 0)
    if seconds == 0:
        seconds = float(info.variables.get("expire_logs_days") or 0) * 86400
    return seconds


def check_settings(info: ServerInfo, min_retention: float) -> list[PreflightProblem]:
    """Every setting that stops change capture, each with the statement that fixes it."""
    v = info.variables
    problems: list[PreflightProblem] = []
    if v.get("log_bin", "OFF").upper() not in ("ON", "1"):
        section = "[mariadbd]" if info.mariadb else "[mysqld]"
        problems.append(
            PreflightProblem(
                "log_bin", v.get("log_bin", "OFF"), "ON",
                f"add log_bin=binlog under {section} in the server's configuration file and restart the server (RDS: enable automated backups)",
            )
        )
    for setting, wanted in (("binlog_format", "ROW"), ("binlog_row_image", "FULL"), ("binlog_row_metadata", "FULL")):
        found = v.get(setting)
        if found is None:
            if setting == "binlog_row_metadata":
                problems.append(PreflightProblem(setting, "missing", wanted, "upgrade to MySQL >= 8.0.14 or MariaDB >= 10.5, which record column names in the binlog"))
            continue
        if found.upper() != wanted:
            problems.append(PreflightProblem(setting, found, wanted, _fix(setting, wanted, info.mariadb)))
    if "PARTIAL_JSON" in v.get("binlog_row_value_options", "").upper():
        # partial JSON updates are logged as diffs that a full row image cannot be rebuilt from
        problems.append(
            PreflightProblem(
                "binlog_row_value_options", v["binlog_row_value_options"], "''",
                "run SET GLOBAL binlog_row_value_options = ''; and remove binlog_row_value_options from the server's"
                " configuration file (RDS/Aurora: clear it in the DB parameter group)",
            )
        )
    if RDS_RETENTION in v:
        problem = _rds_retention_problem(v[RDS_RETENTION], min_retention)
        if problem is not None:
            problems.append(problem)
        return problems
    retention = retention_seconds(info)
    if min_retention > 0 and 0 < retention < min_retention:
        seconds = int(min_retention)
        if info.mariadb and "binlog_expire_logs_seconds" not in v:
            days = max(1, -(-seconds // 86400))
            fix = _fix("expire_logs_days", str(days), True)
            setting = "expire_logs_days"
        else:
            fix = _fix("binlog_expire_logs_seconds", str(seconds), info.mariadb) + " (RDS: CALL mysql.rds_set_configuration('binlog retention hours', 24))"
            setting = "binlog_expire_logs_seconds"
        problems.append(PreflightProblem(setting, f"{int(retention)} s", f">= {seconds} s of binlog retention", fix))
    return problems


def _rds_retention_problem(found: str, min_retention: float) -> PreflightProblem | None:
    """RDS/Aurora: 'binlog retention hours' must cover ``min_retention`` (NULL keeps binlogs only
    minutes; the setting is read from mysql.rds_configuration)."""
    if min_retention <= 0:
        return None
    hours = max(1, -(-int(min_retention) // 3600))
    fix = f"run {_RDS_SET.format(hours=hours)} as the master user"
    wanted = f">= {hours} hours of binlog retention"
    if found == "unreadable":
        return PreflightProblem(
            "binlog retention hours", "not readable by this user", wanted,
            f"GRANT SELECT ON mysql.rds_configuration TO the source's user so that it can be checked, and {fix}"
            " (or set min_binlog_retention: 0 in the source section to skip this check)",
        )
    try:
        have = float(found)
    except ValueError:
        have = 0.0  # NULL: RDS purges binlogs as soon as its own replicas are done with them
    if have * 3600 >= min_retention:
        return None
    return PreflightProblem("binlog retention hours", found, wanted, fix)
