"""Evaluation on real fitted models: training lectures excluded, per-group reports, NaN refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pytest

from features.matrices import build_training_data
from features.tables import Dataset
from models.base import StudentBatch
from models.errors import NumericalError
from models.item_knn import ItemKNNRecommender
from models.popularity import PopularityRecommender
from tests.training import modelling_data
from training.errors import EvaluationError
from training.evaluate import EvaluationReport, evaluate, item_stats, oracle_report
from training.metrics import self_information
from training.splits import Split, leave_last_n, new_region, temporal


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return modelling_data.dataset()


def _fit(model_cls: type, split: Split, **params: object):  # type: ignore[no-untyped-def]
    data = build_training_data(
        split.train.students, split.train.lectures, split.train.events, as_of=split.as_of
    )
    return model_cls(**params).fit(data)


def _tiny() -> Dataset:
    """Three lectures, popularity L1 > L2 > L3; student t took L1 before the cutoff and L2 after."""
    lectures = pd.DataFrame(
        [
            {"lecture_id": f"L{i}", "title": f"강의 {i}", "provider": "EBS", "subject": s, "grades": ["h1"],
             "level": 1, "series_id": f"S{i}", "series_position": 1, "duration_min": 30.0, "regions": ["*"],
             "active": True}
            for i, s in ((1, "수학"), (2, "영어"), (3, "과학"))
        ]
    )  # fmt: skip
    students = pd.DataFrame(
        [{"student_id": sid, "region": "seoul", "grade": "h1"} for sid in ("a", "b", "c", "t")]
    )
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    rows = [("a", "L1"), ("b", "L1"), ("c", "L1"), ("a", "L2"), ("b", "L2"), ("a", "L3"), ("t", "L1")]
    times = [t0 + timedelta(hours=i) for i in range(len(rows))] + [t0 + timedelta(days=5)]
    rows.append(("t", "L2"))
    events = [
        {"student_id": s, "lecture_id": lec, "type": "enrol", "progress": 0.0, "occurred_at": t}
        for (s, lec), t in zip(rows, times, strict=True)
    ]
    ev = pd.DataFrame(events)
    ev.insert(0, "event_id", [f"e{i}" for i in range(len(ev))])
    return Dataset(students, lectures, ev, {})


def test_training_lectures_are_excluded_before_scoring() -> None:
    """The most popular lecture L1 is in t's training history: the first slot must go to L2 (a hit)."""
    ds = _tiny()
    split = temporal(ds, cutoff=datetime(2025, 3, 3, tzinfo=UTC))
    assert split.test_students == ("t",)
    model = _fit(PopularityRecommender, split, half_life_days=None)
    report = evaluate(model, split, ds, ks=(1, 2))
    assert report.overall["precision_at_1"] == 1.0
    assert report.overall["ndcg_at_2"] == 1.0
    # one list of two: L2 then L3 (L1 excluded) -> precision@2 = 1/2, coverage 2 of 3 lectures
    assert report.overall["precision_at_2"] == 0.5
    assert report.overall["coverage_at_2"] == pytest.approx(2 / 3)


def test_report_overall_per_region_and_grade(ds: Dataset) -> None:
    split = temporal(ds)
    model = _fit(ItemKNNRecommender, split)
    report = evaluate(model, split, ds, ks=(5, 10), fingerprint="f" * 64)
    assert report.model == "item_knn" and report.split == "temporal" and report.ks == (5, 10)
    assert report.n_students == len(split.test_students)
    assert set(report.by_region) <= {"seoul", "gimpo", "taebaek"} and "seoul" in report.by_region
    assert set(report.by_grade) <= {"h1", "h2"}
    assert sum(report.n_by_region.values()) == report.n_students
    for key in ("ndcg_at_10", "recall_at_5", "map_at_10", "mrr_at_10", "hit_rate_at_10", "coverage_at_10",
                "novelty_at_10", "subject_diversity_at_10", "intra_list_diversity_at_10"):  # fmt: skip
        assert key in report.overall
    for key in ("ndcg_at_10", "recall_at_10", "hit_rate_at_10", "coverage_at_10"):
        assert 0.0 <= report.overall[key] <= 1.0
    flat = report.metrics()
    assert flat["ndcg_at_10/region/seoul"] == report.by_region["seoul"]["ndcg_at_10"]
    assert flat["recall_at_5/grade/h1"] == report.by_grade["h1"]["recall_at_5"]
    assert report.dataset_fingerprint == "f" * 64
    # a personalised model beats chance on series-following students
    assert report.overall["hit_rate_at_10"] > 0.5
    again = evaluate(model, split, ds, ks=(5, 10), fingerprint="f" * 64)
    assert again.overall == report.overall
    assert EvaluationReport.from_dict(report.to_dict()) == report


