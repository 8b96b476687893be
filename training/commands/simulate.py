"""`learnrec simulate`: synthetic students use the running service over HTTP, or repeated runs in process."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.commands.console import task_progress

if TYPE_CHECKING:
    from rich.progress import Progress

    from features.settings import Settings
    from training.simulate import SimConfig, SimResult

_out = Console()
_err = Console(stderr=True)
_TABLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True}
_SHORT = {
    "enrolment_rate": "enrol rate",
    "completion_rate": "complete rate",
    "enrolments_per_student": "enrols/student",
    "completions_per_student": "completes/stud.",
}
#: Metrics of the repeated runs (the primary one, `training.ab.stats.PRIMARY_METRIC`, first).
REPEAT_METRICS = ("enrolments_per_student", "enrolment_rate", "completions_per_student", "completion_rate")


def _callback(progress: Progress, description: str) -> Any:
    task = progress.add_task(description, total=None)

    def update(stage: str, done: int, total: int) -> None:
        progress.update(task, completed=done, total=total or None, description=f"{description}: {stage}")

    return update


def _regions(value: str) -> tuple[str, ...]:
    regions = tuple(dict.fromkeys(r.strip() for r in value.split(",") if r.strip()))
    if not regions:
        raise typer.BadParameter("name at least one region, e.g. gimpo,taebaek", param_hint="--regions")
    return regions


def _start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint="--start") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}%"


def simulate(
    url: Annotated[
        str | None, typer.Option(help="Service base URL (an HTTP run), e.g. http://127.0.0.1:8000.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="LEARNREC_API_KEY", help="The portal's API key (X-API-Key).")
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(help="Synthetic dataset whose students visit (default <data_dir>/datasets/synthetic)."),
    ] = None,
    regions: Annotated[
        str, typer.Option(help="Comma-separated regions whose students visit.")
    ] = "gimpo,taebaek",
    days: Annotated[int, typer.Option(min=1, help="Simulated days.")] = 14,
    students_per_day: Annotated[int, typer.Option(min=1, help="Students visiting per simulated day.")] = 200,
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Lectures per list.")] = 10,
    seed: Annotated[int | None, typer.Option(help="Seed of every draw (default settings.seed).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="HTTP requests in flight.")] = 4,
    start: Annotated[
        str | None, typer.Option(help="First simulated instant (ISO, UTC); default after the dataset's data.")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(help="Run name: part of event ids and of the export directory (default seed<N>)."),
    ] = None,
    register: Annotated[
        bool, typer.Option(help="PUT the visiting students' profiles first, as the portal does.")
    ] = True,
    report: Annotated[bool, typer.Option(help="Write the A/B report of the run's experiment.")] = True,
    experiments_file: Annotated[
        Path | None,
        typer.Option("--experiments", help="Experiments YAML (default settings.service.experiments_file)."),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option(help="Experiment to report (default: the one the service assigned).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Export directory of an HTTP run (default <data_dir>/exports/<run>).")
    ] = None,
    repeat: Annotated[
        int | None,
        typer.Option(min=1, help="Run the in-process fast path N times (A/A or A/B statistics); no HTTP."),
    ] = None,
    control: Annotated[
        str, typer.Option(help="--repeat: registered alias or version serving the control.")
    ] = "champion",
    treatment: Annotated[
        str | None,
        typer.Option(help="--repeat: alias or version serving the treatment (default: the control: A/A)."),
    ] = None,
    share: Annotated[float, typer.Option(help="--repeat: share of students in the treatment.")] = 0.5,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="--repeat: results file (default <data_dir>/reports/...).")
    ] = None,
    visits: Annotated[
        str,
        typer.Option(
            help="Who visits each day: activity (students active lately come back more often; the "
            "documented default assumption, training.simulate.Visiting) or uniform (every student alike)."
        ),
    ] = "activity",
    daily_looks: Annotated[
        bool,
        typer.Option(
            help="--repeat: also read the primary metric every simulated day (fixed-horizon vs sequential)."
        ),
    ] = False,
) -> None:
    """Synthetic students visit, get lists, enrol and complete (hidden truth of a synthetic dataset).

    With --url they use the running service over HTTP (profiles PUT, GET /recommendations, POST /events);
    the run's events and exposures are then exported from the Redis streams and reported. With --repeat N
    the same simulation runs N times in process (the service's ranking and assignment code, no HTTP) and
    the share of significant results is printed: the false-positive rate of an A/A test (treatment =
    control) or the power of an A/B test.
    """
    from features.settings import get_settings
    from training.simulate import SimConfig, Visiting

    settings = get_settings()
    if not 0 < alpha < 1:
        raise typer.BadParameter(f"must be in (0, 1), got {alpha}", param_hint="--alpha")
    if repeat is None and url is None:
        raise typer.BadParameter(
            "give --url for a run against the service, or --repeat N for in-process runs"
        )
    if repeat is not None and url is not None:
        raise typer.BadParameter("--repeat runs in process: drop --url (or drop --repeat for an HTTP run)")
    try:
        config = SimConfig(
            regions=_regions(regions), days=days, students_per_day=students_per_day, k=k,
            seed=settings.seed if seed is None else seed, start=_start(start), run=run,
            visiting=Visiting(mode=visits),
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    dataset_dir = dataset or settings.datasets_dir / "synthetic"
    if repeat is not None:
        if not 0 < share < 1:
            raise typer.BadParameter(f"must be in (0, 1), got {share}", param_hint="--share")
        _repeat(
            settings, config, dataset_dir, repeat, control, treatment or control, share, alpha, json_out,
            daily_looks,
        )  # fmt: skip
    else:
        assert url is not None
        if not api_key:
            raise typer.BadParameter(
                "give the portal's key (or set LEARNREC_API_KEY)", param_hint="--api-key"
            )
        _http(settings, config, dataset_dir, url, api_key, concurrency, register, report,
              experiments_file, experiment, out)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# in-process repetitions


def _load(settings: Settings, refs: list[str]) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from models.errors import ModelFormatError, RegisteredModelNotFoundError
    from models.loading import load_registered
    from training.errors import SimulationError

    name = settings.mlflow.registered_model
    loaded: dict[str, Any] = {}
    for ref in dict.fromkeys(refs):
        try:
            loaded[ref] = load_registered(name, ref, settings.tracking_uri())
        except (RegisteredModelNotFoundError, ModelFormatError) as exc:
            raise SimulationError(str(exc)) from None
        except MlflowException as exc:
            raise SimulationError(f"MLflow registry at {settings.tracking_uri()}: {exc.message}") from None
    return loaded


def _repeat(
    settings: Settings,
    config: SimConfig,
    dataset_dir: Path,
    repetitions: int,
    control: str,
    treatment: str,
    share: float,
    alpha: float,
    json_out: Path | None,
    daily_looks: bool = False,
) -> None:
    from training.simulate import load_population, prepare_models, repeat_experiment

    started = time.perf_counter()
    kind = "A/A" if control == treatment else "A/B"
    with task_progress() as progress:
        task = progress.add_task(f"loading {dataset_dir} and the models", total=None)
        population = load_population(dataset_dir, config.regions)
        loaded = _load(settings, [control, treatment])
        models = prepare_models({"control": loaded[control], "treatment": loaded[treatment]})
        progress.update(
            task,
            total=1,
            completed=1,
            description=f"{len(population):,} students of {', '.join(config.regions)}",
        )
        summary = repeat_experiment(
            population, models, {"control": 1 - share, "treatment": share}, config, repetitions, alpha=alpha,
            metrics=REPEAT_METRICS, looks=daily_looks, progress=_callback(progress, f"{kind} repetitions"),
        )  # fmt: skip
    versions = {v: m.version for v, m in models.items()}
    labels = {
        v: f"{ref} (v{versions[v]}, {models[v].recommender.name})"
        for v, ref in (("control", control), ("treatment", treatment))
    }
    table = Table(
        title=f"{kind}: {repetitions} runs of {config.days} days x {config.students_per_day} students/day, "
        f"alpha {alpha} (regions Holm-adjusted)",
        **_TABLE,
    )
    for col in ("metric", "region"):  # names may wrap in a narrow terminal; numbers are never cut
        table.add_column(col, justify="left", overflow="fold")
    for col in ("method", "n c/t", "signif.", "up", "down", "lift", "MDE", "VR", "p"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for r in summary.rates():
        table.add_row(
            _SHORT.get(r["metric"], r["metric"]), r["region"], r["method"],
            f"{r['mean_control_students']:.0f}/{r['mean_treatment_students']:.0f}",
            _pct(r["significant"]), _pct(r["significant_up"]), _pct(r["significant_down"]),
            "-" if not math.isfinite(r["mean_abs_lift"]) else f"{r['mean_abs_lift']:+.3f}",
            "-" if not math.isfinite(r["mde"]) else f"{r['mde']:.3f}",
            _pct(r["variance_reduction"]),
            "-" if not math.isfinite(r["mean_p"]) else f"{r['mean_p']:.2f}",
        )  # fmt: skip
    _out.print(table)
    if daily_looks:
        looks = Table(title=f"daily looks at the primary metric over {config.days} days", **_TABLE)
        for col in ("method", "region", "fixed, ever", "fixed, last day", "sequential, ever", "first day"):
            looks.add_column(col, justify="left" if col in ("method", "region") else "right", no_wrap=True)
        for r in summary.look_rates():
            looks.add_row(
                r["method"], r["region"], _pct(r["fixed_ever"]), _pct(r["fixed_last"]),
                _pct(r["sequential_ever"]),
                "-" if not math.isfinite(r["first_day"]) else f"{r['first_day']:.1f}",
            )  # fmt: skip
        _out.print(looks)
    _out.print(
        "signif. = share of runs with p < alpha (up/down: by the sign of the lift); lift and p are means "
        "over runs (treatment - control); MDE = smallest lift the sample detects with 80% power (regions "
        "at alpha / regions): the sample allows a region's comparison when |lift| exceeds it; method cuped = "
        "adjusted by the students' enrolments and completions in the 28 days before their first exposure, "
        "VR = variance reduction of the difference",
        highlight=False,
    )
    from training.ab.stats import PRIMARY_METRIC

    primary = PRIMARY_METRIC
    pooled = summary.p_values(primary, "pooled")
    uniform = ""
    if kind == "A/A" and len(pooled) >= 5:
        from scipy import stats

        ks = stats.kstest(summary.p_values(primary, "pooled", "cuped"), "uniform")
        uniform = f"; pooled {primary} p-values vs uniform: KS p = {ks.pvalue:.3f}"
    path = (
        json_out or settings.data_dir / "reports" / f"simulate-{kind.replace('/', '')}-{config.run_name}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    document = summary.to_dict()
    document["models"] = labels
    document["dataset"] = str(dataset_dir)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    rate = next(
        r
        for r in summary.rates()
        if r["metric"] == primary and r["region"] == "pooled" and r["method"] == "cuped"
    )
    if kind == "A/A":
        what = f"false-positive rate {_pct(rate['significant'])}"
    else:
        what = (
            f"significant {_pct(rate['significant'])} (treatment better {_pct(rate['significant_up'])}, "
            f"worse {_pct(rate['significant_down'])})"
        )
    _out.print(
        f"{kind} {labels['control']} vs {labels['treatment']}: {repetitions} runs in "
        f"{time.perf_counter() - started:.0f} s; pooled {primary} (CUPED): {what}{uniform}; "
        f"results {path}",
        highlight=False,
        soft_wrap=True,
    )


# ----------------------------------------------------------------------------------------------------------
# one run over HTTP


def _http(
    settings: Settings,
    config: SimConfig,
    dataset_dir: Path,
    url: str,
    api_key: str,
    concurrency: int,
    register: bool,
    report: bool,
    experiments_file: Path | None,
    experiment: str | None,
    out: Path | None,
) -> None:
    from redis.exceptions import RedisError

    from features.errors import FeatureStoreError
    from features.redis_server import connect
    from training.ab.report import write_run_clock
    from training.errors import SimulationError
    from training.simulate import (
        HttpBackend,
        export_run,
        load_population,
        mark_streams,
        set_aside_previous_export,
        simulate,
    )

    started = time.perf_counter()
    out_dir = out or settings.data_dir / "exports" / config.run_name
    aside = set_aside_previous_export(out_dir)
    if aside is not None:
        _out.print(f"an earlier export of run '{config.run_name}' was moved to {aside}", highlight=False)
    with task_progress() as progress:
        task = progress.add_task(f"loading {dataset_dir}", total=None)
        population = load_population(dataset_dir, config.regions)
        progress.update(
            task,
            total=1,
            completed=1,
            description=f"{len(population):,} students of {', '.join(config.regions)}",
        )
        try:
            client = connect(settings, bulk=True)
            mark_streams(client, config.run_name, settings.redis.shards())
        except (RedisError, FeatureStoreError, OSError) as exc:
            raise SimulationError(f"Redis (the service's streams) is not reachable: {exc}") from None
        with HttpBackend(url, api_key, concurrency=concurrency) as backend:
            if register:
                profiles = [population.profiles[s] for s in population.student_ids]
                backend.register_students(profiles, _callback(progress, f"PUT /students ({len(profiles):,})"))
            result = simulate(
                config, population, backend, _callback(progress, f"simulating {config.days} days")
            )
        try:
            exported = export_run(
                client, config.run_name, out_dir, expect_exposures=result.visits - result.failed,
                progress=_callback(progress, "exporting the streams"), clock=result.clock,
                shards=settings.redis.shards(),
            )  # fmt: skip
        except (RedisError, FeatureStoreError, OSError) as exc:
            raise SimulationError(
                f"exporting the run's streams failed (rerun the export later): {exc}"
            ) from None
        write_run_clock(out_dir, result.start, result.end)  # `ab report` on the export reads its clock
    _print_run(result)
    notes = [
        f"exported {exported.events:,} events and {exported.exposures:,} exposures to {out_dir}"
        + (f" ({exported.rejected} undecodable, see *.rejected.jsonl)" if exported.rejected else "")
    ]
    if exported.events < result.posted.accepted:
        notes.append(
            f"[yellow]the service accepted {result.posted.accepted:,} events but {exported.events:,} reached "
            f"the events stream of {settings.redis.url or 'the embedded Redis'}: is the service using "
            "another Redis? (set LEARNREC_REDIS__URL to the service's)[/]"
        )
    if exported.exposures < result.visits - result.failed:
        notes.append(
            f"[yellow]the service logged {exported.exposures:,} exposures for "
            f"{result.visits - result.failed:,} answered calls: exposure logging is missing or lagging[/]"
        )
    if report:
        notes.append(_report(settings, result, exported, experiments_file, experiment, population))
    for note in notes:
        _out.print(note, highlight=False, soft_wrap=True)
    _out.print(
        f"simulated {config.days} days ({result.start:%Y-%m-%d} to {result.end:%Y-%m-%d} UTC) of "
        f"{len({s for a in result.arms.values() for s in a.students}):,} students: {result.visits:,} calls "
        f"({result.failed} failed), {result.enrolments:,} enrolments, {result.completions:,} completions, "
        f"{result.posted.accepted:,} events accepted in {time.perf_counter() - started:.0f} s",
        highlight=False,
        soft_wrap=True,
    )


def _print_run(result: SimResult) -> None:
    table = Table(title=f"run {result.run}: per experiment arm", **_TABLE)
    label_width = max((len(label) for label in result.arms), default=0)
    table.add_column("experiment/variant", no_wrap=True, min_width=label_width)  # never cut a label
    for col in ("visits", "students", "shown", "enrols", "completes", "enrol/visit"):
        table.add_column(col, justify="right")
    for label, arm in sorted(result.arms.items()):
        table.add_row(
            label, f"{arm.visits:,}", f"{len(arm.students):,}", f"{arm.shown:,}", f"{arm.enrolments:,}",
            f"{arm.completions:,}", f"{arm.enrolments / arm.visits:.2f}" if arm.visits else "-",
        )  # fmt: skip
    _out.print(table)
    posted = result.posted
    _out.print(
        f"events: {posted.accepted:,} accepted, {posted.duplicates:,} duplicates, "
        f"{posted.rejected:,} rejected; {result.censored:,} fall after the window (not sent)",
        highlight=False,
    )
    for error in posted.errors[:5] + result.errors[:5]:
        _err.print(f"[yellow]{escape(error)}[/]", highlight=False, soft_wrap=True)


def _report(
    settings: Settings,
    result: SimResult,
    exported: Any,
    experiments_file: Path | None,
    key: str | None,
    population: Any = None,
) -> str:
    """Write the A/B report of the run's experiment; returns a line saying what happened.

    The population's history (the dataset's events before the run) gives the CUPED covariates, its
    profiles the equity groups; the registry names the models behind the variants.
    """
    from datetime import timedelta

    from features.errors import LearnrecDataError
    from features.experiments import ExperimentConfigError, load_experiments
    from training.ab.errors import ABError
    from training.ab.exposures import read_events, read_exposures
    from training.ab.report import build_report, on_run_clock, write_report
    from training.ab.stats import PRIMARY_METRIC, metric
    from training.commands.ab import served_models

    seen = sorted({label.split("/")[0] for label in result.arms if label != "-"})
    if key is None:
        if len(seen) != 1:
            assigned = "several: " + ", ".join(seen) if seen else "no experiment"
            return f"no report: the service assigned {assigned} (pass --experiment)"
        key = seen[0]
    path = experiments_file or settings.service.experiments_file
    if path is None:
        return f"no report: no experiments file to read '{key}' from (pass --experiments)"
    try:
        config = load_experiments(path)
        exp = next((e for e in config.experiments if e.key == key), None)
        if exp is None:
            return f"no report: experiment '{key}' is not in {path}"
        sources = {"exposures_path": str(exported.exposures_dir), "events_path": str(exported.events_dir)}
        exp = on_run_clock(exp, result.start, result.end, sources)
        exposures = read_exposures(exported.exposures_dir)
        students = None
        if population is not None:
            import pandas as pd

            students = pd.DataFrame(
                [
                    {"student_id": p.student_id, "support_category": p.support_category, "grade": p.grade}
                    for p in population.profiles.values()
                ]
            )
        rep = build_report(
            exposures, read_events(exported.events_dir), exp,
            window=timedelta(days=7), sources=sources,
            history=None if population is None else population.history, students=students,
            models=served_models(settings, exposures, exp),
        )  # fmt: skip
        html_path, _ = write_report(rep, settings.data_dir / "reports" / f"ab-{key}-{result.run}.html")
    except (ExperimentConfigError, LearnrecDataError, ABError) as exc:
        return f"[yellow]no report: {escape(str(exc))}[/]"
    pooled = next(
        c for c in rep.data["comparisons"] if c["metric"] == PRIMARY_METRIC and c["region"] == "pooled"
    )
    p = pooled["p_adjusted"]
    lift = metric(PRIMARY_METRIC).show_lift(pooled["estimate"]["abs_lift"])
    from training.ab.report import model_label

    served = rep.data.get("models", {})
    names = {v: f"{v} ({model_label(served[v])})" if v in served else v for v in served}
    flags = [
        f"{r['group']} ({attribute})"
        for attribute, rows in rep.data.get("equity", {}).items()
        for r in rows
        if r["helps_less"]
    ]
    t, c = pooled["treatment"]["variant"], pooled["control"]["variant"]
    return (
        f"A/B report {html_path} (+ .json): pooled {PRIMARY_METRIC} {names.get(t, t)} - "
        f"{names.get(c, c)} = {lift}, p = {'-' if p is None else f'{p:.4f}'}"
        + (f"; helps significantly less: {', '.join(flags)}" if flags else "")
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(simulate)
