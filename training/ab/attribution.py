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
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.ids import sorted_distinct
from training.ab.columns import NONE, UTC, as_table, codes, index_in, micros, microseconds, text, times
from training.ab.errors import AnalysisInputError

#: A time no cut reaches: an exposure without a time counts in the whole run only.
_LATE = np.iinfo(np.int64).max


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
    """Outcome tables of one attribution run.

    The tables that grow with traffic stay Arrow (``exposures``: one row per exposure; ``outcomes``: one
    per attributed lecture); ``students`` (one row per student, what the statistics read) is pandas.
    `as_of` cuts the run at any moment from per-student arrays kept beside them.
    """

    exposures: pa.Table  # input exposures (without lecture_ids) + n_shown, n_enrolled, n_completed
    students: pd.DataFrame  # STUDENT_COLUMNS, row label = the student's row in every `as_of` look
    outcomes: pa.Table  # OUTCOME_COLUMNS
    timeline: _Timeline = field(repr=False, compare=False)  # what `as_of` cuts
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
    lectures are never a row each in pandas, the events never a pandas frame); only the per-student
    table comes back as a pandas frame.

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
    rows = attributed["request_row"]
    n_enrolled = np.bincount(rows, minlength=x.n).astype(np.int64)
    n_completed = np.bincount(rows[completed_at != NONE], minlength=x.n).astype(np.int64)
    counted = ex.drop_columns(["lecture_ids"])
    for name, values in (("n_shown", x.n_shown), ("n_enrolled", n_enrolled), ("n_completed", n_completed)):
        counted = counted.append_column(name, pa.array(values, pa.int64()))
    timeline = _Timeline(x, e.at[attributed["event"]], completed_at, x.group[rows])
    outcomes = _outcome_table(x, e, attributed, completed_at)
    return Attribution(counted, timeline.students(None), outcomes, timeline, notes)


class _Exposures:
    """One experiment run's exposures as codes: experiment, student, request row, shown lectures."""

    def __init__(self, ex: pa.Table) -> None:
        self.table = ex
        self.n = ex.num_rows
        self.experiment, experiments = codes(ex.column("experiment"))
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
        # the (experiment, student) groups, in the text order of the pair: one row of `Attribution.students`
        # each; an exposure without a student is in none (-1)
        named = np.flatnonzero(self.student >= 0)
        pair = (
            _text_rank(experiments)[self.experiment[named]] * max(len(self.students), 1)
            + _text_rank(self.students)[self.student[named]]
        )
        distinct = sorted_distinct(pair)
        self.group = np.full(self.n, -1, dtype=np.int64)
        self.group[named] = np.searchsorted(distinct, pair)
        self.n_groups = distinct.size
        self.group_row = _first_rows(self.group[named], named, self.n_groups)  # each group's first exposure


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
    named = x.group >= 0
    member_experiment, member_student = x.experiment[x.group_row], x.student[x.group_row]
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
            shown_key, x.shown_at[s_row], query_key, e.at[asked] - microseconds(window)
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
    query_keys: npt.NDArray[np.int64],
    query_times: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """For each query, the index (into ``keys``) of the row with its key and the earliest time at or
    after its time (equal times: the first such row), or -1.

    One merge: rows and queries ranked together by (key, time), queries before rows of the same rank, and
    each query takes the next row in that order when the row has its key.
    """
    asked = np.flatnonzero(
        np.asarray(pc.is_in(pa.array(keys), value_set=pa.array(query_keys)).to_numpy(zero_copy_only=False))
    )  # (a hash look-up: only rows some query can find take part in the sorts below)
    keys, times = keys[asked], times[asked]
    n = keys.size
    key = _dense_ranks(np.concatenate([keys, query_keys]))
    instant = _dense_ranks(np.concatenate([times, query_times]))
    rank = key * (int(instant.max(initial=0)) + 1) + instant
    merged = np.argsort(np.concatenate([rank[n:], rank[:n]]), kind="stable")  # queries first at a tie
    is_row = merged >= query_keys.size
    position = np.where(is_row, np.arange(merged.size), merged.size)
    following = np.minimum.accumulate(position[::-1])[::-1]  # the next row at or after each position
    query_at = np.empty(query_keys.size, dtype=np.int64)
    query_at[merged[~is_row]] = np.flatnonzero(~is_row)
    next_row = np.append(merged, query_keys.size + n)[following[query_at]] - query_keys.size
    out = np.full(query_keys.size, -1, dtype=np.int64)
    inside = next_row < n
    inside[inside] = key[next_row[inside]] == key[n:][inside]
    out[inside] = asked[next_row[inside]]
    return out


