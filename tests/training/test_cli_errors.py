"""One error root: every learnrec error ends a command as one clear line (the CLI catches it once)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from features.errors import FeatureStoreError, SchemaError
from models.errors import LearnrecError, NumericalError
from training.ab.errors import ABError
from training.cli import _Commands
from training.errors import SimulationError


@pytest.mark.parametrize(
    "error",
    [
        SchemaError("events.csv", "occurred_at", [3], "cannot read '2025-13-01' as a timestamp"),
        FeatureStoreError("Redis at 127.0.0.1:1 refused the connection"),
        NumericalError("lightfm scored NaN"),
        ABError("experiment 'x' has no exposures"),
        SimulationError("no student of region 'mars'"),
    ],
)
def test_any_learnrec_error_from_any_command_is_one_line_and_exit_1(error: LearnrecError) -> None:
    app = typer.Typer(cls=_Commands)
    sub = typer.Typer()

    @sub.command()
    def boom() -> None:
        raise error

    @app.command()
    def other() -> None:  # a second command: the group has subcommands, as `learnrec` has
        pass

    app.add_typer(sub, name="nested")  # a command of a sub-group (`learnrec data ...`) is caught too
    result = CliRunner().invoke(app, ["nested", "boom"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {' '.join(str(error).split())}"
    assert "Traceback" not in result.output


def test_every_package_root_descends_from_the_one_root() -> None:
    from features.errors import LearnrecDataError
    from features.experiments import ExperimentConfigError
    from models.errors import ModelError
    from service.errors import ServiceConfigError, ServiceError
    from training.errors import TrainingError

    for root in (LearnrecDataError, ModelError, TrainingError, ABError, ServiceError, ServiceConfigError,
                 ExperimentConfigError):  # fmt: skip
        assert issubclass(root, LearnrecError), root
    assert FeatureStoreError("x").http_status == 503 and SchemaError("f", "c", [], "p").http_status == 422


def test_the_learnrec_app_catches_at_its_root(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`learnrec ab power` no longer catches its own ABError: the root group turns it into one line."""
    from features.settings import get_settings
    from training.cli import app

    monkeypatch.setenv("LEARNREC_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["ab", "power", "--region", "taebaek=500", "--baseline", "1.5"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert result.output.strip() == "error: baseline of 'taebaek' must be in (0, 1), got 1.5"
