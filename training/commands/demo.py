"""`learnrec demo`: the main job end to end on the embedded defaults, ending with the API running."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated

import typer


def _step(n: int, total: int, text: str) -> None:
    typer.secho(f"[{n}/{total}] {text}", fg=typer.colors.CYAN, err=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command()
    def demo(
        serve: Annotated[bool, typer.Option(help="End by running the API in the foreground.")] = True,
        retrain: Annotated[
            bool, typer.Option(help="Train and log the models even when a champion is registered.")
        ] = False,
    ) -> None:
        """Generate and validate the default dataset, train and register models, fill Redis, serve."""
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
        total = 6
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

        client = connect(settings, bulk=True)
        _step(4, total, "load student profiles and history into Redis (online state)")
        with progress_bars() as progress:
            students, events = seed_dataset(dataset_dir, client, progress)
        typer.echo(f"online state of {students:,} students from {events:,} events", err=True)
        _step(5, total, "materialise the champion's per-student features into Redis")
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
        _step(6, total, "serve")
        typer.echo(f"demo ready in {time.perf_counter() - started:.0f} s. Try:\n\n  {curl}\n", err=True)
        if serve:
            sys.stderr.flush()
            # become `learnrec serve`: Ctrl-C stops the API; the embedded Redis keeps its data in data/redis
            os.execv(sys.executable, [sys.executable, "-m", "training.cli", "serve"])
