"""Load plain event files (CSV or Parquet) that a data scientist brings into a validated `Dataset`.

Events file columns: `student_id`, `lecture_id`, `type`, `occurred_at` (required) and `event_id`,
`progress`, `request_id` (optional). Optional students and lectures files use the column names of
`features.schemas.STUDENTS` / `LECTURES`; only `*_REQUIRED` columns must be present, the rest get the
defaults documented in `features.validation`.

Reading rules (documented choices):

* CSV files are UTF-8 (a byte-order mark is allowed) with a header row; an empty cell is a missing value.
  Header names are stripped of surrounding spaces. Row numbers in errors are 1-based data rows: row N is
  line N + 1 of the file (for rows without line breaks inside quoted cells).
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

Without a students file, students are derived from the events: region `"unknown"` (a valid region code
that no partner region uses, so the student sees only lectures licensed everywhere), grade = the grade
most common among the grade-restricted lectures the student has events on (ties in school order), or
`"adult"` when there are none (a learner outside school grades; with derived lectures every student is
`"adult"`). Without a lectures file, lectures are derived from the events: title = the lecture id,
provider and subject `"unknown"`, suitable for every grade, licensed everywhere (`["*"]`), its own series
at position 1, duration 1 minute (unknown), level 1, active.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.errors import DatasetNotFoundError, SchemaError
from features.schemas import GRADES
from features.tables import Dataset, Progress, sort_events
from features.validation import default_progress, validate_events, validate_lectures, validate_students

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
_ZONE_SUFFIX = r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


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

    raw_events, events_text = _read_file(events, "events")
    tick("reading")
    prepared, stats = _prepare_events(raw_events, str(events), events_text)

    lecture_table = None
    if lectures_path is not None:
        raw, is_text = _read_file(Path(lectures_path), "lectures")
        lecture_table = validate_lectures(_prepare(raw, str(lectures_path), is_text), str(lectures_path))
    student_table = None
    if students_path is not None:
        raw, is_text = _read_file(Path(students_path), "students")
        student_table = validate_students(_prepare(raw, str(students_path), is_text), str(students_path))
    tick("reading")

    event_table = validate_events(
        prepared,
        str(events),
        student_ids=None if student_table is None else pd.Index(student_table["student_id"]),
        lecture_ids=None if lecture_table is None else pd.Index(lecture_table["lecture_id"]),
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


# ----------------------------------------------------------------------------------------------------------
# reading files


def _read_file(path: Path, kind: str) -> tuple[pd.DataFrame, bool]:
    """The file as a DataFrame, and whether its cells are raw text (CSV) rather than typed (Parquet)."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{kind} file {path} does not exist")
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise SchemaError(str(path), "*", [], f"not a readable Parquet file: {exc}") from exc
        return frame, False
    if name.endswith(_CSV_SUFFIXES):
        return _read_csv(path), True
    raise SchemaError(
        str(path), "*", [], f"unsupported file type '{path.suffix}': use .csv (UTF-8) or .parquet"
    )


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        row = _first_undecodable_row(path)
        raise SchemaError(
            str(path),
            "*",
            [row] if row else [],
            f"not UTF-8 text ({exc.reason}); save the file as UTF-8 (in Excel: 'CSV UTF-8')",
        ) from None
    except pd.errors.EmptyDataError:
        raise SchemaError(
            str(path), "*", [], "the file is empty: expected a header row and data rows"
        ) from None
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        rows = [int(match.group(1)) - 1] if match else []
        detail = str(exc).split("C error: ")[-1].strip()
        raise SchemaError(
            str(path), "*", rows, f"malformed CSV row ({detail}); check quoting and commas"
        ) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    # short rows leave NaN in the trailing cells; empty cells are "" -> both mean "missing"
    return frame.replace("", np.nan) if len(frame) else frame


def _first_undecodable_row(path: Path) -> int | None:
    """1-based data row of the first line that is not UTF-8 (only called when decoding failed)."""
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return max(line_no - 1, 1)
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


