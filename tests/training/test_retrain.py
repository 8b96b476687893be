"""`learnrec retrain`: new events from the real stream -> new dataset version -> challenger; resumable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from features.settings import Settings
from features.store import EventIn, FeatureStore
from features.tables import read_dataset
from tests.training import modelling_data
from training.errors import RetrainError
from training.retrain import (
    RetrainOptions,
    RetrainState,
    begin,
    experiment_snippet,
    latest_version,
    next_version,
    run_retrain,
    split_params,
)

MODEL_NAME = "learnrec-lectures"


@dataclass
class World:
    settings: Settings
    base: Path
    store: FeatureStore
    champion: str


@pytest.fixture
def world(
    tmp_path: Path, redis_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """A dataset, a registered champion (sequence) in a fresh MLflow store, and the real Redis."""
    from training.cli import app
    from training.registry import CHAMPION, alias_version
    from training.tracking import configure

    monkeypatch.setenv("LEARNREC_REDIS__URL", redis_url)
    with modelling_data.mlflow_store(tmp_path) as settings:
        base = modelling_data.write(settings.datasets_dir / "synthetic")
        result = CliRunner().invoke(app, ["train", "-m", "sequence", "--register", "--no-oracle"])
        assert result.exit_code == 0, result.output
        champion = alias_version(configure(settings), MODEL_NAME, CHAMPION)
        assert champion is not None
        yield World(settings, base, FeatureStore(redis_client), champion)


def _new_events(n: int = 40, offset: int = 0) -> list[EventIn]:
    """Events after the dataset's period: students s000..s039 take the next lecture of another series."""
    t = modelling_data.T0 + timedelta(days=70 + offset)
    out = []
    for i in range(n):
        sid = f"s{i:03d}"
        lecture = f"{('MATH', 'ENG', 'SCI', 'KOR')[(i + 2) % 4]}-{1 + i % 3}"
        out.append(EventIn(f"new-{offset}-{i}", sid, lecture, "enrol", 0.0, t + timedelta(hours=i)))
        if i % 2 == 0:
            out.append(
                EventIn(
                    f"new-{offset}-{i}c", sid, lecture, "complete", 1.0, t + timedelta(hours=i, minutes=30)
                )
            )
    return out


def _options(world: World, **kw: Any) -> RetrainOptions:
    base = {
        "dataset": str(world.base),
        "events_dir": str(world.settings.data_dir / "exports" / "events"),
        "model": "sequence",
        "seed": 7,
    }
    return RetrainOptions(**{**base, **kw})


def _client(settings: Settings) -> Any:
    from training.tracking import configure

    return configure(settings)


def _aliases(settings: Settings) -> dict[str, str]:
    return {a: str(v) for a, v in _client(settings).get_registered_model(MODEL_NAME).aliases.items()}


def test_version_names(tmp_path: Path) -> None:
    base = tmp_path / "synthetic"
    base.mkdir()
    assert next_version(base) == tmp_path / "synthetic-v2"
    (tmp_path / "synthetic-v2").mkdir()
    (tmp_path / "synthetic-v10").mkdir()
    (tmp_path / "other-v99").mkdir()
    assert latest_version(base) == tmp_path / "synthetic-v10"
    assert next_version(tmp_path / "synthetic-v2") == tmp_path / "synthetic-v11"


def test_snippet_is_a_valid_experiment() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    text, config = experiment_snippet("3", "7", "taebaek", 0.2, start, 14)
    assert config.key == "retrain-v7-taebaek" and config.regions == ("taebaek",)
    assert config.shares() == pytest.approx({"control": 0.8, "challenger": 0.2})
    assert [v.model for v in config.variants] == ["3", "7"]  # pinned versions, not aliases
    assert "taebaek" in text and "2026-12-15T00:00:00Z" in text
    with pytest.raises(ValueError, match="share"):
        experiment_snippet("3", "7", "taebaek", 1.5, start, 14)


def test_split_cutoff_defaults_to_the_first_new_event_with_or_without_a_horizon() -> None:
    append = {"first_new_event": "2026-03-01T00:00:00+00:00"}
    just_before = "2026-02-28T23:59:59.999999+00:00"

    def options(**split: Any) -> RetrainOptions:
        return RetrainOptions(dataset="d", events_dir="e", model="sequence", split_params=split)

    assert split_params(options(), append) == {"cutoff": just_before}
    assert split_params(options(horizon_days=7), append) == {"horizon_days": 7, "cutoff": just_before}
    assert split_params(options(quantile=0.5), append) == {"quantile": 0.5}  # asked for: no default cutoff


