"""The dataset fingerprint's rule (`features.fingerprint`): its text hash against a plain-Python FNV-1a,
the same digest whatever holds a column (codes, Arrow text, Python strings, other number dtypes, blocks),
any one cell's change seen, row order ignored, and the digest pinned so a library upgrade cannot move it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.fingerprint import LIST_SEPARATOR, mix, table_digest, text_hashes
from features.schemas import EVENTS, LECTURES, STUDENTS
from features.tables import Dataset, validated
from tests.features.test_tables import dataset

M64 = (1 << 64) - 1


def _reference(text: str | None) -> int:
    """FNV-1a over the UTF-8 bytes, xor the length, then splitmix64's finaliser: one value, in Python."""
    if text is None:
        return int(text_hashes(pa.array([None], type=pa.string()))[0])
    h = 0xCBF29CE484222325
    data = text.encode("utf-8")
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & M64
    x = h ^ len(data)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=40), cut=st.integers(0, 40))
def test_text_hashes_are_fnv1a_of_the_utf8_bytes(texts: list[str | None], cut: int) -> None:
    expected = [_reference(t) for t in texts]
    whole = pa.array(texts, type=pa.string())
    assert text_hashes(whole).tolist() == expected
    assert text_hashes(whole.cast(pa.large_string())).tolist() == expected
    # sliced chunks read their own offsets
    cut = min(cut, len(texts))
    chunked = pa.chunked_array([whole.slice(0, cut), whole.slice(cut)], type=pa.string())
    assert text_hashes(chunked).tolist() == expected


def test_null_text_is_not_the_empty_text() -> None:
    hashes = text_hashes(pa.array(["", None, "null"]))
    assert len(set(hashes.tolist())) == 3


