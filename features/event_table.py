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
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa


def _arrow_column(values: pd.Series[Any]) -> pa.Array | pa.ChunkedArray:
    """One pandas column as Arrow, converted as it is (checking is `validate_events`' job): categoricals
    stay dictionary-encoded, zone-aware times become UTC timestamps in their unit, Arrow-backed text is
    handed over; a column Arrow cannot type (mixed values) becomes the text of each value, nulls kept."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = pa.array(values.cat.codes.to_numpy(), mask=values.isna().to_numpy())
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
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        nulls = values.isna().to_numpy()
        text = [None if null else str(v) for v, null in zip(values.tolist(), nulls.tolist(), strict=True)]
        return pa.array(text, type=pa.string())


def as_event_table(events: pd.DataFrame | pa.Table) -> pa.Table:
    """The events as an Arrow table: an Arrow table as it is, a pandas frame converted column by column
    (its index dropped, column names as text, a repeated name kept so validation can name it)."""
    if isinstance(events, pa.Table):
        return events
    if not isinstance(events, pd.DataFrame):
        kind = type(events).__name__
        raise TypeError(f"expected a pandas DataFrame or a pyarrow Table of events, got {kind}")
    frame = events.reset_index(drop=True)
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


def take_rows(events: pa.Table, rows: npt.NDArray[np.integer[Any]]) -> pa.Table:
    """The rows at positions `rows`, in that order."""
    return events.take(pa.array(np.asarray(rows, dtype=np.int64), type=pa.int64()))


def _like(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    """`column` in the type `kind` of the table it joins: text dictionary-encoded for a dictionary column
    (the ids keep a few bytes per event), any other type cast."""
    if column.type == kind:
        return column
    if pa.types.is_dictionary(kind):
        plain = column.cast(kind.value_type) if not pa.types.is_dictionary(column.type) else column
        encoded = plain.cast(kind.value_type).dictionary_encode() if plain.num_chunks else plain
        return encoded.cast(kind) if encoded.type != kind else encoded
    return column.cast(kind)


def concat_events(tables: Sequence[pa.Table]) -> pa.Table:
    """The tables' rows one after the other, with the first table's columns and types (each other
    table's columns taken by name, converted to them). Chunks keep their own dictionaries (`features.ids`
    reads such a column as one)."""
    first = tables[0]
    rest = []
    for table in tables[1:]:
        missing = [n for n in first.column_names if n not in table.column_names]
        if missing:
            raise KeyError(f"events to append lack the column(s) {', '.join(missing)}")
        columns = [_like(table.column(f.name), f.type) for f in first.schema]
        rest.append(pa.Table.from_arrays(columns, schema=first.schema))
    return pa.concat_tables([first, *rest])


def numpy_column(column: pa.ChunkedArray) -> npt.NDArray[Any]:
    """A fixed-width column (numbers, timestamps) as one numpy array: each chunk's buffer viewed (a null
    read as NaN or NaT), then one copy by numpy, none for a single chunk. (Arrow's own `to_numpy` of a
    chunked column copies into Arrow's memory pool, which keeps the pages after they are freed: at 1 M
    students a column of the training events is 400 MB.)"""
    parts = [chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.zeros(0, dtype=column.type.to_pandas_dtype())
    return np.concatenate(parts)


def event_ticks(events: pa.Table) -> tuple[npt.NDArray[np.int64], str]:
    """The events' `occurred_at` as integer counts since the epoch (UTC) in the column's own unit, and
    the unit: compared as integers, nothing is rounded (a validated column is in microseconds; a
    zone-less one is read as UTC; a null is the int64 minimum, as pandas' NaT). The array may be a
    read-only view of the table's buffer. A column not held as timestamps (an unvalidated frame's text)
    is parsed as `pandas.to_datetime` does."""
    column = events.column("occurred_at")
    if not pa.types.is_timestamp(column.type):
        times = pd.to_datetime(column.to_pandas(), utc=True)
        unit = str(times.dt.unit)
        column = pa.chunked_array([pa.array(times.dt.tz_convert(None).to_numpy(), pa.timestamp(unit))])
    return numpy_column(column).view(np.int64), str(column.type.unit)  # (a null is NaT: the minimum)