@pytest.mark.slow
def test_retrain_registers_a_challenger_and_leaves_the_champion(world: World) -> None:
    settings = world.settings
    before = read_dataset(world.base)
    events = _new_events()
    # a retry of the same events (idempotent), an unknown student, and an unknown lecture
    world.store.apply_events(events)
    world.store.apply_events(events[:5])
    t = modelling_data.T0 + timedelta(days=71)
    world.store.apply_events(
        [
            EventIn("stranger-1", "s999", "MATH-1", "enrol", 0.0, t),
            EventIn("stranger-2", "s001", "NO-SUCH-LECTURE", "enrol", 0.0, t),
        ]
    )

    state = run_retrain(begin(settings.data_dir / "retrain" / "state.json", _options(world)), settings)

    assert state.finished and state.outcome.startswith("challenger is v")
    steps = state.steps
    assert steps["export"]["rows"] == len(events) + 2
    append = steps["append"]
    assert append["appended"] == len(events) and append["rejected"] == 2
    rejected = pd.read_parquet(append["rejected_file"])
    assert sorted(rejected["reason"]) == ["lecture not in the dataset", "student not in the dataset"]
    new_dir = Path(append["dataset"])
    assert new_dir == world.base.with_name("synthetic-v2")
    after = read_dataset(new_dir)
    assert len(after.events) == len(before.events) + len(events)
    assert set(after.events["event_id"].to_pylist()) >= {e.event_id for e in events}
    assert after.manifest["lineage"][-1]["appended_events"] == len(events)
    # the base dataset is untouched
    assert read_dataset(world.base).fingerprint() == before.fingerprint()

    aliases = _aliases(settings)
    assert aliases["champion"] == world.champion  # never moved by retrain
    assert aliases["challenger"] == steps["register"]["version"] != world.champion
    # the champion was evaluated on the same split and dataset as the challenger
    client = _client(settings)
    train_run = client.get_run(steps["train"]["run_id"])
    champion_run = client.get_run(steps["champion"]["run_id"])
    for tag in ("learnrec.split", "learnrec.dataset_fingerprint"):
        assert train_run.data.tags[tag] == champion_run.data.tags[tag]
    assert champion_run.data.tags["learnrec.reevaluation_of"] == world.champion
    assert champion_run.data.tags["learnrec.kind"] == "reevaluation"
    assert steps["train"]["n_students"] == steps["champion"]["n_students"]

    # the promote guard compares the challenger with the champion's re-evaluation on the same split
    from training.errors import PromotionRefused
    from training.registry import CHAMPION, promote

    key = "ndcg_at_10"
    challenger_value = client.get_run(steps["train"]["run_id"]).data.metrics[key]
    champion_value = champion_run.data.metrics[key]
    try:
        move = promote(
            client, MODEL_NAME, steps["register"]["version"], CHAMPION, metric=key, settings=settings
        )
    except PromotionRefused as exc:
        assert challenger_value < champion_value
        assert "worse than champion" in str(exc) and "different evaluation" not in str(exc)
    else:
        assert move is not None and challenger_value >= champion_value
        assert move.from_value == pytest.approx(champion_value)

    # nothing new since: the next retraining stops after the append step, with no new version
    again = run_retrain(begin(state.path, _options(world, dataset=str(new_dir))), settings)
    assert again.finished and "no new events" in again.outcome
    assert "train" not in again.steps and latest_version(world.base) == new_dir
    assert (state.path.parent / "history" / f"{state.id}.done.json").is_file()


def _append_alone(tmp_path: Path, exported: pd.DataFrame) -> tuple[Path, dict[str, Any]]:
    """The append step on its own: a written dataset and one exported Parquet file of `exported`."""
    from training.retrain import _append, _Context

    base = modelling_data.write(tmp_path / "datasets" / "synthetic")
    events_dir = tmp_path / "exports"
    events_dir.mkdir()
    exported.to_parquet(events_dir / "part-0.parquet", index=False)
    options = RetrainOptions(dataset=str(base), events_dir=str(events_dir), model="popularity", seed=7)
    state = begin(tmp_path / "retrain" / "state.json", options)
    return base, _append(_Context(settings=None, state=state, progress=None))  # type: ignore[arg-type]


def _exported(base_events: pa.Table, already: int, fresh: int) -> pd.DataFrame:
    """`already` events of the dataset exported again, then `fresh` copies of others under new ids, later."""
    plain = base_events.to_pandas().astype(object)
    old, new = plain.iloc[:already], plain.iloc[-fresh:]
    new = new.assign(
        event_id=[f"exported-{i}" for i in range(fresh)],
        occurred_at=new["occurred_at"] + timedelta(days=90),
    )
    return pd.concat([old, new], ignore_index=True)


def test_the_appended_version_is_the_base_and_the_new_rows(tmp_path: Path) -> None:
    from features.tables import Dataset

    base_events = modelling_data.dataset().events
    exported = _exported(base_events, already=5, fresh=12)
    base, result = _append_alone(tmp_path, exported)
    assert (result["already_in_dataset"], result["appended"], result["rejected"]) == (5, 12, 0)
    before, after = read_dataset(base), read_dataset(Path(result["dataset"]))
    plain = pd.concat([before.events.to_pandas().astype(object), exported.iloc[5:]], ignore_index=True)
    assert after.fingerprint() == Dataset(before.students, before.lectures, plain, {}).fingerprint()
    assert pa.types.is_dictionary(after.events.schema.field("student_id").type)


