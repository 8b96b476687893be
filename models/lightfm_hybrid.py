"""LightFM hybrid factorisation: students and lectures are sums of identity and side-feature embeddings.

Each student is represented by their own (identity) embedding plus the embeddings of their side features
(region, grade, school level, target exam, interests ...); each lecture likewise (subject, provider,
level, grade band, series). Rows are weighted so the identity part and the feature part each count
1 / (1 + feature_weight) and feature_weight / (1 + feature_weight); a student or lecture without
interactions has its identity embedding set to zero after fitting, so it is scored from its features
alone, which is also how a student the model never saw is scored.

The model's arrays after fit are plain numpy (LightFM is only imported to fit):

* item matrix (no_components + 1, n_lectures): item embeddings transposed plus a row of ones, so that
  ``scores = state @ item_matrix + item_bias`` is one matrix product;
* student state (n_students, no_components + 1): embedding sum and bias, what the feature store holds.

Plain logs (issue 12): LightFM multiplies a sample weight into its step size, so the interaction weights
are scaled to mean 1 over the positive pairs (an enrol-only log, where every pair weighs 0.25, then trains
exactly like the binary matrix); side features constant over all rows (a derived `region=unknown`, one
provider) say nothing about anyone and are dropped before fitting, so they do not take a share of every
representation, nor do columns held by a single row (a lecture that is its own series repeats its
identity). `informative_columns` decides which; the kept columns travel with the model.

Determinism: LightFM's Hogwild updates are only reproducible on one thread, so a seeded model always
trains with num_threads=1 (`num_threads` applies only when seed is None).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Recommender, StudentBatch, TrainingData
from models.common import check_batch, check_finite
from models.errors import ModelFormatError, NotFittedError, NumericalError
from models.serialization import instantiate, read_model

LOSSES = ("warp", "bpr", "warp-kos")
#: The parameters that make this model LightFM used directly: `LightFM(loss="warp",
#: learning_rate=0.05)` with its other defaults (10 components, no regularisation, 10 negatives),
#: fitted 10 epochs on the binary matrix with identity features only. The floor of model selection:
#: with these and the same seed the scores are LightFM's own (tests/training/test_quality_bench.py).
LIBRARY_PARAMS: dict[str, Any] = {
    "no_components": 10,
    "loss": "warp",
    "epochs": 10,
    "learning_rate": 0.05,
    "item_alpha": 0.0,
    "user_alpha": 0.0,
    "max_sampled": 10,
    "feature_weight": 0.0,
    "use_weights": False,
}


def informative_columns(features: sp.csr_matrix) -> npt.NDArray[np.bool_]:
    """Columns of `features` that tell rows apart: not equal in every row, and held by two rows or more.

    A column equal in every row (a derived `region=unknown`) carries nothing; one held by a single row
    (a lecture that is its own series) only repeats that row's identity feature.

    Args:
        features: (rows, columns) side features.

    Returns:
        (columns,) mask, True = keep.
    """
    f = sp.csc_matrix(features, dtype=np.float32)
    n_rows = f.shape[0]
    if n_rows == 0:
        return np.zeros(f.shape[1], dtype=np.bool_)
    stored = np.diff(f.indptr)
    lo = np.full(f.shape[1], np.inf, dtype=np.float64)
    hi = np.full(f.shape[1], -np.inf, dtype=np.float64)
    nonempty = stored > 0
    if nonempty.any():
        cols = np.repeat(np.arange(f.shape[1]), stored)
        np.minimum.at(lo, cols, f.data)
        np.maximum.at(hi, cols, f.data)
    # a column with unstored (zero) cells also takes the value 0
    partial = stored < n_rows
    lo = np.where(partial, np.minimum(lo, 0.0), lo)
    hi = np.where(partial, np.maximum(hi, 0.0), hi)
    out: npt.NDArray[np.bool_] = (hi > lo) & (np.diff(sp.csc_matrix(f != 0).indptr) >= 2)
    return out


def _weighted_features(
    features: sp.csr_matrix, feature_weight: float, keep: npt.NDArray[np.bool_] | None = None
) -> tuple[sp.csr_matrix, npt.NDArray[np.float32]]:
    """Feature part scaled to sum feature_weight / (1 + feature_weight) per row, and identity weights.

    Columns outside `keep` (None = all) are zeroed first. Rows without any feature keep identity weight 1.
    """
    f = sp.csr_matrix(features, dtype=np.float32, copy=True)
    if keep is not None and not keep.all():
        f = sp.csr_matrix(f @ sp.diags(keep.astype(np.float32)), dtype=np.float32)
        f.eliminate_zeros()
    totals = np.asarray(f.sum(axis=1), dtype=np.float32).ravel()
    has = totals > 0
    share = np.float32(feature_weight / (1.0 + feature_weight))
    scale = np.where(has, share / np.where(has, totals, 1.0), 0.0).astype(np.float32)
    f = sp.csr_matrix(sp.diags(scale) @ f, dtype=np.float32)
    identity = np.where(has, np.float32(1.0 / (1.0 + feature_weight)), np.float32(1.0)).astype(np.float32)
    return f, identity


def _with_identity(
    features: sp.csr_matrix, feature_weight: float, keep: npt.NDArray[np.bool_]
) -> sp.csr_matrix:
    """Identity columns, then only the kept feature columns: what LightFM is fitted on.

    A dropped column passed as zeros would still get an embedding and shift LightFM's random
    initialisation, so with no column kept the model would not be LightFM's identity-only model.
    """
    f, identity = _weighted_features(features, feature_weight, keep)
    kept = sp.csr_matrix(f[:, np.flatnonzero(keep)], dtype=np.float32)
    return sp.csr_matrix(sp.hstack([sp.diags(identity, format="csr"), kept], format="csr"), dtype=np.float32)


def _feature_state(
    emb: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], n_identity: int, keep: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float32]:
    """(all feature columns, components + 1): the kept columns' embeddings and biases, zero elsewhere."""
    out = np.zeros((keep.size, emb.shape[1] + 1), dtype=np.float32)
    out[keep, :-1] = emb[n_identity:]
    out[keep, -1] = bias[n_identity:]
    return out


