"""Datasets on disk: a directory of three Parquet tables plus `manifest.json`, written atomically.

Layout of a dataset directory::

    students.parquet   schema features.schemas.STUDENTS
    lectures.parquet   schema features.schemas.LECTURES
    events.parquet     schema features.schemas.EVENTS, sorted by (occurred_at, event_id)
    manifest.json      UTF-8 JSON: where the data came from, sizes, fingerprint

`write_dataset` writes into a temporary sibling directory (`.NAME.tmp-*`) and swaps it in with renames, so
a crash or an error while writing never leaves a half-written dataset where a reader looks; an existing
dataset stays as it was until the new one is complete. Replacing takes two renames (old aside to
`.NAME.old-*`, new in); a crash between them leaves no `NAME` but the complete old copy, which
`read_dataset` points to. Temporary directories of a crashed writer are left for a person to delete
(never removed automatically: another writer may own them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.durable import fsync_dir, swap_in
from features.errors import DatasetNotFoundError, SchemaError
from features.schemas import EVENTS, LECTURES, STUDENTS
from features.validation import epoch_microseconds, validate_events, validate_lectures, validate_students

log = logging.getLogger(__name__)

#: File name of each table inside a dataset directory.
TABLE_FILES: dict[str, str] = {
    "students": "students.parquet",
    "lectures": "lectures.parquet",
    "events": "events.parquet",
}
MANIFEST_FILE = "manifest.json"
#: Written into every manifest; bump when the on-disk layout changes.
DATASET_FORMAT = "learnrec-dataset/1"
_SCHEMAS: dict[str, pa.Schema] = {"students": STUDENTS, "lectures": LECTURES, "events": EVENTS}
_LIST_SEPARATOR = "\x1f"  # unit separator: cannot appear in codes and keeps ["a b"] != ["a", "b"]

#: `progress(stage, done, total)` callback that long operations call as they go.
Progress = Callable[[str, int, int], None]


@dataclass
class Dataset:
    """The three tables of the data model and the manifest describing where they came from.

    Attributes:
        students: one row per student (schema `STUDENTS`).
        lectures: one row per lecture (schema `LECTURES`).
        events: one row per event (schema `EVENTS`).
        manifest: JSON-serialisable provenance (source, licence, mapping report ...).
    """

    students: pd.DataFrame
    lectures: pd.DataFrame
    events: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        """Row counts per table."""
        return {"students": len(self.students), "lectures": len(self.lectures), "events": len(self.events)}

    def fingerprint(self) -> str:
        """A stable sha256 (hex) of the tables' content, for MLflow dataset logging and cache keys.

        Covers every column of the three tables (not the manifest) and does not depend on row order,
        nor on the in-memory dtypes (tables missing optional columns are validated first),
        so a dataset and its written-then-read copy have the same fingerprint. Row hashes come from
        `pandas.util.hash_pandas_object`, which is stable across runs and machines.

        Returns:
            64 hex digits.
        """
        ds = self
        if any(list(getattr(self, n).columns) != _SCHEMAS[n].names for n in _SCHEMAS):
            ds = validated(self)  # fill defaulted columns so equal content gives equal fingerprints
        digest = hashlib.sha256(DATASET_FORMAT.encode())
        for name in ("students", "lectures", "events"):
            frame: pd.DataFrame = getattr(ds, name)
            digest.update(_table_digest(name, frame, _SCHEMAS[name]))
        return digest.hexdigest()


def _canonical_column(values: pd.Series[Any], kind: pa.DataType) -> pd.Series[Any]:
    """One column in the representation the fingerprint hashes (independent of the in-memory dtype)."""
    if pa.types.is_list(kind):
        return values.map(
            lambda v: (
                _LIST_SEPARATOR.join(str(x) for x in v) if isinstance(v, list | tuple | np.ndarray) else None
            )
        ).astype("str")
    if pa.types.is_timestamp(kind):
        return pd.Series(epoch_microseconds(pd.to_datetime(values, utc=True)))
    if pa.types.is_string(kind):
        return values.astype("str")
    return values.astype(kind.to_pandas_dtype())


def _table_digest(name: str, frame: pd.DataFrame, schema: pa.Schema) -> bytes:
    digest = hashlib.sha256()
    digest.update(f"{name}\n{len(frame)}\n".encode())
    columns = {}
    for f in schema:
        digest.update(f"{f.name}:{f.type}\n".encode())
        columns[f.name] = _canonical_column(frame[f.name].reset_index(drop=True), f.type)
    if len(frame):
        rows = pd.util.hash_pandas_object(pd.DataFrame(columns), index=False).to_numpy(dtype=np.uint64)
        # sorting the row hashes makes the digest independent of row order
        digest.update(np.sort(rows).astype("<u8").tobytes())
    return digest.digest()


# ----------------------------------------------------------------------------------------------------------
# writing


def _arrow_column(values: pd.Series[Any], kind: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(kind):
        # pyarrow's pandas bridge reads tz-aware columns through a deprecated pandas path; go via UTC
        # microseconds instead (validated columns are already UTC)
        utc = pd.to_datetime(values, utc=True).astype("datetime64[us, UTC]").dt.tz_localize(None)
        return pa.array(utc.to_numpy(dtype="datetime64[us]"), type=kind, from_pandas=True)
    if pa.types.is_list(kind):
        cells = [list(v) if isinstance(v, list | tuple | np.ndarray) else v for v in values.tolist()]
        return pa.array(cells, type=kind, from_pandas=True)
    return pa.array(values, type=kind, from_pandas=True)


def _to_arrow(frame: pd.DataFrame, schema: pa.Schema, name: str) -> pa.Table:
    """The frame as an Arrow table with exactly `schema` (no pandas metadata)."""
    try:
        arrays = [_arrow_column(frame[f.name].reset_index(drop=True), f.type) for f in schema]
        table = pa.Table.from_arrays(arrays, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError, ValueError) as exc:
        raise SchemaError(
            TABLE_FILES[name], "*", [], f"cannot store the table with its schema: {exc}"
        ) from exc
    return table


def _write_parquet(table: pa.Table, path: Path) -> None:
    with path.open("wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Events in dataset order: by `occurred_at`, then `event_id` (ties broken deterministically).

    Args:
        events: validated events.

    Returns:
        The same rows sorted, index 0..n-1 (the input itself when it is already in order).
    """
    if len(events) < 2:
        return events.reset_index(drop=True)
    ts = epoch_microseconds(events["occurred_at"])
    if bool((ts[1:] >= ts[:-1]).all()):
        ties = np.flatnonzero(ts[1:] == ts[:-1])
        if ties.size == 0:
            return events.reset_index(drop=True)
        ids = events["event_id"].to_numpy(dtype=object)
        if bool((ids[ties] <= ids[ties + 1]).all()):
            return events.reset_index(drop=True)
    key = pd.DataFrame({"t": ts, "id": events["event_id"].to_numpy(dtype=object)})
    order = key.sort_values(["t", "id"], kind="stable").index.to_numpy()
    return events.take(order).reset_index(drop=True)