def test_the_append_keeps_an_ids_first_row_and_names_why_rows_are_left_out(tmp_path: Path) -> None:
    """The stream is at-least-once: a resent id keeps its first row; a row of an unknown student (even of
    an unknown lecture too) is rejected as such; the summary reads the appended rows' times and ties."""
    exported = _exported(modelling_data.dataset().events, already=0, fresh=4)
    exported["request_id"] = ["req-1", None, "", None]
    resent = exported.iloc[[0]].assign(
        progress=0.5, occurred_at=exported["occurred_at"].iloc[0] + timedelta(1)
    )
    stranger = exported.iloc[[3]].assign(event_id="stranger", student_id="s999", lecture_id="NO-SUCH")
    exported = pd.concat([exported, resent, stranger], ignore_index=True)
    _, result = _append_alone(tmp_path, exported)
    assert (result["exported"], result["stream_duplicates"], result["appended"], result["rejected"]) == (
        6,
        1,
        4,
        1,
    )
    assert pd.read_parquet(result["rejected_file"])["reason"].tolist() == ["student not in the dataset"]
    after = read_dataset(Path(result["dataset"])).events.to_pandas()
    kept = after[after["event_id"] == "exported-0"]
    assert len(kept) == 1 and kept["progress"].iloc[0] == exported["progress"].iloc[0]  # the first row
    times = pd.to_datetime(exported["occurred_at"].iloc[:4], utc=True)
    assert result["first_new_event"] == times.min().isoformat()
    assert result["last_new_event"] == times.max().isoformat()
    assert result["from_recommendations"] == 0.25  # one of four appended rows follows a list


def test_a_broken_exported_row_stops_the_append_and_writes_nothing(tmp_path: Path) -> None:
    from features.errors import SchemaError

    exported = _exported(modelling_data.dataset().events, already=0, fresh=3)
    exported.loc[1, "progress"] = 1.5
    with pytest.raises(SchemaError, match="exported events") as caught:
        _append_alone(tmp_path, exported)
    assert "progress" in str(caught.value)
    assert not (tmp_path / "datasets" / "synthetic-v2").exists()


@pytest.mark.slow
def test_retrain_resumes_after_a_failure(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.registry

    settings = world.settings
    world.store.apply_events(_new_events())
    path = settings.data_dir / "retrain" / "state.json"
    real = training.registry.register_run

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated crash while registering")

    monkeypatch.setattr(training.registry, "register_run", crash)
    state = begin(path, _options(world))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_retrain(state, settings)
    saved = RetrainState.load(path)
    assert saved is not None and not saved.finished
    assert list(saved.steps) == ["export", "append", "train", "champion"]
    assert "challenger" not in _aliases(settings)

    # resuming with contradicting options is refused, naming the option
    with pytest.raises(RetrainError, match="model: recorded 'sequence', given 'popularity'"):
        begin(path, None, given={"model": "popularity"})

    monkeypatch.setattr(training.registry, "register_run", real)
    result = _run_cli(settings, ["--no-export", "--region", "gimpo"])
    assert result.exit_code == 0, result.output
    assert f"resuming retraining {saved.id} after export, append, train, champion" in result.output
    resumed = RetrainState.load(path)
    assert resumed is not None and resumed.finished
    # earlier steps were not run again: the same runs, one training run and one re-evaluation in all
    assert resumed.steps["train"]["run_id"] == saved.steps["train"]["run_id"]
    runs = _client(settings).search_runs(
        [_client(settings).get_experiment_by_name("learnrec").experiment_id],
        filter_string=f"tags.`learnrec.retrain` = '{saved.id}'",
    )
    assert len(runs) == 2
    assert _aliases(settings)["challenger"] == resumed.steps["register"]["version"]
    assert _aliases(settings)["champion"] == world.champion
    assert "retrain-v" in result.output and "gimpo" in result.output  # the experiment to add
    assert f"learnrec promote --version {resumed.steps['register']['version']}" in result.output


def _run_cli(settings: Settings, args: list[str]) -> Any:
    from training.commands import retrain

    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Test root."""

    retrain.register(app)
    return CliRunner().invoke(app, ["retrain", *args])


@pytest.mark.slow
def test_cli_needs_a_model_without_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with modelling_data.mlflow_store(tmp_path) as settings:
        modelling_data.write(settings.datasets_dir / "synthetic")
        result = _run_cli(settings, ["--no-export"])
    assert result.exit_code == 1
    assert "no champion to take the model from: pass --model" in result.output
