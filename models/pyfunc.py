"""The MLflow pyfunc wrapper of a learnrec recommender: student ids in, ranked lecture ids out.

Logged by `learnrec train` as a *model from code* (the small `ENTRY_SCRIPT` below is the model file; the
`models` package travels with it as code), so loading it never unpickles anything:

    >>> model = mlflow.pyfunc.load_model("models:/learnrec-lectures@champion")
    >>> model.predict(pd.DataFrame({"student_id": ["s00001"], "k": [5]}))

Input: a DataFrame with `student_id` and optionally `k` (list length, default 10) and profile columns
(`region`, `grade`, `school_level`, `target_exam`, `interest_subjects`) used for students the model has
never seen. Training students are looked up in `students.parquet` (profile and ordered history), so
their taken lectures are never recommended again. Output: one row per recommended lecture with
`student_id`, `rank` (1 = best), `lecture_id`, `title` (Korean) and `score`, best first.

This module imports mlflow at import time (its base class); import it only where a pyfunc is logged or
loaded. The service loads versions through `models.loading`, not through this wrapper.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
from mlflow.pyfunc.model import PythonModel

from models.base import Recommender, StudentBatch
from models.errors import NumericalError
from models.loading import FALLBACK, LECTURES, RECOMMENDER, STUDENTS

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


class LearnrecRecommender(PythonModel):  # type: ignore[misc]
    """pyfunc wrapper: loads the native recommender and the student lookup, ranks with eligibility."""

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

        self.recommender: Recommender = load_model(recommender_dir)
        cat = self.recommender.catalogue
        lectures = pq.read_table(lectures_file, columns=["lecture_id", "title"]).to_pydict()
        title_of = dict(zip(lectures["lecture_id"], lectures["title"], strict=True))
        self.lecture_ids: tuple[str, ...] = cat.lectures.ids
        self.titles: tuple[str, ...] = tuple(str(title_of.get(lid, "")) for lid in cat.lectures.ids)
        table = pq.read_table(students_file).to_pydict()
        self.student_row: dict[str, int] = {sid: i for i, sid in enumerate(table["student_id"])}
        self.profiles: dict[str, list[Any]] = {c: table[c] for c in PROFILE_COLUMNS if c in table}
        self.histories: list[npt.NDArray[np.int32]] = [
            np.asarray([cat.lectures.get(x) for x in ids], dtype=np.int32) for ids in table["history"]
        ]
        self.history_weights: list[npt.NDArray[np.float32]] = [
            np.asarray(w, dtype=np.float32) for w in table["history_weight"]
        ]
        self.feature_index = {name: i for i, name in enumerate(self.recommender.student_feature_names)}
        self.fallback = json.loads(fallback_file.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------------------------------------
    def _profile(self, student_id: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """The stored profile of a training student, else the profile columns given in the input."""
        row = self.student_row.get(student_id)
        if row is not None:
            return {c: values[row] for c, values in self.profiles.items()}
        return {c: given.get(c) for c in PROFILE_COLUMNS}

    def batch(self, student_ids: Sequence[str], given: Sequence[Mapping[str, Any]]) -> StudentBatch:
        """The students as a `StudentBatch` against the wrapped model.

        Args:
            student_ids: the students.
            given: per student, the profile columns of the input (used for unknown students).

        Returns:
            The batch (history and recent lectures of training students from students.parquet).
        """
        rec = self.recommender
        cat = rec.catalogue
        b, n = len(student_ids), len(cat.lectures)
        everywhere = cat.regions.get("*")
        history_rows: list[npt.NDArray[np.int32]] = []
        history_weights: list[npt.NDArray[np.float32]] = []
        feature_cols: list[list[int]] = []
        region = np.full(b, -1, dtype=np.int32)
        grade = np.full(b, -1, dtype=np.int32)
        index = np.full(b, -1, dtype=np.int32)
        for i, (sid, extra) in enumerate(zip(student_ids, given, strict=True)):
            index[i] = rec.students.get(sid)
            row = self.student_row.get(sid)
            if row is not None:
                rows, weights = self.histories[row], self.history_weights[row]
                keep = rows >= 0
                history_rows.append(rows[keep])
                history_weights.append(weights[keep])
            else:
                history_rows.append(np.zeros(0, np.int32))
                history_weights.append(np.zeros(0, np.float32))
            profile = self._profile(sid, extra)
            cols = []
            for column, value in profile.items():
                for v in _values(value):
                    c = self.feature_index.get(f"{column}={v}", -1)
                    if c >= 0:
                        cols.append(c)
            feature_cols.append(sorted(set(cols)))
            r = cat.regions.get(str(profile.get("region"))) if _present(profile.get("region")) else -1
            region[i] = -1 if r == everywhere else r
            grade[i] = cat.grades.get(str(profile.get("grade"))) if _present(profile.get("grade")) else -1
        lengths = np.array([h.size for h in history_rows], dtype=np.int64)
        indptr = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        history = sp.csr_matrix(
            (
                np.concatenate(history_weights) if b else np.zeros(0, np.float32),
                np.concatenate(history_rows) if b else np.zeros(0, np.int32),
                indptr,
            ),
            shape=(b, n),
            dtype=np.float32,
        )
        f_lengths = np.array([len(c) for c in feature_cols], dtype=np.int64)
        f_indptr = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(f_lengths, out=f_indptr[1:])
        f_indices = np.array([c for cols in feature_cols for c in cols], dtype=np.int32)
        features = sp.csr_matrix(
            (np.ones(f_indices.size, dtype=np.float32), f_indices, f_indptr),
            shape=(b, len(self.feature_index)),
        )
        return StudentBatch(
            index=index,
            history=history,
            recent=tuple(history_rows),
            features=features,
            region=region,
            grade=grade,
        )

    def recommend(
        self, student_ids: Sequence[str], k: int, given: Sequence[Mapping[str, Any]] | None = None
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """Top-k eligible lecture rows and scores per student.

        Raises:
            NumericalError: the model scored NaN or infinity.
        """
        from models.eligibility import eligible_mask, top_k

        given = given if given is not None else [{} for _ in student_ids]
        batch = self.batch(student_ids, given)
        scores = self.recommender.score(batch)
        if not np.isfinite(scores).all():
            raise NumericalError(f"{self.recommender.name} scored NaN or infinity; this version cannot serve")
        mask = eligible_mask(self.recommender.catalogue, batch.region, batch.grade, batch.history)
        return top_k(scores, mask, k)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Ranked lectures per student (see the module docstring for the columns).

        Args:
            context: MLflow context (unused; everything was loaded in `load_context`).
            model_input: DataFrame with `student_id`, optional `k` and profile columns.
            params: optional {"k": int}, the default list length.

        Returns:
            Long DataFrame: student_id, rank, lecture_id, title, score.

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
        }
        if ids:
            rows, scores = self.recommend(ids, max(ks), given)
            for sid, k, r, s in zip(ids, ks, rows, scores, strict=True):
                for rank, (row, score) in enumerate(zip(r[:k], s[:k], strict=True), start=1):
                    if row < 0:
                        break
                    out_cols["student_id"].append(sid)
                    out_cols["rank"].append(rank)
                    out_cols["lecture_id"].append(self.lecture_ids[row])
                    out_cols["title"].append(self.titles[row])
                    out_cols["score"].append(float(score))
        return pd.DataFrame(
            {
                "student_id": pd.Series(out_cols["student_id"], dtype=object),
                "rank": pd.Series(out_cols["rank"], dtype=np.int64),
                "lecture_id": pd.Series(out_cols["lecture_id"], dtype=object),
                "title": pd.Series(out_cols["title"], dtype=object),
                "score": pd.Series(out_cols["score"], dtype=np.float64),
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
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)
