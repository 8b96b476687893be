"""Small helpers shared by the recommenders: batch checks, recency weights, series lookups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Catalogue, StudentBatch, TrainingData
from models.errors import NumericalError


def check_batch(catalogue: Catalogue, n_student_features: int, batch: StudentBatch) -> None:
    """Raise ValueError when `batch` does not fit the model's catalogue and feature space.

    Args:
        catalogue: the model's catalogue.
        n_student_features: width the model expects for `batch.features`.
        batch: the batch to score.
    """
    b, n = len(batch), len(catalogue.lectures)
    if batch.history.shape != (b, n):
        raise ValueError(
            f"batch.history has shape {batch.history.shape}, expected ({b}, {n}) (students x lectures)"
        )
    if batch.features.shape != (b, n_student_features):
        raise ValueError(
            f"batch.features has shape {batch.features.shape}, expected ({b}, {n_student_features}): "
            "encode student features with the model's student_feature_names"
        )
    for name in ("region", "grade"):
        if getattr(batch, name).shape != (b,):
            raise ValueError(f"batch.{name} must have shape ({b},)")
    if len(batch.recent) != b:
        raise ValueError(f"batch.recent has {len(batch.recent)} entries, expected {b}")


def same_entries(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    """True when `a` and `b` store entries at the same positions, in the same order."""
    return (
        a.indptr.shape == b.indptr.shape
        and a.indices.shape == b.indices.shape
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
    )


def aligned_ages(interactions: sp.csr_matrix, ages: sp.csr_matrix) -> npt.NDArray[np.float32]:
    """`ages` (`TrainingData.age_days` or `first_age_days`) for each stored entry of `interactions`, in the
    order of `interactions.data`."""
    if same_entries(interactions, ages):
        return np.asarray(ages.data, dtype=np.float32)
    rows = np.repeat(np.arange(interactions.shape[0]), np.diff(interactions.indptr))
    return np.asarray(ages[rows, interactions.indices], dtype=np.float32).ravel()


def decayed_interactions(data: TrainingData, half_life_days: float | None) -> sp.csr_matrix:
    """Interactions weighted by 0.5 ** (age / half-life): recent activity counts more.

    Args:
        data: the training data.
        half_life_days: days after which an interaction counts half; None or <= 0: no decay.

    Returns:
        float32 CSR with the structure of `data.interactions`.
    """
    w = sp.csr_matrix(data.interactions, dtype=np.float32, copy=True)
    if half_life_days is not None and half_life_days > 0:
        w.data *= np.exp2(
            -aligned_ages(data.interactions, data.age_days) / np.float32(half_life_days)
        ).astype(np.float32)
    return w


def normalise_max(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Scale non-negative scores so the largest is 1 (all-zero stays zero)."""
    top = float(v.max()) if v.size else 0.0
    if top > 0 and v.dtype == np.float32:
        return v / np.float32(top)  # float32 already: one pass, no second copy
    out: npt.NDArray[np.float32] = (v / top).astype(np.float32) if top > 0 else v.astype(np.float32)
    return out


