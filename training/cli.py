"""The `learnrec` command line: one console script, one sub-command per stage.

Each stage lives in its own module under `training/commands/`; heavy libraries are imported inside the
commands so `learnrec --help` stays fast.
"""

from __future__ import annotations

import typer

from training.commands import (
    ab,
    bench,
    data,
    demo,
    events,
    feature_store,
    modelling,
    retrain,
    serve,
    simulate,
)

app = typer.Typer(
    name="learnrec",
    help="Lecture recommendations for public learning platforms (Seoul Learn and partner regions).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data", help="Generate, import and validate datasets.")
app.add_typer(feature_store.app, name="features", help="Materialise model features into Redis.")
app.add_typer(events.app, name="events", help="Export the event stream to Parquet.")
app.add_typer(ab.app, name="ab", help="A/B experiment analysis and planning.")
modelling.register(app)  # train, tune, compare, promote
retrain.register(app)  # retrain
simulate.register(app)  # simulate
serve.register(app)  # serve, mlflow-ui
demo.register(app)  # demo
bench.register(app)  # bench


@app.callback()
def _before_any_command() -> None:
    # MLflow's usage reporting goes off before any command can import mlflow (it starts its client then)
    from features.settings import apply_telemetry_choice, get_settings

    apply_telemetry_choice(get_settings())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