def test_report_files(ds: Dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    split = leave_last_n(ds)
    report = evaluate(_fit(PopularityRecommender, split), split, ds)
    js, page = report.write(tmp_path)
    assert EvaluationReport.from_dict(__import__("json").loads(js.read_text(encoding="utf-8"))) == report
    text = page.read_text(encoding="utf-8")
    assert "<h2>Per region</h2>" in text and "seoul" in text and "ndcg_at_10" in text


def test_new_region_students_scored_from_features(ds: Dataset) -> None:
    split = new_region(ds)
    model = _fit(PopularityRecommender, split)
    assert "taebaek" not in model.catalogue.regions.ids
    report = evaluate(model, split, ds)
    assert list(report.by_region) == ["taebaek"]
    assert report.n_students == len(split.test_students)
    # popularity still finds the first episodes new students start with
    assert report.overall["hit_rate_at_10"] > 0.3


class _NaNPopularity(PopularityRecommender):
    name = "nan_popularity"

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        scores = super().score(batch)
        scores[-1, 0] = np.nan
        return scores


def test_nan_scores_fail_loudly(ds: Dataset) -> None:
    split = temporal(ds)
    model = _fit(_NaNPopularity, split)
    with pytest.raises(NumericalError, match=r"nan_popularity scored NaN or infinity for \d+ of \d+ "):
        evaluate(model, split, ds)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    from features.synth import generate, scaled_config
    from features.tables import read_dataset

    directory = tmp_path_factory.mktemp("synth") / "synthetic"
    generate(scaled_config(students=800, lectures=200, seed=5), directory)
    return read_dataset(directory), directory


class _RandomScores(PopularityRecommender):
    name = "random"

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        rng = np.random.default_rng(0)
        return rng.random((len(batch), len(self.catalogue.lectures)), dtype=np.float32)


def _plain(ds: Dataset) -> Dataset:
    """The same dataset with its id columns as Python strings instead of dictionary codes."""
    events = ds.events.to_pandas().astype({"student_id": object, "lecture_id": object})
    return Dataset(ds.students, ds.lectures, events, ds.manifest)


def test_item_statistics_count_each_lecture_s_distinct_students(synthetic: tuple[Dataset, Path]) -> None:
    ds, _ = synthetic
    assert pa.types.is_dictionary(ds.events.schema.field("student_id").type)  # as read: coded ids
    split = temporal(ds)
    catalogue = _fit(PopularityRecommender, split).catalogue
    events = split.train.events
    # the definition, on every event's text
    pairs = events.select(["student_id", "lecture_id"]).to_pandas().astype(str).drop_duplicates()
    counts = pairs["lecture_id"].value_counts()
    per_lecture = np.array([counts.get(lecture, 0) for lecture in catalogue.lectures.ids])
    expected = self_information(per_lecture, pairs["student_id"].nunique())
    assert (counts > 1).any() and len(pairs) < len(events)  # repeats to drop, lectures shared
    for frame in (events, _plain(split.train).events):
        np.testing.assert_array_equal(item_stats(catalogue, frame).information, expected)


def test_coded_and_plain_ids_evaluate_alike(synthetic: tuple[Dataset, Path]) -> None:
    ds, _ = synthetic
    reports = []
    for d in (ds, _plain(ds)):
        split = temporal(d)
        report = evaluate(_fit(ItemKNNRecommender, split), split, d, ks=(5, 10), fingerprint="f" * 64)
        reports.append({k: v for k, v in report.to_dict().items() if k != "seconds"})
    assert reports[0] == reports[1]
    assert reports[0]["overall"]["hit_rate_at_10"] > 0


def test_oracle_ranks_by_true_appeal(synthetic: tuple[Dataset, Path]) -> None:
    ds, directory = synthetic
    split = temporal(ds)
    report = oracle_report(split, ds, directory, ks=(10,))
    assert report.model == "oracle" and report.n_students == len(split.test_students)
    assert report.dataset_fingerprint == ds.fingerprint()
    random = evaluate(_fit(_RandomScores, split), split, ds)
    # knowing every student's taste beats guessing among the eligible lectures by a wide margin
    assert report.overall["ndcg_at_10"] > random.overall["ndcg_at_10"] + 0.1
    assert oracle_report(split, ds, directory).overall == report.overall


def test_oracle_needs_ground_truth(ds: Dataset, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="no ground_truth/ directory"):
        oracle_report(temporal(ds), ds, tmp_path)


class _WorseForOneGroup(ItemKNNRecommender):
    """Item-kNN, but the students of one support category get its ranking upside down (a planted gap)."""

    def __init__(self, group: str | None) -> None:
        super().__init__()
        self.group = group

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        scores = super().score(batch)
        column = f"support_category={self.group}"
        if self.group and column in self.student_feature_names:
            hit = batch.features[:, self.student_feature_names.index(column)].toarray().ravel() > 0
            scores[hit] = -scores[hit]
        return scores


def test_equity_tables_find_a_group_the_model_serves_worse(ds: Dataset, tmp_path: Path) -> None:
    """Planted: one support category gets the model's ranking upside down. The per-category metrics and the
    slot shares of the served lists show that group, and only that group, apart; without the plant they
    do not."""
    import csv

    categories = ("basic_livelihood", "multicultural", "single_parent")
    students = ds.students.assign(support_category=[categories[i % 3] for i in range(len(ds.students))])
    data = Dataset(students, ds.lectures, ds.events, {})
    split = temporal(data)
    fit = build_training_data(
        split.train.students, split.train.lectures, split.train.events, as_of=split.as_of
    )
    fair = evaluate(_WorseForOneGroup(None).fit(fit), split, data, raw=False)
    planted = evaluate(_WorseForOneGroup("multicultural").fit(fit), split, data, raw=False)
    assert set(planted.by_support) == set(categories)
    assert sum(planted.n_by_support.values()) == planted.n_students
    key = "ndcg_at_10"
    gap = {c: planted.by_support[c][key] - fair.by_support[c][key] for c in categories}
    assert gap["multicultural"] < -0.1, gap  # found
    assert abs(gap["basic_livelihood"]) < 1e-9 and abs(gap["single_parent"]) < 1e-9  # the others as they were
    # the served lists of the group differ: its top-10 slots go to other lectures (levels here)
    fair_levels = fair.slots["support_category"]["multicultural"]["level"]
    planted_levels = planted.slots["support_category"]["multicultural"]["level"]
    assert fair_levels != planted_levels
    assert (
        planted.slots["support_category"]["single_parent"] == fair.slots["support_category"]["single_parent"]
    )
    for attribute in ("all", "support_category", "region", "grade"):
        for shares in planted.slots[attribute].values():
            assert sum(shares["subject"].values()) == pytest.approx(1.0)
            assert sum(shares["level"].values()) == pytest.approx(1.0)
    # logged with the run: the flat metrics and the equity table
    assert planted.metrics()["ndcg_at_10/support/multicultural"] == planted.by_support["multicultural"][key]
    planted.write(tmp_path)
    with (tmp_path / "equity.csv").open(encoding="utf-8") as fh:
        rows = {(r["attribute"], r["group"]): r for r in csv.DictReader(fh)}
    assert float(rows[("support_category", "multicultural")][key]) == pytest.approx(
        planted.by_support["multicultural"][key]
    )
    assert {("all", "all"), ("region", "seoul"), ("grade", "h1")} <= set(rows)
    assert "Per support category" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert EvaluationReport.from_dict(planted.to_dict()) == planted
