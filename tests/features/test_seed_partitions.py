"""Seeding the online state a group of students at a time: same Redis state, bounded memory, clear errors."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from features.errors import SchemaError
from features.profile import from_table as profiles_from_table
from features.store import FeatureStore
from features.tables import Dataset, read_dataset, read_partitioned, write_dataset
from tests.features.arrow_frames import as_arrow
from tests.training.modelling_data import lectures as lecture_table
from training.commands.feature_store import seed_partitioned

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _dataset(seed: int = 3, n_students: int = 40, n_events: int = 900) -> Dataset:
    """Students with repeated pairs, drops, ties in time (same minute) and some without any event."""
    rng = np.random.default_rng(seed)
    lectures = lecture_table()
    lecture_ids = lectures["lecture_id"].tolist()
    students = pd.DataFrame(
        {
            "student_id": [f"s{i:03d}" for i in range(n_students)],
            "region": "seoul",
            "grade": [("h1", "h2", "h3")[i % 3] for i in range(n_students)],
            "interest_subjects": [["수학"] if i % 2 else None for i in range(n_students)],
        }
    )
    kinds = rng.choice(["enrol", "progress", "complete", "drop"], size=n_events, p=[0.4, 0.3, 0.15, 0.15])
    events = pd.DataFrame(
        {
            # ids in an order unrelated to time, so ties in time are broken by id, not by position
            "event_id": [f"ev{int(x):06d}" for x in rng.permutation(n_events)],
            "student_id": [f"s{int(x):03d}" for x in rng.integers(0, n_students - 5, n_events)],
            "lecture_id": [lecture_ids[int(x)] for x in rng.integers(0, 6, n_events)],
            "type": kinds,
            "progress": np.where(kinds == "progress", rng.uniform(0, 1, n_events), 0.0).astype("float32"),
            "occurred_at": pd.to_datetime(
                [T0 + timedelta(minutes=int(m)) for m in rng.integers(0, n_events // 3, n_events)], utc=True
            ),
            "request_id": None,
        }
    )
    return Dataset(students, lectures, events, {"source": "tests"})


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its categorical (dictionary-encoded) columns as plain text."""
    coded = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    return frame.astype(dict.fromkeys(coded, "str"))


