"""The events file checked on Arrow gives what `validate_events` gives: the same table, the same errors.

Every rule is broken once in a file written with the schema's types; `read_dataset` (checked on Arrow, no
validated copy) and `read_partitioned` must raise exactly the error (file, rows, column, message) that
`validate_events` raises on the same file read into pandas, and a valid file must come out equal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features import stored_events
from features.errors import SchemaError
from features.tables import Dataset, read_dataset, read_partitioned, sort_events, write_dataset
from features.validation import validate_events

N = 12


def dataset() -> Dataset:
    students = pd.DataFrame(
        {
            "student_id": ["학생-1", "s2", "s3"],
            "region": ["seoul", "gimpo", "incheon"],
            "grade": ["h1", "m2", "h3"],
        }
    )
    lectures = pd.DataFrame(
        {
            "lecture_id": ["국어-1", "l2"],
            "title": ["수능 국어", "영어"],
            "provider": ["EBS", "x"],
            "subject": ["국어", "영어"],
        }
    )
    rng = np.random.default_rng(7)
    types = np.array(["enrol", "progress", "complete", "drop"])[rng.integers(0, 4, N)]
    events = pd.DataFrame(
        {
            "event_id": [f"이벤트-{i:02d}" for i in range(N)],
            "student_id": np.array(["학생-1", "s2", "s3"])[rng.integers(0, 3, N)],
            "lecture_id": np.array(["국어-1", "l2"])[rng.integers(0, 2, N)],
            "type": types,
            "progress": np.where(types == "complete", 1.0, 0.25),
            "occurred_at": pd.Timestamp("2026-03-02T09:00:00Z")
            + pd.to_timedelta(rng.integers(0, 10**6, N), "s"),
            "request_id": [None if i % 3 else f"요청-{i}" for i in range(N)],
        }
    )
    return Dataset(students, lectures, events, {"name": "stored events"})


def _set(table: pa.Table, name: str, values: list[Any], kind: pa.DataType | None = None) -> pa.Table:
    column = pa.array(values, type=kind or table.schema.field(name).type)
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, column)
    return table.append_column(name, column)


def _cell(name: str, row: int, value: Any) -> Callable[[pa.Table], pa.Table]:
    def edit(table: pa.Table) -> pa.Table:
        values = table.column(name).to_pylist()
        values[row] = value
        return _set(table, name, values)

    return edit


FAULTS: dict[str, Callable[[pa.Table], pa.Table]] = {
    "event_id null": _cell("event_id", 3, None),
    "event_id blank": _cell("event_id", 4, "  "),
    "event_id repeated": _cell("event_id", 9, "이벤트-02"),
    "student_id null": _cell("student_id", 1, None),
    "student_id blank": _cell("student_id", 5, " "),
    "student unknown": _cell("student_id", 6, "유령"),
    "lecture unknown": _cell("lecture_id", 2, "l9"),
    "type unknown": _cell("type", 7, "finished"),
    "type null": _cell("type", 0, None),
    "progress null": _cell("progress", 8, None),
    "progress NaN": _cell("progress", 8, float("nan")),
    "progress infinite": _cell("progress", 10, float("inf")),
    "progress above 1": _cell("progress", 11, 1.5),
    "progress below 0": _cell("progress", 1, -0.25),
    "occurred_at null": _cell("occurred_at", 4, None),
}


def _written(tmp_path: Path, edit: Callable[[pa.Table], pa.Table] | None = None) -> Path:
    out = write_dataset(dataset(), tmp_path / "ds")
    if edit is not None:
        pq.write_table(edit(pq.read_table(out / "events.parquet")), out / "events.parquet")
    return out


def _by_pandas(out: Path) -> pd.DataFrame:
    """The events as the reader held them before: read into pandas (ids and types as categoricals), then
    `validate_events`."""
    return validate_events(
        stored_events.read_events_table(out / "events.parquet").to_pandas(),
        str(out / "events.parquet"),
        student_ids=pd.Index(pq.read_table(out / "students.parquet").column("student_id").to_pylist()),
        lecture_ids=pd.Index(pq.read_table(out / "lectures.parquet").column("lecture_id").to_pylist()),
    )


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The events in pandas with the dictionary-encoded columns (categoricals) as text: each side's
    dictionary holds its own values in its own order, compared as the text they decode to."""
    return frame.astype(dict.fromkeys(stored_events.DICTIONARY_COLUMNS, str))


def _error(call: Callable[[], Any]) -> tuple[str, str, list[int], str]:
    with pytest.raises(SchemaError) as info:
        call()
    exc = info.value
    return exc.file, exc.column, list(exc.rows), exc.problem


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_broken_rule_gives_the_validators_error(tmp_path: Path, fault: str) -> None:
    out = _written(tmp_path, FAULTS[fault])
    expected = _error(lambda: _by_pandas(out))
    assert _error(lambda: read_dataset(out)) == expected
    assert _error(lambda: list(read_partitioned(out, partitions=2).partitions())) == expected


