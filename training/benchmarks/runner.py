"""Benchmark machinery: each item runs in its own subprocess, with a time budget, measuring its own peak RSS.

A fresh process per item means the peak resident memory (`os.wait4`'s ``ru_maxrss`` of that one child)
belongs to the item alone, not to whatever ran before in the same interpreter. Inside the child, `Phase`
resets the kernel's high-water mark (``/proc/self/clear_refs``) so a phase (build the matrices, fit) gets
its own peak too; as that reset also lowers what ``ru_maxrss`` reports, the child keeps the process-wide
peak itself (`process_peak`). The child writes its metrics as JSON to a file named by the parent, with
checkpoints after each phase so an item killed later keeps what it finished; progress lines go to stderr
as they happen. The parent kills an item past its time budget or its memory budget (RSS polled every
50 ms), so a too-large size ends as a "skipped" row instead of the kernel's OOM killer picking a victim.

    python -m training.benchmarks.runner SUITE ITEM PARAMS_JSON RESULT_FILE
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

#: `progress(stage, done, total)` callback, as the data layer calls it.
Progress = Callable[[str, int, int], None]
#: An item: params in, metrics out (plain JSON values); runs inside the child process.
ItemFn = Callable[[Mapping[str, Any], Progress], dict[str, Any]]
#: Where the suites say what they are doing (the CLI passes a line printer).
Say = Callable[[str], None]

STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"
STATUS_FAILED = "failed"
_POLL_SECONDS = 0.05


@dataclass
class Measured:
    """One finished (or killed) subprocess.

    Attributes:
        seconds: wall time from start to exit.
        peak_rss_bytes: the child's own peak resident set (``ru_maxrss``; includes children it waited for).
        returncode: exit code (negative = killed by that signal).
        timed_out: killed because it ran past its time budget.
        output: captured stdout+stderr when asked to capture (else "").
        out_of_memory: killed because its RSS grew past its memory budget.
    """

    seconds: float
    peak_rss_bytes: int
    returncode: int
    timed_out: bool
    output: str = ""
    out_of_memory: bool = False


def _rss_of(pid: int) -> int:
    """Current resident set of process `pid` in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def memory_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def default_memory_budget() -> int | None:
    """What an item may hold: the memory available now less 3 GiB, at most 80% of RAM (None: unknown).

    The margin leaves room for whatever else runs on the machine, so the bench, not a neighbour, is
    the process that stops.
    """
    available = memory_available()
    if not available:
        return None
    total = 0
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
    return max(min(available - 3 * 2**30, int(0.8 * total)), 2**30)


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    budget_s: float | None = None,
    capture: bool = False,
    log: Path | None = None,
    memory_budget: int | None = None,
) -> Measured:
    """Run `argv` to completion (or until `budget_s` passes) and measure it alone.

    The child gets its own session so a timeout kills it with everything it started (except daemons that
    detached themselves, such as the embedded redis-server). A child whose resident set grows past
    `memory_budget` is killed too, before the kernel's OOM killer picks a victim on a shared machine.

    Args:
        argv: the command.
        env: environment (default: this process's).
        budget_s: seconds before the process group is killed (None: no limit).
        capture: collect stdout+stderr into `Measured.output` (else they go to `log`, or pass through).
        log: file that receives stdout+stderr (appended) when not capturing.
        memory_budget: bytes of RSS at which the child is killed (None: no limit).

    Returns:
        Time, peak RSS, exit code, whether it timed out or ran out of memory, and the captured output.
    """
    sink: IO[bytes] | None = None
    if capture:
        sink = tempfile.TemporaryFile()  # noqa: SIM115  # closed in the finally below
    elif log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = log.open("ab")
    try:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            stdout=sink,
            stderr=subprocess.STDOUT if sink is not None else None,
            start_new_session=True,
        )
        timed_out = out_of_memory = False
        deadline = started + budget_s if budget_s is not None else None
        while True:
            # wait4 (not Popen.wait) because only wait4 returns the child's own rusage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            timed_out = deadline is not None and time.perf_counter() > deadline
            out_of_memory = memory_budget is not None and _rss_of(proc.pid) > memory_budget
            if timed_out or out_of_memory:
                _kill_group(proc.pid)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(_POLL_SECONDS)
        seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here: keep Popen from waiting on it again
        output = ""
        if capture and sink is not None:
            sink.seek(0)
            output = sink.read().decode("utf-8", errors="replace")
        return Measured(seconds, int(usage.ru_maxrss) * 1024, code, timed_out, output, out_of_memory)
    finally:
        if sink is not None:
            sink.close()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class ItemResult:
    """One row of a suite: what ran, how it ended, its time, peak memory and metrics.

    Attributes:
        suite: data | train | serve.
        item: the item's name within the suite (e.g. ``generate``, ``fit lightfm``).
        status: ok | skipped | failed.
        reason: why it was skipped or failed, or a note on how it ran (subsample, fewer epochs).
        seconds: wall time of the item's process (start-up and imports included).
        peak_rss_bytes: the item process's peak resident memory.
        params: what it ran with.
        metrics: what it measured (item-specific; times in seconds, memory in bytes).
    """

    suite: str
    item: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_item(
    suite: str,
    item: str,
    params: Mapping[str, Any],
    *,
    budget_s: float | None,
    label: str | None = None,
    note: str = "",
    env: Mapping[str, str] | None = None,
    memory_budget: int | None = None,
) -> ItemResult:
    """Run `ITEMS[item]` of ``training.benchmarks.<suite>_bench`` in a fresh Python process.

    Args:
        suite: suite module prefix (data, train, serve).
        item: key in that module's ``ITEMS``.
        params: JSON-serialisable parameters for the item.
        budget_s: seconds before the item is killed and reported as skipped.
        label: name of the row (default `item`).
        note: recorded as the row's reason when it succeeds (how it ran).
        env: environment of the item process (default: this process's).
        memory_budget: RSS in bytes at which the item is killed and reported as skipped (default
            `default_memory_budget()`, measured when the item starts).

    Returns:
        The row: ok with metrics, skipped (a budget exceeded; metrics of the phases it finished) or
        failed (the child's error).
    """
    name = label or item
    with tempfile.TemporaryDirectory(prefix="learnrec-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        argv = [
            sys.executable, "-m", "training.benchmarks.runner", suite, item, json.dumps(dict(params)),
            str(result_file),
        ]  # fmt: skip
        memory = memory_budget if memory_budget is not None else default_memory_budget()
        measured = run_measured(argv, env=env, budget_s=budget_s, memory_budget=memory)
        payload: dict[str, Any] = {}
        if result_file.is_file():
            payload = json.loads(result_file.read_text(encoding="utf-8"))
    row = ItemResult(
        suite, name, STATUS_OK, note, measured.seconds, measured.peak_rss_bytes, dict(params), {}
    )
    # ru_maxrss only covers the last phase once a phase reset the mark; the child tracks the whole run
    reported = payload.get("metrics", payload.get("partial", {})).get("process_peak_rss_bytes", 0)
    row.peak_rss_bytes = max(row.peak_rss_bytes, int(reported or 0))
    if measured.timed_out or measured.out_of_memory:
        row.status = STATUS_SKIPPED
        row.metrics = dict(payload.get("partial", {}))
        if measured.out_of_memory:
            row.reason = f"skipped: exceeded the memory budget of {(memory or 0) / 2**30:.1f} GiB (killed)"
        else:
            row.reason = f"skipped: exceeded the time budget of {_minutes(budget_s)} (killed)"
    elif measured.returncode != 0 or "metrics" not in payload:
        row.status = STATUS_FAILED
        error = payload.get("error") or f"exit code {measured.returncode}"
        if measured.returncode == -signal.SIGKILL:
            error += " (killed: out of memory?)"
        row.reason = f"failed: {error}"
        row.metrics = dict(payload.get("partial", {}))
    else:
        row.metrics = payload["metrics"]
    return row


