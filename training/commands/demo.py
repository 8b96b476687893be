"""`learnrec demo`: the main job end to end on the embedded defaults, ending with the API running."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from features.settings import Settings

#: The demo's A/B experiment: the champion against a challenger in two partner regions for two weeks.
EXPERIMENT_KEY = "demo-gimpo-taebaek"
EXPERIMENT_REGIONS = ("gimpo", "taebaek")
EXPERIMENT_DAYS = 14
#: The run name the printed `learnrec simulate` command uses (export directory and report name).
SIMULATE_RUN = "demo"
#: Model the demo makes `challenger` when no challenger is set: the non-personalised baseline (see
#: `register_challenger` for why not the runner-up).
CHALLENGER_MODEL = "popularity"


@dataclass(frozen=True)
class DemoExperiment:
    """The experiment the demo sets up: its file, key, and the challenger version behind it."""

    path: Path
    key: str
    regions: tuple[str, ...]
    start: datetime
    end: datetime
    champion: str
    challenger: str
    challenger_model: str


def _step(n: int, total: int, text: str) -> None:
    typer.secho(f"[{n}/{total}] {text}", fg=typer.colors.CYAN, err=True)


def register_challenger(settings: Settings, client: Any, champion: str) -> tuple[str, str, bool]:
    """Point the ``challenger`` alias at the popularity baseline, unless it already names another version.

    Why popularity and not the runner-up: on the default data the runner-up is within a few percent of the
    champion on offline NDCG@10 (``sequence`` 0.199, ``blend`` 0.191), a difference a two-week experiment
    in Gimpo and Taebaek (~770 students per arm) cannot see, so the demo's report would show noise. The
    most-popular list is a genuinely different model the demo trains anyway and the question a partner
    region asks first (does the personalised champion beat a plain most-popular list for our students?);
    its gap is large enough to show in the report, with a known sign. A challenger set earlier (e.g. by
    `learnrec retrain`) is kept.

    Args:
        settings: settings (registered model name, audit artifact root).
        client: MLflow client on the project's store.
        champion: the champion's version.

    Returns:
        (version, model name, whether this call moved the alias).

    Raises:
        TrackingError: the registry holds no version other than the champion.
    """
    from training.errors import TrackingError
    from training.registry import CHALLENGER, alias_version, candidate, promote

    name = settings.mlflow.registered_model
    held = alias_version(client, name, CHALLENGER)
    if held is not None and held != champion:
        return held, candidate(client, name, held).model, False
    others = [
        candidate(client, name, str(mv.version)) for mv in client.search_model_versions(f"name = '{name}'")
    ]
    others = [c for c in others if c.version != champion]
    if not others:
        raise TrackingError(f"'{name}' has no version besides the champion v{champion} to challenge it")
    baseline = [c for c in others if c.model == CHALLENGER_MODEL]
    if baseline:
        pick = max(baseline, key=lambda c: int(c.version))  # the newest popularity model
    else:  # no popularity model registered: the runner-up on the champion's metric
        pick = max(others, key=lambda c: (c.metrics.get("ndcg_at_10", float("-inf")), int(c.version)))
    promote(client, name, pick.version, CHALLENGER, by="learnrec demo", settings=settings)
    return pick.version, pick.model, True


def write_experiment(
    path: Path, champion: str, challenger: str, challenger_model: str, now: datetime | None = None
) -> DemoExperiment:
    """Write the demo's experiments YAML: champion vs challenger 50/50 in Gimpo and Taebaek for two weeks.

    The window is wall-clock time (the service assigns by its own clock); `learnrec simulate` plays the
    two weeks on a simulated clock inside it. The file is rewritten on every demo run (the salt is the
    key, so students keep their arm).

    Args:
        path: the YAML file (parent directories are created).
        champion: champion version (recorded in a comment).
        challenger: challenger version (recorded in a comment).
        challenger_model: the challenger's model name (recorded in a comment).
        now: start of the window (default: now, to the second).

    Returns:
        What was written.
    """
    import yaml

    from features.experiments import parse_experiments

    start = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    end = start + timedelta(days=EXPERIMENT_DAYS)
    document = {
        "experiments": [
            {
                "key": EXPERIMENT_KEY,
                "regions": list(EXPERIMENT_REGIONS),
                "start": start.isoformat(),
                "end": end.isoformat(),
                "variants": [
                    {"name": "champion", "weight": 50, "model": "champion"},
                    {"name": "challenger", "weight": 50, "model": "challenger"},
                ],
            }
        ]
    }
    parse_experiments(document, str(path))  # never write a file the service would refuse
    header = (
        f"# written by `learnrec demo` (rewritten on every run): champion v{champion} (control) vs\n"
        f"# challenger v{challenger} ({challenger_model}) in {', '.join(EXPERIMENT_REGIONS)} for "
        f"{EXPERIMENT_DAYS} days; the first variant is the control.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return DemoExperiment(
        path, EXPERIMENT_KEY, EXPERIMENT_REGIONS, start, end, champion, challenger, challenger_model
    )


def _learnrec() -> str:
    """How to call learnrec from the user's shell (`make demo` runs .venv/bin/learnrec off the PATH)."""
    if shutil.which("learnrec"):
        return "learnrec"
    exe = Path(sys.executable).parent / "learnrec"
    return os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe)


