"""No usage reporting by default: MLflow's telemetry is off in learnrec's processes and its MLflow UI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.settings import MlflowSettings, Settings, get_settings
from training.cli import app

OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
#: Variables from which MLflow guesses it runs in CI or a test (and stays quiet whatever learnrec does).
CI_HINTS = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE")


@pytest.fixture
def no_telemetry_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (*OFF, "LEARNREC_MLFLOW__TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_telemetry_is_off_unless_the_setting_allows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MlflowSettings().telemetry_environment() == OFF
    monkeypatch.setenv("LEARNREC_MLFLOW__TELEMETRY", "true")
    assert Settings().mlflow.telemetry_environment() == {}


@pytest.mark.usefixtures("no_telemetry_variables")
def test_every_command_switches_it_off_first(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(app, ["api-key", "--name", "portal", "--region", "seoul"])
    assert result.exit_code == 0, result.output
    assert {name: os.environ.get(name) for name in OFF} == OFF
    # allowed: learnrec leaves MLflow's own default alone
    for name in OFF:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LEARNREC_MLFLOW__TELEMETRY", "true")
    get_settings.cache_clear()
    assert CliRunner().invoke(app, ["api-key", "--name", "portal", "--region", "seoul"]).exit_code == 0
    assert not set(OFF) & set(os.environ)


@pytest.mark.usefixtures("no_telemetry_variables")
def test_the_service_switches_it_off_however_it_is_started(tmp_path: Path) -> None:
    from service.main import create_app

    create_app(Settings(data_dir=tmp_path))
    assert {name: os.environ.get(name) for name in OFF} == OFF


def test_the_mlflow_ui_starts_with_telemetry_off(tmp_path: Path) -> None:
    """`learnrec mlflow-ui` becomes `mlflow ui` (same process) with the variables set: its server, and the
    page it serves, then neither report usage. Checked on the process as it runs, in an environment
    where MLflow sees no hint of CI or tests (which would silence it whatever learnrec does)."""
    env = {
        k: v for k, v in os.environ.items() if k not in (*OFF, *CI_HINTS) and not k.startswith("LEARNREC_")
    }
    env["LEARNREC_DATA_DIR"] = str(tmp_path / "data")
    learnrec = Path(sys.executable).with_name("learnrec")
    ui = subprocess.Popen(
        [str(learnrec), "mlflow-ui", "--port", "0"],  # stopped before it listens
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # whatever it started is stopped with it
    )
    proc = Path(f"/proc/{ui.pid}")
    try:
        while b"-m\0mlflow\0ui\0" not in (proc / "cmdline").read_bytes():
            assert ui.poll() is None, "learnrec mlflow-ui exited before starting MLflow"
            time.sleep(0.05)
        environ = set((proc / "environ").read_bytes().split(b"\0"))
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()
    assert {b"MLFLOW_DISABLE_TELEMETRY=true", b"DO_NOT_TRACK=true"} <= environ
