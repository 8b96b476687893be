"""Item-based k-nearest-neighbours: lectures taken by the same students are similar.

Each lecture is the column of the student x lecture interaction matrix; scikit-learn's
`NearestNeighbors` (cosine, brute force on the sparse matrix) finds its `neighbours` most similar
lectures, kept as a sparse similarity matrix S (row = lecture, columns = its neighbours). A student's
score is `history @ S`: the summed similarity of each lecture to what the student already took,
weighted by how far they got.

On series-structured catalogues the lecture-level neighbours of a lecture are mostly the other episodes
of its own series, so `history @ S` mainly re-recommends the series a student is already in - a small
share of what students take next (most new lectures come from series they have not started yet). A
series-level term fixes that: series are similar when the same students start both (co-occurrence
shrunk by `series_shrinkage` and divided by the geometric mean of their audiences), the student's
series score (their started series @ series similarity, own series excluded, scaled to max 1) is spread
over each series' episodes by the episode's *reach* (share of the series' students who took it), so the
first episodes of a likely next series rank first. A segment (region x grade) popularity term,
also weighted by reach, ranks lectures for students without history and orders the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Recommender, StudentBatch, TrainingData
from models.common import (
    check_batch,
    check_finite,
    decayed_interactions,
    row_max1,
    series_onehot,
    series_similarity_and_reach,
    started_series,
)
from models.popularity import segment_table
from models.serialization import instantiate, read_model


class ItemKNNRecommender(Recommender):
    """Item-kNN collaborative filtering on cosine similarity.

    Args:
        seed: accepted for a uniform constructor; the model is deterministic.
        neighbours: similar lectures kept per lecture.
        min_similarity: similarities at or below this are dropped.
        half_life_days: recency half-life applied to the interactions before computing similarity
            (None: no decay).
        binary: compute similarity on 0/1 interactions instead of their weights.
        popularity_weight: weight of the segment popularity term (scaled to max 1 per student).
        lecture_weight: weight of the lecture-level neighbour term (scaled to max 1 per student).
        series_weight: weight of the series-level term (scaled to max 1 per student).
        series_shrinkage: pseudo-count added to the series co-occurrence normaliser (damps rare series).
        popularity_half_life_days: recency half-life of the segment popularity.
        shrinkage: segment popularity back-off strength (see `models.popularity.segment_table`).
    """

    name: ClassVar[str] = "item_knn"

    def __init__(
        self,
        *,
        seed: int = 42,
        neighbours: int = 100,
        min_similarity: float = 0.0,
        half_life_days: float | None = None,
        binary: bool = False,
        popularity_weight: float = 1.0,
        lecture_weight: float = 1.0,
        series_weight: float = 1.0,
        series_shrinkage: float = 10.0,
        popularity_half_life_days: float | None = 30.0,
        shrinkage: float = 50.0,
    ) -> None:
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.seed = seed
        self.neighbours = neighbours
        self.min_similarity = min_similarity
        self.half_life_days = half_life_days
        self.binary = binary
        self.popularity_weight = popularity_weight
        self.lecture_weight = lecture_weight
        self.series_weight = series_weight
        self.series_shrinkage = series_shrinkage
        self.popularity_half_life_days = popularity_half_life_days
        self.shrinkage = shrinkage
        self._series_similarity: npt.NDArray[np.float32] | None = None
        self._reach: npt.NDArray[np.float32] | None = None
        self._onehot: sp.csr_matrix | None = None
        self._similarity: sp.csr_matrix | None = None
        self._popularity: npt.NDArray[np.float32] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "neighbours": self.neighbours,
            "min_similarity": self.min_similarity,
            "half_life_days": self.half_life_days,
            "binary": self.binary,
            "popularity_weight": self.popularity_weight,
            "lecture_weight": self.lecture_weight,
            "series_weight": self.series_weight,
            "series_shrinkage": self.series_shrinkage,
            "popularity_half_life_days": self.popularity_half_life_days,
            "shrinkage": self.shrinkage,
        }

    def fit(self, data: TrainingData) -> Self:
        from sklearn.neighbors import NearestNeighbors

        w = decayed_interactions(data, self.half_life_days)
        if self.binary:
            w.data = (w.data != 0).astype(np.float32)
        n = w.shape[1]
        items = sp.csr_matrix(w.T, dtype=np.float32)
        # lectures nobody took have no vector; cosine would divide by zero, so they get no neighbours
        has_vector = np.flatnonzero(np.diff(items.indptr) > 0)
        rows_out: list[npt.NDArray[np.int64]] = []
        cols_out: list[npt.NDArray[np.int64]] = []
        sims_out: list[npt.NDArray[np.float32]] = []
        k = min(self.neighbours + 1, has_vector.size)
        if k > 1:
            vectors = items[has_vector]
            nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute", n_jobs=1).fit(vectors)
            dist, idx = nn.kneighbors(vectors, return_distance=True)
            sim = (1.0 - dist).astype(np.float32)
            src = np.repeat(has_vector, k)
            dst = has_vector[idx.ravel()]
            sim = sim.ravel()
            keep = ((src != dst) & (sim > self.min_similarity) & np.isfinite(sim)).reshape(-1, k)
            # with ties at distance 0 the lecture itself need not come back first: keep k-1 others
            keep &= np.cumsum(keep, axis=1) <= self.neighbours
            keep = keep.ravel()
            rows_out.append(src[keep])
            cols_out.append(dst[keep])
            sims_out.append(sim[keep])
        rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
        cols = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int64)
        sims = np.concatenate(sims_out) if sims_out else np.zeros(0, np.float32)
        similarity = sp.csr_matrix((sims, (rows, cols)), shape=(n, n), dtype=np.float32)
        similarity.sum_duplicates()
        similarity.sort_indices()
        check_finite(self.name, similarity.data)
        self._similarity = similarity
        self._fit_series(data)
        self._popularity = segment_table(data, self.popularity_half_life_days, self.shrinkage)
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        return self

    def _fit_series(self, data: TrainingData) -> None:
        """Series similarity from who started which series, and each episode's reach in its series."""
        # own series get no series-level score (diagonal zero): continuation is the lecture term's job
        self._series_similarity, self._reach = series_similarity_and_reach(
            data.interactions, data.catalogue.series, self.series_shrinkage
        )
        check_finite(self.name, self._series_similarity, self._reach)

    def _series_lookup(self) -> sp.csr_matrix:
        """The catalogue's lecture -> series one-hot, built once."""
        if self._onehot is None:
            self._onehot = series_onehot(self.catalogue.series)
        return self._onehot

    @property
    def similarity(self) -> sp.csr_matrix:
        """(n_lectures, n_lectures) sparse similarity: row i holds lecture i's neighbours."""
        _ = self.catalogue
        assert self._similarity is not None
        return self._similarity

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        similarity = self.similarity
        assert self._popularity is not None
        check_batch(self.catalogue, len(self.student_feature_names), batch)
        assert self._series_similarity is not None and self._reach is not None
        history = sp.csr_matrix(batch.history, dtype=np.float32)
        series = self.catalogue.series
        lecture = row_max1(np.asarray((history @ similarity).todense(), dtype=np.float32))
        started = started_series(history, series, self._series_lookup())
        by_series = row_max1(np.asarray(started @ self._series_similarity, dtype=np.float32))
        popularity = row_max1(self._popularity[batch.region, batch.grade])
        scores = np.float32(self.lecture_weight) * lecture
        scores += self._reach[None, :] * (
            np.float32(self.series_weight) * by_series[:, series]
            + np.float32(self.popularity_weight) * popularity
        )
        return scores.astype(np.float32)

    def save(self, directory: Path) -> None:
        similarity = self.similarity
        assert self._popularity is not None
        assert self._series_similarity is not None and self._reach is not None
        self._write(
            directory,
            arrays={
                "popularity": self._popularity,
                "series_similarity": self._series_similarity,
                "reach": self._reach,
            },
            sparse={"similarity": similarity},
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        saved = read_model(directory, cls.name)
        model = instantiate(cls, saved.params, directory)
        model._similarity = saved.sparse("similarity").astype(np.float32)
        model._popularity = saved.array("popularity").astype(np.float32)
        model._series_similarity = saved.array("series_similarity").astype(np.float32)
        model._reach = saved.array("reach").astype(np.float32)
        model._catalogue, model._students = saved.catalogue, saved.students
        model._student_feature_names = saved.student_feature_names
        return model
