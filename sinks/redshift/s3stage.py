"""Staging a batch in S3 for COPY: gzipped JSON lines, a jsonpaths file and a manifest.

Layout under ``<prefix><integration>/<batch id>/``: ``part-00000.json.gz`` ... (one JSON object per
row, keys = staging column names), ``jsonpaths.json`` (maps keys to the COPY column list in order,
so nested values load into SUPER columns as documents) and ``manifest.json`` (lists exactly the
parts, all mandatory: COPY fails rather than load a partial batch). ``cleanup`` deletes them once
the batch is committed; leftovers of a crash are overwritten or ignored (batch ids are unique).
"""

from __future__ import annotations

import gzip
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from zetl.plugin import require

from .config import S3StagingConfig
from .errors import map_s3_error

__all__ = ["S3Stager", "StagedBatch"]

ROWS_PER_PART = 50_000


@dataclass
class StagedBatch:
    manifest_url: str
    jsonpaths_url: str
    keys: list[str] = field(default_factory=list)


class S3Stager:
    def __init__(self, config: S3StagingConfig, integration: str) -> None:
        boto3 = require("boto3", extra="redshift", what="Redshift sink S3 staging (boto3)")
        self.config = config
        self.bucket = config.bucket
        self.base = f"{config.prefix}{integration}/"
        self.client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key.get_secret_value() if config.secret_access_key else None,
        )

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _put(self, key: str, body: bytes, staged: StagedBatch) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except Exception as exc:
            raise map_s3_error(exc, action=f"uploading {self._url(key)}", bucket=self.bucket) from exc
        staged.keys.append(key)

    def stage(self, columns: list[str], rows: Iterable[list[Any]]) -> StagedBatch:
        """Upload ``rows`` (values in ``columns`` order, JSON-ready) and the files COPY needs."""
        base = f"{self.base}{uuid.uuid4().hex}/"
        staged = StagedBatch(self._url(base + "manifest.json"), self._url(base + "jsonpaths.json"))
        entries: list[dict[str, Any]] = []
        part: list[bytes] = []

        def flush_part() -> None:
            key = f"{base}part-{len(entries):05d}.json.gz"
            self._put(key, gzip.compress(b"".join(part), compresslevel=1), staged)
            entries.append({"url": self._url(key), "mandatory": True})
            part.clear()

        try:
            for row in rows:
                part.append(orjson.dumps(dict(zip(columns, row))) + b"\n")
                if len(part) >= ROWS_PER_PART:
                    flush_part()
            if part or not entries:
                flush_part()
            self._put(base + "jsonpaths.json", orjson.dumps({"jsonpaths": [f"$.{c}" for c in columns]}), staged)
            self._put(base + "manifest.json", orjson.dumps({"entries": entries}), staged)
        except Exception:
            self.cleanup(staged)
            raise
        return staged

    def cleanup(self, staged: StagedBatch) -> None:
        """Delete the staged objects; failures are left to the bucket's lifecycle rules (logged by the caller)."""
        if not staged.keys:
            return
        try:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in staged.keys], "Quiet": True})
        except Exception as exc:
            raise map_s3_error(exc, action="deleting staged files", bucket=self.bucket) from exc
        staged.keys.clear()
