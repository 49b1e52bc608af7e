"""Statement rewriting that makes Redshift SQL run on Postgres 15 with the shim installed.

What changes (everything else reaches Postgres untouched):

* ``CREATE TABLE`` / ``ALTER TABLE``: the physical-design clauses Postgres does not have
  (``DISTSTYLE``, ``DISTKEY``, ``[COMPOUND|INTERLEAVED] SORTKEY``, ``ENCODE``, ``BACKUP``) are
  removed; they are checked by golden SQL tests instead.
* ``VARBYTE`` / ``VARBYTE(n)`` become ``BYTEA`` (Postgres domains cannot take a length).
* ``SET enable_case_sensitive_identifier ...`` sets a custom setting of the same name under
  ``zetl_shim.`` (Postgres is case sensitive for quoted identifiers anyway).
* ``COPY table (columns) FROM 's3://...' ... FORMAT AS JSON 's3://jsonpaths' MANIFEST``: the
  manifest, the JSON-lines files (optionally GZIP) and the jsonpaths file are read from S3 and the
  statement becomes one ``INSERT ... SELECT ... FROM jsonb_populate_recordset(...)`` carrying the
  rows, so the load happens in the client's transaction like a real COPY. Only what Redshift
  would load is loaded: a missing manifest entry marked ``mandatory`` fails the statement.
"""

from __future__ import annotations

import gzip
import json
import re
import secrets
from typing import Any, Callable

from .sqltokens import Token, significant, tokenize, unquote_identifier, unquote_string

__all__ = ["CopyError", "rewrite"]

S3Reader = Callable[[str, str], bytes]
"""(bucket, key) -> object bytes."""


class CopyError(Exception):
    """A COPY that Redshift would reject (missing object, bad manifest, unsupported option)."""


_TABLE_ATTRIBUTES = {"DISTSTYLE", "DISTKEY", "SORTKEY", "ENCODE", "BACKUP", "COMPOUND", "INTERLEAVED"}


def _strip_table_attributes(tokens: list[Token]) -> list[Token]:
    out: list[Token] = []
    i = 0
    n = len(tokens)

    def skip_space(j: int) -> int:
        while j < n and tokens[j].kind in ("space", "comment"):
            j += 1
        return j

    while i < n:
        tok = tokens[i]
        word = tok.upper if tok.kind == "word" else ""
        if word in ("COMPOUND", "INTERLEAVED"):
            j = skip_space(i + 1)
            if j < n and tokens[j].upper == "SORTKEY":
                i = j
                continue
        if word in ("DISTSTYLE", "ENCODE", "BACKUP"):
            j = skip_space(i + 1)
            i = j + 1  # the keyword and its single-word argument
            continue
        if word in ("DISTKEY", "SORTKEY"):
            j = skip_space(i + 1)
            if j < n and tokens[j].text == "(":
                depth = 0
                while j < n:
                    if tokens[j].text == "(":
                        depth += 1
                    elif tokens[j].text == ")":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                i = j + 1
            elif j < n and tokens[j].upper == "AUTO":
                i = j + 1
            else:
                i += 1  # column-level DISTKEY / SORTKEY
            continue
        out.append(tok)
        i += 1
    return out


def _varbyte_to_bytea(tokens: list[Token]) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind == "word" and tok.upper == "VARBYTE":
            out.append(Token("word", "BYTEA"))
            sig = [j for j in range(i + 1, min(i + 8, len(tokens))) if tokens[j].kind not in ("space", "comment")]
            if len(sig) >= 3 and tokens[sig[0]].text == "(" and tokens[sig[1]].kind == "number" and tokens[sig[2]].text == ")":
                i = sig[2] + 1
                continue
            i += 1
            continue
        out.append(tok)
        i += 1
    return out


def _dollar_quote(text: str) -> str:
    while True:
        tag = f"$zetl{secrets.token_hex(6)}$"
        if tag not in text:
            return f"{tag}{text}{tag}"


_S3_URL = re.compile(r"^s3://([^/]+)/(.*)$")
_JSONPATH = re.compile(r"^\$(?:\.([A-Za-z_][A-Za-z0-9_]*)|\['([^']*)'\])$")


def _split_s3(url: str) -> tuple[str, str]:
    m = _S3_URL.match(url)
    if not m:
        raise CopyError(f"not an s3:// URL: {url!r}")
    return m.group(1), m.group(2)


