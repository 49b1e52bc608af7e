"""Private database servers on loopback, for tests, the demo and benchmarks.

Each server lives in its own temporary directory, listens on a free 127.0.0.1 port with its own
socket, and is stopped by the object that started it (``stop()`` or the context manager): no
process is ever found or killed by name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MariaDBServer", "PostgresServer", "free_port"]

PG_BIN = Path(os.environ.get("ZETL_PG_BIN") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), Path("/usr/lib/postgresql/15/bin")))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], *, user: str | None = None, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    if user and os.geteuid() == 0:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user, user)


@dataclass
class PostgresServer:
    """A private Postgres cluster with ``wal_level=logical`` and trust auth on loopback.

    ``settings`` are appended to postgresql.conf; ``hba`` lines are put before the trust lines.
    """

    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)
    hba: list[str] = field(default_factory=list)
    user: str = "postgres"
    base_dir: Path | None = None

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="zetl-pg-", dir=self.base_dir))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.running = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.user}"

    def start(self) -> PostgresServer:
        self.data.mkdir()
        _chown(self.dir, "postgres")
        _chown(self.data, "postgres")
        _run([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], user="postgres")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "log_min_messages": "warning",
            "fsync": "on",
            **self.settings,
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(f"{k} = {v}" for k, v in conf.items()) + "\n")
        hba = [*self.hba, "local all all trust", "host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"]
        (self.data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self.log.touch()
        _chown(self.log, "postgres")
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"], user="postgres")
        self.running = True
        return self

    def restart(self) -> None:
        """Clean restart (``-m fast``).

        A clean shutdown waits until every walsender's client has confirmed all the WAL it
        was sent, so a replication client must keep reading while this runs (call it from
        another thread), or the shutdown lasts until ``wal_sender_timeout``.
        """
        done = _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "-t", "120", "restart"], user="postgres", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed ({done.returncode}): {done.stderr.strip()}\nserver log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.running:
            stopped = _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"], user="postgres", check=False)
            if stopped.returncode != 0:
                # a replication client that no longer reads holds a clean shutdown until
                # wal_sender_timeout; the data directory is thrown away, so skip the wait
                _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop"], user="postgres", check=False)
            self.running = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with psql (ON_ERROR_STOP) and return its unaligned output."""
        out = _run([str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", dbname, "-c", sql])
        return out.stdout.strip()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class MariaDBServer:
    """A private MariaDB server with a ROW binlog (``binlog_row_metadata=FULL``) on loopback.

    Needs Debian's ``mariadb-server`` package (``mariadbd``, ``mariadb-install-db``).
    """

    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)
    base_dir: Path | None = None
    server_id: int = 1

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="zetl-mariadb-", dir=self.base_dir))
        os.chmod(self.dir, 0o755)
        self.data = self.dir / "data"
        self.socket = self.dir / "mariadbd.sock"
        self.cnf = self.dir / "my.cnf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> MariaDBServer:
        if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").exists():
            raise RuntimeError("mariadbd not found: apt-get install -y mariadb-server")
        self.data.mkdir()
        _chown(self.dir, "mysql")
        _chown(self.data, "mysql")
        conf = {
            "datadir": str(self.data),
            "socket": str(self.socket),
            "pid-file": str(self.dir / "mariadbd.pid"),
            # A private tmpdir: every mariadbd deletes "#sql*" files in its tmpdir at startup, so a
            # shared /tmp lets one server remove another's live temporary tables.
            "tmpdir": str(self.dir),
            "port": str(self.port),
            "bind-address": "127.0.0.1",
            "user": "mysql",
            "server_id": str(self.server_id),
            "log_bin": str(self.data / "binlog"),
            "binlog_format": "ROW",
            "binlog_row_image": "FULL",
            "binlog_row_metadata": "FULL",
            "character-set-server": "utf8mb4",
            "collation-server": "utf8mb4_general_ci",
            "innodb_buffer_pool_size": "256M",
            "innodb_flush_log_at_trx_commit": "1",
            "skip-name-resolve": "",
            "log_error": str(self.dir / "error.log"),
            **self.settings,
        }
        lines = ["[mariadbd]"] + [f"{k}={v}" if v != "" else k for k, v in conf.items()]
        self.cnf.write_text("\n".join(lines) + "\n")
        _run(["mariadb-install-db", f"--defaults-file={self.cnf}", "--user=mysql", f"--datadir={self.data}", "--auth-root-authentication-method=normal", "--skip-test-db"])
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.process = subprocess.Popen([mariadbd, f"--defaults-file={self.cnf}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _run(["mariadb-admin", f"--socket={self.socket}", "-u", "root", "ping"], check=False).returncode == 0:
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.dir / 'error.log').read_text()[-2000:]}")
            time.sleep(0.2)
        else:
            raise RuntimeError("mariadbd did not start within 60 s")
        self.sql("CREATE USER IF NOT EXISTS 'zetl'@'127.0.0.1' IDENTIFIED BY 'zetl'; GRANT ALL PRIVILEGES ON *.* TO 'zetl'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;")
        return self

    def sql(self, sql: str, database: str | None = None) -> str:
        cmd = ["mariadb", f"--socket={self.socket}", "-u", "root", "-N", "-B", "-e", sql]
        if database:
            cmd.insert(1, f"--database={database}")
        return _run(cmd).stdout.strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
