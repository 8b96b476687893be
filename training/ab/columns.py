"""The A/B inputs' columns as Arrow and numpy: text, UTC microseconds, integer codes.

Exposures and events reach the analysis as Arrow tables (`training.ab.exposures` reads them) or, from a
test or a simulated run, as pandas frames; `as_table` makes both Arrow, and the attribution and the
covariates read their columns through the helpers here, so the work that grows with exposures and events
never holds a Python object per row.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.ids import arrow_dictionary
from features.validation import epoch_microseconds

#: The times' type: UTC microseconds.
UTC = pa.timestamp("us", tz="UTC")
#: An absent time among int64 microseconds.
NONE = np.iinfo(np.int64).min


def microseconds(delta: timedelta) -> int:
    """A duration in whole microseconds (a finer remainder dropped)."""
    return delta // timedelta(microseconds=1)


def utc(s: pd.Series) -> pd.Series:
    """A pandas column as UTC microsecond timestamps."""
    return pd.to_datetime(s, utc=True).astype(pd.DatetimeTZDtype(unit="us", tz="UTC"))


def as_table(data: pa.Table | pd.DataFrame) -> pa.Table:
    """The input as Arrow: a pandas frame's columns converted one by one (times as UTC microseconds)."""
    if isinstance(data, pa.Table):
        return data
    columns = {}
    for column in data.columns:
        values = data[column]
        if column in ("shown_at", "occurred_at"):
            instants = utc(values).dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
            columns[str(column)] = pa.array(instants, UTC, mask=values.isna().to_numpy())
        elif column == "lecture_ids":
            lists = [
                [str(i) for i in v] if isinstance(v, list | tuple | np.ndarray) else None for v in values
            ]
            columns[str(column)] = pa.array(lists, pa.list_(pa.string()))
        elif values.dtype == object or isinstance(values.dtype, pd.StringDtype | pd.CategoricalDtype):
            cells = values.astype(object).where(values.notna(), None).tolist()
            columns[str(column)] = pa.array([None if v is None else str(v) for v in cells], pa.string())
        else:
            columns[str(column)] = pa.array(values.to_numpy(), from_pandas=True)
    return pa.table(columns) if columns else pa.table({c: pa.array([], pa.string()) for c in data.columns})


def text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text (a dictionary-encoded column decoded; a null-typed column as null text)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    return column


def times(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Times as UTC microseconds (a zone-less column read as UTC)."""
    if column.type == UTC:
        return column
    if pa.types.is_timestamp(column.type):
        if column.type.unit == "ns":  # rounded down, as everywhere (a cast rounds toward zero)
            column = pc.floor_temporal(column, unit="microsecond")
        return column.cast(pa.timestamp(column.type.unit, tz="UTC")).cast(UTC, safe=False)
    return pa.chunked_array([pa.array(utc(column.to_pandas()).dt.tz_localize(None).to_numpy(), UTC)])


def micros(column: pa.ChunkedArray) -> npt.NDArray[np.int64]:
    """Times as int64 microseconds since the epoch (UTC); a null is `NONE`."""
    return epoch_microseconds(times(column))


def codes(column: pa.ChunkedArray | pa.Array) -> tuple[npt.NDArray[np.int64], pa.Array]:
    """(code per row, -1 for a null; the distinct values as Arrow text) of a column read as text
    (`features.ids.arrow_dictionary`; int64 codes: the attribution's keys multiply them)."""
    per_row, distinct = arrow_dictionary(
        text(column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column]))
    )
    return per_row.astype(np.int64), distinct


def index_in(column: pa.ChunkedArray, values: pa.Array) -> npt.NDArray[np.int64]:
    """Each row's position in ``values`` (-1 when absent or null)."""
    found = pc.index_in(text(column), value_set=text(pa.chunked_array([values])).combine_chunks())
    return np.asarray(pc.fill_null(found.cast(pa.int64()), -1).to_numpy(), dtype=np.int64)
