"""Validation rules of the three tables: each rule has a broken table whose error names file, row, column."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.errors import SchemaError
from features.event_table import as_event_table
from features.schemas import EVENTS, GRADES, LECTURES, STUDENTS
from features.validation import (
    default_progress,
    generated_event_id_column,
    generated_event_ids,
    validate_events,
    validate_lectures,
    validate_students,
)


def students() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "student_id": ["s1", "s2", "s3"],
            "region": ["seoul", "taebaek", "gimpo"],
            "grade": ["h1", "m3", "oos"],
            "interest_subjects": [["수학", "영어"], None, []],
            "target_exam": ["수능", None, "검정고시"],
        }
    )


def lectures() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lecture_id": ["l1", "l2", "l3"],
            "title": ["수학의 정석 1강", "영어 독해", "한국사 개념"],
            "provider": ["EBS", "메가스터디", "EBS"],
            "subject": ["수학", "영어", "한국사"],
            "grades": [["h1", "h2"], ["m3"], list(GRADES)],
            "level": [1, 2, 3],
            "series_id": ["math", "eng", "hist"],
            "series_position": [1, 1, 2],
            "duration_min": [45.0, 30.5, 50.0],
            "regions": [["*"], ["seoul", "gimpo"], ["taebaek"]],
            "active": [True, True, False],
        }
    )


def events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4"],
            "student_id": ["s1", "s1", "s2", "s3"],
            "lecture_id": ["l1", "l1", "l2", "l3"],
            "type": ["enrol", "progress", "complete", "drop"],
            "progress": [0.0, 0.5, 1.0, 0.0],
            "occurred_at": pd.to_datetime(
                [
                    "2025-03-01T09:00:00Z",
                    "2025-03-02T09:00:00Z",
                    "2025-03-03T00:00:00Z",
                    "2025-03-04T00:00:00Z",
                ],
                utc=True,
            ),
            "request_id": [None, "r1", None, None],
        }
    )


def _error(fn: Callable[[], Any]) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        fn()
    return info.value


def _assert_names(err: SchemaError, file: str, row: int | None, column: str, *fragments: str) -> None:
    message = str(err)
    assert err.file == file and message.startswith(f"{file}: ")
    assert err.column == column and f"column '{column}'" in message
    if row is None:
        assert err.rows == []
    else:
        assert err.rows[0] == row
        assert f"row {row}" in message or f"rows {row}" in message
    for fragment in fragments:
        assert fragment in message, message


# ------------------------------------------------------------------------------------------------ happy path


def test_valid_tables_come_back_with_exact_schema_columns_and_dtypes() -> None:
    s = validate_students(students(), "students.csv")
    lec = validate_lectures(lectures(), "lectures.csv")
    ev = validate_events(events(), "events.csv", student_ids=s["student_id"], lecture_ids=lec["lecture_id"])
    assert list(s.columns) == STUDENTS.names
    assert list(lec.columns) == LECTURES.names
    assert list(ev.columns) == EVENTS.names
    assert str(s["student_id"].dtype) == "str"
    assert s.loc[0, "interest_subjects"] == ["수학", "영어"] and s.loc[1, "interest_subjects"] is None
    assert pd.isna(s.loc[0, "age_band"])
    assert lec["level"].dtype == np.int8 and lec["series_position"].dtype == np.int32
    assert lec["duration_min"].dtype == np.float32 and lec["active"].dtype == bool
    assert ev["progress"].dtype == np.float32
    assert str(ev["occurred_at"].dtype) == "datetime64[us, UTC]"
    assert ev.loc[1, "request_id"] == "r1"


def test_arrow_table_input_is_accepted() -> None:
    ev = events()
    table = pa.Table.from_pandas(ev.drop(columns=["occurred_at"]), preserve_index=False).append_column(
        "occurred_at",
        pa.array(ev["occurred_at"].dt.tz_localize(None).to_numpy(), type=pa.timestamp("us", tz="UTC")),
    )
    ev = validate_events(table, "events.parquet")
    assert ev["event_id"].tolist() == ["e1", "e2", "e3", "e4"]


def test_other_time_zones_are_converted_to_utc() -> None:
    ev = events()
    ev["occurred_at"] = ev["occurred_at"].dt.tz_convert("Asia/Seoul")
    out = validate_events(ev, "events.parquet")
    assert out.loc[0, "occurred_at"] == pd.Timestamp("2025-03-01T09:00:00Z")


def test_iso_text_timestamps_with_offset_are_parsed() -> None:
    ev = events()
    ev["occurred_at"] = [
        "2025-03-01T18:00:00+09:00",
        "2025-03-02T09:00:00Z",
        "2025-03-03T00:00Z",
        "2025-03-04T00:00+00:00",
    ]
    out = validate_events(ev, "events.parquet")
    assert out.loc[0, "occurred_at"] == pd.Timestamp("2025-03-01T09:00:00Z")


def test_missing_optional_columns_get_documented_defaults() -> None:
    lec = validate_lectures(lectures()[["lecture_id", "title", "provider", "subject"]], "lectures.csv")
    assert lec.loc[0, "grades"] == list(GRADES)
    assert lec.loc[0, "regions"] == ["*"]
    assert lec.loc[1, "series_id"] == "l2" and lec.loc[1, "series_position"] == 1
    assert lec.loc[0, "level"] == 1 and lec.loc[0, "duration_min"] == 1.0 and bool(lec.loc[0, "active"])
    ev = validate_events(events().drop(columns=["event_id", "progress", "request_id"]), "events.csv")
    assert ev["progress"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert ev["event_id"].str.fullmatch(r"ev-[0-9a-f]{16}").all()
    assert ev["request_id"].isna().all()


def test_generated_event_ids_are_deterministic_and_distinguish_identical_rows() -> None:
    ev = events().drop(columns=["event_id"])
    twin = pd.concat([ev.iloc[[0]], ev.iloc[[0]]], ignore_index=True)
    first = validate_events(twin, "events.csv")["event_id"].tolist()
    again = validate_events(twin, "events.csv")["event_id"].tolist()
    assert first == again and first[0] != first[1]
    direct = generated_event_ids(
        twin["student_id"],
        twin["lecture_id"],
        twin["type"],
        twin["occurred_at"],
        default_progress(twin["type"]),
    )
    assert direct.tolist() == first  # the file's progress (0.0 for enrol) equals the default
    twin.loc[1, "lecture_id"] = "l2"
    assert validate_events(twin, "events.csv")["event_id"].tolist()[1] != first[1]


def test_generated_ids_are_the_same_for_pandas_and_arrow_columns_and_across_versions() -> None:
    """A file without event ids imported again must give its events the ids it gave them before: the ids
    are pinned (values of learnrec 39ed76c), and the Arrow path (dictionary-encoded or plain text) gives
    the pandas path's ids."""
    rng = np.random.default_rng(2)
    n = 500
    frame = pd.DataFrame(
        {
            "student_id": pd.Series([f"학생{i}" for i in rng.integers(0, 40, n)], dtype="str"),
            "lecture_id": pd.Series([f"l{i}" for i in rng.integers(0, 9, n)], dtype="str"),
            "type": pd.Series(rng.choice(["enrol", "progress", "complete"], n), dtype="str"),
            "occurred_at": pd.Series(
                pd.to_datetime(rng.integers(1.70e15, 1.75e15, n), unit="us", utc=True)
            ).astype("datetime64[us, UTC]"),
            "progress": pd.Series(rng.random(n).astype(np.float32)),
        }
    )
    pandas_ids = generated_event_ids(*(frame[c] for c in frame.columns)).tolist()
    table = as_event_table(frame)  # (pyarrow's own conversion of zone-aware times is deprecated)
    coded = [table.column(c).dictionary_encode() if i < 3 else table.column(c) for i, c in enumerate(frame)]
    assert generated_event_id_column(*coded).to_pylist() == pandas_ids
    assert generated_event_id_column(*table.columns).to_pylist() == pandas_ids
    pinned = generated_event_ids(
        pd.Series(["학생1", "s2"], dtype="str"),
        pd.Series(["l1", "강의"], dtype="str"),
        pd.Series(["enrol", "complete"], dtype="str"),
        pd.Series(
            pd.to_datetime(["2025-03-01T00:00:00.123456Z", "2025-03-02T09:00:00.000000Z"], format="ISO8601")
        ),
        pd.Series(np.array([0.0, 1.0], np.float32)),
    )
    assert pinned.tolist() == ["ev-b073f8f93ef8c7ec", "ev-203756a8f95ec875"]


