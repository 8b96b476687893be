"""The MLflow pyfunc wrapper of a learnrec recommender: student ids in, ranked lecture ids out.

Logged by `learnrec train` as a *model from code* (the small `ENTRY_SCRIPT` below is the model file; the
`models` package travels with it as code), so loading it never unpickles anything:

    >>> model = mlflow.pyfunc.load_model("models:/learnrec-lectures@champion")
    >>> model.predict(pd.DataFrame({"student_id": ["s00001"], "k": [5]}))

Input: a DataFrame with `student_id` and optionally `k` (list length, default 10) and profile columns
(`region`, `grade`, `school_level`, `target_exam`, `interest_subjects`) used for students the model has
never seen. Training students are looked up in `students.parquet` (profile and ordered history), so
their taken lectures are never recommended again. The lists are the service's
(`models.ranking.RankingModel.rank_many`: eligibility, series slots, scores, popularity fallbacks), from
the state at training time. Output: one row per recommended lecture with
`student_id`, `rank` (1 = best), `lecture_id`, `title` (Korean), `score` and `reason` (as the API's:
``next_in_series`` slots first, then ``similar_students`` by score, or ``popular_*``), best first.

This module imports mlflow at import time (its base class); import it only where a pyfunc is logged or
loaded. The service loads versions through `models.loading`, not through this wrapper.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

from models.base import Recommender
from models.errors import NumericalError
from models.interactions import RECENT_LEN
from models.loading import FALLBACK, LECTURES, RECOMMENDER, STUDENTS
from models.ranking import Ranked, RankingModel

DEFAULT_K = 10
MAX_K = 500
#: Profile columns the wrapper reads from its input for students it does not know.
PROFILE_COLUMNS: tuple[str, ...] = ("region", "grade", "school_level", "target_exam", "interest_subjects")
#: The models-from-code file `learnrec train` logs (MLflow runs it at load time, with `models` on the path).
ENTRY_SCRIPT = '''"""MLflow model file of a learnrec recommender (written by `learnrec train`)."""

import mlflow

from models.pyfunc import LearnrecRecommender

mlflow.models.set_model(LearnrecRecommender())
'''


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return not (isinstance(value, str) and value == "")


def _values(value: Any) -> list[str]:
    """A profile cell as a list of strings (list-valued cells such as interest_subjects are multi-hot)."""
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v) for v in value if _present(v)]
    return [str(value)] if _present(value) else []


@dataclass(frozen=True)
class _Profile:
    """A profile as the ranking reads it (`models.ranking.Profile`), from a students.parquet row or input."""

    region: str
    grade: str
    values: tuple[tuple[str, str], ...]

    def feature_values(self) -> tuple[tuple[str, str], ...]:
        return self.values

    @property
    def feature_key(self) -> tuple[tuple[str, str], ...]:
        return self.values


@dataclass(frozen=True)
class _Record:
    """A student's state as the ranking reads it (`models.ranking.StudentState`)."""

    profile: _Profile | None
    history: dict[str, float]
    recent: tuple[str, ...]
    state: bytes | None = None


def _profile(values: Mapping[str, Any]) -> _Profile | None:
    """The profile in `values` (columns of `PROFILE_COLUMNS`), None without a region and a grade."""
    if not (_present(values.get("region")) and _present(values.get("grade"))):
        return None
    pairs = tuple((c, v) for c in PROFILE_COLUMNS for v in _values(values.get(c)))
    return _Profile(str(values["region"]), str(values["grade"]), pairs)


