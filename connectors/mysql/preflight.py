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
)


def server_info(conn: Any) -> ServerInfo:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        version = str(cur.fetchone()[0])
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ", ".join(["%s"] * len(_VARIABLES)) + ")", _VARIABLES)
        variables = {str(k).lower(): str(v) for k, v in cur.fetchall()}
    return ServerInfo(version, "mariadb" in version.lower(), variables)


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
