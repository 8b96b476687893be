"""Frames as Arrow tables the way a person (or a partition of `read_partitioned`) holds them."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from features.validation import epoch_microseconds


def as_arrow(frame: pd.DataFrame) -> pa.Table:
    """The frame as Arrow: timestamps as UTC microseconds, categoricals dictionary-encoded, the rest as
    the Python values it holds."""
    columns = {}
    for name in frame.columns:
        values = frame[name]
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            columns[name] = pa.array(epoch_microseconds(values), type=pa.timestamp("us", tz="UTC"))
        elif isinstance(values.dtype, pd.CategoricalDtype):
            columns[name] = pa.array(values.astype(object).tolist()).dictionary_encode()
        else:
            columns[name] = pa.array(values.tolist())
    return pa.table(columns)
