"""EASE: the closed-form linear item-item model (Steck 2019, "Embarrassingly Shallow Autoencoders").

A lecture's score for a student is a weighted sum over the lectures the student took, ``history @ B``,
where B (lectures x lectures, zero diagonal) is the ridge regression of every lecture's column on all
the others:

    P = (XᵀX + λI)⁻¹,    B = I - P · diag(1 / diag(P)),    diag(B) = 0

with X the binary student x lecture matrix. One matrix inverse, no epochs, no sampling: the strong
simple baseline of current recommender benchmarks. λ (`regularisation`) is the one hyper-parameter,
chosen on validation by `learnrec train`.

Cost: B is dense. Only lectures with interactions take part (the others get no weight and rank after
every scored lecture), so the matrix is n_active²: float64 up to `FLOAT64_MAX_LECTURES` lectures
(0.8 GB at 10,000), float32 beyond (1.6 GB at 20,000); the inverse runs in place (Cholesky, LAPACK
potrf/potri) so the fit holds about one such matrix plus the result. A student without history gets
the lectures by popularity (share of students who took them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Recommender, StudentBatch, TrainingData
from models.common import check_batch, check_finite, normalise_max
from models.errors import ModelFormatError, NotFittedError, NumericalError
from models.serialization import instantiate, read_model

#: Largest number of active lectures solved in float64; beyond, float32 halves the memory.
FLOAT64_MAX_LECTURES = 10_000
#: Rows of the inverse mirrored at once (bounds the temporary copy of the triangle fill).
_BLOCK = 2048


def ease_weights(gram: npt.NDArray[np.floating[Any]], regularisation: float) -> npt.NDArray[np.float32]:
    """The EASE weight matrix B from the Gram matrix XᵀX, overwriting `gram`.

    Args:
        gram: (n, n) symmetric XᵀX, float32 or float64, C-contiguous; destroyed.
        regularisation: λ > 0 added to the diagonal.

    Returns:
        (n, n) float32 B with a zero diagonal.

    Raises:
        NumericalError: the regularised Gram matrix is not positive definite (λ too small for the
            precision) or the result is not finite.
    """
    from scipy.linalg import lapack

    n = gram.shape[0]
    gram[np.diag_indices(n)] += regularisation
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (gram,))
    # Fortran order of the transpose is the same memory as C order: LAPACK's "upper" is our lower
    factor, info = potrf(gram.T, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise NumericalError(f"ease: XᵀX + {regularisation}·I is not positive definite (info {info})")
    inverse, info = potri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise NumericalError(f"ease: inverting XᵀX + {regularisation}·I failed (info {info})")
    p = inverse.T  # C-ordered again; its valid triangle is the lower one (row >= column)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        # mirror the lower triangle into the upper one, a block of columns at a time
        p[:start, start:stop] = p[start:stop, :start].T
        block = p[start:stop, start:stop]
        block[...] = np.tril(block) + np.tril(block, -1).T
    diag = np.diag(p).copy()
    if not np.all(np.isfinite(diag)) or np.any(diag <= 0):
        raise NumericalError("ease: the inverse has a non-positive diagonal; raise the regularisation")
    p /= -diag[None, :]
    p[np.diag_indices(n)] = 0.0
    # float32 already: keep LAPACK's buffer (Fortran order serves `history @ B` as well), no second copy
    out: npt.NDArray[np.float32] = p if p.dtype == np.float32 else p.astype(np.float32)
    check_finite("ease", out)
    return out


def _gram(x: sp.csr_matrix, dtype: type[np.floating[Any]]) -> npt.NDArray[np.floating[Any]]:
    """Dense XᵀX, a block of columns at a time: the sparse product of a whole catalogue can hold more
    entries (and int64 indices) than the dense result."""
    m = x.shape[1]
    columns = sp.csc_matrix(x)
    xt = sp.csr_matrix(x.T)
    gram = np.empty((m, m), dtype=dtype)
    for start in range(0, m, _BLOCK):
        stop = min(start + _BLOCK, m)
        gram[:, start:stop] = (xt @ columns[:, start:stop]).toarray()
    return gram


class EASERecommender(Recommender):
    """EASE closed-form item-item model on the binary interactions.

    Args:
        seed: accepted for a uniform constructor; the model is deterministic.
        regularisation: λ, the L2 penalty (larger = smoother weights; chosen on validation).
    """

    name: ClassVar[str] = "ease"

    def __init__(self, *, seed: int = 42, regularisation: float = 300.0) -> None:
        if not (np.isfinite(regularisation) and regularisation > 0):
            raise ValueError(f"regularisation must be a positive number, got {regularisation}")
        self.seed = seed
        self.regularisation = float(regularisation)
        self._weights: npt.NDArray[np.float32] | None = None
        self._active: npt.NDArray[np.int32] = np.zeros(0, np.int32)
        self._popularity: npt.NDArray[np.float32] = np.zeros(0, np.float32)

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "regularisation": self.regularisation}

    def fit(self, data: TrainingData) -> Self:
        x = sp.csr_matrix(data.interactions, dtype=np.float32)
        x.data = (x.data > 0).astype(np.float32)
        x.eliminate_zeros()
        counts = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        active = np.flatnonzero(counts > 0).astype(np.int32)
        xa = sp.csr_matrix(x[:, active])
        dtype = np.float64 if active.size <= FLOAT64_MAX_LECTURES else np.float32
        gram = _gram(xa, dtype)
        self._weights = ease_weights(gram, self.regularisation)
        self._active = active
        self._popularity = normalise_max(counts.astype(np.float32))
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        return self

    def _fitted(self) -> npt.NDArray[np.float32]:
        _ = self.catalogue
        if self._weights is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(data) or load(path) first")
        return self._weights

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        weights = self._fitted()
        check_batch(self.catalogue, len(self.student_feature_names), batch)
        history = sp.csr_matrix(batch.history, dtype=np.float32)
        taken = history[:, self._active]
        taken.data = (taken.data != 0).astype(np.float32)
        taken.eliminate_zeros()
        learned = np.asarray(taken @ weights, dtype=np.float32)
        b, n = len(batch), len(self.catalogue.lectures)
        # lectures nobody took in training have no weights: they rank after every scored lecture
        floor = learned.min(axis=1, keepdims=True) - 1.0 if learned.size else np.zeros((b, 1), np.float32)
        scores = np.repeat(floor.astype(np.float32), n, axis=1)
        scores[:, self._active] = learned
        # a student with no history has nothing to regress on: the most taken lectures first
        cold = np.diff(taken.indptr) == 0
        if cold.any():
            scores[cold] = self._popularity[None, :]
        check_finite(self.name, scores)
        return scores

    def save(self, directory: Path) -> None:
        weights = self._fitted()
        self._write(
            directory,
            arrays={"weights": weights, "active": self._active, "popularity": self._popularity},
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        saved = read_model(directory, cls.name)
        model = instantiate(cls, saved.params, directory)
        model._weights = saved.array("weights").astype(np.float32, copy=False)
        model._active = saved.array("active").astype(np.int32)
        model._popularity = saved.array("popularity").astype(np.float32)
        model._catalogue, model._students = saved.catalogue, saved.students
        model._student_feature_names = saved.student_feature_names
        n, m = len(saved.catalogue.lectures), model._active.size
        out_of_range = bool(m and model._active.max() >= n)
        if model._weights.shape != (m, m) or model._popularity.shape != (n,) or out_of_range:
            raise ModelFormatError(
                f"{directory}: ease arrays do not match the catalogue of {n} lectures "
                f"(weights {model._weights.shape}, {m} active lectures)"
            )
        check_finite(cls.name, model._weights)
        return model
