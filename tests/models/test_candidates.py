"""Two-stage ranking (`models.candidates`): a stored candidate list gives the full ranking's list, fresh
history still applies, and a list too short for the request falls back to the full ranking."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from features.online_state import StudentRecord
from models.candidates import MAGIC, Candidates, split
from models.ranking import RankingModel
from tests.models.test_ranking import _record


def _with_list(record: StudentRecord, listed: Candidates | None) -> StudentRecord:
    assert listed is not None
    return replace(record, state=listed.to_bytes())


def test_the_stored_form_round_trips_and_garbage_is_refused(ranking: RankingModel) -> None:
    listed = ranking.candidates("s000", _record(history={"MATH-A-1": 1.0}, recent=("MATH-A-1",)))
    assert listed is not None and listed.rows.size
    back = Candidates.from_bytes(listed.to_bytes(), ranking.n_lectures)
    assert back is not None
    assert back.rows.tolist() == listed.rows.tolist() and back.scores.tolist() == listed.scores.tolist()
    assert back.basis.tolist() == listed.basis.tolist() and (back.region, back.grade) == (
        listed.region,
        listed.grade,
    )
    assert Candidates.from_bytes(b"\x00" * 24, ranking.n_lectures) is None  # no magic
    assert Candidates.from_bytes(listed.to_bytes()[:-4], ranking.n_lectures) is None  # truncated
    assert Candidates.from_bytes(listed.to_bytes(), 1) is None  # rows beyond the catalogue


def test_a_per_student_value_splits_into_state_and_candidate_section() -> None:
    """One reader of the layout `FeatureStore.materialize` writes (state floats, then the list)."""
    state = np.array([1.5, -2.0], dtype="<f4").tobytes()
    section = Candidates(
        0, 1, np.array([3], np.int32), np.array([0.5], np.float32), np.zeros(0, np.int32), True
    ).to_bytes()
    assert split(state + section, 2) == (state, section)
    assert split(state, 2) == (state, None)
    assert split(section, 0) == (None, section)
    assert split(None, 2) == (None, None) and split(b"", 0) == (None, None)
    assert split(state[:4], 2) == (None, None)  # shorter than the state
    other = np.array([MAGIC + 1], dtype="<i4").tobytes() + section[4:]
    assert split(state + other, 2) == (None, None)  # not a candidate section: another version's layout


def test_a_stored_list_gives_the_full_rankings_list(ranking: RankingModel) -> None:
    """Students of every kind, lists built from their current state: served equals evaluated."""
    small = replace(ranking, candidate_count=6)
    records = [
        _record(),
        _record(history={"MATH-A-1": 1.0, "MATH-A-2": 1.0}, recent=("MATH-A-1", "MATH-A-2")),
        _record(region="busan", grade="h2", history={"ENG-B-1": 0.5}, recent=("ENG-B-1",)),
    ]
    for model in (ranking, small):
        for k in (1, 3, 5):
            for record in records:
                built = model.rank("s000", record, k)
                stored = model.rank("s000", _with_list(record, model.candidates("s000", record)), k)
                assert stored.rows == built.rows and stored.reasons == built.reasons
                assert built.candidates in ("built", "exhausted")
                assert stored.candidates in ("stored", "exhausted")


def test_a_lecture_taken_after_the_list_was_built_is_gone(ranking: RankingModel) -> None:
    before = _record(history={"MATH-A-1": 1.0}, recent=("MATH-A-1",))
    listed = ranking.candidates("s000", before)
    assert listed is not None
    first = ranking.catalogue.lectures.ids[int(listed.rows[0])]
    after = _with_list(_record(history={"MATH-A-1": 1.0, first: 1.0}, recent=("MATH-A-1", first)), listed)
    out = ranking.rank("s000", after, 5)
    ids = [ranking.catalogue.lectures.ids[r] for r in out.rows]
    assert first not in ids and "MATH-A-1" not in ids
    # an enrolment since the list was built: the followers of that lecture are merged in
    assert out.candidates == "fused"


def test_a_list_too_short_for_the_request_falls_back_to_the_full_ranking(ranking: RankingModel) -> None:
    tiny = replace(ranking, candidate_count=2)
    record = _record(history={"MATH-A-1": 1.0}, recent=("MATH-A-1",))
    stored = _with_list(record, tiny.candidates("s000", record))
    out = tiny.rank("s000", stored, 8)
    assert out.candidates == "exhausted"
    full = ranking.rank("s000", record, 8)
    assert out.rows == full.rows
    assert np.all(np.isfinite(out.scores))


def test_a_version_served_under_another_alias_keeps_its_followers(ranking: RankingModel) -> None:
    followers = ranking.followers  # computed once, when the model is prepared for serving
    renamed = ranking.with_alias("challenger")
    assert renamed.alias == "challenger" and renamed.version == ranking.version
    assert renamed.recommender is ranking.recommender
    assert renamed.__dict__.get("followers") is followers  # not computed again on the first fused answer
    fresh = replace(ranking, alias="challenger")
    assert "followers" not in fresh.__dict__  # what dataclasses.replace alone would have served
