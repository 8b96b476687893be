"""Stream export to Parquet through a consumer group: complete, ordered, and lossless across crashes."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from features import keys, streams
from features.errors import FeatureStoreError
from features.schemas import EVENTS
from features.store import EventIn, FeatureStore, event_fields
from features.streams import append, export_stream, exported_ranges, parse_id, record_decoder

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, tzinfo=UTC)

#: A schema unlike the events one: lists, nullable strings, an int, a bool.
SHOWN = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("variant", pa.string()),
        pa.field("lecture_ids", pa.list_(pa.string()), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("fallback", pa.bool_(), nullable=False),
        pa.field("shown_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def _events(n: int, start: int = 0) -> list[EventIn]:
    return [
        EventIn(f"e{i:05d}", f"s{i % 7}", f"L{i % 11}", ("enrol", "progress", "complete", "drop")[i % 4],
                0.5 if i % 4 == 1 else 0.0, T0 + timedelta(minutes=i), request_id=f"r{i}" if i % 3 else None)
        for i in range(start, start + n)
    ]  # fmt: skip


def _exported_ids(out: Path) -> list[str]:
    ids: list[str] = []
    for _, _, path in exported_ranges(out, "events"):
        ids += pq.read_table(path).column("event_id").to_pylist()
    return ids


def _pending(client, group: str = "export") -> int:
    return int(client.xpending(keys.EVENTS_STREAM, group)["pending"])


def test_export_writes_every_event_once_with_the_events_schema(redis_client, tmp_path: Path):
    events = _events(25)
    FeatureStore(redis_client).apply_events(events)
    calls: list[int] = []
    summary = export_stream(
        redis_client, keys.EVENTS_STREAM, "export", tmp_path, batch_size=10,
        progress=lambda stage, done, total: calls.append(done), schema=EVENTS,
    )  # fmt: skip
    assert summary.rows == 25 and len(summary.files) == 3 and calls == [10, 20, 25]
    assert _exported_ids(tmp_path) == [e.event_id for e in events]
    table = pq.read_table(summary.files[0])
    assert table.schema.equals(EVENTS)
    first = table.to_pylist()[1]
    assert first == {
        "event_id": "e00001", "student_id": "s1", "lecture_id": "L1", "type": "progress",
        "progress": 0.5, "occurred_at": T0 + timedelta(minutes=1), "request_id": "r1",
    }  # fmt: skip
    assert table.column("request_id").to_pylist()[0] is None  # "" on the wire = null
    assert _pending(redis_client) == 0

    ids = [e[0].decode() for e in redis_client.xrange(keys.EVENTS_STREAM)]
    assert summary.files[0].name == f"events-{ids[0]}-{ids[9]}.parquet"  # named by its id range
    assert summary.first_id == ids[0] and summary.last_id == ids[-1]

    again = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS)
    assert again.rows == 0 and again.files == []
    FeatureStore(redis_client).apply_events(_events(4, start=100))
    more = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS)
    assert more.rows == 4 and len(more.files) == 1
    assert len(_exported_ids(tmp_path)) == 29


def test_append_writes_every_record_in_order_across_chunks(redis_client, monkeypatch):
    monkeypatch.setattr(streams, "APPEND_CHUNK", 2)  # 5 records = 3 script calls
    records = [{"n": str(i), "title": f"수학 {i}강", "empty": ""} for i in range(5)] + [{"only": 7}]
    ids = append(redis_client, b"lr:stream:test", records)
    entries = redis_client.xrange(b"lr:stream:test")
    assert [entry_id for entry_id, _ in entries] == ids and len(ids) == 6
    assert parse_id(ids[0]) < parse_id(ids[-1])
    assert entries[3][1] == {b"n": b"3", b"title": "수학 3강".encode(), b"empty": b""}  # fields in order
    assert list(entries[3][1]) == [b"n", b"title", b"empty"]
    assert entries[5][1] == {b"only": b"7"}
    assert append(redis_client, b"lr:stream:test", []) == []


def test_append_reloads_its_script_when_redis_forgot_it(redis_client):
    append(redis_client, b"lr:stream:test", [{"a": "1"}])
    redis_client.script_flush()  # as after a restart without persistence, or a new cluster node
    append(redis_client, b"lr:stream:test", [{"a": "2"}])
    assert [fields for _, fields in redis_client.xrange(b"lr:stream:test")] == [{b"a": b"1"}, {b"a": b"2"}]


def test_packed_records_are_written_as_append_writes_their_fields(redis_client, monkeypatch):
    """`append_packed` (the exposure writer's path: records encoded when made, the call joined from
    bytes) writes exactly the entries `append` writes for the same fields, in order, across chunks."""
    monkeypatch.setattr(streams, "APPEND_CHUNK", 2)
    records = [{"n": str(i), "title": f"수학 {i}강", "empty": ""} for i in range(5)] + [{"only": "7"}]
    packed = [streams.pack_record(f"s{i}", r) for i, r in enumerate(records)]
    assert [streams.unpack_record(p) for p in packed] == records
    assert packed[0].shard_key == "s0" and packed[0].n_fields == 3
    append(redis_client, b"lr:stream:dicts", records)
    streams.append_packed(redis_client, b"lr:stream:packed", packed)
    by_dict = [fields for _, fields in redis_client.xrange(b"lr:stream:dicts")]
    by_bytes = [fields for _, fields in redis_client.xrange(b"lr:stream:packed")]
    assert by_bytes == by_dict and [list(f) for f in by_bytes] == [list(f) for f in by_dict]
    streams.append_packed(redis_client, b"lr:stream:packed", [])
    assert redis_client.xlen(b"lr:stream:packed") == 6


def test_packed_append_reloads_its_script_and_leaves_no_reply_unread(redis_client, redis_server):
    one = [streams.pack_record("s1", {"a": "1"})]
    redis_client.script_flush()
    streams.append_packed(redis_client, b"lr:stream:test", one)  # NOSCRIPT, then loaded and sent again
    with redis_server.down(), pytest.raises(redis.exceptions.ConnectionError):
        streams.append_packed(redis_client, b"lr:stream:test", [streams.pack_record("s1", {"a": "lost"})])
    streams.append_packed(redis_client, b"lr:stream:test", [streams.pack_record("s1", {"a": "2"})])
    redis_client.set(b"lr:after", b"ok")  # the pooled connections answer their own commands, not an old reply
    assert redis_client.get(b"lr:after") == b"ok" and redis_client.xlen(b"lr:stream:test") == 2
    assert [f for _, f in redis_client.xrange(b"lr:stream:test")] == [{b"a": b"1"}, {b"a": b"2"}]


def test_entries_written_before_the_group_existed_are_exported(redis_client, tmp_path: Path):
    append(redis_client, keys.EVENTS_STREAM, [event_fields(e) for e in _events(3)])
    assert export_stream(redis_client, keys.EVENTS_STREAM, "late-group", tmp_path, schema=EVENTS).rows == 3


def test_generic_schema_decoding(redis_client, tmp_path: Path):
    stream = b"lr:stream:test"
    append(
        redis_client, stream,
        [
            {"request_id": "q1", "variant": "", "lecture_ids": json.dumps(["수학-1", "영어-2"]), "k": "2",
             "fallback": "false", "shown_at": "2025-03-01T09:00:00Z"},
            {"request_id": "q2", "variant": "B", "lecture_ids": "[]", "k": 0, "fallback": "1",
             "shown_at": "2025-03-01T18:00:00+09:00"},
        ],
    )  # fmt: skip
    summary = export_stream(redis_client, stream, "export", tmp_path, schema=SHOWN, name="shown")
    rows = pq.read_table(summary.files[0]).to_pylist()
    assert rows[0]["variant"] is None and rows[0]["lecture_ids"] == ["수학-1", "영어-2"]
    assert rows[0]["k"] == 2 and rows[0]["fallback"] is False
    assert rows[1]["shown_at"] == datetime(2025, 3, 1, 9, tzinfo=UTC)  # converted to UTC
    assert summary.files[0].name.startswith("shown-")


def test_undecodable_entries_are_kept_aside_not_lost(redis_client, tmp_path: Path):
    good = [event_fields(e) for e in _events(3)]
    missing = {k: v for k, v in good[1].items() if k != "lecture_id"}
    garbled = {**good[2], "occurred_at": "yesterday"}
    append(redis_client, keys.EVENTS_STREAM, [good[0], missing, garbled])
    summary = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS)
    assert summary.rows == 1 and summary.rejected == 2 and _pending(redis_client) == 0
    rejected_files = list(tmp_path.glob("*.rejected.jsonl"))
    assert len(rejected_files) == 1
    lines = [json.loads(x) for x in rejected_files[0].read_text(encoding="utf-8").splitlines()]
    assert "column 'lecture_id': field missing" in lines[0]["error"]
    assert "column 'occurred_at': cannot read 'yesterday'" in lines[1]["error"]
    assert lines[1]["fields"]["event_id"] == "e00002"


def test_decoder_names_the_bad_field():
    decode = record_decoder(EVENTS, "events stream")
    fields = {k.encode(): v.encode() for k, v in event_fields(_events(1)[0]).items()}
    assert decode(fields)["event_id"] == "e00000"
    with pytest.raises(Exception, match="column 'progress': cannot read 'lots'"):
        decode({**fields, b"progress": b"lots"})


class Crash(Exception):
    pass


@pytest.mark.parametrize("stage", ["written", "renamed"])
def test_a_failure_at_either_commit_point_loses_and_duplicates_nothing(
    redis_client, tmp_path: Path, stage: str
):
    events = _events(30)
    FeatureStore(redis_client).apply_events(events)
    seen: list[str] = []

    def hook(point: str, path: Path) -> None:
        seen.append(point)
        if point == stage and seen.count(point) == 2:  # the second batch fails
            raise Crash(path)

    with pytest.raises(Crash):
        export_stream(
            redis_client, keys.EVENTS_STREAM, "export", tmp_path, batch_size=10, schema=EVENTS, hook=hook
        )
    assert _pending(redis_client) == 10  # the failed batch was delivered but not acknowledged
    rerun = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, batch_size=10, schema=EVENTS)
    assert _exported_ids(tmp_path) == [e.event_id for e in events]
    assert _pending(redis_client) == 0
    assert rerun.skipped == (10 if stage == "renamed" else 0)
    assert not list(tmp_path.glob(".*.tmp"))


_CRASHING_EXPORT = """
import os, signal, sys
from pathlib import Path
import redis
from features import keys, streams
from features.schemas import EVENTS
from features.streams import export_stream