def _copy_to_insert(tokens: list[Token], read_s3: S3Reader | None) -> str:
    sig = significant(tokens)
    words = [tokens[i] for i in sig]
    # COPY <table...> ( cols ) FROM 'url' options...
    try:
        open_paren = next(k for k, t in enumerate(words) if t.text == "(")
        close_paren = next(k for k, t in enumerate(words) if t.text == ")" and k > open_paren)
    except StopIteration:
        raise CopyError("COPY needs an explicit column list") from None
    table_sql = "".join(tokens[i].text for i in range(sig[1], sig[open_paren])).strip()
    columns_sql = [t.text for t in words[open_paren + 1 : close_paren] if t.text != ","]
    rest = words[close_paren + 1 :]
    if not rest or rest[0].upper != "FROM" or len(rest) < 2 or rest[1].kind != "string":
        raise CopyError("COPY ... FROM 's3://...' expected")
    data_url = unquote_string(rest[1].text)
    options = rest[2:]
    jsonpaths_url: str | None = None
    manifest = False
    compressed = False
    k = 0
    while k < len(options):
        word = options[k].upper
        if word == "FORMAT":
            k += 1
            if k < len(options) and options[k].upper == "AS":
                k += 1
        if k < len(options) and options[k].upper == "JSON":
            if k + 1 < len(options) and options[k + 1].kind == "string":
                jsonpaths_url = unquote_string(options[k + 1].text)
                k += 1
        elif word == "MANIFEST":
            manifest = True
        elif word == "GZIP":
            compressed = True
        k += 1
    if read_s3 is None:
        raise CopyError("COPY FROM S3 is not available: the test proxy has no S3 endpoint")
    if jsonpaths_url is None or jsonpaths_url.lower() in ("auto", "auto ignorecase"):
        raise CopyError("the test proxy emulates COPY ... FORMAT AS JSON 's3://.../jsonpaths' only")
    try:
        paths = json.loads(read_s3(*_split_s3(jsonpaths_url)))["jsonpaths"]
    except Exception as exc:  # noqa: BLE001 - every failure becomes the statement's error
        raise CopyError(f"cannot read jsonpaths file {jsonpaths_url}: {exc}") from exc
    if len(paths) != len(columns_sql):
        raise CopyError(f"jsonpaths file has {len(paths)} paths but the column list has {len(columns_sql)} columns")
    keys: list[str] = []
    for p in paths:
        m = _JSONPATH.match(p)
        if not m:
            raise CopyError(f"unsupported jsonpath {p!r}")
        keys.append(m.group(1) if m.group(1) is not None else m.group(2))
    if manifest:
        try:
            entries = json.loads(read_s3(*_split_s3(data_url)))["entries"]
        except Exception as exc:  # noqa: BLE001
            raise CopyError(f"cannot read manifest {data_url}: {exc}") from exc
    else:
        entries = [{"url": data_url, "mandatory": True}]
    column_names = [unquote_identifier(c) for c in columns_sql]
    rows: list[dict[str, Any]] = []
    for entry in entries:
        try:
            body = read_s3(*_split_s3(entry["url"]))
        except Exception as exc:  # noqa: BLE001
            if entry.get("mandatory", False):
                raise CopyError(f"mandatory manifest entry {entry['url']} cannot be read: {exc}") from exc
            continue
        if compressed:
            body = gzip.decompress(body)
        for line_no, line in enumerate(body.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as exc:
                raise CopyError(f"{entry['url']} line {line_no}: invalid JSON: {exc}") from exc
            rows.append({name: doc.get(key) for name, key in zip(column_names, keys)})
    cols = ", ".join(columns_sql)
    data = _dollar_quote(json.dumps(rows))
    return f"INSERT INTO {table_sql} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table_sql}, {data}::jsonb)"


def rewrite(sql: str, read_s3: S3Reader | None = None) -> str:
    """The Postgres form of one Redshift statement (see the module docstring)."""
    tokens = tokenize(sql)
    sig = significant(tokens)
    if not sig:
        return sql
    first = tokens[sig[0]].upper
    if first == "COPY" and any(t.kind == "string" and t.text.startswith("'s3://") for t in tokens):
        try:
            return _copy_to_insert(tokens, read_s3)
        except CopyError as exc:
            return f"SELECT zetl_shim.fail({_dollar_quote('COPY failed: ' + str(exc))})"
    if first == "SET" and len(sig) > 1 and tokens[sig[1]].upper == "ENABLE_CASE_SENSITIVE_IDENTIFIER":
        tokens[sig[1]] = Token("word", "zetl_shim.enable_case_sensitive_identifier")
        return "".join(t.text for t in tokens)
    if first in ("CREATE", "ALTER"):
        if any(t.kind == "word" and t.upper in _TABLE_ATTRIBUTES for t in tokens):
            tokens = _strip_table_attributes(tokens)
    if any(t.kind == "word" and t.upper == "VARBYTE" for t in tokens):
        tokens = _varbyte_to_bytea(tokens)
    return "".join(t.text for t in tokens)
