"""A dataset's events file read with pyarrow and checked on its Arrow columns (no validated copy).

`read_dataset` and `read_partitioned` read `events.parquet` through here. The ids and types come in
dictionary-encoded (an integer code per event, each distinct value once) and every rule of
`features.validation.validate_events` is checked over the Arrow columns with pyarrow compute and numpy:

* ids and types: nulls and blank values, unknown students, lectures and types, each checked once per
  distinct value and reaching the rows through the codes;
* event ids: nulls, blanks, repeats (64-bit hashes sorted, equal hashes settled exactly:
  `features.validation.hash_repeats`);
* progress: missing (null or NaN), not finite, outside 0..1; timestamps: missing.

When every rule holds the table is already what `validate_events` would return and is kept as it is
(`features.event_table`): the events never reach pandas. A file without `event_id` or `progress` gets
the validator's defaults on Arrow too (ids hashed from the row number and values, progress by type), and
ISO 8601 text times with a zone are read on Arrow. A file whose columns break the schema's types (ids
stored as integers, timestamps without a zone, progress as text) is not checked further here:
`validate_events` names the rows (a dataset learnrec writes never has such columns). The
errors of the two are the same (file, 1-based rows, column, message), which the tests hold rule by rule,
so `features.validation` stays the one place that says what a valid events table is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.errors import SchemaError
from features.ids import arrow_codes
from features.schemas import EVENT_TYPES, EVENTS, EVENTS_REQUIRED
from features.validation import (
    _rows,
    _show,
    duplicate_ids,
    generated_event_id_column,
    hash_repeats,
    progress_defaults,
)

#: Columns read dictionary-encoded (few distinct values, many rows).
DICTIONARY_COLUMNS = ("student_id", "lecture_id", "type")
_TIMESTAMP = EVENTS.field("occurred_at").type


def read_events_table(path: Path) -> pa.Table:
    """The schema's columns of an events file, text ids and types dictionary-encoded (dictionaries unified).

    Args:
        path: the events Parquet file.

    Returns:
        The columns of `EVENTS` the file holds, in the schema's order.

    Raises:
        SchemaError: the file is not readable Parquet, a column appears twice or a required one is missing.
    """
    file = str(path)
    try:
        schema = pq.read_schema(path)
        names = list(schema.names)
        check_event_columns(file, names)
        text = [c for c in DICTIONARY_COLUMNS if _is_text(schema.field(c).type)]
        table = pq.read_table(path, columns=[f.name for f in EVENTS if f.name in names], read_dictionary=text)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(file, "*", [], f"not a readable Parquet file ({exc}); rewrite the dataset") from exc
    return coded(table.unify_dictionaries())


def check_event_columns(file: str, names: list[str]) -> None:
    """An events file's column names: none twice, every required one present.

    Raises:
        SchemaError: naming the file and the column.
    """
    if len(set(names)) != len(names):
        dupe = sorted({n for n in names if names.count(n) > 1})[0]
        raise SchemaError(file, dupe, [], "the column appears more than once: keep one")
    missing = [c for c in EVENTS_REQUIRED if c not in names]
    if missing:
        raise SchemaError(
            file, missing[0], [], f"required column '{missing[0]}' is missing (columns present: "
            f"{', '.join(names) or 'none'})",
        )  # fmt: skip


def checked_events(file: str, table: pa.Table, student_ids: pd.Index, lecture_ids: pd.Index) -> pa.Table:
    """Events held by Arrow, every rule of `validate_events` checked against the students and lectures.

    The columns are first put in the forms the checks read (`coded`; a file read by `read_events_table`
    already is). A table the checks can type is then checked on its Arrow columns and returned
    (`check_whole_file`, `typed_events`); any other goes through `validate_events`, which names the rows
    of the columns of other types.

    Args:
        file: what the errors name.
        table: the events.
        student_ids: the students table's ids.
        lecture_ids: the lectures table's ids.

    Returns:
        The validated events (`features.event_table`).

    Raises:
        SchemaError: naming the file, its 1-based rows, the column and the value.
    """
    from features.event_table import as_event_table
    from features.validation import validate_events

    table = coded(table)
    if is_coded(table):
        check_whole_file(file, table, student_ids, lecture_ids)
        typed = typed_events(file, table)
        if typed is not None:
            return typed
    return as_event_table(validate_events(table, file, student_ids=student_ids, lecture_ids=lecture_ids))


def coded(table: pa.Table) -> pa.Table:
    """The columns in the forms the checks read: text ids and types dictionary-encoded, event and request
    ids as plain text (a dictionary decoded, an all-null column as null text: then its nulls are named)."""
    names = table.column_names
    for name in names:
        column = table.column(name)
        if name in DICTIONARY_COLUMNS and _is_text(column.type):
            column = column.dictionary_encode()
        elif name in ("event_id", "request_id"):
            column = _plain_text(column)
        table = table.set_column(names.index(name), name, column)
    return table


def is_coded(table: pa.Table) -> bool:
    """Whether the ids and types are dictionary-encoded text (what `check_whole_file` needs)."""
    return all(pa.types.is_dictionary(table.schema.field(c).type) for c in DICTIONARY_COLUMNS)


def check_whole_file(file: str, table: pa.Table, student_ids: pd.Index, lecture_ids: pd.Index) -> None:
    """The rules that need every row at once: ids and types present, known and not blank; event ids unique.

    Args:
        file: the events file (named in errors).
        table: its events, `is_coded`.
        student_ids: the students table's ids.
        lecture_ids: the lectures table's ids.

    Raises:
        SchemaError: naming the file, its 1-based rows, the column and the value.
    """
    if "event_id" in table.column_names:
        _check_present_text(file, table.column("event_id"), "event_id")
    for name, known, problem in (
        ("student_id", student_ids, "not in the students table"),
        ("lecture_id", lecture_ids, "not in the lectures table"),
        ("type", pd.Index(EVENT_TYPES), f"expected one of {', '.join(EVENT_TYPES)}"),
    ):
        codes, values = arrow_codes(table.column(name))
        _check_dictionary_column(file, name, codes, values)
        _check_unknown(file, name, codes, values, known, problem)
        del codes, values
    if "event_id" in table.column_names:
        _check_unique_ids(file, table.column("event_id"))


def typed_events(file: str, table: pa.Table) -> pa.Table | None:
    """The events in the schema's exact types, after the rules on their values (a missing `event_id` or
    `progress` given the validator's defaults); None when a column is not of a type these checks read
    (then `validate_events` converts and checks it).

    Args:
        file: the events file (named in errors).
        table: its events, `is_coded` and through `check_whole_file`.

    Returns:
        The `EVENTS` columns in order (ids and types still dictionary-encoded, progress float32, times
        microseconds UTC), or None.

    Raises:
        SchemaError: a progress value missing, not finite or outside 0..1; a timestamp missing.
    """
    names = table.column_names
    text = {c: table.column(c) for c in ("event_id", "request_id") if c in names}
    if not all(_is_text(column.type) for column in text.values()):
        return None
    progress = table.column("progress").type if "progress" in names else pa.float32()
    times = table.column("occurred_at")
    if _is_text(times.type):
        times = _zoned_times(times)  # (ISO 8601 text, each value with its zone)
    numeric = pa.types.is_floating(progress) or pa.types.is_integer(progress)
    if times is None or not numeric or not (pa.types.is_timestamp(times.type) and times.type.tz is not None):
        return None
    columns = {name: table.column(name) for name in DICTIONARY_COLUMNS}
    if "progress" in names:
        columns["progress"] = _checked_progress(file, table.column("progress"))
    else:  # the documented default (`features.validation.default_progress`)
        columns["progress"] = pa.chunked_array([pa.array(progress_defaults(table.column("type")))])
    if times.null_count:
        raise SchemaError(
            file, "occurred_at", _rows(_nulls(times)), "missing occurred_at: every row needs a value"
        )
    # a zone other than UTC is the same instant; finer units are rounded down to microseconds, as
    # validated (a cast alone would round toward zero: up, before 1970)
    if times.type.unit == "ns":
        times = pc.floor_temporal(times, unit="microsecond")
    columns["occurred_at"] = times.cast(_TIMESTAMP, safe=False)
    if "event_id" in names:
        columns["event_id"] = text["event_id"]
    else:  # the ids `validate_events` would give (a hash of the row number and the row's values)
        columns["event_id"] = generated_event_id_column(
            *(columns[c] for c in ("student_id", "lecture_id", "type", "occurred_at", "progress"))
        )
    request = text.get("request_id")
    columns["request_id"] = request if request is not None else pa.nulls(table.num_rows, pa.string())
    typed = {f.name: columns[f.name] for f in EVENTS}
    for name, column in typed.items():
        want = EVENTS.field(name).type
        if not pa.types.is_dictionary(column.type) and column.type != want:
            typed[name] = column.cast(want)
    return pa.table(typed)


def _plain_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A text column as plain text (a dictionary-encoded one decoded, an all-null one as null text); any
    other column as it is (the validator names its rows)."""
    kind = column.type
    if pa.types.is_dictionary(kind) and _is_text(kind.value_type):
        return column.cast(kind.value_type)
    if pa.types.is_null(kind):
        return column.cast(pa.string())
    return column