@pytest.mark.parametrize("fault", ["event_id null", "event_id blank", "event_id repeated", "all null"])
def test_dictionary_encoded_or_null_event_ids_keep_their_checks(tmp_path: Path, fault: str) -> None:
    """Event ids written dictionary-encoded (a pandas categorical) or as an all-null column are checked as
    plain text: missing, blank and repeated ids are named as the validator names them."""

    def edit(table: pa.Table) -> pa.Table:
        index = table.schema.get_field_index("event_id")
        if fault == "all null":
            return table.set_column(index, "event_id", pa.nulls(table.num_rows))
        broken = FAULTS[fault](table)
        return broken.set_column(index, "event_id", broken.column("event_id").dictionary_encode())

    out = _written(tmp_path, edit)
    expected = _error(lambda: _by_pandas(out))
    assert _error(lambda: read_dataset(out)) == expected
    assert _error(lambda: list(read_partitioned(out, partitions=2).partitions())) == expected


@pytest.mark.parametrize(
    "variant",
    [
        "as written",
        "progress float64",
        "times in ns at +09:00",
        "request ids all null",
        "request_id absent",
        "no event ids",
        "no progress",
        "neither",
        "times as text at +09:00",
        "times as text in Z",
        "ids dictionary-encoded",
    ],
)
def test_a_valid_file_comes_out_as_the_validator_returns_it(tmp_path: Path, variant: str) -> None:
    def edit(table: pa.Table) -> pa.Table:
        if variant == "progress float64":
            return _set(table, "progress", table.column("progress").to_pylist(), pa.float64())
        if variant == "times in ns at +09:00":
            times = table.column("occurred_at").cast(pa.timestamp("ns", tz="Asia/Seoul"))
            return table.set_column(table.schema.get_field_index("occurred_at"), "occurred_at", times)
        if variant == "request ids all null":
            return _set(table, "request_id", [None] * table.num_rows, pa.null())
        if variant == "request_id absent":
            return table.drop_columns(["request_id"])
        if variant == "ids dictionary-encoded":  # (as pandas writes a categorical)
            for name in ("event_id", "request_id"):
                index = table.schema.get_field_index(name)
                table = table.set_column(index, name, table.column(name).dictionary_encode())
            return table
        if variant.startswith("times as text"):  # ISO 8601 with a zone on every value
            seoul = variant.endswith("+09:00")
            times = table.column("occurred_at").cast(pa.timestamp("us", tz="Asia/Seoul" if seoul else "UTC"))
            text = pc.strftime(times, format="%Y-%m-%dT%H:%M:%S%z" if seoul else "%Y-%m-%dT%H:%M:%SZ")
            return table.set_column(table.schema.get_field_index("occurred_at"), "occurred_at", text)
        if variant in ("no event ids", "no progress", "neither"):  # ids generated, progress by type
            dropped = {"no event ids": ["event_id"], "no progress": ["progress"]}.get(variant)
            return table.drop_columns(dropped or ["event_id", "progress"])
        return table

    out = _written(tmp_path, edit)
    table = stored_events.read_events_table(out / "events.parquet")
    assert stored_events.is_coded(table)
    assert stored_events.typed_events(str(out), table) is not None  # checked on Arrow, not handed back
    events = read_dataset(out).events
    for column in stored_events.DICTIONARY_COLUMNS:  # the file's dictionaries kept
        assert pa.types.is_dictionary(events.schema.field(column).type), column
    assert events.schema.field("event_id").type == pa.string()  # (the schema's: plain text)
    got = _as_text(events.to_pandas())
    expected = _as_text(sort_events(_by_pandas(out)).to_pandas())
    if variant == "ids dictionary-encoded":  # (the validator hands a categorical back as it came)
        expected = expected.astype({"event_id": "str", "request_id": "str"})
    pd.testing.assert_frame_equal(got, expected)
    parts = pd.concat([p.events.to_pandas() for p in read_partitioned(out, partitions=2).partitions()])
    pd.testing.assert_frame_equal(_as_text(sort_events(_as_text(parts)).to_pandas()), got)


@pytest.mark.parametrize(
    "variant, edit",
    [
        (
            "progress as text",
            lambda t: _set(t, "progress", [str(v) for v in t.column("progress").to_pylist()], pa.string()),
        ),
        (
            "times without a zone",
            lambda t: t.set_column(5, "occurred_at", t.column(5).cast(pa.timestamp("us"))),
        ),
        (
            "times as text without a zone",
            lambda t: t.set_column(5, "occurred_at", pc.strftime(t.column(5), format="%Y-%m-%dT%H:%M:%S")),
        ),
    ],
)
def test_files_of_other_types_are_left_to_the_validator(tmp_path: Path, variant: str, edit: Any) -> None:
    out = _written(tmp_path, lambda t: edit(t))
    table = stored_events.read_events_table(out / "events.parquet")
    assert stored_events.typed_events(str(out), table) is None, variant
    try:
        expected = sort_events(_by_pandas(out))
    except SchemaError as exc:
        assert _error(lambda: read_dataset(out)) == (exc.file, exc.column, list(exc.rows), exc.problem)
    else:
        pd.testing.assert_frame_equal(
            _as_text(read_dataset(out).events.to_pandas()), _as_text(expected.to_pandas())
        )
