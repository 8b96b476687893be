"""Dataset directories: round trip (Korean text), atomic replacement, fingerprints, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.errors import DatasetNotFoundError, SchemaError
from features.event_table import (
    as_event_table,
    concat_events,
    event_microseconds,
    event_ticks,
    rows_where,
    take_ascending,
    take_rows,
)
from features.ids import used_text
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
    assert back.events["event_id"].to_pylist() == ["a", "b", "c", "d"]
    assert back.events.to_pandas().loc[1, "request_id"] == "요청-1"
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
    for name in ("students", "lectures"):
        pd.testing.assert_frame_equal(getattr(checked, name), getattr(unchecked, name))
    # the events are Arrow tables: the same columns, each of the same type (dictionaries included) and values
    assert checked.events.column_names == unchecked.events.column_names
    for column in checked.events.column_names:
        assert checked.events[column].equals(unchecked.events[column]), column
    pd.testing.assert_frame_equal(checked.events.to_pandas(), unchecked.events.to_pandas())


def test_fingerprint_depends_on_content_not_row_order() -> None:
    ds = dataset()
    shuffled = Dataset(
        ds.students.iloc[::-1], ds.lectures, ds.events.to_pandas().iloc[[2, 0, 3, 1]], {"other": "manifest"}
    )
    assert shuffled.fingerprint() == ds.fingerprint()
    changed = _with_event_cell(dataset(), 0, "progress", 0.41)
    assert changed.fingerprint() != ds.fingerprint()
    renamed = dataset()
    renamed.lectures.loc[1, "title"] = "중학 영어 기초"
    assert renamed.fingerprint() != ds.fingerprint()


def _with_event_cell(ds: Dataset, row: int, column: str, value: object) -> Dataset:
    """`ds` with one event cell changed: the events read into pandas, edited, handed back to a `Dataset`."""
    events = ds.events.to_pandas()
    events.loc[row, column] = value
    return Dataset(ds.students, ds.lectures, events, ds.manifest)


def test_sizes() -> None:
    assert dataset().sizes == {"students": 2, "lectures": 2, "events": 4}


def test_overwrite_replaces_dataset_and_leaves_no_temporary_directories(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    write_dataset(dataset(), target)
    full = dataset()
    smaller = Dataset(full.students, full.lectures, full.events.to_pandas().iloc[:2], full.manifest)
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
    held = broken.events  # ... then events fail: a progress Arrow cannot store as a number
    events = held.set_column(
        held.column_names.index("progress"), "progress", pa.array(["half", "0", "0", "1"])
    )
    broken = Dataset(broken.students, broken.lectures, events, broken.manifest)
    with pytest.raises(SchemaError) as info:
        write_dataset(broken, target, validate=False)
    assert info.value.file == "events.parquet"
    after = {p.name: p.read_bytes() for p in target.iterdir()}
    assert after == before
    assert read_dataset(target).sizes == dataset().sizes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_write_validates_first_and_writes_nothing_on_error(tmp_path: Path) -> None:
    bad = _with_event_cell(dataset(), 2, "type", "watch")
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
    assert read_dataset(out).events["event_id"].to_pylist() == ["a", "b", "c", "d"]


def test_sort_events_breaks_timestamp_ties_by_event_id() -> None:
    ev = dataset().events.to_pandas().iloc[[0, 2]]  # same timestamp, ids "b" then "c"
    assert sort_events(ev)["event_id"].to_pylist() == ["b", "c"]
    assert sort_events(ev.iloc[::-1])["event_id"].to_pylist() == ["b", "c"]
    # held by Arrow, the same order
    table = dataset().events.take([2, 0])
    assert sort_events(table)["event_id"].to_pylist() == ["b", "c"]


def test_events_held_by_arrow_sort_as_in_pandas(tmp_path: Path) -> None:
    """`event_table_order` (a partition's events) gives `sort_events`' order, ties by event id."""
    out = write_dataset(dataset(), tmp_path / "ds")
    table = pq.read_table(out / "events.parquet")
    for rows in ([3, 2, 1, 0], [2, 0, 3, 1], [0, 2, 1, 3]):
        shuffled = table.take(rows)
        expected = sort_events(shuffled.to_pandas())["event_id"].to_pylist()
        order = event_table_order(shuffled)
        assert order is not None
        assert shuffled.take(order)["event_id"].to_pylist() == expected == ["a", "b", "c", "d"]
    assert event_table_order(table) is None  # in order already


def test_events_in_time_order_have_only_their_ties_put_in_id_order() -> None:
    """A table already in time order (a file whose ids were generated) keeps its untied rows where they
    are and orders each run of equal times by id: the rows a full sort gives, with their other columns."""
    rng = np.random.default_rng(4)
    for seed in range(40):
        n = int(rng.integers(2, 80))
        times = np.sort(rng.integers(0, n // 2 + 1, n)) * 10**6
        ids = [f"ev-{int(v):04d}" for v in rng.permutation(n)]
        table = pa.table(
            {
                "event_id": ids,
                "occurred_at": pa.array(times, pa.timestamp("us", tz="UTC")),
                "row": pa.array(np.arange(n)).dictionary_encode(),
            }
        )
        full = table.take(pc.sort_indices(table, [("occurred_at", "ascending"), ("event_id", "ascending")]))
        got = sort_events(table)
        assert got.to_pylist() == full.to_pylist(), seed
        untied = np.flatnonzero(
            (np.diff(times, prepend=-1) != 0) & (np.diff(times, append=times[-1] + 1) != 0)
        )
        assert all(got["row"][int(i)].as_py() == int(i) for i in untied)


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


def _assert_coded_text(events: pa.Table, column: str) -> None:
    """`column` is dictionary-encoded text: an integer code per event, each distinct value once per chunk."""
    kind = events.schema.field(column).type
    assert pa.types.is_dictionary(kind), column
    assert pa.types.is_integer(kind.index_type) and pa.types.is_string(kind.value_type), column
    for chunk in events[column].chunks:
        values = chunk.dictionary.to_pylist()
        assert len(set(values)) == len(values), column


def test_event_ids_and_types_are_read_as_integer_codes_in_text_order(tmp_path: Path) -> None:
    out = write_dataset(dataset(), tmp_path / "ds")
    events = read_dataset(out).events
    assert isinstance(events, pa.Table)
    for column in ("student_id", "lecture_id", "type"):
        _assert_coded_text(events, column)
    # the codes decode to the text of the file, and sorting by the column sorts by that text
    assert events["student_id"].to_pylist() == ["학생-001", "학생-001", "s2", "s2"]
    students = events["student_id"].combine_chunks()
    order = students.take(pc.array_sort_indices(students)).to_pylist()
    assert order == sorted(order) == ["s2", "s2", "학생-001", "학생-001"]
    # event ids are plain Arrow text (no Python object per id); they round-trip as written
    assert pa.types.is_string(events.schema.field("event_id").type)
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
    """Appending plain rows to the coded events `read_dataset` gives: the ids stay coded (the new rows
    encoded on their own values), read as text they are the rows appended, and the table is the plain
    concatenation (same fingerprint)."""
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
    before = base.events
    out = append_events(base.events, more[list(reversed(more.columns))])
    assert isinstance(out, pa.Table) and out.column_names == base.events.column_names
    for column in ("student_id", "lecture_id", "type"):
        assert out.schema.field(column).type == base.events.schema.field(column).type, column
        _assert_coded_text(out, column)
    assert out["student_id"].to_pylist() == [*base.events["student_id"].to_pylist(), "a-new", "s2"]
    assert out["request_id"].to_pylist() == [*base.events["request_id"].to_pylist(), None, "요청-2"]
    # sorting by the coded column (each chunk with its own dictionary) sorts by the text
    coded = out["student_id"].combine_chunks()
    assert pa.types.is_dictionary(coded.type)
    order = coded.take(pc.array_sort_indices(coded)).to_pylist()
    assert order == sorted(order) and order[0] == "a-new"
    plain = pd.concat(
        [
            base.events.to_pandas().astype({"student_id": object, "lecture_id": object, "type": object}),
            more,
        ]
    )
    students = pd.concat(
        [base.students, pd.DataFrame({"student_id": ["a-new"], "region": ["seoul"], "grade": ["h1"]})]
    )
    assert (
        Dataset(students, base.lectures, out, {}).fingerprint()
        == Dataset(students, base.lectures, plain.reset_index(drop=True), {}).fingerprint()
    )
    assert len(base.events) == 4  # the base table is left as it was
    assert base.events is before and base.events.equals(read_dataset(tmp_path / "ds").events)


# ------------------------------------------------------------------------------------- features.event_table


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _buffer_address(column: pa.ChunkedArray) -> int:
    """Where the column's first chunk holds its values (shared by a slice, new for a filtered copy)."""
    return column.chunks[0].buffers()[1].address


def test_as_event_table_converts_each_kind_of_pandas_column() -> None:
    seoul = pd.to_datetime(["2025-03-01 09:00", None, "2025-03-02 00:30"]).tz_localize("Asia/Seoul")
    frame = pd.DataFrame(
        {
            "coded": pd.Categorical(["b", None, "a"], categories=["b", "a", "unused"]),
            "at": pd.Series(seoul),
            "arrow_text": pd.Series(["가", None, "c"], dtype=pd.StringDtype("pyarrow")),
            "text": pd.Series(["x", None, "y"], dtype=object),
        }
    ).set_axis([10, 11, 12])
    table = as_event_table(frame)
    assert isinstance(table, pa.Table) and table.column_names == ["coded", "at", "arrow_text", "text"]
    assert table.num_rows == 3  # the index dropped, not a column
    # a categorical stays dictionary-encoded text, its null kept
    coded = table.schema.field("coded").type
    assert pa.types.is_dictionary(coded) and _is_text(coded.value_type) and coded.index_type == pa.int32()
    assert table["coded"].to_pylist() == ["b", None, "a"]
    assert table["coded"].combine_chunks().dictionary.to_pylist() == ["b", "a", "unused"]
    # a zone-aware time: the same instants, as UTC timestamps in the column's unit
    at = table.schema.field("at").type
    assert pa.types.is_timestamp(at) and at.tz == "UTC" and at.unit == frame["at"].dt.unit
    assert table["at"].to_pylist() == [
        pd.Timestamp("2025-03-01T00:00:00Z").to_pydatetime(),
        None,
        pd.Timestamp("2025-03-01T15:30:00Z").to_pydatetime(),
    ]
    assert pd.Series(table["at"].to_pandas()).equals(frame["at"].dt.tz_convert("UTC").reset_index(drop=True))
    # Arrow-backed text handed over as text
    assert _is_text(table.schema.field("arrow_text").type)
    assert table["arrow_text"].to_pylist() == ["가", None, "c"]
    # an object column of text stays text, the null kept
    assert table["text"].to_pylist() == ["x", None, "y"]


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("student_id", 7, "row 2, column 'student_id': expected text, got int 7"),
        ("progress", True, "row 2, column 'progress': expected a number, got bool True"),
        ("progress", "0.5", "row 2, column 'progress': expected a number, got text '0.5'"),
        ("request_id", 5, "row 2, column 'request_id': expected text, got int 5"),
    ],
)
def test_a_frame_arrow_would_coerce_is_named_by_the_validator(
    column: str, value: object, message: str
) -> None:
    """A value of another type among a column's (7 among text ids, True among numbers) is not turned into
    text or a number on its way to Arrow: the frame is validated first, so the error names the row and
    the value as `validate_events` does (and `write_dataset` did before events were held by Arrow)."""
    frame = dataset().events.to_pandas()
    cells = frame[column].astype(object).tolist()
    cells[1] = value
    with pytest.raises(SchemaError, match=re.escape(message)):
        Dataset(
            dataset().students, dataset().lectures, frame.assign(**{column: pd.Series(cells, dtype=object)})
        )
    mixed = pd.Categorical(["s2", 7] + ["s2"] * (len(frame) - 2))  # categories that are not all text
    with pytest.raises(SchemaError, match=re.escape("row 2, column 'student_id': expected text, got int 7")):
        Dataset(dataset().students, dataset().lectures, frame.assign(student_id=mixed))


