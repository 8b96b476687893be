"""Load plain event files (CSV or Parquet) that a data scientist brings into a validated `Dataset`.

Events file columns: `student_id`, `lecture_id`, `type`, `occurred_at` (required) and `event_id`,
`progress`, `request_id` (optional). Optional students and lectures files use the column names of
`features.schemas.STUDENTS` / `LECTURES`; only `*_REQUIRED` columns must be present, the rest get the
defaults documented in `features.validation`.

Reading rules (documented choices):

* CSV files are UTF-8 (a byte-order mark is allowed) with a header row; an empty cell is a missing value.
  Header names are stripped of surrounding spaces; a name twice is an error. Every row has as many cells
  as the header (a shorter or longer row is a malformed row, named). Row numbers in errors are 1-based
  data rows: row N is line N + 1 of the file (for rows without line breaks inside quoted cells). A
  compressed CSV (`.csv.gz`, `.bz2`, `.zst`, `.xz`, `.zip` holding one file) is read as it streams.
* List cells (`grades`, `regions`, `interest_subjects`) in CSV are separated by `|` (`m1|m2|m3`) or
  written as a JSON array (`["m1", "m2"]`).
* `level` and `series_position` must be whole numbers, `duration_min` and `progress` numbers,
  `active` one of true/false/yes/no/1/0 (any case). Anything else is a `SchemaError` naming the row.
* `occurred_at` is ISO 8601 text (or a Parquet timestamp). **Timestamps without a zone are read as UTC**;
  timestamps with an offset are converted to UTC. Unparseable text is a `SchemaError`.
* Integer ids in a Parquet file (e.g. `student_id` stored as int64) become their decimal text.
* A missing `event_id` column gives deterministic ids (`features.validation.generated_event_ids`: a hash
  of the row's content and row number). A missing `progress` column, or a blank/null progress cell,
  gives 1.0 for `complete` and 0.0 for other types.

The events never become a pandas frame: a CSV file is read by pyarrow's streaming reader a block at a
time, each block's cells converted to the schema's types as it arrives (ids and types
dictionary-encoded), and the table is checked by `features.stored_events.checked_events`, the rules
`read_dataset` applies. A Parquet file is read into Arrow as it is. The students and lectures files
(one row per student or lecture) go through pandas and `features.validation`.

Without a students file, students are derived from the events: region `"unknown"` (a valid region code
that no partner region uses, so the student sees only lectures licensed everywhere), grade = the grade
most common among the grade-restricted lectures the student has events on (ties in school order), or
`"adult"` when there are none (a learner outside school grades; with derived lectures every student is
`"adult"`). Without a lectures file, lectures are derived from the events: title = the lecture id,
provider and subject `"unknown"`, suitable for every grade, licensed everywhere (`["*"]`), its own series
at position 1, duration 1 minute (unknown), level 1, active.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from features.errors import DatasetNotFoundError, SchemaError
from features.ids import arrow_codes
from features.schemas import EVENTS, GRADES
from features.stored_events import DICTIONARY_COLUMNS, check_event_columns, checked_events
from features.tables import Dataset, Progress, sort_events
from features.validation import (
    ZONE_SUFFIX,
    progress_defaults,
    validate_lectures,
    validate_students,
)

#: Region given to students derived from events.
UNKNOWN_REGION = "unknown"
#: Grade given to derived students when their lectures say nothing more specific.
DEFAULT_GRADE = "adult"
#: Provider and subject of lectures derived from events.
UNKNOWN = "unknown"

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.zip", ".csv.bz2", ".csv.xz", ".csv.zst")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_ID_COLUMNS = ("event_id", "student_id", "lecture_id", "request_id", "series_id")
_LIST_COLUMNS = ("grades", "regions", "interest_subjects")
_INT_COLUMNS = ("level", "series_position")
_FLOAT_COLUMNS = ("duration_min", "progress")
_BOOL_TEXT = {
    "true": True,
    "false": False,
    "yes": True,
    "no": False,
    "1": True,
    "0": False,
    "t": True,
    "f": False,
}
#: Bytes of CSV text the streaming reader converts at a time.
_CSV_BLOCK_BYTES = 16 << 20
_EVENT_COLUMNS = tuple(EVENTS.names)


def load_event_files(
    events: Path,
    students: Path | None = None,
    lectures: Path | None = None,
    *,
    progress: Progress | None = None,
) -> Dataset:
    """Read an events file and optional students / lectures files into a validated dataset.

    Args:
        events: CSV or Parquet file of events.
        students: CSV or Parquet file of students; derived from the events when None.
        lectures: CSV or Parquet file of lectures; derived from the events when None.
        progress: optional `progress(stage, done, total)` callback.

    Returns:
        The dataset (events sorted by occurred_at, event_id) with a manifest naming the files and how
        many values were defaulted.

    Raises:
        DatasetNotFoundError: a file does not exist.
        SchemaError: a file cannot be parsed or breaks its schema (names file, row and column).
    """
    events, students_path, lectures_path = Path(events), students, lectures
    step, steps = 0, 5

    def tick(stage: str) -> None:
        nonlocal step
        step += 1
        if progress:
            progress(stage, step, steps)

    event_table, stats = _read_events(events, progress)
    tick("reading")

    lecture_table = None
    if lectures_path is not None:
        raw, is_text = _read_frame(Path(lectures_path), "lectures")
        lecture_table = validate_lectures(_prepare(raw, str(lectures_path), is_text), str(lectures_path))
    student_table = None
    if students_path is not None:
        raw, is_text = _read_frame(Path(students_path), "students")
        student_table = validate_students(_prepare(raw, str(students_path), is_text), str(students_path))
    tick("reading")

    # derived tables know every id the events use: only the ids' own rules are checked then
    event_table = checked_events(
        str(events),
        event_table,
        student_ids=_known(student_table, "student_id", event_table),
        lecture_ids=_known(lecture_table, "lecture_id", event_table),
    )
    tick("validating")
    if lecture_table is None:
        lecture_table = validate_lectures(_derive_lectures(event_table), "lectures (derived from events)")
    if student_table is None:
        student_table = validate_students(
            _derive_students(event_table, lecture_table if lectures_path is not None else None),
            "students (derived from events)",
        )
    tick("validating")

    files = {"events": str(events.resolve())}
    if students_path is not None:
        files["students"] = str(Path(students_path).resolve())
    if lectures_path is not None:
        files["lectures"] = str(Path(lectures_path).resolve())
    manifest: dict[str, Any] = {
        "name": events.stem.split(".")[0],
        "source": "event files",
        "files": files,
        "derived": {"students": students_path is None, "lectures": lectures_path is None},
        "defaults": stats,
    }
    ds = Dataset(student_table, lecture_table, sort_events(event_table), manifest)
    tick("validating")
    return ds


def read_checked_events(path: Path | str, student_ids: pd.Index, lecture_ids: pd.Index) -> pa.Table:
    """One events file (CSV or Parquet, read by the rules above) checked against known students and
    lectures, in the file's order: a split's or a test set's events beside a dataset.

    Raises:
        DatasetNotFoundError: the file does not exist.
        SchemaError: the file cannot be parsed or breaks the events schema (names file, row and column).
    """
    table, _ = _read_events(Path(path))
    return checked_events(str(path), table, student_ids, lecture_ids)


def _known(table: pd.DataFrame | None, name: str, events: pa.Table) -> pd.Index:
    """The ids of a students / lectures table, or (derived) every id the events' column holds."""
    if table is not None:
        ids: pd.Index = pd.Index(table[name])
    else:
        _, values = arrow_codes(events.column(name))
        ids = pd.Index(values, dtype=object)
    return ids


