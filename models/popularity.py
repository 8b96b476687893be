"""Popularity baselines: what is popular overall, or among students of the same region and grade.

Popularity is the recency-weighted sum of interaction weights: an interaction `age` days before the end
of the training window counts 0.5 ** (age / half_life_days), so last term's favourites outrank last
year's. Scores are scaled so the most popular lecture scores 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Recommender, StudentBatch, TrainingData
from models.common import check_batch, decayed_interactions, normalise_max
from models.loading import SEGMENT_SEPARATOR
from models.serialization import instantiate, read_model

#: Lectures kept in each popularity list of a model version (the ranking's fallbacks).
FALLBACK_TOP_N = 100
#: Half-life of the recency weighting of those lists.
FALLBACK_HALF_LIFE_DAYS = 30.0


def _group_sum(codes: npt.NDArray[np.int64], groups: int, weights: sp.csr_matrix) -> npt.NDArray[np.float64]:
    """(groups, n_lectures) sums of the rows of `weights` per group code (code < 0: skipped)."""
    valid = np.flatnonzero(codes >= 0)
    indicator = sp.csr_matrix(
        (np.ones(valid.size, dtype=np.float64), (codes[valid], valid)), shape=(groups, weights.shape[0])
    )
    out: npt.NDArray[np.float64] = np.asarray((indicator @ weights).todense(), dtype=np.float64)
    return out


def _shrink(
    counts: npt.NDArray[np.float64], parent: npt.NDArray[np.float64], strength: float
) -> npt.NDArray[np.float64]:
    """Share of each lecture in a group, pulled towards the parent's shares by `strength` pseudo-counts."""
    mass = counts.sum(axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = (counts + strength * parent) / np.maximum(mass + strength, 1e-12)
    return out


def segment_table(
    data: TrainingData, half_life_days: float | None, shrinkage: float
) -> npt.NDArray[np.float32]:
    """Popularity per region x grade segment with back-off, shape (n_regions+1, n_grades+1, n_lectures).

    Index -1 (the extra last row/column) stands for an unknown region/grade. A segment's shares are
    shrunk towards its region's, a region's and a grade's towards the global shares, so a small or
    unseen segment falls back to its region, and an unknown region to the global list (by grade).
    Each (region, grade) slice is scaled so its top lecture scores 1.

    Args:
        data: the training data.
        half_life_days: recency half-life (None: no decay).
        shrinkage: pseudo-count mass of the parent distribution.

    Returns:
        The table, float32.
    """
    cat = data.catalogue
    n_regions, n_grades, n = len(cat.regions), len(cat.grades), len(cat.lectures)
    w = decayed_interactions(data, half_life_days)
    total = np.asarray(w.sum(axis=0), dtype=np.float64).ravel()
    glob = total / total.sum() if total.sum() > 0 else np.full(n, 1.0 / max(n, 1))
    region = data.region.astype(np.int64)
    grade = data.grade.astype(np.int64)
    by_region = _shrink(_group_sum(region, n_regions, w), glob[None, :], shrinkage)
    by_grade = _shrink(_group_sum(grade, n_grades, w), glob[None, :], shrinkage)
    segment = np.where((region >= 0) & (grade >= 0), region * n_grades + grade, -1)
    by_segment = _shrink(
        _group_sum(segment, n_regions * n_grades, w).reshape(n_regions, n_grades, n),
        by_region[:, None, :],
        shrinkage,
    )
    table = np.empty((n_regions + 1, n_grades + 1, n), dtype=np.float64)
    table[:n_regions, :n_grades] = by_segment
    table[:n_regions, n_grades] = by_region
    table[n_regions, :n_grades] = by_grade
    table[n_regions, n_grades] = glob
    top = table.max(axis=-1, keepdims=True)
    result: npt.NDArray[np.float32] = (table / np.where(top > 0, top, 1.0)).astype(np.float32)
    return result


class PopularityRecommender(Recommender):
    """Everyone gets the same list: the most popular lectures, recency-weighted.

    Args:
        seed: accepted for a uniform constructor; the model is deterministic.
        half_life_days: recency half-life of an interaction's weight (None or 0: no decay).
    """

    name: ClassVar[str] = "popularity"

    def __init__(self, *, seed: int = 42, half_life_days: float | None = 30.0) -> None:
        self.seed = seed
        self.half_life_days = half_life_days
        self._scores: npt.NDArray[np.float32] | None = None

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "half_life_days": self.half_life_days}

    def fit(self, data: TrainingData) -> Self:
        w = decayed_interactions(data, self.half_life_days)
        self._scores = normalise_max(np.asarray(w.sum(axis=0), dtype=np.float32).ravel())
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        return self

    @property
    def popularity(self) -> npt.NDArray[np.float32]:
        """(n_lectures,) popularity scaled to max 1."""
        _ = self.catalogue
        assert self._scores is not None
        return self._scores

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        pop = self.popularity
        check_batch(self.catalogue, len(self.student_feature_names), batch)
        return np.repeat(pop[None, :], len(batch), axis=0)

    def save(self, directory: Path) -> None:
        self._write(
            directory,
            arrays={"popularity": self.popularity},
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        saved = read_model(directory, cls.name)
        model = instantiate(cls, saved.params, directory)
        model._scores = saved.array("popularity").astype(np.float32)
        model._catalogue, model._students = saved.catalogue, saved.students
        model._student_feature_names = saved.student_feature_names
        return model


class SegmentPopularityRecommender(Recommender):
    """The most popular lectures among students of the same region and grade, with back-off.

    A new student is scored by their segment; an unseen segment backs off to its region, an unknown
    region to the grade-wide (else global) list. See `segment_table`.

    Args:
        seed: accepted for a uniform constructor; the model is deterministic.
        half_life_days: recency half-life of an interaction's weight (None or 0: no decay).
        shrinkage: pseudo-count mass pulling a segment towards its region (and a region towards the
            global list); larger = more back-off for small segments.
    """

    name: ClassVar[str] = "segment_popularity"

    def __init__(
        self, *, seed: int = 42, half_life_days: float | None = 30.0, shrinkage: float = 50.0
    ) -> None:
        if shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
        self.seed = seed
        self.half_life_days = half_life_days
        self.shrinkage = shrinkage
        self._table: npt.NDArray[np.float32] | None = None

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "half_life_days": self.half_life_days, "shrinkage": self.shrinkage}

    def fit(self, data: TrainingData) -> Self:
        self._table = segment_table(data, self.half_life_days, self.shrinkage)
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        return self

    @property
    def table(self) -> npt.NDArray[np.float32]:
        """(n_regions+1, n_grades+1, n_lectures) segment popularity; index -1 = unknown."""
        _ = self.catalogue
        assert self._table is not None
        return self._table

    def score_one(self, region: int, grade: int) -> npt.NDArray[np.float32]:
        """Scores of one student of `region`/`grade` (-1 unknown): a view into the table, no copy."""
        scores: npt.NDArray[np.float32] = self.table[region, grade]
        return scores

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        table = self.table
        check_batch(self.catalogue, len(self.student_feature_names), batch)
        out: npt.NDArray[np.float32] = table[batch.region, batch.grade]
        return out

    def save(self, directory: Path) -> None:
        self._write(
            directory,
            arrays={"table": self.table},
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        saved = read_model(directory, cls.name)
        model = instantiate(cls, saved.params, directory)
        model._table = saved.array("table").astype(np.float32)
        model._catalogue, model._students = saved.catalogue, saved.students
        model._student_feature_names = saved.student_feature_names
        cat = saved.catalogue
        expected = (len(cat.regions) + 1, len(cat.grades) + 1, len(cat.lectures))
        if model._table.shape != expected:
            from models.errors import ModelFormatError

            raise ModelFormatError(f"{directory}: table has shape {model._table.shape}, expected {expected}")
        return model


def popular_lists(data: TrainingData, top_n: int = FALLBACK_TOP_N) -> dict[str, Any]:
    """Popular active lectures (recency-weighted) globally, per region and per "region|grade".

    The ranking falls back to these for students the model cannot score, and when the feature store
    is down; a registered version carries them (fallback.json).

    Args:
        data: the training data.
        top_n: lectures kept per list.

    Returns:
        {"global": [ids], "by_region": {region: [ids]}, "by_region_grade": {"seoul|h1": [ids]},
        "top_n": top_n, "half_life_days": ...}.
    """
    cat = data.catalogue
    weights = decayed_interactions(data, FALLBACK_HALF_LIFE_DAYS)
    ids = np.asarray(cat.lectures.ids, dtype=object)

    def top(rows: np.ndarray[Any, Any]) -> list[str]:
        popularity = np.asarray(weights[rows].sum(axis=0), dtype=np.float64).ravel()
        popularity[~cat.active] = 0.0
        order = np.lexsort((np.arange(popularity.size), -popularity))  # ties: catalogue order
        order = order[popularity[order] > 0][:top_n]
        return [str(x) for x in ids[order]]

    by_region: dict[str, list[str]] = {}
    by_segment: dict[str, list[str]] = {}
    for r, region in enumerate(cat.regions.ids):
        in_region = data.region == r
        if not in_region.any():
            continue
        by_region[region] = top(np.flatnonzero(in_region))
        for g, grade in enumerate(cat.grades.ids):
            rows = np.flatnonzero(in_region & (data.grade == g))
            if rows.size:
                by_segment[f"{region}{SEGMENT_SEPARATOR}{grade}"] = top(rows)
    return {
        "global": top(np.arange(len(data.students))),
        "by_region": by_region,
        "by_region_grade": by_segment,
        "top_n": top_n,
        "half_life_days": FALLBACK_HALF_LIFE_DAYS,
    }
