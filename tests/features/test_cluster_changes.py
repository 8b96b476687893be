"""Key-change reports on a real local Redis Cluster: one tracking connection per primary, following a
failover (a primary SIGKILLed: the sink goes not-live and forgets, then tracks the elected replica)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from features import keys
from features.key_changes import ClusterKeyChangeListener, listener_for
from features.redis_server import connect
from features.settings import Settings
from service.answer_cache import AnswerCache
from tests.conftest import ClusterControl
from tests.features.change_sink import Sink
from tests.service.conftest import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def client(redis_cluster: ClusterControl, tmp_path: Path) -> Iterator[RedisCluster]:
    c = connect(Settings(data_dir=tmp_path, redis={"url": redis_cluster.url, "cluster": True}), bulk=True)
    assert isinstance(c, RedisCluster)
    yield c
    c.close()


def _student_per_primary(client: RedisCluster) -> dict[int, str]:
    """One student id whose keys live on each primary (by port)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(client.get_primaries()):
        sid = f"학생-{i}"
        found.setdefault(int(client.get_node_from_key(keys.profile(sid)).port), sid)
        i += 1
    return found


def test_a_write_on_each_primary_is_reported(client: RedisCluster) -> None:
    sink = Sink()
    listener = listener_for(client, sink)
    assert isinstance(listener, ClusterKeyChangeListener)
    listener.start()
    try:
        assert wait_for(lambda: sink.states == [True], timeout=10)
        assert sorted(p for _, p in listener.primaries) == sorted(int(n.port) for n in client.get_primaries())
        students = _student_per_primary(client)
        for sid in students.values():
            client.hset(keys.history(sid), "L1", "1.0")
        client.set(b"unrelated", b"1")  # outside the prefixes: not reported
        assert wait_for(lambda: sorted(sink.students) == sorted(students.values()), timeout=5)
        client.set(keys.active_version("learnrec-lectures"), b"2")  # a state namespace switched
        assert wait_for(lambda: sink.clears == 1, timeout=5)
    finally:
        listener.close()
    assert sink.states == [True, False]


def test_a_killed_primary_clears_the_cache_which_follows_the_new_primary(
    client: RedisCluster, redis_cluster: ClusterControl
) -> None:
    cache = AnswerCache(10)
    sink = Sink()

    class Both:  # the real cache, and a record of what it was told
        def invalidate(self, student_ids: list[str]) -> None:
            cache.invalidate(student_ids)
            sink.invalidate(student_ids)

        def clear(self) -> None:
            cache.clear()
            sink.clear()

        def live(self, up: bool) -> None:
            cache.live(up)
            sink.live(up)

    listener = ClusterKeyChangeListener(client, Both())
    listener.start()
    victim = int(client.get_primaries()[0].port)
    index = -1
    try:
        assert wait_for(lambda: cache.enabled, timeout=10)
        sid = _student_per_primary(client)[victim]
        _put(cache, sid)
        assert len(cache) == 1
        index = redis_cluster.kill_primary(victim)
        assert wait_for(lambda: not cache.enabled, timeout=5)  # the connection broke: forget, stop using
        assert len(cache) == 0
        # the replica is elected; the listener tracks it, and the cache is in use again
        assert wait_for(lambda: cache.enabled, timeout=20)
        assert victim not in [p for _, p in listener.primaries]
        _put(cache, sid)
        writer = connect(Settings(redis={"url": redis_cluster.url, "cluster": True}), bulk=True)
        try:
            writer.hset(keys.history(sid), "L2", "1.0")  # now on the promoted replica
        finally:
            writer.close()
        assert wait_for(lambda: sid in sink.students and len(cache) == 0, timeout=5)
        assert sink.states[0] is True and sink.states[1] is False and sink.states[-1] is True
    finally:
        listener.close()
        if index >= 0:
            redis_cluster.heal(index)


def _put(cache: AnswerCache, sid: str) -> None:
    from tests.service.test_answer_cache import SERVING, _answer

    cache.get(sid, "v", SERVING)  # makes SERVING the cache's serving models
    assert cache.put(sid, "v", SERVING, _answer(sid), cache.ticket())
