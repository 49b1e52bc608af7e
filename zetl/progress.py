"""Snapshot progress in the terminal: one bar per table (rows done / estimated)."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

__all__ = ["SnapshotProgress"]


class SnapshotProgress:
    """Receives ``(integration, table, done, total)`` from runners and draws bars (TTY only)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=False
        )
        self.tasks: dict[tuple[str, str], TaskID] = {}
        self.lock = threading.Lock()
        self.started = False

    @classmethod
    def for_terminal(cls, console: Console) -> SnapshotProgress | None:
        return cls(console) if console.is_terminal else None

    def __call__(self, integration: str, table: Any, done: int, total: int | None) -> None:
        with self.lock:
            if not self.started:
                self.progress.start()
                self.started = True
            key = (integration, str(table))
            if key not in self.tasks:
                self.tasks[key] = self.progress.add_task(f"{integration}: {table}", total=total)
            self.progress.update(self.tasks[key], completed=done, total=total)

    def close(self) -> None:
        with self.lock:
            if self.started:
                self.progress.stop()
