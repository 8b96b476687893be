"""Tables -> arrays: the lecture catalogue, the training matrices and batches of students to score.

Conventions (shared with the service and the models):

* Lecture rows follow the order of the lectures table; student rows follow the students table, then
  students that appear only in events (sorted by id).
* The region vocabulary of a `Catalogue` ends with the `ALL_REGIONS` token ("*"): its licence row holds
  the lectures licensed everywhere, which is what a student of an unknown region may see.
* Interaction weight per (student, lecture): the rule of `models.interactions` (the furthest stage
  reached; a drop before completion weighs 0.1). Every pair with any event is nonzero, so a dropped
  lecture still counts as history (and is never recommended again).
* Side features are one-hot (multi-hot for list columns) named ``"column=value"``, from the profile's
  attributes (`features.profile`); `models.ranking.StudentFeatureEncoder` encodes one profile the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp

from features.errors import SchemaError
from features.event_table import TICKS_PER_SECOND, as_event_table, event_ticks, numpy_column
from features.ids import positions, used_text
from features.profile import FEATURE_ATTRIBUTES
from features.schemas import ALL_REGIONS, EVENT_TYPES, GRADES
from models.base import Catalogue, IdMap, StudentBatch, TrainingData
from models.interactions import DROP, ENROL, pair_weights, stage_weights

if TYPE_CHECKING:
    import pandas as pd

    from models.base import Recommender

log = logging.getLogger(__name__)

#: Student columns turned into one-hot side features, in this order: the profile's attributes.
STUDENT_FEATURE_COLUMNS: tuple[str, ...] = FEATURE_ATTRIBUTES
#: Lecture columns turned into one-hot side features (name prefix, column).
LECTURE_FEATURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("subject", "subject"),
    ("provider", "provider"),
    ("level", "level"),
    ("grade", "grades"),
    ("series", "series_id"),
)
_SECONDS_PER_DAY = 86_400.0


# ----------------------------------------------------------------------------------------------------------
# small vectorised helpers


def _coded_pairs(
    values: pd.Series[Any], lists: bool = False
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[str]]:
    """(row, code) pairs of a column and its distinct values as strings; nulls give no pair.

    Factorising first keeps this fast on millions of rows: only the distinct values become Python
    strings. With `lists`, each element of a list cell is a pair (empty lists give none).
    """
    import pandas as pd

    s = values.reset_index(drop=True)
    if lists:
        s = s.explode()
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    keep = codes >= 0
    rows = s.index.to_numpy(dtype=np.int64)[keep]
    return rows, codes[keep].astype(np.int64), [str(u) for u in uniques]


def _explode(values: pd.Series[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.object_]]:
    """(row, value) pairs of a column holding lists (or scalars); nulls and empty lists give no pair."""
    rows, codes, uniques = _coded_pairs(values, lists=True)
    return rows, np.asarray(uniques, dtype=object)[codes] if uniques else np.zeros(0, dtype=object)


def _scalar_pairs(values: pd.Series[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.object_]]:
    """(row, value) pairs of a scalar column; nulls give no pair."""
    rows, codes, uniques = _coded_pairs(values)
    return rows, np.asarray(uniques, dtype=object)[codes] if uniques else np.zeros(0, dtype=object)


def _sorted_unique(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


def _multi_hot(
    rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], shape: tuple[int, int]
) -> sp.csr_matrix:
    """0/1 float32 CSR from (row, col) pairs; pairs with col < 0 are skipped, duplicates count once."""
    keep = cols >= 0
    m = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])), shape=shape, dtype=np.float32
    )
    m.sum_duplicates()
    np.minimum(m.data, 1.0, out=m.data)
    m.sort_indices()
    return m


def _utc_seconds(events: pa.Table, file: str) -> npt.NDArray[np.int64]:
    """Event times as int64 seconds since the epoch (UTC), rounded down; naive times are taken as UTC."""
    try:
        ticks, unit = event_ticks(events)
    except (ValueError, TypeError, pa.ArrowInvalid) as exc:
        raise SchemaError(file, "occurred_at", [], f"cannot read as timestamps: {exc}") from exc
    bad = np.flatnonzero(ticks == np.iinfo(np.int64).min)  # (a null)
    if bad.size:
        raise SchemaError(
            file, "occurred_at", bad.tolist(), "missing timestamp: every event needs occurred_at"
        )
    if ticks.flags.writeable:  # (a copy of the column's times: no second one)
        np.floor_divide(ticks, TICKS_PER_SECOND[unit], out=ticks)
        return ticks
    secs: npt.NDArray[np.int64] = ticks // TICKS_PER_SECOND[unit]
    return secs


def _as_of_seconds(as_of: datetime) -> int:
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return int(as_of.timestamp())


def _unique_ids(column: pd.Series[Any], file: str, name: str) -> list[str]:
    ids = column.astype(str)
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        raise SchemaError(
            file, name, rows.tolist(), f"duplicate {name} '{ids.iloc[int(rows[0])]}': ids must be unique"
        )
    nulls = np.flatnonzero(column.isna().to_numpy())
    if nulls.size:
        raise SchemaError(file, name, nulls.tolist(), f"missing {name}")
    return ids.tolist()


# ----------------------------------------------------------------------------------------------------------
# catalogue


def build_catalogue(
    lectures: pd.DataFrame, regions: Sequence[str], grades: Sequence[str] = GRADES
) -> Catalogue:
    """The lecture catalogue as arrays: licences, grade suitability, series, subjects, side features.

    Optional columns fall back to permissive defaults: no `regions` -> licensed everywhere, no (or an
    empty) `grades` list -> suits every grade, no `series_id` -> each lecture is its own series, no
    `active` -> active. Licence entries naming a region outside `regions` are ignored.

    Args:
        lectures: table with the columns of `features.schemas.LECTURES` (at least `lecture_id`,
            `subject`, `provider`).
        regions: region vocabulary (row order of `Catalogue.licensed`); "*" is appended as the last
            row, licensing the lectures licensed everywhere.
        grades: grade vocabulary (row order of `Catalogue.suits`).

    Returns:
        The catalogue; rows follow the order of `lectures`.

    Raises:
        SchemaError: duplicate or missing lecture ids, or a missing required column.
    """
    import pandas as pd

    for col in ("lecture_id", "subject", "provider"):
        if col not in lectures.columns:
            raise SchemaError("lectures", col, [], f"column '{col}' is missing")
    lectures = lectures.reset_index(drop=True)
    ids = _unique_ids(lectures["lecture_id"], "lectures", "lecture_id")
    n = len(ids)
    region_vocab = [r for r in dict.fromkeys(str(r) for r in regions) if r != ALL_REGIONS] + [ALL_REGIONS]
    grade_vocab = list(dict.fromkeys(str(g) for g in grades))
    region_index = pd.Index(region_vocab)
    grade_index = pd.Index(grade_vocab)

    licensed = np.zeros((len(region_vocab), n), dtype=np.bool_)
    if "regions" in lectures.columns:
        rows, vals = _explode(lectures["regions"])
        codes = positions(region_index, vals)
        everywhere = np.unique(rows[vals == ALL_REGIONS])
        licensed[:, everywhere] = True
        known = codes >= 0
        licensed[codes[known], rows[known]] = True
    else:
        licensed[:, :] = True

    suits = np.zeros((len(grade_vocab), n), dtype=np.bool_)
    grade_rows = np.zeros(0, dtype=np.int64)
    grade_vals = np.zeros(0, dtype=object)
    if "grades" in lectures.columns:
        grade_rows, grade_vals = _explode(lectures["grades"])
        codes = positions(grade_index, grade_vals)
        known = codes >= 0
        suits[codes[known], grade_rows[known]] = True
        suits[:, np.unique(grade_rows[grade_vals == "*"])] = True
        # a lecture without any grade listed suits everyone rather than no one
        suits[:, np.setdiff1d(np.arange(n), grade_rows)] = True
    else:
        suits[:, :] = True

    active = (
        lectures["active"].fillna(True).astype(bool).to_numpy(dtype=np.bool_)
        if "active" in lectures.columns
        else np.ones(n, dtype=np.bool_)
    )
    series_col = (
        lectures["series_id"]
        .astype(str)
        .where(lectures["series_id"].notna(), lectures["lecture_id"].astype(str))
        if "series_id" in lectures.columns
        else lectures["lecture_id"].astype(str)
    )
    series_codes, _ = pd.factorize(series_col, sort=True)
    position = (
        pd.to_numeric(lectures["series_position"], errors="coerce").fillna(1).to_numpy().astype(np.int32)
        if "series_position" in lectures.columns
        else np.ones(n, dtype=np.int32)
    )
    subject_codes, subject_uniques = pd.factorize(lectures["subject"].astype(str), sort=True)

    # side features: one block per column, each block sorted by value
    blocks_rows: list[npt.NDArray[np.int64]] = []
    blocks_cols: list[npt.NDArray[np.int64]] = []
    names: list[str] = []
    for prefix, column in LECTURE_FEATURE_COLUMNS:
        if column == "series_id":
            rows, vals = np.arange(n, dtype=np.int64), series_col.to_numpy(dtype=object)
        elif column == "grades":
            rows, vals = grade_rows, grade_vals
        elif column in lectures.columns:
            values = lectures[column]
            if column == "level":
                values = pd.Series(pd.to_numeric(values, errors="coerce"), dtype="Int64")
            rows, vals = _scalar_pairs(values)
        else:
            continue
        vocab = _sorted_unique(vals.tolist())
        codes = positions(vocab, vals) if len(vals) else np.zeros(0, np.int64)
        blocks_rows.append(rows)
        blocks_cols.append(codes + len(names))
        names.extend(f"{prefix}={v}" for v in vocab)
    features = _multi_hot(
        np.concatenate(blocks_rows) if blocks_rows else np.zeros(0, np.int64),
        np.concatenate(blocks_cols) if blocks_cols else np.zeros(0, np.int64),
        (n, len(names)),
    )
    return Catalogue(
        lectures=IdMap(tuple(ids)),
        regions=IdMap(tuple(region_vocab)),
        grades=IdMap(tuple(grade_vocab)),
        licensed=licensed,
        suits=suits,
        active=active,
        series=series_codes.astype(np.int32),
        series_position=position,
        subject=subject_codes.astype(np.int32),
        subjects=tuple(str(s) for s in subject_uniques),
        features=features,
        feature_names=tuple(names),
    )


# ----------------------------------------------------------------------------------------------------------
# events -> per (student, lecture) aggregates


class _Pairs:
    """Per (student, lecture) aggregates of an event table, sorted by (student, lecture)."""

    def __init__(
        self,
        student: npt.NDArray[np.int64],
        lecture: npt.NDArray[np.int64],
        weight: npt.NDArray[np.float32],
        first_seen: npt.NDArray[np.int64],
        last_seen: npt.NDArray[np.int64],
        first_any: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.student = student
        self.lecture = lecture
        self.weight = weight
        self.first_seen = first_seen
        self.last_seen = last_seen
        #: time of the pair's first event of any type (first_seen prefers the first enrolment)
        self.first_any = first_seen if first_any is None else first_any


def _aggregate_events(
    events: pa.Table,
    student_index: pd.Index[Any],
    lecture_index: pd.Index[Any],
    as_of: int | None,
    file: str = "events",
    times: npt.NDArray[np.int64] | None = None,
) -> _Pairs:
    """Collapse events to one weighted pair per (student, lecture); events of unknown ids are dropped."""
    n_lectures = len(lecture_index)
    empty = _Pairs(
        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
        np.zeros(0, np.int64),
    )  # fmt: skip
    if len(events) == 0:
        return empty
    for col in ("student_id", "lecture_id", "type", "occurred_at"):
        if col not in events.column_names:
            raise SchemaError(file, col, [], f"column '{col}' is missing")
    # narrow codes (an event's type in a byte, its student and lecture in four): at 1 M students the
    # training side is 50 M events, each int64 column of them 400 MB
    type_code = positions(EVENT_TYPES, events["type"]).astype(np.int8)
    bad = np.flatnonzero(type_code < 0)
    if bad.size:
        value = events["type"][int(bad[0])].as_py()
        expected = ", ".join(EVENT_TYPES)
        raise SchemaError(
            file, "type", bad.tolist(), f"unknown event type '{value}': expected one of {expected}"
        )
    t = _utc_seconds(events, file) if times is None else times
    s = _narrow(positions(student_index, events["student_id"]))
    lec = _narrow(positions(lecture_index, events["lecture_id"]))
    unknown_lecture = int((lec < 0).sum())
    if unknown_lecture:
        log.warning(
            "%s: %d events name lectures not in the catalogue; they are ignored", file, unknown_lecture
        )
    keep = (s >= 0) & (lec >= 0)
    if as_of is not None:
        keep &= t <= as_of
    if "progress" in events.column_names:
        progress = numpy_column(events["progress"].cast(pa.float32()))  # (a null is NaN)
        if np.isnan(progress).any():  # (as fillna)
            progress = np.where(np.isnan(progress), np.float32(0.0), progress)
    else:
        progress = np.zeros(len(events), dtype=np.float32)
    if not keep.all():  # (a training window that ends at the last event keeps every row: no copies)
        s, lec, t, type_code, progress = s[keep], lec[keep], t[keep], type_code[keep], progress[keep]
    del keep
    if s.size == 0:
        return empty

    key = s.astype(np.int64)
    key *= n_lectures
    key += lec
    del s, lec
    order = np.lexsort((t, key))  # stable: ties in time keep the table order
    key, t, type_code, progress = key[order], t[order], type_code[order], progress[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], key.size] - 1

    stage = stage_weights(type_code, progress)
    weight = pair_weights(np.maximum.reduceat(stage, starts), type_code[ends] == DROP)

    enrol_t = np.where(type_code == ENROL, t, np.iinfo(np.int64).max)
    first_enrol = np.minimum.reduceat(enrol_t, starts)
    first_any = t[starts]
    first_seen = np.where(first_enrol == np.iinfo(np.int64).max, first_any, first_enrol)
    pair_key = key[starts]
    return _Pairs(
        student=pair_key // n_lectures,
        lecture=pair_key % n_lectures,
        weight=weight.astype(np.float32),
        first_seen=first_seen,
        last_seen=t[ends],
        first_any=first_any,
    )


def _narrow(codes: npt.NDArray[np.int64]) -> npt.NDArray[np.signedinteger[Any]]:
    """Positions (-1 = unknown) as int32 when they fit (always, short of 2**31 students or lectures)."""
    return codes.astype(np.int32) if codes.size and int(codes.max()) < np.iinfo(np.int32).max else codes


def _pairs_matrix(pairs: _Pairs, values: npt.NDArray[np.float32], shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR with one stored entry per pair (explicit zeros kept, so all matrices share one structure)."""
    counts = np.bincount(pairs.student, minlength=shape[0])
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx_dtype = np.int32 if max(shape[1], pairs.student.size) < np.iinfo(np.int32).max else np.int64
    return sp.csr_matrix(
        (values.astype(np.float32), pairs.lecture.astype(idx_dtype), indptr.astype(idx_dtype)), shape=shape
    )


