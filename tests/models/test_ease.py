"""EASE against the textbook formula, in both precisions; LightFM's handling of plain logs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import models.ease as ease_module
from models.ease import EASERecommender, ease_weights
from models.errors import NumericalError
from models.lightfm_hybrid import informative_columns
from tests.models.data import Blocks


def _textbook(x: np.ndarray, lam: float) -> np.ndarray:
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ease_weights_match_the_closed_form(dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((300, 2500)) < 0.02).astype(np.float64)  # > one mirror block of 2048 rows
    gram = np.ascontiguousarray(x.T @ x, dtype=dtype)
    got = ease_weights(gram, 50.0)
    np.testing.assert_allclose(got, _textbook(x, 50.0), atol=1e-4 if dtype == np.float32 else 1e-6)
    assert got.dtype == np.float32 and (np.diag(got) == 0).all()


def test_ease_refuses_a_singular_system():
    with pytest.raises(NumericalError, match="positive definite"):
        ease_weights(-np.eye(3), 1e-9)


def test_ease_scores_are_history_times_weights(blocks: Blocks, monkeypatch):
    """Scores of students with history are history @ B over the lectures anyone took."""
    monkeypatch.setattr(ease_module, "FLOAT64_MAX_LECTURES", 0)  # the float32 path of large catalogues
    model = EASERecommender(regularisation=5.0).fit(blocks.data)
    x = (blocks.data.interactions.toarray() > 0).astype(np.float64)
    active = np.flatnonzero(x.sum(axis=0) > 0)
    b = _textbook(x[:, active], 5.0)
    rows = np.arange(len(blocks.data.students), dtype=np.int32)
    scores = model.score(blocks.data.batch(rows))
    with_history = x.sum(axis=1) > 0
    np.testing.assert_allclose(scores[with_history][:, active], (x[:, active] @ b)[with_history], atol=1e-4)


def test_constant_side_features_are_uninformative():
    """Issue 12: a derived region 'unknown' or a single provider is the same for every row."""
    f = sp.csr_matrix(
        np.array([[1, 0, 1, 0.5, 1], [1, 1, 1, 0.5, 0], [1, 1, 0, 0.5, 0]], dtype=np.float32)
    )  # constant, varying, varying, constant, held by one row only (a duplicate of the identity)
    np.testing.assert_array_equal(informative_columns(f), [False, True, True, False, False])
    assert informative_columns(sp.csr_matrix((0, 2), dtype=np.float32)).tolist() == [False, False]
