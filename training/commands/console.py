"""Console helpers shared by the command modules: progress bars and one-line errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

ProgressFn = Callable[[str, int, int], None]


@contextmanager
def progress_bars() -> Iterator[ProgressFn]:
    """A ``progress(stage, done, total)`` callback: one rich bar per stage on stderr (total 0 = unknown)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # pipes and CI logs get the summary only

        def silent(stage: str, done: int, total: int) -> None:
            return None

        yield silent
        return
    bars: Progress = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total or None)
        bars.update(tasks[stage], completed=done, total=total or None)

    with bars:
        yield update


def task_progress() -> Progress:
    """A rich `Progress` on stderr (spinner, description, bar, done/total, elapsed) for commands that add
    their own tasks; `progress_bars` is the simpler ``progress(stage, done, total)`` form."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True),
    )  # fmt: skip


def rich_steps(progress: Progress) -> Callable[[str, str, int | None, int | None], None]:
    """A `training.pipeline.Step` that shows each named task as one line of a rich `Progress`; on a
    console that is not a terminal (a log), each new description once, as a line with the UTC time."""
    import time

    tasks: dict[str, TaskID] = {}
    said: dict[str, str] = {}
    log = not progress.console.is_terminal

    def step(task: str, description: str, done: int | None, total: int | None) -> None:
        if task not in tasks:
            tasks[task] = progress.add_task(description, total=total)
        progress.update(tasks[task], description=description, completed=done or 0, total=total)
        if log and said.get(task) != description:
            said[task] = description
            now = time.strftime("%H:%M:%S", time.gmtime())
            progress.console.print(f"{now} {description}", highlight=False)

    return step


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr (whitespace runs collapsed) and return the Exit to raise."""
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)