def _state(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key with its DUMP (type, encoding and content, byte for byte)."""
    return {key: client.dump(key) for key in sorted(client.scan_iter(count=1000))}


def _digest(state: dict[bytes, bytes]) -> str:
    h = hashlib.sha256()
    for key, value in state.items():
        h.update(key + b"\0" + value + b"\1")
    return h.hexdigest()


def _seed_all_at_once(directory: Path, client: redis.Redis) -> dict[bytes, bytes]:
    """What seeding did before partitions: the whole validated dataset in pandas, one `seed_history`."""
    client.flushdb()
    ds = read_dataset(directory)
    FeatureStore(client).seed_history(ds.events, profiles_from_table(ds.students))
    return _state(client)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return write_dataset(_dataset(), tmp_path / "ds")


@pytest.mark.parametrize("partitions", [1, 2, 7, 35])
def test_partitioned_seeding_leaves_the_same_redis_state_byte_for_byte(
    dataset_dir: Path, redis_client: redis.Redis, partitions: int
):
    expected = _seed_all_at_once(dataset_dir, redis_client)
    assert len(expected) > 100
    redis_client.flushdb()
    calls: list[tuple[str, int, int]] = []
    summary = seed_partitioned(dataset_dir, redis_client, lambda *a: calls.append(a), partitions=partitions)
    assert summary.partitions == partitions and summary.students == 40 and summary.events == 900
    assert summary.histories == 35
    got = _state(redis_client)
    assert got.keys() == expected.keys()
    assert _digest(got) == _digest(expected)
    # a bar per partition, each ending complete; their students add up to those with a history
    ends = {stage: (done, total) for stage, done, total in calls if stage.startswith("partition ")}
    assert sorted(ends) == sorted(f"partition {k}/{partitions}" for k in range(1, partitions + 1))
    assert all(done == total for done, total in ends.values())
    assert sum(done for done, _ in ends.values()) == 35


def test_partition_size_sets_the_number_of_partitions(dataset_dir: Path, redis_client: redis.Redis):
    expected = _seed_all_at_once(dataset_dir, redis_client)
    redis_client.flushdb()
    summary = seed_partitioned(dataset_dir, redis_client, partition_events=100)
    assert summary.partitions == 9
    assert _digest(_state(redis_client)) == _digest(expected)


def test_partitions_hold_disjoint_students_in_dataset_order(dataset_dir: Path):
    whole = read_dataset(dataset_dir).events.to_pandas()
    parts = list(read_partitioned(dataset_dir, partitions=4).partitions())
    seen: set[str] = set()
    for part in parts:
        # held by Arrow, the ids coded on the partition's own values
        assert isinstance(part.events, pa.Table)
        assert pa.types.is_dictionary(part.events.schema.field("student_id").type)
        events = part.events.to_pandas()
        students = set(events["student_id"])
        assert not students & seen
        seen |= students
        # the file's rows, and the same rows as the whole file gives (dataset order within the partition)
        mine = whole[whole["student_id"].isin(students)].reset_index(drop=True)
        # the coded ids hold each side's own distinct values: compare them as text
        pd.testing.assert_frame_equal(_as_text(events), _as_text(mine))
        assert (whole.loc[part.rows - 1, "event_id"].to_numpy() == events["event_id"].to_numpy()).all()
    assert sum(len(p.events) for p in parts) == len(whole)


def _write_raw(directory: Path, ds: Dataset, events: pa.Table) -> Path:
    """A dataset directory written by hand: events as given (any order, columns left out)."""
    write_dataset(Dataset(ds.students, ds.lectures, ds.events.slice(0, 0), {}), directory)
    pq.write_table(events, directory / "events.parquet")
    return directory


def test_a_hand_written_file_without_ids_in_any_order_seeds_the_same(tmp_path: Path, redis_client):
    ds = _dataset(seed=5)
    events = ds.events.to_pandas()
    shuffled = events.sample(frac=1.0, random_state=1).drop(columns=["event_id", "progress", "request_id"])
    directory = _write_raw(tmp_path / "raw", ds, as_arrow(shuffled))
    expected = _seed_all_at_once(directory, redis_client)
    for partitions in (1, 6):
        redis_client.flushdb()
        seed_partitioned(directory, redis_client, partitions=partitions)
        assert _digest(_state(redis_client)) == _digest(expected), partitions
    # the generated ids are those of the whole file (they hash the file's row number)
    ids = [
        i
        for p in read_partitioned(directory, partitions=6).partitions()
        for i in p.events["event_id"].to_pylist()
    ]
    whole = read_dataset(directory).events
    assert sorted(ids) == sorted(whole["event_id"].to_pylist())
    # each partition's rows name the file's rows its events came from, in the partition's (sorted) order
    raw = pq.read_table(directory / "events.parquet")
    for part in read_partitioned(directory, partitions=3).partitions():
        source = raw.take(part.rows - 1)
        for column in ("student_id", "lecture_id", "occurred_at"):
            assert source[column].to_pylist() == part.events[column].to_pylist(), column


def _bad(tmp_path: Path, change: dict[str, tuple[int, object]]) -> Path:
    ds = _dataset()
    events = ds.events.to_pandas()
    for column, (row, value) in change.items():
        events[column] = events[column].astype(object)
        events.loc[row, column] = value
    table = as_arrow(events)
    return _write_raw(tmp_path / "bad", ds, table)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("student_id", "s999", r"unknown student_id 's999': not in the students table"),
        ("lecture_id", "NOPE-1", r"unknown lecture_id 'NOPE-1': not in the lectures table"),
        ("type", "watch", r"unknown type 'watch': expected one of enrol, progress, complete, drop"),
        ("student_id", None, r"missing student_id: every row needs a value"),
        ("event_id", "ev000001", r"duplicate event_id 'ev000001'"),
    ],
)
def test_bad_events_are_named_by_file_row_and_column_before_anything_is_written(
    tmp_path: Path, redis_client: redis.Redis, column: str, value: object, message: str
):
    directory = _bad(tmp_path, {column: (700, value)})
    with pytest.raises(SchemaError) as caught:
        seed_partitioned(directory, redis_client, partitions=5)
    err = caught.value
    assert err.file == str(directory / "events.parquet") and err.column == column
    assert 701 in err.rows
    assert str(err).startswith(f"{directory / 'events.parquet'}: row")
    assert re.search(message, str(err)), str(err)
    assert redis_client.dbsize() == 0


def test_a_rule_checked_per_partition_names_the_files_row(tmp_path: Path, redis_client: redis.Redis):
    directory = _bad(tmp_path, {"progress": (612, 1.5)})
    with pytest.raises(SchemaError) as caught:
        seed_partitioned(directory, redis_client, partitions=5)
    assert caught.value.column == "progress" and caught.value.rows == [613]
    assert "progress 1.5 is outside 0..1" in str(caught.value)
    # read all at once the same file gives the same error
    with pytest.raises(SchemaError) as whole:
        read_dataset(directory)
    assert str(whole.value) == str(caught.value)


def test_missing_column_is_named(tmp_path: Path, redis_client: redis.Redis):
    ds = _dataset()
    table = as_arrow(ds.events.to_pandas().drop(columns=["occurred_at"]))
    directory = _write_raw(tmp_path / "nocol", ds, table)
    with pytest.raises(SchemaError, match=r"column 'occurred_at': required column 'occurred_at' is missing"):
        seed_partitioned(directory, redis_client)
    assert redis_client.dbsize() == 0


def test_a_dataset_without_events_seeds_the_profiles_only(tmp_path: Path, redis_client: redis.Redis):
    ds = _dataset()
    directory = write_dataset(
        Dataset(ds.students, ds.lectures, ds.events.slice(0, 0), {}), tmp_path / "empty"
    )
    summary = seed_partitioned(directory, redis_client, partition_events=10)
    assert (summary.students, summary.histories, summary.events, summary.partitions) == (40, 0, 0, 1)
    assert redis_client.dbsize() == 40
