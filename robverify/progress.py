"""The one progress-bar factory (rich, on stderr) of the commands, the study runner and the training loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Bar", "progress_bar"]


class Bar:
    """A progress display with named tasks; without a console every call does nothing."""

    def __init__(self, progress: Any | None) -> None:
        self._progress = progress

    @property
    def active(self) -> bool:
        """True when something is displayed."""
        return self._progress is not None

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
def progress_bar(console: Any | bool | None, *, transient: bool = False) -> Iterator[Bar]:
    """``with progress_bar(console) as bar:`` a live display on ``console`` (a ``rich.console.Console``; ``True``:
    a console on stderr), or a silent :class:`Bar` when ``console`` is None or False. ``transient``: the display
    disappears when done."""
    if console is None or console is False:
        yield Bar(None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if console is True:
        console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=transient) as progress:
        yield Bar(progress)