def write_dataset(
    ds: Dataset, directory: Path | str, *, validate: bool = True, progress: Progress | None = None
) -> Path:
    """Write a dataset directory atomically.

    The tables are validated (unless `validate=False`), written as Parquet with the exact schemas into a
    temporary sibling directory together with `manifest.json` (UTF-8, non-ASCII kept as is, with
    `format`, `sizes` and `fingerprint` added), then renamed into place. An existing dataset at
    `directory` is replaced only once the new one is complete; if anything fails before that, it is left
    untouched and the temporary directory is removed.

    Args:
        ds: the dataset to write.
        directory: the dataset directory (created or replaced).
        validate: check the tables first (pass False only for tables that were just validated).
        progress: optional `progress(stage, done, total)` callback.

    Returns:
        The dataset directory.

    Raises:
        SchemaError: a table breaks its schema (nothing is written).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DatasetNotFoundError(f"{directory} exists and is not a directory; choose another output path")
    steps = 5
    if validate:
        ds = validated(ds, progress=progress)
    events = sort_events(ds.events)
    ds = Dataset(ds.students, ds.lectures, events, ds.manifest)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        for i, name in enumerate(("students", "lectures", "events"), start=1):
            _write_parquet(_to_arrow(getattr(ds, name), _SCHEMAS[name], name), tmp / TABLE_FILES[name])
            if progress:
                progress("writing", i, steps)
        manifest = {
            **ds.manifest,
            "format": DATASET_FORMAT,
            "sizes": ds.sizes,
            "fingerprint": ds.fingerprint(),
        }
        with (tmp / MANIFEST_FILE).open("w", encoding="utf-8") as fh:
            json.dump(manifest, fh, ensure_ascii=False, indent=2, sort_keys=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        if progress:
            progress("writing", 4, steps)
        swap_in(tmp, directory)
        if progress:
            progress("writing", steps, steps)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def validated(ds: Dataset, progress: Progress | None = None) -> Dataset:
    """The dataset with all three tables validated (types, ids, enums, ranges, references).

    Args:
        ds: the dataset to check.
        progress: optional `progress(stage, done, total)` callback.

    Returns:
        A new `Dataset` holding the validated tables and the same manifest.

    Raises:
        SchemaError: the first rule a table breaks.
    """
    # rows named in errors are positions in the in-memory tables
    students = validate_students(ds.students, "students")
    if progress:
        progress("validating", 1, 3)
    lectures = validate_lectures(ds.lectures, "lectures")
    if progress:
        progress("validating", 2, 3)
    events = validate_events(
        ds.events,
        "events",
        student_ids=pd.Index(students["student_id"]),
        lecture_ids=pd.Index(lectures["lecture_id"]),
    )
    if progress:
        progress("validating", 3, 3)
    return Dataset(students, lectures, events, dict(ds.manifest))


# ----------------------------------------------------------------------------------------------------------
# reading


def _read_parquet(path: Path, name: str) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(
            str(path), "*", [], f"not a readable Parquet file ({exc}); rewrite the dataset"
        ) from exc
    frame: pd.DataFrame = table.to_pandas()
    for f in _SCHEMAS[name]:
        # Arrow hands list cells over as numpy arrays; the tables hold plain lists everywhere
        if pa.types.is_list(f.type) and f.name in frame.columns:
            frame[f.name] = pd.Series(table.column(f.name).to_pylist(), dtype=object)
    return frame


def read_dataset(directory: Path | str, validate: bool = True) -> Dataset:
    """Read a dataset directory written by `write_dataset` (or by hand with the same layout).

    Args:
        directory: the dataset directory.
        validate: check every table against its schema and the events' references (recommended; a few
            seconds for millions of events).

    Returns:
        The dataset, events sorted by (occurred_at, event_id).

    Raises:
        DatasetNotFoundError: the directory or one of its four files is missing (the message names it).
        SchemaError: a table breaks its schema, or the manifest is not valid JSON.
    """
    directory = Path(directory)
    if not directory.is_dir():
        # a crash between the two renames of `write_dataset` leaves the previous dataset aside, complete
        aside = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.is_dir() else []
        hint = f" (a previous copy was set aside at {aside[-1]}: rename it back)" if aside else ""
        raise DatasetNotFoundError(
            f"dataset directory {directory} does not exist{hint}: create one with `learnrec data synth`, "
            "`learnrec data oulad` or `learnrec data import`"
        )
    for file in (*TABLE_FILES.values(), MANIFEST_FILE):
        if not (directory / file).is_file():
            raise DatasetNotFoundError(
                f"dataset {directory} is incomplete: {file} is missing (rewrite the dataset)"
            )
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(str(manifest_path), "*", [], f"not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise SchemaError(str(manifest_path), "*", [], "expected a JSON object at the top level")
    frames = {name: _read_parquet(directory / file, name) for name, file in TABLE_FILES.items()}
    if validate:
        students = validate_students(frames["students"], str(directory / TABLE_FILES["students"]))
        lectures = validate_lectures(frames["lectures"], str(directory / TABLE_FILES["lectures"]))
        events = validate_events(
            frames["events"],
            str(directory / TABLE_FILES["events"]),
            student_ids=pd.Index(students["student_id"]),
            lecture_ids=pd.Index(lectures["lecture_id"]),
        )
    else:
        students, lectures, events = frames["students"], frames["lectures"], frames["events"]
    return Dataset(students, lectures, sort_events(events), manifest)
