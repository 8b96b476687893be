"""The compiled request rules (`models.stage_two`): the same answers as their interpreted source, and, through
`RankingModel.rank`, the same lists as the full ranking (`top_k_one` over the whole eligibility mask)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.online_state import StudentRecord
from models.interactions import DROPPED_AT_MOST
from models.ranking import SERIES_LOOKBACK, RankingModel
from models.stage_two import ANY_SUBJECT, beyond_history, merge_followers, pick, rows_within, series_slots
from tests.models.test_ranking import _record


def _catalogue(rng: np.random.Generator, n: int) -> tuple[npt.NDArray[np.int32], ...]:
    """Series of 1 to 4 episodes over `n` rows: series code, 1-based position, next row, active."""
    series = np.zeros(n, np.int32)
    position = np.ones(n, np.int32)
    next_row = np.full(n, -1, np.int32)
    row, code = 0, 0
    while row < n:
        length = min(int(rng.integers(1, 5)), n - row)
        series[row : row + length] = code
        position[row : row + length] = np.arange(1, length + 1)
        next_row[row : row + length - 1] = np.arange(row + 1, row + length)
        row, code = row + length, code + 1
    return series, position, next_row, rng.random(n) < 0.9


def _slots_reference(recent, hist_rows, weights, allowed, subject, series, next_row, active, limit):
    """The series rule as the ranking wrote it in Python before it was compiled (dict and sets)."""
    weight = dict(zip(hist_rows.tolist(), weights.tolist(), strict=True))
    mask = allowed & (subject if subject.size else True)
    seen: set[int] = set()
    out: list[int] = []
    for r in recent[::-1][:SERIES_LOOKBACK].tolist():
        if len(out) >= limit or series[r] in seen:
            continue
        seen.add(int(series[r]))
        if weight.get(r, 1.0) <= DROPPED_AT_MOST:
            continue
        nxt = int(next_row[r])
        while nxt >= 0 and (nxt in weight or not active[nxt]):
            nxt = int(next_row[nxt])
        if nxt >= 0 and mask[nxt] and nxt not in out:
            out.append(nxt)
    return out


def _pick_reference(rows, scores, complete, allowed, subject, hist_rows, slots, k, series, position):
    """The filter as the ranking wrote it with numpy before it was compiled: a whole-catalogue mask."""
    mask = allowed & (subject if subject.size else True)
    mask[hist_rows] = False
    mask[slots] = False
    rest = k - slots.size
    keep = mask[rows].nonzero()[0]
    if rest > 0 and keep.size < rest and not complete:
        return None
    chosen = rows[keep[: max(rest, 0)]].tolist()
    listed = rows.tolist()
    best = float(scores[0]) if listed else 0.0
    slot_scores = [float(scores[listed.index(r)]) if r in listed else best for r in slots.tolist()]
    furthest: dict[int, int] = {}
    for h in hist_rows.tolist():
        furthest[series[h]] = max(furthest.get(series[h], 0), int(position[h]))
    follows = [series[r] in furthest and position[r] > furthest[series[r]] for r in chosen]
    return (
        slots.tolist() + chosen,
        slot_scores + scores[keep[: max(rest, 0)]].tolist(),
        [True] * slots.size + follows,
    )


def _fuse_reference(rows, scores, follower_rows, follower_scores, taken):
    """The merge as `models.candidates.fuse` wrote it with numpy before it was compiled."""
    lists = [(rows, scores)]
    for r in taken:
        keep = follower_rows[r] >= 0
        if keep.any():
            lists.append((follower_rows[r][keep], follower_scores[r][keep]))
    union = np.unique(np.concatenate([rows for rows, _ in lists]))
    total = np.zeros(union.size, dtype=np.float32)
    for listed, listed_scores in lists:
        part = np.full(union.size, listed_scores[-1] if listed_scores.size else 0.0, dtype=np.float32)
        part[np.searchsorted(union, listed)] = listed_scores
        total += part
    order = np.lexsort((union, -total))
    return union[order].tolist(), total[order].tolist()


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), k=st.integers(1, 12))
def test_compiled_equals_interpreted(seed: int, n: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    series, position, next_row, active = _catalogue(rng, n)
    allowed = rng.random(n) < 0.8
    subject = rng.random(n) < 0.6 if rng.random() < 0.5 else ANY_SUBJECT
    hist_rows = rng.choice(n, size=int(rng.integers(0, n + 1)), replace=False).astype(np.int32)
    weights = rng.choice(np.array([0.1, 0.5, 1.0], np.float32), size=hist_rows.size)
    recent = rng.choice(n, size=int(rng.integers(0, 8)), replace=True).astype(np.int32)
    slots_args = (recent, hist_rows, weights, allowed, subject, series, next_row, active)
    for limit in (0, 1, 2):
        slots = series_slots(*slots_args, limit, SERIES_LOOKBACK, DROPPED_AT_MOST)
        assert (
            slots.tolist()
            == series_slots.py_func(*slots_args, limit, SERIES_LOOKBACK, DROPPED_AT_MOST).tolist()
        )
        assert slots.tolist() == _slots_reference(*slots_args, limit)
    rows = rng.permutation(n)[: int(rng.integers(0, n + 1))].astype(np.int32)
    scores = np.sort(rng.random(rows.size).astype(np.float32))[::-1].copy()
    for complete in (False, True):
        args = (rows, scores, complete, allowed, subject, hist_rows, slots, k, series, position)
        got, want = pick(*args), pick.py_func(*args)
        assert [a.tolist() for a in got[:3]] + [got[3]] == [a.tolist() for a in want[:3]] + [want[3]]
        reference = _pick_reference(*args)
        assert got[3] == (reference is None)
        if reference is not None:
            assert (got[0].tolist(), got[1].tolist(), got[2].tolist()) == reference
        if not got[3]:
            listed = got[0].tolist()
            assert listed[: slots.size] == slots.tolist()
            assert not set(listed) & set(hist_rows.tolist()) and len(set(listed)) == len(listed)
            assert all(allowed[r] and (subject.size == 0 or subject[r]) for r in listed[slots.size :])
    width = int(rng.integers(1, 6))
    follower_rows = np.full((n, width), -1, np.int32)
    follower_scores = np.full((n, width), -np.inf, np.float32)
    for r in range(n):
        length = int(rng.integers(0, min(width, n - 1) + 1))
        others = rng.permutation(np.delete(np.arange(n), r))[:length]
        follower_rows[r, :length] = others
        # coarse scores: ties between lists and within them
        follower_scores[r, :length] = np.sort(rng.integers(0, 4, length).astype(np.float32) / 4)[::-1]
    taken = rng.choice(n, size=int(rng.integers(0, min(n, 3) + 1)), replace=False).astype(np.int32)
    coarse = np.sort(rng.integers(0, 4, rows.size).astype(np.float32) / 4)[::-1].copy()
    for listed_scores in (scores, coarse):
        merged = merge_followers(rows, listed_scores, follower_rows, follower_scores, taken)
        assert (merged[0].tolist(), merged[1].tolist()) == _fuse_reference(
            rows, listed_scores, follower_rows, follower_scores, taken
        )
    assert beyond_history(rows, hist_rows, series, position).tolist() == (
        beyond_history.py_func(rows, hist_rows, series, position).tolist()
    )
    body = np.concatenate([rows, scores.view(np.int32), hist_rows]).astype(np.uint32)
    for limit in (0, n // 2, n):
        expected = bool((rows < limit).all() and (hist_rows < limit).all())
        assert rows_within(body, rows.size, hist_rows.size, limit) == expected
        assert rows_within.py_func(body, rows.size, hist_rows.size, limit) == expected


def _with_list(ranking: RankingModel, record: StudentRecord) -> StudentRecord:
    listed = ranking.candidates("s000", record)
    assert listed is not None
    return replace(record, state=listed.to_bytes())


def test_a_stored_list_filtered_online_equals_the_full_ranking(ranking: RankingModel) -> None:
    """The compiled filter and series rules against the whole-catalogue path they replace on the request:
    students with random histories (dropped lectures among them), random recent orders and subjects."""
    rng = np.random.default_rng(7)
    ids = list(ranking.catalogue.lectures.ids)
    compared = 0
    for _ in range(60):
        taken = rng.choice(len(ids), size=int(rng.integers(0, min(8, len(ids)))), replace=False)
        history = {ids[r]: float(rng.choice([0.1, 0.5, 1.0])) for r in taken}
        recent = tuple(ids[r] for r in rng.permutation(taken))
        region, grade = str(rng.choice(["seoul", "busan", "nowhere"])), str(rng.choice(["h1", "h2", "m3"]))
        record = _record(region=region, grade=grade, history=history, recent=recent)
        stored = _with_list(ranking, record)
        for subject in (None, *ranking.subjects):
            for k in (1, 3, 10):
                got = ranking.rank("s000", stored, k, subject=subject)
                plan = ranking._plan("s000", record, k, subject, None, False)
                full = ranking._score_plan(plan)
                assert not isinstance(full, str)
                want = ranking._finish(plan, full, k)
                assert got.rows == want.rows and got.reasons == want.reasons
                assert got.candidates in ("stored", "exhausted")
                compared += got.candidates == "stored"
    assert compared > 100  # most answers came from the list, not from the fallback to the full ranking


def test_each_rule_is_built_once_for_every_caller() -> None:
    """One signature per function, built at import: a writable array passes where a read-only one is
    declared (every caller shares the one build; no request compiles), another dtype is refused."""
    for kernel in (series_slots, pick, beyond_history, rows_within, merge_followers):
        assert len(kernel.signatures) == 1
    rows = np.array([0, 1], np.int32)
    frozen = rows.copy()
    frozen.setflags(write=False)
    series = np.zeros(2, np.int32)
    assert beyond_history(rows, frozen, series, series).tolist() == [False, False]
    with pytest.raises(TypeError):
        beyond_history(rows.astype(np.int64), frozen, series, series)
