"""Validation of the three tables (students, lectures, events) against `features.schemas`.

Every check is vectorised (pandas / pyarrow), so validating three million events takes seconds. The first
violation found raises `features.errors.SchemaError(file, column, rows, problem)`:

* `rows` are **1-based data-row numbers, as a person counts them in the file**: row 1 is the first data
  row (the header is not counted), so in a CSV file with a header row N is on line N + 1; in a Parquet
  file or a DataFrame it is position N - 1.
* `problem` names the bad value and what to do.

Rules, in the order they are checked:

1. required columns present (`*_REQUIRED` in `features.schemas`); unknown extra columns are dropped;
2. types: text columns hold text, numeric columns numbers, list columns lists of text, `active` booleans,
   `occurred_at` timezone-aware timestamps (or ISO 8601 text with an offset). Nothing is coerced
   silently: the text "0.5" in `progress` is an error, not NaN and not 0.5;
3. no nulls (and no empty ids) in non-nullable columns;
4. unique ids (`student_id`, `lecture_id`, `event_id`);
5. known values: `grade` / lecture `grades` in `GRADES`, `type` in `EVENT_TYPES`, `level` in `LEVELS`,
   `region` matching `REGION_PATTERN`, lecture `regions` matching it or `"*"`;
6. ranges: `progress` in 0..1, `series_position` >= 1, `duration_min` > 0 and finite;
7. references: every event's student and lecture exist (when the id sets are given).

Columns outside `*_REQUIRED` may be missing and then get these documented defaults:

* students: every optional column is null;
* lectures: `grades` = every grade in `GRADES`, `level` = 1, `series_id` = the lecture's own id,
  `series_position` = 1, `duration_min` = 1.0 (unknown; a placeholder that keeps the column valid),
  `regions` = `["*"]` (licensed everywhere), `active` = true;
* events: `progress` = 1.0 for `complete` and 0.0 for every other type (see `default_progress`),
  `request_id` = null, `event_id` = a deterministic id from the row's content and row number
  (see `generated_event_ids`).

The returned DataFrames have exactly the schema's columns, in order, with these dtypes: text `str`,
lists `object` holding Python lists of `str`, `level` int8, `series_position` int32, `progress` and
`duration_min` float32, `active` bool, `occurred_at` `datetime64[us, UTC]` (sub-microsecond digits, if
any, are truncated to the schema's unit).

Size: over 600 lines because every rule of the three tables lives here, in the order it is checked, so one
place says what a valid dataset is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.errors import SchemaError
from features.schemas import (
    ALL_REGIONS,
    EVENT_TYPES,
    EVENTS,
    EVENTS_REQUIRED,
    GRADES,
    LECTURES,
    LECTURES_REQUIRED,
    LEVELS,
    REGION_PATTERN,
    STUDENTS,
    STUDENTS_REQUIRED,
)

TableLike: TypeAlias = pd.DataFrame | pa.Table
_SHOW_VALUES = 3
_TS_DTYPE: Final = "datetime64[us, UTC]"
#: ISO 8601 text that carries its own zone: a time of day followed by `Z` or an offset such as `+09:00` /
#: `+0900` / `+09` (a date alone, `2025-03-01`, has none: its `-01` is the day).
ZONE_SUFFIX = r"[Tt ]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


# ----------------------------------------------------------------------------------------------------------
# public API


def validate_students(table: TableLike, file: str = "students") -> pd.DataFrame:
    """Check a students table and return it with the exact schema columns and dtypes.

    Args:
        table: the students as a DataFrame or an Arrow table.
        file: the file name used in error messages.

    Returns:
        The validated students (columns and dtypes of `STUDENTS`, index 0..n-1).

    Raises:
        SchemaError: naming file, 1-based data row(s), column and the bad value.
    """
    v = _Validator(table, file, STUDENTS, STUDENTS_REQUIRED)
    out: dict[str, pd.Series[Any]] = {}
    out["student_id"] = v.text("student_id", id_column=True)
    out["region"] = v.text("region")
    out["grade"] = v.text("grade")
    for name in ("school_level", "target_exam", "support_category", "age_band"):
        out[name] = v.text(name)
    out["interest_subjects"] = v.text_list("interest_subjects")
    v.unique(out["student_id"], "student_id")
    v.one_of(out["grade"], "grade", GRADES)
    v.region_codes(out["region"], "region", allow_all=False)
    return v.frame(out)


def validate_lectures(table: TableLike, file: str = "lectures") -> pd.DataFrame:
    """Check a lectures table and return it with the exact schema columns and dtypes.

    Missing optional columns get the defaults listed in the module docstring.

    Args:
        table: the lectures as a DataFrame or an Arrow table.
        file: the file name used in error messages.

    Returns:
        The validated lectures (columns and dtypes of `LECTURES`, index 0..n-1).

    Raises:
        SchemaError: naming file, 1-based data row(s), column and the bad value.
    """
    v = _Validator(table, file, LECTURES, LECTURES_REQUIRED)
    n = v.n
    out: dict[str, pd.Series[Any]] = {}
    out["lecture_id"] = v.text("lecture_id", id_column=True)
    for name in ("title", "provider", "subject"):
        out[name] = v.text(name)
    out["grades"] = v.text_list("grades", default=lambda: [list(GRADES) for _ in range(n)])
    out["level"] = v.integer("level", np.int8, default=1)
    out["series_id"] = v.text("series_id", id_column=True, default=lambda: out["lecture_id"])
    out["series_position"] = v.integer("series_position", np.int32, default=1)
    out["duration_min"] = v.number("duration_min", default=1.0)
    out["regions"] = v.text_list("regions", default=lambda: [[ALL_REGIONS] for _ in range(n)])
    out["active"] = v.boolean("active", default=True)
    v.unique(out["lecture_id"], "lecture_id")
    v.list_one_of(out["grades"], "grades", GRADES)
    v.region_codes(out["regions"], "regions", allow_all=True)
    v.one_of(out["level"], "level", LEVELS)
    v.at_least(out["series_position"], "series_position", 1, "positions in a series start at 1")
    v.positive(out["duration_min"], "duration_min")
    return v.frame(out)


def validate_events(
    table: TableLike,
    file: str = "events",
    student_ids: Iterable[str] | None = None,
    lecture_ids: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Check an events table and return it with the exact schema columns and dtypes.

    Args:
        table: the events as a DataFrame or an Arrow table.
        file: the file name used in error messages.
        student_ids: the known students; when given every event's `student_id` must be among them.
        lecture_ids: the known lectures; when given every event's `lecture_id` must be among them.

    Returns:
        The validated events (columns and dtypes of `EVENTS`, index 0..n-1, in the input's row order).

    Raises:
        SchemaError: naming file, 1-based data row(s), column and the bad value.
    """
    v = _Validator(table, file, EVENTS, EVENTS_REQUIRED)
    out: dict[str, pd.Series[Any]] = {}
    has_event_id = "event_id" in v.df.columns
    if has_event_id:
        out["event_id"] = v.text("event_id", id_column=True)
    out["student_id"] = v.text("student_id", id_column=True)
    out["lecture_id"] = v.text("lecture_id", id_column=True)
    out["type"] = v.text("type")
    v.one_of(out["type"], "type", EVENT_TYPES)
    out["progress"] = v.number("progress", default=lambda: default_progress(out["type"]))
    out["occurred_at"] = v.timestamp("occurred_at")
    out["request_id"] = v.text("request_id")
    if not has_event_id:
        out["event_id"] = generated_event_ids(
            out["student_id"], out["lecture_id"], out["type"], out["occurred_at"], out["progress"]
        )
    v.unique(out["event_id"], "event_id")
    v.in_range(out["progress"], "progress", 0.0, 1.0)
    if student_ids is not None:
        v.known(out["student_id"], "student_id", student_ids, "students")
    if lecture_ids is not None:
        v.known(out["lecture_id"], "lecture_id", lecture_ids, "lectures")
    return v.frame(out)