def test_categorical_columns_are_read_as_their_values() -> None:
    ev = events()
    ev["type"] = ev["type"].astype("category")
    assert validate_events(ev, "events.parquet")["type"].tolist() == ["enrol", "progress", "complete", "drop"]


# ------------------------------------------------------------------------------------------------ students


def test_required_column_missing() -> None:
    err = _error(lambda: validate_students(students().drop(columns=["grade"]), "students.csv"))
    _assert_names(err, "students.csv", None, "grade", "required column 'grade' is missing", "student_id")


def test_student_id_must_be_text_not_number() -> None:
    s = students()
    s["student_id"] = [1, 2, 3]
    err = _error(lambda: validate_students(s, "students.parquet"))
    _assert_names(err, "students.parquet", 1, "student_id", "expected text, got int 1")


def test_student_ids_unique() -> None:
    s = students()
    s.loc[2, "student_id"] = "s1"
    err = _error(lambda: validate_students(s, "students.csv"))
    _assert_names(err, "students.csv", 1, "student_id", "duplicate student_id 's1'", "rows 1, 3")
    assert err.rows == [1, 3]


def test_non_nullable_column_has_no_nulls() -> None:
    s = students()
    s.loc[1, "region"] = None
    err = _error(lambda: validate_students(s, "students.csv"))
    _assert_names(err, "students.csv", 2, "region", "missing region")