def next_in_series(catalogue: Catalogue) -> npt.NDArray[np.int32]:
    """For each lecture, the row of the next episode of its series (by position), or -1 for the last."""
    n = len(catalogue.lectures)
    order = np.lexsort((np.arange(n), catalogue.series_position, catalogue.series))
    nxt = np.full(n, -1, dtype=np.int32)
    same = catalogue.series[order[1:]] == catalogue.series[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def recent_matrix(
    recent: Sequence[npt.NDArray[np.int32]], n_lectures: int, window: int, decay: float
) -> sp.csr_matrix:
    """(b, n) CSR of the last `window` lectures of each student, weighted decay ** steps-back.

    The latest lecture weighs 1, the one before `decay`, and so on; repeats add up.
    """
    b = len(recent)
    tails = [np.asarray(r[-window:], dtype=np.int32) if window > 0 else np.zeros(0, np.int32) for r in recent]
    lengths = np.fromiter((t.size for t in tails), dtype=np.int64, count=b)
    cols = np.concatenate(tails) if b else np.zeros(0, np.int32)
    rows = np.repeat(np.arange(b), lengths)
    # steps back from the end of each tail: L-1, ..., 0
    ends = np.repeat(np.cumsum(lengths), lengths)
    steps = ends - np.arange(cols.size) - 1
    weights = np.power(np.float32(decay), steps).astype(np.float32)
    m = sp.csr_matrix((weights, (rows, cols)), shape=(b, n_lectures), dtype=np.float32)
    m.sum_duplicates()
    return m


def check_finite(name: str, *arrays: npt.NDArray[np.float32]) -> None:
    """Raise NumericalError when any array holds NaN or infinity."""
    for arr in arrays:
        if arr.size and not np.isfinite(arr).all():
            raise NumericalError(f"{name}: learned parameters hold NaN or infinity; lower the learning rate")


def history_keys(history: sp.csr_matrix) -> npt.NDArray[np.int64]:
    """Sorted keys row * n_lectures + lecture of the nonzero history entries (for fast membership)."""
    h = sp.csr_matrix(history)
    rows = np.repeat(np.arange(h.shape[0], dtype=np.int64), np.diff(h.indptr))
    taken = h.data != 0
    keys: npt.NDArray[np.int64] = rows[taken] * np.int64(h.shape[1]) + h.indices[taken].astype(np.int64)
    keys.sort()
    return keys


def contains(sorted_keys: npt.NDArray[np.int64], keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Membership of `keys` in `sorted_keys`."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=np.bool_)
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, sorted_keys.size - 1)
    return np.asarray(sorted_keys[pos] == keys, dtype=np.bool_)


def row_max1(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Scale each row of non-negative scores so its largest is 1 (all-zero rows stay zero)."""
    if v.size == 0:
        return v.astype(np.float32)
    top = v.max(axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = (v / np.where(top > 0, top, 1.0)).astype(np.float32)
    return out


def series_onehot(series: npt.NDArray[np.int32]) -> sp.csr_matrix:
    """(n_lectures, n_series) 0/1 CSR: lecture -> its series."""
    n = series.size
    n_series = int(series.max()) + 1 if n else 0
    return sp.csr_matrix(
        (np.ones(n, dtype=np.float32), (np.arange(n), series)), shape=(n, n_series), dtype=np.float32
    )


def started_series(
    history: sp.csr_matrix, series: npt.NDArray[np.int32], onehot: sp.csr_matrix | None = None
) -> sp.csr_matrix:
    """(b, n_series) 0/1 CSR: the series of which each student took at least one episode.

    Args:
        history: (b, n_lectures) interactions.
        series: (n_lectures,) series index per lecture.
        onehot: `series_onehot(series)` when the caller keeps one (saves rebuilding it per request).

    Returns:
        float32 CSR.
    """
    h = sp.csr_matrix(history)
    n_series = onehot.shape[1] if onehot is not None else (int(series.max()) + 1 if series.size else 0)
    taken = h.data != 0
    rows = np.repeat(np.arange(h.shape[0], dtype=np.int64), np.diff(h.indptr))[taken]
    # one entry per (student, series) pair, in row then series order (no sparse product: this runs for
    # every request)
    keys = np.unique(rows * n_series + series[h.indices[taken]])
    counts = (
        np.bincount(keys // max(n_series, 1), minlength=h.shape[0])
        if keys.size
        else np.zeros(h.shape[0], np.int64)
    )
    indptr = np.zeros(h.shape[0] + 1, dtype=np.int32)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix(
        (np.ones(keys.size, dtype=np.float32), (keys % max(n_series, 1)).astype(np.int32), indptr),
        shape=(h.shape[0], n_series),
    )


def series_similarity_and_reach(
    interactions: sp.csr_matrix, series: npt.NDArray[np.int32], shrinkage: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Series-to-series similarity from shared students, and each episode's reach in its series.

    Two series are similar when the same students start both: co-occurrence / (sqrt(audience_i *
    audience_j) + shrinkage), the diagonal zeroed. An episode's reach is the share of the students of its
    series who took it (early episodes reach more: students stop walking a series).

    Args:
        interactions: (n_students, n_lectures) training interactions.
        series: (n_lectures,) series index per lecture.
        shrinkage: pseudo-count damping the similarity of series with few students.

    Returns:
        ((n_series, n_series) similarity, (n_lectures,) reach in [0, 1]), float32.
    """
    started = started_series(interactions, series)
    audience = np.asarray(started.sum(axis=0), dtype=np.float64).ravel()
    co = np.asarray((started.T @ started).todense(), dtype=np.float64)
    sim = co / (np.sqrt(np.outer(audience, audience)) + shrinkage)
    np.fill_diagonal(sim, 0.0)
    takers = np.asarray((sp.csr_matrix(interactions) != 0).sum(axis=0), dtype=np.float64).ravel()
    reach = takers / np.maximum(audience[series], 1.0) if series.size else np.zeros(0)
    return sim.astype(np.float32), reach.astype(np.float32)


def series_sequences(
    sequences: Sequence[npt.NDArray[np.int32]], series: npt.NDArray[np.int32]
) -> tuple[npt.NDArray[np.int32], ...]:
    """Per student, the series in the order first started (from lecture sequences)."""
    out = []
    for seq in sequences:
        s = series[np.asarray(seq, dtype=np.int64)]
        _, first = np.unique(s, return_index=True)
        out.append(s[np.sort(first)].astype(np.int32))
    return tuple(out)
