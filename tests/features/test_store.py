"""The feature store on a real redis-server: one-round-trip reads, idempotent events, materialisation."""

from __future__ import annotations

import gc
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis

from features import keys
from features.errors import FeatureStoreError, SchemaError
from features.matrices import build_training_data
from features.profile import StudentProfile
from features.store import EventIn, FeatureStore
from tests.features.arrow_frames import as_arrow
from tests.training.modelling_data import lectures as lecture_table

T0 = datetime(2025, 3, 1, tzinfo=UTC)


class CountingConnection(redis.Connection):
    """A real connection that counts what it sends: one pipeline = one send = one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


def _event(i: int, student: str, lecture: str, kind: str, progress: float = 0.0, day: float = 0.0) -> EventIn:
    return EventIn(f"e{i}", student, lecture, kind, progress, T0 + timedelta(days=day))


def _random_events(rng: np.random.Generator, n_students: int = 12, n_events: int = 400) -> pd.DataFrame:
    lectures = lecture_table()["lecture_id"].tolist()
    kinds = rng.choice(["enrol", "progress", "complete", "drop"], size=n_events, p=[0.35, 0.35, 0.15, 0.15])
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i:04d}" for i in range(n_events)],
            "student_id": [f"s{int(x):02d}" for x in rng.integers(0, n_students, n_events)],
            "lecture_id": [lectures[int(x)] for x in rng.integers(0, 8, n_events)],  # few lectures: repeats
            "type": kinds,
            "progress": np.where(kinds == "progress", rng.uniform(0, 1, n_events), 0.0).astype("float32"),
            # whole minutes: no two events of a pair share a timestamp, so order is unambiguous
            "occurred_at": [
                T0 + timedelta(minutes=int(m)) for m in rng.permutation(n_events * 10)[:n_events]
            ],
            "request_id": None,
        }
    )
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    return frame


def _batch_weights(events: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Interaction weights as the training pipeline (features.matrices) computes them."""
    students = pd.DataFrame(
        {"student_id": sorted(events["student_id"].unique()), "region": "seoul", "grade": "h1"}
    )
    data = build_training_data(students, lecture_table(), events)
    out: dict[str, dict[str, float]] = {}
    coo = data.interactions.tocoo()
    for r, c, w in zip(coo.row, coo.col, coo.data, strict=True):
        out.setdefault(data.students.ids[r], {})[data.catalogue.lectures.ids[c]] = float(w)
    return out


def _events_in(frame: pd.DataFrame) -> list[EventIn]:
    return [
        EventIn(
            r.event_id, r.student_id, r.lecture_id, r.type, float(r.progress), r.occurred_at.to_pydatetime()
        )
        for r in frame.itertuples()
    ]


# -- reads and profiles ------------------------------------------------------------------------------------


def test_unknown_student_reads_as_empty(redis_client):
    record = FeatureStore(redis_client).read_student("nobody", "m", "1")
    assert record.profile is None and record.history == {} and record.recent == () and record.state is None


def test_profiles_round_trip_with_korean_text(redis_client):
    store = FeatureStore(redis_client)
    profiles = [
        StudentProfile("s1", "seoul", "h2", "high", "수능", ("수학", "영어")),
        StudentProfile("s2", "taebaek", "oos"),
    ]
    assert store.put_profiles(profiles) == 2
    assert store.get_profile("s1") == profiles[0]
    assert store.get_profile("s2") == profiles[1]
    assert store.get_profile("s3") is None
    assert "수능".encode() in redis_client.get(b"lr:{s:s1}:profile")  # stored as readable UTF-8 JSON
    store.put_profiles([StudentProfile("s1", "gimpo", "h3")])  # replaces, attributes not merged
    assert store.get_profile("s1") == StudentProfile("s1", "gimpo", "h3")


