"""Sequence-aware recommender: what students take next after what this student took last.

Fitting counts lecture-to-lecture transitions in students' sequences (order of first enrolment): the next
lecture counts 1, the one after it `skip_weight`, and so on up to `window` steps ahead. Each row of the
count matrix is normalised into next-lecture shares (with `smoothing` pseudo-counts, so rare lectures
give weaker evidence). Scoring sums the transition rows of the student's last `recent` lectures,
weighted `decay` ** steps back (the latest lecture counts most), adds a strong bonus for the next
unseen episode of each series among those recent lectures, and a small segment-popularity term that
orders everything else and is the whole answer for a student with no history.

Most of what students take next comes from series they have not started yet, and a new series is
entered at its first episodes. Two series-level terms rank those: series-to-series transitions (the
order students start series in, e.g. a subject's curriculum order; `series_window` steps, decayed
`series_decay` per step back in the student's own series order) and series co-occurrence similarity
(series started by the same students). Each is scaled to max 1 per student and spread over a series'
episodes by their *reach* (share of the series' students who took the episode), then added, weighted
`series_transition_weight` and `series_similarity_weight`, to the lecture-level score scaled to max 1.
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
    contains,
    history_keys,
    next_in_series,
    normalise_max,
    recent_matrix,
    row_max1,
    series_onehot,
    series_sequences,
    series_similarity_and_reach,
    started_series,
)
from models.errors import NotFittedError
from models.popularity import segment_table
from models.serialization import instantiate, read_model


def transition_matrix(
    sequences: tuple[npt.NDArray[np.int32], ...], n_lectures: int, window: int, skip_weight: float
) -> sp.csr_matrix:
    """Weighted counts of lecture i followed by lecture j within `window` steps, (n, n) float32.

    Args:
        sequences: per student, lecture rows in order.
        n_lectures: catalogue size.
        window: how many steps ahead count (1 = only the immediate successor).
        skip_weight: weight multiplier per extra step (step s counts skip_weight ** (s - 1)).

    Returns:
        The count matrix (not normalised).
    """
    # int32 rows written once into arrays of their final size: at 1M students the per-step int64 lists,
    # their concatenation and scipy's int32 copy of it took ~135 bytes a sequence entry at the peak
    lengths = np.fromiter((s.size for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.concatenate(sequences).astype(np.int32, copy=False) if sequences else np.zeros(0, np.int32)
    owner = np.repeat(np.arange(len(sequences), dtype=np.int32), lengths)
    steps = range(1, min(window, flat.size - 1) + 1)
    same = [owner[step:] == owner[:-step] for step in steps]
    del owner
    if not steps:
        return sp.csr_matrix((n_lectures, n_lectures), dtype=np.float32)
    total = sum(int(m.sum()) for m in same)
    src, dst = np.empty(total, np.int32), np.empty(total, np.int32)
    weights = np.empty(total, np.float32)
    at = 0
    for step, mask in zip(steps, same, strict=True):
        size = int(mask.sum())
        src[at : at + size], dst[at : at + size] = flat[:-step][mask], flat[step:][mask]
        weights[at : at + size] = np.float32(skip_weight ** (step - 1))
        at += size
    del flat, same
    counts = sp.csr_matrix((weights, (src, dst)), shape=(n_lectures, n_lectures), dtype=np.float32)
    counts.sum_duplicates()
    counts.setdiag(0)  # a repeated lecture is not a transition
    counts.eliminate_zeros()
    return counts


class SequenceRecommender(Recommender):
    """Next-lecture model from transitions and series order, backing off to segment popularity.

    Args:
        seed: accepted for a uniform constructor; the model is deterministic.
        window: transition look-ahead in steps.
        skip_weight: weight of a transition one step further ahead, relative to the previous step.
        smoothing: pseudo-count added to each row's total before normalising.
        recent: how many of the student's latest lectures are used at scoring.
        decay: weight ratio between a recent lecture and the one after it (latest = 1).
        series_weight: bonus for the next unseen episode of a series the student is in (times the
            recency weight of the lecture it follows).
        series_lookahead: how many already-taken episodes to skip looking for the next unseen one.
        popularity_weight: weight of the segment popularity term (scaled to max 1).
        half_life_days: recency half-life of the popularity term.
        shrinkage: segment popularity back-off strength (see `models.popularity.segment_table`).
        series_transition_weight: weight of the series-to-series transition term (0 = off).
        series_similarity_weight: weight of the series co-occurrence term (0 = off).
        series_window: look-ahead (in started series) of the series transitions.
        series_skip_weight: weight per extra step of a series transition.
        series_decay: weight ratio between a started series and the one started after it.
        series_shrinkage: pseudo-count damping the similarity of series with few students.
    """

    name: ClassVar[str] = "sequence"

    def __init__(
        self,
        *,
        seed: int = 42,
        window: int = 2,
        skip_weight: float = 0.5,
        smoothing: float = 2.0,
        recent: int = 5,
        decay: float = 0.5,
        series_weight: float = 1.0,
        series_lookahead: int = 3,
        popularity_weight: float = 0.05,
        half_life_days: float | None = 30.0,
        shrinkage: float = 50.0,
        series_transition_weight: float = 0.5,
        series_similarity_weight: float = 0.125,
        series_window: int = 3,
        series_skip_weight: float = 0.7,
        series_decay: float = 0.7,
        series_shrinkage: float = 10.0,
    ) -> None:
        if window < 1 or recent < 1 or series_lookahead < 1 or series_window < 1:
            raise ValueError("window, recent, series_lookahead and series_window must be >= 1")
        if not 0 < series_decay <= 1 or not 0 <= series_skip_weight <= 1:
            raise ValueError("series_decay must be in (0, 1] and series_skip_weight in [0, 1]")
        if not 0 < decay <= 1 or not 0 <= skip_weight <= 1:
            raise ValueError("decay must be in (0, 1] and skip_weight in [0, 1]")
        self.seed = seed
        self.window = window
        self.skip_weight = skip_weight
        self.smoothing = smoothing
        self.recent = recent
        self.decay = decay
        self.series_weight = series_weight
        self.series_lookahead = series_lookahead
        self.popularity_weight = popularity_weight
        self.half_life_days = half_life_days
        self.shrinkage = shrinkage
        self.series_transition_weight = series_transition_weight
        self.series_similarity_weight = series_similarity_weight
        self.series_window = series_window
        self.series_skip_weight = series_skip_weight
        self.series_decay = series_decay
        self.series_shrinkage = series_shrinkage
        self._series_transitions: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._series_similarity: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._reach: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self._onehot: sp.csr_matrix | None = None
        self._transitions: sp.csr_matrix | None = None
        self._popularity: npt.NDArray[np.float32] = np.zeros((0, 0, 0), np.float32)
        self._next: npt.NDArray[np.int32] = np.zeros(0, np.int32)

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "window": self.window,
            "skip_weight": self.skip_weight,
            "smoothing": self.smoothing,
            "recent": self.recent,
            "decay": self.decay,
            "series_weight": self.series_weight,
            "series_lookahead": self.series_lookahead,
            "popularity_weight": self.popularity_weight,
            "half_life_days": self.half_life_days,
            "shrinkage": self.shrinkage,
            "series_transition_weight": self.series_transition_weight,
            "series_similarity_weight": self.series_similarity_weight,
            "series_window": self.series_window,
            "series_skip_weight": self.series_skip_weight,
            "series_decay": self.series_decay,
            "series_shrinkage": self.series_shrinkage,
        }

    def fit(self, data: TrainingData) -> Self:
        n = len(data.catalogue.lectures)
        counts = transition_matrix(data.sequences, n, self.window, self.skip_weight)
        totals = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel() + np.float32(self.smoothing)
        inv = np.where(totals > 0, 1.0 / np.where(totals > 0, totals, 1.0), 0.0).astype(np.float32)
        transitions = sp.csr_matrix(sp.diags(inv) @ counts, dtype=np.float32)
        transitions.sort_indices()
        check_finite(self.name, transitions.data)
        self._transitions = transitions
        self._popularity = segment_table(data, self.half_life_days, self.shrinkage)
        self._next = next_in_series(data.catalogue)
        series = data.catalogue.series
        n_series = int(series.max()) + 1 if series.size else 0
        counts = transition_matrix(
            series_sequences(data.sequences, series), n_series, self.series_window, self.series_skip_weight
        )
        totals = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel() + np.float32(self.smoothing)
        self._series_transitions = np.asarray((sp.diags(1.0 / totals) @ counts).todense(), dtype=np.float32)
        self._series_similarity, self._reach = series_similarity_and_reach(
            data.interactions, series, self.series_shrinkage
        )
        check_finite(self.name, self._series_transitions, self._series_similarity, self._reach)
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        return self

    def _series_lookup(self) -> sp.csr_matrix:
        """The catalogue's lecture -> series one-hot, built once."""
        if self._onehot is None:
            self._onehot = series_onehot(self.catalogue.series)
        return self._onehot

    @property
    def transitions(self) -> sp.csr_matrix:
        """(n, n) row-normalised next-lecture shares."""
        _ = self.catalogue
        if self._transitions is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(data) or load(path) first")
        return self._transitions

    def _series_bonus(self, batch: StudentBatch, rec: sp.csr_matrix, scores: npt.NDArray[np.float32]) -> None:
        """Add the next-unseen-episode bonus in place; `rec` = the recency-weighted recent lectures."""
        n = scores.shape[1]
        rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(rec.indptr))
        weight = rec.data.astype(np.float32)
        cand = self._next[rec.indices].astype(np.int64)
        taken = history_keys(batch.history)
        recent_keys = np.sort(rows * n + rec.indices.astype(np.int64))
        for _ in range(self.series_lookahead):
            live = cand >= 0
            keys = rows * n + np.where(live, cand, 0)
            seen = live & (contains(taken, keys) | contains(recent_keys, keys))
            if not seen.any():
                break
            cand = np.where(seen, self._next[np.where(seen, cand, 0)], cand)
        ok = cand >= 0
        if not ok.any():
            return
        keys = rows[ok] * n + cand[ok]
        ok_keys_seen = contains(taken, keys) | contains(recent_keys, keys)
        rows_ok, cand_ok = rows[ok][~ok_keys_seen], cand[ok][~ok_keys_seen]
        bonus = np.zeros_like(scores)
        np.maximum.at(bonus, (rows_ok, cand_ok), np.float32(self.series_weight) * weight[ok][~ok_keys_seen])
        scores += bonus

    def _with_series_terms(
        self, batch: StudentBatch, scores: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Lecture-level scores scaled to max 1 plus the reach-weighted series-level terms."""
        if self.series_transition_weight == 0 and self.series_similarity_weight == 0:
            return scores
        series = self.catalogue.series
        n_series = self._series_transitions.shape[0]
        by_series = np.zeros((len(batch), n_series), dtype=np.float32)
        if self.series_transition_weight:
            order = series_sequences(batch.recent, series)
            rec = recent_matrix(order, n_series, self.recent, self.series_decay)
            by_series += np.float32(self.series_transition_weight) * row_max1(
                np.asarray(rec @ self._series_transitions, dtype=np.float32)
            )
        if self.series_similarity_weight:
            started = started_series(batch.history, series, self._series_lookup())
            by_series += np.float32(self.series_similarity_weight) * row_max1(
                np.asarray(started @ self._series_similarity, dtype=np.float32)
            )
        out: npt.NDArray[np.float32] = row_max1(scores) + self._reach[None, :] * by_series[:, series]
        return out

    def _score_one(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        """The request path (one student): same arithmetic as the batch path, without sparse products
        (rows of the transition and series matrices summed directly)."""
        transitions = self.transitions
        n = transitions.shape[0]
        recent = np.asarray(batch.recent[0], dtype=np.int64)
        tail = recent[-self.recent :]
        history = batch.history
        taken_rows = history.indices[history.data != 0]
        scores = np.zeros(n, dtype=np.float32)
        if tail.size:
            # at most `recent` lectures: plain Python beats numpy's set routines on a handful of values
            decay = np.float32(self.decay)
            by_lecture: dict[int, np.float32] = {}
            for step, r in enumerate(reversed(tail.tolist())):
                by_lecture[r] = by_lecture.get(r, np.float32(0)) + decay**step
            lectures = sorted(by_lecture)
            weights = [by_lecture[r] for r in lectures]
            indptr, indices, data = transitions.indptr, transitions.indices, transitions.data
            for r, w in zip(lectures, weights, strict=True):
                lo, hi = indptr[r], indptr[r + 1]
                scores[indices[lo:hi]] += w * data[lo:hi]
            taken = set(taken_rows.tolist()) | set(lectures)
            bonus: dict[int, np.float32] = {}
            for r, w in zip(lectures, weights, strict=True):
                cand = int(self._next[r])
                for _ in range(self.series_lookahead):
                    if cand < 0 or cand not in taken:
                        break
                    cand = int(self._next[cand])
                if cand >= 0 and cand not in taken:
                    value = np.float32(self.series_weight) * w
                    bonus[cand] = max(bonus.get(cand, value), value)
            for cand, value in bonus.items():
                scores[cand] += value
        scores += np.float32(self.popularity_weight) * self._popularity[batch.region[0], batch.grade[0]]
        if self.series_transition_weight == 0 and self.series_similarity_weight == 0:
            return scores[None, :]
        series = self.catalogue.series
        by_series = np.zeros(self._series_transitions.shape[0], dtype=np.float32)
        if self.series_transition_weight and recent.size:
            # the series in the order first started, the last `recent` of them, decayed per step back
            order = list(dict.fromkeys(series[recent].tolist()))[-self.recent :]
            steps = np.arange(len(order) - 1, -1, -1)
            decay_s = np.power(np.float32(self.series_decay), steps).astype(np.float32)
            by_series += np.float32(self.series_transition_weight) * normalise_max(
                decay_s @ self._series_transitions[order]
            )
        if self.series_similarity_weight and taken_rows.size:
            started = sorted(set(series[taken_rows].tolist()))
            by_series += np.float32(self.series_similarity_weight) * normalise_max(
                self._series_similarity[started].sum(axis=0, dtype=np.float32)
            )
        out: npt.NDArray[np.float32] = normalise_max(scores)
        out += self._reach * by_series[series]
        return out[None, :]

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        transitions = self.transitions
        check_batch(self.catalogue, len(self.student_feature_names), batch)
        if len(batch) == 1:
            return self._score_one(batch)
        n = transitions.shape[0]
        rec = recent_matrix(batch.recent, n, self.recent, self.decay)
        scores = np.asarray((rec @ transitions).todense(), dtype=np.float32)
        self._series_bonus(batch, rec, scores)
        scores += np.float32(self.popularity_weight) * self._popularity[batch.region, batch.grade]
        return self._with_series_terms(batch, scores)

    def save(self, directory: Path) -> None:
        transitions = self.transitions
        self._write(
            directory,
            arrays={
                "popularity": self._popularity,
                "series_transitions": self._series_transitions,
                "series_similarity": self._series_similarity,
                "reach": self._reach,
            },
            sparse={"transitions": transitions},
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        saved = read_model(directory, cls.name)
        model = instantiate(cls, saved.params, directory)
        model._transitions = saved.sparse("transitions").astype(np.float32)
        model._popularity = saved.array("popularity").astype(np.float32)
        model._next = next_in_series(saved.catalogue)
        model._series_transitions = saved.array("series_transitions").astype(np.float32)
        model._series_similarity = saved.array("series_similarity").astype(np.float32)
        model._reach = saved.array("reach").astype(np.float32)
        model._catalogue, model._students = saved.catalogue, saved.students
        model._student_feature_names = saved.student_feature_names
        return model
