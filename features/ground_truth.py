"""The synthetic generator's hidden truth: student tastes, lecture traits and the appeal model both use.

`features.synth` draws every student's hidden taste (subject preferences, preferred level, provider
affinity, a latent vector, diligence, the goal exam) and every lecture's traits, and decides enrolments
and completions with the functions of this module. It saves those arrays under ``ground_truth/`` in the
dataset directory (``.npy`` files and ``meta.json``: no pickle), and `GroundTruth` computes from them
exactly what the generator computed, so an evaluation can rank by the true appeal (an oracle upper bound).

The model (all terms in utility units):

* **appeal** of lecture l to student i::

      subject  * taste[i, subject(l)]
    - level    * (level(l) - preferred_level[i])**2
    + provider_affinity[i, provider(l)]
    + quality(series(l))
    + latent[i] . latent(series(l))
    + track[goal(i), track(l)]
    - grade_mismatch * [grade(i) != primary_grade(l)]
    - position * log(series_position(l))

  The generator picks which series a student starts as a multinomial logit over these utilities
  (Gumbel-max over the eligible series, entry episode), then walks the series in order.
* **enrol probability** when the lecture is shown on its own: a binary logit against the student's
  outside option (the utility of doing something else, lower for more active students)::

      sigmoid(appeal - outside[i])

  which is the same multinomial logit with the outside option and a one-lecture choice set.
* **completion probability** once enrolled (the generator draws every completion from it)::

      sigmoid(complete_bias + complete_diligence * diligence[i]
              + complete_appeal * (appeal - outside[i])
              - complete_hard * max(level(l) - preferred_level[i], 0)
              - complete_duration * log(duration_min(l) / 30))

Eligibility (licence, grade, active) is not part of the appeal: callers apply it as for any model. The
appeal knows each student's taste but not their history: the generator also walks series in order
(after episode k mostly comes k + 1), so a ranking by appeal is the oracle of taste, and a model that
also follows a student's open series can beat it on next-lecture metrics.

Files: ``meta.json`` (model weights, vocabularies, id formats, sizes), ``students_<trait>.npy`` and
``lectures_<trait>.npy`` (one array per field of `StudentTraits` / `LectureTraits`, rows in table
order), and ``students_activity.npy`` ((n, 3) int32: first active day, end day, series the student would
start; days from the window start), which the generator saves for analysis.

Size: over 600 lines because one model that the generator, the oracle and the simulator must compute
identically, with its persistence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from features.errors import DatasetNotFoundError, GroundTruthError, SchemaError
from features.schemas import GRADES

#: Directory of the ground truth inside a dataset directory.
GROUND_TRUTH_DIR: Final = "ground_truth"
META_FILE: Final = "meta.json"
#: Bump when the files or the model change meaning; `GroundTruth.load` refuses other versions.
GROUND_TRUTH_VERSION: Final = 1
#: Subjects of the synthetic catalogue, in the order of the taste columns.
SUBJECTS: tuple[str, ...] = ("국어", "수학", "영어", "사회", "과학", "한국사", "정보", "제2외국어", "진로")
#: Share of each subject in the catalogue (국어/수학/영어 biggest).
SUBJECT_SHARES: tuple[float, ...] = (0.19, 0.25, 0.21, 0.10, 0.12, 0.05, 0.04, 0.02, 0.02)
#: Series tracks: concept courses, school-exam (내신) prep, college-entrance (수능) prep, 검정고시 prep.
TRACKS: tuple[str, ...] = ("개념", "내신", "수능", "검정고시")
#: A student's goal; the visible `target_exam` shows it (or null when the profile omits it).
EXAM_GOALS: tuple[str, ...] = ("수능", "내신", "검정고시", "none")
#: Width of the latent taste vectors (the collaborative part only interactions reveal).
LATENT_DIM: Final = 8

FloatArray = npt.NDArray[np.float32]
_BLOCK_CELLS: Final = 2_000_000
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ModelWeights:
    """Coefficients of the appeal and completion model (saved in `meta.json` with the data)."""

    subject: float = 1.0
    level: float = 0.6
    grade_mismatch: float = 0.4
    position: float = 0.3
    #: bonus of a series track (columns, `TRACKS`) for a student goal (rows, `EXAM_GOALS`).
    track: tuple[tuple[float, ...], ...] = (
        (0.0, -0.3, 0.9, -1.5),  # 수능
        (0.2, 0.9, -0.5, -1.5),  # 내신
        (0.0, -1.0, -0.5, 1.8),  # 검정고시
        (0.2, 0.0, -0.3, -0.8),  # none
    )
    complete_bias: float = -0.4
    complete_diligence: float = 1.0
    complete_appeal: float = 0.3
    complete_hard: float = 0.6
    complete_duration: float = 0.4

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        out = asdict(self)
        out["track"] = [list(row) for row in self.track]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelWeights:
        """The weights saved by `as_dict`.

        Args:
            values: the saved mapping.

        Returns:
            The weights.
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in values.items() if k in known}
        if "track" in kwargs:
            kwargs["track"] = tuple(tuple(float(x) for x in row) for row in kwargs["track"])
        return cls(**kwargs)