def test_a_record_read_packs_into_what_the_collector_does_not_track(redis_client):
    """`StudentRecord.packed` (what the service keeps for degraded answers): bytes, which the collector
    never walks; `unpacked` gives the same record back."""
    store = FeatureStore(redis_client)
    store.put_profiles([StudentProfile("s1", "seoul", "h2", "high", "수능", ("수학", "영어"))])
    store.apply_events([_event(1, "s1", "MATH-1", "enrol"), _event(2, "s1", "ENG-1", "complete", day=1)])
    record = store.read_student("s1", "m", "1")
    assert record.profile is not None and len(record.history) == 2 and record.recent
    packed = record.packed()
    assert isinstance(packed, bytes) and not gc.is_tracked(record.history)
    assert type(record).unpacked("s1", packed) == record
    for other in (
        store.read_student("nobody", "m", "1"),
        replace(record, profile=None, state=b"\x00\x01"),
        replace(record, profile=StudentProfile("s1", "gimpo", "adult"), history={}, recent=()),
    ):
        assert type(other).unpacked("s1", other.packed()) == other


def test_a_profile_without_region_is_refused(redis_client):
    with pytest.raises(ValueError, match="profile of 's9': region must be a non-empty string"):
        FeatureStore(redis_client).put_profiles([StudentProfile("s9", "", "h1")])


def test_a_corrupt_profile_is_a_store_error_naming_the_student(redis_client):
    redis_client.set(keys.profile("s1"), b"{not json")
    with pytest.raises(FeatureStoreError, match=r"profile of student 's1' .* is corrupt"):
        FeatureStore(redis_client).read_student("s1")


def test_profiles_read_again_are_built_from_the_remembered_values(redis_client, monkeypatch):
    """Students sharing a stored profile get equal profiles under their own ids, parsed or remembered."""
    import features.store as store_module

    monkeypatch.setattr(store_module, "_PROFILE_VALUES", {})
    store = FeatureStore(redis_client)
    a = StudentProfile(
        "s1", "seoul", "h1", target_exam="수능", interest_subjects=("수학", "과학"), age_band="15"
    )
    store.put_profiles([a, replace(a, student_id="s2"), StudentProfile("s3", "gimpo", "m2")])
    first = [store.read_student(s).profile for s in ("s1", "s2", "s3")]
    again = [store.read_student(s).profile for s in ("s1", "s2", "s3")]
    assert first == again == [a, replace(a, student_id="s2"), StudentProfile("s3", "gimpo", "m2")]
    assert len(store_module._PROFILE_VALUES) == 2  # two distinct stored profiles
    monkeypatch.setattr(store_module, "PROFILE_MEMO_SIZE", 2)  # full: starts over, still right
    store.put_profiles([StudentProfile("s4", "taebaek", "h2")])
    assert store.read_student("s4").profile == StudentProfile("s4", "taebaek", "h2")
    assert len(store_module._PROFILE_VALUES) == 1
    redis_client.set(keys.profile("s5"), b"{not json")  # a corrupt one is never remembered
    with pytest.raises(FeatureStoreError, match="corrupt"):
        store.read_student("s5")
    assert len(store_module._PROFILE_VALUES) == 1


def test_read_student_is_one_round_trip(redis_server):
    pool = redis.ConnectionPool(connection_class=CountingConnection, port=redis_server.port)
    client = redis.Redis(connection_pool=pool)
    client.flushall()
    store = FeatureStore(client)
    store.put_profiles([StudentProfile("s1", "seoul", "h1")])
    store.apply_events([_event(1, "s1", "MATH-1", "enrol")])
    store.materialize("m", "1", ["s1"], np.ones((1, 3), dtype=np.float32))
    CountingConnection.sends = 0
    record = store.read_student("s1", "m", "1")
    assert CountingConnection.sends == 1
    assert record.profile is not None and record.history == {"MATH-1": 0.25}
    assert np.frombuffer(record.state, dtype="<f4").tolist() == [1.0, 1.0, 1.0]
    CountingConnection.sends = 0
    records = store.read_students(["s1", "s2", "s3"], "m", "1")
    assert CountingConnection.sends == 1 and len(records) == 3 and records[1].history == {}
    client.close()


