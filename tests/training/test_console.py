"""Console helpers of the commands."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.progress import Progress

from training.commands.console import rich_steps


def test_steps_in_a_log_are_lines_with_the_time() -> None:
    """`learnrec train` at 1M ran for hours with stderr in a log that showed only the final state: which
    step took how long was not to be read from it. Off a terminal each new description is one line."""
    out = io.StringIO()
    with Progress(console=Console(file=out, width=200)) as progress:
        step = rich_steps(progress)
        step("prepare", "reading d", 0, 4)
        step("prepare", "reading d", 1, 4)  # the same step moving on: no new line
        step("lightfm", "lightfm: evaluating", 0, 9)
        step("lightfm", "lightfm: evaluating", 5, 9)
        step("prepare", "[red]split[/]", 2, 4)
    lines = [line for line in out.getvalue().splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert [line[9:] for line in lines] == ["reading d", "lightfm: evaluating", "split"]
