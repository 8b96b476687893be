"""`learnrec bench`: data, training and serving benchmarks; writes bench/results/ and bench/RESULTS.md."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from training.benchmarks.runner import BenchOptions, SuiteResult

SUITES = ("data", "train", "serve", "quality", "cluster")
#: What `--suite all` runs: the quality suite fits every model on seven datasets, so it is asked for by name.
ALL_SUITES = ("data", "train", "serve")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command()
    def bench(
        suite: Annotated[
            str,
            typer.Option(help="data | train | serve | quality | cluster | all (all = data, train, serve)"),
        ] = "all",
        large: Annotated[
            bool, typer.Option("--large", help="1,000,000 students x 20,000 lectures instead of the default.")
        ] = False,
        out: Annotated[
            Path, typer.Option(help="Results directory (JSON per suite; RESULTS.md goes next to it).")
        ] = Path("bench/results"),
        budget_minutes: Annotated[
            float, typer.Option(min=0.01, help="Time budget per item; past it the item is skipped.")
        ] = 20.0,
        model: Annotated[
            list[str] | None, typer.Option("--model", "-m", help="train: only this model (repeatable).")
        ] = None,
        serve_model: Annotated[
            list[str] | None,
            typer.Option(
                help="serve: models trained for the champion (repeatable; default all; large lightfm)."
            ),
        ] = None,
        seconds: Annotated[int, typer.Option(min=1, help="serve: length of each wrk run.")] = 20,
        serve_env: Annotated[
            list[str] | None,
            typer.Option(help="serve: NAME=VALUE in the service's environment only (repeatable)."),
        ] = None,
        students: Annotated[
            int | None, typer.Option(min=6, help="Override the number of students (a custom size).")
        ] = None,
        lectures: Annotated[
            int | None, typer.Option(min=1, help="Override the number of lectures (a custom size).")
        ] = None,
        memory_gib: Annotated[
            float | None,
            typer.Option(help="Memory budget per item (RSS); default: available memory less 3 GiB."),
        ] = None,
        data_root: Annotated[
            Path | None, typer.Option(help="Scratch directory (default DATA_DIR/bench).")
        ] = None,
        events: Annotated[
            list[Path] | None,
            typer.Option("--events", help="quality: also score on this event log (CSV/Parquet; repeatable)."),
        ] = None,
        select_budget_seconds: Annotated[
            float,
            typer.Option(
                min=0,
                help="quality: search budget on validation per dataset; serve: the champion's "
                "`learnrec train --budget-seconds`.",
            ),
        ] = 300.0,
    ) -> None:
        """Measure data generation, training and serving; results with machine, commit and command."""
        import datetime as dt

        from features.settings import get_settings
        from training.benchmarks import report
        from training.benchmarks.runner import BenchOptions

        wanted = ALL_SUITES if suite == "all" else (suite,)
        if any(s not in SUITES for s in wanted):
            raise typer.BadParameter(
                f"unknown suite '{suite}': choose data, train, serve, quality, cluster or all"
            )
        missing = [str(f) for f in events or [] if not f.is_file()]
        if missing:
            raise typer.BadParameter(f"no such file: {', '.join(missing)}", param_hint="--events")
        settings = get_settings()

        def say(line: str) -> None:
            typer.echo(line, err=True)

        if "serve" in wanted or "cluster" in wanted:
            _check_wrk(say)

        opts = BenchOptions(
            data_root=(data_root or settings.data_dir / "bench").resolve(),
            large=large,
            budget_s=budget_minutes * 60,
            say=say,
            seed=settings.seed,
            students=students,
            lectures=lectures,
            models=tuple(model) if model else None,
            serve_models=tuple(serve_model) if serve_model else None,
            serve_seconds=seconds,
            memory_budget=int(memory_gib * 2**30) if memory_gib else None,
            events=tuple(str(f.resolve()) for f in events) if events else None,
            select_budget_s=select_budget_seconds,
        )
        if model:
            from training.benchmarks.train_bench import model_names

            try:
                model_names(opts)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--model") from None
        extra_env: dict[str, str] = {}
        for pair in serve_env or []:
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise typer.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--serve-env")
            extra_env[name] = value
        opts.serve_env = extra_env or None
        command = shlex.join(["learnrec", *sys.argv[1:]])
        machine = report.machine_info()
        say(
            f"learnrec bench {', '.join(wanted)} ({opts.size_label}) on {machine['cpu_model']}, "
            f"{machine['nproc']} cores, load {machine['loadavg'][0]}; scratch {opts.data_root}"
        )
        started = time.perf_counter()
        results: list[tuple[SuiteResult, Path]] = []
        for name in wanted:
            suite_started = dt.datetime.now(dt.UTC)
            result = _run_suite(name, opts)
            if name in ("train", "quality") and model:
                result.variant = "models-" + "-".join(model)
            elif name == "serve" and (serve_model or extra_env):
                parts = ["champion-from-" + "-".join(serve_model)] if serve_model else []
                parts += [f"{k}={v}" for k, v in extra_env.items()]
                result.variant = "-".join(parts)
            path = report.write_suite(result, out, command=command, started_at=suite_started, machine=machine)
            results.append((result, path))
            say(f"{name}: wrote {path}")
        markdown = report.write_markdown(out)
        typer.echo("")
        for result, _ in results:
            for line in _summary_lines(result):
                typer.echo(line)
        bad = [i for r, _ in results for i in r.items if i.status == "failed"]
        elapsed = time.perf_counter() - started
        n_items = sum(len(r.items) for r, _ in results)
        typer.echo(
            f"bench {', '.join(wanted)} ({opts.size_label}): {n_items} items in {elapsed / 60:.1f} min, "
            f"{len(bad)} failed; results in {out} and {markdown}"
        )
        if bad:
            raise typer.Exit(1)


def _check_wrk(say: Callable[[str], None]) -> None:
    """First line: what the serve suite needs from the system; stop now when it is missing, not after the
    data and train suites have run."""
    from training.benchmarks.load import WRK_NEEDED

    found = shutil.which("wrk")
    say(f"learnrec bench needs {WRK_NEEDED}: {f'found {found}' if found else 'missing'}")
    if not found:
        say("install wrk and rerun, or run the other suites alone (--suite data, --suite train)")
        raise typer.Exit(2)


def _run_suite(name: str, opts: BenchOptions) -> SuiteResult:
    from training.benchmarks import cluster_bench, data_bench, quality_bench, serve_bench, train_bench

    runner = {
        "cluster": cluster_bench.run,
        "data": data_bench.run,
        "train": train_bench.run,
        "serve": serve_bench.run,
        "quality": quality_bench.run,
    }[name]
    return runner(opts)


def _summary_lines(result: SuiteResult) -> list[str]:
    lines = []
    for item in result.items:
        if item.ok and "rps" in item.metrics:
            m = item.metrics
            lines.append(
                f"{result.suite:>5} {item.item:<40} {m['rps']:8,.0f} req/s  p50 {m['p50_ms']:.1f} ms  "
                f"p99 {m['p99_ms']:.1f} ms  errors {m['errors']:,}"
            )
        elif item.ok and item.suite == "quality":
            champion = item.metrics.get("champion")
            best = max(
                ((m, r["ndcg"]) for m, r in item.metrics.get("models", {}).items()),
                key=lambda x: x[1],
                default=("-", 0.0),
            )
            lines.append(
                f"{result.suite:>5} {item.item:<40} champion {champion}, best on test {best[0]} "
                f"ndcg@10 {best[1]:.3f}"
            )
        elif item.ok:
            peak = item.peak_rss_bytes / 2**20
            line = f"{result.suite:>5} {item.item:<40} {item.seconds:8.1f} s  {peak:8,.0f} MiB"
            lines.append(line + (f"  {item.reason}" if item.reason else ""))
        else:
            lines.append(f"{result.suite:>5} {item.item:<40} {item.reason}")
    for key, value in result.summary.items():
        if key.endswith("_text"):
            lines.append(f"{result.suite:>5} {key.removesuffix('_text')}: {value}")
    return lines