def test_the_read_payload_is_the_read_commands_encoded_and_reads_the_same_record(redis_client):
    """The service sends `read_payload` (one format operation) where the client sends `read_commands`:
    the same bytes on the wire, so the same replies and the same record."""
    from service.redis_reads import encode

    store = FeatureStore(redis_client)
    store.put_profiles([StudentProfile("학생-7", "seoul", "h1")])
    store.apply_events([_event(1, "학생-7", "국어-01", "enrol")])
    store.materialize("m", "1", ["학생-7"], np.ones((1, 3), dtype=np.float32))
    for sid in ("학생-7", "s1", "x", "s" * 300):
        state_key = keys.model_state(sid, "m", "1")
        payload = store.read_payload(sid, "m", "1")
        assert payload == encode(store.read_commands(sid, state_key)), sid
    conn = redis_client.connection_pool.get_connection()
    try:
        conn.send_packed_command([store.read_payload("학생-7", "m", "1")])
        got = [conn.read_response() for _ in range(4)]
    finally:
        redis_client.connection_pool.release(conn)
    assert store.record("학생-7", got, with_state=True) == store.read_student("학생-7", "m", "1")


def test_version_none_reads_the_active_version(redis_client):
    store = FeatureStore(redis_client)
    store.materialize("m", "4", ["s1"], np.full((1, 2), 4, dtype=np.float32))
    assert store.active_version("m") == "4"
    assert np.frombuffer(store.read_student("s1", "m").state, "<f4").tolist() == [4.0, 4.0]
    assert store.read_student("s1").state is None  # no model asked: no state
    assert store.read_student("s1", "other").state is None  # nothing materialised for it


# -- events ------------------------------------------------------------------------------------------------


def test_events_give_the_weights_of_the_training_pipeline_in_any_arrival_order(redis_client):
    rng = np.random.default_rng(3)
    frame = _random_events(rng)
    expected = _batch_weights(frame)
    events = _events_in(frame)
    order = rng.permutation(len(events))  # late and out-of-order arrivals
    store = FeatureStore(redis_client)
    for chunk in np.array_split(order, 7):
        assert set(store.apply_events([events[i] for i in chunk])) == {"accepted"}
    records = store.read_students(sorted(expected))
    for sid, record in zip(sorted(expected), records, strict=True):
        assert record.history.keys() == expected[sid].keys(), sid
        for lecture, weight in expected[sid].items():
            assert record.history[lecture] == pytest.approx(weight, abs=1e-6), (sid, lecture)


def test_stage_rules(redis_client):
    store = FeatureStore(redis_client)
    store.apply_events(
        [
            _event(1, "s", "A", "enrol", day=0),
            _event(2, "s", "A", "progress", 0.5, day=1),  # 0.3 + 0.5 * 0.5
            _event(3, "s", "B", "enrol", day=0),
            _event(4, "s", "B", "complete", 1.0, day=1),
            _event(5, "s", "B", "drop", day=2),  # a completed lecture keeps 1.0
            _event(6, "s", "C", "progress", 0.9, day=0),
            _event(7, "s", "C", "drop", day=1),  # dropped: 0.1
            _event(8, "s", "D", "drop", day=0),  # only a drop: still history, 0.1
        ]
    )
    assert store.read_student("s").history == pytest.approx({"A": 0.55, "B": 1.0, "C": 0.1, "D": 0.1})
    store.apply_events([_event(9, "s", "C", "progress", 0.2, day=3)])  # back after the drop: furthest stage
    assert store.read_student("s").history["C"] == pytest.approx(0.75)
    store.apply_events([_event(10, "s", "A", "drop", day=0.5)])  # a drop older than the latest event
    assert store.read_student("s").history["A"] == pytest.approx(0.55)


def test_events_are_idempotent_by_event_id_and_streamed_once(redis_client):
    store = FeatureStore(redis_client)
    batch = [
        _event(1, "s1", "A", "enrol"),
        _event(2, "s1", "A", "complete", 1.0, day=1),
        _event(1, "s1", "A", "enrol"),
    ]
    assert store.apply_events(batch) == ["accepted", "accepted", "duplicate"]  # a repeat inside one call
    assert store.apply_events(batch) == ["duplicate"] * 3
    assert store.read_student("s1").history == {"A": 1.0}
    entries = redis_client.xrange(keys.EVENTS_STREAM)
    assert [e[1][b"event_id"] for e in entries] == [b"e1", b"e2"]
    fields = entries[1][1]
    assert fields[b"type"] == b"complete" and fields[b"request_id"] == b""
    assert fields[b"occurred_at"] == b"2025-03-02T00:00:00.000000+00:00"
    for marker in (keys.event_marker("s1", "e1"), keys.stream_marker(keys.EVENTS_STREAM, "e1")):
        assert 6 * 86400 < redis_client.ttl(marker) <= 7 * 86400