def _minutes(budget_s: float | None) -> str:
    if budget_s is None:
        return "none"
    return f"{budget_s / 60:g} min" if budget_s >= 60 else f"{budget_s:g} s"


def skipped(suite: str, item: str, reason: str, params: Mapping[str, Any] | None = None) -> ItemResult:
    """A row for an item that was not run, with the reason."""
    return ItemResult(suite, item, STATUS_SKIPPED, f"skipped: {reason}", params=dict(params or {}))


# ----------------------------------------------------------------------------------------------------------
# inside the child


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set of this process in bytes, from /proc/self/status (0, 0 elsewhere)."""
    current = peak = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    return current, peak


#: Highest peak-RSS mark seen before any reset: a reset also clears what ``ru_maxrss`` reports at exit.
_PEAK_SEEN: list[int] = [0]


def process_peak() -> int:
    """This process's peak RSS in bytes since it started, across `reset_peak` calls."""
    _PEAK_SEEN[0] = max(_PEAK_SEEN[0], rss_bytes()[1])
    return _PEAK_SEEN[0]


def reset_peak() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0); False when not possible.

    The process-wide peak is kept by `process_peak` first: the kernel's mark (VmHWM) is also what
    ``ru_maxrss`` reports when the process exits, so after a reset only `process_peak` knows the true peak.
    """
    process_peak()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class Phase:
    """``with Phase() as p:`` measures the wall time and the peak RSS reached inside the block.

    The peak is absolute (what the process held at its highest, data loaded earlier included). When the
    kernel does not let the mark be reset, `peak_rss_bytes` is the process's peak so far and
    `peak_is_phase` is False.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.peak_rss_bytes = 0
        self.peak_is_phase = False
        self._started = 0.0

    def __enter__(self) -> Phase:
        self.peak_is_phase = reset_peak()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self.peak_rss_bytes = rss_bytes()[1]


