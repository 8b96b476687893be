"""Ranking metrics against cases computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.metrics import (
    ItemStats,
    coverage,
    grouped,
    hit_matrix,
    per_student,
    self_information,
    summarise,
)

# two students, 10 lectures, k = 3
# student 0: list [0, 1, 2], relevant {1, 5}  -> hits [0, 1, 0]
# student 1: list [3, 4, -1] (short list), relevant {3} -> hits [1, 0, 0]
RECS = np.array([[0, 1, 2], [3, 4, -1]], dtype=np.int32)
RELEVANT = sp.csr_matrix(
    (np.ones(3, dtype=np.float32), ([0, 0, 1], [1, 5, 3])), shape=(2, 10), dtype=np.float32
)
# popularity among 8 training students: lecture 0 by 8, 1 by 4, 2 by 2, 3 by 1, the rest by nobody
COUNTS = np.array([8, 4, 2, 1, 0, 0, 0, 0, 0, 0])
SUBJECTS = np.array([0, 0, 1, 2, 2, 3, 3, 3, 3, 3], dtype=np.int32)


def _items() -> ItemStats:
    return ItemStats(information=self_information(COUNTS, 8), subject=SUBJECTS, n_candidates=10)


def test_self_information_by_hand() -> None:
    # -log2(8/8)=0, -log2(4/8)=1, -log2(2/8)=2, -log2(1/8)=3, nobody -> as if one student: 3
    assert self_information(COUNTS, 8)[:5].tolist() == [0.0, 1.0, 2.0, 3.0, 3.0]


def test_hit_matrix_ignores_padding() -> None:
    assert hit_matrix(RECS, RELEVANT).tolist() == [[False, True, False], [True, False, False]]


def test_per_student_values_by_hand() -> None:
    v = per_student(RECS, RELEVANT, 3, _items())
    log3 = math.log2(3)
    # precision: 1 hit of 3 slots each (the padded slot is a miss)
    assert v["precision"].tolist() == pytest.approx([1 / 3, 1 / 3])
    # recall: 1 of 2 relevant, 1 of 1
    assert v["recall"].tolist() == pytest.approx([0.5, 1.0])
    # NDCG: student 0 DCG = 1/log2(3) = 0.6309, ideal = 1 + 1/log2(3) = 1.6309 -> 0.386853
    assert v["ndcg"][0] == pytest.approx((1 / log3) / (1 + 1 / log3))
    assert v["ndcg"][0] == pytest.approx(0.386853, abs=1e-6)
    assert v["ndcg"][1] == pytest.approx(1.0)
    # AP: student 0 precision@2 = 1/2, divided by min(2, 3) = 2 -> 0.25; student 1: 1/1 -> 1
    assert v["map"].tolist() == pytest.approx([0.25, 1.0])
    # first hit at rank 2 and rank 1
    assert v["mrr"].tolist() == pytest.approx([0.5, 1.0])
    assert v["hit_rate"].tolist() == [1.0, 1.0]
    # novelty: (0 + 1 + 2) / 3 = 1; (3 + 3) / 2 = 3 (the padded slot is not part of the list)
    assert v["novelty"].tolist() == pytest.approx([1.0, 3.0])
    # subjects: [0, 0, 1] -> 2 distinct / 3; [2, 2] -> 1 / 2
    assert v["subject_diversity"].tolist() == pytest.approx([2 / 3, 0.5])
    # pairs of different subject: (0,1) same, (0,2) and (1,2) differ -> 2/3; (3,4) same -> 0
    assert v["intra_list_diversity"].tolist() == pytest.approx([2 / 3, 0.0])


def test_summary_means_and_coverage_by_hand() -> None:
    v = per_student(RECS, RELEVANT, 3, _items())
    s = summarise(v, RECS, 3, 10)
    assert s["precision_at_3"] == pytest.approx(1 / 3)
    assert s["recall_at_3"] == pytest.approx(0.75)
    assert s["ndcg_at_3"] == pytest.approx((0.386853 + 1.0) / 2, abs=1e-6)
    assert s["map_at_3"] == pytest.approx(0.625)
    assert s["mrr_at_3"] == pytest.approx(0.75)
    assert s["hit_rate_at_3"] == 1.0
    # recommended {0, 1, 2, 3, 4}: 5 of 10 lectures
    assert s["coverage_at_3"] == pytest.approx(0.5)
    assert s["novelty_at_3"] == pytest.approx(2.0)
    assert s["subject_diversity_at_3"] == pytest.approx(7 / 12)
    assert s["intra_list_diversity_at_3"] == pytest.approx(1 / 3)


def test_cut_off_one_by_hand() -> None:
    v = per_student(RECS, RELEVANT, 1, _items())
    s = summarise(v, RECS, 1, 10)
    # k=1: student 0 misses (lecture 0), student 1 hits (lecture 3)
    assert s["precision_at_1"] == pytest.approx(0.5)
    assert s["recall_at_1"] == pytest.approx(0.5)  # (0 + 1) / 2
    assert s["ndcg_at_1"] == pytest.approx(0.5)
    assert s["map_at_1"] == pytest.approx(0.5)  # AP divides by min(|rel|, 1) = 1
    assert s["coverage_at_1"] == pytest.approx(0.2)  # {0, 3}
    # intra-list diversity is undefined for one-item lists: no student counts -> 0.0
    assert s["intra_list_diversity_at_1"] == 0.0


def test_ndcg_perfect_and_zero() -> None:
    relevant = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float32))
    recs = np.array([[1, 0, 2], [0, 1, 2]])
    v = per_student(recs, relevant, 3)
    assert v["ndcg"].tolist() == pytest.approx([1.0, 0.0])
    assert v["mrr"].tolist() == [1.0, 0.0]
    assert "novelty" not in v


def test_grouped_by_label() -> None:
    v = per_student(RECS, RELEVANT, 3, _items())
    g = grouped(v, RECS, 3, 10, ["seoul", "taebaek"])
    assert list(g) == ["seoul", "taebaek"]
    assert g["seoul"]["recall_at_3"] == pytest.approx(0.5)
    assert g["taebaek"]["recall_at_3"] == pytest.approx(1.0)
    assert g["taebaek"]["coverage_at_3"] == pytest.approx(0.2)  # {3, 4}


def test_student_without_relevant_lecture_is_refused() -> None:
    relevant = sp.csr_matrix((2, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="no relevant lecture"):
        per_student(RECS, relevant, 3)


def test_coverage_counts_each_lecture_once() -> None:
    assert coverage(np.array([[1, 2], [2, 1], [-1, -1]]), 2, 4) == pytest.approx(0.5)
