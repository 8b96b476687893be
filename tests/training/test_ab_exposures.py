"""Exposure schema, the stream wire format shared with the service, explode, and the Parquet readers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.errors import DatasetNotFoundError, SchemaError
from features.experiments import (
    EXPOSURE_FIELDS,
    Assignment,
    _now_text,
    _shown_at_text,
    answer_exposure,
    exposure_fields,
    packed_exposure,
)
from features.schemas import EVENTS
from features.streams import pack_pairs, unpack_record
from training.ab.exposures import (
    EXPOSURES,
    explode,
    from_stream_fields,
    of_experiment,
    read_events,
    read_exposures,
    records_to_table,
    versions_shown,
)

SHOWN = datetime(2025, 9, 2, 8, 30, 0, 123456, tzinfo=UTC)


def _row(request_id: str = "r1", lectures: list[str] | None = None, experiment: str | None = "e") -> dict:
    return {
        "request_id": request_id,
        "student_id": "s1",
        "region": "taebaek",
        "experiment": experiment,
        "variant": "control" if experiment else None,
        "model_version": "3",
        "lecture_ids": ["L1", "L2"] if lectures is None else lectures,
        "shown_at": SHOWN,
    }


def test_schema_columns_and_types() -> None:
    assert EXPOSURES.names == [
        "request_id",
        "student_id",
        "region",
        "experiment",
        "variant",
        "model_version",
        "lecture_ids",
        "shown_at",
    ]
    assert EXPOSURES.field("lecture_ids").type == pa.list_(pa.string())
    assert EXPOSURES.field("shown_at").type == pa.timestamp("us", tz="UTC")
    assert not EXPOSURES.field("request_id").nullable and EXPOSURES.field("experiment").nullable


def test_service_fields_round_trip_through_stream_and_parquet(tmp_path: Path) -> None:
    """What the service XADDs decodes into the schema, Korean ids and microseconds intact."""
    a = Assignment("e", "challenger", "challenger", 42)
    fields = exposure_fields("r1", "s1", "taebaek", a, "7", ["국어-01", "L2"], SHOWN)
    assert all(isinstance(v, str) for v in fields.values())
    # redis-py returns bytes keys and values
    raw = {k.encode(): v.encode("utf-8") for k, v in fields.items()}
    row = from_stream_fields(raw)
    assert row["lecture_ids"] == ["국어-01", "L2"]
    assert row["shown_at"] == SHOWN
    assert row["variant"] == "challenger" and row["model_version"] == "7"
    table = records_to_table(
        [row, from_stream_fields(exposure_fields("r2", "s2", "seoul", None, "3", [], SHOWN))]
    )
    assert table.schema == EXPOSURES
    pq.write_table(table, tmp_path / "part-0.parquet")
    back = read_exposures(tmp_path)
    assert back.column("lecture_ids").to_pylist() == [["국어-01", "L2"], []]
    assert back.column("experiment").to_pylist() == ["e", None]  # no experiment -> null, not ""
    assert back.column("shown_at")[0].as_py() == SHOWN


def test_exposure_fields_refuses_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        exposure_fields("r", "s", "seoul", None, "1", [], datetime(2025, 9, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        packed_exposure("s", b"", "r", datetime(2025, 9, 1))


def test_the_packed_exposure_the_service_submits_holds_the_exposure_fields() -> None:
    """The service packs an answer's fields once and each request's two around them: the same record."""
    a = Assignment("e", "challenger", "challenger", 42)
    for assignment, lectures in (
        (a, ["국어-01", "L2"]),
        (None, []),
        (None, ['q"uote', "back\\slash", "tab\t", "😀"]),
    ):
        answer = pack_pairs(answer_exposure("학생1", "taebaek", assignment, "7", lectures).items())[1]
        packed = packed_exposure("학생1", answer, "r1", SHOWN)
        assert packed.shard_key == "학생1" and packed.n_fields == EXPOSURE_FIELDS
        fields = unpack_record(packed)
        assert fields == exposure_fields("r1", "학생1", "taebaek", assignment, "7", lectures, SHOWN)
        assert list(fields) == list(
            exposure_fields("r1", "학생1", "taebaek", assignment, "7", lectures, SHOWN)
        )


def test_an_exposure_stamped_now_reads_as_the_datetime_of_that_instant() -> None:
    """`packed_exposure` without a time stamps it from the clock, the text to the second made once a
    second: the same text `shown_at` of that instant gets, whatever the microseconds and the second."""
    for ns in (0, 1_764_000_000_000_000_000, 1_764_000_000_123_456_789, 1_764_000_059_999_999_999):
        instant = datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=ns // 1000 % 1_000_000)
        assert _now_text(ns) == _shown_at_text(instant), ns
    answer = pack_pairs(answer_exposure("학생1", "taebaek", None, "7", ["국어-01"]).items())[1]
    before = datetime.now(UTC)
    fields = unpack_record(packed_exposure("학생1", answer, "r1"))
    after = datetime.now(UTC)
    assert before <= datetime.fromisoformat(fields["shown_at"]) <= after
    assert fields["request_id"] == "r1"


def test_from_stream_fields_names_the_bad_field() -> None:
    fields = exposure_fields("r1", "s1", "seoul", None, "3", ["L1"], SHOWN)
    with pytest.raises(SchemaError, match="column 'variant': field missing"):
        from_stream_fields({k: v for k, v in fields.items() if k != "variant"})
    with pytest.raises(SchemaError, match="column 'lecture_ids': not a JSON array"):
        from_stream_fields({**fields, "lecture_ids": "L1,L2"})
    with pytest.raises(SchemaError, match="column 'lecture_ids': must be a JSON array of strings"):
        from_stream_fields({**fields, "lecture_ids": "[1, 2]"})
    with pytest.raises(SchemaError, match="column 'shown_at': not ISO 8601"):
        from_stream_fields({**fields, "shown_at": "yesterday"})


def test_explode_gives_one_row_per_lecture_with_1_based_positions() -> None:
    table = records_to_table([_row("r1", ["A", "B", "C"]), _row("r2", []), _row("r3", ["D"])])
    long = explode(table)
    assert long.column("request_id").to_pylist() == ["r1", "r1", "r1", "r3"]
    assert long.column("lecture_id").to_pylist() == ["A", "B", "C", "D"]
    assert long.column("position").to_pylist() == [1, 2, 3, 1]
    assert "lecture_ids" not in long.column_names


def test_read_exposures_concatenates_parts_and_ignores_extra_columns(tmp_path: Path) -> None:
    t = records_to_table([_row("r1"), _row("r2")])
    pq.write_table(t.slice(0, 1), tmp_path / "part-0.parquet")
    (tmp_path / "2025-09-02").mkdir()
    pq.write_table(
        t.slice(1).append_column("extra", pa.array([1])), tmp_path / "2025-09-02" / "part-1.parquet"
    )
    back = read_exposures(tmp_path)
    assert sorted(back.column("request_id").to_pylist()) == ["r1", "r2"]
    assert back.column_names == EXPOSURES.names


def test_read_exposures_missing_column_names_file_and_column(tmp_path: Path) -> None:
    t = records_to_table([_row()]).drop_columns(["variant"])
    pq.write_table(t, tmp_path / "part-0.parquet")
    with pytest.raises(SchemaError) as err:
        read_exposures(tmp_path)
    assert err.value.column == "variant" and err.value.file.endswith("part-0.parquet")


def test_read_exposures_null_in_required_column_names_rows(tmp_path: Path) -> None:
    rows = [_row("r1"), _row("r2")]
    rows[1]["student_id"] = None
    t = pa.Table.from_pylist(rows, schema=EXPOSURES.set(1, EXPOSURES.field("student_id").with_nullable(True)))
    pq.write_table(t, tmp_path / "x.parquet")
    with pytest.raises(SchemaError, match="row 1, column 'student_id': null in a required column"):
        read_exposures(tmp_path / "x.parquet")


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no such file"):
        read_exposures(tmp_path / "nope")
    with pytest.raises(DatasetNotFoundError, match=r"no \.parquet files"):
        read_exposures(tmp_path)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="not a readable Parquet file"):
        read_exposures(tmp_path)


def _events(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EVENTS)


def _event(i: int, kind: str = "enrol") -> dict:
    return {
        "event_id": f"e{i}",
        "student_id": "s1",
        "lecture_id": "L1",
        "type": kind,
        "progress": 0.0,
        "occurred_at": SHOWN,
        "request_id": None,
    }


def test_read_events_prefers_events_parquet_of_a_dataset_dir(tmp_path: Path) -> None:
    pq.write_table(_events([_event(1), _event(2, "complete")]), tmp_path / "events.parquet")
    pq.write_table(pa.table({"student_id": ["s1"], "region": ["seoul"]}), tmp_path / "students.parquet")
    back = read_events(tmp_path)
    assert back.num_rows == 2 and back.column_names == EVENTS.names


def test_read_events_optional_columns_and_timestamp_units(tmp_path: Path) -> None:
    t = pa.table(
        {
            "student_id": ["s1"],
            "lecture_id": ["L1"],
            "type": ["enrol"],
            "occurred_at": pa.array([1_756_800_000_000_000_123], pa.timestamp("ns", tz="UTC")),
        }
    )
    pq.write_table(t, tmp_path / "part.parquet")
    back = read_events(tmp_path)
    assert back.column("request_id").to_pylist() == [None]
    assert back.schema.field("occurred_at").type == pa.timestamp("us", tz="UTC")


def test_read_events_refuses_unknown_types_and_bad_columns(tmp_path: Path) -> None:
    pq.write_table(_events([_event(1), _event(2, "click")]), tmp_path / "a.parquet")
    with pytest.raises(SchemaError, match="row 1, column 'type'"):
        read_events(tmp_path / "a.parquet")
    t = pa.table({"student_id": ["s"], "lecture_id": ["L"], "type": ["enrol"], "occurred_at": ["yesterday"]})
    pq.write_table(t, tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match="column 'occurred_at': cannot read string"):
        read_events(tmp_path / "b.parquet")


def test_an_experiments_exposures_and_the_versions_each_variant_was_served_by() -> None:
    """The report and `learnrec ab report`'s model lookup read the same: one experiment's exposures, then
    per variant the distinct model versions (sorted as text; exposures outside any experiment left out)."""
    rows = [
        {**_row("r1"), "model_version": "10"},
        {**_row("r2"), "model_version": "9"},
        {**_row("r3"), "model_version": "10"},
        {**_row("r4"), "variant": "challenger", "model_version": "11"},
        {**_row("r5", experiment="other"), "variant": "challenger", "model_version": "12"},
        _row("r6", experiment=None),
    ]
    table = records_to_table(rows)
    ours = of_experiment(table, "e")
    assert ours.column("request_id").to_pylist() == ["r1", "r2", "r3", "r4"]
    assert versions_shown(ours) == {"challenger": "11", "control": "10, 9"}
    assert versions_shown(table) == {"challenger": "11, 12", "control": "10, 9"}  # (r6: no variant)
    assert of_experiment(table, "none").num_rows == 0
    assert of_experiment(table.drop_columns(["experiment"]), "e").num_rows == 6  # (the attribution names it)
