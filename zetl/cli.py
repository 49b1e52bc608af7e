"""The ``zetl`` command line: run, validate, status, plugins, reset."""

from __future__ import annotations

import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from zetl import __version__
from zetl.config.load import Integration, collect_files, load_integrations
from zetl.errors import ConfigError, ZetlError

EXIT_CONFIG = 2

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _load_or_exit(paths: tuple[str, ...]) -> list[Integration]:
    try:
        return load_integrations(paths)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(str(issue), markup=False)
        n = len(exc.issues)
        err.print(f"{n} error{'s' if n != 1 else ''} found", style="bold red")
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zetl")
def main() -> None:
    """zetl: replicate databases into warehouses, lakes and search indexes, continuously.

    One YAML file describes one integration (source, sink, tables, policies). `zetl run` keeps
    every integration in sync; `zetl status` shows how they are doing.
    """


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--log-format", type=click.Choice(["human", "json"]), default="human", show_default=True, help="Log line format.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--shutdown-timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for a graceful stop after SIGTERM.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port (/metrics).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address the metrics server listens on.")
def run(paths: tuple[str, ...], log_format: str, log_level: str, shutdown_timeout: float, metrics_port: int | None, metrics_host: str) -> None:
    """Run the integrations in PATHS (files or directories of *.yaml) until stopped.

    Each integration resumes from its checkpoint. SIGTERM or Ctrl-C stops gracefully: rows
    already read are written and the checkpoint saved. Exit code 0 on a clean stop, 1 if an
    integration failed, 2 for configuration errors.
    """
    from zetl.daemon import Daemon
    from zetl.logs import configure_logging
    from zetl.progress import SnapshotProgress

    configure_logging(log_format, log_level)
    integrations = _load_or_exit(paths)
    progress = SnapshotProgress.for_terminal(err) if log_format == "human" else None
    metrics = None
    if metrics_port is not None:
        from zetl.metrics import Metrics

        metrics = Metrics()
        metrics.serve(metrics_port, metrics_host)
    try:
        code = Daemon(integrations, shutdown_timeout=shutdown_timeout, progress=progress, metrics=metrics).run()
    finally:
        if progress is not None:
            progress.close()
    _exit_after_threads(code)


