"""The one interface every recommender implements, and the data it is fitted on.

`models` knows nothing of files, Redis or HTTP: it takes matrices, sequences and id maps
(`TrainingData`, `StudentBatch`) and returns scores. Eligibility (never a lecture already taken, only
licensed and grade-suited lectures) is applied by `Recommender.recommend` through `models.eligibility`,
the same code the service uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.errors import NotFittedError


@dataclass(frozen=True)
class IdMap:
    """Bidirectional map between external string ids and dense row indices."""

    ids: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {x: i for i, x in enumerate(self.ids)})

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, key: str) -> int:
        """Row of `key`, or -1 when unknown."""
        return self.index.get(key, -1)


@dataclass(frozen=True)
class Catalogue:
    """What the recommender and the eligibility rules need to know about lectures, as arrays.

    Rows follow `lectures` (the lecture id map). Region and grade vocabularies index the licence
    and suitability matrices.
    """

    lectures: IdMap
    regions: IdMap  # vocabulary of region codes
    grades: IdMap  # vocabulary of grade codes
    licensed: npt.NDArray[np.bool_]  # (n_regions, n_lectures): licensed in region
    suits: npt.NDArray[np.bool_]  # (n_grades, n_lectures): suited to grade
    active: npt.NDArray[np.bool_]  # (n_lectures,)
    series: npt.NDArray[np.int32]  # (n_lectures,) series index
    series_position: npt.NDArray[np.int32]  # (n_lectures,) 1-based episode
    subject: npt.NDArray[np.int32]  # (n_lectures,) subject index into `subjects`
    subjects: tuple[str, ...]
    features: sp.csr_matrix  # (n_lectures, n_lecture_features) side features, identity NOT included
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class TrainingData:
    """Everything a recommender is fitted on; built by `features.matrices.build_training_data`."""

    students: IdMap
    catalogue: Catalogue
    #: (n_students, n_lectures) float32 implicit-feedback weight: complete > progress > enrol; drop lowers it.
    interactions: sp.csr_matrix
    #: (n_students, n_lectures) float32 days between the interaction and the end of the training window.
    age_days: sp.csr_matrix
    #: per student, lecture rows in the order first enrolled (oldest first).
    sequences: tuple[npt.NDArray[np.int32], ...]
    #: (n_students, n_student_features) side features (region, grade, profile), identity NOT included.
    student_features: sp.csr_matrix
    student_feature_names: tuple[str, ...]
    region: npt.NDArray[np.int32]  # (n_students,) index into catalogue.regions
    grade: npt.NDArray[np.int32]  # (n_students,) index into catalogue.grades
    #: (n_students, n_lectures) float32 days between the pair's FIRST event and the end of the training
    #: window (structure of `interactions`); None when not known (time hold-outs then use `age_days`).
    first_age_days: sp.csr_matrix | None = None

    def batch(self, rows: npt.NDArray[np.int32]) -> StudentBatch:
        """The training students at `rows`, with their full training history."""
        rows = np.asarray(rows, dtype=np.int32)
        return StudentBatch(
            index=rows,
            history=self.interactions[rows],
            recent=tuple(self.sequences[r] for r in rows),
            features=self.student_features[rows],
            region=self.region[rows],
            grade=self.grade[rows],
        )


@dataclass(frozen=True)
class StudentBatch:
    """A batch of students to score, known to the model or not.

    `index` is the row in the model's student map, -1 for a student the model never saw (scored from
    `features`, `history` and `recent`). `state` is the per-student vector a model exported with
    `Recommender.student_state` (as read back from the feature store); None = use the model's own.
    """

    index: npt.NDArray[np.int32]  # (b,)
    history: sp.csr_matrix  # (b, n_lectures) interactions known now (training + online events)
    recent: tuple[npt.NDArray[np.int32], ...]  # per student, lecture rows oldest first
    features: sp.csr_matrix  # (b, n_student_features)
    region: npt.NDArray[np.int32]  # (b,) index into catalogue.regions, -1 unknown
    grade: npt.NDArray[np.int32]  # (b,) index into catalogue.grades, -1 unknown
    state: npt.NDArray[np.float32] | None = None  # (b, state_width)

    def __len__(self) -> int:
        return int(self.index.shape[0])


class Recommender(ABC):
    """A lecture recommender: fit, score a batch of students against the catalogue, save, load."""

    #: registry name used by the CLI (`--model NAME`) and in MLflow params.
    name: ClassVar[str]

    _catalogue: Catalogue | None = None
    _students: IdMap | None = None
    _student_feature_names: tuple[str, ...] | None = None

    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(data) or load(path) first")
        return self._catalogue

    @property
    def students(self) -> IdMap:
        if self._students is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(data) or load(path) first")
        return self._students

    @property
    def student_feature_names(self) -> tuple[str, ...]:
        """Columns of `StudentBatch.features` the model expects (`TrainingData.student_feature_names`)."""
        if self._student_feature_names is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(data) or load(path) first")
        return self._student_feature_names

    def params(self) -> dict[str, Any]:
        """Hyper-parameters and seed as plain JSON values (logged to MLflow, saved with the model)."""
        return {}

    def is_fit_of(self, model: Recommender, data: TrainingData) -> bool:
        """Whether this fitted model is what fitting `model` (not fitted) on `data` gives: the same class
        and parameters, seed included, fitted on `data`'s id maps (fits are deterministic for a seed)."""
        return (
            type(self) is type(model)
            and self.params() == model.params()
            and self.catalogue is data.catalogue
            and self.students is data.students
        )

    @abstractmethod
    def fit(self, data: TrainingData) -> Self:
        """Learn from `data`; returns self."""

    @abstractmethod
    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        """Scores (len(batch), n_lectures), higher is better, finite; no eligibility applied."""

    def state_width(self) -> int:
        """Width of the per-student vector `student_state` exports (0 = the model keeps none)."""
        return 0

    def student_state(self, rows: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
        """Per-student vectors for the feature store, shape (len(rows), state_width())."""
        return np.zeros((len(rows), 0), dtype=np.float32)

    def recommend(self, batch: StudentBatch, k: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """Top-k eligible lecture rows and their scores per student, best first; -1 pads short lists."""
        from models.eligibility import eligible_mask, top_k

        scores = self.score(batch)
        mask = eligible_mask(self.catalogue, batch.region, batch.grade, batch.history)
        return top_k(scores, mask, k)

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the fitted model (arrays as .npy/.npz, parameters as JSON; no pickle) into `directory`."""

    def _write(
        self,
        directory: Path,
        arrays: dict[str, npt.NDArray[Any]],
        *,
        sparse: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """`models.serialization.write_model` with what every model saves (name, parameters, catalogue,
        student map, feature names); a model's `save` passes only its own state."""
        from models.serialization import write_model

        write_model(
            directory,
            model=self.name,
            params=self.params() if params is None else params,
            catalogue=self.catalogue,
            students=self.students,
            student_feature_names=self.student_feature_names,
            arrays=arrays,
            sparse=sparse or {},
            extra=extra or {},
        )

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by `save`."""
