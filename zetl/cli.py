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
    sys.exit(code)


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
    return [Path(os.environ.get("ZETL_HOME", ".zetl")) / "state.db"]


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
@click.option("--state", "state", type=click.Path(), help="State file to read (default: from PATHS, else $ZETL_HOME/state.db).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(paths: tuple[str, ...], state: str | None, fmt: str) -> None:
    """Show each integration's state, rows written, lag, position and last error.

    Reads the state file the daemon keeps up to date, so it works while `zetl run` runs (and
    after it stopped: a running state whose process is gone shows as `stopped (process gone)`).
    """
    from zetl.statedb import StateDB
    from zetl.status import State, StatusStore

    rows: list[Any] = []
    for file in _state_files(paths, state):
        if not file.exists():
            continue
        rows += StatusStore(StateDB(file)).load_all()
    if fmt == "json":
        data = []
        for s in rows:
            d = {k: getattr(s, k) for k in s.__dataclass_fields__}
            d["state"] = str(s.state)
            d["process_alive"] = _pid_alive(s.pid)
            data.append(d)
        out.print(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode(), markup=False)
        return
    if not rows:
        out.print("no integrations have run yet (no status in the state file)")
        return
    table = Table("integration", "state", "rows", "lag", "position", "last write", "details", "last error")
    for s in rows:
        state_text = str(s.state)
        if s.state not in (State.STOPPED, State.FAILED, State.NEEDS_ATTENTION) and not _pid_alive(s.pid):
            state_text += " (process gone)"
        colour = {"streaming": "green", "snapshotting": "cyan", "failed": "red", "needs_attention": "yellow", "retrying": "yellow"}.get(str(s.state), "white")
        details = []
        snap = s.source.get("snapshot") if isinstance(s.source, dict) else None
        if snap:
            for tbl, p in snap.items():
                total = p.get("total")
                details.append(f"{tbl} {p.get('done')}/{total if total is not None else '?'}")
        for key in ("slot_lag_bytes", "lag_bytes"):
            if isinstance(s.source, dict) and s.source.get(key) is not None:
                details.append(f"{key}={s.source[key]}")
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
@click.argument("integration")
@click.option("--state", "state", type=click.Path(), help="State file (default $ZETL_HOME/state.db).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(integration: str, state: str | None, yes: bool) -> None:
    """Forget INTEGRATION's checkpoint: its next run starts from a new snapshot."""
    from zetl.checkpoints import SQLiteCheckpointStore
    from zetl.statedb import StateDB

    path = Path(state) if state else Path(os.environ.get("ZETL_HOME", ".zetl")) / "state.db"
    if not path.exists():
        err.print(f"no state file at {path}")
        sys.exit(1)
    store = SQLiteCheckpointStore(StateDB(path))
    current = store.load(integration)
    if current is None:
        out.print(f"{integration} has no checkpoint in {path}")
        return
    if not yes:
        click.confirm(f"forget the checkpoint of {integration} ({current})?", abort=True)
    store.reset(integration)
    out.print(f"checkpoint of {integration} removed; the next run starts from the beginning")


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
