"""Behaviour of individual recommenders on small purpose-built data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from features.matrices import build_batch, build_training_data
from models import (
    BlendRecommender,
    ItemKNNRecommender,
    LightFMRecommender,
    PopularityRecommender,
    SegmentPopularityRecommender,
    SequenceRecommender,
)
from models.base import TrainingData
from models.blend import random_holdout, temporal_holdout, time_holdout
from models.errors import ModelFormatError, NumericalError
from models.sequence import transition_matrix
from tests.models.data import LIGHTFM_TEST, TEST_PARAMS, Blocks, make_events, sequential_dataset


def hit_rate(model, train: TrainingData, rows: np.ndarray, target: np.ndarray, k: int) -> float:
    recs, _ = model.recommend(train.batch(rows.astype(np.int32)), k)
    return float((recs == target[:, None]).any(axis=1).mean())


# -- popularity ----------------------------------------------------------------------------------------


def test_popularity_prefers_recent_interactions():
    """With a half-life, last month's favourite outranks an older, slightly bigger one."""
    students, lectures, _ = sequential_dataset(n_students=4, n_series=2, length=3)
    old = make_events({f"o{i}": ["s0e1"] for i in range(6)}, start=pd.Timestamp("2024-01-01", tz="UTC"))
    new = make_events({f"n{i}": ["s1e1"] for i in range(4)}, start=pd.Timestamp("2025-01-01", tz="UTC"))
    events = pd.concat([old, new], ignore_index=True)
    events["event_id"] = [f"e{i}" for i in range(len(events))]
    data = build_training_data(students, lectures, events)
    s0, s1 = data.catalogue.lectures.get("s0e1"), data.catalogue.lectures.get("s1e1")
    recent = PopularityRecommender(half_life_days=30).fit(data).popularity
    plain = PopularityRecommender(half_life_days=None).fit(data).popularity
    assert recent[s1] > recent[s0]
    assert plain[s0] > plain[s1]


def test_segment_popularity_backs_off(blocks: Blocks):
    model = SegmentPopularityRecommender(shrinkage=5.0).fit(blocks.data)
    cat = blocks.data.catalogue
    seoul, gimpo = cat.regions.get("seoul"), cat.regions.get("gimpo")
    m1, h3 = cat.grades.get("m1"), cat.grades.get("h3")
    # Gimpo's middle schoolers took the C series (and x, y): their top six, not Seoul's
    top6 = set(np.argsort(-model.score_one(gimpo, m1))[:6].tolist())
    assert top6 == {blocks.lec(x) for x in ("c1", "c2", "c3", "c4", "x", "y")}
    assert model.score_one(seoul, cat.grades.get("h1"))[blocks.lec("c1")] < 0.01
    # nobody in gimpo/h3: the segment is its region's list
    np.testing.assert_allclose(model.score_one(gimpo, h3), model.score_one(gimpo, -1), rtol=1e-6)
    # unknown region falls back to the grade-wide list, unknown both to the global list
    glob = PopularityRecommender(half_life_days=30.0).fit(blocks.data).popularity
    np.testing.assert_array_equal(
        np.argsort(-model.score_one(-1, -1), kind="stable"), np.argsort(-glob, kind="stable")
    )


# -- item kNN ------------------------------------------------------------------------------------------


def test_item_knn_keeps_top_neighbours_only(blocks: Blocks):
    model = ItemKNNRecommender(neighbours=2).fit(blocks.data)
    s = model.similarity
    assert (np.diff(s.indptr) <= 2).all()
    assert (s.diagonal() == 0).all()
    assert s.data.min() > 0 and s.data.max() <= 1.0 + 1e-6
    b1 = blocks.lec("b1")
    assert set(s[b1].indices) <= {blocks.lec(f"b{i}") for i in range(2, 6)}


def test_item_knn_scores_an_unseen_student_from_history(blocks: Blocks):
    model = ItemKNNRecommender().fit(blocks.data)
    students = pd.DataFrame({"student_id": ["n"], "region": ["seoul"], "grade": ["h1"]})
    batch = build_batch(blocks.data, students, make_events({"n": ["b1", "b2"]}))
    rows, _ = model.recommend(batch, 3)
    assert set(rows[0].tolist()) == {blocks.lec(f"b{i}") for i in (3, 4, 5)}


# -- LightFM -------------------------------------------------------------------------------------------


