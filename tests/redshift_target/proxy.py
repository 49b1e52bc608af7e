"""An asyncio wire-protocol proxy that lets ``redshift-connector`` talk to a private Postgres 15.

Why it is needed: the driver sends startup parameters Postgres rejects (``client_protocol_version``,
``driver_version``, ...), insists on TLS unless declined, and parses the server version as a
Redshift one. The proxy, per client connection:

* declines TLS (answers ``N`` to SSLRequest), so the driver must run with ``ssl=False``; or,
  given a server ``tls`` context, accepts it (the driver then needs the certificate's CA, e.g.
  through ``SSL_CERT_FILE``, and ``sslmode: verify-ca``);
* forwards only standard startup parameters (user, database, application_name, options,
  client_encoding, DateStyle, TimeZone);
* reports ``server_version`` ``8.0.2`` in ParameterStatus, as Redshift does;
* rewrites each statement (simple ``Q`` and extended ``P`` messages) with ``rewrite.rewrite``:
  Redshift-only clauses are stripped and ``COPY FROM 's3://...'`` is emulated from S3.

Everything else (authentication, results, errors, transactions) is passed through unchanged, so
errors come from the real Postgres server. The proxy runs its event loop in a daemon thread and is
stopped by ``stop()``; it listens on a free loopback port.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import threading
from typing import Callable

from .rewrite import rewrite

__all__ = ["RedshiftProxy"]

log = logging.getLogger("tests.redshift_target.proxy")

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3 = 196608
FORWARDED_PARAMETERS = {"user", "database", "application_name", "options", "client_encoding", "DateStyle", "TimeZone"}
REDSHIFT_VERSION = b"8.0.2"


def _parse_startup(body: bytes) -> dict[bytes, bytes]:
    parts = body.split(b"\x00")
    params: dict[bytes, bytes] = {}
    for k in range(0, len(parts) - 1, 2):
        if not parts[k]:
            break
        params[parts[k]] = parts[k + 1]
    return params


def _build_startup(params: dict[bytes, bytes]) -> bytes:
    body = struct.pack("!i", PROTOCOL_3) + b"".join(k + b"\x00" + v + b"\x00" for k, v in params.items()) + b"\x00"
    return struct.pack("!i", len(body) + 4) + body


class RedshiftProxy:
    """Listens on ``127.0.0.1:port`` and forwards to Postgres at ``upstream_host:upstream_port``.

    Args:
        read_s3: ``(bucket, key) -> bytes`` used to emulate ``COPY FROM 's3://...'`` (None: COPY
            from S3 fails with a clear error).
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, read_s3: Callable[[str, str], bytes] | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.read_s3 = read_s3
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = 0
        self.statements: list[str] = []
        """Every statement the clients sent, before rewriting (tests inspect it)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> RedshiftProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="redshift-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> RedshiftProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one client -----------------------------------------------------------------------
    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_w: asyncio.StreamWriter | None = None
        try:
            while True:
                length = struct.unpack("!i", await client_r.readexactly(4))[0]
                body = await client_r.readexactly(length - 4)
                code = struct.unpack("!i", body[:4])[0]
                if code == SSL_REQUEST and self.tls is not None:
                    client_w.write(b"S")
                    await client_w.drain()
                    await client_w.start_tls(self.tls)
                    continue
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    client_w.write(b"N")
                    await client_w.drain()
                    continue
                break
            server_r, server_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            if code == CANCEL_REQUEST:
                server_w.write(struct.pack("!i", length) + body)
                await server_w.drain()
                return
            params = {k: v for k, v in _parse_startup(body[4:]).items() if k.decode() in FORWARDED_PARAMETERS}
            server_w.write(_build_startup(params))
            await server_w.drain()
            upstream = asyncio.ensure_future(self._server_to_client(server_r, client_w))
            downstream = asyncio.ensure_future(self._client_to_server(client_r, server_w))
            done, pending = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (client_w, server_w):
                if w is not None:
                    w.close()

    async def _server_to_client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readexactly(5)
                kind, length = head[:1], struct.unpack("!i", head[1:])[0]
                body = await r.readexactly(length - 4)
                if kind == b"S" and body.startswith(b"server_version\x00"):
                    body = b"server_version\x00" + REDSHIFT_VERSION + b"\x00"
                    head = kind + struct.pack("!i", len(body) + 4)
                w.write(head + body)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def _client_to_server(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readexactly(5)
                kind, length = head[:1], struct.unpack("!i", head[1:])[0]
                body = await r.readexactly(length - 4)
                if kind == b"Q":
                    sql = body[:-1].decode("utf-8")
                    body = (await self._rewrite(sql)).encode("utf-8") + b"\x00"
                elif kind == b"P":
                    name_end = body.index(b"\x00")
                    query_end = body.index(b"\x00", name_end + 1)
                    sql = body[name_end + 1 : query_end].decode("utf-8")
                    new_sql = (await self._rewrite(sql)).encode("utf-8")
                    body = body[: name_end + 1] + new_sql + body[query_end:]
                head = kind + struct.pack("!i", len(body) + 4)
                w.write(head + body)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    async def _rewrite(self, sql: str) -> str:
        self.statements.append(sql)
        # S3 reads block: keep them off the event loop so other connections go on.
        return await asyncio.get_running_loop().run_in_executor(None, rewrite, sql, self.read_s3)
