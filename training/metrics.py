"""Top-k ranking metrics, vectorised over students: accuracy, coverage, novelty and subject diversity.

Inputs are the recommended lecture rows per student (`(n, k)` int, best first, -1 padding a short
list) and the relevant lectures per student as a sparse `(n, n_lectures)` matrix. Lists must be built
the way the evaluation builds them: lectures in the student's *training* history are excluded from the
ranking before scoring (eligibility mask from the training history, `models.eligibility`), and are never
relevant, so a model is neither rewarded nor punished for lectures the student already took.

Definitions at cut-off k (per student, then the mean over students unless said otherwise):

* precision = hits / k (padding counts as a miss); recall = hits / |relevant|;
* NDCG = DCG / ideal DCG with binary gains and discount 1 / log2(rank + 1);
* MAP = sum over hit ranks r of precision@r, divided by min(|relevant|, k);
* MRR = 1 / rank of the first hit (0 without one); hit rate = share of students with a hit;
* coverage = distinct lectures recommended to the group / lectures that could be recommended;
* novelty = mean self-information -log2(p) of the recommended lectures, p = share of training students
  who took the lecture (a lecture nobody took counts as taken by one student);
* subject diversity = distinct subjects in the list / list length; intra-list diversity = share of
  pairs in the list of different subjects (lists shorter than 2 are left out of its mean).

Every student must have at least one relevant lecture (the splits guarantee it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

#: Metric names, in the order tables show them; keys are `f"{name}_at_{k}"`.
METRICS: tuple[str, ...] = (
    "precision",
    "recall",
    "ndcg",
    "map",
    "mrr",
    "hit_rate",
    "coverage",
    "novelty",
    "subject_diversity",
    "intra_list_diversity",
)
#: Computed per student and averaged (coverage is a property of the whole set of lists).
PER_STUDENT: tuple[str, ...] = tuple(m for m in METRICS if m != "coverage")

Float64Array = npt.NDArray[np.float64]


def metric_key(name: str, k: int) -> str:
    """The MLflow/report key of a metric at cut-off k, e.g. ``ndcg_at_10``."""
    return f"{name}_at_{k}"


@dataclass(frozen=True)
class ItemStats:
    """What the beyond-accuracy metrics need to know about the lectures.

    Attributes:
        information: (n_lectures,) self-information -log2(p) of each lecture (see `self_information`).
        subject: (n_lectures,) subject index of each lecture.
        n_candidates: lectures that could be recommended at all (coverage denominator), e.g. the active ones.
    """

    information: Float64Array
    subject: npt.NDArray[np.int32]
    n_candidates: int


def self_information(counts: npt.NDArray[np.integer] | Float64Array, n_users: int) -> Float64Array:
    """-log2 of the share of users who took each item; an item nobody took counts as taken by one.

    Args:
        counts: (n_items,) number of distinct training users per item.
        n_users: number of training users (>= 1).

    Returns:
        (n_items,) float64 self-information in bits.
    """
    n_users = max(int(n_users), 1)
    p = np.maximum(np.asarray(counts, dtype=np.float64), 1.0) / n_users
    out: Float64Array = -np.log2(np.minimum(p, 1.0))
    return out + 0.0  # turns -0.0 into 0.0


def hit_matrix(recs: npt.NDArray[np.integer], relevant: sp.csr_matrix) -> npt.NDArray[np.bool_]:
    """(n, k) True where the recommended lecture is relevant to the student; padding (-1) never is.

    Args:
        recs: (n, k) lecture rows, -1 padded.
        relevant: (n, n_lectures) sparse; any stored nonzero is relevant.

    Returns:
        The hit matrix.
    """
    rel = sp.csr_matrix(relevant)
    recs = np.asarray(recs, dtype=np.int64)
    n, n_items = rel.shape
    if recs.ndim != 2 or recs.shape[0] != n:
        raise ValueError(f"recommendations {recs.shape} and relevant {rel.shape} disagree on the students")
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(rel.indptr))
    nonzero = rel.data != 0
    keys = np.sort(rows[nonzero] * n_items + rel.indices[nonzero].astype(np.int64))
    valid = recs >= 0
    wanted = np.arange(n, dtype=np.int64)[:, None] * n_items + np.where(valid, recs, 0)
    if keys.size == 0:
        return np.zeros(recs.shape, dtype=np.bool_)
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    hits: npt.NDArray[np.bool_] = (keys[pos] == wanted) & valid
    return hits


def _distinct_and_same_pairs(
    labels: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per row of labels (-1 = empty slot): number of distinct labels and of equal-label pairs."""
    s = np.sort(labels, axis=1)
    valid = s >= 0
    if s.shape[1] == 0:
        zeros = np.zeros(s.shape[0], dtype=np.int64)
        return zeros, zeros
    start = np.ones_like(valid)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    distinct = (start & valid).sum(axis=1).astype(np.int64)
    # position within its run of equal labels = number of earlier equal labels = pairs it closes
    idx = np.broadcast_to(np.arange(s.shape[1]), s.shape)
    run_start = np.maximum.accumulate(np.where(start, idx, 0), axis=1)
    same = np.where(valid, idx - run_start, 0).sum(axis=1).astype(np.int64)
    return distinct, same