def _sequences(pairs: _Pairs, n_students: int) -> tuple[npt.NDArray[np.int32], ...]:
    """Per student, lecture rows in order of first enrolment (ties: lecture row)."""
    order = np.lexsort((pairs.lecture, pairs.first_seen, pairs.student))
    lectures = pairs.lecture[order].astype(np.int32)
    bounds = np.zeros(n_students + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs.student, minlength=n_students), out=bounds[1:])
    # views into one array: no per-student copy
    return tuple(lectures[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


# ----------------------------------------------------------------------------------------------------------
# student side features


def _student_column_pairs(
    students: pd.DataFrame,
) -> list[tuple[str, npt.NDArray[np.int64], npt.NDArray[np.int64], list[str]]]:
    """Per feature column present: (column, rows, codes, distinct values); nulls dropped, lists exploded."""
    out = []
    for column in STUDENT_FEATURE_COLUMNS:
        if column in students.columns:
            out.append((column, *_coded_pairs(students[column], lists=column == "interest_subjects")))
    return out


def _student_feature_vocabulary(students: pd.DataFrame) -> tuple[str, ...]:
    names: list[str] = []
    for column, _, codes, uniques in _student_column_pairs(students):
        present = np.unique(codes)
        names.extend(f"{column}={v}" for v in _sorted_unique(uniques[c] for c in present.tolist()))
    return tuple(names)


def _encode_students(
    students: pd.DataFrame, vocabulary: Sequence[str], n_rows: int, rows_of_table: npt.NDArray[np.int64]
) -> sp.csr_matrix:
    position = {name: i for i, name in enumerate(vocabulary)}
    all_rows: list[npt.NDArray[np.int64]] = []
    all_cols: list[npt.NDArray[np.int64]] = []
    for column, rows, codes, uniques in _student_column_pairs(students):
        if not codes.size:
            continue
        lookup = np.array([position.get(f"{column}={u}", -1) for u in uniques], dtype=np.int64)
        all_rows.append(rows_of_table[rows])
        all_cols.append(lookup[codes])
    if not all_rows:
        return sp.csr_matrix((n_rows, len(vocabulary)), dtype=np.float32)
    return _multi_hot(np.concatenate(all_rows), np.concatenate(all_cols), (n_rows, len(vocabulary)))


# ----------------------------------------------------------------------------------------------------------
# training data and batches


def build_training_data(
    students: pd.DataFrame,
    lectures: pd.DataFrame,
    events: pd.DataFrame | pa.Table,
    *,
    as_of: datetime | None = None,
) -> TrainingData:
    """Id maps, interaction/recency matrices, sequences and side features for fitting recommenders.

    Args:
        students: students table (`features.schemas.STUDENTS` columns; profile columns optional).
        lectures: lectures table (`features.schemas.LECTURES`).
        events: events table (`features.schemas.EVENTS`; Arrow, `features.event_table`, or pandas);
            events naming unknown lectures are ignored (logged), events after `as_of` are ignored.
        as_of: end of the training window (default: the latest event). `age_days` counts from here.

    Returns:
        The training data. Students = the students table (its order) then students found only in
        events (sorted); the latter have no side features and region/grade -1.

    Raises:
        SchemaError: duplicate ids, a missing column, an unknown event type or a bad timestamp.
    """
    import pandas as pd

    for col in ("student_id", "region", "grade"):
        if col not in students.columns:
            raise SchemaError("students", col, [], f"column '{col}' is missing")
    students = students.reset_index(drop=True)
    table_ids = _unique_ids(students["student_id"], "students", "student_id")
    student_regions = students["region"].dropna().astype(str).unique().tolist()
    licence_regions: list[str] = []
    if "regions" in lectures.columns:
        _, vals = _explode(lectures["regions"])
        licence_regions = [v for v in set(vals.tolist()) if v != ALL_REGIONS]
    catalogue = build_catalogue(lectures, _sorted_unique([*student_regions, *licence_regions]), GRADES)

    known = set(table_ids)
    extra: list[str] = []
    events = as_event_table(events)
    if len(events):
        if "student_id" not in events.column_names:
            raise SchemaError("events", "student_id", [], "column 'student_id' is missing")
        extra = sorted(x for x in used_text(events["student_id"]).tolist() if x not in known)
    student_map = IdMap(tuple(table_ids + extra))
    n_students, n_lectures = len(student_map), len(catalogue.lectures)
    student_index = pd.Index(list(student_map.ids))
    lecture_index = pd.Index(list(catalogue.lectures.ids))

    if len(events) and "occurred_at" not in events.column_names:
        raise SchemaError("events", "occurred_at", [], "column 'occurred_at' is missing")
    times = _utc_seconds(events, "events") if len(events) else np.zeros(0, np.int64)
    # the training window ends at as_of, else at the latest event
    end = _as_of_seconds(as_of) if as_of is not None else (int(times.max()) if times.size else 0)
    pairs = _aggregate_events(events, student_index, lecture_index, end, times=times)
    shape = (n_students, n_lectures)
    interactions = _pairs_matrix(pairs, pairs.weight, shape)
    age = np.maximum((end - pairs.last_seen) / _SECONDS_PER_DAY, 0.0).astype(np.float32)
    age_days = _pairs_matrix(pairs, age, shape)
    first_age = np.maximum((end - pairs.first_any) / _SECONDS_PER_DAY, 0.0).astype(np.float32)

    vocabulary = _student_feature_vocabulary(students)
    student_features = _encode_students(
        students, vocabulary, n_students, np.arange(len(students), dtype=np.int64)
    )

    region = np.full(n_students, -1, dtype=np.int32)
    grade = np.full(n_students, -1, dtype=np.int32)
    region[: len(students)] = positions(catalogue.regions.index, students["region"])
    grade[: len(students)] = positions(catalogue.grades.index, students["grade"])
    return TrainingData(
        students=student_map,
        catalogue=catalogue,
        interactions=interactions,
        age_days=age_days,
        sequences=_sequences(pairs, n_students),
        first_age_days=_pairs_matrix(pairs, first_age, shape),
        student_features=student_features,
        student_feature_names=vocabulary,
        region=region,
        grade=grade,
    )


def _build_batch(
    student_map: IdMap,
    catalogue: Catalogue,
    feature_names: Sequence[str],
    students: pd.DataFrame,
    events: pd.DataFrame | pa.Table,
) -> StudentBatch:
    import pandas as pd

    if "student_id" not in students.columns:
        raise SchemaError("students", "student_id", [], "column 'student_id' is missing")
    students = students.reset_index(drop=True)
    ids = _unique_ids(students["student_id"], "students", "student_id")
    b = len(ids)
    batch_index = pd.Index(ids)
    index = positions(student_map.index, batch_index).astype(np.int32)
    pairs = _aggregate_events(
        as_event_table(events), batch_index, pd.Index(list(catalogue.lectures.ids)), None
    )
    shape = (b, len(catalogue.lectures))
    features = _encode_students(students, feature_names, b, np.arange(b, dtype=np.int64))

    def lookup(column: str, vocab: IdMap) -> npt.NDArray[np.int32]:
        if column not in students.columns:
            return np.full(b, -1, dtype=np.int32)
        return positions(vocab.index, students[column]).astype(np.int32)

    region = lookup("region", catalogue.regions)
    # "*" is the licence row of unknown regions, never a student's region
    region[region == catalogue.regions.get(ALL_REGIONS)] = -1
    return StudentBatch(
        index=index,
        history=_pairs_matrix(pairs, pairs.weight, shape),
        recent=_sequences(pairs, b),
        features=features,
        region=region,
        grade=lookup("grade", catalogue.grades),
    )


def build_batch(data: TrainingData, students: pd.DataFrame, events: pd.DataFrame | pa.Table) -> StudentBatch:
    """A batch of arbitrary students (known or not) to score, with the history in `events`.

    Args:
        data: the training data the model was fitted on (id maps, catalogue, feature vocabulary).
        students: the students to score, one row each (`student_id`, `region`, `grade`, profile).
        events: everything the students did that should count as history (training and later
            events alike); may be empty (cold start from features only). Events of other students
            and of unknown lectures are ignored.

    Returns:
        The batch; `index` -1 for students not in `data`, region/grade -1 when not in the catalogue.
    """
    return _build_batch(data.students, data.catalogue, data.student_feature_names, students, events)


def build_batch_for_model(
    model: Recommender, students: pd.DataFrame, events: pd.DataFrame | pa.Table
) -> StudentBatch:
    """`build_batch` against a fitted or loaded model instead of its training data.

    Args:
        model: a fitted (or loaded) recommender.
        students: the students to score.
        events: their history.

    Returns:
        The batch.
    """
    return _build_batch(model.students, model.catalogue, model.student_feature_names, students, events)
