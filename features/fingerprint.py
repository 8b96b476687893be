"""The dataset fingerprint: a sha256 of the three tables' content, computed with numpy over the columns'
codes, numbers and Arrow text buffers; no pandas hashing and no Python object per event.

Every cell is hashed to 64 bits: text by FNV-1a over its UTF-8 bytes (a dictionary-encoded column hashes
its distinct values once and takes them by code, so coded and plain text hash alike), numbers by their
value in the schema's type, timestamps by their UTC microseconds, a list by its items joined with
`LIST_SEPARATOR`, a null by one constant; each value then goes through splitmix64's finaliser. A row's
hash combines its cells in schema order. The row hashes are sorted, so row order does not count, and
sha256 takes them with the table's name, row count and schema and `FINGERPRINT_VERSION`.

The hash is ours, not a library's: it must not change when pandas or pyarrow does (a stored manifest's
fingerprint is compared with a fresh one). Bump `FINGERPRINT_VERSION` when the rule changes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.ids import text_codes
from features.validation import arrow_text, epoch_microseconds

#: Mixed into every digest and recorded in manifests (`fingerprint_version`).
FINGERPRINT_VERSION = "learnrec-fingerprint/2"
#: Rows hashed at a time (bounds the working memory to a few 8-byte arrays of this length).
BLOCK_ROWS = 1_000_000
#: Joins a list cell's items: cannot appear in codes and keeps ["a b"] != ["a", "b"].
LIST_SEPARATOR = "\x1f"

U64 = npt.NDArray[np.uint64]
_NULL = np.uint64(0x9AE16A3B2F90404F)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x: U64) -> U64:
    """splitmix64's finaliser (a new array): every input bit reaches every output bit."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def text_hashes(values: pa.Array | pa.ChunkedArray) -> U64:
    """Each value's hash: FNV-1a over its UTF-8 bytes and its length, then `mix`; a null gets one constant.

    The bytes are read from Arrow's buffers, one pass per byte position over the values at least that
    long (longest first), so the work is the total text length in numpy operations.
    """
    if isinstance(values, pa.ChunkedArray):
        parts = [text_hashes(chunk) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    array = values if values.type == pa.large_string() else values.cast(pa.large_string())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + n + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    descending = -lengths[order]  # ascending: the values longer than j are a prefix of `order`
    starts = offsets[:-1][order]
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    for j in range(int(lengths.max())):
        live = int(np.searchsorted(descending, -j, side="left"))
        h[:live] ^= data[starts[:live] + j]
        h[:live] *= _FNV_PRIME
    out = np.empty(n, dtype=np.uint64)
    out[order] = mix(h ^ lengths[order].astype(np.uint64))
    if array.null_count:
        out[array.is_null().to_numpy(zero_copy_only=False)] = _NULL
    return out


def _value_bits(typed: npt.NDArray[Any]) -> U64:
    """Numbers held in the schema's type as 64 bits: floats widened (one zero, one NaN), integers as int64."""
    if np.issubdtype(typed.dtype, np.floating):
        wide = typed.astype(np.float64) + 0.0  # -0.0 + 0.0 is 0.0
        wide[np.isnan(wide)] = np.nan  # one NaN
        return wide.view(np.uint64)
    return typed.astype(np.int64).view(np.uint64)


def _number_hashes(values: pd.Series[Any] | pa.ChunkedArray, kind: pa.DataType) -> U64:
    """Each number's or timestamp's hash (pandas or Arrow alike: the value counts, not how it is held)."""
    if isinstance(values, pa.ChunkedArray):
        missing = pc.is_null(values, nan_is_null=True)  # (a NaN is missing, as pandas' isna has it)
        nulls = missing.to_numpy(zero_copy_only=False) if pc.any(missing).as_py() else np.zeros(0, bool)
        filled = pc.fill_null(values, pa.scalar(0, type=values.type)) if values.null_count else values
        if pa.types.is_timestamp(kind):
            bits = epoch_microseconds(filled).view(np.uint64)
        else:  # the schema's type first
            bits = _value_bits(np.asarray(filled.to_numpy()).astype(kind.to_pandas_dtype(), copy=False))
    else:
        nulls = values.isna().to_numpy()
        if pa.types.is_timestamp(kind):
            bits = epoch_microseconds(pd.to_datetime(values, utc=True)).view(np.uint64)
        else:
            filled = values.where(~nulls, 0) if nulls.any() else values
            bits = _value_bits(np.asarray(filled.to_numpy(dtype=kind.to_pandas_dtype())))
    out = mix(bits)
    if nulls.size:
        out[nulls] = _NULL
    return out


def _list_text(values: pd.Series[Any]) -> pa.Array:
    cells = [
        [str(x) for x in v] if isinstance(v, list | tuple | np.ndarray) else None for v in values.tolist()
    ]
    return pc.binary_join(pa.array(cells, type=pa.list_(pa.string())), LIST_SEPARATOR)


def _arrow_blocks(values: pa.ChunkedArray, kind: pa.DataType, block: int) -> Any:
    """`_column_blocks` of an Arrow column (the events held by `features.event_table`)."""
    n = len(values)
    if pa.types.is_string(kind) and pa.types.is_dictionary(values.type):
        codes, text = text_codes(values)  # the distinct values once, then by code
        distinct = np.append(text_hashes(pa.array(text, type=pa.large_string())), _NULL)
        for start in range(0, n, block):
            yield distinct[codes[start : start + block]]
        return
    held = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    plain = (
        (pa.types.is_string(kind) and (pa.types.is_string(held) or pa.types.is_large_string(held)))
        or (
            (pa.types.is_floating(kind) or pa.types.is_integer(kind))
            and (pa.types.is_floating(held) or pa.types.is_integer(held))
        )
        or (pa.types.is_timestamp(kind) and pa.types.is_timestamp(held))
    )
    for start in range(0, n, block):
        part = values.slice(start, block)
        if not plain:  # (an unvalidated table's other types: converted as pandas converts them)
            yield from _column_blocks(part.to_pandas(), kind, block)
        elif pa.types.is_string(kind):
            yield text_hashes(part.cast(held))
        else:
            yield _number_hashes(part.cast(held), kind)


def _column_blocks(values: pd.Series[Any] | pa.ChunkedArray, kind: pa.DataType, block: int) -> Any:
    """The column's cell hashes, `block` rows at a time."""
    if isinstance(values, pa.ChunkedArray):
        yield from _arrow_blocks(values, kind, block)
        return
    n = len(values)
    if pa.types.is_string(kind) and isinstance(values.dtype, pd.CategoricalDtype):
        # the distinct values once, then by code (a null's code -1 takes the appended null hash)
        codes, text = text_codes(values)
        distinct = np.append(text_hashes(pa.array(text, type=pa.large_string())), _NULL)
        for start in range(0, n, block):
            yield distinct[codes[start : start + block]]
    elif pa.types.is_string(kind) and isinstance(values.dtype, pd.StringDtype):
        text = arrow_text(values)  # held by Arrow: no copy
        for start in range(0, n, block):
            yield text_hashes(text.slice(start, block))
    else:
        for start in range(0, n, block):
            part = values.iloc[start : start + block]
            if pa.types.is_list(kind):
                yield text_hashes(_list_text(part))
            elif pa.types.is_string(kind):
                yield text_hashes(arrow_text(part.astype("str")))
            else:
                yield _number_hashes(part, kind)


def table_digest(
    name: str, frame: pd.DataFrame | pa.Table, schema: pa.Schema, block: int = BLOCK_ROWS
) -> bytes:
    """sha256 of one table: its name, row count and schema, then its sorted row hashes.

    Args:
        name: the table's name.
        frame: the table (pandas, or Arrow as the events are held), with every column of `schema`.
        schema: its schema (column order and types).
        block: rows hashed at a time.

    Returns:
        32 bytes.
    """
    digest = hashlib.sha256(f"{FINGERPRINT_VERSION}\n{name}\n{len(frame)}\n".encode())
    for f in schema:
        digest.update(f"{f.name}:{f.type}\n".encode())
    rows = np.full(len(frame), np.uint64(len(schema)), dtype=np.uint64)
    for f in schema:
        start = 0
        for cells in _column_blocks(frame[f.name], f.type, block):
            stop = start + len(cells)
            rows[start:stop] = mix(rows[start:stop] * _GOLDEN + cells)
            start = stop
    rows.sort()  # row order does not count
    digest.update(rows.astype("<u8", copy=False).tobytes())
    return digest.digest()
