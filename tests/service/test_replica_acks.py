"""A write its replicas did not acknowledge in time: 503 (the client sends it again), reads not degraded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from features.errors import ReplicaAckError
from features.store import EventIn, FeatureStore
from service.deps import GuardedStore
from service.errors import StoreUnavailableError
from service.metrics import Metrics
from tests.conftest import RedisServerControl


def test_a_late_replica_refuses_the_write_and_leaves_reads_alone(redis_server: RedisServerControl) -> None:
    if not redis_server.running:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    # the session server has no replica: WAIT for one can only time out
    store = FeatureStore(client, replica_acks=1, replica_ack_timeout_ms=5)
    guarded = GuardedStore(store, Metrics())
    event = EventIn("ack-1", "s1", "L1", "enrol", 0.0, datetime.now(UTC))
    try:
        with pytest.raises(ReplicaAckError, match="0 of 1 replica"):
            store.apply_events([event])
        with pytest.raises(StoreUnavailableError, match="send it again"):
            guarded.apply_events([event])
        assert guarded.up  # Redis answered: no circuit opened, reads go on normally
        record, degraded = guarded.read_student("s1", "m", "1")
        assert not degraded and record is not None and not record.history  # not applied to the state yet
        # a resend without the wait (or once a replica answers) reports it stored, once, and applies it
        assert FeatureStore(client).apply_events([event]) == ["duplicate"]
        assert client.xlen(b"lr:stream:events") == 1
        assert store.read_student("s1").history == {"L1": 0.25}
    finally:
        client.close()
