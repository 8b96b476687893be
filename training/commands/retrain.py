"""`learnrec retrain`: new events -> a new dataset version -> a challenger model; resumable step by step."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.commands.console import fail, task_progress
from training.commands.modelling import HorizonOpt

if TYPE_CHECKING:
    from features.settings import Settings
    from training.retrain import RetrainOptions, RetrainState

_out = Console()
_err = Console(stderr=True)
_TABLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "pad_edge": False, "collapse_padding": True}


def _params(values: list[str] | None) -> dict[str, Any] | None:
    if not values:
        return None
    out: dict[str, Any] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{raw!r}: expected NAME=VALUE", param_hint="--param")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _champion_model(settings: Settings) -> tuple[str, dict[str, Any]] | None:
    """The champion's model name and hyper-parameters, None when there is no champion."""
    import logging

    import mlflow

    from training.registry import CHAMPION, alias_version, candidate
    from training.retrain import signature_params
    from training.tracking import configure

    logging.getLogger(mlflow.__name__).setLevel(logging.WARNING)
    client = configure(settings)
    name = settings.mlflow.registered_model
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return None
    held = candidate(client, name, version)
    params = client.get_run(held.run_id).data.params
    return held.model, signature_params(held.model, dict(params))


def retrain(
    dataset: Annotated[
        Path | None,
        typer.Option(help="Base dataset (default: the newest version of <data_dir>/datasets/synthetic)."),
    ] = None,
    events_dir: Annotated[
        Path | None,
        typer.Option(
            help="Exported events (default <data_dir>/exports/events, as `learnrec events export`)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model to train (default: the champion's kind).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="Hyper-parameter NAME=VALUE (default: the champion's)."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split (default temporal).")] = None,
    cutoff: Annotated[
        str | None, typer.Option(help="temporal: cutoff (ISO, UTC); default just before the first new event.")
    ] = None,
    quantile: Annotated[
        float | None, typer.Option(help="temporal: quantile of event times instead of the cutoff.")
    ] = None,
    horizon_days: HorizonOpt = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default settings.seed).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default settings').")] = None,
    export: Annotated[bool, typer.Option(help="Export the events stream first.")] = True,
    region: Annotated[str, typer.Option(help="Region of the suggested A/B experiment.")] = "taebaek",
    share: Annotated[
        float, typer.Option(help="Share of the region's students to send to the challenger.")
    ] = 0.2,
    days: Annotated[int, typer.Option(min=1, help="Length of the suggested experiment.")] = 14,
    state_file: Annotated[
        Path | None, typer.Option("--state", help="State file (default <data_dir>/retrain/state.json).")
    ] = None,
    restart: Annotated[bool, typer.Option(help="Abandon an unfinished retraining and start afresh.")] = False,
) -> None:
    """Append new events to a new dataset version, retrain, compare with the champion on the same split,
    and register the result as `challenger` (never champion). Rerun after a failure: it continues."""
    from mlflow.exceptions import MlflowException
    from redis.exceptions import RedisError

    from features.errors import LearnrecDataError
    from features.settings import get_settings
    from training.errors import TrainingError
    from training.retrain import RetrainState, begin, run_retrain, state_path

    settings = get_settings()
    if not 0 < share < 1:
        raise typer.BadParameter(f"must be in (0, 1), got {share}", param_hint="--share")
    path = state_file or state_path(settings)
    split_params: dict[str, Any] | None = None
    temporal = {"cutoff": cutoff, "quantile": quantile, "horizon_days": horizon_days}
    if any(v is not None for v in temporal.values()):
        if (split or "temporal") != "temporal":
            raise typer.BadParameter(
                "--cutoff, --quantile and --horizon-days apply to the temporal split", param_hint="--split"
            )
        split_params = {k: v for k, v in temporal.items() if v is not None}
    given = {
        "dataset": str(dataset.resolve()) if dataset else None,
        "events_dir": str(events_dir.resolve()) if events_dir else None,
        "model": model,
        "params": _params(param),
        "split": split,
        "split_params": split_params,
        "seed": seed,
        "experiment": experiment,
    }
    started = time.perf_counter()
    try:
        previous = RetrainState.load(path)
        options = None
        if restart or previous is None or previous.finished:
            options = _new_options(settings, given, export)
        state = begin(path, options, restart=restart, given=given)
        if previous is not None and state.id == previous.id:
            _err.print(
                f"resuming retraining {state.id} after {', '.join(state.steps) or 'no step'} ({path})",
                highlight=False,
            )
        with task_progress() as progress:
            state = run_retrain(state, settings, _callback(progress))
    except (TrainingError, LearnrecDataError) as exc:
        raise fail(f"{exc}{_resume_hint(path)}") from None
    except RedisError as exc:
        raise fail(
            f"Redis (events stream) failed: {exc}; rerun, or pass --no-export{_resume_hint(path)}"
        ) from None
    except MlflowException as exc:
        raise fail(f"MLflow at {settings.tracking_uri()}: {exc.message}{_resume_hint(path)}") from None
    _print_outcome(settings, state, region, share, days)
    _out.print(
        f"retrain {state.id}: {state.outcome} in {time.perf_counter() - started:.0f} s (state {path})",
        highlight=False,
        soft_wrap=True,
    )


def _resume_hint(path: Path) -> str:
    from training.retrain import RetrainState

    try:
        state = RetrainState.load(path)
    except Exception:  # the hint must never hide the real error
        return ""
    if state is None or state.finished:
        return ""
    return f"; finished steps ({', '.join(state.steps) or 'none'}) are kept in {path}: rerun to continue"


def _new_options(settings: Settings, given: dict[str, Any], export: bool) -> RetrainOptions:
    from training.errors import RetrainError
    from training.retrain import RetrainOptions, latest_version

    base = Path(given["dataset"]) if given["dataset"] else latest_version(settings.datasets_dir / "synthetic")
    model, params = given["model"], given["params"]
    if model is None:
        champion = _champion_model(settings)
        if champion is None:
            raise RetrainError(
                f"'{settings.mlflow.registered_model}' has no champion to take the model from: pass --model"
            )
        model, champion_params = champion
        params = champion_params if params is None else params
    events_dir = (
        Path(given["events_dir"]) if given["events_dir"] else settings.data_dir / "exports" / "events"
    )
    return RetrainOptions(
        dataset=str(base.resolve()),
        events_dir=str(events_dir.resolve()),
        model=model,
        params=params or {},
        split=given["split"] or "temporal",
        split_params=given["split_params"] or {},
        seed=settings.seed if given["seed"] is None else given["seed"],
        experiment=given["experiment"] or settings.mlflow.experiment,
        export=export,
    )


def _callback(progress: Any) -> Any:
    tasks: dict[str, Any] = {}
    labels = {
        "export": "exporting the events stream",
        "append": "appending new events to a new dataset version",
        "train": "training and evaluating the challenger",
        "champion": "re-evaluating the champion on the same split",
        "register": "registering the challenger",
    }

    def update(stage: str, done: int, total: int) -> None:
        if stage in labels:
            if stage not in tasks:
                tasks[stage] = progress.add_task(labels[stage], total=1)
            progress.update(tasks[stage], completed=done)
        elif tasks:
            last = list(tasks.values())[-1]
            progress.update(last, description=f"{list(labels.values())[len(tasks) - 1]}: {stage} {done:,}")

    return update


def _print_outcome(settings: Settings, state: RetrainState, region: str, share: float, days: int) -> None:
    steps = state.steps
    if "export" in steps and not steps["export"].get("skipped"):
        _out.print(f"export: {steps['export'].get('rows', 0):,} new events from the stream", highlight=False)
    if "append" in steps:
        a = steps["append"]
        line = (
            f"append: {a['exported']:,} exported events, {a['already_in_dataset']:,} already in "
            f"{Path(a['base']).name}, {a['appended']:,} appended, {a['rejected']:,} rejected"
        )
        if a.get("rejected_file"):
            line += f" (see {a['rejected_file']})"
        if a.get("dataset"):
            line += f" -> {a['dataset']}"
        _out.print(line, highlight=False, soft_wrap=True)
    if "register" not in steps:
        return
    train, champion, reg = steps["train"], steps["champion"], steps["register"]
    k = state.options.ks[0]
    table = Table(title=f"same split ({state.options.split}), same test students: metrics at k={k}", **_TABLE)
    table.add_column("metric")
    table.add_column(f"challenger v{reg['version']} ({train['model']})", justify="right")
    has_champion = champion.get("version") is not None
    if has_champion:
        table.add_column(f"champion v{champion['version']} ({champion.get('model')})", justify="right")
    for key, value in train.get("overall", {}).items():
        other = champion.get("overall", {}).get(key) if has_champion else None
        table.add_row(
            key, f"{value:.4f}", *([f"{other:.4f}" if other is not None else "-"] if has_champion else [])
        )
    for r, value in sorted(train.get("by_region", {}).items()):
        other = champion.get("by_region", {}).get(r) if has_champion else None
        cells = [f"{value:.4f}" if value is not None else "-"]
        if has_champion:
            cells.append(f"{other:.4f}" if other is not None else "-")
        table.add_row(f"ndcg_at_{k} {r}", *cells)
    _out.print(table)
    shown = steps["append"].get("from_recommendations", 0.0)
    if shown >= 0.5 and not state.options.split_params:
        _err.print(
            f"[yellow]note:[/] {shown:.0%} of the new events follow lists the serving models showed: offline "
            "metrics on them favour those models (feedback loop); let the A/B experiment decide",
            highlight=False,
            soft_wrap=True,
        )
    if champion.get("note"):
        _err.print(f"[yellow]note:[/] {escape(champion['note'])}", highlight=False, soft_wrap=True)
    _suggest(settings, champion.get("version"), reg["version"], region, share, days)


def _suggest(
    settings: Settings, champion: str | None, challenger: str, region: str, share: float, days: int
) -> None:
    from features.experiments import ExperimentConfigError, ExperimentsFile, load_experiments
    from training.retrain import experiment_snippet

    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    path = settings.service.experiments_file
    moved = ""
    if path is not None and Path(path).is_file():
        try:
            current = load_experiments(Path(path))
        except ExperimentConfigError:
            current = ExperimentsFile()
        busy = [e for e in current.experiments if region in e.regions and e.end > start]
        if busy:
            latest = max(busy, key=lambda e: e.end)
            start, moved = latest.end, f" (starts when '{latest.key}' ends in {region})"
    try:
        text, config = experiment_snippet(champion, challenger, region, share, start, days)
    except (ValueError, ExperimentConfigError) as exc:
        _err.print(f"[yellow]no experiment suggestion: {escape(str(exc))}[/]")
        return
    target = path or "the experiments file (settings.service.experiments_file)"
    _out.print(
        f"to send {share:.0%} of {region}'s students to the challenger for {days} days{moved}, add under "
        f"`experiments:` in {target}:",
        highlight=False,
        soft_wrap=True,
    )
    _out.print(text.rstrip(), highlight=False, markup=False, soft_wrap=True)
    _out.print(
        f"then read it with `learnrec ab report --experiment {config.key}` and promote only if it wins: "
        f"`learnrec promote --version {challenger}`",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(retrain)