def default_progress(types: pd.Series[Any]) -> pd.Series[Any]:
    """The progress an event gets when its file has none: 1.0 for `complete`, 0.0 for every other type.

    Args:
        types: the event types.

    Returns:
        float32 progress values aligned with `types`.
    """
    return pd.Series(progress_defaults(types), index=types.index)


def progress_defaults(types: Any) -> npt.NDArray[np.float32]:
    """`default_progress` as numpy, per row of any column of types (pandas or Arrow, dictionary-encoded
    or not; a missing type or one that is not text gets 0.0)."""
    from features.ids import text_codes  # (features.ids reads this module)

    codes, text = text_codes(types)
    complete = np.append(text == "complete", False)[codes]
    return np.where(complete, 1.0, 0.0).astype(np.float32)


def generated_event_ids(
    student_id: pd.Series[Any],
    lecture_id: pd.Series[Any],
    type_: pd.Series[Any],
    occurred_at: pd.Series[Any],
    progress: pd.Series[Any],
    row_numbers: npt.NDArray[np.int64] | None = None,
) -> pd.Series[Any]:
    """Deterministic event ids for files without an `event_id` column.

    The id is ``"ev-"`` plus 16 hex digits of a 64-bit hash of the 1-based row number and the row's
    student, lecture, type, timestamp and progress. The same file always gives the same ids; two
    identical rows still get different ids because their row numbers differ. `generated_event_id_column`
    gives the same ids for Arrow columns.

    Args:
        student_id: validated student ids.
        lecture_id: validated lecture ids.
        type_: validated event types.
        occurred_at: validated UTC timestamps.
        progress: validated progress values.
        row_numbers: the rows' 1-based numbers in their file (default 1..n: the inputs are the whole
            file); a part of a file read on its own passes its rows' numbers to get the same ids.

    Returns:
        The ids, a `str` Series aligned with the inputs.
    """
    hashes = _event_id_hashes(
        student_id.to_numpy(), lecture_id.to_numpy(), type_.to_numpy(), epoch_microseconds(occurred_at),
        progress.to_numpy(dtype=np.float32), row_numbers,
    )  # fmt: skip
    text = _event_id_text(hashes)
    return pd.Series(text.to_numpy(zero_copy_only=False), index=student_id.index, dtype="str")


