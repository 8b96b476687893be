"""`learnrec features materialize | redis` and `learnrec events export` against real MLflow and Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from typer.testing import CliRunner

from features import keys
from features.redis_server import free_port, running_embedded, start_embedded
from features.settings import Settings, get_settings
from features.store import EventIn, FeatureStore
from features.streams import append
from models.candidates import Candidates
from models.loading import load_registered
from tests.training import modelling_data
from training.cli import app

runner = CliRunner()


@dataclass
class Registry:
    settings: Settings
    versions: dict[str, str]  # model kind -> registered version


def _text(output: str) -> str:
    return " ".join(output.split())


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("features-cli")
    with modelling_data.mlflow_store(root) as settings:
        modelling_data.write(settings.datasets_dir / "synthetic")
        result = runner.invoke(
            app,
            ["train", "--model", "lightfm", "--model", "popularity", "--register", "--k", "5",
             "--param", "lightfm.no_components=8", "--param", "lightfm.epochs=3"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        name = settings.mlflow.registered_model
        versions = {}
        for v in ("1", "2"):
            versions[load_registered(name, v, settings.tracking_uri()).recommender.name] = v
        yield Registry(settings, versions)


@pytest.fixture
def env(registry: Registry, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The module's MLflow store and the session's (flushed) redis-server, through the environment."""
    monkeypatch.setenv("LEARNREC_DATA_DIR", str(registry.settings.data_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.settings.tracking_uri())
    monkeypatch.setenv("LEARNREC_REDIS__URL", redis_url)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def redis_env(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A fresh data directory and the session's (flushed) redis-server; no MLflow needed."""
    monkeypatch.setenv("LEARNREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LEARNREC_REDIS__URL", redis_url)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.mark.slow
def test_materialize_writes_the_registered_models_state(env: Settings, registry: Registry, redis_client):
    result = runner.invoke(app, ["features", "materialize", "--version", registry.versions["lightfm"]])
    assert result.exit_code == 0, result.output
    version = registry.versions["lightfm"]
    out = _text(result.output)
    assert re.search(rf"materialised learnrec-lectures v{version}: 60 students x 9 float32", out), out
    assert re.search(r"\d+ B/student", out) and "active none -> " + version in out

    loaded = load_registered(env.mlflow.registered_model, version, env.tracking_uri())
    rec = loaded.recommender
    store = FeatureStore(redis_client)
    assert store.active_version(env.mlflow.registered_model) == version
    for row in (0, 17, 59):
        sid = rec.students.ids[row]
        state = store.read_student(sid, env.mlflow.registered_model, version).state
        expected = rec.student_state(np.array([row], dtype=np.int32))[0]
        width = expected.size
        assert np.array_equal(np.frombuffer(state, "<f4", count=width), expected), sid
        # the student's candidate list follows the state (models.candidates), in the same key
        listed = Candidates.from_bytes(state[4 * width :], len(rec.catalogue.lectures))
        assert listed is not None and listed.rows.size > 0, sid


@pytest.mark.slow
def test_materialize_by_alias_then_a_stateless_version(env: Settings, registry: Registry, redis_client):
    result = runner.invoke(app, ["features", "materialize", "--version", registry.versions["lightfm"]])
    assert result.exit_code == 0, result.output
    champion = runner.invoke(app, ["features", "materialize"])  # --alias champion by default
    assert champion.exit_code == 0, champion.output
    assert "(champion)" in champion.output
    stateless = runner.invoke(app, ["features", "materialize", "--version", registry.versions["popularity"]])
    assert stateless.exit_code == 0, stateless.output
    assert "students x 0 float32 + candidate lists" in _text(stateless.output)
    store = FeatureStore(redis_client)
    assert store.active_version(env.mlflow.registered_model) == registry.versions["popularity"]
    # a stateless version's keys hold only its candidate lists; the older versions' keys are gone
    suffix = keys.model_state_suffix(env.mlflow.registered_model, registry.versions["popularity"])
    found = list(redis_client.scan_iter(match=keys.model_state_pattern(env.mlflow.registered_model)))
    assert found and all(key.endswith(suffix) for key in found)
    value = redis_client.get(found[0])
    assert Candidates.from_bytes(value, 10_000) is not None


@pytest.mark.slow
def test_materialize_unknown_version_or_alias_is_a_clear_error(env: Settings):
    result = runner.invoke(app, ["features", "materialize", "--version", "99"])
    assert result.exit_code == 2
    assert "has no version 99" in _text(result.output)
    result = runner.invoke(app, ["features", "materialize", "--alias", "staging"])
    assert result.exit_code == 2
    assert "has no alias 'staging'" in _text(result.output)


@pytest.mark.slow
def test_materialize_with_redis_down_fails_cleanly(env: Settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LEARNREC_REDIS__URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    result = runner.invoke(app, ["features", "materialize"])
    assert result.exit_code == 1
    assert _text(result.output).startswith("error: Redis:") and "Connection refused" in result.output


def _events(n: int) -> list[EventIn]:
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    return [
        EventIn(f"e{i}", f"s{i % 5}", "MATH-1", "enrol", 0.0, t0 + timedelta(minutes=i)) for i in range(n)
    ]


def test_events_export_to_the_default_directory(redis_env: Settings, redis_client):
    """The export trims what it has written (bounded growth, issue 11); `--keep` keeps the entries."""
    store = FeatureStore(redis_client)
    store.apply_events(_events(12))
    result = runner.invoke(app, ["events", "export", "--batch-size", "5", "--keep"])
    assert result.exit_code == 0, result.output
    assert "exported 12 events to 3 file(s)" in _text(result.output) and "trimmed" not in result.output
    assert redis_client.xlen(keys.EVENTS_STREAM) == 12
    directory = redis_env.data_dir / "exports" / "events"
    store.apply_events(_events(15))  # three more, twelve resent
    again = runner.invoke(app, ["events", "export"])
    assert "exported 3 events" in again.output and "15 entries trimmed" in _text(again.output)
    assert redis_client.xlen(keys.EVENTS_STREAM) == 0
    ids = [
        i
        for f in sorted(directory.glob("events-*.parquet"))
        for i in pq.read_table(f)["event_id"].to_pylist()
    ]
    assert sorted(ids) == sorted(f"e{i}" for i in range(15)) and len(ids) == 15


def test_exposures_export_uses_the_exposure_schema(redis_env: Settings, redis_client, tmp_path: Path):
    from features.experiments import exposure_fields
    from training.ab.exposures import EXPOSURES

    shown = datetime(2025, 3, 1, 9, tzinfo=UTC)
    append(
        redis_client,
        keys.EXPOSURES_STREAM,
        [
            exposure_fields(f"r{i}", f"s{i}", "taebaek", None, "3", ["수학-1", "영어-2"], shown)
            for i in range(4)
        ],
    )
    result = runner.invoke(app, ["events", "export", "--stream", "exposures", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "exported 4 exposures to 1 file(s)" in _text(result.output)
    table = pq.read_table(next(tmp_path.glob("exposures-*.parquet")))
    assert table.schema.equals(EXPOSURES)
    row = table.to_pylist()[0]
    assert (
        row["lecture_ids"] == ["수학-1", "영어-2"] and row["experiment"] is None and row["shown_at"] == shown
    )


def test_unknown_stream_is_refused(redis_env: Settings):
    result = runner.invoke(app, ["events", "export", "--stream", "clicks"])
    assert result.exit_code == 2
    assert "clicks" in result.output


def test_redis_status_and_stop_of_the_embedded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LEARNREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LEARNREC_REDIS__URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert "not running" in runner.invoke(app, ["features", "redis"]).output
        server = start_embedded(settings.redis_dir)
        status = runner.invoke(app, ["features", "redis"])
        assert f"pid {server.pid} at {server.url}" in _text(status.output)
        stopped = runner.invoke(app, ["features", "redis", "--stop"])
        assert stopped.exit_code == 0 and f"stopped embedded redis-server pid {server.pid}" in stopped.output
        assert running_embedded(settings.redis_dir) is None
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(server.url, retry=None).ping()
    finally:
        from features.redis_server import stop_embedded

        stop_embedded(tmp_path / "data" / "redis")
        get_settings.cache_clear()


def test_redis_status_with_a_configured_url(redis_env: Settings, redis_url: str):
    result = runner.invoke(app, ["features", "redis"])
    assert result.exit_code == 0 and f"Redis at {redis_url}" in result.output
    refused = runner.invoke(app, ["features", "redis", "--stop"])
    assert refused.exit_code == 2 and "not ours to stop" in refused.output


def test_seed_loads_every_student_in_partitions(redis_env: Settings, redis_client, tmp_path: Path):
    directory = modelling_data.write(tmp_path / "ds")
    result = runner.invoke(app, ["features", "seed", "--dataset", str(directory), "--partition-events", "40"])
    assert result.exit_code == 0, result.output
    out = _text(result.output)
    assert re.search(r"seeded the online state of 60 students \(60 with a history\) from \d+ events of ", out)
    assert re.search(r"in \d+ partition\(s\) in [\d.]+ s$", out), out
    partitions = int(re.search(r"in (\d+) partition", out).group(1))  # type: ignore[union-attr]
    assert partitions > 1
    record = FeatureStore(redis_client).read_student("s000")
    assert record.profile is not None and record.profile.region == "seoul" and record.history


def test_seed_names_the_bad_row_of_the_events_file(redis_env: Settings, redis_client, tmp_path: Path):
    directory = modelling_data.write(tmp_path / "ds")
    events = pq.read_table(directory / "events.parquet")
    ids = events["student_id"].to_pylist()
    ids[9] = "ghost"
    events = events.set_column(events.schema.get_field_index("student_id"), "student_id", pa.array(ids))
    pq.write_table(events, directory / "events.parquet")
    result = runner.invoke(app, ["features", "seed", "--dataset", str(directory)])
    assert result.exit_code == 2
    out = _text(result.output)
    assert f"{directory / 'events.parquet'}: row 10, column 'student_id': unknown student_id 'ghost'" in out
    assert redis_client.dbsize() == 0