def test_blank_id_rejected() -> None:
    s = students()
    s.loc[2, "student_id"] = "  "
    err = _error(lambda: validate_students(s, "students.csv"))
    _assert_names(err, "students.csv", 3, "student_id", "empty student_id")


def test_grade_must_be_known() -> None:
    s = students()
    s.loc[1, "grade"] = "h4"
    err = _error(lambda: validate_students(s, "students.csv"))
    _assert_names(err, "students.csv", 2, "grade", "unknown grade 'h4'", "m1, m2")


def test_region_must_match_pattern() -> None:
    s = students()
    s.loc[0, "region"] = "Seoul City"
    err = _error(lambda: validate_students(s, "students.csv"))
    _assert_names(err, "students.csv", 1, "region", "bad region code 'Seoul City'")


def test_student_region_cannot_be_the_all_regions_token() -> None:
    s = students()
    s.loc[2, "region"] = "*"
    err = _error(lambda: validate_students(s, "students.csv"))
    _assert_names(err, "students.csv", 3, "region", "'*'")


def test_list_column_rejects_plain_text() -> None:
    s = students()
    s["interest_subjects"] = [["수학"], "영어", None]
    err = _error(lambda: validate_students(s, "students.parquet"))
    _assert_names(err, "students.parquet", 2, "interest_subjects", "expected a list of text", "'영어'")


def test_list_column_rejects_non_text_items() -> None:
    s = students()
    s["interest_subjects"] = [["수학"], None, [1, 2]]
    err = _error(lambda: validate_students(s, "students.parquet"))
    _assert_names(err, "students.parquet", 3, "interest_subjects", "expected a list of text")


# ------------------------------------------------------------------------------------------------ lectures


def test_lecture_ids_unique() -> None:
    lec = lectures()
    lec.loc[2, "lecture_id"] = "l2"
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 2, "lecture_id", "duplicate lecture_id 'l2'")


def test_lecture_grades_values_known() -> None:
    lec = lectures()
    lec.at[1, "grades"] = ["m3", "고1"]
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 2, "grades", "unknown grades value '고1'")


def test_lecture_grades_not_empty() -> None:
    lec = lectures()
    lec.at[0, "grades"] = []
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 1, "grades", "empty list")