def _zoned_times(text: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """ISO 8601 text in which every value carries its zone (`Z` or an offset), as UTC microseconds; None
    when a value has no zone or does not read (the validator names its rows). Arrow reads text into a
    zoned type only when the text has a zone."""
    try:
        return pc.utf8_trim_whitespace(text).cast(_TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


# ----------------------------------------------------------------------------------------------------------
# the checks


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _nulls(column: pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    if column.num_chunks == 0:
        return np.zeros(0, dtype=bool)
    return np.concatenate([c.is_null().to_numpy(zero_copy_only=False) for c in column.chunks])


def _check_dictionary_column(
    file: str, name: str, codes: npt.NDArray[np.int32], values: npt.NDArray[Any]
) -> None:
    """Nulls and blank values of a dictionary column (the rules of `validate_events` for ids and codes)."""
    null = codes < 0
    if null.any():
        raise SchemaError(file, name, _rows(null), f"missing {name}: every row needs a value")
    blank_values = np.fromiter((not str(v).strip() for v in values), dtype=bool, count=len(values))
    if blank_values.any():
        blank = blank_values[codes]
        if blank.any():
            raise SchemaError(file, name, _rows(blank), f"empty {name}: every row needs a non-blank value")


def _check_unknown(
    file: str,
    name: str,
    codes: npt.NDArray[np.int32],
    values: npt.NDArray[Any],
    known: pd.Index,
    problem: str,
) -> None:
    """Rows whose dictionary value is not among `known`: raise naming file, rows, column and values."""
    unknown_values = known.get_indexer(pd.Index(values, dtype=object)) < 0
    if unknown_values.any():
        unknown = unknown_values[codes]
        if unknown.any():
            shown = _show(values[codes[unknown]])
            raise SchemaError(file, name, _rows(unknown), f"unknown {name} {shown}: {problem}")


def _check_present_text(file: str, column: pa.ChunkedArray, name: str) -> None:
    """No nulls and no blank values in a plain (not dictionary-encoded) text column."""
    if not _is_text(column.type):
        return  # not text: `validate_events` names the rows
    if column.null_count:
        raise SchemaError(file, name, _rows(_nulls(column)), f"missing {name}: every row needs a value")
    start = 0
    for chunk in column.chunks:
        blank = pc.equal(pc.utf8_trim_whitespace(chunk), "").to_numpy(zero_copy_only=False)
        if blank.any():
            mask = np.zeros(len(column), dtype=bool)
            mask[start : start + len(chunk)] = blank
            raise SchemaError(file, name, _rows(mask), f"empty {name}: every row needs a non-blank value")
        start += len(chunk)


def _check_unique_ids(file: str, column: pa.ChunkedArray) -> None:
    """No event id twice over the whole file (8 bytes per event held while a repeat is looked for)."""
    if not _is_text(column.type):
        return
    candidates = hash_repeats(column)
    if candidates.size == 0:
        return
    # equal hashes: compare the ids themselves (a 64-bit collision is not a duplicate)
    ids = pd.Series(column.take(pa.array(candidates)).to_numpy(zero_copy_only=False), index=candidates)
    error = duplicate_ids(file, "event_id", ids, len(column))
    if error is not None:
        raise error


def _checked_progress(file: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Progress as float32 after the rules `validate_events` applies to it (read as float64, as it does)."""
    values = column.cast(pa.float64()).to_numpy()  # nulls become NaN
    missing = np.isnan(values)
    if missing.any():
        raise SchemaError(file, "progress", _rows(missing), "missing progress: every row needs a value")
    infinite = np.isinf(values)
    if infinite.any():
        raise SchemaError(
            file, "progress", _rows(infinite), f"progress {_show(values[infinite])} is not a finite number"
        )
    del values
    stored = column if column.type == pa.float32() else column.cast(pa.float32(), safe=False)
    small = stored.to_numpy()  # the range is checked on the values kept, as `validate_events` does
    outside = (small < 0.0) | (small > 1.0)
    if outside.any():
        raise SchemaError(
            file, "progress", _rows(outside), f"progress {_show(small[outside])} is outside 0..1"
        )
    return stored
