"""Which lectures a student may be shown, and the top-k of scores among them (shared with the service).

A lecture is eligible for a student when it is active, licensed in the student's region, suited to the
student's grade and not already in the student's history (any nonzero entry: enrolled, in progress,
completed or dropped). A student of an unknown region (-1) sees only lectures licensed everywhere (the
"*" row of the region vocabulary); a student of an unknown grade sees lectures of any grade.

Everything here is numpy only (no pandas) and allocates at most one (b, n_lectures) array per call
beyond its result; `EligibilityIndex` precomputes the region x grade rules once for the request path.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Catalogue

#: The region code whose licence row lists lectures licensed everywhere.
ALL_REGIONS = "*"


def _everywhere(catalogue: Catalogue) -> npt.NDArray[np.bool_]:
    row = catalogue.regions.get(ALL_REGIONS)
    if row >= 0:
        licensed: npt.NDArray[np.bool_] = catalogue.licensed[row]
        return licensed
    # a catalogue built without the "*" row: licensed in every known region is the best we can say
    return np.asarray(catalogue.licensed.all(axis=0), dtype=np.bool_)


def _check_codes(codes: npt.NDArray[np.int32], size: int, what: str) -> None:
    if codes.size and (int(codes.max()) >= size or int(codes.min()) < -1):
        raise ValueError(f"{what} index out of range: expected -1 (unknown) or 0..{size - 1}")


class EligibilityIndex:
    """The static rules (active, licence, grade) for every region x grade, computed once per catalogue.

    Row `n_regions` stands for an unknown region and column `n_grades` for an unknown grade, so a
    request indexes with -1 directly. Memory: (n_regions + 1) x (n_grades + 1) x n_lectures bytes.

    Args:
        catalogue: the model's catalogue.
    """

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        n_regions, n_grades = len(catalogue.regions), len(catalogue.grades)
        licensed = np.concatenate([catalogue.licensed, _everywhere(catalogue)[None, :]], axis=0)
        suits = np.concatenate(
            [catalogue.suits, np.ones((1, catalogue.suits.shape[1]), dtype=np.bool_)], axis=0
        )
        # region and grade -1 wrap to the last row/column under numpy indexing
        self.static: npt.NDArray[np.bool_] = (
            licensed[:, None, :] & suits[None, :, :] & catalogue.active[None, None, :]
        )
        self.n_regions = n_regions
        self.n_grades = n_grades

    def mask_one(
        self,
        region: int,
        grade: int,
        history: npt.NDArray[np.int32] | npt.NDArray[np.int64],
        out: npt.NDArray[np.bool_] | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Eligibility of one student, shape (n_lectures,).

        Args:
            region: region index, -1 unknown.
            grade: grade index, -1 unknown.
            history: lecture rows the student already has (any order, duplicates fine).
            out: optional preallocated bool array to fill (avoids an allocation per request).

        Returns:
            The mask (`out` when given).
        """
        if not -1 <= region < self.n_regions or not -1 <= grade < self.n_grades:
            raise ValueError(f"region {region} or grade {grade} out of range for this catalogue")
        base = self.static[region, grade]
        if out is None:
            out = base.copy()
        else:
            np.copyto(out, base)
        if len(history):
            out[history] = False
        return out

    def mask(
        self, region: npt.NDArray[np.int32], grade: npt.NDArray[np.int32], history: sp.csr_matrix
    ) -> npt.NDArray[np.bool_]:
        """Eligibility of a batch, shape (b, n_lectures); see `eligible_mask`."""
        region = np.asarray(region, dtype=np.int32)
        grade = np.asarray(grade, dtype=np.int32)
        _check_codes(region, self.n_regions, "region")
        _check_codes(grade, self.n_grades, "grade")
        out: npt.NDArray[np.bool_] = self.static[region, grade]
        _remove_history(out, history)
        return out


def _remove_history(mask: npt.NDArray[np.bool_], history: sp.csr_matrix) -> None:
    history = sp.csr_matrix(history)
    if history.shape != mask.shape:
        raise ValueError(f"history has shape {history.shape}, expected {mask.shape} (students x lectures)")
    rows = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
    taken = history.data != 0
    mask[rows[taken], history.indices[taken]] = False


def eligible_mask(
    catalogue: Catalogue,
    region: npt.NDArray[np.int32],
    grade: npt.NDArray[np.int32],
    history: sp.csr_matrix,
) -> npt.NDArray[np.bool_]:
    """Which lectures each student may be recommended.

    Args:
        catalogue: the lecture catalogue.
        region: (b,) region index per student, -1 unknown (then only lectures licensed everywhere).
        grade: (b,) grade index per student, -1 unknown (then any grade).
        history: (b, n_lectures) interactions; any nonzero entry makes the lecture ineligible.

    Returns:
        Bool array (b, n_lectures).
    """
    region = np.asarray(region, dtype=np.int32)
    grade = np.asarray(grade, dtype=np.int32)
    _check_codes(region, len(catalogue.regions), "region")
    _check_codes(grade, len(catalogue.grades), "grade")
    licensed = catalogue.licensed
    if (region < 0).any():
        licensed = np.concatenate([licensed, _everywhere(catalogue)[None, :]], axis=0)
    mask: npt.NDArray[np.bool_] = licensed[np.where(region < 0, licensed.shape[0] - 1, region)]
    known_grade = grade >= 0
    if known_grade.all():
        mask &= catalogue.suits[grade]
    elif known_grade.any():
        mask[known_grade] &= catalogue.suits[grade[known_grade]]
    mask &= catalogue.active[None, :]
    _remove_history(mask, history)
    return mask


def top_k(
    scores: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], k: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """The k best eligible lectures per row, best first; equal scores are listed by lecture row.

    Args:
        scores: (b, n) scores, higher is better.
        mask: (b, n) eligibility.
        k: list length (>= 1).

    Returns:
        (rows int32 (b, k), scores float32 (b, k)); short lists are padded with row -1 and score -inf.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores)
    if scores.shape != mask.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and mask {mask.shape} must both be (students, lectures)")
    # one ordering rule for the request path and a batch: each row is the single-student top-k
    rows = np.full((scores.shape[0], k), -1, dtype=np.int32)
    best = np.full((scores.shape[0], k), -np.inf, dtype=np.float32)
    for i in range(scores.shape[0]):
        rows[i], best[i] = top_k_one(scores[i], mask[i], k)
    return rows, best


def top_k_one(
    scores: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_], k: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """`top_k` for a single student: 1-D scores and mask of shape (n,), results of shape (k,).

    The one implementation of the order (`top_k` runs it per row). It sorts only the eligible lectures
    scoring at least the k-th best (every tie at the boundary included), so equal scores are listed by
    lecture row exactly, whatever the partition picked.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scores.shape != mask.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and mask {mask.shape} must both be (lectures,)")
    cand = np.flatnonzero(mask)
    values = scores[cand].astype(np.float32, copy=False)
    if cand.size > k:
        kth = np.partition(values, cand.size - k)[cand.size - k]
        keep = values >= kth
        cand, values = cand[keep], values[keep]
    order = np.lexsort((cand, -values))[:k]
    picked, best = cand[order], values[order]
    finite = np.isfinite(best)
    rows = np.full(k, -1, dtype=np.int32)
    out = np.full(k, -np.inf, dtype=np.float32)
    n = int(finite.sum())
    rows[:n] = picked[finite]
    out[:n] = best[finite]
    return rows, out