def test_lightfm_scores_unseen_students_by_region_and_grade(blocks: Blocks):
    model = LightFMRecommender(seed=3, **LIGHTFM_TEST).fit(blocks.data)
    students = pd.DataFrame(
        {
            "student_id": ["g", "s"],
            "region": ["gimpo", "seoul"],
            "grade": ["m1", "h1"],
            "school_level": ["middle", "high"],
        }
    )
    batch = build_batch(blocks.data, students, make_events({}))
    assert batch.features.nnz > 0
    scores = model.score(batch)
    assert not np.allclose(scores[0], scores[1])
    c, b = [blocks.lec(f"c{i}") for i in range(1, 5)], [blocks.lec(f"b{i}") for i in range(1, 6)]
    # the C series is what Gimpo's middle schoolers take: relatively higher for the Gimpo newcomer
    gap_gimpo = scores[0, c].mean() - scores[0, b].mean()
    gap_seoul = scores[1, c].mean() - scores[1, b].mean()
    assert gap_gimpo > gap_seoul
    # feature_state is what score uses for an unseen student
    np.testing.assert_allclose(
        model.score_state(model.feature_state(batch.features)), scores, rtol=1e-5, atol=1e-6
    )


def test_lightfm_state_is_embedding_plus_bias(blocks: Blocks, fitted):
    model = fitted("lightfm")
    assert model.state_width() == LIGHTFM_TEST["no_components"] + 1
    rows = np.array([blocks.row("tA"), blocks.row("tB")], dtype=np.int32)
    state = model.student_state(rows)
    one = model.score_state(state[0])
    np.testing.assert_allclose(one, model.score(blocks.data.batch(rows))[0], rtol=1e-6)
    with pytest.raises(IndexError):
        model.student_state(np.array([len(blocks.data.students)], dtype=np.int32))


def test_lightfm_scores_a_lecture_without_interactions_from_features(blocks: Blocks, fitted):
    model = fitted("lightfm")
    w = blocks.lec("w")  # nobody took w
    emb, bias = model.lecture_representation(blocks.data.catalogue.features[[w]])
    np.testing.assert_allclose(emb[0], model._item_matrix[:-1, w], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias[0], model._item_bias[w], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["bpr", "warp-kos"])
def test_lightfm_other_losses(loss: str, blocks: Blocks):
    model = LightFMRecommender(loss=loss, **LIGHTFM_TEST).fit(blocks.data)
    assert np.isfinite(model.score(blocks.data.batch(np.arange(5, dtype=np.int32)))).all()


def test_lightfm_rejects_unknown_loss():
    with pytest.raises(ValueError, match="warp"):
        LightFMRecommender(loss="hinge")


def test_lightfm_nan_factors_raise_numerical_error(blocks: Blocks, fitted, tmp_path: Path):
    """A saved model with NaN factors is refused at load, before it can serve or be registered."""
    model = fitted("lightfm")
    model.save(tmp_path)
    with np.load(tmp_path / "arrays.npz") as npz:
        arrays = dict(npz)
    arrays["user_state"][0, 0] = np.nan
    np.savez(tmp_path / "arrays.npz", **arrays)
    with pytest.raises(NumericalError, match="NaN"):
        LightFMRecommender.load(tmp_path)


def test_lightfm_divergence_raises_numerical_error(blocks: Blocks):
    with pytest.raises(NumericalError):
        LightFMRecommender(no_components=8, epochs=5, learning_rate=1e30, loss="bpr").fit(blocks.data)


# -- sequence ------------------------------------------------------------------------------------------


def test_sequence_beats_popularity_on_sequential_data(sequential: TrainingData):
    train, rows, target = temporal_holdout(sequential, 1)
    seq = hit_rate(SequenceRecommender().fit(train), train, rows, target, 1)
    pop = hit_rate(PopularityRecommender().fit(train), train, rows, target, 1)
    knn = hit_rate(ItemKNNRecommender().fit(train), train, rows, target, 1)
    assert seq > 0.9
    assert seq > pop + 0.5
    assert seq > knn


def test_sequence_order_matters(sequential: TrainingData):
    """Reversing every sequence reverses the transitions, and so the scores."""
    forward = SequenceRecommender(series_weight=0.0).fit(sequential)
    backward = SequenceRecommender(series_weight=0.0).fit(
        dataclasses.replace(sequential, sequences=tuple(s[::-1].copy() for s in sequential.sequences))
    )
    t_f, t_b = forward.transitions, backward.transitions
    assert (t_f != t_b).nnz > 0
    counts = transition_matrix(sequential.sequences, t_f.shape[0], 1, 0.5)
    reverse = transition_matrix(tuple(s[::-1] for s in sequential.sequences), t_f.shape[0], 1, 0.5)
    assert (reverse != counts.T).nnz == 0
    batch = sequential.batch(np.arange(50, dtype=np.int32))
    assert not np.array_equal(forward.score(batch), backward.score(batch))
    # forwards, the next episode follows; backwards, it is the previous one
    cat = sequential.catalogue
    e2, e3 = cat.lectures.get("s0e2"), cat.lectures.get("s0e3")
    assert t_f[e2, e3] > t_f[e3, e2]
    assert t_b[e3, e2] > t_b[e2, e3]