def _exit_after_threads(code: int, timeout: float = 10.0) -> None:
    """Exit once every other thread has ended, with logs and output flushed.

    A thread still running while the interpreter shuts down may be writing to stderr when the
    interpreter takes the stream's lock for the last flush, which aborts the process ("Fatal
    Python error: _enter_buffered_busy"). So the threads are joined first; one that does not end
    within ``timeout`` is logged, and the process then exits without interpreter shutdown, after
    flushing everything itself.
    """
    import logging
    import threading

    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is threading.current_thread() or not thread.is_alive():
            continue
        if thread.daemon and thread.name.startswith(("Thread-", "prometheus")):
            continue  # servers that only answer requests (the metrics endpoint)
        thread.join(max(0.0, deadline - time.monotonic()))
    lingering = [t.name for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
    if not lingering:
        logging.shutdown()
        sys.exit(code)
    logging.getLogger("zetl.daemon").debug("threads still running at exit: %s", ", ".join(lingering))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def validate(paths: tuple[str, ...]) -> None:
    """Check integration files without connecting to anything.

    Every problem of every file is printed as `file:line:col  field.path: message` with a hint;
    the exit code is 2 when there is any.
    """
    integrations = _load_or_exit(paths)
    for integration in integrations:
        out.print(f"[green]ok[/green]  {integration.file}  {integration.name}: {integration.config.source.type} -> {integration.config.sink.type}")
    out.print(f"{len(integrations)} integration{'s' if len(integrations) != 1 else ''} valid")


def _state_files(paths: tuple[str, ...], state: str | None) -> list[Path]:
    if state:
        return [Path(state)]
    if paths:
        files = []
        for integration in _load_or_exit(paths):
            p = integration.config.state_path(integration.file)
            if p not in files:
                files.append(p)
        return files
    from zetl.statehome import home_state_file, recorded_locations

    files = [home_state_file()]
    for p in recorded_locations():
        if p not in files:
            files.append(p)
    return files


STALE_AFTER = 30.0
"""A running integration's status older than this (seconds) is stale: its daemon is alive but
cannot write the state file (or is hung). The daemon saves it at least every 5 s."""


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--state", "state", type=click.Path(), help="State file to read (default: from PATHS, else the zetl home's and those it records).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(paths: tuple[str, ...], state: str | None, fmt: str) -> None:
    """Show each integration's state, rows written, lag, position and last error.

    Reads the state file the daemon keeps up to date, so it works while `zetl run` runs (and
    after it stopped: a running state whose process is gone shows as `stopped (process gone)`;
    one whose live process has not saved it for 30 s, as `stale`: that daemon cannot write its
    state file). Exit code 1 when an integration failed, needs attention or is stale, else 0.
    """
    from zetl.statedb import StateDB
    from zetl.status import State, StatusStore

    rows: list[Any] = []
    sources: dict[str, Path] = {}
    for file in _state_files(paths, state):
        if not file.exists():
            continue
        try:
            found = StatusStore(StateDB(file, read_only=True)).load_all()
        except Exception as exc:  # sqlite3.Error: not a state file, or unreadable
            err.print(f"cannot read the state file {file}: {exc}", markup=False)
            sys.exit(1)
        for s in found:
            rows.append(s)
            sources[s.integration] = file
    now = time.time()

    def health(s: Any) -> tuple[str, bool]:
        """The state to show and whether it is healthy."""
        text = str(s.state)
        if s.state in (State.FAILED, State.NEEDS_ATTENTION):
            return text, False
        if s.state is State.STOPPED:
            return text, True
        if not _pid_alive(s.pid):
            return text + " (process gone)", True
        if s.updated_at and now - s.updated_at > STALE_AFTER:
            return f"{text} (stale: no update for {now - s.updated_at:.0f}s)", False
        if s.state_error and s.state_error_until is None:
            return f"{text} (state file not writable)", False
        return text, True

    unhealthy = False
    if fmt == "json":
        data = []
        for s in rows:
            shown, healthy = health(s)
            unhealthy |= not healthy
            d = {k: getattr(s, k) for k in s.__dataclass_fields__}
            d["state"] = str(s.state)
            d["process_alive"] = _pid_alive(s.pid)
            d["stale"] = bool(d["process_alive"] and s.state not in (State.FAILED, State.NEEDS_ATTENTION, State.STOPPED) and s.updated_at and now - s.updated_at > STALE_AFTER)
            d["healthy"] = healthy
            d["state_file"] = str(sources[s.integration])
            data.append(d)
        out.print(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode(), markup=False)
        sys.exit(1 if unhealthy else 0)
    if not rows:
        out.print("no integrations have run yet (no status in the state file)")
        return
    for file in dict.fromkeys(sources.values()):
        out.print(f"state file: {file}", markup=False)
    table = Table("integration", "state", "rows", "lag", "position", "last write", "details", "last error")
    for s in rows:
        state_text, healthy = health(s)
        unhealthy |= not healthy
        colour = {"streaming": "green", "snapshotting": "cyan", "failed": "red", "needs_attention": "yellow", "retrying": "yellow"}.get(str(s.state), "white")
        if not healthy:
            colour = "red" if s.state is State.FAILED else "yellow"
        details = []
        snap = s.source.get("snapshot") if isinstance(s.source, dict) else None
        if snap:
            for tbl, p in snap.items():
                total = p.get("total")
                details.append(f"{tbl} {p.get('done')}/{total if total is not None else '?'}")
        for key in ("slot_lag_bytes", "lag_bytes"):
            if isinstance(s.source, dict) and s.source.get(key) is not None:
                details.append(f"{key}={s.source[key]}")
        if s.state_error:
            until = "ongoing" if s.state_error_until is None else f"until {time.strftime('%H:%M:%S', time.localtime(s.state_error_until))}"
            since = time.strftime("%H:%M:%S", time.localtime(s.state_error_since)) if s.state_error_since else "?"
            details.append(f"state file unwritable since {since}, {until}: {s.state_error}")
        table.add_row(
            s.integration,
            f"[{colour}]{state_text}[/{colour}]",
            f"{s.rows_written:,}",
            f"{s.lag_seconds:.2f}s" if s.lag_seconds is not None else "-",
            s.position or "-",
            _ago(s.last_write_at),
            "; ".join(details) or "-",
            (s.last_error or "-")[:200],
        )
    out.print(table)
    sys.exit(1 if unhealthy else 0)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def plugins(fmt: str) -> None:
    """List the installed sources and sinks with their configuration keys."""
    from zetl.errors import NotInstalledError
    from zetl.registry import available, check_installed, load_plugin

    entries = []
    for kind in ("source", "sink"):
        for info in available(kind):  # type: ignore[arg-type]
            entry: dict[str, Any] = {"kind": kind, "type": info.name, "class": info.target, "installed": True, "keys": [], "note": ""}
            try:
                cls = load_plugin(kind, info.name)  # type: ignore[arg-type]
                check_installed(cls)
                entry["keys"] = _config_keys(cls.config_class)
            except NotInstalledError as exc:
                entry["installed"] = False
                entry["note"] = exc.message
                entry["keys"] = _config_keys(cls.config_class)
            except ZetlError as exc:
                entry["installed"] = False
                entry["note"] = exc.message
            entries.append(entry)
    if fmt == "json":
        out.print(orjson.dumps(entries, option=orjson.OPT_INDENT_2).decode(), markup=False)
        return
    table = Table("kind", "type", "installed", "config keys")
    for e in entries:
        keys = ", ".join(e["keys"]) or "-"
        table.add_row(e["kind"], e["type"], "yes" if e["installed"] else f"no: {e['note']}", keys)
    out.print(table)


def _config_keys(model: Any) -> list[str]:
    """``name (type)`` per key, ``*`` after the required ones."""
    return [f"{name}{'*' if field.is_required() else ''} ({_type_label(field.annotation)})" for name, field in model.model_fields.items()]


def _type_label(annotation: Any) -> str:
    """The type of a configuration key in the words a YAML author needs (no Python paths)."""
    from pydantic import BaseModel, SecretStr

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_label(a) for a in args if a is not type(None))
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_label(args[0])}" if args else "list"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, SecretStr):
            return "secret"
        if issubclass(annotation, Path):
            return "path"
        if issubclass(annotation, BaseModel):
            return "mapping: " + ", ".join(annotation.model_fields)
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@main.command()
@click.argument("target")
@click.option("--state", "state", type=click.Path(), help="State file (default: the integration's, see `zetl status`).")
@click.option("--drop-source-state", is_flag=True, help="Also remove what the integration owns on the source server (e.g. its replication slot and publication); needs TARGET to be the YAML file.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(target: str, state: str | None, drop_source_state: bool, yes: bool) -> None:
    """Forget an integration's position so that its next run starts over with a new copy.

    TARGET is the integration's YAML file (or its name, with the state found as `zetl run`
    finds it). Shows what it removes, then removes it: the checkpoint, the status, the schema
    history, the source's files in the state directory (e.g. Postgres column identities, the
    MySQL schema history) and, with --drop-source-state, what the integration created on the
    source server. The target's tables and data are left as they are. Refused while the
    integration runs. Exit code 0 when done (or nothing to do), 1 on errors.
    """
    from zetl.checkpoints import SQLiteCheckpointStore
    from zetl.plugin import PluginContext
    from zetl.statedb import StateDB
    from zetl.statehome import forget_location, locate_state
    from zetl.writerlock import IntegrationLock, IntegrationLockedError

    integration: Integration | None = None
    if Path(target).is_file() or target.endswith((".yaml", ".yml")):
        found = _load_or_exit((target,))
        if len(found) != 1:
            err.print(f"{target} holds {len(found)} integrations; reset takes one file with one integration")
            sys.exit(1)
        integration = found[0]
        name = integration.name
        path = Path(state) if state else integration.config.state_path(integration.file)
    else:
        name = target
        path = Path(state) if state else locate_state(name, None, None).path
    if drop_source_state and integration is None:
        err.print(f"--drop-source-state needs the integration's YAML file (to connect to its source): zetl reset --drop-source-state path/to/{name}.yaml")
        sys.exit(1)
    if not path.exists():
        if state is None and forget_location(name):
            out.print(f"{name}: its recorded state {path} is gone; the record is removed, the next run starts over in {locate_state(name, None, None).path}", markup=False)
            return
        err.print(f"{name} has no state at {path}; nothing to reset")
        sys.exit(0 if not drop_source_state else 1)
    db = StateDB(path)
    lock = IntegrationLock(path.parent, name)
    source = None
    try:
        lock.acquire()
    except IntegrationLockedError as exc:
        err.print(f"cannot reset: {exc.message}", markup=False)
        sys.exit(1)
    try:
        store = SQLiteCheckpointStore(db)
        conn = db.connect()
        checkpoint = store.load_raw(name)
        history = conn.execute("SELECT count(*) FROM schema_history WHERE integration = ?", (name,)).fetchone()[0]
        has_status = conn.execute("SELECT 1 FROM status WHERE integration = ?", (name,)).fetchone() is not None
        plan: list[str] = []
        if checkpoint is not None:
            plan.append(f"the checkpoint ({checkpoint})")
        if history:
            plan.append(f"the schema history ({history} decision{'s' if history != 1 else ''})")
        if has_status:
            plan.append("the status")
        files: list[Path] = []
        if integration is not None:
            context = PluginContext(integration=name, tables=integration.config.tables.selection(), columns=integration.config.filters, state_dir=path.parent / name, config_file=integration.file)
            source = integration.source_class(integration.source_config, context)
            files = source.local_state_files()
            plan += [f"file {f}" for f in files]
            if drop_source_state:
                try:
                    plan += [f"on the source: {line}" for line in source.source_state()]
                except ZetlError as exc:
                    err.print(f"cannot list the source state of {name}: {exc.message}", markup=False)
                    sys.exit(1)
        if not plan:
            out.print(f"{name} has nothing to reset in {path}")
            return
        out.print(f"reset {name} (state {path}) removes:", markup=False)
        for line in plan:
            out.print(f"  - {line}", markup=False)
        out.print("the target's tables and data stay; the next run copies the tables again", markup=False)
        if not yes:
            click.confirm("go on?", abort=True)
        if source is not None and drop_source_state:
            try:
                for line in source.drop_source_state():
                    out.print(f"removed on the source: {line}", markup=False)
            except ZetlError as exc:
                err.print(f"cannot remove the source state of {name}: {exc.message} (nothing else was removed)", markup=False)
                sys.exit(1)
        for f in files:
            f.unlink(missing_ok=True)
        store.reset(name)
        conn.execute("DELETE FROM schema_history WHERE integration = ?", (name,))
        conn.execute("DELETE FROM schema_applies WHERE integration = ?", (name,))
        conn.execute("DELETE FROM status WHERE integration = ?", (name,))
        out.print(f"{name} reset; its next run starts over", markup=False)
    finally:
        if source is not None:
            source.close()
        lock.release()
        db.close()


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--fail-on", "fail_on", type=click.Choice(["any", "lossy", "breaking"]), default="any", show_default=True, help="Lowest classification that counts as drift.")
@click.option("--history", "with_history", is_flag=True, help="Also print every schema decision recorded by the daemon.")
def drift(paths: tuple[str, ...], fmt: str, fail_on: str, with_history: bool) -> None:
    """Compare the source's and the target's schemas of the integrations in PATHS, and say what
    the daemon would do with each difference. Changes nothing.

    Exit code: 0 in sync, 1 drift the policy applies, 2 drift the policy rejects, 3 error.
    """
    from zetl.drift import EXIT_ERROR, drift_report, render_table

    try:
        integrations = load_integrations(paths)
    except ConfigError as exc:
        for issue in exc.issues:
            err.print(str(issue), markup=False)
        sys.exit(EXIT_ERROR)
    reports = [drift_report(i, fail_on=fail_on, with_history=with_history) for i in integrations]  # type: ignore[arg-type]
    if fmt == "json":
        data = [r.to_json() for r in reports]
        click.echo(orjson.dumps(data[0] if len(data) == 1 else data, option=orjson.OPT_INDENT_2).decode())
    else:
        for report in reports:
            render_table(report, out)
    sys.exit(max(r.exit_code for r in reports))


_ = collect_files  # re-exported for plugins that add commands

if __name__ == "__main__":
    main()
