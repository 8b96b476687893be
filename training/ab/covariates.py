"""Pre-experiment covariates of the A/B analysis: each student's activity before their first exposure.

CUPED / regression adjustment (`training.ab.stats.cuped`) needs, per student, a quantity that the
treatment cannot have moved and that predicts the outcome. A student's enrolments and completions in the
``days`` before their FIRST exposure of the experiment are such a quantity: they are fixed before the
student is randomised (the arm is decided at the first exposure), and a student who enrolled a lot
before tends to enrol a lot after. Counted from every event given (the dataset's history and the
experiment's export, deduplicated by ``event_id``), whatever lecture or recommendation they concern.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa

from features.validation import epoch_microseconds
from training.ab.columns import as_table, codes, index_in, micros, microseconds, text, utc
from training.ab.errors import AnalysisInputError

#: Per-student covariate columns `add_pre_activity` adds, in the order the adjustment uses them.
COVARIATES: tuple[str, ...] = ("pre_enrolments", "pre_completions")
#: Default look-back before the first exposure.
PRE_DAYS = 28.0
_TYPES = {"enrol": "pre_enrolments", "complete": "pre_completions"}
_KINDS = pa.array(list(_TYPES))

EventsLike: TypeAlias = pa.Table | pd.DataFrame


def add_pre_activity(
    students: pd.DataFrame, events: EventsLike | Sequence[EventsLike], days: float = PRE_DAYS
) -> pd.DataFrame:
    """``students`` with `COVARIATES`: their enrolments and completions in the ``days`` before first exposure.

    The events are read as Arrow columns and numpy codes (a dataset's history of every event is never a
    pandas frame): only the enrolments and completions of these students are kept from each table.

    Args:
        students: per-student outcomes (``student_id``, ``first_shown_at``; `attribution.STUDENT_COLUMNS`).
        events: events of any period, one table or several (e.g. the dataset's history and the
            experiment's export) (``student_id``, ``type``, ``occurred_at``; ``event_id`` optional, used to
            count an event given twice once: its first copy, tables in the order given).
        days: look-back in days (> 0).

    Returns:
        A copy of ``students`` with ``pre_enrolments`` and ``pre_completions`` (int64, 0 when none).

    Raises:
        AnalysisInputError: ``days`` is not positive or a column is missing.
    """
    if not days > 0:
        raise AnalysisInputError(f"pre-period must be > 0 days, got {days}")
    tables = [as_table(t) for t in ([events] if isinstance(events, EventsLike) else events)]
    for table in tables:
        missing = [c for c in ("student_id", "type", "occurred_at") if c not in table.column_names]
        if missing:
            raise AnalysisInputError(f"events: missing column(s) {missing} for the pre-period covariates")
    out = students.copy()
    firsts = out[["student_id", "first_shown_at"]].drop_duplicates("student_id")
    known = pa.array(firsts["student_id"].astype(str).tolist(), pa.string())
    first_at = epoch_microseconds(utc(firsts["first_shown_at"]))
    students_of, kinds, times, ids = [], [], [], []
    for table in tables:
        student = index_in(table.column("student_id"), known)
        kind = index_in(table.column("type"), _KINDS)  # (0 enrolment, 1 completion, -1 another type)
        rows = np.flatnonzero((student >= 0) & (kind >= 0))
        taken = table.take(pa.array(rows))
        students_of.append(student[rows])
        kinds.append(kind[rows])
        times.append(micros(taken.column("occurred_at")))
        if "event_id" in taken.column_names:
            ids.extend(text(taken.column("event_id")).cast(pa.string()).chunks)
    student = np.concatenate([np.zeros(0, np.int64), *students_of])
    kind = np.concatenate([np.zeros(0, np.int64), *kinds])
    at = np.concatenate([np.zeros(0, np.int64), *times])
    if all("event_id" in t.column_names for t in tables):  # the first copy of an event given twice
        event_codes, _ = codes(pa.chunked_array(ids, type=pa.string()))
        _, first = np.unique(event_codes, return_index=True)
        keep = np.sort(first)
        student, kind, at = student[keep], kind[keep], at[keep]
    shown = first_at[student]
    inside = (at >= shown - microseconds(timedelta(days=days))) & (at < shown)
    at_row = pd.Index(firsts["student_id"].astype(str)).get_indexer(pd.Index(out["student_id"].astype(str)))
    for code, column in enumerate(_TYPES.values()):
        chosen = inside & (kind == code)
        per_student = np.bincount(student[chosen], minlength=len(known))
        out[column] = per_student[at_row].astype("int64")
    return out