def test_as_event_table_keeps_an_arrow_table_and_refuses_other_things() -> None:
    table = pa.table({"event_id": ["a"]})
    assert as_event_table(table) is table
    with pytest.raises(TypeError, match="expected a pandas DataFrame or a pyarrow Table of events, got list"):
        as_event_table([{"event_id": "a"}])  # type: ignore[arg-type]


def test_concat_events_keeps_the_first_tables_dictionaries() -> None:
    coded = pa.table(
        {
            "student_id": pa.array(["s2", "s1", "s2"]).dictionary_encode(),
            "progress": pa.array([0.0, 0.5, 1.0], type=pa.float32()),
        }
    )
    plain = pa.table({"progress": pa.array([0.25, 0.75]), "student_id": pa.array(["s3", "s1"])})
    out = concat_events([coded, plain])
    assert out.schema.equals(coded.schema)  # the first table's columns and types, the other's taken by name
    assert pa.types.is_dictionary(out.schema.field("student_id").type)
    assert out["student_id"].to_pylist() == ["s2", "s1", "s2", "s3", "s1"]
    assert out["progress"].to_pylist() == [0.0, 0.5, 1.0, 0.25, 0.75]
    assert coded.num_rows == 3 and plain.num_rows == 2  # the inputs are left as they were
    with pytest.raises(KeyError, match="lack the column"):
        concat_events([coded, plain.drop_columns(["progress"])])


