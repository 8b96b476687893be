"""Contract suite every recommender passes (like implicit's RecommenderBaseTestMixin)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.matrices import build_batch, build_batch_for_model
from models import MODELS, load_model
from models.base import StudentBatch
from models.errors import NotFittedError
from models.serialization import read_manifest
from tests.models.data import ALL_MODELS, PERSONALISED, TEST_PARAMS, Blocks, make_events


def _assert_eligible(blocks: Blocks, batch: StudentBatch, rows: np.ndarray) -> None:
    cat = blocks.data.catalogue
    everywhere = cat.licensed[cat.regions.get("*")]
    history = batch.history.toarray()
    for i in range(len(batch)):
        for r in rows[i][rows[i] >= 0]:
            assert cat.active[r], f"inactive lecture {cat.lectures.ids[r]}"
            assert history[i, r] == 0, f"history lecture {cat.lectures.ids[r]} recommended"
            region, grade = batch.region[i], batch.grade[i]
            assert cat.licensed[region, r] if region >= 0 else everywhere[r], "unlicensed lecture"
            assert grade < 0 or cat.suits[grade, r], "lecture unsuited to grade"
        real = rows[i][rows[i] >= 0]
        assert len(set(real.tolist())) == real.size, "duplicate lecture in a list"
        assert (rows[i][real.size :] == -1).all(), "padding must come last"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_withheld_lecture_ranks_first(name, blocks, fitted):
    """The next lecture of the majority group's path (a5 after a1..a4) comes first for every model."""
    model = fitted(name)
    rows, _ = model.recommend(blocks.data.batch(np.array([blocks.row("tA")], np.int32)), 3)
    assert rows[0, 0] == blocks.lec("a5")


@pytest.mark.parametrize("name", PERSONALISED)
def test_personalised_withheld_lecture_ranks_first(name, blocks, fitted):
    """A minority-group student's next lecture (b5) comes first: popularity alone would rank a5 first."""
    model = fitted(name)
    rows, _ = model.recommend(blocks.data.batch(np.array([blocks.row("tB")], np.int32)), 3)
    assert rows[0, 0] == blocks.lec("b5")