@dataclass(frozen=True)
class StudentTraits:
    """Hidden per-student taste, one row per student (rows follow the students table)."""

    taste: FloatArray  # (n, len(SUBJECTS)) subject preference (log scale)
    level: FloatArray  # (n,) preferred level in 1..3
    provider: FloatArray  # (n, n_providers) provider affinity
    latent: FloatArray  # (n, LATENT_DIM)
    diligence: FloatArray  # (n,) standardised diligence (logit scale)
    outside: FloatArray  # (n,) outside-option utility
    goal: npt.NDArray[np.int8]  # (n,) index into EXAM_GOALS
    grade: npt.NDArray[np.int8]  # (n,) index into GRADES

    def take(self, rows: npt.NDArray[np.integer[Any]]) -> StudentTraits:
        """The traits of the students at `rows` (in that order)."""
        return StudentTraits(**{f.name: np.asarray(getattr(self, f.name)[rows]) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.level.shape[0])


@dataclass(frozen=True)
class LectureTraits:
    """What the model uses of each lecture, one row per lecture (rows follow the lectures table)."""

    subject: npt.NDArray[np.int16]  # index into SUBJECTS
    level: npt.NDArray[np.int8]  # 1..3
    provider: npt.NDArray[np.int16]  # index into the provider vocabulary
    series: npt.NDArray[np.int32]  # series index
    position: npt.NDArray[np.int32]  # 1-based episode
    track: npt.NDArray[np.int8]  # index into TRACKS
    primary_grade: npt.NDArray[np.int8]  # index into GRADES
    duration: FloatArray  # minutes
    quality: FloatArray  # quality of the lecture's series
    latent: FloatArray  # (n, LATENT_DIM) latent vector of the lecture's series

    def take(self, rows: npt.NDArray[np.integer[Any]]) -> LectureTraits:
        """The traits of the lectures at `rows` (in that order)."""
        return LectureTraits(**{f.name: np.asarray(getattr(self, f.name)[rows]) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.level.shape[0])


# ----------------------------------------------------------------------------------------------------------
# the model (shared by the generator and GroundTruth)


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    return out


def appeal_matrix(
    students: StudentTraits, lectures: LectureTraits, weights: ModelWeights
) -> npt.NDArray[np.float64]:
    """True appeal of every lecture to every student.

    Args:
        students: the students (rows of the result).
        lectures: the lectures (columns of the result).
        weights: the model coefficients.

    Returns:
        (len(students), len(lectures)) float64 appeal.
    """
    f8 = np.float64
    out = weights.subject * students.taste.astype(f8)[:, lectures.subject]
    diff = lectures.level.astype(f8)[None, :] - students.level.astype(f8)[:, None]
    out -= weights.level * diff * diff
    out += students.provider.astype(f8)[:, lectures.provider]
    out += lectures.quality.astype(f8)[None, :]
    out += students.latent.astype(f8) @ lectures.latent.astype(f8).T
    track = np.asarray(weights.track, dtype=f8)
    out += track[students.goal][:, lectures.track]
    out -= weights.grade_mismatch * (students.grade[:, None] != lectures.primary_grade[None, :])
    out -= weights.position * np.log(lectures.position.astype(f8))[None, :]
    return out


def appeal_pairs(
    students: StudentTraits, lectures: LectureTraits, weights: ModelWeights
) -> npt.NDArray[np.float64]:
    """True appeal of lecture k to student k for aligned rows (the diagonal of `appeal_matrix`).

    Args:
        students: one row per pair.
        lectures: one row per pair, aligned with `students`.
        weights: the model coefficients.

    Returns:
        (n,) float64 appeal.
    """
    f8 = np.float64
    n = len(students)
    idx = np.arange(n)
    out = weights.subject * students.taste.astype(f8)[idx, lectures.subject]
    diff = lectures.level.astype(f8) - students.level.astype(f8)
    out -= weights.level * diff * diff
    out += students.provider.astype(f8)[idx, lectures.provider]
    out += lectures.quality.astype(f8)
    out += np.einsum("ij,ij->i", students.latent.astype(f8), lectures.latent.astype(f8))
    track = np.asarray(weights.track, dtype=f8)
    out += track[students.goal, lectures.track]
    out -= weights.grade_mismatch * (students.grade != lectures.primary_grade)
    out -= weights.position * np.log(lectures.position.astype(f8))
    return out


def enrol_from_appeal(appeal: npt.NDArray[np.float64], outside: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """P(enrol | shown) from appeal and the students' outside option (broadcast as `appeal - outside`)."""
    return _sigmoid(appeal - outside)


def complete_from_appeal(
    appeal: npt.NDArray[np.float64],
    students_diligence: npt.NDArray[Any],
    students_outside: npt.NDArray[Any],
    students_level: npt.NDArray[Any],
    lectures_level: npt.NDArray[Any],
    lectures_duration: npt.NDArray[Any],
    weights: ModelWeights,
) -> npt.NDArray[np.float64]:
    """P(complete | enrolled); student arrays and lecture arrays broadcast against `appeal`.

    Args:
        appeal: appeal of the pairs.
        students_diligence: standardised diligence, shaped to broadcast with `appeal`.
        students_outside: outside-option utility, shaped like `students_diligence`.
        students_level: preferred level, shaped like `students_diligence`.
        lectures_level: lecture level, shaped to broadcast with `appeal`.
        lectures_duration: lecture minutes, shaped like `lectures_level`.
        weights: the model coefficients.

    Returns:
        Completion probabilities shaped like `appeal`.
    """
    f8 = np.float64
    too_hard = np.maximum(lectures_level.astype(f8) - students_level.astype(f8), 0.0)
    logit = (
        weights.complete_bias
        + weights.complete_diligence * students_diligence.astype(f8)
        + weights.complete_appeal * (appeal - students_outside.astype(f8))
        - weights.complete_hard * too_hard
        - weights.complete_duration * np.log(lectures_duration.astype(f8) / 30.0)
    )
    return _sigmoid(logit)


# ----------------------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class IdFormat:
    """Ids of the form prefix + zero-padded 1-based row number (``s0000001``, ``lec00001``)."""

    prefix: str
    width: int

    def format(self, row: int) -> str:
        """The id of 0-based `row`."""
        return f"{self.prefix}{row + 1:0{self.width}d}"

    def rows(self, ids: Sequence[str], size: int, what: str) -> IntArray:
        """0-based rows of `ids`.

        Raises:
            GroundTruthError: an id is not of this form or beyond `size`.
        """
        pattern = re.compile(rf"{re.escape(self.prefix)}(\d{{{self.width},}})")
        out = np.empty(len(ids), dtype=np.int64)
        for k, value in enumerate(ids):
            m = pattern.fullmatch(value) if isinstance(value, str) else None
            row = int(m.group(1)) - 1 if m else -1
            if m is None or not 0 <= row < size or self.format(row) != value:
                raise GroundTruthError(
                    f"unknown {what} {value!r}: the ground truth knows {size} {what}s "
                    f"{self.format(0)}..{self.format(size - 1)}"
                )
            out[k] = row
        return out


STUDENT_ARRAYS: tuple[str, ...] = tuple(f.name for f in fields(StudentTraits))
LECTURE_ARRAYS: tuple[str, ...] = tuple(f.name for f in fields(LectureTraits))


def student_file(name: str) -> str:
    """File name of a student trait array."""
    return f"students_{name}.npy"


def lecture_file(name: str) -> str:
    """File name of a lecture trait array."""
    return f"lectures_{name}.npy"


@dataclass
class GroundTruthMeta:
    """Contents of `meta.json`: model, vocabularies, id formats and sizes."""

    weights: ModelWeights
    students: IdFormat
    lectures: IdFormat
    n_students: int
    n_lectures: int
    providers: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {
            "version": GROUND_TRUTH_VERSION,
            "model": self.weights.as_dict(),
            "student_ids": {"prefix": self.students.prefix, "width": self.students.width},
            "lecture_ids": {"prefix": self.lectures.prefix, "width": self.lectures.width},
            "n_students": self.n_students,
            "n_lectures": self.n_lectures,
            "subjects": list(SUBJECTS),
            "tracks": list(TRACKS),
            "goals": list(EXAM_GOALS),
            "grades": list(GRADES),
            "providers": list(self.providers),
            "latent_dim": LATENT_DIM,
            "student_arrays": {n: student_file(n) for n in STUDENT_ARRAYS},
            "lecture_arrays": {n: lecture_file(n) for n in LECTURE_ARRAYS},
            **self.extra,
        }


def write_meta(directory: Path, meta: GroundTruthMeta) -> None:
    """Write `meta.json` (UTF-8, Korean kept as is).

    Args:
        directory: the ground-truth directory.
        meta: what to write.
    """
    text = json.dumps(meta.as_dict(), ensure_ascii=False, indent=2)
    (directory / META_FILE).write_text(text + "\n", encoding="utf-8")


def write_lecture_traits(directory: Path, traits: LectureTraits) -> None:
    """Save the lecture traits as one `.npy` file per array.

    Args:
        directory: the ground-truth directory.
        traits: the lecture traits.
    """
    for name in LECTURE_ARRAYS:
        np.save(directory / lecture_file(name), np.ascontiguousarray(getattr(traits, name)))


class StudentTraitsWriter:
    """Writes the student trait arrays chunk by chunk into preallocated `.npy` files (bounded memory).

    Args:
        directory: the ground-truth directory.
        n_students: rows of every array.
        n_providers: columns of the provider-affinity array.
    """

    def __init__(self, directory: Path, n_students: int, n_providers: int) -> None:
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {
            "taste": ((n_students, len(SUBJECTS)), np.float32),
            "level": ((n_students,), np.float32),
            "provider": ((n_students, n_providers), np.float32),
            "latent": ((n_students, LATENT_DIM), np.float32),
            "diligence": ((n_students,), np.float32),
            "outside": ((n_students,), np.float32),
            "goal": ((n_students,), np.int8),
            "grade": ((n_students,), np.int8),
        }
        self._arrays: dict[str, np.memmap[Any, Any]] = {
            name: np.lib.format.open_memmap(
                directory / student_file(name), mode="w+", dtype=dtype, shape=shape
            )
            for name, (shape, dtype) in shapes.items()
        }

    def write(self, start: int, traits: StudentTraits) -> None:
        """Store the traits of the students at rows `start .. start + len(traits)`."""
        stop = start + len(traits)
        for name, array in self._arrays.items():
            array[start:stop] = getattr(traits, name)

    def close(self) -> None:
        """Flush the files to disk."""
        for array in self._arrays.values():
            array.flush()
        self._arrays.clear()


# ----------------------------------------------------------------------------------------------------------
# reading


class GroundTruth:
    """The true appeal, enrol and completion probabilities of a synthetic dataset, as the generator drew them.

    Arrays are memory-mapped, so loading the truth of a million students costs little memory; each call
    reads only the rows asked for.
    """

    def __init__(self, meta: GroundTruthMeta, students: StudentTraits, lectures: LectureTraits) -> None:
        self.meta = meta
        self.weights = meta.weights
        self.students = students
        self.lectures = lectures
        self._lecture_rows_cache: tuple[tuple[str, ...], IntArray] | None = None

    @classmethod
    def load(cls, dataset_dir: Path) -> GroundTruth:
        """Load the ground truth saved beside a synthetic dataset.

        Args:
            dataset_dir: the dataset directory (holding `ground_truth/`).

        Returns:
            The ground truth.

        Raises:
            DatasetNotFoundError: the dataset has no ground truth (not synthetic) or a file is missing.
            SchemaError: `meta.json` or an array is unreadable or inconsistent.
        """
        directory = Path(dataset_dir) / GROUND_TRUTH_DIR
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise DatasetNotFoundError(
                f"{dataset_dir} has no {GROUND_TRUTH_DIR}/{META_FILE}: only synthetic datasets "
                "(`learnrec data synth`) carry a ground truth"
            )
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
            version = raw["version"]
            meta = GroundTruthMeta(
                weights=ModelWeights.from_dict(raw["model"]),
                students=IdFormat(str(raw["student_ids"]["prefix"]), int(raw["student_ids"]["width"])),
                lectures=IdFormat(str(raw["lecture_ids"]["prefix"]), int(raw["lecture_ids"]["width"])),
                n_students=int(raw["n_students"]),
                n_lectures=int(raw["n_lectures"]),
                providers=tuple(raw["providers"]),
            )
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SchemaError(str(meta_path), "*", [], f"unreadable ground-truth metadata: {exc!r}") from exc
        if version != GROUND_TRUTH_VERSION:
            raise SchemaError(
                str(meta_path),
                "version",
                [],
                f"ground-truth version {version!r}, this code reads {GROUND_TRUTH_VERSION}: "
                "regenerate the dataset with `learnrec data synth`",
            )
        student_arrays = {n: _load_array(directory / student_file(n)) for n in STUDENT_ARRAYS}
        lecture_arrays = {n: _load_array(directory / lecture_file(n)) for n in LECTURE_ARRAYS}
        for arrays, size, what in (
            (student_arrays, meta.n_students, "student"),
            (lecture_arrays, meta.n_lectures, "lecture"),
        ):
            for name, array in arrays.items():
                if array.shape[0] != size:
                    raise SchemaError(
                        str(directory / (student_file(name) if what == "student" else lecture_file(name))),
                        name,
                        [],
                        f"{array.shape[0]} rows, expected {size} {what}s: regenerate the dataset",
                    )
        return cls(meta, StudentTraits(**student_arrays), LectureTraits(**lecture_arrays))

    @property
    def n_students(self) -> int:
        """Students known to the ground truth."""
        return self.meta.n_students

    @property
    def n_lectures(self) -> int:
        """Lectures known to the ground truth."""
        return self.meta.n_lectures

    def student_rows(self, student_ids: Sequence[str]) -> IntArray:
        """Rows of `student_ids` in the trait arrays.

        Raises:
            GroundTruthError: an id is not a student of this dataset.
        """
        return self.meta.students.rows(student_ids, self.n_students, "student")

    def lecture_rows(self, lecture_ids: Sequence[str]) -> IntArray:
        """Rows of `lecture_ids` in the trait arrays (the last answer is cached: callers repeat the list).

        Raises:
            GroundTruthError: an id is not a lecture of this dataset.
        """
        key = tuple(lecture_ids)
        cached = self._lecture_rows_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        rows = self.meta.lectures.rows(key, self.n_lectures, "lecture")
        self._lecture_rows_cache = (key, rows)
        return rows

    def _select(
        self, student_ids: Sequence[str], lecture_ids: Sequence[str]
    ) -> tuple[StudentTraits, LectureTraits]:
        s_rows = self.student_rows(student_ids)
        l_rows = self.lecture_rows(lecture_ids)
        return self.students.take(s_rows), self.lectures.take(l_rows)

    def appeal(self, student_ids: Sequence[str], lecture_ids: Sequence[str]) -> FloatArray:
        """True appeal: higher = more appealing (eligibility not applied).

        Args:
            student_ids: the students (rows).
            lecture_ids: the lectures (columns).

        Returns:
            (n_students, n_lectures) float32.

        Raises:
            GroundTruthError: an unknown student or lecture id.
        """
        return self._compute(student_ids, lecture_ids, "appeal")

    def enrol_probability(self, student_ids: Sequence[str], lecture_ids: Sequence[str]) -> FloatArray:
        """Probability that the student enrols when shown the lecture on its own, in [0, 1].

        Args:
            student_ids: the students (rows).
            lecture_ids: the lectures (columns).

        Returns:
            (n_students, n_lectures) float32.

        Raises:
            GroundTruthError: an unknown student or lecture id.
        """
        return self._compute(student_ids, lecture_ids, "enrol")

    def complete_probability(self, student_ids: Sequence[str], lecture_ids: Sequence[str]) -> FloatArray:
        """Probability that the student completes the lecture once enrolled, in [0, 1].

        Args:
            student_ids: the students (rows).
            lecture_ids: the lectures (columns).

        Returns:
            (n_students, n_lectures) float32.

        Raises:
            GroundTruthError: an unknown student or lecture id.
        """
        return self._compute(student_ids, lecture_ids, "complete")

    def pair_probabilities(
        self, student_rows: IntArray, lecture_rows: IntArray
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Enrol and completion probabilities of aligned (student, lecture) pairs, by ground-truth row.

        The diagonal of `enrol_probability` / `complete_probability`, computed pair by pair with the same
        functions (e.g. a simulated day's lists at once, not a students x lectures matrix).

        Args:
            student_rows: ground-truth rows of the students, one per pair.
            lecture_rows: ground-truth rows of the lectures, aligned.

        Returns:
            (enrol, complete) probabilities, float64.
        """
        students = self.students.take(student_rows)
        lectures = self.lectures.take(lecture_rows)
        appeal = appeal_pairs(students, lectures, self.weights)
        enrol = enrol_from_appeal(appeal, students.outside.astype(np.float64))
        complete = complete_from_appeal(
            appeal,
            students.diligence,
            students.outside,
            students.level,
            lectures.level,
            lectures.duration,
            self.weights,
        )
        return enrol, complete

    def _compute(self, student_ids: Sequence[str], lecture_ids: Sequence[str], what: str) -> FloatArray:
        students, lectures = self._select(student_ids, lecture_ids)
        n_s, n_l = len(students), len(lectures)
        out = np.empty((n_s, n_l), dtype=np.float32)
        # lecture blocks keep the float64 temporaries to ~_BLOCK_CELLS cells whatever the batch size
        block = max(1, _BLOCK_CELLS // max(1, n_s))
        for lo in range(0, n_l, block):
            part = lectures.take(np.arange(lo, min(n_l, lo + block)))
            appeal = appeal_matrix(students, part, self.weights)
            if what == "enrol":
                appeal = enrol_from_appeal(appeal, students.outside.astype(np.float64)[:, None])
            elif what == "complete":
                appeal = complete_from_appeal(
                    appeal,
                    students.diligence[:, None],
                    students.outside[:, None],
                    students.level[:, None],
                    part.level[None, :],
                    part.duration[None, :],
                    self.weights,
                )
            out[:, lo : lo + block] = appeal
        return out


def _load_array(path: Path) -> npt.NDArray[Any]:
    if not path.is_file():
        raise DatasetNotFoundError(f"ground-truth file {path} is missing: regenerate the dataset")
    try:
        array: npt.NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SchemaError(
            str(path), "*", [], f"not a readable .npy array ({exc}): regenerate the dataset"
        ) from exc
    return array
