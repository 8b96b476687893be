"""`learnrec train` against a real MLflow SQLite store: params, metrics, inputs, artifacts, NaN refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features.settings import Settings
from features.tables import read_dataset
from models import MODELS
from models.base import StudentBatch
from models.popularity import PopularityRecommender
from tests.training import modelling_data
from training.cli import app
from training.tracking import (
    DIGEST_CHARS,
    KIND_MODEL,
    TAG_FINGERPRINT,
    TAG_GIT_COMMIT,
    TAG_KIND,
    TAG_MODEL,
    TAG_MODEL_URI,
    TAG_SPLIT,
    find_runs,
    load_report,
)

runner = CliRunner()


def _text(output: str) -> str:
    """CLI output without rich's panel borders and line breaks (messages wrap inside the panel)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("tracking")
    with modelling_data.mlflow_store(root) as settings:
        modelling_data.write(settings.datasets_dir / "synthetic")
        result = runner.invoke(
            app,
            [
                "train",
                "--model",
                "popularity",
                "--model",
                "sequence",
                "--split",
                "temporal",
                "--k",
                "10",
                "--k",
                "5",
            ],
        )
        assert result.exit_code == 0, result.output
        yield settings


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(settings.tracking_uri())


def _runs(settings: Settings) -> dict[str, Any]:
    runs = find_runs(_client(settings), settings.mlflow.experiment, split="temporal", kinds=(KIND_MODEL,))
    return {r.data.tags[TAG_MODEL]: r for r in runs}


def test_one_run_per_model_with_params_and_tags(store: Settings) -> None:
    runs = _runs(store)
    assert set(runs) == {"popularity", "sequence"}
    ds = read_dataset(store.datasets_dir / "synthetic")
    for name, run in runs.items():
        tags, params = run.data.tags, run.data.params
        assert tags[TAG_KIND] == KIND_MODEL and tags[TAG_SPLIT] == "temporal"
        assert tags[TAG_FINGERPRINT] == ds.fingerprint()
        assert len(tags[TAG_GIT_COMMIT]) == 40  # the repository's commit
        assert params["split"] == "temporal" and params["split.quantile"] == "0.8"
        assert params["ks"] == "10,5" and "split.cutoff" in params
        assert params["seed"] == "42"
        assert tags[TAG_MODEL_URI].startswith("models:/m-"), name
    assert runs["sequence"].data.params["window"] == "2"
    assert runs["popularity"].data.params["half_life_days"] == "30.0"


def test_metrics_overall_per_region_and_grade(store: Settings) -> None:
    run = _runs(store)["sequence"]
    metrics = run.data.metrics
    expected = (
        "ndcg_at_10", "recall_at_5", "precision_at_10", "map_at_10", "mrr_at_10", "hit_rate_at_10",
        "coverage_at_10", "novelty_at_10", "subject_diversity_at_10", "intra_list_diversity_at_10",
        "ndcg_at_10/region/seoul", "ndcg_at_10/region/gimpo", "ndcg_at_5/grade/h1", "fit_seconds",
    )  # fmt: skip
    for key in expected:
        assert key in metrics, key
    report = load_report(_client(store), run.info.run_id)
    assert report.overall["ndcg_at_10"] == pytest.approx(metrics["ndcg_at_10"])
    assert report.by_region["seoul"]["ndcg_at_10"] == pytest.approx(metrics["ndcg_at_10/region/seoul"])
    assert metrics["n_test_students"] == report.n_students > 0


def test_dataset_logged_as_input_with_fingerprint_digest(store: Settings) -> None:
    run = _client(store).get_run(_runs(store)["popularity"].info.run_id)
    ds = read_dataset(store.datasets_dir / "synthetic")
    assert run.inputs is not None
    inputs = run.inputs.dataset_inputs
    contexts = {}
    for item in inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        contexts[context] = item.dataset
    assert set(contexts) == {"training", "testing"}
    for dataset in contexts.values():
        assert dataset.digest == ds.fingerprint()[:DIGEST_CHARS]
        assert "synthetic" in dataset.source
    profile = json.loads(str(contexts["training"].profile))
    assert 0 < profile["num_rows"] < ds.sizes["events"]


def test_report_and_model_artifacts(store: Settings, tmp_path: Path) -> None:
    client = _client(store)
    run = _runs(store)["sequence"]
    names = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert names == {"evaluation/report.json", "evaluation/report.html", "evaluation/equity.csv"}
    model_id = run.data.tags[TAG_MODEL_URI].removeprefix("models:/")
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path)))
    artifacts = model_dir / "artifacts"
    assert {p.name for p in artifacts.iterdir()} >= {
        "recommender",
        "lectures.parquet",
        "students.parquet",
        "fallback.json",
    }
    assert (artifacts / "recommender" / "model.json").is_file()
    lectures = pq.read_table(artifacts / "lectures.parquet").to_pydict()
    assert "수학 개념 완성 1강" in lectures["title"]
    students = pq.read_table(artifacts / "students.parquet").to_pydict()
    assert {"student_id", "region", "grade", "history", "history_weight"} <= set(students)
    row = students["student_id"].index("s000")
    assert students["history"][row] and len(students["history"][row]) == len(students["history_weight"][row])
    fallback = json.loads((artifacts / "fallback.json").read_text(encoding="utf-8"))
    assert fallback["global"] and set(fallback["by_region"]) == {"seoul", "gimpo", "taebaek"}
    assert "seoul|h1" in fallback["by_region_grade"]
    # the seoul-only lecture is popular in seoul, never in gimpo
    assert "SEOUL-1" in fallback["by_region"]["seoul"] and "SEOUL-1" not in fallback["by_region"]["gimpo"]
    # the models package travels with the pyfunc as code
    assert (model_dir / "code" / "models" / "pyfunc.py").is_file()


