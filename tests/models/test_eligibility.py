"""Eligibility rules and top-k selection (shared with the service)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.base import Catalogue, IdMap
from models.eligibility import EligibilityIndex, eligible_mask, top_k, top_k_one


def catalogue() -> Catalogue:
    # lectures: 0 everywhere, 1 seoul only, 2 gimpo only, 3 everywhere but inactive, 4 everywhere m1 only
    regions = IdMap(("gimpo", "seoul", "*"))
    licensed = np.array(
        [
            [1, 0, 1, 1, 1],  # gimpo
            [1, 1, 0, 1, 1],  # seoul
            [1, 0, 0, 1, 1],  # * = licensed everywhere
        ],
        dtype=bool,
    )
    grades = IdMap(("m1", "h1"))
    suits = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=bool)
    n = 5
    return Catalogue(
        lectures=IdMap(tuple(f"l{i}" for i in range(n))),
        regions=regions,
        grades=grades,
        licensed=licensed,
        suits=suits,
        active=np.array([1, 1, 1, 0, 1], dtype=bool),
        series=np.arange(n, dtype=np.int32),
        series_position=np.ones(n, dtype=np.int32),
        subject=np.zeros(n, dtype=np.int32),
        subjects=("수학",),
        features=sp.csr_matrix((n, 0), dtype=np.float32),
        feature_names=(),
    )


def history(rows: list[list[int]], n: int = 5) -> sp.csr_matrix:
    h = np.zeros((len(rows), n), dtype=np.float32)
    for i, taken in enumerate(rows):
        h[i, taken] = 0.25
    return sp.csr_matrix(h)


def test_eligible_mask_rules():
    cat = catalogue()
    region = np.array([1, 0, -1, 1], dtype=np.int32)  # seoul, gimpo, unknown, seoul
    grade = np.array([1, 0, 0, -1], dtype=np.int32)  # h1, m1, m1, unknown
    mask = eligible_mask(cat, region, grade, history([[0], [], [], []]))
    expected = np.array(
        [
            [0, 1, 0, 0, 0],  # seoul h1 took l0: l1 only (l4 is m1 only, l3 inactive)
            [1, 0, 1, 0, 1],  # gimpo m1
            [1, 0, 0, 0, 1],  # unknown region: only lectures licensed everywhere
            [1, 1, 0, 0, 1],  # unknown grade: any grade
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(mask, expected)


def test_explicit_zero_history_does_not_count():
    cat = catalogue()
    h = sp.csr_matrix((np.array([0.0], np.float32), (np.array([0]), np.array([1]))), shape=(1, 5))
    assert h.nnz == 1
    mask = eligible_mask(cat, np.array([1], np.int32), np.array([1], np.int32), h)
    assert mask[0, 1]


def test_index_matches_function_and_reuses_buffer():
    cat = catalogue()
    index = EligibilityIndex(cat)
    out = np.empty(5, dtype=bool)
    for region in (-1, 0, 1):
        for grade in (-1, 0, 1):
            want = eligible_mask(
                cat, np.array([region], np.int32), np.array([grade], np.int32), history([[2]])
            )[0]
            got = index.mask_one(region, grade, np.array([2], np.int32), out=out)
            assert got is out
            np.testing.assert_array_equal(got, want)
    batch = index.mask(np.array([1, -1], np.int32), np.array([-1, 0], np.int32), history([[0], [4]]))
    np.testing.assert_array_equal(
        batch,
        eligible_mask(cat, np.array([1, -1], np.int32), np.array([-1, 0], np.int32), history([[0], [4]])),
    )


def test_out_of_range_codes_are_refused():
    cat = catalogue()
    with pytest.raises(ValueError, match="region"):
        eligible_mask(cat, np.array([5], np.int32), np.array([0], np.int32), history([[]]))
    with pytest.raises(ValueError, match="out of range"):
        EligibilityIndex(cat).mask_one(0, 7, np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="history"):
        eligible_mask(cat, np.array([0], np.int32), np.array([0], np.int32), history([[]], n=4))


def test_top_k_orders_pads_and_breaks_ties_by_row():
    scores = np.array([[0.1, 0.9, 0.5, 0.5, 0.7], [3.0, 2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    mask = np.array([[1, 0, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=bool)
    rows, best = top_k(scores, mask, 3)
    np.testing.assert_array_equal(rows, [[4, 2, 3], [2, -1, -1]])
    np.testing.assert_array_equal(best[0], np.array([0.7, 0.5, 0.5], np.float32))
    assert best[1, 0] == 1.0 and np.isneginf(best[1, 1:]).all()
    assert rows.dtype == np.int32 and best.dtype == np.float32


def test_top_k_longer_than_catalogue():
    rows, _ = top_k(np.array([[1.0, 2.0]], np.float32), np.ones((1, 2), bool), 4)
    np.testing.assert_array_equal(rows, [[1, 0, -1, -1]])
    r1, b1 = top_k_one(np.array([1.0, 2.0], np.float32), np.array([True, False]), 1)
    assert r1.tolist() == [0] and b1.tolist() == [1.0]
    with pytest.raises(ValueError, match="k must be"):
        top_k(np.zeros((1, 2), np.float32), np.ones((1, 2), bool), 0)


def test_top_k_one_lists_ties_at_the_boundary_by_row():
    """The request path's top-k: every lecture tied with the k-th best competes, the lowest rows win."""
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1, 0.5], np.float32)
    mask = np.array([True, True, False, True, True, True])
    rows, best = top_k_one(scores, mask, 3)
    assert rows.tolist() == [1, 0, 3] and best.tolist() == scores[[1, 0, 3]].tolist()
    rng = np.random.default_rng(3)
    for _ in range(50):
        s = rng.integers(0, 5, 40).astype(np.float32)
        m = rng.random(40) > 0.3
        r, b = top_k_one(s, m, 7)
        expected = sorted(np.flatnonzero(m).tolist(), key=lambda i: (-s[i], i))[:7]
        assert r[: len(expected)].tolist() == expected
        assert (r[len(expected) :] == -1).all() and np.isneginf(b[len(expected) :]).all()
