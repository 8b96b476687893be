"""Registry and aliases on a real MLflow store: register, promote (refuse / force), history, load by alias."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features.settings import Settings, get_settings
from models.errors import RegisteredModelNotFoundError
from models.loading import load_registered, resolve_alias
from tests.training import modelling_data
from training import registry
from training.cli import app
from training.errors import PromotionRefused, TrackingError
from training.tracking import KIND_MODEL, TAG_MODEL, TAG_SPLIT, find_runs

runner = CliRunner()


def _text(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@dataclass
class Store:
    settings: Settings
    client: MlflowClient
    runs: dict[tuple[str, str], str]  # (model, split) -> run id
    metrics: dict[tuple[str, str], float]  # (model, split) -> ndcg_at_10


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with modelling_data.mlflow_store(tmp_path_factory.mktemp("registry")) as settings:
        modelling_data.write(settings.datasets_dir / "synthetic")
        result = runner.invoke(app, ["train", "-m", "popularity", "-m", "sequence", "--register"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["train", "-m", "popularity", "--split", "new_region"])
        assert result.exit_code == 0, result.output
        client = MlflowClient(settings.tracking_uri())
        runs, metrics = {}, {}
        for run in find_runs(client, settings.mlflow.experiment, kinds=(KIND_MODEL,)):
            key = (run.data.tags[TAG_MODEL], run.data.tags[TAG_SPLIT])
            runs[key] = run.info.run_id
            metrics[key] = run.data.metrics["ndcg_at_10"]
        yield Store(settings, client, runs, metrics)


@pytest.fixture
def model_name(
    store: Store, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A registered model name of the test's own (the CLI reads it from the settings)."""
    name = f"t-{request.node.name.replace('_', '-')[:40]}"
    monkeypatch.setenv("LEARNREC_MLFLOW__REGISTERED_MODEL", name)
    get_settings.cache_clear()
    yield name
    get_settings.cache_clear()


def test_train_register_makes_the_best_champion_only_when_none(store: Store) -> None:
    name = store.settings.mlflow.registered_model
    champion = registry.candidate(
        store.client, name, registry.alias_version(store.client, name, "champion") or ""
    )
    assert champion.model == "sequence"  # the better of the two by ndcg_at_10
    assert store.metrics[("sequence", "temporal")] > store.metrics[("popularity", "temporal")]
    result = runner.invoke(app, ["train", "-m", "item_knn", "--register"])
    assert result.exit_code == 0, result.output
    assert "already has a champion" in _text(result.output)
    assert registry.alias_version(store.client, name, "champion") == champion.version
    moves = registry.history(store.client, name)
    assert [(m.alias, m.to_version, m.from_version) for m in moves] == [("champion", champion.version, None)]


