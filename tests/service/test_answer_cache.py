"""The answer cache: unit rules in memory, Redis's key-change reports against a real redis-server, and the
service over HTTP answering from the cache until a write (by it or by anyone else) changes the student."""

from __future__ import annotations

import marshal
import time
from typing import Any

import httpx
import pytest

from features.key_changes import KeyChangeListener
from features.online_state import StudentRecord
from service.answer_cache import Answer, AnswerCache
from tests.conftest import RedisServerControl
from tests.features.change_sink import Sink
from tests.service.conftest import PORTAL, Registry, answer, running, seed, service_settings, wait_for

SERVING = (object(), object(), object())


def _answer(tag: str = "a", *, degraded: bool = False, model_error: str | None = None) -> Answer:
    return Answer(
        source="model",
        fallback=False,
        model_error=model_error,
        degraded=degraded,
        region="seoul",
        experiment=None,
        variant=None,
        variant_fell_back=False,
        tail=b'"student_id":"' + tag.encode() + b'"}',
        exposure=b"",
        student_hash="h",
        k=10,
        returned=0,
        model_version="1",
    )


def _live(capacity: int = 10) -> AnswerCache:
    cache = AnswerCache(capacity)
    cache.live(True)
    cache.get("nobody", "1", SERVING)  # a request's miss sets the serving objects before any put
    return cache


def test_hit_after_put_and_body_puts_the_request_id_first() -> None:
    cache = _live()
    cache.hits = cache.misses = 0
    assert cache.get("s1", "10/None/None", SERVING) is None
    assert cache.put("s1", "10/None/None", SERVING, _answer("s1"), cache.ticket())
    hit = cache.get("s1", "10/None/None", SERVING)
    assert hit is not None and hit.body("r-1") == b'{"request_id":"r-1","student_id":"s1"}'
    assert cache.get("s1", "5/None/None", SERVING) is None  # another k is another answer
    assert (cache.hits, cache.misses) == (1, 2)


def test_entries_are_bytes_and_a_hit_gives_back_the_answer_put() -> None:
    """What the cache keeps per student is bytes, which the garbage collector never walks (kept as
    objects, ~2 per answer stayed tracked, and the collector's passes over them were the p99 of computed
    answers); a hit gives back the answer put, as an `Answer`; a put for the same request replaces."""
    cache = _live()
    first, second = _answer("s1"), _answer("s1", degraded=False)._replace(k=5)
    assert cache.put("s1", "10/None/None", SERVING, first, cache.ticket())
    assert cache.put("s1", "5/seoul/수학", SERVING, second, cache.ticket())
    assert cache.put("s1", "10/None/None", SERVING, first._replace(returned=3), cache.ticket())
    entry = cache._students["s1"]
    assert isinstance(entry, bytes) and len(marshal.loads(entry)) == 2 * (1 + len(Answer._fields))
    hit = cache.get("s1", "10/None/None", SERVING)
    assert isinstance(hit, Answer) and hit == first._replace(returned=3)
    assert cache.get("s1", "5/seoul/수학", SERVING) == second


def test_off_until_live_and_emptied_on_every_transition() -> None:
    cache = AnswerCache(10)
    assert not cache.put("s1", "1", SERVING, _answer(), cache.ticket())  # reports not flowing yet
    cache.live(True)
    cache.put("s1", "1", SERVING, _answer(), cache.ticket())
    cache.live(False)
    assert cache.get("s1", "1", SERVING) is None and len(cache) == 0
    assert not cache.put("s1", "1", SERVING, _answer(), cache.ticket())
    cache.live(True)
    assert len(cache) == 0 and cache.enabled
    assert not AnswerCache(0).enabled


def test_invalidate_drops_the_student_and_refuses_answers_read_before_it() -> None:
    cache = _live()
    cache.put("s1", "1", SERVING, _answer(), cache.ticket())
    cache.put("s2", "1", SERVING, _answer(), cache.ticket())
    ticket = cache.ticket()  # a request starts reading s1 and s3 ...
    cache.invalidate(["s1"])  # ... an event for s1 lands meanwhile
    assert cache.get("s1", "1", SERVING) is None and cache.get("s2", "1", SERVING) is not None
    assert not cache.put("s1", "1", SERVING, _answer(), ticket)  # would be stale for good
    assert cache.put("s3", "1", SERVING, _answer(), ticket)  # another student: fine
    assert cache.put("s1", "1", SERVING, _answer(), cache.ticket())  # read after the change: fine


