"""Attribute learning outcomes (enrolments, completions) to the recommendation exposures that led to them.

Rules, applied per experiment:

1. **Direct**: an ``enrol`` event whose ``request_id`` is the request id of an exposure of the same student
   in the experiment is attributed to that exposure, whatever the lecture or the delay (the portal tied it).
2. **Window**: otherwise an ``enrol`` of lecture L by student S at time t is attributed to the FIRST
   (earliest ``shown_at``; ties broken by ``request_id``) exposure of S that listed L with
   ``shown_at <= t <= shown_at + window`` (default 7 days). First-touch: the earliest exposure in the
   window is the one that put the lecture in front of the student; later re-showings do not steal it.
3. Each (experiment, student, lecture) counts once: its earliest attributed enrolment wins.
4. A ``complete`` of an attributed (student, lecture) at or after its attributed enrolment (and within
   ``completion_window`` of it, when given) is an attributed completion of the same exposure. Completions
   never attach to a lecture without an attributed enrolment, so completions <= enrolments always.

Events of other types (``progress``, ``drop``) are not outcomes here. Exposures repeated with the same
``request_id`` (a stream redelivered) are counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pandas as pd

from training.ab.errors import AnalysisInputError

_TS = pd.DatetimeTZDtype(unit="us", tz="UTC")
EXPOSURE_COLUMNS = ("request_id", "student_id", "region", "experiment", "variant", "lecture_ids", "shown_at")
EVENT_COLUMNS = ("student_id", "lecture_id", "type", "occurred_at")

#: Columns of `Attribution.students`, one row per (experiment, student).
STUDENT_COLUMNS = (
    "experiment",
    "student_id",
    "region",
    "variant",
    "n_variants",
    "n_exposures",
    "first_shown_at",
    "n_enrolled",
    "n_completed",
    "first_enrolled_at",
    "first_completed_at",
    "enrolled",
    "completed",
)
#: Columns of `Attribution.outcomes`, one row per attributed (experiment, student, lecture).
OUTCOME_COLUMNS = (
    "experiment",
    "student_id",
    "lecture_id",
    "request_id",
    "variant",
    "region",
    "enrolled_at",
    "via",
    "completed_at",
)


@dataclass(frozen=True)
class Attribution:
    """Outcome tables of one attribution run."""

    exposures: pd.DataFrame  # input exposures + n_shown, n_enrolled, n_completed
    students: pd.DataFrame  # STUDENT_COLUMNS
    outcomes: pd.DataFrame  # OUTCOME_COLUMNS
    notes: dict[str, int] = field(default_factory=dict)  # data-quality counts


def _require(df: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AnalysisInputError(f"{name}: missing column(s) {missing}; have {list(df.columns)}")


def _ts(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, utc=True).astype(_TS)


def attribute(
    exposures: pd.DataFrame,
    events: pd.DataFrame,
    window: timedelta = timedelta(days=7),
    completion_window: timedelta | None = None,
) -> Attribution:
    """Attribute enrolments and completions in ``events`` to ``exposures`` (rules in the module docstring).

    Args:
        exposures: rows of `training.ab.exposures.EXPOSURES` (exposures without an experiment are ignored).
        events: rows of `features.schemas.EVENTS` (``request_id`` optional).
        window: how long after an exposure an enrolment of a shown lecture is attributed to it.
        completion_window: longest delay from attributed enrolment to completion; None = no limit.

    Returns:
        Per-exposure, per-student and per-(student, lecture) outcome tables.

    Raises:
        AnalysisInputError: a required column is missing.
    """
    _require(exposures, EXPOSURE_COLUMNS, "exposures")
    _require(events, EVENT_COLUMNS, "events")
    if window < timedelta(0):
        raise AnalysisInputError(f"window must be >= 0, got {window}")

    ex = exposures.loc[exposures["experiment"].notna() & (exposures["experiment"] != "")].copy()
    ex["shown_at"] = _ts(ex["shown_at"])
    n_in = len(ex)
    ex = ex.sort_values(["shown_at", "request_id"], kind="stable").drop_duplicates("request_id")
    notes = {"duplicate_exposures_dropped": n_in - len(ex)}
    ex = ex.reset_index(drop=True)
    ex["n_shown"] = ex["lecture_ids"].map(lambda x: 0 if x is None else len(x)).astype("int64")

    key = ["experiment", "student_id", "lecture_id"]
    shown = ex[["experiment", "request_id", "student_id", "shown_at", "lecture_ids"]].explode("lecture_ids")
    shown = shown.rename(columns={"lecture_ids": "lecture_id"}).dropna(subset=["lecture_id"])
    shown["lecture_id"] = shown["lecture_id"].astype(ex["student_id"].dtype)

    ev = events.loc[events["student_id"].isin(ex["student_id"].unique())].copy()
    ev["occurred_at"] = _ts(ev["occurred_at"])
    ev["event_request_id"] = ev["request_id"] if "request_id" in ev.columns else None
    ev = ev[["student_id", "lecture_id", "type", "occurred_at", "event_request_id"]].reset_index(drop=True)
    ev["_row"] = range(len(ev))  # stable tie-break independent of event_id quality

    membership = ex[["experiment", "student_id"]].drop_duplicates()
    enrols = ev.loc[ev["type"] == "enrol"].merge(membership, on="student_id")

    # rule 1: the portal's request id ties the enrolment to the exposure directly
    direct = enrols.merge(
        ex[["experiment", "request_id", "student_id", "shown_at"]],
        left_on=["experiment", "event_request_id", "student_id"],
        right_on=["experiment", "request_id", "student_id"],
    )
    direct["via"] = "request_id"

    # rule 2: earliest exposure listing the lecture whose window covers the enrolment
    rest = enrols.loc[
        ~enrols.set_index(["experiment", "_row"]).index.isin(direct.set_index(["experiment", "_row"]).index)
    ]
    if len(rest) and len(shown):
        left = rest.assign(_from=rest["occurred_at"] - pd.Timedelta(window)).sort_values(
            "_from", kind="stable"
        )
        right = shown[[*key, "request_id", "shown_at"]].sort_values(["shown_at", "request_id"], kind="stable")
        windowed = pd.merge_asof(
            left, right, left_on="_from", right_on="shown_at", by=key, direction="forward"
        ).drop(columns="_from")
        windowed = windowed.loc[
            windowed["shown_at"].notna() & (windowed["shown_at"] <= windowed["occurred_at"])
        ]
    else:
        windowed = direct.iloc[0:0]
    windowed = windowed.assign(via="window")

    cols = [*key, "request_id", "occurred_at", "via", "_row"]
    attributed = pd.concat([direct[cols], windowed[cols]], ignore_index=True)
    # rule 3: one outcome per (experiment, student, lecture): the earliest attributed enrolment
    outcomes = (
        attributed.sort_values(["occurred_at", "_row"], kind="stable")
        .drop_duplicates(key)
        .rename(columns={"occurred_at": "enrolled_at"})
        .drop(columns="_row")
        .merge(ex[["request_id", "variant", "region"]], on="request_id", how="left")
    )

    # rule 4: completions follow their attributed enrolment
    completes = ev.loc[ev["type"] == "complete", ["student_id", "lecture_id", "occurred_at"]]
    done = outcomes[[*key, "enrolled_at"]].merge(completes, on=["student_id", "lecture_id"])
    keep = done["occurred_at"] >= done["enrolled_at"]
    if completion_window is not None:
        keep &= done["occurred_at"] <= done["enrolled_at"] + pd.Timedelta(completion_window)
    completed_at = done.loc[keep].groupby(key)["occurred_at"].min().rename("completed_at")
    outcomes = outcomes.merge(completed_at, left_on=key, right_index=True, how="left")
    outcomes["completed_at"] = outcomes["completed_at"].astype(_TS)
    outcomes["enrolled_at"] = outcomes["enrolled_at"].astype(_TS)
    outcomes = outcomes[list(OUTCOME_COLUMNS)].sort_values(["experiment", "enrolled_at", "student_id"])
    outcomes = outcomes.reset_index(drop=True)

    per_request = outcomes.groupby("request_id").agg(
        n_enrolled=("lecture_id", "size"), n_completed=("completed_at", "count")
    )
    ex = ex.merge(per_request, left_on="request_id", right_index=True, how="left")
    ex[["n_enrolled", "n_completed"]] = ex[["n_enrolled", "n_completed"]].fillna(0).astype("int64")

    return Attribution(ex, _per_student(ex, outcomes), outcomes, notes)


def as_of(attribution: Attribution, cut: pd.Timestamp) -> pd.DataFrame:
    """Per-student outcomes as a report produced at ``cut`` would have them (a daily look).

    The same as attributing only the exposures and events before ``cut``: an enrolment is attributed to
    an exposure shown before it, so cutting the attributed outcomes at ``cut`` (enrolments before it,
    completions before it) and the students at their first exposure before it gives the same tables
    without attributing again.

    Args:
        attribution: the attribution of the whole period.
        cut: the moment of the look (UTC).

    Returns:
        `STUDENT_COLUMNS` rows of the students first exposed before ``cut``.
    """
    ex = attribution.exposures.loc[attribution.exposures["shown_at"] < cut]
    out = attribution.outcomes.loc[attribution.outcomes["enrolled_at"] < cut].copy()
    out["completed_at"] = out["completed_at"].where(out["completed_at"] < cut)
    return _per_student(ex, out)


def _per_student(ex: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, student): the arm of the first exposure and the student's outcomes."""
    sk = ["experiment", "student_id"]
    students = ex.groupby(sk, sort=True).agg(
        region=("region", "first"),  # ex is sorted by shown_at, so "first" = first exposure
        variant=("variant", "first"),
        n_variants=("variant", "nunique"),
        n_exposures=("request_id", "size"),
        first_shown_at=("shown_at", "min"),
    )
    outs = outcomes.groupby(sk).agg(
        n_enrolled=("lecture_id", "size"),
        n_completed=("completed_at", "count"),
        first_enrolled_at=("enrolled_at", "min"),
        first_completed_at=("completed_at", "min"),
    )
    students = students.join(outs, how="left").reset_index()
    students[["n_enrolled", "n_completed"]] = (
        students[["n_enrolled", "n_completed"]].fillna(0).astype("int64")
    )
    for c in ("first_shown_at", "first_enrolled_at", "first_completed_at"):
        students[c] = students[c].astype(_TS)
    students["enrolled"] = students["n_enrolled"] > 0
    students["completed"] = students["n_completed"] > 0
    return students[list(STUDENT_COLUMNS)]
