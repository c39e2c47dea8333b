"""Progress bars and end-of-command summaries (rich), shared by every long stage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Summaries and bars go to stderr so stdout stays clean for machine-readable output.
console = Console(stderr=True, highlight=False)


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **kwargs) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._t, n)

    def update(self, **kwargs) -> None:
        self._p.update(self._t, **kwargs)


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "", enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr (a no-op object when disabled)."""
    if not enabled:
        yield _NullBar()
        return
    columns = [
        TextColumn(f"[bold]{description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total))
