"""The ground truth of synthetic datasets: same appeal as the generator, calibrated probabilities, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.errors import DatasetNotFoundError, GroundTruthError, SchemaError
from features.ground_truth import (
    GROUND_TRUTH_DIR,
    META_FILE,
    GroundTruth,
    ModelWeights,
    appeal_matrix,
    appeal_pairs,
    complete_from_appeal,
)
from features.synth import generate, scaled_config
from features.tables import read_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("truth") / "ds"
    generate(scaled_config(600, 1000, seed=11), out)
    return out


@pytest.fixture(scope="module")
def truth(dataset: Path) -> GroundTruth:
    return GroundTruth.load(dataset)


def test_shapes_types_and_ranges(dataset: Path, truth: GroundTruth) -> None:
    ds = read_dataset(dataset, validate=False)
    students = ds.students["student_id"].tolist()[:50]
    lectures = ds.lectures["lecture_id"].tolist()
    assert truth.n_students == 600 and truth.n_lectures == 1000
    appeal = truth.appeal(students, lectures)
    enrol = truth.enrol_probability(students, lectures)
    complete = truth.complete_probability(students, lectures)
    for array in (appeal, enrol, complete):
        assert array.shape == (50, 1000) and array.dtype == np.float32 and np.isfinite(array).all()
    assert ((enrol >= 0) & (enrol <= 1)).all() and ((complete >= 0) & (complete <= 1)).all()
    # enrolment is monotone in appeal for each student
    for i in range(5):
        order = np.argsort(appeal[i], kind="stable")
        assert (np.diff(enrol[i][order]) >= -1e-6).all()
    # rows follow the ids asked for, in their order
    flipped = truth.appeal(students[::-1], lectures[:7])
    assert np.array_equal(flipped, appeal[::-1, :7])


def test_matrix_and_pair_forms_agree(truth: GroundTruth) -> None:
    """The generator scores pairs; GroundTruth scores matrices: both must be the same model."""
    rng = np.random.default_rng(0)
    s = rng.integers(truth.n_students, size=200)
    lec = rng.integers(truth.n_lectures, size=200)
    students, lectures = truth.students.take(s), truth.lectures.take(lec)
    pairs = appeal_pairs(students, lectures, truth.weights)
    matrix = appeal_matrix(students, lectures, truth.weights)
    np.testing.assert_allclose(pairs, np.diag(matrix), rtol=1e-9, atol=1e-9)
    ids_s = [truth.meta.students.format(int(r)) for r in s]
    ids_l = [truth.meta.lectures.format(int(r)) for r in lec]
    np.testing.assert_allclose(np.diag(truth.appeal(ids_s, ids_l)), pairs, rtol=1e-5, atol=1e-5)
    p_pairs = complete_from_appeal(
        pairs,
        students.diligence,
        students.outside,
        students.level,
        lectures.level,
        lectures.duration,
        truth.weights,
    )
    np.testing.assert_allclose(np.diag(truth.complete_probability(ids_s, ids_l)), p_pairs, atol=1e-6)


def test_completion_probability_is_calibrated_on_the_generated_events(
    dataset: Path, truth: GroundTruth
) -> None:
    """The generator draws every completion from `complete_probability`: observed rates must match."""
    ds = read_dataset(dataset, validate=False)
    ev = ds.events.to_pandas()
    pairs = ev.groupby(["student_id", "lecture_id"])["type"].agg(lambda t: "complete" in set(t)).reset_index()
    # enrolments near the end of the window may be cut before their completion: leave them out
    enrolled = ev[ev["type"] == "enrol"].set_index(["student_id", "lecture_id"])["occurred_at"]
    cutoff = ev["occurred_at"].max() - pd.Timedelta(days=30)
    pairs = pairs[
        (enrolled.reindex(pd.MultiIndex.from_frame(pairs[["student_id", "lecture_id"]])) < cutoff).to_numpy()
    ]
    rows_s = truth.student_rows(pairs["student_id"].tolist())
    rows_l = truth.lecture_rows(pairs["lecture_id"].tolist())
    students, lectures = truth.students.take(rows_s), truth.lectures.take(rows_l)
    predicted = complete_from_appeal(
        appeal_pairs(students, lectures, truth.weights),
        students.diligence,
        students.outside,
        students.level,
        lectures.level,
        lectures.duration,
        truth.weights,
    )
    observed = pairs["type"].to_numpy(dtype=float)
    assert abs(predicted.mean() - observed.mean()) < 0.02
    high, low = predicted > np.median(predicted), predicted <= np.median(predicted)
    assert observed[high].mean() > observed[low].mean() + 0.15


def test_oracle_ranks_enrolled_lectures_high(dataset: Path, truth: GroundTruth) -> None:
    """Among the lectures a student may take, the ones taken rank high by true appeal (an AUC)."""
    ds = read_dataset(dataset, validate=False)
    events = ds.events.to_pandas()
    en = events[events["type"] == "enrol"]
    lec = ds.lectures
    students = ds.students.set_index("student_id")
    ids = sorted(en["student_id"].unique())[:150]
    appeal = truth.appeal(ids, lec["lecture_id"].tolist())
    col = {lid: k for k, lid in enumerate(lec["lecture_id"])}
    aucs = []
    for i, sid in enumerate(ids):
        region, grade = students.at[sid, "region"], students.at[sid, "grade"]
        eligible = np.asarray(
            [
                ("*" in r or region in r) and grade in g
                for r, g in zip(lec["regions"], lec["grades"], strict=True)
            ]
        )
        taken = np.zeros(len(lec), dtype=bool)
        taken[[col[lid] for lid in en.loc[en["student_id"] == sid, "lecture_id"]]] = True
        a, t = appeal[i, eligible], taken[eligible]
        if 0 < t.sum() < t.size:
            aucs.append((a.argsort().argsort()[t] / (a.size - 1)).mean())
    assert np.mean(aucs) > 0.68


def test_unknown_ids_are_refused_by_name(truth: GroundTruth) -> None:
    with pytest.raises(GroundTruthError, match="s9999999"):
        truth.appeal(["s9999999"], ["lec00001"])
    with pytest.raises(GroundTruthError, match="lec00001x"):
        truth.enrol_probability(["s0000001"], ["lec00001x"])
    with pytest.raises(GroundTruthError, match="'s1'"):
        truth.complete_probability(["s1"], ["lec00001"])


def test_load_errors_name_the_problem(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="synthetic"):
        GroundTruth.load(tmp_path)
    broken = tmp_path / "broken"
    (broken / GROUND_TRUTH_DIR).mkdir(parents=True)
    (broken / GROUND_TRUTH_DIR / META_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(SchemaError, match="meta"):
        GroundTruth.load(broken)
    meta = json.loads((dataset / GROUND_TRUTH_DIR / META_FILE).read_text(encoding="utf-8"))
    (broken / GROUND_TRUTH_DIR / META_FILE).write_text(json.dumps({**meta, "version": 99}), encoding="utf-8")
    with pytest.raises(SchemaError, match="regenerate"):
        GroundTruth.load(broken)
    (broken / GROUND_TRUTH_DIR / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DatasetNotFoundError, match="missing"):
        GroundTruth.load(broken)


def test_weights_round_trip() -> None:
    weights = ModelWeights(subject=1.5, track=((1.0, 2.0, 3.0, 4.0),) * 4)
    assert ModelWeights.from_dict(json.loads(json.dumps(weights.as_dict()))) == weights


def test_blocked_scoring_gives_the_same_answer(truth: GroundTruth, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring runs in lecture blocks to bound memory; the blocks must not change the numbers."""
    import features.ground_truth as module

    students = [truth.meta.students.format(r) for r in range(40)]
    lectures = [truth.meta.lectures.format(r) for r in range(truth.n_lectures)]
    whole = [truth.appeal(students, lectures), truth.complete_probability(students, lectures)]
    monkeypatch.setattr(module, "_BLOCK_CELLS", 40 * 7)
    blocked = [truth.appeal(students, lectures), truth.complete_probability(students, lectures)]
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_array_equal(a, b)
