"""`learnrec compare` and `learnrec tune` on a real MLflow store."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features.settings import Settings
from tests.training import modelling_data
from training.cli import app
from training.tracking import KIND_TRIAL, KIND_TUNE, TAG_KIND, find_runs

runner = CliRunner()


def _text(output: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with modelling_data.mlflow_store(tmp_path_factory.mktemp("cli")) as settings:
        modelling_data.write(settings.datasets_dir / "synthetic")
        yield settings


@pytest.mark.slow
def test_compare_prints_tables_and_writes_html(store: Settings) -> None:
    result = runner.invoke(app, ["compare", "--split", "leave_last_n"])
    assert result.exit_code == 1 and "learnrec train --model all --split leave_last_n" in _text(result.output)
    for models in (["popularity", "item_knn"], ["popularity"]):  # popularity twice: the latest run counts
        args = ["train", "--split", "leave_last_n", "--holdout", "2"]
        result = runner.invoke(app, [*args, *(x for m in models for x in ("-m", m))])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", "--split", "leave_last_n"])
    assert result.exit_code == 0, result.output
    text = _text(result.output)
    path = store.data_dir / "reports" / "compare-leave_last_n.html"
    assert f"report: {path}" in text.replace("\n", "")
    assert "compared 2 models" in text
    for word in ("popularity", "item_knn", "ndcg@10 per region", "seoul", "gimpo", "taebaek", "novelty"):
        assert word in text
    # equity: the metric per support category and grade, and the leader's served lists per group
    for word in (
        "ndcg@10 per support category",
        "ndcg@10 per grade",
        "served lists per group",
        "region seoul",
    ):
        assert word in text
    page = path.read_text(encoding="utf-8")
    assert "<h1>Models on the leave_last_n split</h1>" in page and "item_knn" in page
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert png is not None and base64.b64decode(png.group(1)).startswith(b"\x89PNG")
    # the latest popularity run is the one shown
    runs = find_runs(MlflowClient(store.tracking_uri()), store.mlflow.experiment, split="leave_last_n")
    latest_pop = next(r for r in runs if r.data.tags["learnrec.model"] == "popularity")
    assert latest_pop.info.run_id[:8] in text


def test_compare_out_option(store: Settings, tmp_path: Path) -> None:
    runner.invoke(app, ["train", "-m", "popularity", "--split", "new_students", "--fraction", "0.3"])
    out = tmp_path / "cmp.html"
    result = runner.invoke(app, ["compare", "--split", "new_students", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "popularity" in out.read_text(encoding="utf-8")


def test_tune_logs_nested_trials_and_best_params(store: Settings) -> None:
    args = ["tune", "-m", "segment_popularity", "--trials", "3", "--split", "temporal", "--seed", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = _text(result.output)
    assert "3 trials completed, 0 pruned" in text and "learnrec train --model segment_popularity" in text
    client = MlflowClient(store.tracking_uri())
    kinds = (KIND_TUNE, KIND_TRIAL)
    runs = find_runs(client, store.mlflow.experiment, split="temporal", kinds=kinds)
    parents = [r for r in runs if r.data.tags[TAG_KIND] == KIND_TUNE]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and all(c.data.tags[TAG_KIND] == KIND_TRIAL for c in children)
    values = [c.data.metrics["ndcg_at_10"] for c in children]
    assert parent.data.metrics["best_ndcg_at_10"] == pytest.approx(max(values))
    best = max(children, key=lambda c: c.data.metrics["ndcg_at_10"])
    for key in ("shrinkage", "half_life_days"):
        assert float(parent.data.params[f"best.{key}"]) == pytest.approx(float(best.data.params[key]))
    # the same seed proposes the same parameters
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = find_runs(client, store.mlflow.experiment, split="temporal", kinds=kinds)
    again = next(
        r for r in runs if r.data.tags[TAG_KIND] == KIND_TUNE and r.info.run_id != parent.info.run_id
    )
    assert {k: v for k, v in again.data.params.items() if k.startswith("best.")} == {
        k: v for k, v in parent.data.params.items() if k.startswith("best.")
    }


def test_tune_refuses_unknown_model_and_metric(store: Settings) -> None:
    result = runner.invoke(app, ["tune", "-m", "nope", "--trials", "1"])
    assert result.exit_code == 2 and "unknown model 'nope'" in _text(result.output)
    result = runner.invoke(app, ["tune", "-m", "popularity", "--metric", "auc"])
    assert result.exit_code == 2 and "unknown metric 'auc'" in _text(result.output)


def test_train_on_an_explicit_split(store: Settings, tmp_path: Path) -> None:
    from features.tables import read_dataset
    from training.splits import temporal

    split = temporal(read_dataset(store.datasets_dir / "synthetic"))
    train_file, test_file = tmp_path / "train.parquet", tmp_path / "test.csv"
    pq.write_table(split.train.events, train_file)
    split.test.to_pandas().to_csv(test_file, index=False)
    args = ["train", "-m", "popularity", "--split", "explicit", "--train-events", str(train_file)]
    result = runner.invoke(app, [*args, "--test-events", str(test_file), "--no-oracle"])
    assert result.exit_code == 0, result.output
    run = find_runs(MlflowClient(store.tracking_uri()), store.mlflow.experiment, split="explicit")[0]
    assert run.data.params["split.test_events"] == str(test_file)
    assert run.data.metrics["n_test_students"] == len(split.test_students)


def test_compare_without_split_takes_the_newest_runs_split(store: Settings, tmp_path: Path) -> None:
    """Regression: after a `--split explicit` run, `learnrec compare` failed until `--split explicit` was
    given (it looked for temporal runs)."""
    from features.tables import read_dataset
    from training.splits import temporal

    experiment = ["--experiment", "newest-split"]
    result = runner.invoke(app, ["compare", *experiment])
    assert result.exit_code == 1 and "no finished runs in experiment 'newest-split'" in _text(result.output)
    train = ["train", "-m", "popularity", "--no-oracle", *experiment]
    assert runner.invoke(app, [*train, "--split", "leave_last_n"]).exit_code == 0
    split = temporal(read_dataset(store.datasets_dir / "synthetic"))
    train_file, test_file = tmp_path / "train.parquet", tmp_path / "test.parquet"
    pq.write_table(split.train.events, train_file)
    pq.write_table(split.test, test_file)
    files = ["--train-events", str(train_file), "--test-events", str(test_file)]
    result = runner.invoke(app, [*train, "--split", "explicit", *files])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compare", *experiment])
    assert result.exit_code == 0, result.output
    text = _text(result.output)
    # the leave_last_n run is another question, not a skipped run of this one
    assert "compared 1 models on the explicit split; report:" in text
    assert (store.data_dir / "reports" / "compare-explicit.html").is_file()
    assert runner.invoke(app, [*train, "--split", "leave_last_n"]).exit_code == 0
    text = _text(runner.invoke(app, ["compare", *experiment]).output)
    assert "compared 1 models on the leave_last_n split" in text


def test_compare_shows_one_test_horizon(store: Settings) -> None:
    base = ["train", "-m", "popularity", "--split", "temporal", "--experiment", "horizons", "--no-oracle"]
    for days in ("7", "0"):
        result = runner.invoke(app, [*base, "--horizon-days", days])
        assert result.exit_code == 0, result.output
    client = MlflowClient(store.tracking_uri())
    runs = find_runs(client, "horizons", split="temporal")
    assert sorted(r.data.params["split.horizon_days"] for r in runs) == ["7", "null"]
    # the newest run's evaluation (unbounded); the 7-day run is another evaluation
    text = _text(runner.invoke(app, ["compare", "--split", "temporal", "--experiment", "horizons"]).output)
    assert (
        "temporal split (all later events)" in text and "1 runs of other datasets or split parameters" in text
    )
    result = runner.invoke(app, ["compare", "--experiment", "horizons", "--horizon-days", "7"])
    assert result.exit_code == 0, result.output
    text = _text(result.output)
    assert "temporal split (7-day horizon)" in text and "compared 1 models" in text
    seven = next(r for r in runs if r.data.params["split.horizon_days"] == "7")
    assert seven.info.run_id[:8] in text
    result = runner.invoke(app, ["compare", "--experiment", "horizons", "--horizon-days", "28"])
    assert result.exit_code == 1 and "no finished runs" in _text(result.output)


def test_horizon_days_is_a_temporal_option(store: Settings) -> None:
    result = runner.invoke(
        app, ["train", "-m", "popularity", "--split", "new_students", "--horizon-days", "7"]
    )
    assert result.exit_code == 2 and "applies to the temporal split" in _text(result.output)
    result = runner.invoke(app, ["train", "-m", "popularity", "--split", "temporal", "--horizon-days", "-3"])
    assert result.exit_code == 1 and "horizon_days" in _text(result.output)


def test_the_blend_learns_on_the_split_horizon() -> None:
    from training.splits import split_model_params, temporal

    ds = modelling_data.dataset()
    split = temporal(ds, horizon_days=7)
    assert split_model_params("blend", {}, split) == {"holdout_days": 7}
    assert split_model_params("blend", {}, temporal(ds, horizon_days=None)) == {"holdout_days": None}
    assert split_model_params("blend", {"holdout_days": 3}, split) == {"holdout_days": 3}
    assert split_model_params("blend", {"holdout_share": 0.1}, split) == {"holdout_share": 0.1}
    assert split_model_params("lightfm", {}, split) == {}
