"""`learnrec train | tune | compare | promote`: fit and evaluate models, log them to MLflow, move aliases."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.commands.console import fail, rich_steps, task_progress
from training.pipeline import Trained, prepare, run_training

if TYPE_CHECKING:
    from features.settings import Settings

_out = Console()
_err = Console(stderr=True)
#: Compact tables (fit 80 columns): the style of the other learnrec commands.
TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True}

SPLITS = "temporal | leave_last_n | new_students | new_region | explicit"
SplitOpt = Annotated[str, typer.Option("--split", help=SPLITS)]
DatasetOpt = Annotated[
    Path | None, typer.Option("--dataset", help="Dataset directory (default <data_dir>/datasets/synthetic).")
]
CutoffOpt = Annotated[
    str | None, typer.Option(help="temporal: cutoff instant (ISO, UTC); default a quantile.")
]
QuantileOpt = Annotated[float | None, typer.Option(help="temporal: quantile of event times (default 0.8).")]
HorizonOpt = Annotated[
    float | None,
    typer.Option(
        "--horizon-days",
        help="temporal: days after the cutoff whose events are tested (default 14; 0 = all later events).",
    ),
]
HoldoutOpt = Annotated[
    int | None, typer.Option("--holdout", help="leave_last_n: lectures held out (default 1).")
]
FractionOpt = Annotated[
    float | None, typer.Option(help="new_students: share of students held out (default 0.2).")
]
RegionOpt = Annotated[str | None, typer.Option(help="new_region: region held out (default taebaek).")]
TrainEventsOpt = Annotated[Path | None, typer.Option(help="explicit: training events (.parquet/.csv).")]
TestEventsOpt = Annotated[Path | None, typer.Option(help="explicit: test events (.parquet/.csv).")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--param", help="Hyper-parameter NAME=VALUE (JSON value), or MODEL.NAME=VALUE with several models."
    ),
]
ExperimentOpt = Annotated[
    str | None, typer.Option(help="MLflow experiment (default settings.mlflow.experiment).")
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of models and splits (default settings.seed).")]


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_params(values: list[str] | None, models: list[str]) -> dict[str, dict[str, Any]]:
    """`--param` values as per-model keyword arguments.

    Args:
        values: ``NAME=VALUE`` or ``MODEL.NAME=VALUE`` strings (VALUE parsed as JSON when it is JSON).
        models: the models being trained.

    Returns:
        model -> {name: value}.

    Raises:
        typer.BadParameter: a malformed value, an unknown model, or a bare NAME with several models.
    """
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for raw in values or []:
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(
                f"{raw!r}: expected NAME=VALUE or MODEL.NAME=VALUE", param_hint="--param"
            )
        model, dot, name = key.partition(".")
        if dot and model in out:
            out[model][name] = _parse_value(value)
        elif dot and model not in out and key.split(".")[0] in _model_names():
            raise typer.BadParameter(f"{raw!r}: model '{model}' is not being trained", param_hint="--param")
        elif len(models) == 1:
            out[models[0]][key] = _parse_value(value)
        else:
            raise typer.BadParameter(
                f"{raw!r}: with several models say which one, e.g. {models[0]}.{key}={value}",
                param_hint="--param",
            )
    return out


def _model_names() -> tuple[str, ...]:
    from models import MODELS

    return tuple(MODELS)


def _split_params(
    split: str,
    *,
    cutoff: str | None,
    quantile: float | None,
    holdout: int | None,
    horizon_days: float | None = None,
    fraction: float | None,
    region: str | None,
    train_events: Path | None,
    test_events: Path | None,
    seed: int,
) -> dict[str, Any]:
    """The keyword arguments of `make_split` from the CLI options; options of another split are refused."""
    from training.splits import SPLITS

    if split not in SPLITS:
        raise typer.BadParameter(
            f"unknown split '{split}': choose one of {', '.join(SPLITS)}", param_hint="--split"
        )
    given = {
        "--cutoff": ("temporal", "cutoff", cutoff),
        "--quantile": ("temporal", "quantile", quantile),
        "--horizon-days": ("temporal", "horizon_days", horizon_days),
        "--holdout": ("leave_last_n", "n", holdout),
        "--fraction": ("new_students", "fraction", fraction),
        "--region": ("new_region", "region", region),
        "--train-events": ("explicit", "train_events", train_events),
        "--test-events": ("explicit", "test_events", test_events),
    }
    params: dict[str, Any] = {}
    for option, (owner, name, value) in given.items():
        if value is None:
            continue
        if owner != split:
            raise typer.BadParameter(f"{option} applies to the {owner} split, not {split}", param_hint=option)
        params[name] = value
    if split == "explicit" and ("train_events" not in params or "test_events" not in params):
        raise typer.BadParameter(
            "the explicit split needs --train-events and --test-events", param_hint="--split"
        )
    if split == "new_students":
        params["seed"] = seed
    return params


def _settings() -> Settings:
    from features.settings import get_settings

    return get_settings()


def _client(settings: Settings) -> Any:
    """An MLflow client on the project's store, with MLflow's INFO chatter kept out of the display."""
    import logging

    import mlflow  # configures its loggers on import: quieten them after that

    from training import tracking

    logging.getLogger(mlflow.__name__).setLevel(logging.WARNING)
    return tracking.configure(settings)


def _summary_table(results: list[Trained], ks: tuple[int, ...]) -> Table:
    k = ks[0]
    table = Table(title=f"learnrec train: metrics at k={k}", **TABLE_STYLE)
    for col in ("model", "val ndcg", "ndcg", "recall", "prec", "cover", "fit s", "run", "version"):
        table.add_column(col, justify="left" if col in ("model", "run") else "right", no_wrap=True)
    for r in results:
        if r.report is None:
            table.add_row(r.model, "", "[red]failed[/]", "", "", "", "", "", "")
            continue
        o = r.report.overall
        table.add_row(
            r.model,
            "-" if r.validation is None else f"{r.validation:.4f}",
            f"{o.get(f'ndcg_at_{k}', 0.0):.4f}",
            f"{o.get(f'recall_at_{k}', 0.0):.4f}",
            f"{o.get(f'precision_at_{k}', 0.0):.4f}",
            f"{o.get(f'coverage_at_{k}', 0.0):.4f}",
            f"{r.fit_seconds:.1f}",
            (r.run_id or "")[:8],
            r.version or "",
        )
    return table


def _dataset_dir(dataset: Path | None, settings: Settings) -> Path:
    return dataset if dataset is not None else settings.datasets_dir / "synthetic"


def train(
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model name (repeatable) or 'all'.")],
    split: SplitOpt = "temporal",
    dataset: DatasetOpt = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="Cut-off (repeatable; the first is primary).")
    ] = None,
    register: Annotated[
        bool,
        typer.Option("--register", help="Register the models; the best becomes champion if there is none."),
    ] = False,
    param: ParamOpt = None,
    experiment: ExperimentOpt = None,
    seed: SeedOpt = None,
    oracle: Annotated[bool, typer.Option(help="Also log the ground-truth oracle (synthetic data).")] = True,
    metric: Annotated[str, typer.Option(help="Metric that picks the champion with --register.")] = "ndcg",
    budget_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            help="Time for the search on validation beyond each model's defaults (0: defaults only).",
        ),
    ] = 600.0,
    cutoff: CutoffOpt = None,
    quantile: QuantileOpt = None,
    horizon_days: HorizonOpt = None,
    holdout: HoldoutOpt = None,
    fraction: FractionOpt = None,
    region: RegionOpt = None,
    train_events: TrainEventsOpt = None,
    test_events: TestEventsOpt = None,
) -> None:
    """Fit models on a split, evaluate them and log one MLflow run per model (params, metrics, pyfunc)."""

    settings = _settings()
    names = list(_model_names()) if "all" in model else list(dict.fromkeys(model))
    unknown = [m for m in names if m not in _model_names()]
    if unknown:
        raise typer.BadParameter(
            f"unknown model {', '.join(unknown)}: choose from {', '.join(_model_names())} or all",
            param_hint="--model",
        )
    ks = tuple(dict.fromkeys(k or [10]))
    if any(x < 1 for x in ks):
        raise typer.BadParameter("must be >= 1", param_hint="--k")
    seed = settings.seed if seed is None else seed
    split_params = _split_params(
        split, cutoff=cutoff, quantile=quantile, horizon_days=horizon_days, holdout=holdout,
        fraction=fraction, region=region, train_events=train_events, test_events=test_events, seed=seed,
    )  # fmt: skip
    model_params = parse_params(param, names)
    dataset_dir = _dataset_dir(dataset, settings)
    experiment = experiment or settings.mlflow.experiment
    started = time.perf_counter()
    with task_progress() as progress:
        run = run_training(
            names, split, split_params, dataset_dir=dataset_dir, ks=ks, params=model_params,
            experiment=experiment, seed=seed, register_models=register, oracle=oracle, metric=metric,
            settings=settings, client=_client(settings), budget_seconds=budget_seconds,
            step=rich_steps(progress),
        )  # fmt: skip
    for line in run.messages:
        _err.print(escape(line), highlight=False, soft_wrap=True)
    results = run.results
    _out.print(_summary_table(results, ks))
    done = [r for r in results if r.report is not None and r.model != "oracle"]
    failed = [r for r in results if r.error]
    key = f"ndcg_at_{ks[0]}"
    best = max(done, key=lambda r: float("-inf") if r.validation is None else r.validation, default=None)
    if best is not None and best.report is not None:
        from training.compare import equity_table

        _out.print(
            equity_table(
                best.report,
                f"{best.model}'s served lists per group (every model's: evaluation/equity.csv of its run)",
            )
        )
    best_text = (
        f"champion (best on validation) {best.model}: test ndcg@{ks[0]} = "
        f"{best.report.overall.get(key, 0.0):.4f}"
        if best and best.report
        else "no model"
    )
    elapsed = time.perf_counter() - started
    _out.print(
        f"trained {len(done)} of {len(names)} models on the {split} split in {elapsed:.1f} s; "
        f"{best_text}; experiment '{experiment}' at {settings.tracking_uri()}",
        highlight=False,
        soft_wrap=True,
    )
    if failed:
        for r in failed:
            _err.print(
                f"[bold red]{r.model} failed:[/] {escape(r.error or '')}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(code=1)


def tune(
    model: Annotated[str, typer.Option("--model", "-m", help="Model to tune.")],
    trials: Annotated[int, typer.Option(help="Number of Optuna trials.")] = 20,
    split: SplitOpt = "temporal",
    dataset: DatasetOpt = None,
    k: Annotated[int, typer.Option("--k", help="Cut-off of the optimised metric.")] = 10,
    metric: Annotated[str, typer.Option(help="Metric to maximise (ndcg, recall, map ...).")] = "ndcg",
    param: ParamOpt = None,
    experiment: ExperimentOpt = None,
    seed: SeedOpt = None,
    cutoff: CutoffOpt = None,
    quantile: QuantileOpt = None,
    horizon_days: HorizonOpt = None,
    holdout: HoldoutOpt = None,
    fraction: FractionOpt = None,
    region: RegionOpt = None,
    train_events: TrainEventsOpt = None,
    test_events: TestEventsOpt = None,
) -> None:
    """Search hyper-parameters with Optuna (seeded TPE); each trial is a nested MLflow run."""
    from training import splits, tracking
    from training.metrics import METRICS
    from training.tuning import SPACES
    from training.tuning import tune as run_study

    settings = _settings()
    if model not in SPACES:
        raise typer.BadParameter(
            f"unknown model '{model}': choose one of {', '.join(SPACES)}", param_hint="--model"
        )
    if metric not in METRICS:
        raise typer.BadParameter(
            f"unknown metric '{metric}': choose one of {', '.join(METRICS)}", param_hint="--metric"
        )
    if trials < 1 or k < 1:
        raise typer.BadParameter("--trials and --k must be >= 1")
    seed = settings.seed if seed is None else seed
    split_params = _split_params(
        split, cutoff=cutoff, quantile=quantile, horizon_days=horizon_days, holdout=holdout,
        fraction=fraction, region=region, train_events=train_events, test_events=test_events, seed=seed,
    )  # fmt: skip
    base = parse_params(param, [model])[model]
    dataset_dir = _dataset_dir(dataset, settings)
    experiment = experiment or settings.mlflow.experiment
    started = time.perf_counter()
    with task_progress() as progress:
        prepared = prepare(dataset_dir, split, split_params, rich_steps(progress))
        client = _client(settings)
        experiment_id = tracking.ensure_experiment(client, experiment, settings)
        task = progress.add_task(f"tuning {model}", total=trials)
        best: list[float] = []

        def on_trial(number: int, value: float | None, _params: dict[str, Any]) -> None:
            if value is not None:
                best.append(max([value, *best]))
            shown = f"best {metric}@{k} = {best[-1]:.4f}" if best else "no trial completed yet"
            progress.update(task, advance=1, description=f"tuning {model}: trial {number + 1}, {shown}")

        result = run_study(
            model, prepared.split, prepared.dataset, prepared.data, trials=trials,
            experiment_id=experiment_id, fingerprint=prepared.fingerprint,
            dataset_dir=prepared.dataset_dir, metric=metric, ks=(k,), seed=seed,
            base_params=splits.split_model_params(model, base, prepared.split),
            on_trial=on_trial,
        )  # fmt: skip
    table = Table(title=f"best {model} parameters (trial {result.best_trial})", **TABLE_STYLE)
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for name, value in sorted(result.best_params.items()):
        table.add_row(name, f"{value:.6g}" if isinstance(value, float) else str(value))
    _out.print(table)
    args = " ".join(f"--param {n}={json.dumps(v)}" for n, v in sorted(result.best_params.items()))
    if horizon_days is not None:
        args = f"--horizon-days {horizon_days:g} {args}"
    _out.print(
        f"retrain it with: learnrec train --model {model} --split {split} {args}",
        highlight=False,
        soft_wrap=True,
    )
    _out.print(
        f"tuned {model}: {result.completed} trials completed, {result.pruned} pruned in "
        f"{time.perf_counter() - started:.1f} s; best {metric}@{k} = {result.best_value:.4f}; "
        f"parent run {result.parent_run_id}",
        highlight=False,
        soft_wrap=True,
    )


def compare(
    experiment: ExperimentOpt = None,
    split: Annotated[
        str | None, typer.Option("--split", help=f"{SPLITS} (default: the newest run's).")
    ] = None,
    k: Annotated[
        int | None, typer.Option("--k", help="Cut-off to show (default: the runs' primary k).")
    ] = None,
    metric: Annotated[str, typer.Option(help="Metric shown per region.")] = "ndcg",
    fingerprint: Annotated[
        str | None,
        typer.Option(help="Dataset fingerprint (prefix) to compare on (default: the newest run's)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="HTML file (default <data_dir>/reports/compare-SPLIT.html).")
    ] = None,
    horizon_days: Annotated[
        float | None,
        typer.Option(
            "--horizon-days",
            help="temporal: compare runs tested on this horizon (0 = unbounded; default: the newest run's).",
        ),
    ] = None,
) -> None:
    """Show the latest run of each model side by side (per region too) and write an HTML page with charts.

    Only runs of one evaluation are shown: the same split, dataset and split parameters (cutoff,
    horizon ...) as the newest matching run.
    """
    from training.compare import collect, terminal_tables, write_html

    settings = _settings()
    experiment = experiment or settings.mlflow.experiment
    wanted: dict[str, Any] = {}
    if horizon_days is not None:
        split = split or "temporal"
        if split != "temporal":
            raise typer.BadParameter(
                f"--horizon-days applies to the temporal split, not {split}", param_hint="--horizon-days"
            )
        if horizon_days < 0:
            raise typer.BadParameter("must be >= 0 (0 = unbounded)", param_hint="--horizon-days")
        wanted["horizon_days"] = (
            None if horizon_days == 0 else int(horizon_days) if horizon_days.is_integer() else horizon_days
        )
    client = _client(settings)
    with _err.status("reading runs..."):
        comparison = collect(client, experiment, split, k=k, fingerprint=fingerprint, split_params=wanted)
    if not comparison.runs:
        on = f" on the {split} split" if split else ""
        raise fail(
            f"no finished runs{on} in experiment '{experiment}' ({settings.tracking_uri()}): "
            f"run `learnrec train --model all --split {split or 'temporal'}` first"
        )
    split = comparison.split
    for table in terminal_tables(comparison, metric):
        _out.print(table)
    leader = next((r for r in comparison.runs if r.kind != "oracle"), None)
    if leader is not None:
        from training.compare import equity_table
        from training.errors import TrackingError
        from training.tracking import load_report

        try:
            report = load_report(client, leader.run_id)
        except TrackingError as exc:
            _err.print(f"no equity table for {leader.model}: {escape(str(exc))}", highlight=False)
        else:
            if report.slots:
                _out.print(
                    equity_table(report, f"{leader.model}'s served lists per group (run {leader.run_id[:8]})")
                )
    path = out or settings.data_dir / "reports" / f"compare-{split}.html"
    with _err.status("drawing charts..."):
        write_html(comparison, path, metric)
    skipped = (
        f" ({comparison.skipped} runs of other datasets or split parameters not shown)"
        if comparison.skipped
        else ""
    )
    _out.print(
        f"compared {len(comparison.runs)} models on the {split} split{skipped}; report: {path}",
        soft_wrap=True,
    )


def _print_history(moves: list[Any], name: str, experiment: str) -> None:
    metrics = sorted({m.metric for m in moves})
    table = Table(title=f"alias history of '{name}' ({', '.join(metrics) or 'no moves'})", **TABLE_STYLE)
    for col in ("when (UTC)", "alias", "move", "model", "value (was)", "by", "forced"):
        table.add_column(col, no_wrap=True)
    notes: list[str] = []
    for m in moves:
        value = "-" if m.to_value is None else f"{m.to_value:.4f}"
        if m.from_value is not None:
            value += f" ({m.from_value:.4f})"
        if len(metrics) > 1:
            value = f"{m.metric} {value}"
        forced = "no"
        if m.forced:
            notes.append(
                f"[{len(notes) + 1}] {m.when:%Y-%m-%d %H:%M:%S} {m.alias} v{m.to_version}: {m.reason}"
            )
            forced = f"[yellow]yes [{len(notes)}][/]"
        table.add_row(
            f"{m.when:%m-%d %H:%M}", m.alias,
            f"v{m.from_version}->v{m.to_version}" if m.from_version else f"v{m.to_version}", m.model,
            value, m.by, forced,
        )  # fmt: skip
    _out.print(table)
    for note in notes:
        _out.print(escape(note), highlight=False, soft_wrap=True)
    _out.print(f"{len(moves)} alias moves recorded in experiment '{experiment}'")


def _v(version: str | None) -> str:
    return f"v{version}" if version else "-"


def promote(
    run_id: Annotated[
        str | None, typer.Option(help="Training run whose model to promote (registered if needed).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Registered version to promote.")] = None,
    alias: Annotated[str, typer.Option(help="Alias to move: champion or challenger.")] = "champion",
    metric: Annotated[str, typer.Option(help="Metric a new champion must not be worse on.")] = "ndcg_at_10",
    force: Annotated[bool, typer.Option(help="Promote even when worse or differently evaluated.")] = False,
    by: Annotated[str | None, typer.Option(help="Who promotes (default $USER).")] = None,
    show_history: Annotated[
        bool, typer.Option("--history", help="Print the alias history and exit.")
    ] = False,
) -> None:
    """Point an alias (champion/challenger) at a model version; refuses a worse champion unless --force."""
    from training import registry

    settings = _settings()
    name = settings.mlflow.registered_model
    client = _client(settings)
    if show_history:
        _print_history(registry.history(client, name), name, registry.AUDIT_EXPERIMENT)
        return
    if (run_id is None) == (version is None):
        raise typer.BadParameter("give exactly one of --run-id and --version (or --history)")
    if run_id is not None:
        version = str(registry.register_run(client, run_id, name).version)
    assert version is not None
    move = registry.promote(
        client, name, version, alias, metric=metric, force=force, by=by, settings=settings
    )
    if move is None:
        _out.print(f"'{name}'@{alias} already points at v{version}; nothing to do")
        return
    if move.forced:
        _err.print(f"[yellow]forced:[/] {escape(move.reason)}", highlight=False, soft_wrap=True)
    values = "" if move.to_value is None else f"; {metric} {move.to_value:.4f}"
    if move.from_value is not None:
        values += f" (was {move.from_value:.4f})"
    _out.print(
        f"'{name}'@{alias}: {_v(move.from_version)} -> v{move.to_version} by {move.by}{values}; "
        f"recorded as run {move.run_id}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(train)
    app.command()(tune)
    app.command()(compare)
    app.command()(promote)
