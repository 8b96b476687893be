"""The `learnrec` command line: one console script, one sub-command per stage.

Each stage lives in its own module under `training/commands/`; heavy libraries are imported inside the
commands so `learnrec --help` stays fast.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from models.errors import LearnrecError
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
from training.commands.console import fail


class _Commands(TyperGroup):
    """The root command group: a learnrec error from any command ends as one clear line, exit code 1.

    Every domain error descends from `models.errors.LearnrecError`, so this is the one place the CLI
    catches them; commands catch only what they turn into something else (another exit code, a retry).
    """

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context: not a public name
        try:
            return super().invoke(ctx)
        except LearnrecError as exc:
            raise fail(str(exc)) from None


app = typer.Typer(
    cls=_Commands,
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