def generated_event_id_column(
    student_id: pa.ChunkedArray,
    lecture_id: pa.ChunkedArray,
    type_: pa.ChunkedArray,
    occurred_at: pa.ChunkedArray,
    progress: pa.ChunkedArray,
) -> pa.ChunkedArray:
    """`generated_event_ids` of a whole file's Arrow columns (the same ids): text columns are hashed
    through their dictionaries (each distinct value once, as pandas hashes a categorical), the ids are
    written straight into an Arrow text column (19 bytes per event, no Python string per id).

    Args:
        student_id: student ids (text, dictionary-encoded or not).
        lecture_id: lecture ids.
        type_: event types.
        occurred_at: UTC timestamps.
        progress: progress values.

    Returns:
        The ids, `string`, one per row.
    """
    from features.ids import arrow_codes  # (features.ids reads this module)

    coded = [arrow_codes(c) for c in (student_id, lecture_id, type_)]
    categories = [pd.Index(distinct, dtype=object) for _, distinct in coded]
    micros = epoch_microseconds(occurred_at)
    values = progress.cast(pa.float32()).to_numpy()
    chunks: list[pa.Array] = []
    for start in range(0, max(len(micros), 1), _HASHED_PER_BLOCK):  # (bounded temporaries: a block at a time)
        stop = min(len(micros), start + _HASHED_PER_BLOCK)
        student, lecture, kind = (
            pd.Categorical.from_codes(codes[start:stop], categories=index)  # hashed as pandas hashes it
            for (codes, _), index in zip(coded, categories, strict=True)
        )
        rows = np.arange(start + 1, stop + 1, dtype=np.int64)
        hashes = _event_id_hashes(student, lecture, kind, micros[start:stop], values[start:stop], rows)
        chunks.extend(_event_id_text(hashes).chunks)
    return pa.chunked_array(chunks, type=pa.string())


def _event_id_hashes(
    student_id: Any, lecture_id: Any, type_: Any, micros: Any, progress: Any, row_numbers: Any
) -> npt.NDArray[np.uint64]:
    n = len(student_id)
    rows = np.arange(1, n + 1, dtype=np.int64) if row_numbers is None else np.asarray(row_numbers, np.int64)
    if rows.shape != (n,):
        raise ValueError(f"row_numbers must hold one number per event ({n}), got shape {rows.shape}")
    content = pd.DataFrame(
        {
            "row": rows,
            "student_id": student_id,
            "lecture_id": lecture_id,
            "type": type_,
            "occurred_at": micros,
            "progress": progress,
        },
        copy=False,
    )
    return np.asarray(pd.util.hash_pandas_object(content, index=False), dtype=np.uint64)


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_ID_PREFIX = np.frombuffer(b"ev-", dtype=np.uint8)
#: Ids per Arrow chunk: 19 bytes each stay within a `string` column's 32-bit offsets.
_IDS_PER_CHUNK = 1 << 26
#: Rows hashed at a time for generated ids (each block's hashes and their text, not the whole file's).
_HASHED_PER_BLOCK = 1 << 22


def _event_id_text(hashes: npt.NDArray[np.uint64]) -> pa.ChunkedArray:
    """``"ev-"`` and the 16 hex digits of each hash (big-endian), as an Arrow `string` column."""
    width = _ID_PREFIX.size + 16
    chunks = []
    for start in range(0, max(hashes.size, 1), _IDS_PER_CHUNK):
        part = hashes[start : start + _IDS_PER_CHUNK].astype(">u8").view(np.uint8).reshape(-1, 8)
        text = np.empty((part.shape[0], width), dtype=np.uint8)
        text[:, : _ID_PREFIX.size] = _ID_PREFIX
        text[:, _ID_PREFIX.size :: 2] = _HEX_DIGITS[part >> 4]
        text[:, _ID_PREFIX.size + 1 :: 2] = _HEX_DIGITS[part & 15]
        offsets = np.arange(0, (part.shape[0] + 1) * width, width, dtype=np.int32)
        chunks.append(
            pa.Array.from_buffers(
                pa.string(), part.shape[0], [None, pa.py_buffer(offsets), pa.py_buffer(text)]
            )
        )
    return pa.chunked_array(chunks, type=pa.string())