def test_lecture_regions_match_pattern_or_star() -> None:
    lec = lectures()
    lec.at[2, "regions"] = ["*", "Busan!"]
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 3, "regions", "bad region code 'Busan!'")


def test_level_known() -> None:
    lec = lectures()
    lec.loc[1, "level"] = 4
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 2, "level", "unknown level 4", "1, 2, 3")


def test_level_whole_number() -> None:
    lec = lectures()
    lec["level"] = [1.0, 2.5, 3.0]
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 2, "level", "expected a whole number, got 2.5")


def test_series_position_at_least_one() -> None:
    lec = lectures()
    lec.loc[2, "series_position"] = 0
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 3, "series_position", "series_position 0 is below 1")


def test_duration_positive() -> None:
    lec = lectures()
    lec.loc[0, "duration_min"] = 0.0
    lec.loc[2, "duration_min"] = -5.0
    err = _error(lambda: validate_lectures(lec, "lectures.csv"))
    _assert_names(err, "lectures.csv", 1, "duration_min", "must be greater than 0")
    assert err.rows == [1, 3]


def test_duration_text_is_an_error_not_nan() -> None:
    lec = lectures()
    lec["duration_min"] = [45.0, "30", 50.0]
    err = _error(lambda: validate_lectures(lec, "lectures.parquet"))
    _assert_names(err, "lectures.parquet", 2, "duration_min", "expected a number, got text '30'")


def test_active_must_be_boolean() -> None:
    lec = lectures()
    lec["active"] = [True, "yes", False]
    err = _error(lambda: validate_lectures(lec, "lectures.parquet"))
    _assert_names(err, "lectures.parquet", 2, "active", "expected true or false, got text 'yes'")


# ------------------------------------------------------------------------------------------------ events


def test_event_ids_unique() -> None:
    ev = events()
    ev.loc[3, "event_id"] = "e2"
    err = _error(lambda: validate_events(ev, "events.csv"))
    _assert_names(err, "events.csv", 2, "event_id", "duplicate event_id 'e2'")


def test_event_type_known() -> None:
    ev = events()
    ev.loc[2, "type"] = "finish"
    err = _error(lambda: validate_events(ev, "events.csv"))
    _assert_names(err, "events.csv", 3, "type", "unknown type 'finish'", "enrol, progress, complete, drop")


def test_progress_text_is_an_error_not_coerced() -> None:
    ev = events()
    ev["progress"] = [0.0, "0.5", 1.0, 0.0]
    err = _error(lambda: validate_events(ev, "events.parquet"))
    _assert_names(err, "events.parquet", 2, "progress", "expected a number, got text '0.5'")


def test_progress_in_unit_interval() -> None:
    ev = events()
    ev.loc[1, "progress"] = 1.5
    err = _error(lambda: validate_events(ev, "events.csv"))
    _assert_names(err, "events.csv", 2, "progress", "progress 1.5 is outside 0..1")


def test_progress_not_null() -> None:
    ev = events()
    ev.loc[3, "progress"] = np.nan
    err = _error(lambda: validate_events(ev, "events.parquet"))
    _assert_names(err, "events.parquet", 4, "progress", "missing progress")


def test_naive_timestamps_rejected() -> None:
    ev = events()
    ev["occurred_at"] = ev["occurred_at"].dt.tz_localize(None)
    err = _error(lambda: validate_events(ev, "events.parquet"))
    _assert_names(err, "events.parquet", None, "occurred_at", "no time zone")


def test_unparseable_timestamp_text() -> None:
    ev = events()
    ev["occurred_at"] = ["2025-03-01T09:00:00Z", "yesterday", "2025-03-03T00:00:00Z", "2025-03-04T00:00:00Z"]
    err = _error(lambda: validate_events(ev, "events.parquet"))
    _assert_names(err, "events.parquet", 2, "occurred_at", "cannot read 'yesterday'")


@pytest.mark.parametrize("naive", ["2025-03-03 00:00:00", "2025-03-03"])  # (a date's `-03` is the day)
def test_timestamp_text_without_zone_rejected(naive: str) -> None:
    ev = events()
    ev["occurred_at"] = ["2025-03-01T09:00:00Z", "2025-03-02T09:00:00-01", naive, "2025-03-04T00:00:00Z"]
    err = _error(lambda: validate_events(ev, "events.parquet"))
    _assert_names(err, "events.parquet", 3, "occurred_at", "has no time zone")