def _prepare_events(frame: pd.DataFrame, file: str, is_text: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """Events with typed columns, defaulted progress and UTC timestamps, plus counts of what was defaulted."""
    out = _prepare(frame.drop(columns=[c for c in ("progress",) if c in frame.columns]), file, is_text)
    stats = {"event_ids_generated": 0, "progress_defaulted": 0, "timestamps_read_as_utc": 0}
    if "event_id" not in out.columns:
        stats["event_ids_generated"] = len(out)
    if "type" in out.columns:
        defaults = default_progress(out["type"].astype("str"))
        if "progress" in frame.columns:
            raw = frame["progress"]
            values = _parse_numbers(raw, file, "progress", whole=False) if is_text else raw
            if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
                numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
                missing = np.isnan(numbers)
                stats["progress_defaulted"] = int(missing.sum())
                values = pd.Series(np.where(missing, defaults.to_numpy(), numbers))
            out["progress"] = values  # anything else is left for validation to reject with its row
        else:
            stats["progress_defaulted"] = len(out)
            out["progress"] = defaults
    if "occurred_at" in out.columns:
        out["occurred_at"], stats["timestamps_read_as_utc"] = _utc_timestamps(out["occurred_at"], file)
    return out, stats


def _utc_timestamps(s: pd.Series[Any], file: str) -> tuple[pd.Series[Any], int]:
    """Timestamps in UTC; values without a zone are taken as UTC (and counted)."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC"), 0
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.dt.tz_localize("UTC"), int(s.notna().sum())
    kind = pd.api.types.infer_dtype(s, skipna=True)
    if not (isinstance(s.dtype, pd.StringDtype) or kind in ("string", "empty")):
        return s, 0  # not text: validation reports the type with the row
    text = s.astype("str").str.strip()
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = (parsed.isna() & text.notna()).to_numpy()
    if bad.any():
        raise SchemaError(
            file,
            "occurred_at",
            _rows(bad),
            f"cannot read {text[bad].iloc[0]!r} as an ISO 8601 timestamp (e.g. 2025-03-01T09:30:00+09:00; "
            "without a zone it is read as UTC)",
        )
    naive = ~text.str.contains(_ZONE_SUFFIX, regex=True).fillna(True)
    return parsed, int(naive.sum())


def _rows(mask: Any) -> list[int]:
    return (np.flatnonzero(np.asarray(mask)) + 1).tolist()


# ----------------------------------------------------------------------------------------------------------
# tables derived from the events


def _derive_lectures(events: pd.DataFrame) -> pd.DataFrame:
    ids = np.sort(events["lecture_id"].unique().astype(str))
    return pd.DataFrame({"lecture_id": ids, "title": ids, "provider": UNKNOWN, "subject": UNKNOWN})


def _derive_students(events: pd.DataFrame, lectures: pd.DataFrame | None) -> pd.DataFrame:
    ids = np.sort(events["student_id"].unique().astype(str))
    grade = pd.Series(DEFAULT_GRADE, index=pd.Index(ids), dtype="str")
    if lectures is not None:
        restricted = lectures.loc[lectures["grades"].map(len) < len(GRADES), ["lecture_id", "grades"]]
        if len(restricted):
            suits = restricted.explode("grades").rename(columns={"grades": "grade"})
            pairs = events[["student_id", "lecture_id"]].drop_duplicates().merge(suits, on="lecture_id")
            if len(pairs):
                counts = pairs.groupby(["student_id", "grade"]).size().rename("n").reset_index()
                counts["order"] = counts["grade"].map({g: i for i, g in enumerate(GRADES)})
                best = counts.sort_values(["student_id", "n", "order"], ascending=[True, False, True])
                best = best.drop_duplicates("student_id")
                grade.loc[best["student_id"].to_numpy()] = best["grade"].to_numpy()
    return pd.DataFrame({"student_id": ids, "region": UNKNOWN_REGION, "grade": grade.to_numpy()})
