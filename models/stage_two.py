"""The request's rules over a few rows, compiled: the series slots, the merge of a candidate list with
the followers of lectures taken since it was built, and the pick from the list.

Why: a computed answer runs these on every request (`models.ranking.RankingModel.rank`), over a
student's ~20 history rows and a stored list of ~100 candidates. In Python with numpy they were about
25 numpy calls and the loops between them: a rank took ~47 µs in a warm loop, ~30 µs with these compiled
(numba, `nogil`; ~1.5 to 4 µs a call); for a student who enrolled since the list was built (the merge
runs), ~100 µs before and ~70 µs after. Each function reads only what it is given and allocates only its
result.

One source: each is plain Python over numpy arrays and scalars, which numba compiles; `.py_func` is the
same code run by the interpreter. `tests/models/test_stage_two.py` holds the compiled functions equal to
it and to the Python and numpy code they replaced (kept there as the reference), and the served lists
equal to the full ranking's (`top_k_one` over the whole eligibility mask). ``NUMBA_DISABLE_JIT=1`` runs
the interpreter everywhere (for a debugger). Each function is built for one signature when this module is
imported and cached beside it (``__pycache__``): the first process after an install compiles them (about
five seconds), later ones load them (about half a second), and a request never compiles.

Eligibility here is the rule of `models.eligibility` read row by row: a lecture may be listed when the
student's region and grade allow it (`allowed`: the static rules' row for them, no copy), it is not in
the history, it is of the requested subject (`subject`: empty for any) and it is not already a series slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from numba import njit, types

#: The `subject` argument meaning any subject (empty, read-only).
ANY_SUBJECT: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
ANY_SUBJECT.setflags(write=False)

# One signature per function, compiled when this module is imported (or loaded from the cache): a
# writable array passes where a read-only one is declared, so every caller shares the one build, no
# request compiles, and an argument of another dtype or layout is a TypeError rather than a new build.
_I32 = types.Array(types.int32, 1, "C", readonly=True)
_U32 = types.Array(types.uint32, 1, "C", readonly=True)
_F32 = types.Array(types.float32, 1, "C", readonly=True)
_BOOL = types.Array(types.boolean, 1, "C", readonly=True)
_I32_2D = types.Array(types.int32, 2, "C", readonly=True)
_F32_2D = types.Array(types.float32, 2, "C", readonly=True)
_ROWS = types.int32[::1]
_MERGED = types.Tuple((_ROWS, types.float32[::1]))  # type: ignore[no-untyped-call]
_ANSWER = types.Tuple((_ROWS, types.float32[::1], types.boolean[::1], types.boolean))  # type: ignore[no-untyped-call]


_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(signature: Any) -> Callable[[_F], _F]:
    """numba's `njit` for one signature, cached beside this file, releasing the GIL (typed as the Python
    function it compiles)."""
    return njit(signature, cache=True, nogil=True)  # type: ignore[no-any-return]


@_compiled(types.boolean(_I32, types.int64, types.int64))
def _has(values: npt.NDArray[np.int32], value: int, n: int) -> bool:
    """Whether `value` is among the first `n` of `values` (a few rows: a scan beats a set)."""
    for i in range(n):
        if values[i] == value:
            return True
    return False


@_compiled(_ROWS(_I32, _I32, _F32, _BOOL, _BOOL, _I32, _I32, _BOOL, types.int64, types.int64, types.float64))
def series_slots(
    recent: npt.NDArray[np.int32],
    hist_rows: npt.NDArray[np.int32],
    hist_weights: npt.NDArray[np.float32],
    allowed: npt.NDArray[np.bool_],
    subject: npt.NDArray[np.bool_],
    series: npt.NDArray[np.int32],
    next_row: npt.NDArray[np.int32],
    active: npt.NDArray[np.bool_],
    limit: int,
    lookback: int,
    dropped_at_most: float,
) -> npt.NDArray[np.int32]:
    """The next episodes of the series the student was last in, most recent first (at most `limit`).

    For each of the last `lookback` lectures of `recent` (newest first, one per series): unless the
    student dropped it (history weight at most `dropped_at_most`), the series' first later episode that is
    active and not in the history, when the student may be shown it.

    Args:
        recent: lecture rows in the order the student enrolled (oldest first).
        hist_rows: the history's rows; `hist_weights` their weights (a row absent counts 1).
        allowed: the region and grade's static eligibility per lecture row.
        subject: the requested subject's rows (empty: any subject).
        series: series code per lecture row; `next_row` the next episode's row (-1: last); `active`.
        limit: most slots.
        lookback: recent lectures looked at.
        dropped_at_most: a history weight at or below this means dropped.

    Returns:
        The slots' lecture rows (int32).
    """
    out = np.empty(max(limit, 0), dtype=np.int32)
    n_out = 0
    n_hist = hist_rows.size
    seen = np.empty(min(lookback, recent.size), dtype=np.int32)
    n_seen = 0
    i = recent.size - 1
    while i >= 0 and recent.size - 1 - i < lookback and n_out < limit:
        r = recent[i]
        i -= 1
        s = series[r]
        if _has(seen, s, n_seen):
            continue
        seen[n_seen] = s
        n_seen += 1
        weight = 1.0
        for j in range(n_hist):  # the last entry of a row counts, as in a dict built from the pairs
            if hist_rows[j] == r:
                weight = hist_weights[j]
        if weight <= dropped_at_most:
            continue
        nxt = next_row[r]
        # skip episodes already taken or retired; the loop is bounded by the series length
        while nxt >= 0 and (_has(hist_rows, nxt, n_hist) or not active[nxt]):
            nxt = next_row[nxt]
        if nxt < 0 or not allowed[nxt] or (subject.size > 0 and not subject[nxt]):
            continue
        if not _has(out, nxt, n_out):
            out[n_out] = nxt
            n_out += 1
    return out[:n_out]


@_compiled(types.boolean[::1](_I32, _I32, _I32, _I32))
def beyond_history(
    rows: npt.NDArray[np.int32],
    hist_rows: npt.NDArray[np.int32],
    series: npt.NDArray[np.int32],
    position: npt.NDArray[np.int32],
) -> npt.NDArray[np.bool_]:
    """Per row, whether it lies beyond every episode the student took of its series (one taken at least):
    the reason "next in series" of a row the model chose."""
    out = np.empty(rows.size, dtype=np.bool_)
    for j in range(rows.size):
        r = rows[j]
        furthest = 0
        for h in range(hist_rows.size):
            taken = hist_rows[h]
            if series[taken] == series[r] and position[taken] > furthest:
                furthest = position[taken]
        out[j] = furthest > 0 and position[r] > furthest
    return out


@_compiled(_ANSWER(_I32, _F32, types.boolean, _BOOL, _BOOL, _I32, _I32, types.int64, _I32, _I32))
def pick(
    rows: npt.NDArray[np.int32],
    scores: npt.NDArray[np.float32],
    complete: bool,
    allowed: npt.NDArray[np.bool_],
    subject: npt.NDArray[np.bool_],
    hist_rows: npt.NDArray[np.int32],
    slots: npt.NDArray[np.int32],
    k: int,
    series: npt.NDArray[np.int32],
    position: npt.NDArray[np.int32],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.bool_], bool]:
    """A model's answer from its candidate list: the series slots, then the best eligible candidates.

    Args:
        rows: the candidates' lecture rows, best first; `scores` their scores.
        complete: the list holds every lecture that was eligible when it was built.
        allowed: the region and grade's static eligibility; `subject` the subject's rows (empty: any).
        hist_rows: the student's history rows (never listed).
        slots: the series slots (`series_slots`), listed first.
        k: list length.
        series: series code per lecture row; `position` the 1-based episode.

    Returns:
        (rows, scores, follows, exhausted): the answer's rows (slots first) and scores (a slot's is its
        candidate score, else the list's best); per row, whether it continues a series (a slot always
        does, a chosen row when `beyond_history`); exhausted: fewer than `k` rows without
        the list being complete (the full ranking must answer instead; the other results are then empty).
    """
    n_slots = slots.size
    n_hist = hist_rows.size
    rest = max(k - n_slots, 0)
    chosen = np.empty(rest, dtype=np.int64)
    n = 0
    for i in range(rows.size):
        if n >= rest:
            break
        r = rows[i]
        if not allowed[r] or (subject.size > 0 and not subject[r]):
            continue
        if _has(hist_rows, r, n_hist) or _has(slots, r, n_slots):
            continue
        chosen[n] = i
        n += 1
    if k - n_slots > 0 and n < rest and not complete:
        return np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.bool_), True
    size = n_slots + n
    out_rows = np.empty(size, dtype=np.int32)
    out_scores = np.empty(size, dtype=np.float32)
    best = scores[0] if rows.size > 0 else np.float32(0.0)
    for j in range(n_slots):
        r = slots[j]
        out_rows[j] = r
        out_scores[j] = best
        for i in range(rows.size):
            if rows[i] == r:
                out_scores[j] = scores[i]
                break
    for j in range(n):
        out_rows[n_slots + j] = rows[chosen[j]]
        out_scores[n_slots + j] = scores[chosen[j]]
    follows = np.ones(size, dtype=np.bool_)
    follows[n_slots:] = beyond_history(out_rows[n_slots:], hist_rows, series, position)
    return out_rows, out_scores, follows, False


@_compiled(_MERGED(_I32, _F32, _I32_2D, _F32_2D, _I32))
def merge_followers(
    rows: npt.NDArray[np.int32],
    scores: npt.NDArray[np.float32],
    follower_rows: npt.NDArray[np.int32],
    follower_scores: npt.NDArray[np.float32],
    taken: npt.NDArray[np.int32],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """A candidate list merged with the follower lists of lectures `taken` since it was built
    (`models.candidates.fuse` says the rule), best first: score descending, then row.

    Args:
        rows: the candidates, best first; `scores` theirs.
        follower_rows: (n_lectures, followers) rows per lecture, best first, -1 padding;
            `follower_scores` theirs.
        taken: the lectures whose followers are merged.

    Returns:
        (rows, merged scores).
    """
    size = rows.size
    lengths = np.zeros(taken.size, dtype=np.int64)
    for t in range(taken.size):
        length = 0
        while length < follower_rows.shape[1] and follower_rows[taken[t], length] >= 0:
            length += 1
        lengths[t] = length
        size += length
    listed = np.empty(size, dtype=np.int32)
    listed[: rows.size] = rows
    at = rows.size
    for t in range(taken.size):
        listed[at : at + lengths[t]] = follower_rows[taken[t], : lengths[t]]
        at += lengths[t]
    listed.sort()  # the distinct rows, ascending (numba's np.unique builds Python-style lists)
    n = 0
    for i in range(listed.size):
        if i == 0 or listed[i] != listed[n - 1]:
            listed[n] = listed[i]
            n += 1
    union = listed[:n]
    # each list adds its score, or its last one (the most it can have scored there) when it lacks a row:
    # list by list, in float32, in the order the numpy version added them
    total = np.zeros(union.size, dtype=np.float32)
    part = np.empty(union.size, dtype=np.float32)
    part[:] = scores[-1] if scores.size else np.float32(0.0)
    part[np.searchsorted(union, rows)] = scores
    total += part
    for t in range(taken.size):
        length = lengths[t]
        if length == 0:
            continue
        part[:] = follower_scores[taken[t], length - 1]
        part[np.searchsorted(union, follower_rows[taken[t], :length])] = follower_scores[taken[t], :length]
        total += part
    order = np.argsort(-total, kind="mergesort")  # stable: equal scores stay in row order
    return union[order], total[order]


@_compiled(types.boolean(_U32, types.int64, types.int64, types.int64))
def rows_within(body: npt.NDArray[np.uint32], n: int, b: int, limit: int) -> bool:
    """Whether the `n` rows at the start of a stored list's body and the `b` basis rows at its end are
    all below `limit` (read unsigned, a negative row is larger than any catalogue): the bound check of
    `models.candidates.Candidates.from_bytes`, one call where two numpy reductions cost three times it."""
    for i in range(n):
        if body[i] >= limit:
            return False
    for i in range(body.size - b, body.size):
        if body[i] >= limit:
            return False
    return True