def test_a_ticket_older_than_forgotten_tombstones_is_refused() -> None:
    cache = _live(capacity=1)  # remembers 2 tombstones
    ticket = cache.ticket()
    cache.invalidate(["a"])
    cache.invalidate(["b"])
    cache.invalidate(["c"])  # "a" is forgotten: was s9 invalidated? the cache cannot tell
    assert not cache.put("s9", "1", SERVING, _answer(), ticket)
    assert cache.put("s9", "1", SERVING, _answer(), cache.ticket())


def test_clear_and_serving_changes_empty_it_and_refuse_older_tickets() -> None:
    cache = _live()
    ticket = cache.ticket()
    cache.put("s1", "1", SERVING, _answer(), ticket)
    cache.clear()
    assert cache.get("s1", "1", SERVING) is None
    assert not cache.put("s1", "1", SERVING, _answer(), ticket)
    cache.put("s1", "1", SERVING, _answer(), cache.ticket())
    reloaded = (object(), SERVING[1], SERVING[2])  # a new champion version
    ticket = cache.ticket()
    assert cache.get("s1", "1", reloaded) is None and len(cache) == 0
    assert not cache.put("s2", "1", SERVING, _answer(), ticket)  # computed by the old version


def test_a_student_keeps_the_last_shapes_put_and_an_entry_stops_growing() -> None:
    """A student asked for more shapes than the cache keeps (`shapes`) keeps the answers put last (one put
    again counts as new): the entry, which every put marshals again, stays the same size."""
    shapes = 3
    cache = AnswerCache(10, shapes)
    cache.live(True)
    cache.get("nobody", "1", SERVING)
    asked = [f"{k}/None/None" for k in range(1, shapes + 3)]
    sizes = []
    for k, a in enumerate(asked, 1):
        assert cache.put("s1", a, SERVING, _answer("s1")._replace(k=k), cache.ticket())
        sizes.append(len(cache._students["s1"]))
    kept = asked[-shapes:]
    assert [cache.get("s1", a, SERVING) is not None for a in asked] == [a in kept for a in asked]
    assert cache.get("s1", kept[0], SERVING).k == len(asked) - shapes + 1  # type: ignore[union-attr]
    assert len(set(sizes[shapes - 1 :])) == 1  # full from the bound on: the same size
    # the oldest kept shape put again becomes the newest: the next new shape pushes out the one after it
    cache.put("s1", kept[0], SERVING, _answer("s1"), cache.ticket())
    cache.put("s1", "99/None/None", SERVING, _answer("s1"), cache.ticket())
    assert cache.get("s1", kept[0], SERVING) is not None and cache.get("s1", kept[1], SERVING) is None
    assert len(marshal.loads(cache._students["s1"])) == shapes * (1 + len(Answer._fields))
    assert AnswerCache(10).shapes == 4  # the setting's default (`service.answer_cache_shapes`)


def test_degraded_or_failed_answers_are_not_kept_and_capacity_evicts_least_recent() -> None:
    cache = _live(capacity=2)
    assert not cache.put("s1", "1", SERVING, _answer(degraded=True), cache.ticket())
    assert not cache.put("s1", "1", SERVING, _answer(model_error="boom"), cache.ticket())
    for sid in ("s1", "s2"):
        cache.put(sid, "1", SERVING, _answer(), cache.ticket())
    cache.get("s1", "1", SERVING)  # s1 used: s2 is now the least recent
    cache.put("s3", "1", SERVING, _answer(), cache.ticket())
    assert cache.get("s2", "1", SERVING) is None and cache.get("s1", "1", SERVING) is not None
    assert len(cache) == 2


@pytest.fixture
def listener(redis_client: Any) -> Any:
    sink = Sink()
    listener = KeyChangeListener(redis_client, sink)
    listener.start()
    assert wait_for(lambda: sink.states == [True], timeout=5)
    yield listener, sink
    listener.close()


