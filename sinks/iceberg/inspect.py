"""Reading Iceberg tables back with DuckDB, independently of pyiceberg (tests, demo, checks).

DuckDB's iceberg extension is loaded from the ``duckdb-extension-iceberg`` and
``duckdb-extension-avro`` wheels, so nothing is downloaded at run time (works offline).
"""

from __future__ import annotations

import glob
import os
from typing import Any

from zetl.plugin import require

__all__ = ["duckdb_connection", "read_rows", "metadata_location"]


def _extension_file(module_name: str, extension: str) -> str:
    module = require(module_name, extra="test", what=f"DuckDB {extension} extension")
    base = os.path.dirname(module.__file__ or "")
    found = sorted(glob.glob(os.path.join(base, "extensions", "*", f"{extension}.duckdb_extension")))
    if not found:
        raise FileNotFoundError(f"no {extension}.duckdb_extension file in {base}; reinstall {module_name.replace('_', '-')}")
    return found[-1]


def duckdb_connection() -> Any:
    """An in-memory DuckDB connection with the iceberg extension loaded from the local wheels."""
    duckdb = require("duckdb", extra="test", what="DuckDB")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true", "autoinstall_known_extensions": "false", "autoload_known_extensions": "false"})
    for module_name, extension in (("duckdb_extension_avro", "avro"), ("duckdb_extension_iceberg", "iceberg")):
        path = _extension_file(module_name, extension)
        con.execute(f"LOAD '{path}'")
    return con


def metadata_location(catalog: Any, identifier: tuple[str, ...]) -> str:
    """The current metadata file of an Iceberg table (what ``iceberg_scan`` reads)."""
    return str(catalog.load_table(identifier).metadata_location)


def read_rows(con: Any, metadata_file: str, order_by: str | None = None) -> list[dict[str, Any]]:
    """Every row of the table as dicts (DuckDB's Python values), optionally ordered."""
    path = metadata_file.replace("'", "''")
    sql = f"SELECT * FROM iceberg_scan('{path}')"
    if order_by:
        sql += f' ORDER BY "{order_by.replace(chr(34), chr(34) * 2)}"'
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
