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

Events are read and checked on Arrow (`features.stored_events`: every rule of `validate_events` over the
Arrow columns, so no validated copy is made) and stay an Arrow table in memory (`features.event_table`):
`read_dataset`'s and the partitions of `read_partitioned`, which seeding reads. The events' `student_id`,
`lecture_id` and `type` are dictionary-encoded (an integer code per event, each distinct value once);
`event_id` and `request_id` are Arrow text, checked and sorted with pyarrow compute, never a Python
object per event. Event ids are matched to lists of ids through `features.ids` (only the distinct values
become text) and fingerprinted by `features.fingerprint` (numpy over the codes and Arrow buffers). pyarrow,
not polars or DuckDB: the project already reads and writes every table with it, the models take numpy
and scipy, and Arrow hands columns to numpy without a copy, so no second engine (and no second set of
validation rules) is needed; memory and time stay linear in events (`bench/RESULTS.md`, data rows). Event
files a data scientist brings (`learnrec data import`) reach the same checks without pandas:
`features.event_files` streams a CSV through pyarrow a block at a time. The students and lectures tables
(one row per student or lecture, not per event) are pandas frames.

Size: over 600 lines because plain, partitioned and atomic reads and writes of one on-disk format share its
layout and manifest rules.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.durable import fsync_dir, swap_in
from features.errors import DatasetNotFoundError, SchemaError
from features.event_table import (
    as_event_table,
    concat_events,
    event_microseconds,
    take_ascending,
    take_rows,
)
from features.fingerprint import FINGERPRINT_VERSION, table_digest
from features.ids import arrow_codes, sorted_distinct
from features.schemas import EVENTS, LECTURES, STUDENTS
from features.stored_events import (
    check_whole_file,
    checked_events,
    is_coded,
    read_events_table,
    typed_events,
)
from features.validation import (
    generated_event_ids,
    validate_events,
    validate_lectures,
    validate_students,
)

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

#: `progress(stage, done, total)` callback that long operations call as they go.
Progress = Callable[[str, int, int], None]


@dataclass
class Dataset:
    """The three tables of the data model and the manifest describing where they came from.

    Attributes:
        students: one row per student (schema `STUDENTS`).
        lectures: one row per lecture (schema `LECTURES`).
        events: one row per event (schema `EVENTS`), an Arrow table (`features.event_table`); a pandas
            frame given here is converted once.
        manifest: JSON-serialisable provenance (source, licence, mapping report ...).
    """

    students: pd.DataFrame
    lectures: pd.DataFrame
    events: pa.Table
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = as_event_table(self.events)

    @property
    def sizes(self) -> dict[str, int]:
        """Row counts per table."""
        return {"students": len(self.students), "lectures": len(self.lectures), "events": len(self.events)}

    def fingerprint(self) -> str:
        """A stable sha256 (hex) of the tables' content, for MLflow dataset logging and cache keys.

        Covers every column of the three tables (not the manifest) and does not depend on row order,
        nor on the in-memory dtypes (tables missing optional columns are validated first),
        so a dataset and its written-then-read copy have the same fingerprint. The rule is
        `features.fingerprint` (`FINGERPRINT_VERSION`), stable across runs, machines and library versions.

        Returns:
            64 hex digits.
        """
        ds = self
        names = {"students": list(self.students.columns), "lectures": list(self.lectures.columns)}
        names["events"] = self.events.column_names
        if any(names[n] != _SCHEMAS[n].names for n in _SCHEMAS):
            ds = validated(self)  # fill defaulted columns so equal content gives equal fingerprints
        digest = hashlib.sha256(DATASET_FORMAT.encode())
        for name in ("students", "lectures", "events"):
            digest.update(table_digest(name, getattr(ds, name), _SCHEMAS[name]))
        return digest.hexdigest()

    def recorded_fingerprint(self) -> str | None:
        """The manifest's fingerprint when it was computed by today's rule (else None: compute it)."""
        if self.manifest.get("fingerprint_version") != FINGERPRINT_VERSION:
            return None
        recorded = self.manifest.get("fingerprint")
        return str(recorded) if recorded else None


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
    if isinstance(values.dtype, pd.CategoricalDtype):  # codes and distinct values, decoded by Arrow
        codes = pa.array(values.cat.codes.to_numpy(), mask=values.isna().to_numpy())
        distinct = pa.array(values.cat.categories.to_numpy(dtype=object), type=kind, from_pandas=True)
        return pa.DictionaryArray.from_arrays(codes, distinct).cast(kind)
    return pa.array(values, type=kind, from_pandas=True)