class LearnrecRecommender(PythonModel):  # type: ignore[misc]
    """pyfunc wrapper: loads the native recommender and the student lookup, ranks as the service does."""

    def load_context(self, context: Any) -> None:
        """Read the artifacts (called by MLflow once per load)."""
        self.setup(
            recommender_dir=Path(context.artifacts[RECOMMENDER]),
            lectures_file=Path(context.artifacts[LECTURES]),
            students_file=Path(context.artifacts[STUDENTS]),
            fallback_file=Path(context.artifacts[FALLBACK]),
        )

    def setup(
        self, recommender_dir: Path, lectures_file: Path, students_file: Path, fallback_file: Path
    ) -> None:
        """Load from explicit paths (what `load_context` does; also usable without MLflow).

        Args:
            recommender_dir: the recommender's native save directory.
            lectures_file: lectures.parquet.
            students_file: students.parquet (profiles and histories of training students).
            fallback_file: fallback.json.
        """
        import pyarrow.parquet as pq

        from models import load_model

        recommender: Recommender = load_model(recommender_dir)
        fallback = json.loads(fallback_file.read_text(encoding="utf-8"))
        self.ranker = RankingModel.from_parts(recommender, pq.read_table(lectures_file), fallback)
        # records are built when asked for: one million students' histories as Python objects would
        # cost gigabytes at every load (MLflow loads the model once more to check the input example)
        self.students = pq.read_table(students_file).combine_chunks()
        self.student_row = {sid: i for i, sid in enumerate(self.students.column("student_id").to_pylist())}
        self.profile_columns = [c for c in PROFILE_COLUMNS if c in self.students.column_names]

    def record(self, student_id: str) -> _Record | None:
        """The training state of `student_id` from students.parquet, None for a student not in training."""
        row = self.student_row.get(student_id)
        if row is None:
            return None
        values = self.students.slice(row, 1).to_pylist()[0]
        ids = [str(x) for x in values["history"]]
        return _Record(
            profile=_profile({c: values[c] for c in self.profile_columns}),
            history=dict(zip(ids, (float(w) for w in values["history_weight"]), strict=True)),
            # the ordered history stands in for the store's recent enrolments
            recent=tuple(ids[-RECENT_LEN:]),
        )

    # ------------------------------------------------------------------------------------------------
    def rank(
        self, student_ids: Sequence[str], k: int, given: Sequence[Mapping[str, Any]] | None = None
    ) -> list[Ranked]:
        """The served lists (`models.ranking.RankingModel.rank_many`) of the students.

        Args:
            student_ids: the students.
            k: list length.
            given: per student, the profile columns of the input (used for students not in training).

        Raises:
            NumericalError: the model scored NaN or infinity.
        """
        given = given if given is not None else [{} for _ in student_ids]
        records = [
            self.record(sid) or _Record(profile=_profile(extra), history={}, recent=())
            for sid, extra in zip(student_ids, given, strict=True)
        ]
        ranked = self.ranker.rank_many(list(student_ids), records, k)
        errors = [r.model_error for r in ranked if r.model_error]
        if errors:
            raise NumericalError(
                f"{self.ranker.recommender.name} cannot score: {errors[0]}; this version cannot serve"
            )
        return ranked

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Ranked lectures per student (see the module docstring for the columns).

        Args:
            context: MLflow context (unused; everything was loaded in `load_context`).
            model_input: DataFrame with `student_id`, optional `k` and profile columns.
            params: optional {"k": int}, the default list length.

        Returns:
            Long DataFrame: student_id, rank, lecture_id, title, score, reason.

        Raises:
            ValueError: no `student_id` column or a k outside 1..500.
        """
        frame = pd.DataFrame(model_input)
        if "student_id" not in frame.columns:
            raise ValueError(f"input needs a 'student_id' column; got columns {list(frame.columns)}")
        default_k = int((params or {}).get("k", DEFAULT_K))
        ks = (
            frame["k"].fillna(default_k).astype(int).tolist()
            if "k" in frame.columns
            else [default_k] * len(frame)
        )
        bad = [k for k in ks if not 1 <= k <= MAX_K]
        if bad:
            raise ValueError(f"k must be between 1 and {MAX_K}; got {bad[0]}")
        ids = frame["student_id"].astype(str).tolist()
        present = [c for c in PROFILE_COLUMNS if c in frame.columns]
        given = (
            [dict(zip(present, values, strict=True)) for values in frame[present].itertuples(index=False)]
            if present
            else [{} for _ in ids]
        )
        out_cols: dict[str, list[Any]] = {
            "student_id": [],
            "rank": [],
            "lecture_id": [],
            "title": [],
            "score": [],
            "reason": [],
        }
        if ids:
            ranker = self.ranker
            for sid, k, ranked in zip(ids, ks, self.rank(ids, max(ks), given), strict=True):
                for rank, (row, score) in enumerate(
                    zip(ranked.rows[:k], ranked.scores[:k], strict=True), start=1
                ):
                    out_cols["student_id"].append(sid)
                    out_cols["rank"].append(rank)
                    out_cols["lecture_id"].append(ranker.catalogue.lectures.ids[row])
                    out_cols["title"].append(ranker.titles[row])
                    out_cols["score"].append(float(score))
                    out_cols["reason"].append(ranked.reasons[rank - 1])
        return pd.DataFrame(
            {
                "student_id": pd.Series(out_cols["student_id"], dtype=object),
                "rank": pd.Series(out_cols["rank"], dtype=np.int64),
                "lecture_id": pd.Series(out_cols["lecture_id"], dtype=object),
                "title": pd.Series(out_cols["title"], dtype=object),
                "score": pd.Series(out_cols["score"], dtype=np.float64),
                "reason": pd.Series(out_cols["reason"], dtype=object),
            }
        )


def signature() -> Any:
    """The pyfunc's MLflow model signature (inputs and outputs)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema(
        [
            ColSpec("string", "student_id"),
            ColSpec("long", "k", required=False),
            ColSpec("string", "region", required=False),
            ColSpec("string", "grade", required=False),
            ColSpec("string", "school_level", required=False),
            ColSpec("string", "target_exam", required=False),
            ColSpec(Array("string"), "interest_subjects", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "student_id"),
            ColSpec("long", "rank"),
            ColSpec("string", "lecture_id"),
            ColSpec("string", "title"),
            ColSpec("double", "score"),
            ColSpec("string", "reason"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)