def test_concat_events_makes_room_for_new_codes_and_fills_empty_and_null_columns() -> None:
    """A pandas categorical's codes are int8 for a few values: appending more values than that widens
    them (int32), not overflows; a base column of nulls only (no `request_id` yet) or an empty base takes
    the appended rows' type; times finer than the base's are rounded."""
    few = pd.Categorical([f"s{i}" for i in range(60)])
    base = as_event_table(
        pd.DataFrame(
            {"student_id": few, "request_id": [None] * 60, "at": pd.Series(range(60), dtype="int64")}
        )
    )
    assert pa.types.is_null(base.schema.field("request_id").type)
    assert base.schema.field("student_id").type.index_type == pa.int32()
    more = pa.table(
        {
            "student_id": pa.array([f"n{i}" for i in range(200)]),
            "request_id": pa.array([f"r{i}" for i in range(200)]),
            "at": pa.array(range(200), type=pa.int64()),
        }
    )
    out = concat_events([base, more])
    assert out["student_id"].to_pylist() == [f"s{i}" for i in range(60)] + [f"n{i}" for i in range(200)]
    assert out["request_id"].to_pylist() == [None] * 60 + [f"r{i}" for i in range(200)]
    assert out.schema.field("request_id").type == pa.string()
    assert len(used_text(out["student_id"])) == 260  # the chunks' dictionaries read as one
    # one dictionary for the column: the base's, the new values appended; the base's codes not copied
    first = out["student_id"].chunks[0].dictionary
    assert all(c.dictionary.equals(first) for c in out["student_id"].chunks)
    assert first.to_pylist() == sorted(f"s{i}" for i in range(60)) + [f"n{i}" for i in range(200)]
    base_indices = base["student_id"].chunks[0].indices.buffers()[1].address
    assert out["student_id"].chunks[0].indices.buffers()[1].address == base_indices
    empty = as_event_table(pd.DataFrame({"student_id": [], "request_id": [], "at": []}))
    assert concat_events([empty, more]).to_pylist() == more.to_pylist()
    us = pa.table({"t": pa.array([1_000_000], pa.timestamp("us", tz="UTC"))})
    ns = pa.table({"t": pa.array([2_000_000_999], pa.timestamp("ns", tz="UTC"))})
    assert concat_events([us, ns])["t"].cast(pa.int64()).to_pylist() == [1_000_000, 2_000_000]