# ----------------------------------------------------------------------------------------------------------
# reading files


def _check_exists(path: Path, kind: str) -> None:
    if not path.is_file():
        raise DatasetNotFoundError(f"{kind} file {path} does not exist")


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return True
    if name.endswith(_PARQUET_SUFFIXES):
        return False
    raise SchemaError(
        str(path), "*", [], f"unsupported file type '{path.suffix}': use .csv (UTF-8) or .parquet"
    )


def _read_parquet(path: Path, dictionary: tuple[str, ...] = ()) -> pa.Table:
    """A Parquet file's table, its text columns among `dictionary` read dictionary-encoded."""
    try:
        schema = pq.read_schema(path)
        text = [f.name for f in schema if f.name in dictionary and pa.types.is_string(f.type)]
        return pq.read_table(path, read_dictionary=text or None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(str(path), "*", [], f"not a readable Parquet file: {exc}") from exc


def _read_frame(path: Path, kind: str) -> tuple[pd.DataFrame, bool]:
    """A students / lectures file as a DataFrame, and whether its cells are raw text (CSV) rather than
    typed (Parquet)."""
    _check_exists(path, kind)
    if not _is_csv(path):
        return _read_parquet(path).to_pandas(), False
    names, batches = _csv_batches(path)
    return pa.Table.from_batches(list(batches), schema=_text_schema(names)).to_pandas(), True


def _read_events(path: Path, progress: Progress | None = None) -> tuple[pa.Table, dict[str, int]]:
    """The events file as an Arrow table of the schema's columns (what was defaulted counted): ids and
    types dictionary-encoded; progress and times converted where the file holds text or numbers. The
    rows read so far are reported as stage "events read" (total unknown: 0) block by block."""
    _check_exists(path, "events")
    file = str(path)
    stats = {"event_ids_generated": 0, "progress_defaulted": 0, "timestamps_read_as_utc": 0}
    is_text = _is_csv(path)
    if is_text:
        names, batches = _csv_batches(path)
    else:
        whole = _read_parquet(path, DICTIONARY_COLUMNS)
        names, batches = whole.column_names, iter(whole.to_batches())
    check_event_columns(file, names)
    parts, first_row = [], 1
    for batch in batches:
        parts.append(_typed_columns(batch, file, first_row, stats, is_text=is_text))
        first_row += batch.num_rows
        if progress:
            progress("events read", first_row - 1, 0)
    if not parts:  # no rows: the columns still say what the file holds
        empty = pa.RecordBatch.from_pylist([], schema=_text_schema(names) if is_text else whole.schema)
        parts.append(_typed_columns(empty, file, 1, stats, is_text=is_text))
    table = pa.Table.from_batches(parts).unify_dictionaries()
    if "event_id" not in table.column_names:  # (given by the check, `features.stored_events.typed_events`)
        stats["event_ids_generated"] = table.num_rows
    return table, stats


def _text_schema(names: list[str]) -> pa.Schema:
    return pa.schema([pa.field(n, pa.string()) for n in names])


@contextmanager
def _open_text(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed as they are read (by its suffix)."""
    name = path.name.lower()
    with ExitStack() as stack:
        if name.endswith(".zip"):
            archive = stack.enter_context(zipfile.ZipFile(path))
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise SchemaError(
                    str(path), "*", [], f"the zip archive holds {len(members)} files: expected one CSV"
                )
            yield stack.enter_context(archive.open(members[0]))
        elif name.endswith(".zst"):  # (Python's own zstd arrives in 3.14: Arrow's codec reads it)
            yield stack.enter_context(pa.input_stream(str(path), compression="zstd"))  # type: ignore[misc]
        else:
            module = {".gz": gzip, ".bz2": bz2, ".xz": lzma}.get(path.suffix.lower())
            yield stack.enter_context(module.open(path, "rb") if module else path.open("rb"))  # type: ignore[attr-defined]


def _csv_batches(path: Path) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """A CSV file's header names (stripped; an empty one named `(unnamed N)`) and its rows a block at a
    time, every cell text (an empty cell null).

    Raises:
        SchemaError: the file is empty, not UTF-8, a header name is repeated or a row is malformed (the
            last two as the blocks are read).
    """
    file = str(path)
    raw_names = _csv_header(path)
    names = [n.strip() or f"(unnamed {i + 1})" for i, n in enumerate(raw_names)]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SchemaError(file, repeated[0], [], "the column appears more than once: keep one")
    return names, _csv_blocks(path, raw_names, names)


def _csv_reader(
    raw: Any, column_types: dict[str, pa.DataType], malformed: list[str] | None
) -> pcsv.CSVStreamingReader:
    """pyarrow's streaming reader over the file's bytes: blank and whitespace-only lines skipped, any
    other row of another length than the header recorded in `malformed` (and an error; skipped when
    `malformed` is None: the header is all that is read then)."""

    def on_invalid_row(row: Any) -> str:  # (an exception raised here would be dropped by Arrow)
        if not row.text.strip() or malformed is None:
            return "skip"
        malformed.append(f"{row.actual_columns} cells, the header has {row.expected_columns}")
        return "error"

    return pcsv.open_csv(
        raw,
        read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid_row),
        convert_options=pcsv.ConvertOptions(
            column_types=column_types, strings_can_be_null=True, null_values=[""]
        ),
    )


def _csv_blocks(path: Path, raw_names: list[str], names: list[str]) -> Iterator[pa.RecordBatch]:
    file = str(path)
    malformed: list[str] = []
    with _open_text(path) as raw:
        try:
            for batch in _csv_reader(raw, dict.fromkeys(raw_names, pa.string()), malformed):
                yield batch.rename_columns(names)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return  # a header alone: no rows
            if malformed:
                row = _malformed_row(path, len(names))
                raise SchemaError(
                    file, "*", [row] if row else [],
                    f"malformed CSV row ({malformed[0]}); check quoting and commas",
                ) from None  # fmt: skip
            if "UTF8" in str(exc) or "UTF-8" in str(exc):
                raise _not_utf8(path) from None
            raise SchemaError(file, "*", [], f"malformed CSV ({exc}); check quoting and commas") from None


def _csv_header(path: Path) -> list[str]:
    """The header row's names as pyarrow reads them (a byte-order mark and blank lines before it dropped)."""
    with _open_text(path) as raw:
        try:
            return list(_csv_reader(raw, {}, None).schema.names)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return _header_alone(path)
            if "UTF8" in str(exc) or "UTF-8" in str(exc):
                raise _not_utf8(path) from None
            raise SchemaError(
                str(path), "*", [], f"malformed CSV ({exc}); check quoting and commas"
            ) from None


def _header_alone(path: Path) -> list[str]:
    """The names of a file that is a header line without a line break (Arrow reads it as empty)."""
    with _open_text(path) as raw:
        text = raw.read(1 << 20).decode("utf-8-sig", errors="replace")
    names = next(csv.reader(io.StringIO(text.strip(), newline="")), []) if text.strip() else []
    if not names:
        raise SchemaError(str(path), "*", [], "the file is empty: expected a header row and data rows")
    return names


def _not_utf8(path: Path) -> SchemaError:
    row = _first_undecodable_row(path)
    return SchemaError(
        str(path),
        "*",
        [row] if row else [],
        "not UTF-8 text; save the file as UTF-8 (in Excel: 'CSV UTF-8')",
    )


def _first_undecodable_row(path: Path) -> int | None:
    """1-based data row of the first line that is not UTF-8 (only called when decoding failed)."""
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return max(line_no - 1, 1)
    return None


def _malformed_row(path: Path, cells: int) -> int | None:
    """1-based data row of the first row whose cell count is not the header's (only called when the
    reader met one; empty lines are skipped, as the reader skips them)."""
    with _open_text(path) as fh, io.TextIOWrapper(fh, encoding="utf-8-sig", newline="") as text:
        rows = csv.reader(text)
        next(rows, None)
        number = 0
        for row in rows:
            if not row or (len(row) == 1 and not row[0].strip()):  # (blank lines are skipped)
                continue
            number += 1
            if len(row) != cells:
                return number
    return None


# ----------------------------------------------------------------------------------------------------------
# converting cells to the schema's types


def _prepare(frame: pd.DataFrame, file: str, is_text: bool) -> pd.DataFrame:
    """Convert the columns a file holds as text (CSV) or loosely typed (Parquet) to the schema's types."""
    out = frame.copy()
    for column in out.columns:
        s = out[column]
        if column in _ID_COLUMNS and pd.api.types.is_integer_dtype(s.dtype) and not is_text:
            out[column] = s.astype("Int64").astype("str")  # lossless: integer ids become their digits
        if not is_text:
            continue
        if column in _LIST_COLUMNS:
            out[column] = _parse_lists(s)
        elif column in _INT_COLUMNS or column in _FLOAT_COLUMNS:
            out[column] = _parse_numbers(s, file, column, whole=column in _INT_COLUMNS)
        elif column == "active":
            out[column] = _parse_bools(s, file, column)
    return out


def _parse_numbers(s: pd.Series[Any], file: str, column: str, whole: bool) -> pd.Series[Any]:
    text = s.astype("str").str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = (values.isna() & text.notna()).to_numpy()
    if bad.any():
        what = "a whole number" if whole else "a number"
        raise SchemaError(file, column, _rows(bad), f"expected {what}, got {text[bad].iloc[0]!r}")
    return values.astype(np.float64)


def _parse_bools(s: pd.Series[Any], file: str, column: str) -> pd.Series[Any]:
    text = s.astype("str").str.strip().str.lower()
    values = text.map(_BOOL_TEXT)
    bad = (values.isna() & text.notna()).to_numpy()
    if bad.any():
        raise SchemaError(file, column, _rows(bad), f"expected true or false, got {s[bad].iloc[0]!r}")
    return values.astype(object).where(values.notna(), None)


def _parse_lists(s: pd.Series[Any]) -> pd.Series[Any]:
    def cell(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return text  # not a list: validation reports the cell as it is
            return parsed if isinstance(parsed, list) else text
        return [part.strip() for part in text.split("|") if part.strip()]

    # list columns belong to students / lectures files (thousands of rows), so a per-cell parse is cheap
    return s.map(cell, na_action="ignore").astype(object)


def _typed_columns(
    batch: pa.RecordBatch, file: str, first_row: int, stats: dict[str, int], *, is_text: bool
) -> pa.RecordBatch:
    """One block of an events file in the schema's columns: integer ids as their digits, the ids and
    types `features.stored_events.DICTIONARY_COLUMNS` dictionary-encoded, progress read and defaulted,
    times in UTC. A column of a type not handled here is left as it is, for the check to name its rows.

    Args:
        batch: the block (CSV: every cell text or null).
        file: the file (named in errors).
        first_row: the block's first 1-based data row.
        stats: counts of defaulted values, added to.
        is_text: the cells are CSV text (numbers are parsed), not typed Parquet values.
    """
    names = batch.schema.names
    columns: dict[str, pa.Array] = {}
    for name in _EVENT_COLUMNS:
        if name == "progress":
            if "type" in names:  # (without types the check names the missing column)
                columns[name] = _progress(batch, file, first_row, stats, is_text=is_text)
        elif name not in names:
            continue
        elif name == "occurred_at":
            columns[name] = _utc_times(batch.column(name), file, first_row, stats)
        else:
            column = batch.column(name)
            if name in _ID_COLUMNS and pa.types.is_integer(column.type):
                column = column.cast(pa.string())  # lossless: integer ids become their digits
            columns[name] = _text(column, dictionary=name in DICTIONARY_COLUMNS)
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _text(column: pa.Array, *, dictionary: bool) -> pa.Array:
    """Text as `string` (dictionary-encoded when asked); any other type as it is, for the check."""
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    if dictionary and pa.types.is_string(column.type):
        return column.dictionary_encode()
    return column


def _progress(
    batch: pa.RecordBatch, file: str, first_row: int, stats: dict[str, int], *, is_text: bool
) -> pa.Array:
    """Progress as float64, a missing value (or a missing column) given the type's default."""
    defaults = progress_defaults(batch.column("type"))
    if "progress" not in batch.schema.names:
        stats["progress_defaulted"] += batch.num_rows
        return pa.array(defaults)
    column = batch.column("progress")
    if is_text:
        values = _numbers(column, file, "progress", first_row)
    elif (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)) and len(column):
        values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    elif pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        values = np.zeros(0)
    else:
        return column  # text or flags in a typed file: the check names the rows
    missing = np.isnan(values)
    stats["progress_defaulted"] += int(missing.sum())
    return pa.array(np.where(missing, defaults, values))


def _numbers(column: pa.Array, file: str, name: str, first_row: int) -> npt.NDArray[np.float64]:
    """CSV text as float64 (a null NaN); text that is not a number is an error naming its rows."""
    text = pc.utf8_trim_whitespace(column)
    try:
        values = text.cast(pa.float64())
    except pa.ArrowInvalid:
        values = None
    if values is not None:
        numbers = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
        written_nan = np.isnan(numbers) & ~np.asarray(text.is_null().to_numpy(zero_copy_only=False))
        if not written_nan.any():
            return numbers
    bad = [i for i, v in enumerate(text.to_pylist()) if v is not None and not _reads_as(v, pa.float64())]
    raise SchemaError(
        file, name, [first_row + i for i in bad], f"expected a number, got {text[bad[0]].as_py()!r}"
    )


def _reads_as(text: str, kind: pa.DataType) -> bool:
    """Whether one cell casts to `kind` (a written NaN is not a number); used on the error path only."""
    try:
        value = pa.scalar(text).cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return not (pa.types.is_floating(kind) and value.as_py() != value.as_py())


#: Rewrites of ISO 8601 text that Arrow's parser does not read into forms it does, tried when a block
#: does not read as it is: the basic format (`20250301T090000Z`, `20250301T0900Z`), a decimal comma, a
#: fraction of a second past microseconds (truncated to the schema's unit: a floor), a space before the
#: zone.
_ISO_REWRITES = (
    (r"^(\d{4})(\d{2})(\d{2})([Tt ]|$)", r"\1-\2-\3\4"),
    (r"([Tt ])(\d{2})(\d{2})(\d{2})", r"\1\2:\3:\4"),
    (r"([Tt ])(\d{2})(\d{2})([Zz]|[+-]\d{2}(?::?\d{2})?)?$", r"\1\2:\3\4"),
    (r"(:\d{2}),(\d)", r"\1.\2"),
    (r"(\.\d{6})\d+", r"\1"),
    (r"\s+([Zz]|[+-]\d{2}(?::?\d{2})?)$", r"\1"),
)
_UTC = pa.timestamp("us", tz="UTC")
_NAIVE = pa.timestamp("us")


def _utc_times(column: pa.Array, file: str, first_row: int, stats: dict[str, int]) -> pa.Array:
    """Timestamps in UTC; values without a zone are taken as UTC (and counted). Text is ISO 8601; a
    value that is neither text nor a timestamp is left for the check to name."""
    if pa.types.is_timestamp(column.type):
        if column.type.tz is not None:
            return column
        stats["timestamps_read_as_utc"] += len(column) - column.null_count
        return column.cast(pa.timestamp(column.type.unit, tz="UTC"))  # (the same instants, as UTC)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column
    text = pc.utf8_trim_whitespace(column)
    times = _parsed_times(text, stats)
    if times is not None:
        return times
    rewritten = text  # (only when the block does not read as it is)
    for pattern, replacement in _ISO_REWRITES:
        rewritten = pc.replace_substring_regex(rewritten, pattern, replacement)
    times = _parsed_times(rewritten, stats)
    if times is not None:
        return times
    zoned = pc.match_substring_regex(rewritten, ZONE_SUFFIX).to_pylist()
    values = text.to_pylist()
    bad = [
        i for i, (v, written, z) in enumerate(zip(values, rewritten.to_pylist(), zoned, strict=True))
        if v is not None and not _reads_as(written, _UTC if z else _NAIVE)
    ]  # fmt: skip
    raise SchemaError(
        file,
        "occurred_at",
        [first_row + i for i in bad],
        f"cannot read {values[bad[0]]!r} as an ISO 8601 timestamp (e.g. 2025-03-01T09:30:00+09:00; "
        "without a zone it is read as UTC)",
    )


def _parsed_times(text: pa.Array, stats: dict[str, int]) -> pa.Array | None:
    """ISO 8601 text as UTC timestamps (text without a zone as UTC, counted), or None when a value does
    not read."""
    zoned = pc.fill_null(pc.match_substring_regex(text, ZONE_SUFFIX), True)
    naive_count = int(pc.sum(pc.invert(zoned)).as_py() or 0)
    try:
        if naive_count == 0:
            times = text.cast(_UTC)
        elif naive_count == len(text):
            times = text.cast(_NAIVE).cast(_UTC)
        else:
            in_zone = pc.if_else(zoned, text, None).cast(_UTC)
            times = pc.if_else(zoned, in_zone, pc.if_else(zoned, None, text).cast(_NAIVE).cast(_UTC))
    except pa.ArrowInvalid:
        return None
    stats["timestamps_read_as_utc"] += naive_count
    return times


def _rows(mask: Any) -> list[int]:
    return (np.flatnonzero(np.asarray(mask)) + 1).tolist()


# ----------------------------------------------------------------------------------------------------------
# tables derived from the events


def _used(events: pa.Table, name: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[Any]]:
    """(code per event, the distinct values the events use, as text) of an id column."""
    codes, values = arrow_codes(events.column(name))
    return codes, values.astype(str)


def _derive_lectures(events: pa.Table) -> pd.DataFrame:
    codes, values = _used(events, "lecture_id")
    ids = np.unique(values[np.unique(codes)])
    return pd.DataFrame({"lecture_id": ids, "title": ids, "provider": UNKNOWN, "subject": UNKNOWN})


def _derive_students(events: pa.Table, lectures: pd.DataFrame | None) -> pd.DataFrame:
    student_codes, student_values = _used(events, "student_id")
    present = np.bincount(student_codes, minlength=len(student_values)) > 0  # (checked: no nulls)
    order = np.flatnonzero(present)[np.argsort(student_values[present], kind="stable")]
    grade = np.full(len(student_values), DEFAULT_GRADE, dtype=object)
    if lectures is not None:
        restricted = lectures.loc[lectures["grades"].map(len) < len(GRADES), ["lecture_id", "grades"]]
        lecture_codes, lecture_values = _used(events, "lecture_id")
        # suits[lecture code, grade]: the restricted lecture is for that grade
        suits = np.zeros((len(lecture_values), len(GRADES)), dtype=np.float64)
        at = pd.Index(lecture_values).get_indexer(restricted["lecture_id"])
        for code, grades in zip(at, restricted["grades"], strict=True):
            if code >= 0:
                suits[code, [GRADES.index(g) for g in grades]] = 1.0
        on_restricted = np.asarray(suits.any(axis=1))[lecture_codes]
        pairs = np.unique(
            student_codes[on_restricted].astype(np.int64) * len(lecture_values) + lecture_codes[on_restricted]
        )  # each student-lecture pair once
        students, lectures_of = pairs // len(lecture_values), pairs % len(lecture_values)
        counts = np.stack(
            [np.bincount(students, weights=suits[lectures_of, g], minlength=len(student_values))
             for g in range(len(GRADES))],
            axis=1,
        )  # fmt: skip
        best = np.argmax(counts, axis=1)  # the first of equal counts: ties in school order
        has = counts.max(axis=1, initial=0.0) > 0
        grade[has] = np.asarray(GRADES, dtype=object)[best[has]]
    return pd.DataFrame(
        {"student_id": student_values[order], "region": UNKNOWN_REGION, "grade": grade[order].astype(str)}
    )
