"""Connections, preflight checks, table discovery, publication and slot management.

Every statement here passes values as parameters and identifiers through ``psycopg.sql``.
Driver errors are turned into zetl errors that say what is wrong and what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from zetl.errors import SourceConnectionError, SourceError
from zetl.events import TableId
from zetl.plugin import TableSelector, require
from zetl.schema.types import DataType, Field, Schema

from .config import PostgresConfig
from .decoding import SESSION_SETTINGS
from .position import parse_lsn
from .renames import CatalogColumn
from .typemap import ARRAY_ELEMENTS, BUILTIN_TYPES, PgType, canonical_type

if TYPE_CHECKING:
    import psycopg

__all__ = ["Catalog", "OnlyTables", "TableInfo", "connect", "driver_error", "quote_ident"]

log = logging.getLogger("zetl.postgres")


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (for the replication protocol, which has no parameters)."""
    return '"' + name.replace('"', '""') + '"'


def _psycopg() -> Any:
    return require("psycopg", extra="postgres", what="the Postgres source (psycopg 3)")


def driver_error(exc: BaseException, doing: str, config: PostgresConfig) -> SourceError:
    """Map a psycopg error to a zetl error: lost connections are retryable, the rest are not."""
    psycopg = _psycopg()
    where = f"Postgres {config.host}:{config.port}/{config.database}"
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        lowered = message.lower()
        if "authentication failed" in lowered or "no pg_hba.conf entry" in lowered or "does not exist" in lowered and "database" in lowered:
            return SourceError(f"{where}: cannot log in as {config.user!r} while {doing}: {message}. Check user, password and pg_hba.conf.", retryable=False)
        return SourceConnectionError(f"{where}: connection lost or refused while {doing}: {message}")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return SourceError(f"{where}: permission denied while {doing}: {message}", retryable=False)
    if isinstance(exc, (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected, psycopg.errors.ObjectInUse, psycopg.errors.AdminShutdown)):
        return SourceConnectionError(f"{where}: {message} while {doing}")
    return SourceError(f"{where}: error while {doing}: {message}", retryable=False)


def _options() -> str:
    # libpq "options": each -c value with its spaces escaped by a backslash
    return " ".join(f"-c {k}={v.replace(' ', chr(92) + ' ')}" for k, v in SESSION_SETTINGS.items() if k != "client_encoding")


def connect(config: PostgresConfig, *, replication: bool = False, application: str = "zetl") -> "psycopg.Connection[Any]":
    """Open an autocommit connection (a ``replication=database`` one when ``replication``).

    With ``iam_auth`` a fresh RDS token is generated for every connection.
    """
    psycopg = _psycopg()
    kwargs: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "dbname": config.database,
        "user": config.user,
        "sslmode": config.sslmode,
        "connect_timeout": max(1, int(config.connect_timeout)),
        "application_name": application,
        "options": _options(),
        "client_encoding": "UTF8",
        "autocommit": True,
    }
    for key in ("sslrootcert", "sslcert", "sslkey"):
        value = getattr(config, key)
        if value is not None:
            kwargs[key] = str(value)
    if config.iam_auth:
        kwargs["password"] = iam_token(config)
    elif config.password is not None:
        kwargs["password"] = config.password.get_secret_value()
    if replication:
        kwargs["replication"] = "database"
    try:
        return psycopg.connect(**kwargs)
    except psycopg.Error as exc:
        raise driver_error(exc, "connecting" + (" for replication" if replication else ""), config) from None


def iam_token(config: PostgresConfig) -> str:
    """A short-lived RDS IAM authentication token for ``config.user``."""
    boto3 = require("boto3", extra="postgres-iam", what="RDS IAM authentication (boto3)")
    try:
        client = boto3.client("rds", region_name=config.region)
        return str(client.generate_db_auth_token(DBHostname=config.host, Port=config.port, DBUsername=config.user, Region=config.region))
    except Exception as exc:  # botocore raises many unrelated classes; all mean "no token"
        raise SourceError(f"cannot create an RDS IAM token for {config.user}@{config.host} in {config.region}: {exc}. Check the AWS credentials.", retryable=True) from None


@dataclass
class TableInfo:
    """A selected table as the catalog describes it."""

    table: TableId
    oid: int
    schema: Schema
    replica_identity: str  # d default, f full, i index, n nothing
    estimated_rows: int
    pg_types: dict[str, str]  # column -> format_type text
    attnums: dict[str, int] = field(default_factory=dict)  # column -> pg_attribute.attnum (kept across renames)


