"""Pre-experiment covariates of the A/B analysis: each student's activity before their first exposure.

CUPED / regression adjustment (`training.ab.stats.cuped`) needs, per student, a quantity that the
treatment cannot have moved and that predicts the outcome. A student's enrolments and completions in the
``days`` before their FIRST exposure of the experiment are such a quantity: they are fixed before the
student is randomised (the arm is decided at the first exposure), and a student who enrolled a lot
before tends to enrol a lot after. Counted from every event given (the dataset's history and the
experiment's export, deduplicated by ``event_id``), whatever lecture or recommendation they concern.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd

from training.ab.errors import AnalysisInputError

#: Per-student covariate columns `add_pre_activity` adds, in the order the adjustment uses them.
COVARIATES: tuple[str, ...] = ("pre_enrolments", "pre_completions")
#: Default look-back before the first exposure.
PRE_DAYS = 28.0
_TYPES = {"enrol": "pre_enrolments", "complete": "pre_completions"}


def add_pre_activity(students: pd.DataFrame, events: pd.DataFrame, days: float = PRE_DAYS) -> pd.DataFrame:
    """``students`` with `COVARIATES`: their enrolments and completions in the ``days`` before first exposure.

    Args:
        students: per-student outcomes (``student_id``, ``first_shown_at``; `attribution.STUDENT_COLUMNS`).
        events: events of any period (``student_id``, ``type``, ``occurred_at``; ``event_id`` optional,
            used to count an event given twice once).
        days: look-back in days (> 0).

    Returns:
        A copy of ``students`` with ``pre_enrolments`` and ``pre_completions`` (int64, 0 when none).

    Raises:
        AnalysisInputError: ``days`` is not positive or a column is missing.
    """
    if not days > 0:
        raise AnalysisInputError(f"pre-period must be > 0 days, got {days}")
    missing = [c for c in ("student_id", "type", "occurred_at") if c not in events.columns]
    if missing:
        raise AnalysisInputError(f"events: missing column(s) {missing} for the pre-period covariates")
    out = students.copy()
    ev = events.loc[
        events["type"].isin(list(_TYPES)) & events["student_id"].isin(out["student_id"].unique()),
        [c for c in ("event_id", "student_id", "type", "occurred_at") if c in events.columns],
    ]
    if "event_id" in ev.columns:
        ev = ev.drop_duplicates("event_id")
    ev = ev.merge(out[["student_id", "first_shown_at"]].drop_duplicates("student_id"), on="student_id")
    at = pd.to_datetime(ev["occurred_at"], utc=True)
    start = ev["first_shown_at"] - pd.Timedelta(timedelta(days=days))
    ev = ev.loc[(at >= start) & (at < ev["first_shown_at"])]
    counts = ev.groupby(["student_id", "type"]).size().unstack("type", fill_value=0)
    for kind, column in _TYPES.items():
        per = counts[kind] if kind in counts.columns else pd.Series(dtype="int64")
        out[column] = out["student_id"].map(per).fillna(0).astype("int64")
    return out