def test_timestamp_numbers_rejected() -> None:
    ev = events()
    ev["occurred_at"] = [1_740_000_000, 1_740_000_001, 1_740_000_002, 1_740_000_003]
    err = _error(lambda: validate_events(ev, "events.parquet"))
    _assert_names(err, "events.parquet", 1, "occurred_at", "expected timestamps, got int")


def test_event_student_must_be_known() -> None:
    ev = events()
    ev.loc[3, "student_id"] = "ghost"
    err = _error(lambda: validate_events(ev, "events.csv", student_ids=["s1", "s2", "s3"]))
    _assert_names(err, "events.csv", 4, "student_id", "unknown student_id 'ghost'", "students table")


def test_event_lecture_must_be_known() -> None:
    ev = events()
    ev.loc[0, "lecture_id"] = "l404"
    err = _error(lambda: validate_events(ev, "events.csv", lecture_ids=pd.Index(["l1", "l2", "l3"])))
    _assert_names(err, "events.csv", 1, "lecture_id", "unknown lecture_id 'l404'", "lectures table")


def test_many_bad_rows_are_counted_in_the_message() -> None:
    ev = pd.concat([events()] * 3, ignore_index=True)
    ev["event_id"] = [f"e{i}" for i in range(len(ev))]
    ev["type"] = "view"
    err = _error(lambda: validate_events(ev, "events.csv"))
    assert err.rows == list(range(1, 13))
    assert "rows 1, 2, 3, 4, 5 (and 7 more)" in str(err)


def test_duplicate_column_names_rejected() -> None:
    ev = events()
    ev.columns = ["event_id", "student_id", "lecture_id", "type", "progress", "occurred_at", "type"]
    err = _error(lambda: validate_events(ev, "events.csv"))
    _assert_names(err, "events.csv", None, "type", "more than once")


def test_epoch_microseconds_round_down_on_pandas_and_arrow() -> None:
    """Nanoseconds are dropped toward the past on both sides, before 1970 too."""
    from features.validation import epoch_microseconds

    times = pd.Series(
        pd.to_datetime(["1969-12-31T23:59:59.9999985Z", "1970-01-01T00:00:00.0000015Z"], format="ISO8601")
    )
    arrow = pa.array(times.dt.tz_convert(None).to_numpy(), pa.timestamp("ns")).cast(pa.timestamp("ns", "UTC"))
    assert epoch_microseconds(times).tolist() == epoch_microseconds(arrow).tolist() == [-2, 1]


@pytest.mark.parametrize("collide", [False, True])
def test_distinct_text_is_found_by_hash_and_confirmed_exactly(monkeypatch: pytest.MonkeyPatch, collide: bool):
    """Arrow text is checked by sorting 64-bit hashes; equal hashes (forced here: every value one hash)
    are only a suspicion, settled by comparing the values, so distinct ids are never called repeats and
    a real repeat is always found, its rows named."""
    import features.fingerprint
    import features.stored_events as stored
    from features.validation import all_distinct

    if collide:
        monkeypatch.setattr(
            features.fingerprint, "text_hashes", lambda values: np.zeros(len(values), dtype=np.uint64)
        )
    ids = pa.chunked_array([pa.array(["e1", "학생-2", None]), pa.array(["e3", "e4"])])
    assert all_distinct(ids)
    assert all_distinct(pd.Series(["e1", "e2", None], dtype="str"))
    stored._check_unique_ids("events.parquet", pa.chunked_array([pa.array(["e1", "e2"]), pa.array(["e3"])]))
    repeated = pa.chunked_array([pa.array(["e1", "e2"]), pa.array(["e3", "e2"])])
    assert not all_distinct(repeated)
    with pytest.raises(SchemaError, match=r"rows? .*4.*duplicate event_id 'e2'"):
        stored._check_unique_ids("events.parquet", repeated)
