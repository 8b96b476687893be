"""Service fixtures: a real MLflow SQLite registry with trained tiny models, seeded Redis, live servers.

The registry is trained once per session with `learnrec train --register` on `tests.service.data`:
v1 = sequence (champion), v2 = lightfm. Tests that move the alias put it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from features.profile import StudentProfile
from features.settings import Settings, get_settings
from features.store import FeatureStore
from service.main import create_app
from tests.conftest import RedisServerControl
from tests.service import data
from tests.service.live import LiveServer, LogLines

MODEL_NAME = "learnrec-lectures"
PORTAL = {"X-API-Key": "dev-portal-key"}
TAEBAEK = {"X-API-Key": "dev-taebaek-key"}
ADMIN = {"X-API-Key": "dev-admin-key"}


@dataclass(frozen=True)
class Registry:
    """The session's MLflow store and its versions."""

    root: Path
    tracking_uri: str
    versions: dict[str, str]  # model kind -> version

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def set_alias(self, version: str, alias: str = "champion") -> None:
        self.client().set_registered_model_alias(MODEL_NAME, alias, version)


def _dataset() -> Any:
    from features.tables import Dataset

    events = pd.DataFrame(data.events())
    events["occurred_at"] = pd.to_datetime(events["occurred_at"], utc=True)
    return Dataset(pd.DataFrame(data.students()), pd.DataFrame(data.lectures()), events, {"source": "tests"})


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Train and register the two tiny models once (about 10 s)."""
    import mlflow
    from typer.testing import CliRunner

    from features.tables import write_dataset
    from training.cli import app

    root = tmp_path_factory.mktemp("service-mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    versions: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNREC_DATA_DIR", str(root / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("LEARNREC_MLFLOW__TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        get_settings.cache_clear()
        try:
            write_dataset(_dataset(), get_settings().datasets_dir / "synthetic")
            runner = CliRunner()
            for kind, extra in (("sequence", []), ("lightfm", ["--param", "lightfm.no_components=8"])):
                result = runner.invoke(app, ["train", "-m", kind, "--register", "--no-oracle", *extra])
                assert result.exit_code == 0, result.output
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            for mv in client.search_model_versions(f"name = '{MODEL_NAME}'"):
                kind = client.get_run(mv.run_id).data.tags["learnrec.model"]
                versions[kind] = str(mv.version)
        finally:
            mlflow.set_tracking_uri(None)
            get_settings.cache_clear()
    reg = Registry(root, uri, versions)
    reg.set_alias(versions["sequence"])
    yield reg


def seed(redis_server: RedisServerControl) -> FeatureStore:
    """Flush Redis and load the profiles and histories of the dataset."""
    if not redis_server.running:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    store = FeatureStore(client)
    ds = _dataset()
    profiles = [
        StudentProfile(**{**p, "interest_subjects": tuple(p["interest_subjects"])}) for p in data.students()
    ]
    store.seed_history(ds.events, profiles)
    return store


def service_settings(registry: Registry, redis_url: str, **service: Any) -> Settings:
    service.setdefault("reload_poll_seconds", 0)
    return Settings(
        data_dir=registry.root / "data",
        redis={"url": redis_url},
        mlflow={"tracking_uri": registry.tracking_uri, "registered_model": MODEL_NAME},
        service=service,
    )


@contextmanager
def running(settings: Settings) -> Iterator[tuple[LiveServer, httpx.Client, LogLines]]:
    """A live server for `settings`, an httpx client on it and the service's log lines."""
    import logging

    logs = LogLines()
    logger = logging.getLogger("learnrec.service")
    logger.addHandler(logs)
    try:
        with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url, timeout=10) as client:
            yield live, client, logs
    finally:
        logger.removeHandler(logs)


@pytest.fixture(scope="module")
def api(
    registry: Registry, redis_server: RedisServerControl
) -> Iterator[tuple[LiveServer, httpx.Client, LogLines]]:
    """One live service for a test module (Redis seeded once; tests use their own students)."""
    seed(redis_server)
    with running(service_settings(registry, redis_server.url)) as handles:
        yield handles


@pytest.fixture
def client(api: tuple[LiveServer, httpx.Client, LogLines]) -> httpx.Client:
    return api[1]


def answer(r: httpx.Response) -> dict[str, Any]:
    """A 200 answer of GET /recommendations, checked against its documented response model.

    The route builds its JSON without pydantic (the hot path): the body must parse strictly as
    `RecommendationsOut` and be byte for byte what that model would serialise.
    """
    from service.schemas import RecommendationsOut

    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    parsed = RecommendationsOut.model_validate_json(r.content, strict=True)
    assert parsed.model_dump_json().encode() == r.content
    body: dict[str, Any] = r.json()
    return body


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