def test_the_same_event_id_under_another_student_is_a_conflict_not_a_second_event(redis_client):
    """Regression (issue 11, defect 5): idempotency was per student, so the same event_id under two
    students was accepted twice. An event id names one event, whoever it is sent for."""
    store = FeatureStore(redis_client)
    assert store.apply_events([_event(1, "s1", "A", "enrol")]) == ["accepted"]
    assert store.apply_events([_event(1, "s2", "A", "enrol")]) == ["conflict"]
    # the same id with other fields in one call: the first stands, the second is refused
    assert store.apply_events([_event(2, "s3", "A", "enrol"), _event(2, "s3", "B", "enrol")]) == [
        "accepted",
        "conflict",
    ]
    assert [e[1][b"student_id"] for e in redis_client.xrange(keys.EVENTS_STREAM)] == [b"s1", b"s3"]
    assert store.read_student("s2").history == {} and store.read_student("s3").history == {"A": 0.25}


def test_concurrent_resends_append_each_event_once(redis_server, redis_client):
    """Regression (issue 11, defect 2): five concurrent sends of the same 1,000 events accepted 1,000 but
    appended 5,000 stream entries (the dedup marker and the XADD were separate steps)."""
    import threading

    events = [_event(i, f"s{i % 97}", f"L{i % 13}", "enrol", day=i / 1000) for i in range(1000)]
    outcomes: list[list[str]] = []
    barrier = threading.Barrier(5)

    def send() -> None:
        client = redis_server.client()
        barrier.wait()
        outcomes.append(FeatureStore(client).apply_events(events))
        client.close()

    threads = [threading.Thread(target=send) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 5
    per_event = list(zip(*outcomes, strict=True))
    assert all(sorted(o) == ["accepted"] + ["duplicate"] * 4 for o in per_event)  # one sender wins each
    ids = [e[1][b"event_id"] for e in redis_client.xrange(keys.EVENTS_STREAM)]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    one = FeatureStore(redis_client)
    assert (
        one.read_student("s5").recent
        == tuple(dict.fromkeys(e.lecture_id for e in events if e.student_id == "s5"))[-20:]
    )


def test_a_command_resent_after_a_timeout_stores_and_reports_each_event_once(redis_server, redis_client):
    """Regression (issue 11, defect 3): with Redis stalling, redis-py resent the timed-out EVALSHA and both
    copies ran: events were appended twice and first-time events were reported 'duplicate'.

    Redis stalls 100 ms every 150 ms (SIGSTOP, SIGCONT: a command sent during a stall runs when Redis
    resumes, after its client gave up on it); the store's client times out after 30 ms and resends
    (redis-py `Retry`). Every event must be reported accepted by the one call that sent it, and be in the
    stream once.
    """
    import threading

    from redis.backoff import NoBackoff
    from redis.retry import Retry

    stop = threading.Event()

    def scripts_run() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    client = redis_server.client(
        socket_timeout=0.03, socket_connect_timeout=0.03, retry=Retry(NoBackoff(), 50)
    )
    store = FeatureStore(client)
    store.apply_events([_event(-1, "warm", "A", "enrol")])  # scripts loaded before the stalls
    staller = threading.Thread(target=redis_server.stall, args=(stop.is_set,))
    before, sent, outcomes = scripts_run(), 0, []
    staller.start()
    try:
        for b in range(40):
            batch = [_event(b * 50 + i, f"s{i % 7}", f"L{i}", "enrol", day=b) for i in range(50)]
            outcomes += store.apply_events(batch)
            sent += 1 + 7  # one append_once call, one state script per student
    finally:
        stop.set()
        staller.join()
    client.close()
    assert scripts_run() - before > sent  # some commands really ran twice ...
    assert outcomes == ["accepted"] * 2000  # ... yet each event is reported accepted by its call
    ids = [e[1][b"event_id"] for e in redis_client.xrange(keys.EVENTS_STREAM)]
    assert len(ids) == 2001 and len(set(ids)) == 2001  # ... and appended once
    assert FeatureStore(redis_client).read_student("s3").recent[-1] == "L45"


def test_recent_lectures_keep_enrolment_order_without_duplicates_and_are_trimmed(redis_client):
    store = FeatureStore(redis_client, recent_len=3)
    store.apply_events([_event(i, "s1", f"L{i}", "enrol", day=i) for i in range(5)])
    assert store.read_student("s1").recent == ("L2", "L3", "L4")
    store.apply_events([_event(10, "s1", "L3", "enrol", day=9), _event(11, "s1", "L4", "complete", day=9)])
    assert store.read_student("s1").recent == ("L2", "L4", "L3")  # a re-enrolment moves to the end


def test_a_failure_between_stream_and_state_is_healed_by_the_retry(redis_client):
    """An event appended to the stream whose state update failed reaches the state on retry, once."""
    store = FeatureStore(redis_client)
    redis_client.set(keys.history("s1"), b"not a hash")  # the state script now fails with WRONGTYPE
    event = _event(1, "s1", "A", "enrol")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        store.apply_events([event])
    assert redis_client.xlen(keys.EVENTS_STREAM) == 1  # in the stream, not yet in the state
    redis_client.delete(keys.history("s1"))
    assert store.apply_events([event]) == ["duplicate"]  # not appended twice ...
    assert store.read_student("s1").recent == ("A",)  # ... but applied now
    assert store.apply_events([event, _event(2, "s1", "B", "enrol")]) == ["duplicate", "accepted"]
    assert store.read_student("s1").recent == ("A", "B") and redis_client.xlen(keys.EVENTS_STREAM) == 2


def test_a_failed_append_leaves_no_marker(redis_client):
    store = FeatureStore(redis_client)
    redis_client.set(keys.EVENTS_STREAM, b"not a stream")  # XADD now fails with WRONGTYPE
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        store.apply_events([_event(1, "s1", "A", "enrol")])
    redis_client.delete(keys.EVENTS_STREAM)
    assert store.apply_events([_event(1, "s1", "A", "enrol")]) == ["accepted"]
    assert redis_client.xlen(keys.EVENTS_STREAM) == 1


def test_script_cache_flush_is_survived(redis_client):
    store = FeatureStore(redis_client)
    store.apply_events([_event(1, "s1", "A", "enrol")])
    redis_client.script_flush()
    assert store.apply_events([_event(2, "s1", "B", "enrol")]) == ["accepted"]
    assert store.read_student("s1").recent == ("A", "B")


def test_malformed_events_are_refused_before_anything_is_written(redis_client):
    store = FeatureStore(redis_client)
    good = _event(1, "s1", "A", "enrol")
    for bad, message in (
        (_event(2, "s1", "A", "watch"), "event 1: type 'watch' is not one of enrol, progress"),
        (_event(2, "s1", "A", "progress", 1.5), r"event 1: progress 1\.5 is outside 0\.\.1"),
        (_event(2, "s1", "A", "progress", float("nan")), "event 1: progress must be a finite number"),
        (_event(2, "", "A", "enrol"), "event 1: student_id must be a non-empty string"),
    ):
        with pytest.raises(ValueError, match=message):
            store.apply_events([good, bad])
    assert redis_client.dbsize() == 0


def test_redis_down_raises_and_the_retry_after_restart_applies(redis_client, redis_server):
    store = FeatureStore(redis_server.client(socket_timeout=0.5, retry=None))
    event = _event(1, "s1", "A", "complete", 1.0)
    with redis_server.down():
        with pytest.raises(redis.exceptions.ConnectionError):
            store.apply_events([event])
        with pytest.raises(redis.exceptions.ConnectionError):
            store.read_student("s1")
    assert store.apply_events([event]) == ["accepted"]
    assert store.read_student("s1").history == {"A": 1.0}


def test_state_survives_a_redis_restart(redis_client, redis_server):
    store = FeatureStore(redis_client)
    store.put_profiles([StudentProfile("s1", "seoul", "h1")])
    store.apply_events([_event(1, "s1", "A", "enrol")])
    redis_server.restart()
    again = FeatureStore(redis_server.client())
    record = again.read_student("s1")
    assert record.profile == StudentProfile("s1", "seoul", "h1") and record.history == {"A": 0.25}
    assert again.apply_events([_event(1, "s1", "A", "enrol")]) == ["duplicate"]  # markers persisted too


# -- bulk --------------------------------------------------------------------------------------------------


def test_seed_history_equals_the_training_pipeline_and_the_online_path(redis_client, redis_server):
    rng = np.random.default_rng(11)
    frame = _random_events(rng)
    expected = _batch_weights(frame)
    store = FeatureStore(redis_client, recent_len=4)
    calls: list[tuple[str, int, int]] = []
    n = store.seed_history(frame, [StudentProfile("s00", "seoul", "m3")], progress=lambda *a: calls.append(a))
    assert n == len(expected) and calls[-1] == ("history", n, n)
    seeded = store.read_students(sorted(expected))
    for sid, record in zip(sorted(expected), seeded, strict=True):
        assert record.history == pytest.approx(expected[sid], abs=1e-6), sid
    assert seeded[0].profile == StudentProfile("s00", "seoul", "m3")

    # the online path from scratch gives the same history, aggregates and recent lists
    online_client = redis_server.client(db=1)
    online_client.flushdb()
    online = FeatureStore(online_client, recent_len=4)
    online.apply_events(_events_in(frame.sort_values("occurred_at")))
    for sid, record in zip(sorted(expected), online.read_students(sorted(expected)), strict=True):
        assert record.recent == seeded[sorted(expected).index(sid)].recent, sid
        assert redis_client.hgetall(keys.pairs(sid)) == online_client.hgetall(keys.pairs(sid)), sid
    online_client.flushdb()
    online_client.close()


def test_seed_history_with_ties_in_time_follows_the_table_order_as_the_online_path(
    redis_client, redis_server
):
    # many events share a timestamp (a pair's ties decide its last type and the recent order): the bulk
    # rule applies them in table order, as the online path does when they arrive in that order
    rng = np.random.default_rng(5)
    frame = _random_events(rng, n_students=6, n_events=300)
    frame["student_id"] = frame["student_id"].str.replace("s0", "학생-")
    frame["occurred_at"] = T0 + pd.to_timedelta(rng.integers(0, 3, len(frame)), "h")
    coded = frame.astype({"student_id": "category", "lecture_id": "category", "type": "category"})
    arrow, arrow_coded = as_arrow(frame), as_arrow(coded)  # as a partition of `read_partitioned`
    assert pa.types.is_dictionary(arrow_coded.schema.field("student_id").type)
    for events in (frame, coded, arrow, arrow_coded):
        redis_client.flushdb()
        store = FeatureStore(redis_client, recent_len=3)
        assert store.seed_history(events, []) == frame["student_id"].nunique()
        online_client = redis_server.client(db=1)
        online_client.flushdb()
        online = FeatureStore(online_client, recent_len=3)
        online.apply_events(_events_in(frame.sort_values("occurred_at", kind="stable")))
        students = sorted(frame["student_id"].unique())
        for sid, seeded, applied in zip(
            students, store.read_students(students), online.read_students(students), strict=True
        ):
            assert seeded.history == applied.history and seeded.recent == applied.recent, sid
            assert redis_client.hgetall(keys.pairs(sid)) == online_client.hgetall(keys.pairs(sid)), sid
        online_client.flushdb()
        online_client.close()


def test_seed_history_replaces_earlier_state(redis_client):
    store = FeatureStore(redis_client)
    store.apply_events([_event(1, "s1", "OLD", "enrol")])
    frame = pd.DataFrame(
        {"student_id": ["s1"], "lecture_id": ["NEW"], "type": ["complete"], "occurred_at": [T0]}
    )
    assert store.seed_history(frame, []) == 1
    record = store.read_student("s1")
    assert record.history == {"NEW": 1.0} and record.recent == ()


def test_seed_history_names_bad_rows(redis_client):
    store = FeatureStore(redis_client)
    frame = pd.DataFrame(
        {
            "student_id": ["s1", "s2"],
            "lecture_id": ["A", "B"],
            "type": ["enrol", "watch"],
            "occurred_at": [T0, T0],
        }
    )
    arrow = as_arrow(frame)
    for events in (frame, arrow, as_arrow(frame.astype({"type": "category"}))):
        with pytest.raises(SchemaError, match=r"events: row 2, column 'type': unknown event type 'watch'"):
            store.seed_history(events, [])
    with pytest.raises(SchemaError, match="column 'occurred_at' is missing"):
        store.seed_history(frame.drop(columns="occurred_at"), [])
    with pytest.raises(SchemaError, match="column 'occurred_at' is missing"):
        store.seed_history(arrow.drop_columns(["occurred_at"]), [])
    no_time = pa.table({**{n: arrow[n] for n in ("student_id", "lecture_id")}, "type": ["enrol", "enrol"],
                        "occurred_at": pa.array([T0, None], pa.timestamp("us", tz="UTC"))})  # fmt: skip
    with pytest.raises(SchemaError, match=r"row 2, column 'occurred_at': missing timestamp"):
        store.seed_history(no_time, [])
    no_student = pa.table({"student_id": ["s1", None], "lecture_id": ["A", "B"], "type": ["enrol", "enrol"],
                           "occurred_at": pa.array([T0, T0], pa.timestamp("us", tz="UTC"))})  # fmt: skip
    with pytest.raises(SchemaError, match=r"row 2, column 'student_id': missing student_id"):
        store.seed_history(no_student, [])
    assert redis_client.dbsize() == 0


def test_materialize_writes_switches_and_cleans_up(redis_client):
    store = FeatureStore(redis_client)
    ids = [f"s{i}" for i in range(5_000)]
    states = np.random.default_rng(0).normal(size=(5_000, 33)).astype(np.float32)
    stages: list[str] = []
    first = store.materialize("lightfm", "1", ids, states, progress=lambda s, d, t: stages.append(s))
    assert first.students == 5_000 and first.state_width == 33 and first.previous_version is None
    assert first.payload_bytes == 5_000 * 33 * 4 and first.removed_keys == 0
    assert 132 < first.bytes_per_student < 400  # 132 B of floats plus key and allocator overhead
    assert "state" in stages and "clean-up" in stages
    assert redis_client.get(keys.model_state("s42", "lightfm", "1")) == states[42].astype("<f4").tobytes()
    assert store.active_version("lightfm") == "1"

    store.materialize("other", "7", ids[:10], states[:10])  # another model is never touched
    redis_client.set(b"lr:{s:s1}:evt:x:m:lightfm:1", b"1")  # an event id that looks like a state key
    second = store.materialize("lightfm", "2", ids[:100], states[:100] * 2)
    assert second.previous_version == "1" and second.removed_keys == 5_000
    assert store.active_version("lightfm") == "2"
    assert redis_client.exists(keys.model_state("s42", "lightfm", "1")) == 0
    assert redis_client.exists(keys.model_state("s4999", "lightfm", "2")) == 0
    state = store.read_student("s42", "lightfm", "2").state
    assert np.array_equal(np.frombuffer(state, "<f4"), states[42] * 2)
    assert redis_client.exists(keys.model_state("s3", "other", "7")) == 1
    assert redis_client.exists(b"lr:{s:s1}:evt:x:m:lightfm:1") == 1


def test_materialize_refuses_bad_input_before_writing(redis_client):
    store = FeatureStore(redis_client)
    good = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"states must be \(len\(student_ids\)=3, width\)"):
        store.materialize("m", "1", ["a", "b", "c"], good)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"state of student 'b' \(row 1\) holds NaN"):
        store.materialize("m", "1", ["a", "b"], bad)
    with pytest.raises(ValueError, match="duplicates"):
        store.materialize("m", "1", ["a", "a"], good)
    with pytest.raises(ValueError, match="version 'v:1' is not allowed"):
        store.materialize("m", "v:1", ["a", "b"], good)
    assert redis_client.dbsize() == 0


def test_materialize_of_a_stateless_model_only_switches_the_version(redis_client):
    store = FeatureStore(redis_client)
    store.materialize("m", "1", ["a"], np.ones((1, 2), dtype=np.float32))
    summary = store.materialize("m", "2", ["a", "b"], np.zeros((2, 0), dtype=np.float32))
    assert summary.students == 0 and summary.removed_keys == 1 and store.active_version("m") == "2"
    assert store.read_student("a", "m").state is None