def sorted_categories(values: pd.Series[Any]) -> pd.Series[Any]:
    """A categorical column of text with its distinct values as `str` in sorted order (same codes' meaning).

    Arrow's dictionaries list values in order of appearance; with sorted categories, sorting or comparing
    by the column orders by the text, as on a plain text column.

    Args:
        values: a categorical Series whose categories are text.

    Returns:
        The same values, categories sorted, index 0..n-1.
    """
    codes = values.cat.codes.to_numpy()
    categories = values.cat.categories.to_numpy(dtype=object)
    order = np.argsort(categories.astype(str), kind="stable")
    rank = np.empty(len(order), dtype=codes.dtype if len(order) <= np.iinfo(codes.dtype).max else np.int64)
    rank[order] = np.arange(len(order))
    coded = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1) if len(order) else codes
    dtype = pd.CategoricalDtype(pd.Index(categories[order], dtype="str"))
    return pd.Series(pd.Categorical.from_codes(coded, dtype=dtype))


def arrow_text(values: pd.Series[Any]) -> pa.ChunkedArray:
    """A text column as Arrow: a pandas `str` column hands over the Arrow array it holds (no copy, no
    Python object per value); any other column is converted.

    Args:
        values: the column.

    Returns:
        The values as a `large_string` chunked array.
    """
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        held = pa.array(values.array)
        arrow = held if isinstance(held, pa.ChunkedArray) else pa.chunked_array([held])
        return arrow if arrow.type == pa.large_string() else arrow.cast(pa.large_string())
    return pa.chunked_array(
        [pa.array(values.to_numpy(dtype=object), type=pa.large_string(), from_pandas=True)]
    )


def all_distinct(values: pd.Series[Any] | pa.ChunkedArray | pa.Array) -> bool:
    """True when no two values are equal (nulls aside).

    Text held by Arrow (an Arrow column, or a pandas `str` column, which pandas keeps in Arrow) is checked
    by sorting each value's 64-bit hash (`features.fingerprint.text_hashes`, read from Arrow's buffers: 8
    bytes per value, no Python object per id); only when two hashes are equal are the values counted
    exactly (`pyarrow.compute.count_distinct`, a hash table of every value). Other columns use pandas.

    Args:
        values: the column.

    Returns:
        Whether every non-null value occurs once.
    """
    if isinstance(values, pd.Series):
        if not (isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"):
            return not bool(values.dropna().duplicated().any())
        values = arrow_text(values)
    text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    if text and hash_repeats(pc.drop_null(values) if values.null_count else values).size == 0:
        return True  # distinct hashes, distinct values; an equal pair is counted exactly below
    valid = int(len(values) - values.null_count)
    distinct = int(pc.count_distinct(values, mode="only_valid").as_py())
    return distinct == valid


def hash_repeats(values: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.int64]:
    """The rows of Arrow text whose 64-bit hash (`features.fingerprint.text_hashes`, read from Arrow's
    buffers, 8 bytes per value) another row shares: every row of a repeated value, and (one chance in 2^64
    per pair) rows of distinct values sharing a hash. Empty when every value is distinct."""
    from features.fingerprint import text_hashes  # (the fingerprint reads this module)

    hashes = text_hashes(values)
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    if repeated.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.isin(hashes, repeated))


def epoch_microseconds(timestamps: pd.Series[Any] | pa.ChunkedArray | pa.Array) -> npt.NDArray[np.int64]:
    """Microseconds since 1970-01-01 UTC of timezone-aware timestamps.

    Args:
        timestamps: a `datetime64[..., tz]` Series without nulls, or an Arrow timestamp column (a zone-less
            one is UTC; a null becomes the int64 minimum).

    Returns:
        int64 microseconds.
    """
    if isinstance(timestamps, pa.ChunkedArray | pa.Array):
        if timestamps.type.unit == "ns":  # rounded down, as pandas does (a cast rounds toward zero)
            timestamps = pc.floor_temporal(timestamps, unit="microsecond")
        micros = timestamps.cast(pa.timestamp("us", tz=timestamps.type.tz), safe=False).cast(pa.int64())
        if micros.null_count:
            micros = pc.fill_null(micros, np.iinfo(np.int64).min)
        return np.asarray(micros.to_numpy(), dtype=np.int64)
    naive_utc = timestamps.astype(_TS_DTYPE).dt.tz_localize(None)
    return naive_utc.to_numpy(dtype="datetime64[us]").view(np.int64)