def test_sequence_series_continuation_skips_taken_episodes(sequential: TrainingData):
    model = SequenceRecommender().fit(sequential)
    cat = sequential.catalogue
    students = pd.DataFrame({"student_id": ["n"], "region": ["seoul"], "grade": ["h1"]})
    # took episodes 1, 3 and then 2: the next unseen episode of the series is 4
    batch = build_batch(sequential, students, make_events({"n": ["s5e1", "s5e3", "s5e2"]}))
    rows, _ = model.recommend(batch, 1)
    assert rows[0, 0] == cat.lectures.get("s5e4")


def test_sequence_without_history_is_segment_popularity(sequential: TrainingData):
    model = SequenceRecommender().fit(sequential)
    seg = SegmentPopularityRecommender(shrinkage=50.0).fit(sequential)
    students = pd.DataFrame({"student_id": ["n"], "region": ["seoul"], "grade": ["h2"]})
    batch = build_batch(sequential, students, make_events({}))
    np.testing.assert_array_equal(np.argsort(-model.score(batch)[0]), np.argsort(-seg.score(batch)[0]))


# -- blend ---------------------------------------------------------------------------------------------


def test_blend_learns_non_trivial_weights(sequential: TrainingData):
    model = BlendRecommender(
        seed=1, component_params={"lightfm": LIGHTFM_TEST}, negatives=5, max_students=300
    ).fit(sequential)
    coef = model.coefficients
    assert model.weights_learned
    assert set(coef) == set(model.feature_names())
    values = np.array(list(coef.values()))
    assert np.isfinite(values).all() and values.std() > 0.1
    # on sequential data the sequence model's top ranks (and the series feature) carry the signal
    assert coef["sequence:recip"] + coef["sequence:rank"] > 0
    assert (
        coef["sequence:recip"] + coef["sequence:rank"]
        > coef["segment_popularity:recip"] + coef["segment_popularity:rank"]
    )


def test_blend_is_at_least_as_good_as_popularity(sequential: TrainingData):
    train, rows, target = temporal_holdout(sequential, 1)
    blend = BlendRecommender(seed=1, **TEST_PARAMS["blend"]).fit(train)
    pop = PopularityRecommender().fit(train)
    assert hit_rate(blend, train, rows, target, 3) > hit_rate(pop, train, rows, target, 3) + 0.3


def test_blend_without_holdout_data_falls_back_to_equal_weights(blocks: Blocks):
    one_each = dataclasses.replace(blocks.data, sequences=tuple(s[:1].copy() for s in blocks.data.sequences))
    model = BlendRecommender(components=("popularity", "item_knn")).fit(one_each)
    assert not model.weights_learned
    assert model.coefficients["popularity:rank"] == model.coefficients["item_knn:rank"] == 1.0


def test_blend_rejects_unknown_components():
    with pytest.raises(ValueError, match="item_knn"):
        BlendRecommender(components=("popularity", "magic"))
    with pytest.raises(ValueError, match="lightfm"):
        BlendRecommender(components=("popularity",), component_params={"lightfm": {}})


def test_blend_load_detects_missing_component(blocks: Blocks, fitted, tmp_path: Path):
    fitted("blend").save(tmp_path)
    (tmp_path / "components" / "sequence" / "model.json").unlink()
    with pytest.raises(ModelFormatError, match=r"model\.json"):
        BlendRecommender.load(tmp_path)


def test_temporal_holdout_removes_last_lectures(blocks: Blocks):
    train, rows, _ = temporal_holdout(blocks.data, 1)
    a = blocks.row("A00")
    assert blocks.data.interactions[a, blocks.lec("a5")] > 0
    assert train.interactions[a, blocks.lec("a5")] == 0
    assert train.interactions.nnz == blocks.data.interactions.nnz - rows.size
    assert train.age_days.nnz == train.interactions.nnz
    assert all(
        len(t) == len(s) - 1
        for t, s in zip(train.sequences, blocks.data.sequences, strict=True)
        if len(s) > 1
    )