def test_mix_is_splitmix64s_finaliser() -> None:
    # splitmix64's first output for seed 0 is mix(0x9E3779B97F4A7C15)
    assert int(mix(np.array([0x9E3779B97F4A7C15], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF


def _digest(ds: Dataset, block: int = 1_000_000) -> list[bytes]:
    """Each table's digest (the tables hold every column of their schema: built from `validated`)."""
    schemas = (("students", STUDENTS), ("lectures", LECTURES), ("events", EVENTS))
    return [table_digest(name, getattr(ds, name), schema, block) for name, schema in schemas]


def _set_column(table: pa.Table, name: str, column: pa.Array | pa.ChunkedArray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def _text_as(table: pa.Table, kind: pa.DataType) -> pa.Table:
    """The table with its text columns (string or large string) held as `kind`."""
    text = (pa.types.is_string, pa.types.is_large_string)
    fields = [f.with_type(kind) if any(t(f.type) for t in text) else f for f in table.schema]
    out = table.cast(pa.schema(fields))
    assert all(out.schema.field(f.name).type == kind for f in table.schema if any(t(f.type) for t in text))
    return out


def _dictionary_chunks(column: pa.ChunkedArray, cut: int) -> pa.ChunkedArray:
    """The column dictionary-encoded in two chunks, each with its own dictionary (as appended events)."""
    plain = column.combine_chunks()
    parts = [plain.slice(0, cut).dictionary_encode(), plain.slice(cut).dictionary_encode()]
    return pa.chunked_array(parts)


def test_how_a_column_is_held_does_not_count() -> None:
    base = validated(dataset())
    assert isinstance(base.events, pa.Table)
    events = base.events.to_pandas()
    text = ("event_id", "student_id", "lecture_id", "type")
    held: dict[str, Any] = {
        "coded": events.astype(dict.fromkeys(text[1:], "category")),
        "Arrow text": events.astype(dict.fromkeys(text, "str")),
        "Python strings": events.astype(dict.fromkeys(text, object)),
        "float64 progress": events.astype({"progress": np.float64}),
        "time in ns, another zone": events.assign(
            occurred_at=events["occurred_at"].dt.tz_convert("Asia/Seoul").astype("datetime64[ns, Asia/Seoul]")
        ),
    }
    expected = _digest(base)
    for what, frame in held.items():
        # the pandas frame itself, and the Arrow table a `Dataset` makes of it
        assert table_digest("events", frame, EVENTS) == expected[2], what
        assert _digest(Dataset(base.students, base.lectures, frame, {})) == expected, what
    table = base.events
    coded = table
    for name in text[1:]:
        coded = _set_column(coded, name, table[name].combine_chunks().dictionary_encode())
    held_by_arrow: dict[str, pa.Table] = {
        "Arrow dictionaries": coded,
        "Arrow dictionaries, a chunk each": _set_column(
            table, "student_id", _dictionary_chunks(table["student_id"], 2)
        ),
        "Arrow string": _text_as(table, pa.string()),
        "Arrow large string": _text_as(table, pa.large_string()),
        "Arrow float64 progress": _set_column(table, "progress", table["progress"].cast(pa.float64())),
        "Arrow time in ns, another zone": _set_column(
            table, "occurred_at", table["occurred_at"].cast(pa.timestamp("ns", tz="Asia/Seoul"))
        ),
    }
    for what, arrow in held_by_arrow.items():
        assert isinstance(Dataset(base.students, base.lectures, arrow, {}).events, pa.Table)
        assert _digest(Dataset(base.students, base.lectures, arrow, {})) == expected, what
        assert _digest(Dataset(base.students, base.lectures, arrow, {}), block=3) == expected, what
    assert _digest(base, block=3) == expected  # blocks of rows do not count either
    lectures = base.lectures.assign(level=base.lectures["level"].astype(np.int64))
    assert _digest(Dataset(base.students, lectures, base.events, {})) == expected


def test_row_order_does_not_count_and_any_cell_does() -> None:
    base = validated(dataset())
    expected = _digest(base)
    shuffled = Dataset(base.students.iloc[::-1], base.lectures.iloc[::-1], base.events.take([3, 1, 0, 2]), {})
    assert _digest(shuffled) == expected
    as_pandas = Dataset(base.students, base.lectures, base.events.to_pandas().iloc[[3, 1, 0, 2]], {})
    assert _digest(as_pandas) == expected
    changes = {
        "event id": ("events", "event_id", "z"),
        "student of an event": ("events", "student_id", "s2"),
        "progress": ("events", "progress", 0.41),
        "time": ("events", "occurred_at", pd.Timestamp("2025-03-01T09:00:00.000001Z")),
        "request id": ("events", "request_id", "요청-2"),
        "level": ("lectures", "level", 3),
        "active": ("lectures", "active", False),
        "a list": ("lectures", "grades", ["h1", "h2"]),
        "region": ("students", "region", "gimpo"),
    }
    for what, (table, column, value) in changes.items():
        held = getattr(base, table)
        frame = held.to_pandas() if isinstance(held, pa.Table) else held.copy()  # (the events: Arrow)
        frame.at[frame.index[0], column] = value
        tables = {n: getattr(base, n) for n in ("students", "lectures", "events")}
        changed = Dataset(**{**tables, table: frame})
        assert _digest(changed) != expected, what


@pytest.mark.parametrize(
    ("one", "other"),
    [([["a b"]], [["a", "b"]]), ([[]], [None]), ([["a", "b"]], [["b", "a"]]), ([["ab"]], [["a", "b"]])],
)
def test_list_cells_keep_their_items_apart(one: list[Any], other: list[Any]) -> None:
    from features.fingerprint import _list_text

    first, second = (text_hashes(_list_text(pd.Series(v, dtype=object))) for v in (one, other))
    assert first.tolist() != second.tolist()
    assert LIST_SEPARATOR not in "".join(str(x) for v in one + other if v for x in v)


def test_minus_zero_and_float32_rounding_hash_as_the_stored_value() -> None:
    base = validated(dataset())
    events = base.events.to_pandas().astype({"progress": np.float64})
    events.loc[1, "progress"] = -0.0  # stored as 0.0
    events.loc[0, "progress"] = float(np.float32(0.4))  # 0.4 as float32 stores it
    assert _digest(Dataset(base.students, base.lectures, events, {})) == _digest(base)
    # the same values held by Arrow as float64
    progress = pa.array(events["progress"].to_numpy(), type=pa.float64())
    arrow = _set_column(base.events, "progress", progress)
    assert arrow["progress"].to_pylist()[:2] == [float(np.float32(0.4)), -0.0]
    assert _digest(Dataset(base.students, base.lectures, arrow, {})) == _digest(base)


def test_a_nan_held_by_arrow_is_missing_as_a_nan_held_by_pandas() -> None:
    """An unvalidated table's NaN progress (Arrow keeps NaN and null apart, pandas' `isna` does not): the
    same table hashes alike either way, and like a null."""
    base = validated(dataset())
    values = [np.nan, 0.0, None, 1.0]
    frame = base.events.to_pandas().astype({"progress": np.float64}).assign(progress=values)
    arrow = _set_column(base.events, "progress", pa.array(values, type=pa.float64(), from_pandas=False))
    assert arrow["progress"].null_count == 1  # the NaN is a value to Arrow
    nulls = _set_column(base.events, "progress", pa.array([None, 0.0, None, 1.0], type=pa.float64()))
    digests = {tuple(_digest(Dataset(base.students, base.lectures, e, {}))) for e in (frame, arrow, nulls)}
    assert len(digests) == 1


def test_the_same_events_given_as_pandas_or_as_arrow_have_one_fingerprint() -> None:
    """`Dataset.fingerprint()` of the same events handed over as a pandas frame (plain text or
    categoricals) and as an Arrow table (plain or large text, or dictionary-encoded ids and types)."""
    ds = dataset()
    frame = ds.events.to_pandas()
    table = ds.events  # what the `Dataset` made of the frame it was given
    assert isinstance(table, pa.Table)
    coded = table
    for name in ("student_id", "lecture_id", "type"):
        coded = _set_column(coded, name, table[name].combine_chunks().dictionary_encode())
    assert pa.types.is_dictionary(coded.schema.field("student_id").type)
    plain = _text_as(table, pa.string())
    assert pa.types.is_string(plain.schema.field("student_id").type)
    given: dict[str, Any] = {
        "pandas": frame,
        "pandas categoricals": frame.astype(dict.fromkeys(("student_id", "lecture_id", "type"), "category")),
        "Arrow": table,
        "Arrow plain text": plain,
        "Arrow dictionaries": coded,
        "Arrow dictionaries, a chunk each": _set_column(
            coded, "lecture_id", _dictionary_chunks(table["lecture_id"], 1)
        ),
    }
    expected = ds.fingerprint()
    for what, events in given.items():
        assert Dataset(ds.students, ds.lectures, events, {}).fingerprint() == expected, what
    # and any changed cell still shows, whichever way it is held
    changed = _set_column(coded, "progress", pa.array([0.41, 0.0, 0.0, 1.0], type=pa.float32()))
    assert Dataset(ds.students, ds.lectures, changed, {}).fingerprint() != expected


def test_the_fingerprint_is_pinned() -> None:
    """This dataset's fingerprint, fixed: a change of pandas, pyarrow or numpy must not move it (the
    manifests of written datasets record it); changing the rule means a new FINGERPRINT_VERSION."""
    assert dataset().fingerprint() == "a0a9a92b5eec58e125b64023450b5d0e1d898a551a240945569b4005c0150296"