# ----------------------------------------------------------------------------------------------------------
# the checks


def _rows(mask: npt.NDArray[np.bool_] | pd.Series[bool]) -> list[int]:
    """1-based data-row numbers where `mask` is true."""
    return (np.flatnonzero(np.asarray(mask)) + 1).tolist()


def _show(values: Sequence[Any] | npt.NDArray[Any]) -> str:
    """The first few distinct bad values, quoted, for a message."""
    seen: list[str] = []
    for value in values:
        if isinstance(value, np.floating):
            text = format(value, ".7g")  # float32 values print as entered, not 0.30000001192092896
        else:
            text = repr(value.item() if isinstance(value, np.generic) else value)
        if text not in seen:
            seen.append(text)
        if len(seen) > _SHOW_VALUES:
            break
    more = ", ..." if len(seen) > _SHOW_VALUES else ""
    return ", ".join(seen[:_SHOW_VALUES]) + more


def _type_name(value: Any) -> str:
    return "text" if isinstance(value, str) else type(value).__name__


def _first(values: pd.Series[Any]) -> Any:
    """The first value as a plain Python object (numpy scalars print as `np.int64(1)` otherwise)."""
    value = values.iloc[0]
    return value.item() if isinstance(value, np.generic) else value


def duplicate_ids(file: str, name: str, ids: pd.Series[Any], n_rows: int) -> SchemaError | None:
    """The error naming repeated ids, or None when `ids` are distinct.

    Args:
        file: the input file the error names.
        name: the id column.
        ids: the ids, indexed by 0-based row of the file (all of its rows, or only candidates).
        n_rows: rows in the file.

    Returns:
        A `SchemaError` on every row holding a repeated id, whose message shows the first repeated id
        and up to five of its rows; None when no id repeats.
    """
    dup = ids.duplicated(keep=False).to_numpy()
    if not dup.any():
        return None
    repeats = ids[dup]
    first = _first(repeats)
    mask = np.zeros(n_rows, dtype=bool)
    mask[repeats.index.to_numpy()] = True
    rows = (repeats.index[(repeats == first).to_numpy()].to_numpy() + 1).tolist()
    return SchemaError(
        file,
        name,
        _rows(mask),
        f"duplicate {name} {first!r} (rows {', '.join(map(str, rows[:5]))}): ids must be unique",
    )


