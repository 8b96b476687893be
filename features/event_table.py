"""Events in memory: one Arrow table, and the row operations the training path does on it.

A `features.tables.Dataset` holds its events as a `pyarrow.Table` (the `features.schemas.EVENTS` columns
once validated; `read_dataset` keeps the ids and types dictionary-encoded as the file has them: a few bytes
per event). The splits, the matrices, the evaluation, model selection and retraining select, take, append
and read columns of that table through Arrow and numpy; pandas holds no copy of the events on that path.
A pandas frame handed to a `Dataset` (a generator's or a test's) is converted once, by `as_event_table`.

Column values are matched as text through `features.ids`, times read through `event_ticks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: A table or a column (`take_ascending` gives back what it is given).
Taken = TypeVar("Taken", pa.Table, pa.ChunkedArray)


#: What `pandas.api.types.infer_dtype` calls a column Arrow holds as it is (an object column of text, a
#: categorical of text or numbers); anything else, e.g. 7 among text ids or True among numbers, Arrow
#: would coerce.
_OBJECT_KINDS = ("string", "empty")
_CATEGORY_KINDS = ("string", "empty", "integer", "floating")


def _held_as_is(values: pd.Series[Any]) -> bool:
    """Whether Arrow holds the column's values as they are (no value coerced to another type)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return pd.api.types.infer_dtype(values.cat.categories, skipna=True) in _CATEGORY_KINDS
    if values.dtype == object:
        return pd.api.types.infer_dtype(values, skipna=True) in _OBJECT_KINDS
    return True


def _arrow_column(values: pd.Series[Any]) -> pa.Array | pa.ChunkedArray:
    """One pandas column (`_held_as_is`) as Arrow: categoricals stay dictionary-encoded (int32 codes),
    zone-aware times become UTC timestamps in their unit, Arrow-backed text is handed over."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = pa.array(values.cat.codes.to_numpy().astype(np.int32), mask=values.isna().to_numpy())
        distinct = _arrow_column(pd.Series(values.cat.categories))
        if isinstance(distinct, pa.ChunkedArray):
            distinct = distinct.combine_chunks()
        return pa.DictionaryArray.from_arrays(codes, distinct)
    if isinstance(values.dtype, pd.DatetimeTZDtype):  # (pyarrow reads zone-aware pandas columns through a
        unit = values.dt.unit  # deprecated pandas path: hand it the UTC instants instead)
        naive = values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype=f"datetime64[{unit}]")
        return pa.array(naive, type=pa.timestamp(unit, tz="UTC"), mask=values.isna().to_numpy())
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        return pa.array(values.array)
    return pa.array(values, from_pandas=True)


def as_event_table(events: pd.DataFrame | pa.Table) -> pa.Table:
    """The events as an Arrow table: an Arrow table as it is, a pandas frame converted column by column
    (its index dropped, column names as text, a repeated name kept so validation can name it).

    A frame with a column Arrow would coerce (`_held_as_is`: mixed values in an object column) is
    validated first (`features.validation.validate_events`), so a bad value is named with its row as
    the validator names it, never turned into another one; the validated columns are converted.

    Raises:
        SchemaError: such a frame breaks the events' schema.
    """
    if isinstance(events, pa.Table):
        return events
    if not isinstance(events, pd.DataFrame):
        kind = type(events).__name__
        raise TypeError(f"expected a pandas DataFrame or a pyarrow Table of events, got {kind}")
    frame = events.reset_index(drop=True)
    if not all(_held_as_is(frame.iloc[:, i]) for i in range(frame.shape[1])):
        from features.validation import validate_events

        frame = validate_events(frame, "events")
    arrays = [_arrow_column(frame.iloc[:, i]) for i in range(frame.shape[1])]
    return pa.Table.from_arrays(arrays, names=[str(c) for c in frame.columns])


def rows_where(events: pa.Table, mask: npt.NDArray[np.bool_]) -> pa.Table:
    """The rows where `mask` holds, in order; a slice sharing the events' memory when they are a leading
    run (events in time order cut at an instant: at 1 M students the training side of a temporal split
    is 50 M of 63 M events, and its validation split cuts that again)."""
    kept = int(np.count_nonzero(mask))
    if bool(mask[:kept].all()):
        return events.slice(0, kept)
    return events.filter(pa.array(mask, type=pa.bool_()))


def take_ascending(data: Taken, rows: npt.NDArray[np.integer[Any]]) -> Taken:
    """The rows at positions `rows` (ascending) of a table or a column, taken chunk by chunk: Arrow's take
    over a chunked column first concatenates its chunks (a copy of the whole column: at 1 M students the
    event ids alone are 1.5 GB), here each chunk hands over its own rows."""
    rows = np.asarray(rows, dtype=np.int64)
    pieces = data.to_batches() if isinstance(data, pa.Table) else data.chunks
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces], dtype=np.int64)])
    cuts = np.searchsorted(rows, offsets)
    taken = [
        piece.take(pa.array(rows[cuts[i] : cuts[i + 1]] - offsets[i], type=pa.int64()))
        for i, piece in enumerate(pieces)
        if cuts[i + 1] > cuts[i]
    ]
    if isinstance(data, pa.Table):
        return pa.Table.from_batches(taken, schema=data.schema) if taken else data.slice(0, 0)
    return pa.chunked_array(taken, type=data.type) if taken else data.slice(0, 0)


def take_rows(events: pa.Table, rows: npt.NDArray[np.integer[Any]]) -> pa.Table:
    """The rows at positions `rows`, in that order: taken in ascending order chunk by chunk
    (`take_ascending`), then put in `rows`' order within what was taken (copies the size of the result,
    not of the table)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size < 2 or bool((rows[1:] >= rows[:-1]).all()):
        return take_ascending(events, rows)
    order = np.argsort(rows, kind="stable")
    # one chunk per column (dictionaries unified first), the chunk-by-chunk pieces released: the take
    # below has nothing to concatenate (a full permutation holds two copies at most, as Arrow's own)
    part = take_ascending(events, rows[order]).unify_dictionaries().combine_chunks()
    back = np.empty_like(order)
    back[order] = np.arange(order.size, dtype=np.int64)
    return part.take(pa.array(back, type=pa.int64()))