class LightFMRecommender(Recommender):
    """LightFM hybrid model (WARP by default) with student and lecture side features.

    Args:
        seed: random seed; when set, training uses one thread so results are reproducible.
        no_components: embedding size.
        loss: "warp" (default), "bpr" or "warp-kos".
        epochs: passes over the interactions.
        learning_rate: adagrad learning rate.
        item_alpha: L2 penalty on lecture feature embeddings.
        user_alpha: L2 penalty on student feature embeddings.
        max_sampled: WARP negative samples per positive before giving up.
        feature_weight: weight of the side features relative to the identity feature (0 = pure
            collaborative filtering; cold-start students then get only biases).
        use_weights: pass the interaction weights as sample weights, scaled to mean 1 so they shape the
            steps without shrinking them (ignored for warp-kos, which does not support them).
        drop_constant_features: drop side-feature columns equal over all students (lectures), which
            carry no information.
        num_threads: training threads when seed is None.
    """

    name: ClassVar[str] = "lightfm"

    def __init__(
        self,
        *,
        seed: int | None = 42,
        no_components: int = 32,
        loss: str = "warp",
        epochs: int = 10,
        learning_rate: float = 0.05,
        item_alpha: float = 1e-6,
        user_alpha: float = 1e-6,
        max_sampled: int = 10,
        feature_weight: float = 1.0,
        use_weights: bool = True,
        drop_constant_features: bool = True,
        num_threads: int = 1,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got '{loss}'")
        if no_components < 1 or epochs < 1 or num_threads < 1 or max_sampled < 1:
            raise ValueError("no_components, epochs, max_sampled and num_threads must be >= 1")
        if feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {feature_weight}")
        self.seed = seed
        self.no_components = no_components
        self.loss = loss
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.item_alpha = item_alpha
        self.user_alpha = user_alpha
        self.max_sampled = max_sampled
        self.feature_weight = feature_weight
        self.use_weights = use_weights
        self.drop_constant_features = drop_constant_features
        self.num_threads = num_threads
        self._student_keep: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)
        self._item_keep: npt.NDArray[np.bool_] = np.zeros(0, np.bool_)
        self._item_matrix: npt.NDArray[np.float32] | None = None
        self._item_bias: npt.NDArray[np.float32] = np.zeros(0, np.float32)
        self._user_state: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._user_feature_state: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._item_feature_state: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)

    def params(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "no_components": self.no_components,
            "loss": self.loss,
            "epochs": self.epochs,
            "learning_rate": self.learning_rate,
            "item_alpha": self.item_alpha,
            "user_alpha": self.user_alpha,
            "max_sampled": self.max_sampled,
            "feature_weight": self.feature_weight,
            "use_weights": self.use_weights,
            "drop_constant_features": self.drop_constant_features,
            "num_threads": self.num_threads,
        }

    def _threads(self) -> int:
        return 1 if self.seed is not None else self.num_threads

    def fit(self, data: TrainingData) -> Self:
        from lightfm import LightFM

        n_students, n_lectures = data.interactions.shape
        inter = sp.coo_matrix(data.interactions, dtype=np.float32)
        positive = inter.data > 0
        rows, cols, weights = inter.row[positive], inter.col[positive], inter.data[positive]
        ones = sp.coo_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=inter.shape)
        sample_weight = None
        if self.use_weights and self.loss != "warp-kos" and weights.size:
            # LightFM multiplies the weight into the step: mean 1 keeps the relative weights, not a
            # smaller learning rate (an enrol-only log weighs 0.25 everywhere)
            scaled = (weights / np.float32(weights.mean())).astype(np.float32)
            sample_weight = sp.coo_matrix((scaled, (rows, cols)), shape=inter.shape)
        if self.feature_weight == 0:
            # pure collaborative filtering: features weigh nothing, so none is fitted (LightFM's own
            # identity-only model, the reference learnrec must not fall below)
            self._student_keep = np.zeros(data.student_features.shape[1], dtype=np.bool_)
            self._item_keep = np.zeros(data.catalogue.features.shape[1], dtype=np.bool_)
        elif self.drop_constant_features:
            self._student_keep = informative_columns(data.student_features)
            self._item_keep = informative_columns(data.catalogue.features)
        else:
            self._student_keep = np.ones(data.student_features.shape[1], dtype=np.bool_)
            self._item_keep = np.ones(data.catalogue.features.shape[1], dtype=np.bool_)
        user_features = _with_identity(data.student_features, self.feature_weight, self._student_keep)
        item_features = _with_identity(data.catalogue.features, self.feature_weight, self._item_keep)
        model = LightFM(
            no_components=self.no_components,
            loss=self.loss,
            learning_rate=self.learning_rate,
            item_alpha=self.item_alpha,
            user_alpha=self.user_alpha,
            max_sampled=self.max_sampled,
            random_state=np.random.RandomState(self.seed),
        )
        try:
            model.fit(
                ones,
                user_features=user_features,
                item_features=item_features,
                sample_weight=sample_weight,
                epochs=self.epochs,
                num_threads=self._threads(),
            )
        except ValueError as exc:
            if "finite" in str(exc):
                raise NumericalError(f"lightfm diverged: {exc}") from exc
            raise
        user_emb = np.asarray(model.user_embeddings, dtype=np.float32)
        user_bias = np.asarray(model.user_biases, dtype=np.float32)
        item_emb = np.asarray(model.item_embeddings, dtype=np.float32)
        item_bias = np.asarray(model.item_biases, dtype=np.float32)
        check_finite(self.name, user_emb, user_bias, item_emb, item_bias)
        # identity embeddings never updated (no interactions) hold random init noise: zero them so
        # such students and lectures are scored from their features alone, like unseen ones
        idle_users = np.flatnonzero(np.bincount(rows, minlength=n_students) == 0)
        idle_items = np.flatnonzero(np.bincount(cols, minlength=n_lectures) == 0)
        user_emb[idle_users] = 0.0
        user_bias[idle_users] = 0.0
        item_emb[idle_items] = 0.0
        item_bias[idle_items] = 0.0

        user_state = np.empty((n_students, self.no_components + 1), dtype=np.float32)
        user_state[:, :-1] = user_features @ user_emb
        user_state[:, -1] = user_features @ user_bias
        item_rep = np.asarray(item_features @ item_emb, dtype=np.float32)
        self._item_matrix = np.ascontiguousarray(
            np.vstack([item_rep.T, np.ones((1, n_lectures), dtype=np.float32)]), dtype=np.float32
        )
        self._item_bias = np.asarray(item_features @ item_bias, dtype=np.float32)
        self._user_state = user_state
        self._user_feature_state = _feature_state(user_emb, user_bias, n_students, self._student_keep)
        self._item_feature_state = _feature_state(item_emb, item_bias, n_lectures, self._item_keep)
        check_finite(self.name, self._item_matrix, self._item_bias, self._user_state)
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        return self

    def _fitted(self) -> npt.NDArray[np.float32]:
        _ = self.catalogue
        if self._item_matrix is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(data) or load(path) first")
        return self._item_matrix

    def state_width(self) -> int:
        return self.no_components + 1

    def student_state(self, rows: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
        self._fitted()
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self._user_state.shape[0]):
            raise IndexError(f"student rows must be in 0..{self._user_state.shape[0] - 1}")
        out: npt.NDArray[np.float32] = self._user_state[rows]
        return out

    def feature_state(self, features: sp.csr_matrix) -> npt.NDArray[np.float32]:
        """States of students the model never saw, from their side features alone.

        Args:
            features: (b, n_student_features) in the model's `student_feature_names` columns.

        Returns:
            (b, state_width()) float32.
        """
        self._fitted()
        f, _ = _weighted_features(features, self.feature_weight, self._student_keep)
        out: npt.NDArray[np.float32] = np.asarray(f @ self._user_feature_state, dtype=np.float32)
        return out

    def lecture_representation(
        self, features: sp.csr_matrix
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Embeddings and biases of lectures from their side features alone (e.g. a new lecture).

        Args:
            features: (m, n_lecture_features) in the catalogue's `feature_names` columns.

        Returns:
            (embeddings (m, no_components), biases (m,)).
        """
        self._fitted()
        f, _ = _weighted_features(features, self.feature_weight, self._item_keep)
        rep = np.asarray(f @ self._item_feature_state, dtype=np.float32)
        return np.ascontiguousarray(rep[:, :-1]), np.ascontiguousarray(rep[:, -1])

    def score_state(self, state: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Scores from student states (b, state_width()) or one state (state_width(),): one matmul."""
        item_matrix = self._fitted()
        out: npt.NDArray[np.float32] = state @ item_matrix
        out += self._item_bias
        return out

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        self._fitted()
        check_batch(self.catalogue, len(self.student_feature_names), batch)
        width = self.state_width()
        if batch.state is not None:
            state = np.asarray(batch.state, dtype=np.float32)
            if state.shape != (len(batch), width):
                raise ValueError(f"batch.state has shape {state.shape}, expected ({len(batch)}, {width})")
        else:
            index = np.asarray(batch.index, dtype=np.int64)
            if index.size and index.max() >= self._user_state.shape[0]:
                raise ValueError(
                    f"batch.index holds rows beyond the {self._user_state.shape[0]} known students"
                )
            state = np.empty((len(batch), width), dtype=np.float32)
            known = index >= 0
            state[known] = self._user_state[index[known]]
            if not known.all():
                state[~known] = self.feature_state(sp.csr_matrix(batch.features)[np.flatnonzero(~known)])
        scores = self.score_state(state)
        check_finite(self.name, scores)
        return scores

    def save(self, directory: Path) -> None:
        item_matrix = self._fitted()
        self._write(
            directory,
            arrays={
                "item_matrix": item_matrix,
                "item_bias": self._item_bias,
                "user_state": self._user_state,
                "user_feature_state": self._user_feature_state,
                "item_feature_state": self._item_feature_state,
                "student_keep": self._student_keep,
                "item_keep": self._item_keep,
            },
        )

    @classmethod
    def load(cls, directory: Path) -> Self:
        saved = read_model(directory, cls.name)
        model = instantiate(cls, saved.params, directory)
        model._item_matrix = np.ascontiguousarray(saved.array("item_matrix"), dtype=np.float32)
        model._item_bias = saved.array("item_bias").astype(np.float32)
        model._user_state = saved.array("user_state").astype(np.float32)
        model._user_feature_state = saved.array("user_feature_state").astype(np.float32)
        model._item_feature_state = saved.array("item_feature_state").astype(np.float32)
        model._student_keep = saved.array("student_keep").astype(np.bool_)
        model._item_keep = saved.array("item_keep").astype(np.bool_)
        model._catalogue, model._students = saved.catalogue, saved.students
        model._student_feature_names = saved.student_feature_names
        width, n = model.state_width(), len(saved.catalogue.lectures)
        expected = {
            "item_matrix": (width, n),
            "item_bias": (n,),
            "user_state": (len(saved.students), width),
            "user_feature_state": (len(saved.student_feature_names), width),
            "item_feature_state": (len(saved.catalogue.feature_names), width),
            "student_keep": (len(saved.student_feature_names),),
            "item_keep": (len(saved.catalogue.feature_names),),
        }
        for name, shape in expected.items():
            got = getattr(model, f"_{name}").shape
            if got != shape:
                raise ModelFormatError(f"{directory}: '{name}' has shape {got}, expected {shape}")
        check_finite(cls.name, model._item_matrix, model._user_state)
        return model
