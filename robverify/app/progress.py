"""The one progress-bar factory of the command line and the study runner (rich, on stderr)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Bar", "progress_bar"]


class Bar:
    """A progress display with named tasks; without a console every call does nothing."""

    def __init__(self, progress: Any | None) -> None:
        self._progress = progress

    def add(self, description: str, total: int | None, completed: int = 0) -> int | None:
        """A new task line; returns its handle (None without a display)."""
        if self._progress is None:
            return None
        task = self._progress.add_task(description, total=total)
        if completed:
            self._progress.update(task, completed=completed)
        return task

    def advance(self, task: int | None, k: int = 1) -> None:
        if self._progress is not None and task is not None:
            self._progress.advance(task, k)

    def describe(self, task: int | None, description: str) -> None:
        if self._progress is not None and task is not None:
            self._progress.update(task, description=description)

    def remove(self, task: int | None) -> None:
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)


@contextlib.contextmanager
def progress_bar(console: Any | None) -> Iterator[Bar]:
    """``with progress_bar(console) as bar:`` a live display on ``console`` (a ``rich.console.Console``), or a
    silent :class:`Bar` when ``console`` is None."""
    if console is None:
        yield Bar(None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        yield Bar(progress)