def _joined_type(columns: Sequence[pa.ChunkedArray]) -> pa.DataType:
    """The type one column of several tables takes when they are joined: the first table's with rows
    (else the first's) that is not all-null; a dictionary with int32 indices (room for the new values'
    codes)."""
    typed = [c.type for c in columns if not pa.types.is_null(c.type)]
    filled = [c.type for c in columns if len(c) and not pa.types.is_null(c.type)]
    kind = (filled or typed or [columns[0].type])[0]
    return pa.dictionary(pa.int32(), kind.value_type) if pa.types.is_dictionary(kind) else kind


def _as_type(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    """`column` in the type `kind`: text dictionary-encoded for a dictionary (the ids keep a few bytes per
    event), an empty or null column as nothing or nulls of it, times cast without a safety check (a
    finer unit rounded toward zero), anything else cast."""
    if column.type == kind:
        return column
    if len(column) == 0:
        return pa.chunked_array([], type=kind)
    if pa.types.is_null(column.type):
        return pa.chunked_array([pa.nulls(len(column), type=kind)])
    if pa.types.is_dictionary(kind):
        if not pa.types.is_dictionary(column.type):
            column = column.cast(kind.value_type).dictionary_encode()
        return column.cast(kind)
    return column.cast(kind, safe=not pa.types.is_timestamp(kind))


def concat_events(tables: Sequence[pa.Table]) -> pa.Table:
    """The tables' rows one after the other, with the first table's columns (each other table's taken by
    name) in one type each (`_joined_type`), a dictionary column over one dictionary (`_one_dictionary`).

    Raises:
        KeyError: a table lacks one of the first's columns.
    """
    names = tables[0].column_names
    for table in tables[1:]:
        missing = [n for n in names if n not in table.column_names]
        if missing:
            raise KeyError(f"events to append lack the column(s) {', '.join(missing)}")
    kinds = [_joined_type([t.column(n) for t in tables]) for n in names]
    schema = pa.schema([pa.field(n, k) for n, k in zip(names, kinds, strict=True)])
    columns = []
    for name, kind in zip(names, kinds, strict=True):
        parts = [_as_type(t.column(name), kind) for t in tables]
        chunks = [c for part in parts for c in part.chunks]
        if pa.types.is_dictionary(kind):
            chunks = _one_dictionary(chunks)
        columns.append(pa.chunked_array(chunks, kind))
    return pa.Table.from_arrays(columns, schema=schema)


def _one_dictionary(chunks: list[pa.DictionaryArray]) -> list[pa.DictionaryArray]:
    """Dictionary chunks over one dictionary: the first chunk's, with each value another chunk adds
    appended (codes keep their meaning: a chunk already over it keeps its indices, no copy); the other
    chunks' indices mapped onto it. One dictionary per column, as a file read has, so nothing downstream
    unifies dictionaries chunk by chunk (Arrow's `unify_dictionaries` maps every chunk, even one that
    shares the dictionary: hundreds of chunks of a 1M-value dictionary)."""
    if not chunks:
        return chunks
    dictionary = chunks[0].dictionary
    indices = []
    for chunk in chunks:
        if chunk.dictionary.equals(dictionary):  # (the same buffers: no comparison of the values)
            indices.append(chunk.indices)
            continue
        values = chunk.dictionary
        added = values.filter(pc.invert(pc.is_in(values, value_set=dictionary)))
        if len(added):
            dictionary = pa.concat_arrays([dictionary, added])
        position = pc.index_in(values, value_set=dictionary).cast(pa.int32())
        indices.append(position.take(chunk.indices))
    kind = chunks[0].type.index_type
    return [pa.DictionaryArray.from_arrays(i.cast(kind), dictionary) for i in indices]


def numpy_column(column: pa.ChunkedArray) -> npt.NDArray[Any]:
    """A fixed-width column (numbers, timestamps) as one numpy array: each chunk's buffer viewed (a null
    read as NaN or NaT), then one copy by numpy, none for a single chunk. (Arrow's own `to_numpy` of a
    chunked column copies into Arrow's memory pool, which keeps the pages after they are freed: at 1 M
    students a column of the training events is 400 MB.)"""
    parts: list[npt.NDArray[Any]] = [np.asarray(c.to_numpy(zero_copy_only=False)) for c in column.chunks]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.asarray(pa.array([], type=column.type).to_numpy(zero_copy_only=False))
    return np.concatenate(parts)


#: `event_ticks`' units (Arrow's and numpy's timestamp units) in a second.
TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def event_ticks(events: pa.Table) -> tuple[npt.NDArray[np.int64], str]:
    """The events' `occurred_at` as integer counts since the epoch (UTC) in the column's own unit, and
    the unit: compared as integers, nothing is rounded (a validated column is in microseconds; a
    zone-less one is read as UTC; a null is the int64 minimum, as pandas' NaT). The array may be a
    read-only view of the table's buffer. A column not held as timestamps (an unvalidated frame's text)
    is parsed as ISO 8601 text by `pandas.to_datetime`."""
    column = events.column("occurred_at")
    if not pa.types.is_timestamp(column.type):
        times = pd.to_datetime(column.to_pandas(), utc=True, format="ISO8601")
        unit = str(times.dt.unit)
        column = pa.chunked_array([pa.array(times.dt.tz_convert(None).to_numpy(), pa.timestamp(unit))])
    return numpy_column(column).view(np.int64), str(column.type.unit)  # (a null is NaT: the minimum)


def event_microseconds(events: pa.Table) -> npt.NDArray[np.int64]:
    """The events' `occurred_at` as microseconds since the epoch (UTC), rounded down: `event_ticks` in
    one unit for every table (a null stays the int64 minimum)."""
    ticks, unit = event_ticks(events)
    if unit == "us":
        return ticks
    null = ticks == np.iinfo(np.int64).min
    per_second = TICKS_PER_SECOND[unit]
    if per_second > TICKS_PER_SECOND["us"]:
        micros = ticks // (per_second // TICKS_PER_SECOND["us"])
    else:
        micros = ticks * (TICKS_PER_SECOND["us"] // per_second)
    micros[null] = np.iinfo(np.int64).min
    return micros