def test_rows_where_slices_a_leading_run_and_filters_otherwise() -> None:
    table = pa.table({"event_id": [f"e{i}" for i in range(6)], "n": pa.array(range(6), type=pa.int64())})
    leading = np.array([True, True, True, False, False, False])
    head = rows_where(table, leading)
    assert head["n"].to_pylist() == [0, 1, 2]
    assert head.equals(table.slice(0, 3))
    # a slice: the same memory as the events, no copy
    assert _buffer_address(head["n"]) == _buffer_address(table["n"])
    assert _buffer_address(head["event_id"]) == _buffer_address(table["event_id"])
    assert rows_where(table, np.ones(6, dtype=bool)).equals(table)
    assert rows_where(table, np.zeros(6, dtype=bool)).num_rows == 0
    # any other mask: the rows where it holds, in order (a filtered copy)
    scattered = np.array([False, True, False, True, True, False])
    kept = rows_where(table, scattered)
    assert kept["n"].to_pylist() == [1, 3, 4]
    assert kept["event_id"].to_pylist() == ["e1", "e3", "e4"]
    assert _buffer_address(kept["n"]) != _buffer_address(table["n"])
    late = np.array([False, False, False, True, True, True])  # a run, but not a leading one
    assert rows_where(table, late)["n"].to_pylist() == [3, 4, 5]


