"""Dataset directories: round trip (Korean text), atomic replacement, fingerprints, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import DatasetNotFoundError, SchemaError
from features.schemas import EVENTS, LECTURES, STUDENTS
from features.tables import (
    MANIFEST_FILE,
    TABLE_FILES,
    Dataset,
    append_events,
    event_table_order,
    read_dataset,
    sort_events,
    write_dataset,
)


def dataset() -> Dataset:
    students = pd.DataFrame(
        {
            "student_id": ["학생-001", "s2"],
            "region": ["seoul", "taebaek"],
            "grade": ["h1", "oos"],
            "interest_subjects": [["수학", "과학"], None],
            "target_exam": ["수능", "검정고시"],
        }
    )
    lectures = pd.DataFrame(
        {
            "lecture_id": ["국어-1", "l2"],
            "title": ["수능 국어 문학 완성 (1강)", "중학 영어 🙂 기초"],
            "provider": ["EBS", "메가스터디"],
            "subject": ["국어", "영어"],
            "grades": [["h1", "h2", "h3"], ["m1", "oos"]],
            "regions": [["*"], ["seoul", "taebaek"]],
            "series_id": ["국어-문학", "eng"],
            "series_position": [1, 3],
            "duration_min": [50.0, 25.0],
            "level": [2, 1],
        }
    )
    events = pd.DataFrame(
        {
            "event_id": ["b", "a", "c", "d"],
            "student_id": ["학생-001", "학생-001", "s2", "s2"],
            "lecture_id": ["국어-1", "국어-1", "l2", "l2"],
            "type": ["progress", "enrol", "enrol", "complete"],
            "progress": [0.4, 0.0, 0.0, 1.0],
            "occurred_at": pd.to_datetime(
                [
                    "2025-03-02T10:00:00Z",
                    "2025-03-01T09:00:00Z",
                    "2025-03-02T10:00:00Z",
                    "2025-03-05T10:00:00Z",
                ],
                utc=True,
            ),
            "request_id": ["요청-1", None, None, None],
        }
    )
    return Dataset(students, lectures, events, {"name": "서울런 샘플", "note": "한국어 메모"})


def test_round_trip_keeps_korean_text_exact_schemas_and_sorts_events(tmp_path: Path) -> None:
    ds = dataset()
    out = write_dataset(ds, tmp_path / "ds")
    back = read_dataset(out)
    assert back.students.loc[0, "student_id"] == "학생-001"
    assert back.students.loc[0, "interest_subjects"] == ["수학", "과학"]
    assert back.lectures["title"].tolist() == ["수능 국어 문학 완성 (1강)", "중학 영어 🙂 기초"]
    assert back.lectures.loc[0, "series_id"] == "국어-문학"
    # sorted by (occurred_at, event_id): "b" and "c" share a timestamp
    assert back.events["event_id"].tolist() == ["a", "b", "c", "d"]
    assert back.events.loc[1, "request_id"] == "요청-1"
    assert back.manifest["name"] == "서울런 샘플"
    assert back.manifest["sizes"] == {"students": 2, "lectures": 2, "events": 4}
    assert back.manifest["fingerprint"] == ds.fingerprint() == back.fingerprint()
    # UTF-8 manifest with the Korean text as is (ensure_ascii=False)
    raw = (out / MANIFEST_FILE).read_bytes()
    assert "서울런 샘플".encode() in raw and b"\\u" not in raw
    for name, schema in (("students", STUDENTS), ("lectures", LECTURES), ("events", EVENTS)):
        assert pq.read_schema(out / TABLE_FILES[name]).equals(schema, check_metadata=False)


def test_read_without_validation_gives_the_same_tables(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    checked, unchecked = read_dataset(out), read_dataset(out, validate=False)
    for name in ("students", "lectures", "events"):
        pd.testing.assert_frame_equal(getattr(checked, name), getattr(unchecked, name))


def test_fingerprint_depends_on_content_not_row_order() -> None:
    ds = dataset()
    shuffled = Dataset(
        ds.students.iloc[::-1], ds.lectures, ds.events.iloc[[2, 0, 3, 1]], {"other": "manifest"}
    )
    assert shuffled.fingerprint() == ds.fingerprint()
    changed = dataset()
    changed.events.loc[0, "progress"] = 0.41
    assert changed.fingerprint() != ds.fingerprint()
    renamed = dataset()
    renamed.lectures.loc[1, "title"] = "중학 영어 기초"
    assert renamed.fingerprint() != ds.fingerprint()


def test_sizes() -> None:
    assert dataset().sizes == {"students": 2, "lectures": 2, "events": 4}


def test_overwrite_replaces_dataset_and_leaves_no_temporary_directories(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    write_dataset(dataset(), target)
    smaller = dataset()
    smaller.events = smaller.events.iloc[:2]
    write_dataset(smaller, target)
    assert read_dataset(target).sizes["events"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failed_write_leaves_the_old_dataset_intact(tmp_path: Path) -> None:
    """A write that fails half-way (events cannot be stored) must not touch the dataset already there."""
    target = tmp_path / "ds"
    write_dataset(dataset(), target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    broken = read_dataset(target)  # complete tables: students and lectures are written to the temp dir ...
    broken.students = broken.students.iloc[:1]
    broken.events["progress"] = pd.Series(["half", 0.0, 0.0, 1.0], dtype=object)  # ... then events fail
    with pytest.raises(SchemaError) as info:
        write_dataset(broken, target, validate=False)
    assert info.value.file == "events.parquet"
    after = {p.name: p.read_bytes() for p in target.iterdir()}
    assert after == before
    assert read_dataset(target).sizes == dataset().sizes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_write_validates_first_and_writes_nothing_on_error(tmp_path: Path) -> None:
    bad = dataset()
    bad.events.loc[2, "type"] = "watch"
    with pytest.raises(SchemaError, match=r"events: row 3, column 'type': unknown type 'watch'"):
        write_dataset(bad, tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"nowhere does not exist"):
        read_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "missing", ["students.parquet", "lectures.parquet", "events.parquet", "manifest.json"]
)
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    (out / missing).unlink()
    with pytest.raises(DatasetNotFoundError, match=rf"{missing} is missing"):
        read_dataset(out)


def test_corrupt_parquet_is_a_schema_error(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    (out / "lectures.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match=r"lectures.parquet.*not a readable Parquet file"):
        read_dataset(out)


def test_corrupt_manifest_is_a_schema_error(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    (out / MANIFEST_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"manifest.json.*not valid UTF-8 JSON"):
        read_dataset(out)


def test_hand_edited_file_with_a_broken_row_names_file_row_and_column(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    events = pq.read_table(out / "events.parquet")
    types = events.column("type").to_pylist()
    types[2] = "finished"
    events = events.set_column(events.schema.get_field_index("type"), "type", pa.array(types))
    pq.write_table(events, out / "events.parquet")
    with pytest.raises(SchemaError) as info:
        read_dataset(out)
    message = str(info.value)
    assert message.startswith(str(out / "events.parquet"))
    assert "row 3, column 'type': unknown type 'finished'" in message


def test_events_written_out_of_order_are_sorted_on_read(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    table = pq.read_table(out / "events.parquet")
    pq.write_table(table.take([3, 2, 1, 0]), out / "events.parquet")
    assert read_dataset(out).events["event_id"].tolist() == ["a", "b", "c", "d"]


def test_sort_events_breaks_timestamp_ties_by_event_id() -> None:
    ev = dataset().events.iloc[[0, 2]]  # same timestamp, ids "b" then "c"
    assert sort_events(ev)["event_id"].tolist() == ["b", "c"]
    assert sort_events(ev.iloc[::-1])["event_id"].tolist() == ["b", "c"]


def test_events_held_by_arrow_sort_as_in_pandas(tmp_path: Path) -> None:
    """`event_table_order` (a partition's events) gives `sort_events`' order, ties by event id."""
    out = write_dataset(dataset(), tmp_path / "ds")
    table = pq.read_table(out / "events.parquet")
    for rows in ([3, 2, 1, 0], [2, 0, 3, 1], [0, 2, 1, 3]):
        shuffled = table.take(rows)
        expected = sort_events(shuffled.to_pandas())["event_id"].tolist()
        order = event_table_order(shuffled)
        assert order is not None
        assert shuffled.take(order)["event_id"].to_pylist() == expected == ["a", "b", "c", "d"]
    assert event_table_order(table) is None  # in order already


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    target.write_text("x")
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        write_dataset(dataset(), target)


def test_manifest_is_plain_json_object(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["format"] == "learnrec-dataset/1"
    assert manifest["note"] == "한국어 메모"


def test_missing_directory_points_to_a_copy_set_aside_by_an_interrupted_write(tmp_path: Path) -> None:
    target = write_dataset(dataset(), tmp_path / "ds")
    target.rename(tmp_path / ".ds.old-1234abcd")  # what a crash between the two renames leaves
    with pytest.raises(DatasetNotFoundError, match=r"set aside at .*\.ds\.old-1234abcd"):
        read_dataset(target)


def test_event_ids_and_types_are_read_as_integer_codes_in_text_order(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    events = read_dataset(out).events
    for column in ("student_id", "lecture_id", "type"):
        dtype = events[column].dtype
        assert isinstance(dtype, pd.CategoricalDtype), column
        assert list(dtype.categories) == sorted(dtype.categories), column
    # the codes decode to the text of the file, and sorting by the column sorts by that text
    assert events["student_id"].astype(str).tolist() == ["학생-001", "학생-001", "s2", "s2"]
    order = events.sort_values("student_id", kind="stable")["student_id"].astype(str).tolist()
    assert order == sorted(order)
    # event ids are Arrow-backed text (no Python object per id); they round-trip as written
    assert isinstance(events["event_id"].dtype, pd.StringDtype)
    again = write_dataset(read_dataset(out), tmp_path / "again")
    assert read_dataset(again).fingerprint() == dataset().fingerprint()


def test_a_broken_row_of_a_dictionary_encoded_file_names_file_row_and_column(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    events = pq.read_table(out / "events.parquet")
    lectures = events.column("lecture_id").to_pylist()
    lectures[3] = "   "
    coded = pa.array(lectures).dictionary_encode()
    events = events.set_column(events.schema.get_field_index("lecture_id"), "lecture_id", coded)
    pq.write_table(events, out / "events.parquet")
    with pytest.raises(SchemaError) as info:
        read_dataset(out)
    assert str(info.value).startswith(str(out / "events.parquet"))
    assert "row 4, column 'lecture_id': empty lecture_id" in str(info.value)
    lectures[3] = "l9"
    coded = pa.array(lectures).dictionary_encode()
    events = events.set_column(events.schema.get_field_index("lecture_id"), "lecture_id", coded)
    pq.write_table(events, out / "events.parquet")
    with pytest.raises(SchemaError, match="row 4, column 'lecture_id': unknown lecture_id 'l9'"):
        read_dataset(out)


def test_a_repeated_event_id_is_named_with_its_rows(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    events = pq.read_table(out / "events.parquet")
    ids = events.column("event_id").to_pylist()
    ids[3] = ids[1]
    events = events.set_column(events.schema.get_field_index("event_id"), "event_id", pa.array(ids))
    pq.write_table(events, out / "events.parquet")
    with pytest.raises(SchemaError, match=r"rows 2, 4\): ids must be unique"):
        read_dataset(out)


def test_appended_events_keep_their_codes_in_text_order(tmp_path: Path) -> None:
    """Appending plain rows to the coded events `read_dataset` gives: the ids stay coded, the new ids take
    codes in text order, and the table is the plain concatenation (same fingerprint)."""
    base = read_dataset(write_dataset(dataset(), tmp_path / "ds"))
    more = pd.DataFrame(
        {
            "event_id": ["e", "f"],
            "student_id": ["a-new", "s2"],  # a new id that sorts first, and a known one
            "lecture_id": ["l2", "국어-1"],
            "type": ["enrol", "enrol"],
            "progress": [0.0, 0.0],
            "occurred_at": pd.to_datetime(["2025-03-06T10:00:00Z", "2025-03-07T10:00:00Z"], utc=True),
            "request_id": [None, "요청-2"],
        }
    )
    out = append_events(base.events, more[list(reversed(more.columns))])
    for column in ("student_id", "lecture_id", "type"):
        dtype = out[column].dtype
        assert isinstance(dtype, pd.CategoricalDtype), column
        assert list(dtype.categories) == sorted(dtype.categories), column
    assert out["student_id"].astype(str).tolist() == [*base.events["student_id"].astype(str), "a-new", "s2"]
    plain = pd.concat(
        [base.events.astype({"student_id": object, "lecture_id": object, "type": object}), more]
    )
    students = pd.concat(
        [base.students, pd.DataFrame({"student_id": ["a-new"], "region": ["seoul"], "grade": ["h1"]})]
    )
    assert (
        Dataset(students, base.lectures, out, {}).fingerprint()
        == Dataset(students, base.lectures, plain.reset_index(drop=True), {}).fingerprint()
    )
    assert len(base.events) == 4  # the base table is left as it was
