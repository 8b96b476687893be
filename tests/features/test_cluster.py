"""The feature store on a real local Redis Cluster (`features.cluster_local`: 3 primaries, 3 replicas)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from features import keys
from features.cluster_local import wait_ok
from features.errors import FeatureStoreError, ReplicaAckError
from features.profile import StudentProfile
from features.redis_server import connect
from features.schemas import EVENTS
from features.settings import Settings
from features.store import EventIn, FeatureStore
from features.streams import export_shards, export_stream
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

    # 4 KB a student: the version's growth stands above the primaries' own drift (tens of KB: client
    # buffers of the writes above are freed meanwhile), which 12 bytes a student did not
    width = 1024
    states = np.arange(40 * width, dtype=np.float32).reshape(40, width)
    store.materialize("lightfm", "1", students, states)
    summary = store.materialize("lightfm", "2", students, states + 1)
    assert summary.previous_version == "1" and summary.removed_keys == 40
    assert summary.memory_delta_bytes > states.nbytes // 2  # summed over the three primaries
    record = store.read_student("학생7", "lightfm")
    assert np.array_equal(np.frombuffer(record.state, "<f4"), states[7] + 1)

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


def test_sharded_streams_spread_over_the_primaries_and_keep_exactly_once(
    client: RedisCluster, tmp_path: Path
):
    store = FeatureStore(client, stream_shards=6, replica_acks=1)
    shards = keys.stream_shards(keys.EVENTS_STREAM, 6)
    # the shard names put two shards on each of the three primaries (slots split evenly)
    nodes = [client.get_node_from_key(s).name for s in shards]
    assert sorted(nodes.count(n) for n in set(nodes)) == [2, 2, 2]
    events = _events(400)
    assert set(store.apply_events(events)) == {"accepted"}
    assert set(store.apply_events(events[:60])) == {"duplicate"}  # retries meet their marker in their shard
    assert sum(client.xlen(s) for s in shards) == 400
    for s in shards:  # a student's events all in its shard
        students = {f[b"student_id"].decode() for _, f in client.xrange(s)}
        assert all(shards[keys.shard_of(sid, 6)] == s for sid in students)
    marker = keys.stream_marker(shards[keys.shard_of("학생8", 6)], "e8")
    assert client.exists(marker) == 1
    # readers take every shard: the export holds each event once
    summary = export_shards(client, keys.EVENTS_STREAM, 6, "export", tmp_path, batch_size=50, schema=EVENTS)
    assert summary.rows == 400 and len({f.name.split("-")[1] for f in summary.files}) == 6
    ids = [i for f in summary.files for i in pq.read_table(f).column("event_id").to_pylist()]
    assert sorted(ids) == sorted(e.event_id for e in events)


def test_an_append_fewer_replicas_acknowledge_is_refused_and_safe_to_resend(client: RedisCluster):
    # each primary has one replica: asking for two cannot be met in time
    strict = FeatureStore(client, stream_shards=6, replica_acks=2, replica_ack_timeout_ms=20)
    events = _events(8)
    with pytest.raises(ReplicaAckError, match="1 of 2 replica"):
        strict.apply_events(events)
    resent = FeatureStore(client, stream_shards=6, replica_acks=1).apply_events(events)
    assert set(resent) <= {"accepted", "duplicate"} and "duplicate" in resent
    shards = keys.stream_shards(keys.EVENTS_STREAM, 6)
    assert sum(client.xlen(s) for s in shards) == 8  # written once, whatever was answered


def test_no_acknowledged_event_is_lost_when_a_primary_is_killed(
    redis_cluster: ClusterControl, tmp_path: Path
):
    """A writer sends batches as a client would (a failed batch is sent again until it is answered) while
    a primary is SIGKILLed and later comes back: every event answered as stored is in the streams exactly
    once afterwards."""
    settings = Settings(
        data_dir=tmp_path, redis={"url": redis_cluster.url, "cluster": True, "replica_acks": 1}
    )
    c = connect(settings)
    assert isinstance(c, RedisCluster)
    c.flushall(target_nodes=RedisCluster.PRIMARIES)
    store = FeatureStore(c, stream_shards=6, replica_acks=1, replica_ack_timeout_ms=25)
    shards = keys.stream_shards(keys.EVENTS_STREAM, 6)
    victim = int(c.get_node_from_key(shards[0]).port)
    stored: list[str] = []
    failures = 0
    stop = threading.Event()

    def write() -> None:
        nonlocal failures
        n = 0
        while not stop.is_set():
            batch = [
                EventIn(
                    f"w{n}-{i}", f"학생{(n * 7 + i) % 90}", f"L{i}", "enrol", 0.0, T0 + timedelta(seconds=n)
                )
                for i in range(6)
            ]
            while True:  # the client's retry: the same batch until it is answered
                try:
                    outcomes = store.apply_events(batch)
                    break
                except (RedisError, FeatureStoreError):
                    failures += 1
                    time.sleep(0.05)
            stored.extend(e.event_id for e, o in zip(batch, outcomes, strict=True) if o != "conflict")
            n += 1

    thread = threading.Thread(target=write)
    thread.start()
    index = -1
    try:
        deadline = time.monotonic() + 10
        while len(stored) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        index = redis_cluster.kill_primary(victim)
        wait_ok(redis_cluster.cluster, timeout=30)
        # the promoted replica has no replica of its own: its shards' appends are refused (no replica
        # acknowledges them) until the killed node is back, as its replica
        redis_cluster.heal(index)
        index = -1
        before = len(stored)
        deadline = time.monotonic() + 10
        while len(stored) < before + 300 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures > 0  # the kill was felt: batches failed and were sent again
    assert len(stored) > 600
    bulk = connect(settings, bulk=True)
    in_streams = [f[b"event_id"].decode() for s in shards for _, f in bulk.xrange(s)]
    bulk.close()
    c.close()
    if index >= 0:
        redis_cluster.heal(index)
    assert len(in_streams) == len(set(in_streams))  # none twice
    assert set(stored) <= set(in_streams)  # none answered as stored is lost


def test_exposures_go_to_their_students_shard(client: RedisCluster):
    from datetime import UTC
    from datetime import datetime as dt

    from features.experiments import exposure_fields
    from features.streams import pack_record
    from service.exposures import ExposureWriter
    from service.metrics import Metrics

    writer = ExposureWriter(client, Metrics(), shards=6)
    now = dt.now(UTC)
    for i in range(60):
        assert writer.submit(
            pack_record(f"학생{i}", exposure_fields(f"r{i}", f"학생{i}", "seoul", None, "1", ["L1"], now))
        )
    while writer.pending:
        assert writer.flush()
    shards = keys.stream_shards(keys.EXPOSURES_STREAM, 6)
    found = {}
    for k, s in enumerate(shards):
        for _, f in client.xrange(s):
            found[f[b"request_id"].decode()] = k
            assert keys.shard_of(f[b"student_id"].decode(), 6) == k
    assert sorted(found) == sorted(f"r{i}" for i in range(60)) and len(set(found.values())) > 3