def test_promote_refuses_worse_candidate_and_accepts_with_force(store: Store, model_name: str) -> None:
    seq = registry.register_run(store.client, store.runs[("sequence", "temporal")], model_name).version
    pop = registry.register_run(store.client, store.runs[("popularity", "temporal")], model_name).version
    assert (
        registry.register_run(store.client, store.runs[("popularity", "temporal")], model_name).version == pop
    )
    result = runner.invoke(app, ["promote", "--version", str(seq), "--by", "bob"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["promote", "--version", str(pop)])
    text = _text(result.output)
    assert result.exit_code == 1
    assert f"{store.metrics[('popularity', 'temporal')]:.4f}" in text
    assert f"{store.metrics[('sequence', 'temporal')]:.4f}" in text
    assert "worse than champion" in text and "--force" in text
    assert resolve_alias(model_name, "champion", store.settings.tracking_uri()) == str(seq)

    result = runner.invoke(app, ["promote", "--version", str(pop), "--force", "--by", "alice"])
    assert result.exit_code == 0, result.output
    assert resolve_alias(model_name, "champion", store.settings.tracking_uri()) == str(pop)
    moves = registry.history(store.client, model_name)
    assert [(m.from_version, m.to_version, m.by, m.forced) for m in moves] == [
        (None, str(seq), "bob", False),
        (str(seq), str(pop), "alice", True),
    ]
    forced = moves[1]
    assert forced.metric == "ndcg_at_10" and "worse than champion" in forced.reason
    assert forced.to_value == pytest.approx(store.metrics[("popularity", "temporal")])
    assert forced.from_value == pytest.approx(store.metrics[("sequence", "temporal")])
    assert forced.metrics["recall_at_10"] > 0 and forced.model == "popularity"
    assert moves[0].when <= moves[1].when

    result = runner.invoke(app, ["promote", "--history"])
    assert result.exit_code == 0
    text = _text(result.output)
    assert "alice" in text and "bob" in text and "yes [1]" in text and "2 alias moves recorded" in text


def test_different_evaluation_is_refused_unless_forced(store: Store, model_name: str) -> None:
    seq = registry.register_run(store.client, store.runs[("sequence", "temporal")], model_name).version
    registry.promote(store.client, model_name, str(seq), by="test")
    other = registry.register_run(store.client, store.runs[("popularity", "new_region")], model_name).version
    with pytest.raises(
        PromotionRefused, match=r"different evaluation: champion .*split temporal.*split new_region"
    ):
        registry.promote(store.client, model_name, str(other))
    move = registry.promote(store.client, model_name, str(other), force=True, by="test")
    assert move is not None and move.forced and "different evaluation" in move.reason
    # going back is just as incomparable
    with pytest.raises(PromotionRefused, match="different evaluation"):
        registry.promote(store.client, model_name, str(seq))


def test_better_candidate_and_challenger_need_no_force(store: Store, model_name: str) -> None:
    pop_run = store.runs[("popularity", "temporal")]
    result = runner.invoke(app, ["promote", "--run-id", pop_run])  # registers the run, nobody holds champion
    assert result.exit_code == 0, result.output
    seq = registry.register_run(store.client, store.runs[("sequence", "temporal")], model_name).version
    move = registry.promote(store.client, model_name, str(seq), by="test")
    assert move is not None and not move.forced and move.from_version == "1"
    result = runner.invoke(app, ["promote", "--version", "1", "--alias", "challenger"])
    assert result.exit_code == 0, result.output
    assert resolve_alias(model_name, "challenger", store.settings.tracking_uri()) == "1"
    assert registry.promote(store.client, model_name, "1", "challenger") is None  # already there


def test_register_refuses_unknown_or_modelless_runs(store: Store, model_name: str) -> None:
    with pytest.raises(TrackingError, match="does not exist"):
        registry.register_run(store.client, "0" * 32, model_name)
    audit = store.client.get_experiment_by_name(registry.AUDIT_EXPERIMENT)
    assert audit is not None
    audit_run = store.client.search_runs([audit.experiment_id], max_results=1)[0]
    with pytest.raises(TrackingError, match="logged no recommender"):
        registry.register_run(store.client, audit_run.info.run_id, model_name)
    result = runner.invoke(app, ["promote", "--version", "7"])
    assert result.exit_code == 1 and "has no version 7" in _text(result.output)


def test_load_registered_by_alias_and_version(store: Store) -> None:
    name, uri = store.settings.mlflow.registered_model, store.settings.tracking_uri()
    version = resolve_alias(name, "champion", uri)
    assert version is not None
    loaded = load_registered(name, "champion", uri)
    assert (loaded.model_name, loaded.version, loaded.alias) == (name, version, "champion")
    assert loaded.run_id == store.runs[("sequence", "temporal")]
    assert loaded.recommender.name == "sequence"
    assert "수학 개념 완성 1강" in loaded.lectures.column("title").to_pylist()
    assert set(loaded.fallback) >= {"global", "by_region", "by_region_grade"}
    by_number = load_registered(name, version, uri)
    assert by_number.alias is None and by_number.version == version
    rows = np.arange(3, dtype=np.int32)
    from features.matrices import build_training_data
    from features.tables import read_dataset
    from training.splits import temporal

    split = temporal(read_dataset(store.settings.datasets_dir / "synthetic"))
    data = build_training_data(
        split.train.students, split.train.lectures, split.train.events, as_of=split.as_of
    )
    batch = data.batch(rows)
    np.testing.assert_array_equal(loaded.recommender.score(batch), by_number.recommender.score(batch))


def test_load_registered_missing(store: Store) -> None:
    uri = store.settings.tracking_uri()
    assert resolve_alias("no-such-model", "champion", uri) is None
    assert resolve_alias(store.settings.mlflow.registered_model, "nobody", uri) is None
    with pytest.raises(RegisteredModelNotFoundError, match="does not exist"):
        load_registered("no-such-model", "champion", uri)
    with pytest.raises(RegisteredModelNotFoundError, match=r"no alias 'nobody'.*champion -> v"):
        load_registered(store.settings.mlflow.registered_model, "nobody", uri)
    with pytest.raises(RegisteredModelNotFoundError, match="no version 99"):
        load_registered(store.settings.mlflow.registered_model, "99", uri)