class _Validator:
    """Holds one input table and raises `SchemaError` for the first rule it breaks."""

    def __init__(self, table: TableLike, file: str, schema: pa.Schema, required: Sequence[str]) -> None:
        self.file = file
        self.schema = schema
        if isinstance(table, pa.Table):
            df = table.to_pandas()
        elif isinstance(table, pd.DataFrame):
            df = table
        else:
            raise TypeError(f"expected a pandas DataFrame or a pyarrow Table, got {type(table).__name__}")
        self.df = df.reset_index(drop=True)
        self.n = len(self.df)
        if self.df.columns.duplicated().any():
            dupes = sorted({str(c) for c in self.df.columns[self.df.columns.duplicated()]})
            raise SchemaError(file, dupes[0], [], "the column appears more than once: keep one")
        missing = [c for c in required if c not in self.df.columns]
        if missing:
            have = ", ".join(str(c) for c in self.df.columns) or "none"
            raise SchemaError(
                file, missing[0], [], f"required column '{missing[0]}' is missing (columns present: {have})"
            )

    def fail(self, column: str, mask: npt.NDArray[np.bool_] | pd.Series[bool], problem: str) -> SchemaError:
        return SchemaError(self.file, column, _rows(mask), problem)

    def nullable(self, name: str) -> bool:
        return bool(self.schema.field(name).nullable)

    def _column(self, name: str) -> pd.Series[Any]:
        s: pd.Series[Any] = self.df[name]
        if isinstance(s.dtype, pd.CategoricalDtype):
            s = s.astype(object)
        return s

    def _not_null(self, name: str, s: pd.Series[Any]) -> None:
        if not self.nullable(name):
            null = s.isna().to_numpy()
            if null.any():
                raise self.fail(name, null, f"missing {name}: every row needs a value")

    # -- scalar types --------------------------------------------------------------------------------------

    def text(
        self, name: str, id_column: bool = False, default: Callable[[], pd.Series[Any]] | None = None
    ) -> pd.Series[Any]:
        if name not in self.df.columns:
            if default is not None:
                return default().astype("str")
            return pd.Series([None] * self.n, dtype="str")
        if isinstance(self.df[name].dtype, pd.CategoricalDtype):
            return self._coded_text(name, self.df[name], id_column)
        s = self._column(name)
        if not (isinstance(s.dtype, pd.StringDtype) or s.isna().all()):
            kind = pd.api.types.infer_dtype(s, skipna=True) if pd.api.types.is_object_dtype(s.dtype) else None
            if kind not in ("string", "empty"):
                bad = (
                    s.notna() & ~s.map(lambda x: isinstance(x, str), na_action="ignore").astype(bool)
                ).to_numpy()
                if bad.any():  # a column of an unusual dtype may still hold only valid values
                    shown = _first(s[bad])
                    raise self.fail(
                        name,
                        bad,
                        f"expected text, got {_type_name(shown)} {shown!r} (column type {s.dtype}); "
                        "store ids and codes as strings",
                    )
        out = s.astype("str")
        self._not_null(name, out)
        if id_column or not self.nullable(name):
            blank = (out.str.strip() == "").fillna(False).to_numpy(dtype=bool)
            if blank.any():
                raise self.fail(name, blank, f"empty {name}: every row needs a non-blank value")
        return out

    def _coded_text(self, name: str, s: pd.Series[Any], id_column: bool) -> pd.Series[Any]:
        """`text` for a dictionary-encoded (categorical) column: the rules run once per distinct value
        and reach the rows through the codes, so no per-row string is made. The result keeps the codes,
        with the distinct values as text in sorted order (sorting by the column sorts by the text)."""
        codes = s.cat.codes.to_numpy()
        values = pd.Series(s.cat.categories.to_numpy(dtype=object), dtype=object)
        present = codes >= 0
        is_text = values.map(lambda x: isinstance(x, str)).to_numpy(dtype=bool)
        if not is_text.all():
            bad = present & ~is_text[np.maximum(codes, 0)]
            shown = values[~is_text].iloc[0]
            raise self.fail(
                name,
                bad,
                f"expected text, got {_type_name(shown)} {shown!r} (column type {s.dtype}); "
                "store ids and codes as strings",
            )
        if not self.nullable(name) and not present.all():
            raise self.fail(name, ~present, f"missing {name}: every row needs a value")
        if id_column or not self.nullable(name):
            blank_values = (values.str.strip() == "").to_numpy(dtype=bool)
            blank = present & blank_values[np.maximum(codes, 0)]
            if blank.any():
                raise self.fail(name, blank, f"empty {name}: every row needs a non-blank value")
        return sorted_categories(s)

    def number(self, name: str, default: float | Callable[[], pd.Series[Any]]) -> pd.Series[Any]:
        if name not in self.df.columns:
            values = default() if callable(default) else pd.Series(np.full(self.n, default))
            return values.astype(np.float32)
        s = self._column(name)
        dtype = s.dtype
        ok = (pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype)) and not (
            pd.api.types.is_bool_dtype(dtype)
        )
        if not ok and not s.isna().all():
            kind = pd.api.types.infer_dtype(s, skipna=True) if pd.api.types.is_object_dtype(dtype) else None
            if kind not in ("floating", "integer", "mixed-integer-float", "empty"):
                is_num = s.map(
                    lambda x: isinstance(x, int | float | np.number) and not isinstance(x, bool | np.bool_),
                    na_action="ignore",
                )
                bad = (s.notna() & ~is_num.fillna(False).astype(bool)).to_numpy()
                if bad.any():  # a column of an unusual dtype may still hold only valid values
                    shown = _first(s[bad])
                    raise self.fail(
                        name,
                        bad,
                        f"expected a number, got {_type_name(shown)} {shown!r} (column type {dtype})",
                    )
        arr = s.to_numpy(dtype=np.float64, na_value=np.nan)
        self._not_null(name, pd.Series(arr))
        infinite = np.isinf(arr)
        if infinite.any():
            raise self.fail(name, infinite, f"{name} {_show(arr[infinite])} is not a finite number")
        return pd.Series(arr.astype(np.float32))

    def integer(self, name: str, dtype: type[np.integer[Any]], default: int) -> pd.Series[Any]:
        if name not in self.df.columns:
            return pd.Series(np.full(self.n, default, dtype=dtype))
        s = self._column(name)
        sd = s.dtype
        if pd.api.types.is_bool_dtype(sd) or not (
            pd.api.types.is_integer_dtype(sd)
            or pd.api.types.is_float_dtype(sd)
            or (
                pd.api.types.is_object_dtype(sd)
                and pd.api.types.infer_dtype(s, skipna=True) in ("integer", "floating", "empty")
            )
        ):
            is_int = s.map(
                lambda x: isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_),
                na_action="ignore",
            )
            bad = (s.notna() & ~is_int.fillna(False).astype(bool)).to_numpy()
            if not bad.any():
                bad = s.notna().to_numpy()
            shown = _first(s[bad])
            raise self.fail(name, bad, f"expected a whole number, got {_type_name(shown)} {shown!r}")
        self._not_null(name, s)
        arr = (
            s.to_numpy(dtype=np.float64, na_value=np.nan)
            if pd.api.types.is_object_dtype(sd)
            else s.to_numpy(dtype=np.float64)
        )
        fractional = np.isfinite(arr) & (arr != np.floor(arr))
        if fractional.any() or np.isinf(arr).any():
            bad = fractional | np.isinf(arr)
            raise self.fail(name, bad, f"expected a whole number, got {_show(arr[bad])}")
        info = np.iinfo(dtype)
        too_big = (arr < info.min) | (arr > info.max)
        if too_big.any():
            raise self.fail(name, too_big, f"{name} {_show(arr[too_big])} is out of range")
        return pd.Series(arr.astype(dtype))

    def boolean(self, name: str, default: bool) -> pd.Series[Any]:
        if name not in self.df.columns:
            return pd.Series(np.full(self.n, default, dtype=bool))
        s = self._column(name)
        if not pd.api.types.is_bool_dtype(s.dtype) and not s.isna().all():
            kind = pd.api.types.infer_dtype(s, skipna=True) if pd.api.types.is_object_dtype(s.dtype) else None
            if kind != "boolean":
                is_bool = s.map(lambda x: isinstance(x, bool | np.bool_), na_action="ignore")
                bad = (s.notna() & ~is_bool.fillna(False).astype(bool)).to_numpy()
                if bad.any():  # a column of an unusual dtype may still hold only valid values
                    shown = _first(s[bad])
                    raise self.fail(name, bad, f"expected true or false, got {_type_name(shown)} {shown!r}")
        self._not_null(name, s)
        return pd.Series(s.to_numpy(dtype=bool))

    def timestamp(self, name: str) -> pd.Series[Any]:
        s = self._column(name)
        self._not_null(name, s)
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            utc: pd.Series[Any] = s.dt.tz_convert("UTC").astype(_TS_DTYPE)
            return utc
        if pd.api.types.is_datetime64_dtype(s.dtype):
            raise SchemaError(
                self.file, name, [], "timestamps have no time zone: store them timezone-aware in UTC"
            )
        if isinstance(s.dtype, pd.StringDtype) or pd.api.types.infer_dtype(s, skipna=True) in (
            "string",
            "empty",
        ):
            text = s.astype("str")
            zoned = text.str.strip().str.contains(ZONE_SUFFIX, regex=True).fillna(True).to_numpy(dtype=bool)
            parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
            unreadable = (parsed.isna() & text.notna()).to_numpy()
            if unreadable.any():
                raise self.fail(
                    name,
                    unreadable,
                    f"cannot read {_show(text[unreadable].to_numpy())} as an ISO 8601 timestamp "
                    "(e.g. 2025-03-01T09:30:00Z)",
                )
            if not zoned.all():
                raise self.fail(
                    name,
                    ~zoned,
                    f"timestamp {_show(text[~zoned].to_numpy())} has no time zone: add 'Z' or an offset "
                    "such as '+09:00'",
                )
            return parsed.astype(_TS_DTYPE)
        if pd.api.types.is_object_dtype(s.dtype) and pd.api.types.infer_dtype(s, skipna=True) in (
            "datetime",
            "datetime64",
        ):
            naive = s.map(lambda x: getattr(x, "tzinfo", None) is None, na_action="ignore")
            bad = naive.fillna(False).astype(bool).to_numpy()
            if bad.any():
                raise self.fail(name, bad, "timestamp has no time zone: store it timezone-aware in UTC")
            return pd.to_datetime(s, utc=True).astype(_TS_DTYPE)
        shown = _first(s.dropna())
        bad = s.notna().to_numpy()
        raise self.fail(
            name, bad, f"expected timestamps, got {_type_name(shown)} {shown!r} (column type {s.dtype})"
        )

    # -- lists ---------------------------------------------------------------------------------------------

    def text_list(self, name: str, default: Callable[[], list[list[str]]] | None = None) -> pd.Series[Any]:
        if name not in self.df.columns:
            values: list[Any] = default() if default is not None else [None] * self.n
            return pd.Series(values, dtype=object)
        s = self._column(name)
        # pyarrow would split a plain string into characters, so plain strings are refused up front
        is_seq = s.map(lambda x: isinstance(x, list | tuple | np.ndarray), na_action="ignore")
        bad = (s.notna() & ~is_seq.fillna(False).astype(bool)).to_numpy()
        if bad.any():
            shown = _first(s[bad])
            raise self.fail(
                name, bad, f"expected a list of text, got {_type_name(shown)} {shown!r} (e.g. ['m1', 'm2'])"
            )
        try:
            arr = pa.array(s.to_numpy(dtype=object), type=pa.list_(pa.string()), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            inner_ok = s.map(
                lambda x: all(isinstance(v, str) or v is None for v in x), na_action="ignore"
            ).fillna(True)
            bad = (~inner_ok.astype(bool)).to_numpy()
            shown = _first(s[bad]) if bad.any() else None
            raise self.fail(name, bad, f"expected a list of text, got {shown!r}") from None
        self._not_null(name, s)
        flat = pc.list_flatten(arr)
        parents = pc.list_parent_indices(arr).to_numpy()
        null_items = pc.is_null(flat).to_numpy(zero_copy_only=False)
        if null_items.any():
            mask = np.zeros(self.n, dtype=bool)
            mask[parents[null_items]] = True
            raise self.fail(name, mask, "a list holds a null item: remove it")
        if not self.nullable(name):
            empty = (pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False) == 0) & s.notna()
            if np.asarray(empty).any():
                raise self.fail(
                    name, np.asarray(empty), f"empty list: every row needs at least one {name} value"
                )
        return pd.Series(arr.to_pylist(), dtype=object)

    # -- content rules -------------------------------------------------------------------------------------

    def unique(self, s: pd.Series[Any], name: str) -> None:
        if all_distinct(s):
            return
        error = duplicate_ids(self.file, name, s, self.n)
        if error is not None:
            raise error

    def one_of(self, s: pd.Series[Any], name: str, allowed: Sequence[Any]) -> None:
        bad = (s.notna() & ~s.isin(list(allowed))).to_numpy()
        if bad.any():
            raise self.fail(
                name,
                bad,
                f"unknown {name} {_show(s[bad].to_numpy())}: expected one of {', '.join(map(str, allowed))}",
            )

    def list_one_of(self, s: pd.Series[Any], name: str, allowed: Sequence[str]) -> None:
        flat = s.explode()
        bad_items = flat.notna() & ~flat.isin(list(allowed))
        if bad_items.any():
            mask = np.zeros(self.n, dtype=bool)
            mask[np.unique(flat.index[bad_items.to_numpy()].to_numpy())] = True
            raise self.fail(
                name,
                mask,
                f"unknown {name} value {_show(flat[bad_items].to_numpy())}: "
                f"expected values from {', '.join(allowed)}",
            )

    def region_codes(self, s: pd.Series[Any], name: str, allow_all: bool) -> None:
        values = s.explode() if allow_all else s
        text = values.astype("str")
        ok = text.str.fullmatch(REGION_PATTERN).fillna(True).to_numpy(dtype=bool)
        if allow_all:
            ok = ok | (text == ALL_REGIONS).fillna(False).to_numpy(dtype=bool)
        if not ok.all():
            mask = np.zeros(self.n, dtype=bool)
            mask[np.unique(values.index[~ok].to_numpy())] = True
            extra = f" or '{ALL_REGIONS}' for everywhere" if allow_all else ""
            raise self.fail(
                name,
                mask,
                f"bad region code {_show(text[~ok].to_numpy())}: use lower-case ASCII slugs like 'seoul' or "
                f"'east_anglian' (pattern {REGION_PATTERN}){extra}",
            )

    def in_range(self, s: pd.Series[Any], name: str, lo: float, hi: float) -> None:
        arr = s.to_numpy()
        bad = (arr < lo) | (arr > hi)
        if bad.any():
            raise self.fail(name, bad, f"{name} {_show(arr[bad])} is outside {lo:g}..{hi:g}")

    def at_least(self, s: pd.Series[Any], name: str, lo: int, why: str) -> None:
        arr = s.to_numpy()
        bad = arr < lo
        if bad.any():
            raise self.fail(name, bad, f"{name} {_show(arr[bad])} is below {lo}: {why}")

    def positive(self, s: pd.Series[Any], name: str) -> None:
        arr = s.to_numpy()
        bad = ~(arr > 0)
        if bad.any():
            raise self.fail(name, bad, f"{name} {_show(arr[bad])} must be greater than 0")

    def known(self, s: pd.Series[Any], name: str, ids: Iterable[str], table: str) -> None:
        index = (
            ids
            if isinstance(ids, pd.Index)
            else pd.Index(list(ids) if not isinstance(ids, pd.Series) else ids)
        )
        bad = ~s.isin(index).to_numpy()
        if bad.any():
            raise self.fail(name, bad, f"unknown {name} {_show(s[bad].to_numpy())}: not in the {table} table")

    def frame(self, columns: dict[str, pd.Series[Any]]) -> pd.DataFrame:
        data = {f.name: columns[f.name].reset_index(drop=True) for f in self.schema}
        return pd.DataFrame(data)