def _dense_ranks(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each value's rank among the distinct values (0 = the smallest), by one sort (what
    `np.unique(..., return_inverse=True)` gives, which hashes int64 keys here: slower on tens of millions)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks = np.empty(values.size, dtype=np.int64)
    ranks[order] = np.cumsum(np.concatenate(([False], ordered[1:] != ordered[:-1])))
    return ranks


def _text_rank(values: pa.Array) -> npt.NDArray[np.int64]:
    """Each of distinct text values' position in their sorted order (code points, as Python sorts)."""
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[np.asarray(pc.sort_indices(values).to_numpy(), dtype=np.int64)] = np.arange(len(values))
    return ranks


def _group_min(
    group: npt.NDArray[np.int64], at: npt.NDArray[np.int64], n_groups: int
) -> npt.NDArray[np.int64]:
    """Per group, the earliest of ``at`` (`_LATE` when none)."""
    first = np.full(n_groups, _LATE, dtype=np.int64)
    np.minimum.at(first, group, at)
    return first


def _first_rows(
    group: npt.NDArray[np.int64], rows: npt.NDArray[np.int64], n_groups: int
) -> npt.NDArray[np.int64]:
    """Per group, the smallest of ``rows`` in it (aligned with ``group``), or -1 when none is."""
    first = _group_min(group, rows, n_groups)
    return np.where(first == _LATE, -1, first)


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
        e.student[completes] * n_lectures + e.lecture[completes], e.at[completes],
        e.student[event] * n_lectures + e.lecture[event], enrolled_at,
    )  # fmt: skip
    hit = found >= 0
    done_at = np.where(hit, e.at[completes[np.maximum(found, 0)]], NONE)
    if completion_window is not None:
        hit &= done_at <= enrolled_at + microseconds(completion_window)
    out[hit] = done_at[hit]
    return out


def _outcome_table(
    x: _Exposures, e: _Events, attributed: dict[str, Any], completed_at: npt.NDArray[np.int64]
) -> pa.Table:
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
    )  # (Arrow's sort is stable)
    return table.take(
        pc.sort_indices(table, [(c, "ascending") for c in ("experiment", "enrolled_at", "student_id")])
    )