def _cast_column(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    """An Arrow column in the schema's type; times finer than it rounded down, as pandas rounds them."""
    if pa.types.is_timestamp(kind) and pa.types.is_timestamp(column.type) and column.type.unit == "ns":
        return pc.floor_temporal(column, unit="microsecond").cast(kind, safe=False)
    return column.cast(kind)


def _to_arrow(frame: pd.DataFrame | pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """The table as an Arrow table with exactly `schema` (no pandas metadata; dictionaries decoded)."""
    try:
        if isinstance(frame, pa.Table):
            arrays = [_cast_column(frame.column(f.name), f.type) for f in schema]
        else:
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


def _dataset_order(ts: npt.NDArray[np.int64], ids: pa.ChunkedArray) -> npt.NDArray[np.int64] | None:
    """The row order by (`occurred_at` microseconds `ts`, `event_id` `ids`); None when already in it."""
    if ts.size < 2:
        return None
    if bool((ts[1:] >= ts[:-1]).all()):
        ties = np.flatnonzero(ts[1:] == ts[:-1])
        if ties.size == 0:
            return None
        in_order = pc.less_equal(take_ascending(ids, ties), take_ascending(ids, ties + 1))
        if bool(pc.all(in_order).as_py()):
            return None
        # in time order already: only the rows sharing an instant are put in id order, among themselves
        tied = sorted_distinct(np.concatenate([ties, ties + 1]))
        key = pa.table({"t": ts[tied], "id": take_ascending(ids, tied)})
        within = np.asarray(pc.sort_indices(key, sort_keys=[("t", "ascending"), ("id", "ascending")]))
        order = np.arange(ts.size, dtype=np.int64)
        order[tied] = tied[within]
        return order
    key = pa.table({"t": ts, "id": ids})
    order = pc.sort_indices(key, sort_keys=[("t", "ascending"), ("id", "ascending")])
    return np.asarray(order.to_numpy(), dtype=np.int64)


def sort_events(events: pd.DataFrame | pa.Table) -> pa.Table:
    """Events in dataset order: by `occurred_at`, then `event_id` (ties broken deterministically).

    Args:
        events: validated events (a pandas frame is converted: `features.event_table`).

    Returns:
        The same rows sorted (the table itself when it is already in order).
    """
    table = as_event_table(events)
    order = event_table_order(table)
    return table if order is None else _permuted(table, order)


#: Blocks a permutation may move before `_permuted` takes every row instead of slicing the table.
_MOVED_BLOCKS = 4096


def _permuted(table: pa.Table, order: npt.NDArray[np.int64]) -> pa.Table:
    """The rows in `order` (a permutation of them). When it moves rows only within a few blocks (a file
    in time order whose ties are put in id order), the rows in between stay slices of the table and each
    block is taken from its own slice (a take copies only the chunks it reads); otherwise every row is
    taken (`take_rows`)."""
    moved = np.flatnonzero(order != np.arange(order.size))
    if moved.size == 0:
        return table
    # the blocks order maps onto themselves: the spans from each moved row to where it goes, merged
    low, high = np.minimum(moved, order[moved]), np.maximum(moved, order[moved]) + 1
    by_low = np.argsort(low, kind="stable")
    low, high = low[by_low], np.maximum.accumulate(high[by_low])
    first = np.flatnonzero(np.concatenate([[True], low[1:] >= high[:-1]]))
    if first.size > _MOVED_BLOCKS:
        return take_rows(table, order)
    pieces, done = [], 0
    for start, end in zip(
        low[first].tolist(), high[np.append(first[1:], low.size) - 1].tolist(), strict=True
    ):
        block = table.slice(start, end - start)
        pieces += [table.slice(done, start - done), block.take(pa.array(order[start:end] - start))]
        done = end
    return pa.concat_tables([*pieces, table.slice(done)])


def event_table_order(events: pa.Table) -> npt.NDArray[np.int64] | None:
    """`sort_events`' order (the schema's columns, without nulls in the two keys): the row order, or None
    when the rows are in it."""
    ids = events.column("event_id")
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(ids.type.value_type)
    return _dataset_order(event_microseconds(events), ids)


def append_events(events: pa.Table, more: pd.DataFrame | pa.Table) -> pa.Table:
    """`events` and the rows of `more` (its columns taken in `events`' order and types), in dataset order
    when `events` is in it.

    A dictionary-encoded column of `events` (ids and types, as `read_dataset` gives them) stays encoded:
    the new rows are encoded on their own values (`features.event_table.concat_events`). The new rows
    (a retrain's few thousand) are sorted and merged in by position: `events`' own rows are slices of it,
    never copied or sorted again (at 1M students a sort of the appended table held two more copies).
    `events` out of dataset order: the rows one after the other (`sort_events` orders them).
    """
    joined = concat_events([events, as_event_table(more)])
    base, extra = joined.slice(0, events.num_rows), joined.slice(events.num_rows)
    if extra.num_rows == 0 or event_table_order(base) is not None:
        return joined
    extra = sort_events(extra)
    at, new_at = event_microseconds(base), event_microseconds(extra)
    lo = np.searchsorted(at, new_at, side="left")
    place = np.searchsorted(at, new_at, side="right")  # after every earlier row ...
    ids = extra.column("event_id")
    for j in np.flatnonzero(place > lo):  # ... and, at the same instant, every row of a smaller id
        same = base.column("event_id").slice(int(lo[j]), int(place[j] - lo[j])).to_pylist()
        place[j] = lo[j] + bisect.bisect_right(same, ids[int(j)].as_py())
    pieces: list[pa.Table] = []
    done = 0
    starts = np.flatnonzero(np.r_[True, place[1:] != place[:-1]])
    for first, last in zip(starts.tolist(), [*starts[1:].tolist(), place.size], strict=True):
        at_row = int(place[first])
        if at_row > done:
            pieces.append(base.slice(done, at_row - done))
            done = at_row
        pieces.append(extra.slice(first, last - first))
    if done < base.num_rows:
        pieces.append(base.slice(done))
    return pa.concat_tables(pieces)


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
    ds = Dataset(ds.students, ds.lectures, sort_events(ds.events), ds.manifest)
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
            "fingerprint_version": FINGERPRINT_VERSION,
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
    events = checked_events(  # (on Arrow; the validator only for columns of other types)
        "events",
        as_event_table(ds.events),
        student_ids=pd.Index(students["student_id"]),
        lecture_ids=pd.Index(lectures["lecture_id"]),
    )
    if progress:
        progress("validating", 3, 3)
    return Dataset(students, lectures, events, dict(ds.manifest))


# ----------------------------------------------------------------------------------------------------------
# reading


def _read_parquet(path: Path, name: str) -> pd.DataFrame:
    """The students or lectures table as pandas (list cells as Python lists); the events go through
    `features.stored_events`."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(
            str(path), "*", [], f"not a readable Parquet file ({exc}); rewrite the dataset"
        ) from exc
    # Arrow hands list cells over as numpy arrays; the tables hold plain lists everywhere
    lists = {
        f.name: table.column(f.name).to_pylist()
        for f in _SCHEMAS[name]
        if pa.types.is_list(f.type) and f.name in table.column_names
    }
    frame: pd.DataFrame = table.to_pandas()
    for column, cells in lists.items():
        frame[column] = pd.Series(cells, dtype=object)
    return frame


def _read_events(path: Path, known: tuple[pd.Index, pd.Index] | None) -> pa.Table:
    """The events file as Arrow, validated against the (student ids, lecture ids) `known` when given.

    A file in the schema's types is checked on Arrow and kept as it is typed (`features.stored_events`);
    any other goes through `validate_events`, which converts what it can and names the rows it cannot."""
    table = read_events_table(path)
    return table if known is None else checked_events(str(path), table, *known)


def _open_dataset(directory: Path) -> dict[str, Any]:
    """Check that a dataset directory and its four files exist; its manifest."""
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
    return manifest


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
    manifest = _open_dataset(directory)
    students = _read_parquet(directory / TABLE_FILES["students"], "students")
    lectures = _read_parquet(directory / TABLE_FILES["lectures"], "lectures")
    known = None
    if validate:
        students = validate_students(students, str(directory / TABLE_FILES["students"]))
        lectures = validate_lectures(lectures, str(directory / TABLE_FILES["lectures"]))
        known = (pd.Index(students["student_id"]), pd.Index(lectures["lecture_id"]))
    events = _read_events(directory / TABLE_FILES["events"], known)
    return Dataset(students, lectures, sort_events(events), manifest)


# ----------------------------------------------------------------------------------------------------------
# reading the events in student partitions

#: Events per partition of `read_partitioned` by default (what is taken out of the whole table at a time).
PARTITION_EVENTS = 1_000_000


@dataclass(frozen=True)
class EventPartition:
    """The events of one group of students, validated, in dataset order.

    Attributes:
        number: 1-based partition number.
        count: partitions in all.
        events: the events of the partition's students as an Arrow table (schema `EVENTS`, validated, the
            ids and types dictionary-encoded when the file's were, sorted by (occurred_at, event_id));
            every event of these students is here.
        rows: 1-based row numbers in the events file of `events`' rows, aligned with them.
    """

    number: int
    count: int
    events: pa.Table
    rows: npt.NDArray[np.int64]


@dataclass
class PartitionedDataset:
    """A dataset whose events are read in disjoint groups of students (`read_partitioned`).

    The students and lectures are held in pandas; the events are held as one Arrow table with the ids and
    types dictionary-encoded, and each partition is taken out of it as an Arrow table: a file in the
    schema's types never goes through pandas (`features.online_state.aggregate_history` reads Arrow).

    Attributes:
        students: validated students.
        lectures: validated lectures.
        manifest: the manifest.
        events_file: the events file (named in errors).
        n_events: events in the file.
        n_partitions: partitions the events are split into.
    """

    students: pd.DataFrame
    lectures: pd.DataFrame
    manifest: dict[str, Any]
    events_file: str
    n_events: int
    n_partitions: int
    _table: pa.Table
    _order: npt.NDArray[np.int64]
    _bounds: npt.NDArray[np.int64]
    _generate_ids: bool
    _checked: bool = False

    def partitions(self) -> Iterator[EventPartition]:
        """The partitions one after the other, each validated when it is produced.

        Raises:
            SchemaError: a partition breaks the events' schema (rows are the file's row numbers).
        """
        for k in range(self.n_partitions):
            events, picked = self._events(self._order[self._bounds[k] : self._bounds[k + 1]])
            yield EventPartition(k + 1, self.n_partitions, events, picked + 1)

    def _events(self, picked: npt.NDArray[np.int64]) -> tuple[pa.Table, npt.NDArray[np.int64]]:
        """The events of the file's rows `picked` (0-based), validated and in dataset order; `picked` in
        that order."""
        # one chunk per column: one dictionary each
        part = take_ascending(self._table, picked).combine_chunks()
        columns = {}
        for name in part.column_names:
            column = part.column(name)
            if pa.types.is_dictionary(column.type):  # coded again on the partition's own values
                column = column.cast(column.type.value_type).dictionary_encode()
            columns[name] = column
        if self._checked:  # the whole file was checked on Arrow when it was read
            return _in_dataset_order(pa.table(columns), picked)
        frame = pa.table(columns).to_pandas()
        try:
            events = validate_events(frame, self.events_file)
        except SchemaError as exc:
            rows = [int(picked[r - 1]) + 1 for r in exc.rows]
            raise SchemaError(exc.file, exc.column, sorted(rows), exc.problem) from None
        if self._generate_ids:  # the ids the whole file would get (they hash the row number)
            events["event_id"] = generated_event_ids(
                events["student_id"], events["lecture_id"], events["type"], events["occurred_at"],
                events["progress"], row_numbers=picked + 1,
            )  # fmt: skip
        return _in_dataset_order(_to_arrow(events, EVENTS, "events"), picked)


def _in_dataset_order(
    events: pa.Table, rows: npt.NDArray[np.int64]
) -> tuple[pa.Table, npt.NDArray[np.int64]]:
    """The events sorted into dataset order, and their `rows` (aligned with them) in that order too."""
    order = event_table_order(events)
    return (events, rows) if order is None else (events.take(order), rows[order])


def read_partitioned(
    directory: Path | str, *, partition_events: int = PARTITION_EVENTS, partitions: int | None = None
) -> PartitionedDataset:
    """Read a dataset for a pass over its events in disjoint groups of students, in bounded memory.

    The students and lectures are read and validated as `read_dataset` does. The events file is read
    with pyarrow (ids and types dictionary-encoded: a few bytes per event) and checked at once for what
    needs the whole file: missing or blank ids and types, unknown students, lectures and event types,
    duplicate event ids; a file in the schema's types has every other rule checked there too
    (`features.stored_events`), and each partition is only taken out of it (as Arrow) when it is
    produced. Any other file has each partition validated by `features.validation.validate_events`
    (which converts what it can) when it is produced. Students are split by their code
    in the events' dictionary modulo the number of partitions, so every event of a student is in one
    partition; within a partition the events are in dataset order, so a per-student computation gives
    what it gives on `read_dataset`'s events.

    Args:
        directory: the dataset directory.
        partition_events: events per partition (on average); the number of partitions follows from it.
        partitions: the number of partitions instead (1 = everything at once).

    Returns:
        The partitioned dataset.

    Raises:
        DatasetNotFoundError: the directory or one of its files is missing.
        SchemaError: a table breaks its schema (the file, 1-based row(s) of the file and column named).
    """
    directory = Path(directory)
    manifest = _open_dataset(directory)
    students = validate_students(
        _read_parquet(directory / TABLE_FILES["students"], "students"),
        str(directory / TABLE_FILES["students"]),
    )
    lectures = validate_lectures(
        _read_parquet(directory / TABLE_FILES["lectures"], "lectures"),
        str(directory / TABLE_FILES["lectures"]),
    )
    path = directory / TABLE_FILES["events"]
    file = str(path)
    table = read_events_table(path)
    n = table.num_rows
    student_ids, lecture_ids = pd.Index(students["student_id"]), pd.Index(lectures["lecture_id"])
    if not is_coded(table):
        # ids or types that are not text: the whole file goes through `validate_events`, which names the rows
        validate_events(table, file, student_ids, lecture_ids)
        raise SchemaError(file, "*", [], "student_id, lecture_id and type must be stored as text")
    check_whole_file(file, table, student_ids, lecture_ids)
    has_ids = "event_id" in table.column_names
    typed = typed_events(file, table)
    if typed is not None:  # every rule checked: partitions are only converted
        table = typed
    student_codes, _ = arrow_codes(table.column("student_id"))
    count = max(1, partitions if partitions is not None else -(-n // max(1, partition_events)))
    part = (student_codes % count).astype(np.int32) if count > 1 else np.zeros(n, dtype=np.int32)
    del student_codes
    order = np.argsort(part, kind="stable").astype(np.int64, copy=False)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=count))]).astype(np.int64)
    return PartitionedDataset(
        students, lectures, manifest, file, n, count, table, order, bounds,
        _generate_ids=not has_ids, _checked=typed is not None,
    )  # fmt: skip
