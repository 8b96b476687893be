"""The feature store on a real local Redis Cluster (`features.cluster_local`: 3 primaries, 3 replicas)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from redis.cluster import RedisCluster

from features import keys
from features.profile import StudentProfile
from features.redis_server import connect
from features.schemas import EVENTS
from features.settings import Settings
from features.store import EventIn, FeatureStore
from features.streams import export_stream
from tests.conftest import ClusterControl

pytestmark = pytest.mark.slow

T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def client(redis_cluster: ClusterControl, tmp_path: Path) -> Iterator[RedisCluster]:
    settings = Settings(data_dir=tmp_path, redis={"url": redis_cluster.url, "cluster": True})
    c = connect(settings, bulk=True)
    assert isinstance(c, RedisCluster)
    c.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield c
    c.close()


def _events(n: int) -> list[EventIn]:
    kinds = ("enrol", "progress", "complete", "drop")
    return [
        EventIn(f"e{i}", f"학생{i % 40}", f"L{i % 9}", kinds[i % 4], 0.4 if i % 4 == 1 else 0.0,
                T0 + timedelta(minutes=i))
        for i in range(n)
    ]  # fmt: skip


def test_request_path_client_is_a_cluster_client(redis_cluster: ClusterControl, tmp_path: Path):
    settings = Settings(data_dir=tmp_path, redis={"url": redis_cluster.url, "cluster": True})
    c = connect(settings)
    assert isinstance(c, RedisCluster) and len(c.get_primaries()) == 3
    c.close()


def test_store_reads_writes_and_materialises_on_a_cluster(client: RedisCluster):
    store = FeatureStore(client, recent_len=5)
    students = [f"학생{i}" for i in range(40)]
    store.put_profiles(StudentProfile(s, "seoul", "h1") for s in students)
    events = _events(400)
    # one append_once call per 500 events on the stream's node, one Lua call per student on its node
    assert set(store.apply_events(events)) == {"accepted"}
    assert set(store.apply_events(events[:50])) == {"duplicate"}
    marker = keys.stream_marker(keys.EVENTS_STREAM, "e8")
    assert client.keyslot(marker) == client.keyslot(keys.EVENTS_STREAM) and client.exists(marker) == 1
    assert client.xlen(keys.EVENTS_STREAM) == 400
    records = store.read_students(students)
    assert all(r.profile is not None and r.history and len(r.recent) <= 5 for r in records)

    states = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    store.materialize("lightfm", "1", students, states)
    summary = store.materialize("lightfm", "2", students, states + 1)
    assert summary.previous_version == "1" and summary.removed_keys == 40
    assert summary.memory_delta_bytes > 0  # summed over the three primaries
    record = store.read_student("학생7", "lightfm")
    assert np.frombuffer(record.state, "<f4").tolist() == [22.0, 23.0, 24.0]

    # every key of one student lives in one slot, so on one node
    sid = "학생8"  # enrolments only: it has a recent list
    student_keys = [
        keys.profile(sid), keys.history(sid), keys.pairs(sid), keys.recent(sid),
        keys.model_state(sid, "lightfm", "2"), keys.event_marker(sid, "e8"),
    ]  # fmt: skip
    slots = {client.keyslot(k) for k in student_keys}
    assert len(slots) == 1
    assert all(client.exists(k) == 1 for k in student_keys)
    node = client.get_node_from_key(student_keys[0])
    assert client.cluster_countkeysinslot(slots.pop()) >= len(student_keys)
    assert node is not None
    # and students spread over the nodes
    assert len({client.get_node_from_key(keys.history(s)).name for s in students}) == 3


def test_seed_and_export_on_a_cluster(client: RedisCluster, tmp_path: Path):
    store = FeatureStore(client)
    events = _events(60)
    frame = pd.DataFrame(
        {
            "student_id": [e.student_id for e in events],
            "lecture_id": [e.lecture_id for e in events],
            "type": [e.type for e in events],
            "progress": [e.progress for e in events],
            "occurred_at": pd.to_datetime([e.occurred_at for e in events], utc=True),
        }
    )
    assert store.seed_history(frame, []) == 40
    seeded = store.read_student("학생3").history
    store.apply_events(events)  # the same events online change nothing
    assert store.read_student("학생3").history == seeded

    summary = export_stream(client, keys.EVENTS_STREAM, "export", tmp_path, batch_size=25, schema=EVENTS)
    assert summary.rows == 60 and len(summary.files) == 3
    ids = [i for f in summary.files for i in pq.read_table(f).column("event_id").to_pylist()]
    assert ids == [e.event_id for e in events]