url, out, stage, after = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
count = {"n": 0}

def hook(point, path):
    if point == stage:
        count["n"] += 1
        if count["n"] == after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no finally, no flush, no XACK

client = redis.Redis.from_url(url)
export_stream(client, keys.EVENTS_STREAM, "export", out, batch_size=7, schema=EVENTS, hook=hook)
"""


@pytest.mark.parametrize("stage", ["written", "renamed"])
def test_killed_exporter_then_rerun_loses_and_duplicates_nothing(
    redis_client, redis_server, tmp_path: Path, stage
):
    events = _events(40)
    FeatureStore(redis_client).apply_events(events)
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_EXPORT, redis_server.url, str(tmp_path), stage, "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    files_before = exported_ranges(tmp_path, "events")
    assert len(files_before) == (2 if stage == "written" else 3)
    assert _pending(redis_client) == 7
    if stage == "written":
        assert list(tmp_path.glob(".events-*.tmp"))  # the fsynced but never renamed batch

    rerun = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, batch_size=7, schema=EVENTS)
    assert _exported_ids(tmp_path) == [e.event_id for e in events]  # every event exactly once, in order
    assert _pending(redis_client) == 0 and not list(tmp_path.glob(".events-*.tmp"))
    assert rerun.skipped == (7 if stage == "renamed" else 0)
    ranges = exported_ranges(tmp_path, "events")
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))  # id ranges never overlap


def test_entries_pending_for_another_consumer_are_taken_over(redis_client, tmp_path: Path):
    FeatureStore(redis_client).apply_events(_events(5))
    redis_client.xgroup_create(keys.EVENTS_STREAM, "export", id="0")
    redis_client.xreadgroup(
        "export", "old-host", {keys.EVENTS_STREAM: ">"}, count=3
    )  # delivered, never acked
    summary = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS)
    assert summary.rows == 5 and _pending(redis_client) == 0
    assert _exported_ids(tmp_path) == [f"e{i:05d}" for i in range(5)]


def test_trim_keeps_what_another_group_still_needs(redis_client, tmp_path: Path):
    FeatureStore(redis_client).apply_events(_events(6))
    redis_client.xgroup_create(keys.EVENTS_STREAM, "analytics", id="0")
    entries = redis_client.xreadgroup("analytics", "a", {keys.EVENTS_STREAM: ">"}, count=4)[0][1]
    redis_client.xack(keys.EVENTS_STREAM, "analytics", *[e[0] for e in entries[:2]])  # 2 acked, 2 pending
    summary = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS, trim=True)
    assert summary.rows == 6 and summary.trimmed == 2
    remaining = [e[0] for e in redis_client.xrange(keys.EVENTS_STREAM)]
    assert remaining[0] == entries[2][0] and len(remaining) == 4
    redis_client.xgroup_destroy(keys.EVENTS_STREAM, "analytics")
    export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS, trim=True)
    assert redis_client.xlen(keys.EVENTS_STREAM) == 0


def test_a_second_exporter_on_the_same_directory_is_refused(redis_client, tmp_path: Path):
    FeatureStore(redis_client).apply_events(_events(3))

    def nested(point: str, path: Path) -> None:
        if point == "renamed":
            with pytest.raises(FeatureStoreError, match="another export is writing"):
                export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS)

    summary = export_stream(redis_client, keys.EVENTS_STREAM, "export", tmp_path, schema=EVENTS, hook=nested)
    assert summary.rows == 3


def test_parse_id_orders_numerically():
    assert parse_id(b"1700000000000-10") > parse_id("1700000000000-9")
    assert parse_id("99-0") < parse_id("100-0")
