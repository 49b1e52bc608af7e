"""Amazon Redshift sink (``type: redshift``).

Guarantees:
    * Each batch is applied in one transaction: rows are staged (multi-row INSERT, or S3 + COPY),
      deduplicated by primary key (last change wins), deleted with DELETE ... USING and upserted
      with MERGE; the integration's position is written to ``<schema>._zetl_checkpoints`` in the
      same transaction, so a batch is in Redshift exactly once, even across crashes.
    * Unchanged-TOAST markers keep the target's value; TRUNCATE empties the table with DELETE (a
      Redshift TRUNCATE would commit the transaction early).
    * json/list/struct land in SUPER columns, queryable by key.
    * Identifiers are always quoted, folded and shortened deterministically (see ``identifiers``).
    * Opened read only (``zetl drift``), the sink runs no DDL and writes nothing (``write`` and
      ``apply`` refuse); a missing schema or ``_zetl_*`` table means nothing is stored yet, so a
      user with only SELECT/USAGE can inspect.
    * Columns added to a target table by hand are reported by ``current_schema`` (nullable) and
      never written by zetl; only a schema change that drops them (policy ``evolve``) removes them.

The driver (redshift-connector) and boto3 are imported only when the sink opens.
"""

from .config import RedshiftConfig, S3StagingConfig, TableOptions
from .sink import RedshiftSink

__all__ = ["RedshiftConfig", "RedshiftSink", "S3StagingConfig", "TableOptions"]