class OnlyTables:
    """A table selector accepting exactly the given tables (to describe a few known ones)."""

    def __init__(self, tables: Iterable[TableId]) -> None:
        self.tables = frozenset(tables)

    def matches(self, table: TableId) -> bool:
        return table in self.tables


class Catalog:
    """Queries on a regular (non-replication) connection."""

    def __init__(self, conn: "psycopg.Connection[Any]", config: PostgresConfig) -> None:
        self.conn = conn
        self.config = config
        self._types: dict[int, PgType] = dict(BUILTIN_TYPES)
        for array_oid, element in ARRAY_ELEMENTS.items():
            self._types[array_oid] = PgType(array_oid, BUILTIN_TYPES[element].name + "[]", "array", element)

    def _query(self, sql: Any, params: Iterable[Any] | None = None, doing: str = "reading the catalog") -> list[tuple[Any, ...]]:
        psycopg = _psycopg()
        try:
            return self.conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise driver_error(exc, doing, self.config) from None

    # -- preflight -------------------------------------------------------------------------
    def check_server(self, *, need_replication: bool) -> None:
        """Raise a clear SourceError when wal_level or the role's privileges do not allow replication."""
        (wal_level,) = self._query("SHOW wal_level")[0]
        if need_replication and wal_level != "logical":
            raise SourceError(
                f"Postgres {self.config.host}:{self.config.port}: wal_level is {wal_level!r}, logical replication needs 'logical'. "
                "Set wal_level = logical in postgresql.conf (on RDS: rds.logical_replication = 1 in the parameter group) and restart the server.",
                retryable=False,
            )
        if not need_replication:
            return
        rows = self._query(
            "SELECT r.rolsuper, r.rolreplication, EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' AND pg_has_role(r.oid, g.oid, 'member')) "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
        superuser, replication, rds = rows[0]
        if not (superuser or replication or rds):
            raise SourceError(
                f"Postgres role {self.config.user!r} lacks the REPLICATION privilege needed for a logical slot. "
                f"Run: ALTER ROLE {quote_ident(self.config.user)} WITH REPLICATION;  (on RDS: GRANT rds_replication TO {quote_ident(self.config.user)};)",
                retryable=False,
            )

    # -- types -----------------------------------------------------------------------------
    def pg_type(self, oid: int) -> PgType:
        """The type with this OID, read from ``pg_type`` once and cached."""
        known = self._types.get(oid)
        if known is not None:
            return known
        rows = self._query("SELECT typname, typtype, typelem, typbasetype, typcategory FROM pg_type WHERE oid = %s", (oid,), "reading pg_type")
        if not rows:
            resolved = PgType(oid, f"oid {oid}", "other")
        else:
            name, typtype, elem, base, category = rows[0]
            if typtype == "e":
                resolved = PgType(oid, name, "enum")
            elif typtype == "d":
                resolved = PgType(oid, name, "domain", int(base))
            elif category == "A" and elem:
                resolved = PgType(oid, name, "array", int(elem))
            else:
                resolved = PgType(oid, name, "other")
        self._types[oid] = resolved
        return resolved

    def data_type(self, oid: int, typmod: int) -> DataType:
        """Canonical type of a column of type ``oid`` with modifier ``typmod``."""
        pg = self.pg_type(oid)
        element = None
        if pg.kind == "array" and pg.element is not None:
            element = self.data_type(pg.element, typmod)
        elif pg.kind == "domain" and pg.element is not None:
            element = self.data_type(pg.element, typmod)
        return canonical_type(pg, typmod, element)

    # -- tables ----------------------------------------------------------------------------
    def tables(self, selector: TableSelector) -> list[TableInfo]:
        """Ordinary and partitioned tables (not partitions) the selector accepts, sorted by name."""
        rows = self._query(
            "SELECT c.oid, n.nspname, c.relname, c.relreplident, GREATEST(c.reltuples, 0)::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' "
            "ORDER BY n.nspname, c.relname"
        )
        selected = [(oid, TableId(ns, name), ident, est) for oid, ns, name, ident, est in rows if selector.matches(TableId(ns, name))]
        if not selected:
            return []
        oids = [oid for oid, *_ in selected]
        columns: dict[int, list[tuple[Any, ...]]] = {}
        attnums: dict[int, dict[str, int]] = {}
        for relid, name, typid, typmod, notnull, fmt, attnum in self._query(
            "SELECT attrelid, attname, atttypid, atttypmod, attnotnull, format_type(atttypid, atttypmod), attnum FROM pg_attribute "
            "WHERE attrelid = ANY(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attrelid, attnum",
            (oids,),
        ):
            columns.setdefault(relid, []).append((name, typid, typmod, notnull, fmt))
            attnums.setdefault(relid, {})[name] = attnum
        keys: dict[int, list[str]] = {}
        for relid, name in self._query(
            "SELECT i.indrelid, a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indisprimary AND i.indrelid = ANY(%s) ORDER BY i.indrelid, k.ord",
            (oids,),
        ):
            keys.setdefault(relid, []).append(name)
        result = []
        for oid, table, ident, est in selected:
            fields = [
                Field(name, self.data_type(typid, typmod), nullable=not notnull, source_type=fmt)
                for name, typid, typmod, notnull, fmt in columns.get(oid, [])
            ]
            schema = Schema.of(table, fields, keys.get(oid, ()))
            pg_types = {name: fmt for name, _t, _m, _n, fmt in columns.get(oid, [])}
            result.append(TableInfo(table, oid, schema, ident, int(est), pg_types, attnums.get(oid, {})))
        return result

    def columns_now(self, oid: int) -> dict[int, CatalogColumn] | None:
        """The ``pg_attribute`` rows of relation ``oid`` as they are now, dropped columns
        included, by ``attnum`` (None: no such relation)."""
        rows = self._query(
            "SELECT a.attnum, a.attname, a.atttypid, a.attisdropped, a.attgenerated <> '' FROM pg_class c "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 WHERE c.oid = %s ORDER BY a.attnum",
            (oid,),
        )
        if not rows:
            return None
        return {int(n): CatalogColumn(int(n), name, int(typid), bool(dropped), bool(generated)) for n, name, typid, dropped, generated in rows if n is not None}

    @staticmethod
    def lacks_identity(table: TableInfo) -> bool:
        """Whether Postgres would reject UPDATE/DELETE on the table once published: no primary
        key under REPLICA IDENTITY DEFAULT, or REPLICA IDENTITY NOTHING."""
        return table.replica_identity == "n" or (not table.schema.primary_key and table.replica_identity == "d")

    @staticmethod
    def check_identities(tables: list[TableInfo]) -> None:
        """UPDATE/DELETE fail in Postgres on a published table without a replica identity: no
        primary key under REPLICA IDENTITY DEFAULT, or REPLICA IDENTITY NOTHING."""
        bad = [t for t in tables if Catalog.lacks_identity(t)]
        if bad:
            names = ", ".join(str(t.table) for t in bad)
            fixes = "; ".join(f"ALTER TABLE {quote_ident(t.table.namespace)}.{quote_ident(t.table.name)} REPLICA IDENTITY FULL" for t in bad)
            raise SourceError(
                f"table(s) without a primary key and without REPLICA IDENTITY FULL (or with REPLICA IDENTITY NOTHING): {names}. "
                f"Under a publication Postgres rejects their UPDATEs and DELETEs. Add a primary key, or run: {fixes}, "
                "or exclude them in `tables:`.",
                retryable=False,
            )

    # -- publication -----------------------------------------------------------------------
    def publication(self, name: str) -> tuple[bool, str, bool] | None:
        """``(for all tables, owner, current user may change it)`` of publication ``name``, or None."""
        rows = self._query(
            "SELECT p.puballtables, pg_get_userbyid(p.pubowner), pg_has_role(p.pubowner, 'USAGE') FROM pg_publication p WHERE p.pubname = %s", (name,)
        )
        if not rows:
            return None
        all_tables, owner, may_change = rows[0]
        return bool(all_tables), str(owner), bool(may_change)

    def published_tables(self, name: str) -> set[TableId]:
        """Tables the publication covers (explicitly, through a schema, or as ``FOR ALL TABLES``)."""
        return {TableId(ns, rel) for ns, rel in self._query("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,))}

    def ensure_publication(self, name: str, tables: list[TableInfo], *, add_missing: bool = True) -> None:
        """Create the publication for exactly ``tables``, or bring an existing one in line.

        ``add_missing=False`` (resuming a stream): tables missing from the publication are left
        out, because adding one must go with a copy of its rows (``add_table``); a missing
        publication is created empty for the same reason. Tables no longer selected are removed
        either way (their changes would be filtered out anyway).
        """
        psycopg = _psycopg()
        from psycopg import sql

        if not tables:
            raise SourceError("no table is selected for replication: check the integration's `tables:` include/exclude patterns", retryable=False)
        table_list = sql.SQL(", ").join(sql.Identifier(t.table.namespace, t.table.name) for t in tables)
        existing = self.publication(name)
        try:
            if existing is None:
                if add_missing:
                    self.conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)").format(sql.Identifier(name), table_list))
                    log.info("created publication %s for %d table(s)", name, len(tables))
                else:
                    self.conn.execute(sql.SQL("CREATE PUBLICATION {} WITH (publish_via_partition_root = true)").format(sql.Identifier(name)))
                    log.warning("publication %s was missing: created it empty; the selected tables join it with a copy of their rows", name)
                return
            all_tables, owner, is_owner = existing
            if all_tables:
                return
            published = self.published_tables(name)
            wanted = {t.table for t in tables}
            extra = published - wanted
            missing = wanted - published if add_missing else set()
            if not extra and not missing:
                return
            if not is_owner:
                if not missing:
                    log.warning("publication %s also lists %s, which the selection excludes; their changes are ignored", name, ", ".join(sorted(map(str, extra))))
                    return
                raise SourceError(
                    f"publication {name!r} is owned by {owner!r} and lists other tables than the selected ones; {self.config.user!r} cannot change it. "
                    f"Run as {owner!r}: ALTER PUBLICATION {quote_ident(name)} SET TABLE {', '.join(sorted(str(t) for t in wanted))}; "
                    "or set `publication_name` to a publication this user may create.",
                    retryable=False,
                )
            if add_missing:
                self.conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), table_list))
                log.info("publication %s now lists %d table(s)", name, len(tables))
            else:
                dropped = sql.SQL(", ").join(sql.Identifier(t.namespace, t.name) for t in sorted(extra))
                self.conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(name), dropped))
                log.info("removed %s from publication %s: the selection no longer includes them", ", ".join(sorted(map(str, extra))), name)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SourceError(
                f"cannot create or change publication {name!r}: {str(exc).strip()}. The user must own the tables (or be superuser); "
                "alternatively create the publication as an owner and set `publication_name`.",
                retryable=False,
            ) from None
        except psycopg.Error as exc:
            raise driver_error(exc, f"creating publication {name!r}", self.config) from None

    def unpublished_tables(self, name: str, selector: TableSelector) -> list[TableId]:
        """Selected ordinary and partitioned tables (not partitions) the publication does not cover, sorted.

        The selector (include and exclude patterns) is applied here, so an excluded table is never
        reported.
        """
        rows = self._query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' "
            "ORDER BY n.nspname, c.relname",
            None,
            "looking for new tables",
        )
        published = self.published_tables(name)
        return [t for t in (TableId(ns, rel) for ns, rel in rows) if t not in published and selector.matches(t)]

    def selected_oids(self, selector: TableSelector) -> dict[TableId, int]:
        """Name -> OID of the ordinary and partitioned tables (not partitions) the selector accepts now."""
        rows = self._query(
            "SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
            None,
            "looking for dropped tables",
        )
        return {t: int(oid) for oid, ns, rel in rows if selector.matches(t := TableId(ns, rel))}

    def wal_insert_lsn(self) -> int:
        """The WAL insert position now: past the commit record of every transaction visible to a
        statement that ran before this one (a commit is inserted before it becomes visible, even
        with ``synchronous_commit = off``, which ``pg_current_wal_lsn`` would not cover)."""
        (lsn,) = self._query("SELECT pg_current_wal_insert_lsn()::text", None, "reading the WAL position")[0]
        return parse_lsn(str(lsn))

    def remove_relation(self, publication: str, oid: int) -> TableId | None:
        """Take relation ``oid`` out of ``publication`` if the publication lists it by name (a table
        renamed out of the selection); returns its current name, None when it is not listed (a
        dropped table has left every publication by itself). A publication this user may not
        change is left as is, with a warning: the source ignores the table's changes anyway."""
        psycopg = _psycopg()
        from psycopg import sql

        rows = self._query(
            "SELECT n.nspname, c.relname FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
            "JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s AND r.prrelid = %s",
            (publication, oid),
            f"reading publication {publication!r}",
        )
        if not rows:
            return None
        table = TableId(str(rows[0][0]), str(rows[0][1]))
        try:
            self.conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(sql.Identifier(publication), sql.Identifier(table.namespace, table.name)))
        except psycopg.errors.InsufficientPrivilege as exc:
            log.warning("cannot remove %s from publication %s (%s); its changes are ignored", table, publication, str(exc).strip())
            return None
        except psycopg.Error as exc:
            raise driver_error(exc, f"removing {table} from publication {publication!r}", self.config) from None
        return table

    def add_table(self, publication: str, table: TableId, *, lock_timeout: float) -> bool:
        """Add ``table`` to ``publication`` so that no change of it can be missed; False when the
        table could not be locked within ``lock_timeout`` seconds (try again later).

        Guarantee: every change of ``table`` is either committed when this returns (so a
        transaction snapshot taken afterwards sees it) or published. The table is held in SHARE
        mode while the publication changes: that waits for the transactions writing to it to end
        and lets no new write in until the change commits (a few milliseconds), so no transaction
        can have written the table before the change and commit after it, which is the one case
        in which the server would neither publish a change nor show it to a later snapshot.
        Idempotent: a table already in the publication is left as is.
        """
        psycopg = _psycopg()
        from psycopg import sql

        ident = sql.Identifier(table.namespace, table.name)
        conn = self.conn
        try:
            with conn.transaction():
                # SET LOCAL takes no bind parameter; the value is a number written by us
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{max(1, int(lock_timeout * 1000))}ms")))
                conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(ident))
                member = conn.execute(
                    "SELECT 1 FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s AND tablename = %s", (publication, table.namespace, table.name)
                ).fetchall()
                if not member:
                    conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(publication), ident))
        except psycopg.errors.LockNotAvailable:
            log.warning("table %s is busy (a transaction writing it did not end within %.0f s); it joins publication %s at the next attempt", table, lock_timeout, publication)
            return False
        except psycopg.errors.InsufficientPrivilege as exc:
            owner = self._owner(table)
            raise SourceError(
                f"cannot add table {table} to publication {publication!r}: {str(exc).strip()}. Adding a table to a publication takes ownership "
                f"of both the table (owned by {owner!r}) and the publication. Let {self.config.user!r} act as the owner "
                f"(GRANT {quote_ident(owner)} TO {quote_ident(self.config.user)};) or exclude the table in `tables:`. "
                "Adding the table to the publication by hand would skip the copy of its existing rows.",
                retryable=False,
            ) from None
        except psycopg.Error as exc:
            raise driver_error(exc, f"adding table {table} to publication {publication!r}", self.config) from None
        log.info("table %s joined publication %s", table, publication)
        return True

    def _owner(self, table: TableId) -> str:
        rows = self._query(
            "SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (table.namespace, table.name),
            f"reading the owner of {table}",
        )
        return str(rows[0][0]) if rows else "?"

    # -- slot ------------------------------------------------------------------------------
    def slot(self, name: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT plugin, database, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s",
            (name,),
        )
        if not rows:
            return None
        plugin, database, active, pid, confirmed, restart, wal_status = rows[0]
        return {"plugin": plugin, "database": database, "active": active, "active_pid": pid, "confirmed_flush_lsn": confirmed, "restart_lsn": restart, "wal_status": wal_status}

    def drop_slot(self, name: str) -> bool:
        """Drop slot ``name`` unless a connection is using it; True when it was dropped."""
        rows = self._query(
            "SELECT pg_drop_replication_slot(slot_name)::text FROM pg_replication_slots WHERE slot_name = %s AND NOT active", (name,), f"dropping slot {name!r}"
        )
        return bool(rows)

    def slot_holder(self, pid: int | None) -> tuple[str | None, str]:
        """Who holds a slot in use: the application name of server process ``pid`` (zetl
        connects as ``zetl:<integration>``; None when unknown) and a description for messages."""
        if pid is None:
            return None, "an unknown server process"
        rows = self._query(
            "SELECT application_name, client_addr::text, backend_start::text FROM pg_stat_activity WHERE pid = %s", (pid,), "reading who uses a slot"
        )
        if not rows:
            return None, f"server process {pid}"
        application, address, since = rows[0]
        where = f" from {address}" if address else ""
        when = f" since {since}" if since else ""
        return (application or None), f"server process {pid} (application {application or 'unnamed'!r}{where}{when})"

    def system_identifier(self) -> str | None:
        """The cluster's system identifier (``pg_control_system()``); None when this role may
        not call it (then ``IDENTIFY_SYSTEM`` on a replication connection tells)."""
        psycopg = _psycopg()
        try:
            rows = self.conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchall()
        except psycopg.errors.InsufficientPrivilege:
            return None
        except psycopg.Error as exc:
            raise driver_error(exc, "reading the server's system identifier", self.config) from None
        return str(rows[0][0])

    def drop_publication(self, name: str) -> bool:
        """Drop publication ``name``; False when it did not exist."""
        from psycopg import sql

        if self.publication(name) is None:
            return False
        try:
            self.conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
        except _psycopg().Error as exc:
            raise driver_error(exc, f"dropping publication {name!r}", self.config) from None
        return True

    def slot_lag_bytes(self, name: str) -> int | None:
        rows = self._query(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = %s", (name,), "reading slot lag"
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def emit_heartbeat(self) -> None:
        """Write a non-transactional logical message: WAL moves, so the slot can advance on an idle database."""
        self._query("SELECT pg_logical_emit_message(false, 'zetl', 'heartbeat')::text", None, "writing a heartbeat")
