"""The exposure record (what a student was shown, under which experiment arm) as an Arrow schema, and readers.

An exposure is written by the service for every answered `/recommendations` request, XADDed to the
exposures Redis stream (fields built by ``features.experiments.exposure_fields``) and exported to Parquet by
``features.streams`` with `EXPOSURES` as the schema. The lecture's rank is its position in ``lecture_ids``
(1-based in `explode`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.errors import DatasetNotFoundError, SchemaError
from features.schemas import EVENT_TYPES, EVENTS, EVENTS_REQUIRED, STUDENTS, STUDENTS_REQUIRED
from training.ab.columns import text

EXPOSURES = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("student_id", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("experiment", pa.string()),  # null when the student was in no experiment (champion)
        pa.field("variant", pa.string()),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("lecture_ids", pa.list_(pa.string()), nullable=False),  # rank order, best first
        pa.field("shown_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
EXPOSURES_REQUIRED: tuple[str, ...] = (
    "request_id",
    "student_id",
    "region",
    "experiment",
    "variant",
    "lecture_ids",
    "shown_at",
)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def from_stream_fields(fields: Mapping[Any, Any]) -> dict[str, object]:
    """Decode one exposure from its Redis stream fields (bytes or str) into a row of `EXPOSURES`.

    Args:
        fields: the entry's field mapping, as ``XRANGE``/``XREADGROUP`` returns it.

    Returns:
        A dict with the schema's columns (``lecture_ids`` a list, ``shown_at`` an aware datetime,
        empty ``experiment``/``variant`` as None).

    Raises:
        SchemaError: a field is missing or malformed (named in the message).
    """
    f = {_text(k): _text(v) for k, v in fields.items()}
    for name in EXPOSURES.names:
        if name not in f:
            raise SchemaError("exposures stream", name, [], f"field missing from entry {sorted(f)}")
    try:
        lecture_ids = json.loads(f["lecture_ids"])
    except json.JSONDecodeError as exc:
        raise SchemaError("exposures stream", "lecture_ids", [], f"not a JSON array: {exc}") from None
    if not isinstance(lecture_ids, list) or not all(isinstance(x, str) for x in lecture_ids):
        raise SchemaError("exposures stream", "lecture_ids", [], "must be a JSON array of strings")
    try:
        shown_at = datetime.fromisoformat(f["shown_at"].replace("Z", "+00:00"))
    except ValueError:
        raise SchemaError("exposures stream", "shown_at", [], f"not ISO 8601: {f['shown_at']!r}") from None
    shown_at = shown_at.replace(tzinfo=UTC) if shown_at.tzinfo is None else shown_at.astimezone(UTC)
    return {
        "request_id": f["request_id"],
        "student_id": f["student_id"],
        "region": f["region"],
        "experiment": f["experiment"] or None,
        "variant": f["variant"] or None,
        "model_version": f["model_version"],
        "lecture_ids": lecture_ids,
        "shown_at": shown_at,
    }


def records_to_table(records: Iterable[Mapping[str, object]]) -> pa.Table:
    """Build an `EXPOSURES` table from decoded rows (e.g. `from_stream_fields` output).

    Args:
        records: rows with the schema's columns.

    Returns:
        The table, typed by `EXPOSURES`.
    """
    return pa.Table.from_pylist(list(records), schema=EXPOSURES)


def of_experiment(exposures: pa.Table, key: str) -> pa.Table:
    """The exposures of experiment ``key`` (a table without an ``experiment`` column as it is: the
    attribution names the missing column)."""
    if "experiment" not in exposures.column_names:
        return exposures
    return exposures.filter(pc.fill_null(pc.equal(text(exposures.column("experiment")), key), False))


def versions_shown(exposures: pa.Table) -> dict[str, str]:
    """Variant -> the model versions its exposures name, sorted and comma-separated (exposures without a
    variant left out)."""
    pairs = pa.table(
        {"variant": text(exposures.column("variant")), "version": text(exposures.column("model_version"))}
    )
    shown: dict[str, set[str]] = {}
    for row in pairs.group_by(["variant", "version"]).aggregate([]).to_pylist():  # (the distinct pairs)
        if row["variant"] is not None:
            shown.setdefault(str(row["variant"]), set()).add(str(row["version"]))
    return {variant: ", ".join(sorted(shown[variant])) for variant in sorted(shown)}


def explode(exposures: pa.Table) -> pa.Table:
    """One row per shown lecture: the exposure's columns (without the list) plus ``lecture_id``, ``position``.

    Args:
        exposures: a table with at least ``request_id`` and ``lecture_ids``.

    Returns:
        The long table; ``position`` is 1-based rank in the list as shown.
    """
    lists = exposures.column("lecture_ids").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    parents = pc.list_parent_indices(lists)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths) + 1
    rest = exposures.drop_columns(["lecture_ids"]).take(parents)
    return rest.append_column("lecture_id", pc.list_flatten(lists)).append_column(
        "position", pa.array(position.astype(np.int32))
    )


def _parquet_files(path: Path, preferred: str) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetNotFoundError(f"{path}: no such file or directory")
    if (path / preferred).is_file():
        return [path / preferred]  # a dataset directory also holds students/lectures tables
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise DatasetNotFoundError(f"{path}: no .parquet files (expected {preferred} or exported parts)")
    return files


def _conform(table: pa.Table, schema: pa.Schema, required: Sequence[str], file: str) -> pa.Table:
    """Select and cast the schema's columns; missing optional columns become null, extra ones are dropped."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if field.name in required:
                raise SchemaError(
                    file, field.name, [], f"required column missing (columns: {table.column_names})"
                )
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            if pa.types.is_timestamp(field.type) and pa.types.is_timestamp(col.type):
                col = col.cast(field.type, safe=False)  # nanoseconds -> microseconds
            else:
                raise SchemaError(
                    file, field.name, [], f"cannot read {col.type} as {field.type}: {exc}"
                ) from None
        if field.name in required and not field.nullable and col.null_count:
            rows = np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False)).tolist()
            raise SchemaError(file, field.name, rows, "null in a required column")
        columns.append(col)
    relaxed = pa.schema([f.with_nullable(True) for f in schema])
    return pa.Table.from_arrays(columns, schema=relaxed)