@pytest.mark.parametrize("name", ALL_MODELS)
def test_scores_finite_with_right_shape(name, blocks, fitted):
    model = fitted(name)
    batch = blocks.data.batch(np.arange(len(blocks.data.students), dtype=np.int32))
    scores = model.score(batch)
    assert scores.shape == (len(blocks.data.students), len(blocks.data.catalogue.lectures))
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_recommend_respects_eligibility(name, blocks, fitted):
    """Never a lecture already taken, unlicensed in the region, unsuited to the grade, or inactive."""
    model = fitted(name)
    batch = blocks.data.batch(np.arange(len(blocks.data.students), dtype=np.int32))
    rows, scores = model.recommend(batch, 10)
    assert rows.shape == scores.shape == (len(batch), 10)
    assert rows.dtype == np.int32 and scores.dtype == np.float32
    _assert_eligible(blocks, batch, rows)
    for i in range(len(batch)):
        real = scores[i][rows[i] >= 0]
        assert np.isfinite(real).all() and (np.diff(real) <= 0).all(), "scores must be finite and descending"
    x, y, z = blocks.lec("x"), blocks.lec("y"), blocks.lec("z")
    seoul = np.flatnonzero(batch.region == blocks.data.catalogue.regions.get("seoul"))
    assert not np.isin(rows[seoul], [x, y, z]).any()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_unseen_students_get_a_sensible_list(name, blocks, fitted):
    """Cold start from features only: full eligible lists; an unknown region sees only '*' lectures."""
    model = fitted(name)
    students = pd.DataFrame(
        {
            "student_id": ["new-seoul", "new-gimpo", "new-busan", "new-any"],
            "region": ["seoul", "gimpo", "busan", "seoul"],
            "grade": ["h1", "m1", "m2", "grade-unknown"],
            "interest_subjects": [["수학"], ["국어"], None, []],
        }
    )
    batch = build_batch(blocks.data, students, make_events({}))
    assert (batch.index == -1).all()
    assert batch.region[2] == -1 and batch.grade[3] == -1
    rows, scores = model.recommend(batch, 5)
    _assert_eligible(blocks, batch, rows)
    assert (rows[:, 0] >= 0).all(), "every new student gets at least one lecture"
    assert (rows[0] >= 0).sum() == 5
    gimpo_only = [blocks.lec(f"c{i}") for i in range(1, 5)] + [blocks.lec("x")]
    assert not np.isin(rows[2], gimpo_only).any()
    assert np.isfinite(scores[rows >= 0]).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_unseen_student_history_is_never_recommended(name, blocks, fitted):
    model = fitted(name)
    students = pd.DataFrame({"student_id": ["n1"], "region": ["seoul"], "grade": ["h2"]})
    events = make_events({"n1": ["b1", "b2"], "someone-else": ["a1"]})
    batch = build_batch_for_model(model, students, events)
    rows, _ = model.recommend(batch, 20)
    assert not np.isin(rows[0], [blocks.lec("b1"), blocks.lec("b2")]).any()
    assert np.isin(blocks.lec("a1"), rows[0]), "another student's history must not count"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_save_load_round_trip_is_identical(name, blocks, fitted, tmp_path: Path):
    model = fitted(name)
    model.save(tmp_path / name)
    assert read_manifest(tmp_path / name)["model"] == name
    loaded = MODELS[name].load(tmp_path / name)
    generic = load_model(tmp_path / name)
    assert type(generic) is type(model)
    known = blocks.data.batch(np.arange(len(blocks.data.students), dtype=np.int32))
    new = build_batch(
        blocks.data,
        pd.DataFrame({"student_id": ["n"], "region": ["gimpo"], "grade": ["m2"]}),
        make_events({"n": ["c1"]}),
    )
    for batch in (known, new):
        np.testing.assert_array_equal(loaded.score(batch), model.score(batch))
        for a, b in zip(loaded.recommend(batch, 7), model.recommend(batch, 7), strict=True):
            np.testing.assert_array_equal(a, b)
    assert loaded.params() == model.params()
    assert loaded.state_width() == model.state_width()
    np.testing.assert_array_equal(loaded.student_state(np.arange(3)), model.student_state(np.arange(3)))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_not_fitted_errors(name, blocks, tmp_path: Path):
    model = MODELS[name](**TEST_PARAMS[name])
    batch = blocks.data.batch(np.array([0], np.int32))
    with pytest.raises(NotFittedError, match="fit"):
        model.score(batch)
    with pytest.raises(NotFittedError):
        model.recommend(batch, 3)
    with pytest.raises(NotFittedError):
        model.save(tmp_path)
    with pytest.raises(NotFittedError):
        _ = model.catalogue


@pytest.mark.parametrize("name", ALL_MODELS)
def test_deterministic_when_seeded(name, blocks, fitted):
    again = MODELS[name](seed=7, **TEST_PARAMS[name]).fit(blocks.data)
    batch = blocks.data.batch(np.arange(len(blocks.data.students), dtype=np.int32))
    np.testing.assert_array_equal(again.score(batch), fitted(name).score(batch))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_params_are_flat_json(name, fitted):
    params = fitted(name).params()
    assert params["seed"] == 7
    json.dumps(params)
    assert all(isinstance(v, str | int | float | bool | None) for v in params.values())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_state_matches_width(name, blocks, fitted):
    model = fitted(name)
    state = model.student_state(np.arange(4, dtype=np.int32))
    assert state.shape == (4, model.state_width()) and state.dtype == np.float32
    if model.state_width():
        batch = blocks.data.batch(np.arange(4, dtype=np.int32))
        with_state = StudentBatch(**{**batch.__dict__, "state": state})
        np.testing.assert_allclose(model.score(with_state), model.score(batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_batch_of_wrong_width_is_refused(name, blocks, fitted):
    model = fitted(name)
    batch = blocks.data.batch(np.array([0], np.int32))
    bad = StudentBatch(**{**batch.__dict__, "history": batch.history[:, :-1]})
    with pytest.raises(ValueError, match="history"):
        model.score(bad)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_one_student_scores_like_a_batch_row(name, blocks, fitted):
    """The request path scores one student at a time; it must agree with batch scoring (evaluation)."""
    model = fitted(name)
    rows = np.arange(len(blocks.data.students), dtype=np.int32)
    full = model.score(blocks.data.batch(rows))
    for r in rows:
        one = model.score(blocks.data.batch(np.array([r], np.int32)))
        np.testing.assert_allclose(one[0], full[r], rtol=1e-5, atol=1e-6)