def progress_lines(prefix: str, every_s: float = 10.0) -> Progress:
    """A progress callback writing ``prefix: stage done/total`` to stderr, at most every `every_s` a stage."""
    last: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        final = total > 0 and done >= total
        if not final and now - last.get(stage, 0.0) < every_s:
            return
        last[stage] = now
        of = f"/{total:,}" if total else ""
        sys.stderr.write(f"    {prefix}: {stage} {done:,}{of}\n")
        sys.stderr.flush()

    return progress


_RESULT_FILE: list[Path] = []


def checkpoint(metrics: Mapping[str, Any]) -> None:
    """Record the metrics of the phases done so far: kept when the item is later killed or fails."""
    if _RESULT_FILE:
        partial = {**metrics, "process_peak_rss_bytes": process_peak()}
        _RESULT_FILE[0].write_text(json.dumps({"partial": partial}), encoding="utf-8")


def child_main(argv: Sequence[str]) -> int:
    """Entry point of an item process: run the item, write ``{"metrics": ...}`` or ``{"error": ...}``."""
    if len(argv) != 4:
        sys.stderr.write("usage: python -m training.benchmarks.runner SUITE ITEM PARAMS_JSON RESULT_FILE\n")
        return 2
    suite, item, raw, result_file = argv
    out = Path(result_file)
    _RESULT_FILE[:] = [out]
    try:
        module = importlib.import_module(f"training.benchmarks.{suite}_bench")
        items: dict[str, ItemFn] = module.ITEMS
        if item not in items:
            raise ValueError(f"suite {suite} has no item {item!r}: known are {', '.join(items)}")
        metrics = items[item](json.loads(raw), progress_lines(item))
        metrics["process_peak_rss_bytes"] = process_peak()
        out.write_text(json.dumps({"metrics": metrics}), encoding="utf-8")
    except Exception as exc:  # MemoryError included: the row says what failed, the suite goes on
        traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        partial = json.loads(out.read_text(encoding="utf-8")).get("partial", {}) if out.is_file() else {}
        out.write_text(json.dumps({"error": message, "partial": partial}), encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    # run the imported module's child_main, not this __main__ copy: the items import
    # training.benchmarks.runner, and checkpoints and peaks must land in that module's state
    from training.benchmarks import runner

    sys.exit(runner.child_main(sys.argv[1:]))


# ----------------------------------------------------------------------------------------------------------
# what the suites share

#: Students x lectures of the two standard sizes (None students = the platform's regions today, 43,300).
DEFAULT_SIZE: tuple[int | None, int] = (None, 5_000)
LARGE_SIZE: tuple[int | None, int] = (1_000_000, 20_000)


def _quiet(line: str) -> None:
    return None


@dataclass
class BenchOptions:
    """How `learnrec bench` was asked to run.

    Attributes:
        data_root: scratch directory of the benchmarks (datasets, serve data dirs), e.g. data/bench.
        large: the 1,000,000 x 20,000 size instead of the default.
        budget_s: time budget per item; an item past it is killed and reported as skipped.
        say: line printer for progress.
        seed: seed of the generated data and the models.
        students: override the number of students (a quick or custom size).
        lectures: override the number of lectures.
        models: train suite: only these models (default: every model in `models.MODELS`).
        serve_seconds: serve suite: length of each wrk run.
        serve_models: serve suite: models trained for the champion (`learnrec train --model`).
        memory_budget: RSS in bytes at which an item is killed (None: `default_memory_budget()` per item).
        serve_env: serve suite: extra environment of the service process only (e.g. thread limits).
        step_fractions: train suite: shares of the students to step down through when the matrices or a
            model do not fit the budgets (None: `train_bench.LARGE_FRACTIONS` at the large size, else none).
        events: quality suite: event files of other logs to score the models on too.
        select_budget_s: quality suite: time budget of the search on validation per dataset.
    """

    data_root: Path
    large: bool = False
    budget_s: float = 20 * 60.0
    say: Say = field(default_factory=lambda: _quiet)
    seed: int = 42
    students: int | None = None
    lectures: int | None = None
    models: tuple[str, ...] | None = None
    serve_seconds: int = 20
    serve_models: tuple[str, ...] | None = None
    memory_budget: int | None = None
    step_fractions: tuple[float, ...] | None = None
    serve_env: dict[str, str] | None = None
    events: tuple[str, ...] | None = None
    select_budget_s: float = 300.0

    @property
    def size(self) -> tuple[int | None, int]:
        """(students or None for the default regions, lectures)."""
        base = LARGE_SIZE if self.large else DEFAULT_SIZE
        return (self.students if self.students is not None else base[0], self.lectures or base[1])

    @property
    def size_label(self) -> str:
        """``default``, ``large``, or ``custom-<students>x<lectures>`` when the size was overridden."""
        if self.students is None and self.lectures is None:
            return "large" if self.large else "default"
        students, lectures = self.size
        return f"custom-{students or 'default'}x{lectures}"


@dataclass
class SuiteResult:
    """What one suite measured at one size; `training.benchmarks.report` writes it as JSON and Markdown.

    Attributes:
        suite: data | train | serve.
        size: size label (`BenchOptions.size_label`).
        dataset: students, lectures, events of the dataset used.
        items: the rows.
        summary: headline figures (e.g. the serve suite's ratio and p99 against their targets).
        notes: how it ran and why (subsamples, budgets, what was not run).
        variant: names a partial run (e.g. the models of ``--model``), so it does not replace the full one.
    """

    suite: str
    size: str
    dataset: dict[str, Any] = field(default_factory=dict)
    items: list[ItemResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    variant: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["items"] = [i.as_dict() for i in self.items]
        return out


def describe(row: ItemResult) -> str:
    """One progress line for a finished row."""
    if not row.ok:
        return f"  {row.item}: {row.reason}"
    if "rps" in row.metrics:
        m = row.metrics
        return (
            f"  {row.item}: {m['rps']:,.0f} requests/s, p50 {m['p50_ms']:.1f} / p99 {m['p99_ms']:.1f} ms, "
            f"{m['errors']:,} errors"
        )
    if not row.peak_rss_bytes:
        return f"  {row.item}: {row.metrics.get('note', '')}"
    peak = row.peak_rss_bytes / 2**20
    return f"  {row.item}: {row.seconds:.1f} s, peak RSS {peak:,.0f} MiB" + (
        f" ({row.reason})" if row.reason else ""
    )