def test_listener_reports_writes_by_any_client(listener: Any, redis_server: RedisServerControl) -> None:
    from features import keys

    _, sink = listener
    other = redis_server.client()  # another instance, a CLI command, redis-cli: all the same to Redis
    try:
        other.set(keys.profile("s-7"), b"{}")
        other.hset(keys.history("학생-7"), "L1", "1.0")
        other.set(b"unrelated", b"1")  # outside the prefixes: not reported
        assert wait_for(lambda: sink.students == ["s-7", "학생-7"], timeout=5)
        clears = sink.clears
        other.set(keys.active_version("learnrec-lectures"), b"2")  # a state namespace switched
        assert wait_for(lambda: sink.clears == clears + 1, timeout=5)
        other.flushall()
        assert wait_for(lambda: sink.clears == clears + 2, timeout=5)
    finally:
        other.close()


def test_listener_goes_dead_with_redis_and_live_again_after(
    listener: Any, redis_server: RedisServerControl
) -> None:
    handle, sink = listener
    with redis_server.down():
        assert wait_for(lambda: sink.states[-1] is False, timeout=5)
        assert not handle.up
        time.sleep(1.0)  # reconnection attempts fail quietly meanwhile
        assert sink.states == [True, False]
    assert wait_for(lambda: sink.states == [True, False, True], timeout=10)


def _recommend(client: httpx.Client, student_id: str) -> dict[str, Any]:
    r = client.get("/recommendations", params={"student_id": student_id, "k": 10}, headers=PORTAL)
    return answer(r)


def _cache_metric(client: httpx.Client, outcome: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'learnrec_answer_cache_total{{outcome="{outcome}"}}'):
            return float(line.split()[1])
    return 0.0


def test_service_answers_from_cache_until_another_writer_changes_the_student(
    registry: Registry, redis_server: RedisServerControl
) -> None:
    """A completion written by someone else (another instance, a backfill) reaches this instance's
    answers through Redis's report, without any call to this service."""
    from datetime import UTC, datetime

    from features.store import EventIn

    store = seed(redis_server)
    with running(service_settings(registry, redis_server.url)) as (_, client, _logs):
        assert wait_for(lambda: "learnrec_answer_cache_live 1.0" in client.get("/metrics").text, timeout=5)
        first = _recommend(client, "s001")
        top = first["items"][0]["lecture_id"]
        hits = _cache_metric(client, "hit")
        again = _recommend(client, "s001")
        assert again["items"] == first["items"] and again["request_id"] != first["request_id"]
        assert _cache_metric(client, "hit") == hits + 1
        store.apply_events([EventIn("other-1", "s001", top, "complete", 1.0, datetime.now(UTC))])
        assert wait_for(
            lambda: top not in [i["lecture_id"] for i in _recommend(client, "s001")["items"]], timeout=5
        )


def test_what_computed_answers_leave_behind_in_the_service_is_nothing_the_collector_tracks(
    registry: Registry, redis_server: RedisServerControl
) -> None:
    """The real service over HTTP: after computed answers for many students, the answer cache holds bytes
    and so does the record cache kept for degraded answers. Regression: each
    computed answer left ~4 tracked objects in these caches, and the collector's passes over them were the
    p99 of computed answers at half the maximum (`bench/results/ANALYSIS.md`)."""
    seed(redis_server)
    students = [f"s{i:03d}" for i in range(60)]
    with running(service_settings(registry, redis_server.url)) as (live, client, _logs):
        assert wait_for(lambda: "learnrec_answer_cache_live 1.0" in client.get("/metrics").text, timeout=5)
        for sid in students:
            for k in (3, 5):
                r = client.get("/recommendations", params={"student_id": sid, "k": k}, headers=PORTAL)
                assert not answer(r)["degraded"]
        state = live.app.state.learnrec
        entries = list(state.answers._students.values())
        records = list(state.store._cache.values())
        assert len(entries) == len(students) and len(records) >= len(students) // 2
        assert all(type(e) is bytes for e in entries) and all(type(r) is bytes for r in records)
        assert any(StudentRecord.unpacked("s", r).history for r in records)  # the history is kept too