def per_student(
    recs: npt.NDArray[np.integer], relevant: sp.csr_matrix, k: int, items: ItemStats | None = None
) -> dict[str, Float64Array]:
    """Per-student metric values at cut-off k (NaN where a value is undefined, e.g. diversity of a
    list shorter than 2, novelty of an empty list).

    Args:
        recs: (n, >= k) recommended lecture rows, best first, -1 padded.
        relevant: (n, n_lectures) relevant lectures per student (at least one each).
        k: the cut-off.
        items: lecture statistics for novelty and diversity (None: those metrics are left out).

    Returns:
        Metric name -> (n,) float64.

    Raises:
        ValueError: k larger than the lists, or a student without relevant lectures.
    """
    recs = np.asarray(recs, dtype=np.int64)
    if k < 1 or recs.ndim != 2 or recs.shape[1] < k:
        raise ValueError(f"need lists of at least k={k} columns, got shape {recs.shape}")
    recs = recs[:, :k]
    rel = sp.csr_matrix(relevant, copy=True)
    rel.eliminate_zeros()
    n_rel = np.diff(rel.indptr).astype(np.int64)
    if (n_rel == 0).any():
        bad = int(np.flatnonzero(n_rel == 0)[0])
        raise ValueError(f"student row {bad} has no relevant lecture; leave such students out")
    hits = hit_matrix(recs, rel)
    n_hits = hits.sum(axis=1).astype(np.float64)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    dcg = (hits * discount).sum(axis=1)
    ideal = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    precision_at = np.cumsum(hits, axis=1) / ranks
    ap = (precision_at * hits).sum(axis=1) / np.minimum(n_rel, k)
    first = np.argmax(hits, axis=1)
    any_hit = hits.any(axis=1)
    out: dict[str, Float64Array] = {
        "precision": n_hits / k,
        "recall": n_hits / n_rel,
        "ndcg": dcg / ideal,
        "map": ap,
        "mrr": np.asarray(np.where(any_hit, 1.0 / (first + 1.0), 0.0), dtype=np.float64),
        "hit_rate": np.asarray(any_hit, dtype=np.float64),
    }
    if items is not None:
        valid = recs >= 0
        length = valid.sum(axis=1).astype(np.float64)
        info = np.where(valid, items.information[np.where(valid, recs, 0)], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["novelty"] = np.where(length > 0, info.sum(axis=1) / length, np.nan)
            labels = np.where(valid, items.subject[np.where(valid, recs, 0)].astype(np.int64), -1)
            distinct, same = _distinct_and_same_pairs(labels)
            out["subject_diversity"] = np.where(length > 0, distinct / length, np.nan)
            pairs = length * (length - 1) / 2.0
            out["intra_list_diversity"] = np.asarray(
                np.where(pairs > 0, 1.0 - same / pairs, np.nan), dtype=np.float64
            )
    return out


def coverage(recs: npt.NDArray[np.integer], k: int, n_candidates: int) -> float:
    """Distinct lectures in the top-k lists / lectures that could be recommended.

    Args:
        recs: (n, >= k) recommended rows, -1 padded.
        k: the cut-off.
        n_candidates: coverage denominator (>= 1).

    Returns:
        Coverage in [0, 1].
    """
    top = np.asarray(recs)[:, :k]
    distinct = np.unique(top[top >= 0]).size
    return float(distinct / max(int(n_candidates), 1))


def summarise(
    values: Mapping[str, Float64Array],
    recs: npt.NDArray[np.integer],
    k: int,
    n_candidates: int,
    rows: npt.NDArray[np.bool_] | None = None,
) -> dict[str, float]:
    """Mean of each per-student metric (undefined values left out) plus coverage, keyed ``name_at_k``.

    Args:
        values: output of `per_student`.
        recs: the recommendations the values came from.
        k: the cut-off.
        n_candidates: coverage denominator.
        rows: optional (n,) selection of students (a region, a grade).

    Returns:
        Metric key -> value; a metric undefined for every selected student is 0.0.
    """
    out: dict[str, float] = {}
    recs = np.asarray(recs)
    if rows is not None:
        recs = recs[rows]
    for name in METRICS:
        if name == "coverage":
            out[metric_key(name, k)] = coverage(recs, k, n_candidates)
            continue
        if name not in values:
            continue
        v = values[name] if rows is None else values[name][rows]
        defined = v[~np.isnan(v)]
        out[metric_key(name, k)] = float(defined.mean()) if defined.size else 0.0
    return out


def grouped(
    values: Mapping[str, Float64Array],
    recs: npt.NDArray[np.integer],
    k: int,
    n_candidates: int,
    labels: npt.NDArray[np.object_] | list[str],
) -> dict[str, dict[str, float]]:
    """`summarise` per group label (region, grade), groups in sorted order.

    Args:
        values: output of `per_student`.
        recs: the recommendations.
        k: the cut-off.
        n_candidates: coverage denominator.
        labels: (n,) group label per student.

    Returns:
        Label -> metric key -> value.
    """
    labels_arr = np.array([str(x) for x in labels], dtype=object)
    return {
        g: summarise(values, recs, k, n_candidates, labels_arr == g) for g in sorted(set(labels_arr.tolist()))
    }
