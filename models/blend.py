"""Learned blend of the other recommenders: a logistic regression on their per-student ranks.

Fitting:

1. `time_holdout` (default) cuts the training data at a global time cutoff, the shape of the temporal
   evaluation: by default `holdout_days` before the end of the training window, so the weights learn
   to predict the same length of future as the evaluation's test horizon (and the served model until
   its next retrain), but never more than the most recent `holdout_share` of the interactions (a short
   history keeps enough to fit the components on); with `holdout_days` None that share is held out.
   A leave-last-one hold-out (`temporal_holdout`, used when both are 0: each student's last
   lecture(s) by first enrolment) under-represents the new series students start.
2. The components are fitted on what is left, and score a sample of the students who had lectures
   held out.
3. For each such student the held-out (eligible) lectures are positives; negatives are sampled from
   the components' top candidates (hard) and from all eligible lectures (random).
4. Each (student, lecture) pair is described by cheap features: per component its rank among the
   student's eligible lectures (linear and reciprocal, zero beyond `rank_depth`) and its score scaled
   to [0, 1] over those lectures, whether it is the next episode of a series the student is in, whether
   its series is one the student started, its reach (share of its series' students who took it), the
   share of the student's history in its subject, and its global popularity. A scikit-learn
   `LogisticRegression` learns the weights.
5. The components are refitted on all the training data, or taken as given: `fit(data, fitted)`
   takes components already fitted on `data` with the same parameters (a run that fitted them
   already, `learnrec train -m all`, fits each once); the hold-out cut's fits are always made.

Scoring computes the same features for every lecture and returns the logistic regression's logit.
Coefficients are saved as JSON, the components in sub-directories (their own formats).

Size: over 600 lines because the hold-outs, the component fits and the weight learning are one fitting
procedure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Recommender, StudentBatch, TrainingData
from models.common import (
    aligned_ages,
    check_batch,
    check_finite,
    decayed_interactions,
    next_in_series,
    normalise_max,
    same_entries,
    series_onehot,
    series_similarity_and_reach,
    started_series,
)
from models.ease import EASERecommender
from models.eligibility import eligible_mask
from models.errors import ModelFormatError, NotFittedError
from models.item_knn import ItemKNNRecommender
from models.lightfm_hybrid import LightFMRecommender
from models.popularity import PopularityRecommender, SegmentPopularityRecommender
from models.sequence import SequenceRecommender
from models.serialization import MANIFEST, instantiate, read_model

#: Models the blend can combine, by registry name.
COMPONENTS: dict[str, type[Recommender]] = {
    cls.name: cls
    for cls in (
        PopularityRecommender,
        SegmentPopularityRecommender,
        ItemKNNRecommender,
        EASERecommender,
        LightFMRecommender,
        SequenceRecommender,
    )
}
DEFAULT_COMPONENTS: tuple[str, ...] = ("segment_popularity", "item_knn", "ease", "lightfm", "sequence")
#: Length of the weights' validation window: the temporal split's default test horizon
#: (`training.splits.DEFAULT_HORIZON_DAYS`, the retrain cadence), so the blend learns the same task.
DEFAULT_HOLDOUT_DAYS = 14.0
#: How the blend carves its weights' hold-out from the training data.
HOLDOUT_KINDS: tuple[str, ...] = ("time", "random")
_EXTRA_FEATURES: tuple[str, ...] = ("series_next", "subject_share", "popularity", "reach", "series_started")


def _drop_entries(matrix: sp.csr_matrix, keep: npt.NDArray[np.bool_]) -> sp.csr_matrix:
    """`matrix` without the stored entries where `keep` is False (explicit zeros elsewhere survive)."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))[keep]
    counts = np.bincount(rows, minlength=matrix.shape[0])
    indptr = np.zeros(matrix.shape[0] + 1, dtype=matrix.indptr.dtype)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)