def _with_ages(data: TrainingData, last: np.ndarray, first: np.ndarray | None = None) -> TrainingData:
    inter = data.interactions

    def matrix(values: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((values.astype(np.float32), inter.indices, inter.indptr), shape=inter.shape)

    return dataclasses.replace(
        data, age_days=matrix(last), first_age_days=None if first is None else matrix(first)
    )


def test_time_holdout_days_holds_out_the_last_days(blocks: Blocks):
    # each student's k-th lecture (by storage order) was last active 3 * k days before the end
    inter = blocks.data.interactions
    ages = np.concatenate([3.0 * np.arange(n) for n in np.diff(inter.indptr)])
    data = _with_ages(blocks.data, ages)
    train, rows, cols = time_holdout(data, 0.0, days=6)
    entry_rows = np.repeat(np.arange(inter.shape[0]), np.diff(inter.indptr))
    lengths = np.array([s.size for s in data.sequences])
    # ages 0 and 3 are held out (6 days exactly stays in training), for students with >= 2 lectures
    held = (ages < 6) & (lengths[entry_rows] >= 2)
    assert train.interactions.nnz == inter.nnz - int(held.sum())
    # held-out students are those with something left before the cutoff (3+ lectures here)
    returned = held & (lengths[entry_rows] >= 3)
    expected = zip(entry_rows[returned].tolist(), inter.indices[returned].tolist(), strict=True)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == sorted(expected)
    # what remains ages from the validation cutoff
    assert np.array_equal(np.sort(train.age_days.data), np.sort(np.maximum(ages[~held] - 6, 0)))
    assert all(
        len(t) == len(s) - int(held[entry_rows == r].sum())
        for r, (t, s) in enumerate(zip(train.sequences, data.sequences, strict=True))
    )
    # the share caps the window: a window longer than the history holds out only that share
    capped, capped_rows, _ = time_holdout(data, 0.2, days=1000)
    shared, shared_rows, _ = time_holdout(data, 0.2)
    assert capped.interactions.nnz == shared.interactions.nnz and np.array_equal(capped_rows, shared_rows)
    # with first ages known, a lecture started before the cutoff and still active after it stays in
    # training (as the temporal split keeps it in the history): only what was started after is held out
    started = _with_ages(blocks.data, ages, np.where(ages < 6, ages + 4, ages))  # ages 0 and 3 began at 4, 7
    kept, kept_rows, _ = time_holdout(started, 0.0, days=6)
    began = (ages < 2) & (lengths[entry_rows] >= 2)
    assert kept.interactions.nnz == inter.nnz - int(began.sum())
    assert kept_rows.size == int(began.sum())  # each such student has a lecture begun before
    assert kept.first_age_days is not None and kept.first_age_days.nnz == kept.interactions.nnz
    # in progress at the cutoff: age 0 from it; began 7 - 6 = 1 day before it
    assert np.array_equal(np.sort(kept.age_days.data), np.sort(np.maximum(ages[~began] - 6, 0)))
    assert sorted(kept.first_age_days.data.tolist()) == sorted(
        np.maximum(np.where(ages < 6, ages + 4, ages)[~began] - 6, 0).tolist()
    )
    with pytest.raises(ValueError, match="days"):
        time_holdout(data, 0.2, days=-1)
    with pytest.raises(ValueError, match="share"):
        time_holdout(data, 0.0)


def test_blend_holdout_days(sequential: TrainingData, tmp_path: Path):
    assert BlendRecommender().holdout_days == 14.0
    assert BlendRecommender(holdout_days=0).holdout_days is None
    for bad in (-1, float("nan"), "14"):
        with pytest.raises(ValueError, match="holdout_days"):
            BlendRecommender(holdout_days=bad)  # type: ignore[arg-type]
    model = BlendRecommender(seed=1, holdout_days=7, **TEST_PARAMS["blend"]).fit(sequential)
    assert model.params()["holdout_days"] == 7.0
    model.save(tmp_path)
    assert BlendRecommender.load(tmp_path).holdout_days == 7.0


def test_sequence_learns_order_without_series_metadata():
    """Issue 12: on a log whose lectures carry no series (each its own), order comes from transitions.

    The series-continuation bonus has nothing to work with, so only the lecture transitions can put
    the next lecture of a student's path first; popularity cannot tell it.
    """
    students, lectures, events = sequential_dataset()
    lectures = lectures.assign(series_id=lectures["lecture_id"], series_position=1)
    data = build_training_data(students, lectures, events)
    assert len(np.unique(data.catalogue.series)) == len(lectures)
    train, rows, target = temporal_holdout(data, 1)
    seq = hit_rate(SequenceRecommender().fit(train), train, rows, target, 1)
    pop = hit_rate(PopularityRecommender().fit(train), train, rows, target, 1)
    assert seq > 0.8
    assert seq > pop + 0.5


def test_blend_fallback_serves_its_component_unblended(blocks: Blocks, tmp_path):
    """A blend that did not beat its best component on validation scores exactly like that component."""
    blend = BlendRecommender(seed=3, components=("popularity", "item_knn"), fallback="item_knn")
    blend.fit(blocks.data)
    knn = ItemKNNRecommender(seed=3).fit(blocks.data)
    batch = blocks.data.batch(np.arange(len(blocks.data.students), dtype=np.int32))
    np.testing.assert_array_equal(blend.score(batch), knn.score(batch))
    assert blend.params()["fallback"] == "item_knn" and set(blend.models) == {"item_knn"}
    blend.save(tmp_path / "b")
    np.testing.assert_array_equal(BlendRecommender.load(tmp_path / "b").score(batch), knn.score(batch))
    with pytest.raises(ValueError, match="fallback"):
        BlendRecommender(components=("popularity",), fallback="item_knn")


def test_blend_takes_its_components_fits_on_the_same_data(sequential: TrainingData, monkeypatch):
    """`learnrec train -m all` at 1M fitted LightFM 6-7 times, the blend refitting its components with the
    parameters the run had just fitted them with on the same data. Given those fits, the blend fits only
    its hold-out cut's components, and scores exactly as the blend that fits them all itself."""
    components = ("segment_popularity", "item_knn", "lightfm", "sequence")
    params = {
        "seed": 1, "components": components, "component_params": {"lightfm": LIGHTFM_TEST}, "negatives": 5,
        "max_students": 300,
    }  # fmt: skip
    fits: dict[str, int] = {}
    for cls in (SegmentPopularityRecommender, ItemKNNRecommender, LightFMRecommender, SequenceRecommender):

        def counted(self, data, _fit=cls.fit):  # type: ignore[no-untyped-def]
            fits[self.name] = fits.get(self.name, 0) + 1
            return _fit(self, data)

        monkeypatch.setattr(cls, "fit", counted)
    refitted = BlendRecommender(**params).fit(sequential)  # type: ignore[arg-type]
    assert fits == dict.fromkeys(components, 2)  # the hold-out cut, then all the data
    blend = BlendRecommender(**params)  # type: ignore[arg-type]
    given = {name: blend.component(name).fit(sequential) for name in blend.components}
    # a fit with other parameters is not the blend's: fitted again
    given["item_knn"] = ItemKNNRecommender(seed=1, neighbours=3).fit(sequential)
    fits.clear()
    blend.fit(sequential, given)
    assert fits == {**dict.fromkeys(components, 1), "item_knn": 2}
    assert all(blend.models[n] is given[n] for n in ("segment_popularity", "lightfm", "sequence"))
    assert blend.models["item_knn"] is not given["item_knn"]
    # it times the fits it made on all the data (the pipeline reports them for the single models)
    assert set(blend.fit_seconds) == {"item_knn"} and set(refitted.fit_seconds) == set(components)
    batch = sequential.batch(np.arange(len(sequential.students), dtype=np.int32))
    np.testing.assert_array_equal(blend.score(batch), refitted.score(batch))
    assert blend.coefficients == refitted.coefficients
    # a fallen-back blend takes its one component's fit
    fallback = BlendRecommender(**params, fallback="sequence").fit(sequential, given)  # type: ignore[arg-type]
    assert fallback.models["sequence"] is given["sequence"]


def test_blend_random_holdout_keeps_one_lecture_per_student(sequential: TrainingData):
    train, rows, cols = random_holdout(sequential, 0.3, seed=1)
    lengths = np.array([s.size for s in sequential.sequences])
    assert np.unique(rows).size == (lengths >= 2).sum()
    assert all(s.size >= 1 for s, n in zip(train.sequences, lengths, strict=True) if n >= 1)
    assert train.interactions.nnz == sequential.interactions.nnz - rows.size
    assert (train.interactions[rows, cols] == 0).all()
    again = random_holdout(sequential, 0.3, seed=1)
    np.testing.assert_array_equal(again[1], rows) and np.testing.assert_array_equal(again[2], cols)