def test_appended_rows_are_merged_into_dataset_order() -> None:
    """`append_events` on events in dataset order gives what sorting the concatenation gives (new rows
    before, among and after the old, at the same instants as old rows with smaller and larger ids), and
    the old rows stay slices of the table they came from; on events out of order, the concatenation."""
    rng = np.random.default_rng(5)
    for trial in range(40):
        n, m = int(rng.integers(0, 30)), int(rng.integers(1, 12))
        times = np.sort(rng.integers(0, 20, n)).astype("datetime64[s]").astype("datetime64[us]")
        ids = [f"e{int(i):03d}" for i in rng.permutation(1000)[: n + m]]
        base = sort_events(
            pa.table({"event_id": ids[:n], "occurred_at": pa.array(times, pa.timestamp("us", tz="UTC"))})
        )
        more_times = rng.integers(-2, 22, m).astype("datetime64[s]").astype("datetime64[us]")
        more = pa.table(
            {"event_id": ids[n:], "occurred_at": pa.array(more_times, pa.timestamp("us", tz="UTC"))}
        )
        out = append_events(base, more)
        expected = sort_events(pa.concat_tables([base, more]))
        assert out.to_pylist() == expected.to_pylist(), trial
        assert event_table_order(out) is None
    shuffled = pa.table(
        {"event_id": ["b", "a"], "occurred_at": pa.array([2, 1], pa.timestamp("us", tz="UTC"))}
    )
    late = pa.table({"event_id": ["c"], "occurred_at": pa.array([0], pa.timestamp("us", tz="UTC"))})
    assert append_events(shuffled, late)["event_id"].to_pylist() == ["b", "a", "c"]


def test_rows_are_taken_chunk_by_chunk_as_arrow_takes_them() -> None:
    """`take_rows` and `take_ascending` give what Arrow's own take gives, on a table of several chunks
    whose dictionaries differ, for rows in any order, repeated, at chunk edges, and none."""
    first = pa.table(
        {"event_id": ["a", "b", "c"], "student_id": pa.array(["s1", "s2", "s1"]).dictionary_encode()}
    )
    second = pa.table({"event_id": ["d", "e"], "student_id": pa.array(["s3", "s1"]).dictionary_encode()})
    table = pa.concat_tables([first, first.slice(0, 0), second])
    assert table["event_id"].num_chunks == 3
    for rows in ([4, 0, 2, 2, 3], [0, 2, 3, 4], [2, 3], [4, 4, 1], []):
        picked = np.array(rows, dtype=np.int64)
        expected = table.take(pa.array(picked, type=pa.int64()))
        got = take_rows(table, picked)
        assert got.to_pylist() == expected.to_pylist()
        assert got.schema == table.schema
        if rows == sorted(rows):
            column = take_ascending(table["event_id"], picked)
            assert column.to_pylist() == expected["event_id"].to_pylist()
            assert column.type == table["event_id"].type


def test_event_microseconds_in_one_unit_and_unvalidated_times_ordered() -> None:
    """Tables whose times are held in different units compare in microseconds (rounded down; a null
    stays the minimum); text times (an unvalidated frame's) are read as ISO 8601 instants, so
    `sort_events` orders them by instant; a table without chunks has no times."""
    ns = pa.table({"occurred_at": pa.array([-1_500, 2_999, None], pa.timestamp("ns", tz="UTC"))})
    s_ = pa.table({"occurred_at": pa.array([3], pa.timestamp("s", tz="UTC"))})
    assert event_microseconds(ns).tolist() == [-2, 2, np.iinfo(np.int64).min]
    assert event_microseconds(s_).tolist() == [3_000_000]
    text = pd.DataFrame(
        {
            "event_id": ["a", "b", "c"],
            "occurred_at": ["2025-03-01T09:00:00+09:00", "2025-03-01T00:30:00Z", "2025-03-01 00:10:00"],
        }
    )
    assert sort_events(text)["event_id"].to_pylist() == ["a", "c", "b"]
    nothing = pa.Table.from_batches([], schema=pa.schema([("occurred_at", pa.timestamp("us", tz="UTC"))]))
    ticks, unit = event_ticks(nothing)
    assert ticks.size == 0 and ticks.dtype == np.int64 and unit == "us"