class _NaNModel(PopularityRecommender):
    name = "nan_model"

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        return np.full((len(batch), len(self.catalogue.lectures)), np.nan, dtype=np.float32)


def test_nan_scores_fail_loudly_and_log_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, "nan_model", _NaNModel)
    with modelling_data.mlflow_store(tmp_path) as settings:
        modelling_data.write(settings.datasets_dir / "synthetic")
        result = runner.invoke(app, ["train", "--model", "nan_model", "--model", "popularity"])
        assert result.exit_code == 1
        assert "nan_model failed" in _text(result.output) and "NaN or infinity" in _text(result.output)
        runs = find_runs(
            MlflowClient(settings.tracking_uri()), settings.mlflow.experiment, kinds=(KIND_MODEL,)
        )
        assert [r.data.tags[TAG_MODEL] for r in runs] == ["popularity"]


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with modelling_data.mlflow_store(tmp_path):
        result = runner.invoke(
            app, ["train", "--model", "popularity", "--split", "temporal", "--region", "gimpo"]
        )
        assert result.exit_code == 2 and "applies to the new_region split" in _text(result.output)
        result = runner.invoke(app, ["train", "--model", "nope"])
        assert result.exit_code == 2 and "unknown model nope" in _text(result.output)
        result = runner.invoke(app, ["train", "--model", "popularity", "--split", "explicit"])
        assert result.exit_code == 2 and "--train-events and --test-events" in _text(result.output)
        result = runner.invoke(
            app, ["train", "--model", "popularity", "--dataset", str(tmp_path / "missing")]
        )
        assert result.exit_code == 1 and "does not exist" in _text(result.output)


@pytest.mark.slow
def test_oracle_logged_once_per_evaluation_on_synthetic_data(tmp_path: Path) -> None:
    from features.synth import generate, scaled_config
    from training.tracking import KIND_ORACLE

    with modelling_data.mlflow_store(tmp_path) as settings:
        generate(scaled_config(students=500, lectures=150, seed=11), settings.datasets_dir / "synthetic")
        for _ in range(2):
            result = runner.invoke(app, ["train", "-m", "popularity"])
            assert result.exit_code == 0, result.output
        assert "oracle: already logged for this evaluation" in _text(result.output)
        client = MlflowClient(settings.tracking_uri())
        oracles = find_runs(client, settings.mlflow.experiment, kinds=(KIND_ORACLE,))
        assert len(oracles) == 1
        oracle = oracles[0]
        assert oracle.data.tags[TAG_MODEL] == "oracle" and TAG_MODEL_URI not in oracle.data.tags
        assert oracle.data.metrics["ndcg_at_10"] > 0
        assert load_report(client, oracle.info.run_id).model == "oracle"
        result = runner.invoke(app, ["train", "-m", "popularity", "--split", "leave_last_n"])
        assert len(find_runs(client, settings.mlflow.experiment, kinds=(KIND_ORACLE,))) == 2


def test_students_table_histories_match_each_students_sequence_in_any_block_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The history columns are built from the arrays in blocks of students: per student they are the
    sequence's lecture ids and each one's interaction weight (0 without one), whatever the block size."""
    from dataclasses import replace

    import scipy.sparse as sp

    from features.matrices import build_training_data
    from training import tracking

    ds = modelling_data.dataset()
    data = build_training_data(ds.students, ds.lectures, ds.events)
    # one sequence lecture loses its interaction: it must weigh 0, not shift the others
    interactions = data.interactions.tolil()
    first = next(i for i, s in enumerate(data.sequences) if len(s) > 1)
    interactions[first, int(data.sequences[first][0])] = 0
    data = replace(data, interactions=sp.csr_matrix(interactions))
    ids = data.catalogue.lectures.ids
    expected_history = [[ids[r] for r in s] for s in data.sequences]
    dense = data.interactions.toarray()
    expected_weight = [[float(dense[i, r]) for r in s] for i, s in enumerate(data.sequences)]
    assert expected_weight[first][0] == 0.0 and any(w > 0 for w in expected_weight[first])
    for block in (1, 3, len(data.sequences) + 5):
        monkeypatch.setattr(tracking, "HISTORY_BLOCK_STUDENTS", block)
        table = tracking.students_table(data, ds.students).to_pydict()
        assert table["student_id"] == list(data.students.ids)
        assert table["history"] == expected_history
        assert table["history_weight"] == expected_weight  # float32 both ways: exact
