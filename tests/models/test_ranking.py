"""Ranking rules on a real fitted model: eligibility, series continuation, cold start, degraded."""

from __future__ import annotations

import numpy as np

from features.online_state import StudentRecord
from features.profile import StudentProfile
from models.ranking import RankingModel


def _record(
    region: str | None = "seoul",
    grade: str = "h1",
    history: dict[str, float] | None = None,
    recent: tuple[str, ...] = (),
) -> StudentRecord:
    profile = None
    if region is not None:
        profile = StudentProfile("x", region, grade, "high", "수능", ("수학",))
    return StudentRecord(profile=profile, history=history or {}, recent=recent, state=None)


def _ids(ranking: RankingModel, rows: list[int]) -> list[str]:
    return [ranking.catalogue.lectures.ids[r] for r in rows]


def test_prepared_arrays(ranking: RankingModel) -> None:
    cat = ranking.catalogue
    row = cat.lectures.get("MATH-A-2")
    assert ranking.titles[row] == "수학 개념 완성 2강"
    assert ranking.subject_of[row] == "수학" and ranking.providers[row] == "EBS"
    assert ranking.links.next[cat.lectures.get("MATH-A-1")] == row
    assert ranking.links.next[cat.lectures.get("MATH-A-5")] == -1
    assert ranking.region_code("*") == -1 and ranking.region_code("nowhere") == -1


def test_known_student_never_gets_taken_unlicensed_unsuited_or_retired(ranking: RankingModel) -> None:
    history = {"MATH-A-1": 1.0, "MATH-A-2": 1.0}
    out = ranking.rank("s041", _record("taebaek", "h2", history, ("MATH-A-1", "MATH-A-2")), 100)
    ids = _ids(ranking, out.rows)
    assert out.source == "model" and not out.fallback
    assert not {"MATH-A-1", "MATH-A-2", "SEOUL-ONLY-1", "M3-ONLY-1", "RETIRED-1"} & set(ids)
    assert ids[0] == "MATH-A-3" and out.reasons[0] == "next_in_series"
    assert len(ids) == len(set(ids))
    assert all(np.isfinite(out.scores))


def test_series_continuation_skips_taken_and_dropped(ranking: RankingModel) -> None:
    # took 1..3 of MATH-A, then dropped ENG-B-1: continue maths at 4, not English
    history = {"MATH-A-1": 1.0, "MATH-A-2": 1.0, "MATH-A-3": 1.0, "ENG-B-1": 0.1}
    recent = ("MATH-A-1", "MATH-A-2", "MATH-A-3", "ENG-B-1")
    out = ranking.rank("new-1", _record("seoul", "h1", history, recent), 5)
    ids = _ids(ranking, out.rows)
    assert ids[0] == "MATH-A-4" and out.reasons[0] == "next_in_series"
    assert "ENG-B-2" not in ids[:1]


def test_k_one_and_subject_filter(ranking: RankingModel) -> None:
    rec = _record("seoul", "h1", {"MATH-A-1": 1.0}, ("MATH-A-1",))
    assert _ids(ranking, ranking.rank("x", rec, 1).rows) == ["MATH-A-2"]
    out = ranking.rank("x", rec, 10, subject="영어")
    assert out.rows and all(ranking.subject_of[r] == "영어" for r in out.rows)


def test_unseen_student_with_profile_is_scored_from_features_or_popularity(ranking: RankingModel) -> None:
    out = ranking.rank("never-seen", _record("taebaek", "h1"), 5)
    assert out.fallback
    assert out.source in {"profile", "popular_region_grade", "popular_region"}
    assert "SEOUL-ONLY-1" not in _ids(ranking, out.rows)


def test_unknown_unregistered_student_gets_global_popular(ranking: RankingModel) -> None:
    out = ranking.rank("nobody", _record(None), 5)
    assert out.fallback and out.source == "popular_global"
    assert len(out.rows) == 5 and set(out.reasons) == {"popular_overall"}
    # unknown region: only lectures licensed everywhere
    assert "SEOUL-ONLY-1" not in _ids(ranking, out.rows)
    assert out.scores == sorted(out.scores, reverse=True)


def test_degraded_without_record_uses_region_hint(ranking: RankingModel) -> None:
    out = ranking.rank("s001", None, 5, region_hint="seoul")
    assert out.source == "popular_region" and not out.fallback
    out = ranking.rank("zzz", None, 5)
    assert out.source == "popular_global" and out.fallback
    # a record remembered in process still filters (history, region, grade) but the lists answer
    history = {"MATH-A-1": 1.0}
    out = ranking.rank("s001", _record("taebaek", "h1", history, ("MATH-A-1",)), 19, degraded=True)
    ids = _ids(ranking, out.rows)
    assert out.source.startswith("popular_") and "MATH-A-1" not in ids and "SEOUL-ONLY-1" not in ids
    assert ids[0] == "MATH-A-2" and out.reasons[0] == "next_in_series"


def test_wrong_state_width_is_ignored(ranking: RankingModel) -> None:
    rec = StudentRecord(profile=None, history={"KOR-D-1": 1.0}, recent=("KOR-D-1",), state=b"\x00" * 12)
    out = ranking.rank("s003", rec, 3)
    assert out.model_error is None and _ids(ranking, out.rows)[0] == "KOR-D-2"


def test_one_row_csr_equals_scipys_checked_constructor() -> None:
    """The request path builds a student's CSR row without scipy's format check: same matrix."""
    import scipy.sparse as sp

    from models.ranking import _one_row

    cols = np.array([7, 2, 5], dtype=np.int32)
    values = np.array([0.5, 1.0, 2.0], dtype=np.float32)
    fast = _one_row(cols, values, 10, sort=True)
    checked = sp.csr_matrix((values[[1, 2, 0]], cols[[1, 2, 0]], np.array([0, 3])), shape=(1, 10))
    assert fast.shape == checked.shape and fast.dtype == np.float32
    np.testing.assert_array_equal(fast.toarray(), checked.toarray())
    assert fast.has_sorted_indices and (fast != checked).nnz == 0
    empty = _one_row(np.zeros(0, np.int32), None, 4, sort=False)
    assert empty.nnz == 0 and empty.shape == (1, 4) and (empty @ np.ones(4)).tolist() == [0.0]