def read_parquet_input(path: Path, schema: pa.Schema, required: Sequence[str], preferred: str) -> pa.Table:
    """Read one Parquet file, or every ``*.parquet`` under a directory, conformed to ``schema``.

    A directory holding ``preferred`` (e.g. ``events.parquet`` of a dataset) is read from that file only.

    Args:
        path: file or directory.
        schema: target schema (columns are cast to it).
        required: columns that must be present (and non-null where the schema says so).
        preferred: file name read alone when present in the directory.

    Returns:
        The concatenated table.

    Raises:
        DatasetNotFoundError: nothing to read.
        SchemaError: a file lacks a column or has the wrong type (names the file and column).
    """
    tables = []
    for file in _parquet_files(Path(path), preferred):
        try:
            raw = pq.read_table(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(str(file), "*", [], f"not a readable Parquet file: {exc}") from None
        tables.append(_conform(raw, schema, required, str(file)))
    return pa.concat_tables(tables)


def read_exposures(path: Path) -> pa.Table:
    """Exposures exported from the stream (a Parquet file or a directory of parts), typed by `EXPOSURES`."""
    return read_parquet_input(path, EXPOSURES, EXPOSURES_REQUIRED, "exposures.parquet")


def read_events(path: Path) -> pa.Table:
    """Learning events (dataset directory, exported directory or file), typed by `features.schemas.EVENTS`.

    Raises:
        SchemaError: also when an event ``type`` is not one of `EVENT_TYPES` (rows named).
    """
    table = read_parquet_input(path, EVENTS, EVENTS_REQUIRED, "events.parquet")
    bad = pc.invert(pc.is_in(table.column("type"), value_set=pa.array(EVENT_TYPES)))
    if pc.any(bad).as_py():
        rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False)).tolist()
        raise SchemaError(str(path), "type", rows, f"event type must be one of {list(EVENT_TYPES)}")
    return table


def read_students(path: Path) -> pa.Table:
    """A students table (dataset directory or Parquet file), typed by `features.schemas.STUDENTS`."""
    return read_parquet_input(path, STUDENTS, STUDENTS_REQUIRED, "students.parquet")