def time_holdout(
    data: TrainingData, share: float = 0.2, *, days: float | None = None
) -> tuple[TrainingData, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Hold out what students started at the end of the training window (a global time cutoff).

    This mimics the temporal evaluation split: a global time cutoff, `days` before the end of the
    training window (like the split's test horizon) or at the `1 - share` quantile of the interactions'
    last activity (`age_days`), whichever is later (holds out less). Like the split, the pairs a
    student started after the cutoff are held out (when `first_age_days` is known; else the pairs last
    active after it); the others train the components, a lecture still in progress at the cutoff
    counting as taken. Only students with interactions on both sides are returned as held-out students
    (like the temporal split's test students); students with fewer than two lectures keep everything.
    Ages of what remains are counted from the cutoff.

    Args:
        data: the training data.
        share: share of the interactions (most recent first) held out, in (0, 1); with `days`, the most
            that is held out (0 = no limit).
        days: length of the held-out window in days (> 0), counted back from the end of the training
            window; a pair last active exactly `days` before the end stays in training.

    Returns:
        (training data before the cutoff, student rows, lecture rows) of the held-out pairs.
    """
    if not (0.0 < share < 1.0 or (days is not None and share == 0.0)):
        raise ValueError(f"share must be in (0, 1), got {share}")
    if days is not None and not (np.isfinite(days) and days > 0):
        raise ValueError(f"days must be a positive number, got {days}")
    inter = data.interactions
    ages = aligned_ages(inter, data.age_days)
    n = inter.shape[1]
    if ages.size == 0:
        return data, np.zeros(0, np.int64), np.zeros(0, np.int64)
    cut = np.float32(np.quantile(ages, share, method="lower")) if share > 0 else np.float32(np.inf)
    if days is not None:
        cut = min(cut, np.float32(days))
    entry_rows = np.repeat(np.arange(inter.shape[0], dtype=np.int64), np.diff(inter.indptr))
    # like `temporal_holdout`: a student with fewer than two lectures in sequence keeps everything
    lengths = np.fromiter((q.size for q in data.sequences), dtype=np.int64, count=len(data.sequences))
    first = None if data.first_age_days is None else aligned_ages(inter, data.first_age_days)
    # started after the cutoff (the split's relevant pairs); without first ages: last active after it
    held = ((ages if first is None else first) < cut) & (lengths >= 2)[entry_rows]
    before = np.bincount(entry_rows[~held], minlength=inter.shape[0]) > 0
    use = held & before[entry_rows]
    held_rows, held_cols = entry_rows[use], inter.indices[use].astype(np.int64)
    interactions = _drop_entries(inter, ~held)

    def shifted(values: npt.NDArray[np.float32]) -> sp.csr_matrix:  # ages of the kept pairs, from the cutoff
        kept = np.maximum(values[~held] - cut, 0.0).astype(np.float32)
        return sp.csr_matrix((kept, interactions.indices, interactions.indptr), shape=inter.shape)

    age_days = shifted(ages)
    first_age_days = None if first is None else shifted(first)
    held_keys = np.sort(entry_rows[held] * n + inter.indices[held].astype(np.int64))
    sequences = []
    for r, seq in enumerate(data.sequences):
        keys = r * n + seq.astype(np.int64)
        pos = np.minimum(np.searchsorted(held_keys, keys), max(held_keys.size - 1, 0))
        gone = held_keys[pos] == keys if held_keys.size else np.zeros(seq.size, dtype=np.bool_)
        sequences.append(seq[~gone])
    train = dataclasses.replace(
        data,
        interactions=interactions,
        age_days=age_days,
        sequences=tuple(sequences),
        first_age_days=first_age_days,
    )
    return train, held_rows, held_cols


def _kept_entries(matrix: sp.csr_matrix, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Per stored entry of `matrix`, False when its ``row * n_cols + col`` is in the sorted `keys`."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return ~np.isin(rows * matrix.shape[1] + matrix.indices.astype(np.int64), keys)


def _without_pairs(
    data: TrainingData, held_rows: npt.NDArray[np.int64], held_cols: npt.NDArray[np.int64]
) -> TrainingData:
    """`data` without the (student, lecture) pairs given: interactions, ages and sequences."""
    n = data.interactions.shape[1]
    held_keys = np.sort(held_rows * n + held_cols)
    keep = _kept_entries(data.interactions, held_keys)

    def without(matrix: sp.csr_matrix) -> sp.csr_matrix:  # the age matrices share the interactions' entries
        same = same_entries(matrix, data.interactions)
        return _drop_entries(matrix, keep if same else _kept_entries(matrix, held_keys))

    sequences = list(data.sequences)
    for r in np.unique(held_rows):
        seq = sequences[r]
        sequences[r] = seq[~np.isin(int(r) * n + seq.astype(np.int64), held_keys)]
    return dataclasses.replace(
        data,
        interactions=without(data.interactions),
        age_days=without(data.age_days),
        sequences=tuple(sequences),
        first_age_days=None if data.first_age_days is None else without(data.first_age_days),
    )


def temporal_holdout(
    data: TrainingData, holdout: int = 1, min_remaining: int = 1
) -> tuple[TrainingData, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Hold out each student's last `holdout` lectures (by first enrolment).

    Args:
        data: the training data.
        holdout: lectures held out per student.
        min_remaining: students with fewer than `holdout + min_remaining` lectures keep all of them.

    Returns:
        (training data without the held-out lectures, student rows, lecture rows) of the held-out pairs.
    """
    lengths = np.fromiter((s.size for s in data.sequences), dtype=np.int64, count=len(data.sequences))
    chosen = np.flatnonzero(lengths >= holdout + min_remaining)
    held_rows = np.repeat(chosen, holdout)
    held_cols = (
        np.concatenate([data.sequences[r][-holdout:] for r in chosen]).astype(np.int64)
        if chosen.size
        else np.zeros(0, np.int64)
    )
    return _without_pairs(data, held_rows, held_cols), held_rows, held_cols


def random_holdout(
    data: TrainingData, share: float = 0.2, seed: int = 42
) -> tuple[TrainingData, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Hold out a random `share` of each student's lectures (at least one; one always stays).

    The hold-out for logs whose order carries no signal (a random per-student split): what is held
    out then looks like the test, where the latest days would not.

    Args:
        data: the training data.
        share: share of each student's lectures held out, in (0, 1).
        seed: seed of the draw.

    Returns:
        (training data without the held-out lectures, student rows, lecture rows) of the held-out pairs.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    for r, seq in enumerate(data.sequences):
        if seq.size < 2:
            continue
        size = min(max(1, round(share * seq.size)), seq.size - 1)
        picked = np.sort(rng.choice(np.unique(seq), size=size, replace=False)).astype(np.int64)
        rows.append(np.full(picked.size, r, dtype=np.int64))
        cols.append(picked)
    held_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    held_cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return _without_pairs(data, held_rows, held_cols), held_rows, held_cols


class BlendRecommender(Recommender):
    """Logistic-regression blend of component recommenders, trained on a temporal hold-out.

    Args:
        seed: seeds the components and the negative sampling.
        components: registry names of the models to blend.
        component_params: per component name, keyword arguments for its constructor.
        holdout: lectures held out per student to learn the weights (when `holdout_days` and
            `holdout_share` are both 0/None).
        holdout_days: > 0: learn the weights on a global time cutoff (`time_holdout`) this many days
            before the end of the training window, holding out what students did in those days - the
            temporal evaluation's test horizon (default 14, the split's default). None or 0: use
            `holdout_share` alone.
        holdout_share: the most recent share of the interactions held out: the hold-out without
            `holdout_days` (a window of whatever length that share spans), the most it may hold out
            with it (0 = no limit).
        max_students: at most this many held-out students are used to learn the weights.
        negatives: sampled negatives per positive.
        hard_share: share of negatives drawn from the components' top candidates.
        rank_depth: ranks beyond this count as "not ranked" (feature 0).
        regularisation: inverse L2 strength `C` of the logistic regression.
        half_life_days: recency half-life of the popularity feature.
        holdout_kind: "time" (the hold-outs above) or "random": a random `holdout_share` (0.2 when 0)
            of each student's lectures, for logs whose order says nothing (a random per-student test).
        fallback: a component name: the blend did not beat this component on validation (decided by
            `learnrec train`), so it fits and serves that component alone, unblended.
    """

    name: ClassVar[str] = "blend"

    def __init__(
        self,
        *,
        seed: int = 42,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        component_params: Mapping[str, Mapping[str, Any]] | None = None,
        holdout: int = 1,
        max_students: int = 5000,
        negatives: int = 20,
        hard_share: float = 0.5,
        rank_depth: int = 100,
        regularisation: float = 1.0,
        half_life_days: float | None = 30.0,
        holdout_share: float = 0.2,
        holdout_days: float | None = DEFAULT_HOLDOUT_DAYS,
        holdout_kind: str = "time",
        fallback: str | None = None,
    ) -> None:
        components = (components,) if isinstance(components, str) else tuple(components)
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown or not components or len(set(components)) != len(components):
            valid = ", ".join(COMPONENTS)
            raise ValueError(f"components must be distinct names among {valid}; got {', '.join(components)}")
        extra = set(component_params or {}) - set(components)
        if extra:
            raise ValueError(f"component_params names models not in components: {', '.join(sorted(extra))}")
        if holdout < 1 or max_students < 1 or negatives < 1 or rank_depth < 1:
            raise ValueError("holdout, max_students, negatives and rank_depth must be >= 1")
        if not 0 <= holdout_share < 1:
            raise ValueError(f"holdout_share must be in [0, 1), got {holdout_share}")
        if holdout_days is not None and (
            isinstance(holdout_days, bool)
            or not isinstance(holdout_days, int | float)
            or not (np.isfinite(holdout_days) and holdout_days >= 0)
        ):
            raise ValueError(f"holdout_days must be a number of days >= 0 or None, got {holdout_days!r}")
        if holdout_kind not in HOLDOUT_KINDS:
            raise ValueError(f"holdout_kind must be one of {', '.join(HOLDOUT_KINDS)}, got {holdout_kind!r}")
        if fallback is not None and fallback not in components:
            raise ValueError(
                f"fallback must be one of the components ({', '.join(components)}), got {fallback!r}"
            )
        if not 0 <= hard_share <= 1:
            raise ValueError(f"hard_share must be in [0, 1], got {hard_share}")
        self.seed = seed
        self.components = components
        self.component_params = {k: dict(v) for k, v in (component_params or {}).items()}
        self.holdout = holdout
        self.max_students = max_students
        self.negatives = negatives
        self.hard_share = hard_share
        self.rank_depth = rank_depth
        self.regularisation = regularisation
        self.half_life_days = half_life_days
        self.holdout_share = holdout_share
        self.holdout_days = float(holdout_days) if holdout_days else None
        self.holdout_kind = holdout_kind
        self.fallback = fallback
        self._models: dict[str, Recommender] = {}
        self._coef: dict[str, float] = {}
        self._intercept = 0.0
        self._learned = False
        self._n_pairs = 0
        self._popularity: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self._next: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self._reach: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self._lookup_cache: tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix] | None = None
        #: seconds of each component the last `fit` fitted on all its data (not those it took), by name
        self.fit_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------
    def _init_kwargs(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "components": list(self.components),
            "component_params": self.component_params,
            "holdout": self.holdout,
            "max_students": self.max_students,
            "negatives": self.negatives,
            "hard_share": self.hard_share,
            "rank_depth": self.rank_depth,
            "regularisation": self.regularisation,
            "half_life_days": self.half_life_days,
            "holdout_share": self.holdout_share,
            "holdout_days": self.holdout_days,
            "holdout_kind": self.holdout_kind,
            "fallback": self.fallback,
        }

    def params(self) -> dict[str, Any]:
        """Flat parameters for MLflow: the blend's own, then each component's as `name.param`."""
        out = {k: v for k, v in self._init_kwargs().items() if k not in ("components", "component_params")}
        out["components"] = ",".join(self.components)
        for name in self.components:
            model = self._models.get(name) or self.component(name)
            out.update({f"{name}.{k}": v for k, v in model.params().items()})
        return out

    @property
    def coefficients(self) -> dict[str, float]:
        """Learned weight per feature (see `feature_names`)."""
        self._check_fitted()
        return dict(self._coef)

    @property
    def weights_learned(self) -> bool:
        """False when the hold-out had too few examples and equal rank weights were used instead."""
        self._check_fitted()
        return self._learned

    def feature_names(self) -> tuple[str, ...]:
        """Names of the features the logistic regression weighs."""
        names = [f"{c}:{kind}" for c in self.components for kind in ("rank", "recip", "score")]
        return (*names, *_EXTRA_FEATURES)

    def component(self, name: str) -> Recommender:
        """Component `name` as the blend fits it (its seed and parameters), not fitted."""
        kwargs = {"seed": self.seed, **self.component_params.get(name, {})}
        return COMPONENTS[name](**kwargs)

    def _fit_on_all(self, name: str, data: TrainingData, fitted: Mapping[str, Recommender]) -> Recommender:
        """Component `name` fitted on `data`: `fitted[name]` when it is that fit (`Recommender.is_fit_of`),
        else a new fit, timed in `fit_seconds`."""
        new, given = self.component(name), fitted.get(name)
        if given is not None and given.is_fit_of(new, data):
            return given
        started = time.perf_counter()
        new.fit(data)
        self.fit_seconds[name] = time.perf_counter() - started
        return new

    def _check_fitted(self) -> None:
        _ = self.catalogue
        if not self._models:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(data) or load(path) first")

    @property
    def models(self) -> dict[str, Recommender]:
        """The fitted components by name."""
        self._check_fitted()
        return dict(self._models)

    def _lookups(self) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
        """(successor (n, n): lecture -> next episode, lecture -> subject, lecture -> series) one-hots,
        built once per fitted or loaded model (scoring one student must not rebuild them)."""
        if self._lookup_cache is None:
            cat = self.catalogue
            n = len(cat.lectures)
            has_next = np.flatnonzero(self._next >= 0)
            successor = sp.csr_matrix(
                (np.ones(has_next.size, np.float32), (has_next, self._next[has_next])), shape=(n, n)
            )
            subject_of = sp.csr_matrix(
                (np.ones(n, np.float32), (np.arange(n), cat.subject)), shape=(n, max(len(cat.subjects), 1))
            )
            self._lookup_cache = (successor, subject_of, series_onehot(cat.series))
        return self._lookup_cache

    # ------------------------------------------------------------------------------------------------
    def _tops(
        self, models: Mapping[str, Recommender], batch: StudentBatch, mask: npt.NDArray[np.bool_]
    ) -> dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.float32]]]:
        """Per component, each student's `rank_depth` best eligible lectures, best first, validity, and
        the scores scaled to [0, 1] over the student's eligible lectures (min 0, max 1)."""
        b, n = mask.shape
        depth = min(self.rank_depth, n)
        tops: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.float32]]] = {}
        for name in self.components:
            raw = models[name].score(batch)
            masked = np.where(mask, raw, -np.inf)
            lo = np.where(mask, raw, np.inf).min(axis=1, keepdims=True)
            hi = masked.max(axis=1, keepdims=True)
            span = np.where(np.isfinite(hi - lo) & (hi > lo), hi - lo, 1.0)
            scaled = np.where(mask, (raw - np.where(np.isfinite(lo), lo, 0.0)) / span, 0.0).astype(np.float32)
            if depth < n:
                top = np.argpartition(-masked, depth - 1, axis=1)[:, :depth]
            else:
                top = np.tile(np.arange(n), (b, 1))
            top_scores = np.take_along_axis(masked, top, axis=1)
            order = np.lexsort((top, -top_scores), axis=1)
            top = np.take_along_axis(top, order, axis=1)
            tops[name] = (top, np.isfinite(np.take_along_axis(top_scores, order, axis=1)), scaled)
        return tops

    def _planes(
        self,
        tops: Mapping[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.float32]]],
        batch: StudentBatch,
    ) -> Iterator[tuple[str, npt.NDArray[np.float32]]]:
        """(feature name, (b, n) values) for every feature, one plane at a time (bounded memory)."""
        cat = self.catalogue
        b, n = len(batch), len(cat.lectures)
        rows = np.arange(b)[:, None]
        for name in self.components:
            top, valid, scaled = tops[name]
            depth = top.shape[1]
            rank = np.arange(depth, dtype=np.float32)[None, :]
            linear = np.zeros((b, n), dtype=np.float32)
            linear[rows, top] = np.where(valid, (depth - rank) / depth, 0.0)
            yield f"{name}:rank", linear
            recip = np.zeros((b, n), dtype=np.float32)
            recip[rows, top] = np.where(valid, 1.0 / (1.0 + rank), 0.0)
            yield f"{name}:recip", recip
            yield f"{name}:score", scaled
        history = sp.csr_matrix(batch.history, dtype=np.float32)
        taken = history.copy()
        taken.data = (taken.data != 0).astype(np.float32)
        successor, subject_of, onehot = self._lookups()
        # next episode of anything taken, unless taken itself
        series_next = (np.asarray((taken @ successor).todense()) > 0).astype(np.float32)
        series_next[np.asarray(taken.todense()) > 0] = 0.0
        yield "series_next", series_next
        per_subject = np.asarray((history @ subject_of).todense(), dtype=np.float32)
        totals = per_subject.sum(axis=1, keepdims=True)
        share = np.divide(per_subject, totals, out=np.zeros_like(per_subject), where=totals > 0)
        yield "subject_share", share[:, cat.subject]
        yield "popularity", np.repeat(self._popularity[None, :], b, axis=0)
        yield "reach", np.repeat(self._reach[None, :], b, axis=0)
        started = np.asarray(started_series(history, cat.series, onehot).todense(), dtype=np.float32)
        yield "series_started", started[:, cat.series]

    def _training_pairs(
        self,
        models: Mapping[str, Recommender],
        train: TrainingData,
        held_rows: npt.NDArray[np.int64],
        held_cols: npt.NDArray[np.int64],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int8]]:
        """Feature rows and labels of sampled (student, lecture) pairs of the held-out students."""
        rng = np.random.default_rng(self.seed)
        students = np.unique(held_rows)
        if students.size > self.max_students:
            students = np.sort(rng.choice(students, size=self.max_students, replace=False))
        n = len(self.catalogue.lectures)
        n_features = len(self.feature_names())
        x_parts: list[npt.NDArray[np.float32]] = []
        y_parts: list[npt.NDArray[np.int8]] = []
        chunk = max(1, min(512, 2_000_000 // max(n, 1)))
        held_order = np.argsort(held_rows, kind="stable")
        held_rows_sorted, held_cols_sorted = held_rows[held_order], held_cols[held_order]
        for start in range(0, students.size, chunk):
            rows = students[start : start + chunk].astype(np.int32)
            batch = train.batch(rows)
            mask = eligible_mask(self.catalogue, batch.region, batch.grade, batch.history)
            tops = self._tops(models, batch, mask)
            lo = np.searchsorted(held_rows_sorted, rows, side="left")
            hi = np.searchsorted(held_rows_sorted, rows, side="right")
            pair_rows: list[npt.NDArray[np.int64]] = []
            pair_cols: list[npt.NDArray[np.int64]] = []
            labels: list[npt.NDArray[np.int8]] = []
            for i in range(len(rows)):
                # positives: held-out lectures the student could have been recommended
                pos = held_cols_sorted[lo[i] : hi[i]]
                pos = np.unique(pos[mask[i, pos]])
                eligible = np.setdiff1d(np.flatnonzero(mask[i]), pos, assume_unique=True)
                if pos.size == 0 or eligible.size == 0:
                    continue
                want = self.negatives * pos.size
                pool = np.unique(np.concatenate([top[i][valid[i]] for top, valid, _ in tops.values()]))
                pool = np.setdiff1d(pool, pos, assume_unique=True)
                n_hard = min(round(want * self.hard_share), pool.size)
                hard = rng.choice(pool, size=n_hard, replace=False) if n_hard else np.zeros(0, np.int64)
                rest = np.setdiff1d(eligible, hard, assume_unique=True)
                n_rand = min(want - n_hard, rest.size)
                rand = rng.choice(rest, size=n_rand, replace=False) if n_rand else np.zeros(0, np.int64)
                cols = np.concatenate([pos, hard, rand]).astype(np.int64)
                pair_rows.append(np.full(cols.size, i, dtype=np.int64))
                pair_cols.append(cols)
                labels.append(
                    np.concatenate([np.ones(pos.size, np.int8), np.zeros(cols.size - pos.size, np.int8)])
                )
            if not pair_rows:
                continue
            pr, pc = np.concatenate(pair_rows), np.concatenate(pair_cols)
            x = np.empty((pr.size, n_features), dtype=np.float32)
            for j, (_, plane) in enumerate(self._planes(tops, batch)):
                x[:, j] = plane[pr, pc]
            x_parts.append(x)
            y_parts.append(np.concatenate(labels))
        if not x_parts:
            return np.zeros((0, n_features), np.float32), np.zeros(0, np.int8)
        return np.concatenate(x_parts), np.concatenate(y_parts)

    def fit(self, data: TrainingData, fitted: Mapping[str, Recommender] | None = None) -> Self:
        """Learn the weights on the hold-out cut of `data`, then fit the components on all of `data`.

        Args:
            data: the training data.
            fitted: components already fitted on `data` itself, by name: each one fitted with the
                parameters and seed this blend gives it (`component(name).params()`) is taken instead of
                fitting it again (fits are deterministic for a seed, so the blend is the same); the others
                are fitted. The components fitted on the hold-out cut are always fitted here.
        """
        from sklearn.linear_model import LogisticRegression

        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        self._next = next_in_series(data.catalogue)
        self._lookup_cache = None
        self.fit_seconds = {}
        fitted = fitted or {}
        if self.fallback is not None:
            return self._fit_fallback(data, fitted)
        if self.holdout_kind == "random":
            train, held_rows, held_cols = random_holdout(data, self.holdout_share or 0.2, self.seed)
        elif self.holdout_days or self.holdout_share > 0:
            train, held_rows, held_cols = time_holdout(
                data, self.holdout_share, days=self.holdout_days or None
            )
        else:
            train, held_rows, held_cols = temporal_holdout(data, self.holdout)
        self._popularity = normalise_max(
            np.asarray(decayed_interactions(train, self.half_life_days).sum(axis=0), dtype=np.float32).ravel()
        )
        _, self._reach = series_similarity_and_reach(train.interactions, data.catalogue.series, 10.0)
        validation_models = {name: self.component(name).fit(train) for name in self.components}
        x, y = self._training_pairs(validation_models, train, held_rows, held_cols)
        del validation_models, train  # the cut's fits are done with: not held through the fits on all data
        names = self.feature_names()
        self._n_pairs = int(y.size)
        if y.size >= 10 and 0 < int(y.sum()) < y.size:
            lr = LogisticRegression(C=self.regularisation, max_iter=2000, random_state=self.seed)
            lr.fit(x.astype(np.float64), y)
            coef = lr.coef_.ravel()
            check_finite(self.name, coef.astype(np.float32))
            self._coef = {name: float(c) for name, c in zip(names, coef, strict=True)}
            self._intercept = float(lr.intercept_[0])
            self._learned = True
        else:
            # too little hold-out data to learn from: fall back to equal weights on the ranks
            self._coef = {name: (1.0 if name.endswith(":rank") else 0.0) for name in names}
            self._intercept = 0.0
            self._learned = False
        self._popularity = normalise_max(
            np.asarray(decayed_interactions(data, self.half_life_days).sum(axis=0), dtype=np.float32).ravel()
        )
        _, self._reach = series_similarity_and_reach(data.interactions, data.catalogue.series, 10.0)
        self._models = {name: self._fit_on_all(name, data, fitted) for name in self.components}
        return self

    def _fit_fallback(self, data: TrainingData, fitted: Mapping[str, Recommender]) -> Self:
        """Fit the fallback component alone; the blend's score is then that component's score."""
        assert self.fallback is not None
        names = self.feature_names()
        self._coef = {name: (1.0 if name == f"{self.fallback}:score" else 0.0) for name in names}
        self._intercept, self._learned, self._n_pairs = 0.0, False, 0
        n = len(data.catalogue.lectures)
        self._popularity, self._reach = np.zeros(n, np.float32), np.zeros(n, np.float32)
        self._models = {self.fallback: self._fit_on_all(self.fallback, data, fitted)}
        return self

    # ------------------------------------------------------------------------------------------------
    def state_width(self) -> int:
        model = self._models.get(LightFMRecommender.name)
        return model.state_width() if model is not None else 0

    def student_state(self, rows: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
        self._check_fitted()
        model = self._models.get(LightFMRecommender.name)
        if model is None:
            return np.zeros((len(rows), 0), dtype=np.float32)
        return model.student_state(rows)

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        self._check_fitted()
        check_batch(self.catalogue, len(self.student_feature_names), batch)
        if batch.state is not None and self.state_width() == 0:
            raise ValueError(
                "batch.state given but this blend keeps no per-student state (no lightfm component)"
            )
        if self.fallback is not None:
            # unblended: the component's own scores, so the ranking is exactly the component's
            return self._models[self.fallback].score(batch)
        mask = eligible_mask(self.catalogue, batch.region, batch.grade, batch.history)
        z = np.full(mask.shape, np.float32(self._intercept), dtype=np.float32)
        for name, plane in self._planes(self._tops(self._models, batch, mask), batch):
            weight = self._coef.get(name, 0.0)
            if weight:
                z += np.float32(weight) * plane
        check_finite(self.name, z)
        return z

    # ------------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)
        for name, model in self._models.items():
            model.save(directory / "components" / name)
        self._write(
            directory,
            params=self._init_kwargs(),
            arrays={"popularity": self._popularity, "reach": self._reach},
            extra={
                "coefficients": self._coef,
                "intercept": self._intercept,
                "weights_learned": self._learned,
                "training_pairs": self._n_pairs,
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        directory = Path(directory)
        saved = read_model(directory, cls.name)
        model = instantiate(cls, saved.params, directory)
        try:
            model._coef = {str(k): float(v) for k, v in saved.extra["coefficients"].items()}
            model._intercept = float(saved.extra["intercept"])
            model._learned = bool(saved.extra["weights_learned"])
            model._n_pairs = int(saved.extra.get("training_pairs", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFormatError(
                f"{directory / MANIFEST}: blend coefficients missing or malformed: {exc}"
            ) from exc
        model._popularity = saved.array("popularity").astype(np.float32)
        model._reach = saved.array("reach").astype(np.float32)
        model._catalogue, model._students = saved.catalogue, saved.students
        model._student_feature_names = saved.student_feature_names
        model._next = next_in_series(saved.catalogue)
        model._lookup_cache = None
        models: dict[str, Recommender] = {}
        for name in (model.fallback,) if model.fallback is not None else model.components:
            component = COMPONENTS[name].load(directory / "components" / name)
            if component.catalogue.lectures != saved.catalogue.lectures:
                raise ModelFormatError(f"{directory}: component '{name}' was fitted on another catalogue")
            # share one copy of the id maps instead of one per component
            component._catalogue, component._students = saved.catalogue, saved.students
            models[name] = component
        model._models = models
        return model