class _Timeline:
    """Per (experiment, student) group, what a look at any moment counts: every exposure's and outcome's
    time, the first exposure (in time order) with a region and with a variant, when each variant was
    first shown. A look (`students`) is a few counts over masks, without attributing again."""

    def __init__(
        self,
        x: _Exposures,
        enrolled_at: npt.NDArray[np.int64],
        completed_at: npt.NDArray[np.int64],
        outcome_group: npt.NDArray[np.int64],
    ) -> None:
        n = self.n = x.n_groups
        named = np.flatnonzero(x.group >= 0)
        shown_at = np.where(x.shown_at == NONE, _LATE, x.shown_at)
        self.experiment = text(x.table.column("experiment")).take(pa.array(x.group_row))
        self.student = text(x.table.column("student_id")).take(pa.array(x.group_row))
        self.exposure_group, self.exposure_at = x.group[named], shown_at[named]
        self.first_shown = _group_min(self.exposure_group, self.exposure_at, n)
        # the first exposure with a region, with a variant (pandas' groupby "first": nulls skipped)
        self.first: dict[str, tuple[pa.Array, npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        for column in ("region", "variant"):
            value, values = codes(x.table.column(column))
            rows = named[value[named] >= 0]
            first = _first_rows(x.group[rows], rows, n)
            has = first >= 0
            self.first[column] = (
                values,
                np.where(has, value[first], -1),
                np.where(has, shown_at[first], _LATE),
            )
            if column == "variant":  # when each of a group's variants was first shown (rows in time order)
                pair = x.group[rows] * max(len(values), 1) + value[rows]
                _, first_of_pair = np.unique(pair, return_index=True)
                self.variant_group = x.group[rows][first_of_pair]
                self.variant_at = shown_at[rows][first_of_pair]
        self.outcome_group, self.enrolled_at = outcome_group, enrolled_at
        done = completed_at != NONE
        self.completed_group, self.completed_at = outcome_group[done], completed_at[done]
        self.first_enrolled = _group_min(outcome_group, enrolled_at, n)
        self.first_completed = _group_min(self.completed_group, self.completed_at, n)

    def students(self, cut: int | None) -> pd.DataFrame:
        """`STUDENT_COLUMNS` of the groups exposed before ``cut`` (UTC microseconds; None: the whole run),
        labelled by group (the row of the whole run's table)."""

        def count(group: npt.NDArray[np.int64], at: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
            return np.bincount(group if cut is None else group[at < cut], minlength=self.n).astype(np.int64)

        def seen(at: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
            return (at != _LATE) if cut is None else (at < cut)

        def instants(at: npt.NDArray[np.int64]) -> pa.Array:
            return pa.array(at[rows], UTC, mask=~seen(at)[rows])

        n_exposures = count(self.exposure_group, self.exposure_at)
        rows = np.flatnonzero(n_exposures > 0)
        taken = pa.array(rows)
        n_enrolled = count(self.outcome_group, self.enrolled_at)[rows]
        n_completed = count(self.completed_group, self.completed_at)[rows]
        columns: dict[str, Any] = {
            "experiment": self.experiment.take(taken),
            "student_id": self.student.take(taken),
        }
        for column, (values, value, at) in self.first.items():
            chosen = (value if cut is None else np.where(at < cut, value, -1))[rows]
            columns[column] = values.take(pa.array(chosen, mask=chosen < 0))
        columns |= {
            "n_variants": count(self.variant_group, self.variant_at)[rows],
            "n_exposures": n_exposures[rows],
            "first_shown_at": instants(self.first_shown),
            "n_enrolled": n_enrolled,
            "n_completed": n_completed,
            "first_enrolled_at": instants(self.first_enrolled),
            "first_completed_at": instants(self.first_completed),
            "enrolled": n_enrolled > 0,
            "completed": n_completed > 0,
        }
        frame = pa.table(columns).to_pandas()
        if rows.size < self.n:
            frame.index = pd.Index(rows)
        students: pd.DataFrame = frame[list(STUDENT_COLUMNS)]
        return students


def as_of(attribution: Attribution, cut: pd.Timestamp | datetime) -> pd.DataFrame:
    """Per-student outcomes as a report produced at ``cut`` would have them (a daily look).

    The same as attributing only the exposures and events before ``cut``: an enrolment is attributed to
    an exposure shown before it, so cutting the attributed outcomes at ``cut`` (enrolments before it,
    completions before it) and the students at their first exposure before it gives the same tables
    without attributing again.

    Args:
        attribution: the attribution of the whole period.
        cut: the moment of the look (UTC; a time without a zone is read as UTC).

    Returns:
        `STUDENT_COLUMNS` rows of the students first exposed before ``cut``, each labelled by its row in
        ``attribution.students``.
    """
    at = pd.Timestamp(cut)
    at = at.tz_localize("UTC") if at.tzinfo is None else at
    return attribution.timeline.students(
        -(-at.value // 1000)
    )  # (before a nanosecond cut: before its next µs)
