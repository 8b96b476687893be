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
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.ids import sorted_distinct
from training.ab.columns import NONE, UTC, as_table, codes, index_in, micros, microseconds, text, times
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

    exposures: pd.DataFrame  # input exposures (without lecture_ids) + n_shown, n_enrolled, n_completed
    students: pd.DataFrame  # STUDENT_COLUMNS
    outcomes: pd.DataFrame  # OUTCOME_COLUMNS
    notes: dict[str, int] = field(default_factory=dict)  # data-quality counts


def _require(names: list[str], columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise AnalysisInputError(f"{name}: missing column(s) {missing}; have {names}")


def attribute(
    exposures: pa.Table | pd.DataFrame,
    events: pa.Table | pd.DataFrame,
    window: timedelta = timedelta(days=7),
    completion_window: timedelta | None = None,
) -> Attribution:
    """Attribute enrolments and completions in ``events`` to ``exposures`` (rules in the module docstring).

    The work that grows with exposures and events is done on Arrow columns and numpy codes (the shown
    lectures are never a row each in pandas, the events never a pandas frame); the outcome tables come
    back as pandas frames (one row per exposure, per student, per attributed lecture).

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
    ex, ev = as_table(exposures), as_table(events)
    _require(ex.column_names, EXPOSURE_COLUMNS, "exposures")
    _require(ev.column_names, EVENT_COLUMNS, "events")
    if window < timedelta(0):
        raise AnalysisInputError(f"window must be >= 0, got {window}")

    experiment = text(ex.column("experiment"))
    ex = ex.filter(pc.and_kleene(pc.is_valid(experiment), pc.not_equal(experiment, "")))
    n_in = ex.num_rows
    # the earliest of a request id's copies (a stream redelivered), exposures in (shown_at, request_id) order
    ex = ex.set_column(ex.column_names.index("shown_at"), "shown_at", times(ex.column("shown_at")))
    ex = ex.take(pc.sort_indices(ex, [("shown_at", "ascending"), ("request_id", "ascending")]))
    _, first = np.unique(codes(ex.column("request_id"))[0], return_index=True)
    ex = ex.take(pa.array(np.sort(first)))
    notes = {"duplicate_exposures_dropped": n_in - ex.num_rows}

    x = _Exposures(ex)
    e = _Events(ev, x)
    attributed = _attribute_enrolments(x, e, window)
    completed_at = _completions(e, attributed, completion_window)
    outcomes = _outcome_frame(x, e, attributed, completed_at)
    rows = attributed["request_row"]
    n_enrolled = np.bincount(rows, minlength=x.n).astype(np.int64)
    n_completed = np.bincount(rows[completed_at != NONE], minlength=x.n).astype(np.int64)
    frame = ex.drop_columns(["lecture_ids"]).to_pandas()
    frame["shown_at"] = frame["shown_at"].astype(_TS)
    frame["n_shown"] = x.n_shown
    frame["n_enrolled"] = n_enrolled
    frame["n_completed"] = n_completed
    return Attribution(frame, _per_student(frame, outcomes), outcomes, notes)


class _Exposures:
    """One experiment run's exposures as codes: experiment, student, request row, shown lectures."""

    def __init__(self, ex: pa.Table) -> None:
        self.table = ex
        self.n = ex.num_rows
        self.experiment, _ = codes(ex.column("experiment"))
        self.student, self.students = codes(ex.column("student_id"))
        self.shown_at = micros(ex.column("shown_at"))
        lists = (
            ex.column("lecture_ids").combine_chunks() if ex.num_rows else pa.array([], pa.list_(pa.string()))
        )
        self.n_shown = (
            pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        )
        self.shown_row = np.asarray(pc.list_parent_indices(lists).to_numpy(), dtype=np.int64)
        self.shown_lecture = pc.list_flatten(lists)


class _Events:
    """The enrolments and completions of the exposed students, as codes (students in `_Exposures`' terms)."""

    def __init__(self, ev: pa.Table, x: _Exposures) -> None:
        student = index_in(ev.column("student_id"), x.students)
        types = text(ev.column("type"))
        outcome = pc.and_kleene(
            pc.is_in(types, value_set=pa.array(["enrol", "complete"])),
            pc.and_kleene(pc.is_valid(ev.column("lecture_id")), pc.is_valid(ev.column("occurred_at"))),
        )  # (an event without its lecture or its time cannot be placed: left out)
        keep = (student >= 0) & np.asarray(
            pc.fill_null(outcome, False).to_numpy(zero_copy_only=False), dtype=bool
        )
        rows = np.flatnonzero(keep)
        ev = ev.take(pa.array(rows))
        self.student = student[rows]
        self.is_enrol = np.asarray(
            pc.equal(text(ev.column("type")), "enrol").to_numpy(zero_copy_only=False), dtype=bool
        )
        self.at = micros(ev.column("occurred_at"))
        self.lecture, self.lectures = codes(ev.column("lecture_id"))
        if "request_id" in ev.column_names and ev.num_rows:
            self.request_row = index_in(
                ev.column("request_id"), x.table.column("request_id").combine_chunks()
            )
        else:
            self.request_row = np.full(ev.num_rows, -1, dtype=np.int64)


def _attribute_enrolments(x: _Exposures, e: _Events, window: timedelta) -> dict[str, Any]:
    """Rules 1 to 3: each (experiment, student, lecture)'s earliest attributed enrolment.

    Returns:
        Arrays aligned by outcome: ``experiment``, ``event`` (row in `_Events`), ``request_row`` (row in
        `_Exposures`), ``via_request`` (rule 1, else 2), in rule 3's order (enrolment time, event row).
    """
    # each enrolment once per experiment its student is in (an exposure without a student has none)
    named = x.student >= 0
    pairs = sorted_distinct(x.experiment[named] * len(x.students) + x.student[named])
    member_experiment, member_student = pairs // len(x.students), pairs % len(x.students)
    enrols = np.flatnonzero(e.is_enrol)
    order = np.argsort(member_student, kind="stable")
    starts = np.searchsorted(member_student[order], e.student[enrols], side="left")
    ends = np.searchsorted(member_student[order], e.student[enrols], side="right")
    counts = ends - starts
    event = np.repeat(enrols, counts)
    member = order[
        np.repeat(starts, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    ]
    experiment = member_experiment[member]

    # rule 1: the portal's request id ties the enrolment to an exposure of the same experiment and student
    r = e.request_row[event]
    direct = r >= 0
    direct[direct] = (x.experiment[r[direct]] == experiment[direct]) & (
        x.student[r[direct]] == e.student[event[direct]]
    )
    request_row = np.where(direct, r, -1)

    # rule 2: the earliest exposure listing the lecture whose window covers the enrolment
    rest = np.flatnonzero(~direct)
    if rest.size and x.shown_row.size:
        shown_lecture = index_in(pa.chunked_array([x.shown_lecture]), e.lectures)  # (-1: no event of it)
        listed = (shown_lecture >= 0) & named[x.shown_row]
        s_row = x.shown_row[listed]
        shown_key = _key(x, e, x.experiment[s_row], x.student[s_row], shown_lecture[listed])
        asked = event[rest]
        query_key = _key(x, e, experiment[rest], e.student[asked], e.lecture[asked])
        found = _first_at_or_after(
            shown_key, x.shown_at[s_row], s_row, query_key, e.at[asked] - microseconds(window)
        )
        hit = found >= 0
        hit[hit] = x.shown_at[s_row[found[hit]]] <= e.at[event[rest[hit]]]
        request_row[rest[hit]] = s_row[found[hit]]

    # rule 3: one outcome per (experiment, student, lecture): the earliest attributed enrolment (equal
    # times: the one logged first)
    chosen = np.flatnonzero(request_row >= 0)
    chosen = chosen[np.lexsort((event[chosen], e.at[event[chosen]]))]
    key = _key(x, e, experiment[chosen], e.student[event[chosen]], e.lecture[event[chosen]])
    _, first = np.unique(key, return_index=True)
    chosen = chosen[np.sort(first)]
    return {
        "experiment": experiment[chosen],
        "event": event[chosen],
        "request_row": request_row[chosen],
        "via_request": direct[chosen],
    }


def _key(
    x: _Exposures,
    e: _Events,
    experiment: npt.NDArray[np.int64],
    student: npt.NDArray[np.int64],
    lecture: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """One int64 per (experiment, student, lecture) code triple."""
    return (experiment * max(len(x.students), 1) + student) * max(len(e.lectures), 1) + lecture


def _first_at_or_after(
    keys: npt.NDArray[np.int64],
    times: npt.NDArray[np.int64],
    ties: npt.NDArray[np.int64],
    query_keys: npt.NDArray[np.int64],
    query_times: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """For each query, the index (into ``keys``) of the row with its key and the earliest time at or
    after its time (equal times: the smallest ``ties``), or -1."""
    distinct = sorted_distinct(keys)
    key_rank = np.searchsorted(distinct, keys)
    query_rank = np.searchsorted(distinct, query_keys)
    known = query_rank < distinct.size
    known[known] = distinct[query_rank[known]] == query_keys[known]
    instants = sorted_distinct(np.concatenate([times, query_times]))
    span = np.int64(instants.size + 1)
    composite = key_rank * span + np.searchsorted(instants, times)
    query = query_rank * span + np.searchsorted(instants, query_times)
    order = np.lexsort((ties, composite))
    at = np.searchsorted(composite[order], query, side="left")
    inside = known & (at < order.size)
    inside[inside] = key_rank[order[at[inside]]] == query_rank[inside]
    out = np.full(query_keys.size, -1, dtype=np.int64)
    out[inside] = order[at[inside]]
    return out


def _completions(
    e: _Events, attributed: dict[str, Any], completion_window: timedelta | None
) -> npt.NDArray[np.int64]:
    """Rule 4: each outcome's earliest completion of its (student, lecture) at or after its enrolment
    (within ``completion_window`` when given); `NONE` when there is none."""
    event = attributed["event"]
    out = np.full(event.size, NONE, dtype=np.int64)
    completes = np.flatnonzero(~e.is_enrol)
    if not (completes.size and event.size):
        return out
    n_lectures = max(len(e.lectures), 1)
    enrolled_at = e.at[event]
    found = _first_at_or_after(
        e.student[completes] * n_lectures + e.lecture[completes], e.at[completes], completes,
        e.student[event] * n_lectures + e.lecture[event], enrolled_at,
    )  # fmt: skip
    hit = found >= 0
    done_at = np.where(hit, e.at[completes[np.maximum(found, 0)]], NONE)
    if completion_window is not None:
        hit &= done_at <= enrolled_at + microseconds(completion_window)
    out[hit] = done_at[hit]
    return out


def _outcome_frame(
    x: _Exposures, e: _Events, attributed: dict[str, Any], completed_at: npt.NDArray[np.int64]
) -> pd.DataFrame:
    """`OUTCOME_COLUMNS`, sorted by experiment, enrolment time and student (ties in rule 3's order)."""
    rows = pa.array(attributed["request_row"])
    event = attributed["event"]
    table = pa.table(
        {
            "experiment": text(x.table.column("experiment")).take(rows),
            "student_id": text(x.table.column("student_id")).take(rows),
            "lecture_id": e.lectures.take(pa.array(e.lecture[event])),
            "request_id": text(x.table.column("request_id")).take(rows),
            "variant": text(x.table.column("variant")).take(rows),
            "region": text(x.table.column("region")).take(rows),
            "enrolled_at": pa.array(e.at[event], UTC),
            "via": pa.array(np.where(attributed["via_request"], "request_id", "window"), pa.string()),
            "completed_at": pa.array(completed_at, UTC, mask=completed_at == NONE),
        }
    )
    frame = table.to_pandas()
    for column in ("enrolled_at", "completed_at"):
        frame[column] = frame[column].astype(_TS)
    frame = frame.sort_values(["experiment", "enrolled_at", "student_id"], kind="stable")
    outcomes: pd.DataFrame = frame[list(OUTCOME_COLUMNS)].reset_index(drop=True)
    return outcomes


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