def test_event_ticks_counts_in_the_columns_own_unit() -> None:
    nanos = [1_700_000_000_123_456_789, 1_700_000_001_000_000_001]
    in_ns = pa.table({"occurred_at": pa.array(nanos, type=pa.timestamp("ns", tz="UTC"))})
    ticks, unit = event_ticks(in_ns)
    assert unit == "ns" and ticks.dtype == np.int64 and ticks.tolist() == nanos  # nothing rounded
    micros = [1_700_000_000_123_456, 1_700_000_001_000_001]
    in_us = pa.table({"occurred_at": pa.array(micros, type=pa.timestamp("us", tz="UTC"))})
    ticks, unit = event_ticks(in_us)
    assert unit == "us" and ticks.tolist() == micros
    # another zone: the same instants
    seoul = in_us.set_column(0, "occurred_at", in_us["occurred_at"].cast(pa.timestamp("us", tz="Asia/Seoul")))
    assert event_ticks(seoul)[0].tolist() == micros
    # a zone-less column is read as UTC
    naive = pa.table({"occurred_at": pa.array(micros, type=pa.timestamp("us"))})
    ticks, unit = event_ticks(naive)
    assert unit == "us" and ticks.tolist() == micros
    naive_ms = pa.table({"occurred_at": pa.array([1_700_000_000_123], type=pa.timestamp("ms"))})
    assert event_ticks(naive_ms)[0].tolist() == [1_700_000_000_123] and event_ticks(naive_ms)[1] == "ms"
    # times still held as text (an unvalidated frame's) are parsed as pandas parses them
    text = pa.table({"occurred_at": ["2025-03-01T09:00:00+09:00", "2025-03-01T00:00:01Z"]})
    ticks, unit = event_ticks(text)
    start = np.datetime64("2025-03-01T00:00:00", unit)  # counts in `unit` since the epoch
    second = np.timedelta64(1, "s").astype(f"timedelta64[{unit}]")
    assert ticks.tolist() == [int(start.view(np.int64)), int((start + second).view(np.int64))]
    assert pd.Timestamp(int(ticks[0]), unit=unit, tz="UTC") == pd.Timestamp("2025-03-01T00:00:00Z")
    # a missing time is pandas' NaT
    with_null = pa.table({"occurred_at": pa.array([micros[0], None], type=pa.timestamp("us", tz="UTC"))})
    assert event_ticks(with_null)[0].tolist() == [micros[0], np.iinfo(np.int64).min]
    # an empty column
    empty = event_ticks(in_us.slice(0, 0))
    assert empty[0].dtype == np.int64 and empty[0].size == 0 and empty[1] == "us"


def test_a_permutation_is_applied_block_by_block_or_whole() -> None:
    """`sort_events`' reordering: random permutations and ones that move rows within small blocks (the
    first and last rows too) of a table in several chunks give the rows a plain take gives."""
    from features.tables import _permuted

    rng = np.random.default_rng(1)
    for seed in range(300):
        n = int(rng.integers(0, 50))
        order = rng.permutation(n) if seed % 3 == 0 else np.arange(n)
        for _ in range(int(rng.integers(0, 6)) if seed % 3 and n > 1 else 0):
            a = int(rng.integers(0, n - 1))
            b = min(n, a + int(rng.integers(2, 6)))
            order[a:b] = rng.permutation(order[a:b])
        chunks = [pa.array(np.arange(n)[k : k + 7]) for k in range(0, n, 7)] or [pa.array([], pa.int64())]
        table = pa.table({"x": pa.chunked_array(chunks, pa.int64())})
        assert _permuted(table, order.astype(np.int64))["x"].to_pylist() == order.tolist(), seed