def simulate_command(settings: Settings, experiments: Path, regions: tuple[str, ...]) -> str:
    """The `learnrec simulate` call that plays a two-week experiment against the demo's running service."""
    url = f"http://{settings.service.host}:{settings.service.port}"
    env = f"LEARNREC_DATA_DIR={settings.data_dir} " if os.environ.get("LEARNREC_DATA_DIR") else ""
    return (
        f"{env}{_learnrec()} simulate --url {url} --api-key dev-portal-key --experiments {experiments} "
        f"--regions {','.join(regions)} --days {EXPERIMENT_DAYS} --run {SIMULATE_RUN}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command()
    def demo(
        serve: Annotated[bool, typer.Option(help="End by running the API in the foreground.")] = True,
        retrain: Annotated[
            bool, typer.Option(help="Train and log the models even when a champion is registered.")
        ] = False,
    ) -> None:
        """Generate and validate the default dataset, train and register models, set up an A/B test, serve."""
        from features.redis_server import connect
        from features.settings import get_settings
        from features.tables import read_dataset
        from models.loading import load_registered, resolve_alias
        from training.commands.console import progress_bars
        from training.commands.data import synth
        from training.commands.feature_store import materialize_loaded, seed_dataset
        from training.commands.modelling import train

        settings = get_settings()
        started = time.perf_counter()
        total = 7
        dataset_dir = settings.datasets_dir / "synthetic"
        _step(1, total, f"default synthetic dataset in {dataset_dir}")
        if (dataset_dir / "manifest.json").exists():
            typer.echo(f"already there: {dataset_dir} (delete it to regenerate)", err=True)
        else:
            synth(students=None, lectures=5_000, seed=None, out=dataset_dir)
        _step(2, total, "load and validate it")
        dataset = read_dataset(dataset_dir)
        tables = {"students": dataset.students, "lectures": dataset.lectures, "events": dataset.events}
        sizes = ", ".join(f"{len(table):,} {name}" for name, table in tables.items())
        typer.echo(f"valid: {sizes}", err=True)

        name, uri = settings.mlflow.registered_model, settings.tracking_uri()
        _step(3, total, f"train, evaluate and register the models (MLflow: {uri})")
        if resolve_alias(name, "champion", uri) is None or retrain:
            train(model=["all"], split="temporal", dataset=dataset_dir, register=True)
        else:
            typer.echo(f"'{name}' already has a champion (use --retrain to train again)", err=True)
        loaded = load_registered(name, "champion", uri)
        typer.echo(f"champion: {loaded.model_name} v{loaded.version} ({loaded.recommender.name})", err=True)

        _step(4, total, f"A/B experiment: champion vs challenger in {', '.join(EXPERIMENT_REGIONS)}")
        experiments, regions, key = _experiment(settings, str(loaded.version))

        client = connect(settings, bulk=True)
        _step(5, total, "load student profiles and history into Redis (online state)")
        with progress_bars() as progress:
            students, events = seed_dataset(dataset_dir, client, progress)
        typer.echo(f"online state of {students:,} students from {events:,} events", err=True)
        _step(6, total, "materialise the champion's per-student features into Redis")
        with progress_bars() as progress:
            summary = materialize_loaded(loaded, client, progress)
        typer.echo(
            f"{summary.students:,} students, version {summary.version}, {summary.seconds:.1f} s", err=True
        )

        example = str(dataset.students.loc[dataset.students["region"] == "seoul", "student_id"].iloc[0])
        port = settings.service.port
        curl = (
            f"curl -s -H 'X-API-Key: dev-portal-key' "
            f"'http://{settings.service.host}:{port}/recommendations?student_id={example}&k=5'"
        )
        reports = settings.data_dir / "reports"
        _step(7, total, "serve")
        typer.echo(
            f"demo ready in {time.perf_counter() - started:.0f} s. Try:\n\n  {curl}\n\n"
            f"Play the two-week A/B experiment ({EXPERIMENT_DAYS} simulated days, "
            f"{', '.join(regions)}) against the running service, from another shell:\n\n"
            f"  {simulate_command(settings, experiments, regions)}\n\n"
            f"It writes the report to {reports}/ab-{key}-{SIMULATE_RUN}.html (+ .json) and the "
            f"exported Parquet to {settings.data_dir / 'exports' / SIMULATE_RUN}/ (README: "
            "'Recomputing a report').\n",
            err=True,
        )
        if serve:
            sys.stderr.flush()
            # become `learnrec serve` with the experiments file: Ctrl-C stops the API; the embedded Redis
            # keeps its data in data/redis
            os.environ["LEARNREC_SERVICE__EXPERIMENTS_FILE"] = str(experiments)
            os.execv(sys.executable, [sys.executable, "-m", "training.cli", "serve"])


def _experiment(settings: Settings, champion: str) -> tuple[Path, tuple[str, ...], str]:
    """Step 4: the challenger and the experiments file (or the user's own file).

    Returns:
        (experiments file, regions, experiment key; ``<experiment>`` for the user's own file).
    """
    from features.experiments import ExperimentConfigError, load_experiments
    from training.commands.modelling import _client

    own = settings.service.experiments_file
    if own is not None:
        try:
            config = load_experiments(own)
        except ExperimentConfigError as exc:
            raise typer.BadParameter(str(exc), param_hint="LEARNREC_SERVICE__EXPERIMENTS_FILE") from None
        regions = tuple(dict.fromkeys(r for e in config.experiments for r in e.regions))
        typer.echo(f"serving the experiments of {own} (LEARNREC_SERVICE__EXPERIMENTS_FILE)", err=True)
        return own, regions or EXPERIMENT_REGIONS, "<experiment>"
    version, model, moved = register_challenger(settings, _client(settings), champion)
    typer.echo(
        f"challenger: v{version} ({model})" + (" (alias set now)" if moved else " (alias already set)"),
        err=True,
    )
    exp = write_experiment(settings.data_dir / "experiments.yaml", champion, version, model)
    typer.echo(
        f"experiment '{exp.key}': champion vs challenger 50/50 in {', '.join(exp.regions)}, "
        f"{exp.start:%Y-%m-%d %H:%M} to {exp.end:%Y-%m-%d %H:%M} UTC, written to {exp.path}",
        err=True,
    )
    return exp.path, exp.regions, exp.key
