"""A/B serving over HTTP: variant models, sticky arms, exposures in the Redis stream and their export."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from features import keys
from features.experiments import ExperimentRegistry, exposure_fields
from features.streams import pack_record
from service.exposures import ExposureWriter
from service.metrics import Metrics
from service.redis_reads import AsyncReader
from tests.conftest import RedisServerControl
from tests.service.conftest import (
    ADMIN,
    PORTAL,
    TAEBAEK,
    Registry,
    answer,
    running,
    seed,
    service_settings,
    wait_for,
)
from tests.service.live import LogLines

GIMPO = [f"g{i:03d}" for i in range(40)]
SEOUL = [f"s{i:03d}" for i in range(10)]
TAEBAEK_IDS = [f"s{i:03d}" for i in range(40, 60)]


def _experiment(
    key: str, regions: list[str], control: str = "champion", treatment: str = "challenger"
) -> Any:
    return {
        "key": key,
        "regions": regions,
        "start": "2020-01-01T00:00:00Z",
        "end": "2100-01-01T00:00:00Z",
        "variants": [
            {"name": "control", "weight": 50, "model": control},
            {"name": "treatment", "weight": 50, "model": treatment},
        ],
    }


def _write(path: Path, experiments: list[Any]) -> None:
    # write then rename: the watcher never reads a half-written file
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"experiments": experiments}), encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def ab(
    registry: Registry, redis_server: RedisServerControl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Path, LogLines]]:
    """A live service with one experiment in gimpo (control = champion v1, treatment = challenger v2)."""
    seed(redis_server)
    registry.set_alias(registry.versions["lightfm"], "challenger")
    path = tmp_path_factory.mktemp("ab") / "experiments.yaml"
    _write(path, [_experiment("gimpo-lightfm", ["gimpo"])])
    try:
        with running(service_settings(registry, redis_server.url, experiments_file=path)) as (
            _,
            client,
            logs,
        ):
            for sid in GIMPO:
                r = client.put(f"/students/{sid}", json={"region": "gimpo", "grade": "h1"}, headers=PORTAL)
                assert r.status_code == 200, r.text
            yield client, path, logs
    finally:
        registry.client().delete_registered_model_alias("learnrec-lectures", "challenger")


def _get(client: httpx.Client, sid: str, headers: dict[str, str] = PORTAL, **params: Any) -> dict[str, Any]:
    r = client.get("/recommendations", params={"student_id": sid, "k": 5, **params}, headers=headers)
    return answer(r)


def _exposures(redis_server: RedisServerControl) -> dict[str, dict[str, str]]:
    c = redis_server.client(decode_responses=True)
    try:
        entries = c.xrange(keys.EXPOSURES_STREAM)
    finally:
        c.close()
    return {fields["request_id"]: fields for _, fields in entries}


def test_variants_sticky_and_champion_outside(
    ab: tuple[httpx.Client, Path, LogLines], registry: Registry
) -> None:
    client, _, _ = ab
    champion, challenger = registry.versions["sequence"], registry.versions["lightfm"]
    expected = ExperimentRegistry.load(ab[1])
    seen: dict[str, str] = {}
    for sid in GIMPO:
        body = _get(client, sid)
        want = expected.assign(sid, "gimpo")
        assert want is not None
        assert (body["experiment"], body["variant"]) == ("gimpo-lightfm", want.variant)
        version = champion if want.variant == "control" else challenger
        assert body["model"]["version"] == version
        assert body["model"]["alias"] == ("champion" if want.variant == "control" else "challenger")
        seen[sid] = body["variant"]
    assert set(seen.values()) == {"control", "treatment"}  # 40 students, 50/50: both arms get some
    for sid in GIMPO[:10]:  # sticky
        assert _get(client, sid)["variant"] == seen[sid]
    for sid in SEOUL:
        body = _get(client, sid)
        assert body["experiment"] is None and body["variant"] is None
        assert body["model"]["version"] == champion and body["model"]["alias"] == "champion"
    # subject filter works with the variant's model too
    treated = next(s for s, v in seen.items() if v == "treatment")
    body = _get(client, treated, subject="수학")
    assert body["variant"] == "treatment" and all(i["subject"] == "수학" for i in body["items"])


def test_exposures_in_stream_and_exported(
    ab: tuple[httpx.Client, Path, LogLines],
    registry: Registry,
    redis_server: RedisServerControl,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, _, _ = ab
    before = datetime.now(UTC)
    answers = [_get(client, sid) for sid in (GIMPO[0], GIMPO[1], SEOUL[0])]
    ids = {a["request_id"] for a in answers}
    assert wait_for(lambda: ids <= set(_exposures(redis_server)), timeout=5)
    stream = _exposures(redis_server)
    for a, region in zip(answers, ("gimpo", "gimpo", "seoul"), strict=True):
        f = stream[a["request_id"]]
        assert set(f) == {
            "request_id", "student_id", "region", "experiment", "variant", "model_version", "lecture_ids",
            "shown_at",
        }  # fmt: skip
        assert f["student_id"] == a["student_id"] and f["region"] == region
        assert f["experiment"] == (a["experiment"] or "") and f["variant"] == (a["variant"] or "")
        assert f["model_version"] == a["model"]["version"]
        assert json.loads(f["lecture_ids"]) == [i["lecture_id"] for i in a["items"]]
        shown = datetime.fromisoformat(f["shown_at"])
        assert before <= shown <= datetime.now(UTC)

    metrics = client.get("/metrics").text
    assert 'learnrec_exposures_total{outcome="written"}' in metrics
    assert 'learnrec_experiment_answers_total{experiment="gimpo-lightfm"' in metrics

    from typer.testing import CliRunner

    from features.settings import get_settings
    from training.ab.exposures import EXPOSURES, read_exposures
    from training.cli import app

    monkeypatch.setenv("LEARNREC_REDIS__URL", redis_server.url)
    monkeypatch.setenv("LEARNREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        out = tmp_path / "exposures"
        result = CliRunner().invoke(app, ["events", "export", "--stream", "exposures", "--out", str(out)])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.parquet"))
    assert files
    for file in files:
        assert pq.read_schema(file).remove_metadata().equals(EXPOSURES)
    table = read_exposures(out)
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows  # no duplicates
    for a in answers:
        row = rows[a["request_id"]]
        assert row["experiment"] == a["experiment"] and row["variant"] == a["variant"]
        assert row["lecture_ids"] == [i["lecture_id"] for i in a["items"]]
        assert row["model_version"] == a["model"]["version"]


def test_variant_models_shown_in_admin_model_and_readyz(
    ab: tuple[httpx.Client, Path, LogLines], registry: Registry
) -> None:
    client, path, _ = ab
    champion, challenger = registry.versions["sequence"], registry.versions["lightfm"]

    def variants() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        admin = client.get("/admin/model", headers=ADMIN)
        ready = client.get("/readyz")
        assert admin.status_code == 200 and ready.status_code == 200
        return admin.json()["variants"], ready.json()["variants"]

    in_admin, in_ready = variants()
    assert in_admin == in_ready
    assert len(in_admin) == 1
    v = in_admin[0]
    assert (v["ref"], v["name"], v["version"], v["alias"], v["status"], v["error"]) == (
        "challenger",
        "learnrec-lectures",
        challenger,
        "challenger",
        "serving",
        None,
    )
    assert datetime.fromisoformat(v["loaded_at"]) <= datetime.now(UTC)
    assert client.get("/admin/model", headers=ADMIN).json()["loaded_at"] is not None  # the champion's
    # an alias nobody set: listed as unavailable (the champion answers for it); readiness is unaffected
    _write(
        path,
        [_experiment("gimpo-lightfm", ["gimpo"]), _experiment("taebaek-x", ["taebaek"], treatment="nope")],
    )
    try:

        def attempted() -> dict[str, Any] | None:  # listed at once as "not loaded yet", then tried
            found = [x for x in variants()[0] if x["ref"] == "nope" and "nope" in (x["error"] or "")]
            return found[0] if found else None

        assert wait_for(lambda: attempted() is not None, timeout=10)
        missing = attempted()
        assert missing is not None and len(variants()[0]) == 2
        assert (
            missing["status"] == "unavailable" and missing["version"] is None and "nope" in missing["error"]
        )
        assert client.get("/readyz").json()["ready"] is True
        # taebaek students of the variant whose model is missing get the champion, counted as such
        assert wait_for(
            lambda: any(_get(client, sid, TAEBAEK)["experiment"] == "taebaek-x" for sid in TAEBAEK_IDS),
            timeout=10,
        )
        missed = [
            a for a in (_get(client, sid, TAEBAEK) for sid in TAEBAEK_IDS) if a["variant"] == "treatment"
        ]
        assert missed and all(a["model"]["version"] == champion for a in missed)
        metrics = client.get("/metrics").text
        assert (
            'learnrec_experiment_variant_unavailable_total{experiment="taebaek-x",variant="treatment"}'
            in metrics
        )
    finally:
        _write(path, [_experiment("gimpo-lightfm", ["gimpo"])])
    assert wait_for(lambda: [x["ref"] for x in variants()[0]] == ["challenger"], timeout=10)
    # the variant list follows the file at once; the config is put in force once its models are checked
    assert wait_for(lambda: _get(client, TAEBAEK_IDS[0], TAEBAEK)["experiment"] is None, timeout=10)


def test_config_change_picked_up_without_restart(
    ab: tuple[httpx.Client, Path, LogLines], registry: Registry
) -> None:
    client, path, _ = ab
    champion, challenger = registry.versions["sequence"], registry.versions["lightfm"]
    sid = TAEBAEK_IDS[0]
    assert _get(client, sid, TAEBAEK)["experiment"] is None
    # a second experiment in taebaek whose treatment pins a version number
    _write(
        path,
        [
            _experiment("gimpo-lightfm", ["gimpo"]),
            _experiment("taebaek-pinned", ["taebaek"], treatment=challenger),
        ],
    )
    try:
        assert wait_for(lambda: _get(client, sid, TAEBAEK)["experiment"] == "taebaek-pinned", timeout=10)
        registry_now = ExperimentRegistry.load(path)
        arms: set[str] = set()
        for s in TAEBAEK_IDS:  # the single-region key path: the variant is known before Redis is read
            body = _get(client, s, TAEBAEK)
            want = registry_now.assign(s, "taebaek")
            assert want is not None and body["variant"] == want.variant
            assert body["model"]["version"] == (champion if want.variant == "control" else challenger)
            arms.add(body["variant"])
        assert arms == {"control", "treatment"}
        # a broken file keeps the config in force
        path.write_text("experiments: [{key: 'Bad Key'}]\n", encoding="utf-8")
        time.sleep(2.5)
        assert _get(client, sid, TAEBAEK)["experiment"] == "taebaek-pinned"
        assert "learnrec_experiments_reload_failures_total 1.0" in client.get("/metrics").text
    finally:
        _write(path, [_experiment("gimpo-lightfm", ["gimpo"])])
    assert wait_for(lambda: _get(client, sid, TAEBAEK)["experiment"] is None, timeout=10)


def test_writer_holds_exposures_while_redis_is_down(redis_server: RedisServerControl) -> None:
    stream = b"test:exposures:redis-down"
    client = _fresh_streams(redis_server, stream, socket_timeout=1.0)
    metrics = Metrics()
    writer = ExposureWriter(client, metrics, stream=stream, capacity=3)
    now = datetime.now(UTC)
    fields = [
        pack_record(f"s{i}", exposure_fields(f"r{i}", f"s{i}", "seoul", None, "1", ["L1"], now))
        for i in range(5)
    ]
    try:
        with redis_server.down():
            assert all(writer.submit(f) for f in fields[:3])
            assert not writer.submit(fields[3])  # full: dropped, counted
            assert not writer.flush()  # Redis down: the batch goes back into the queue
            assert writer.pending == 3
        assert writer.flush()
        assert writer.submit(fields[4]) and writer.flush()
        ids = [f[b"request_id"].decode() for _, f in client.xrange(stream)]
        assert ids == ["r0", "r1", "r2", "r4"]  # in order, none lost but the one the queue refused
        text = metrics.render().decode()
        assert 'learnrec_exposures_total{outcome="dropped"} 1.0' in text
        assert 'learnrec_exposures_total{outcome="written"} 4.0' in text
        assert 'learnrec_redis_errors_total{operation="xadd_exposures"} 1.0' in text
    finally:
        client.close()


def test_writer_thread_flushes_and_drains_on_close(redis_server: RedisServerControl) -> None:
    stream = b"test:exposures:drain"
    client = _fresh_streams(redis_server, stream)
    writer = ExposureWriter(client, Metrics(), stream=stream)
    writer.start()
    now = datetime.now(UTC)
    try:
        writer.submit(pack_record("s0", exposure_fields("t0", "s0", "seoul", None, "1", ["L1"], now)))
        assert wait_for(lambda: client.xlen(stream) == 1, timeout=2)
        for i in range(1, 50):
            writer.submit(pack_record("s0", exposure_fields(f"t{i}", "s0", "seoul", None, "1", ["L1"], now)))
        writer.close()
        assert client.xlen(stream) == 50
    finally:
        writer.close()
        client.close()


def _packed(i: int, prefix: str, now: datetime) -> Any:
    student = f"학생{i}"
    return pack_record(student, exposure_fields(f"{prefix}{i}", student, "seoul", None, "1", ["L1"], now))


def _fresh_streams(redis_server: RedisServerControl, *streams: bytes, **options: Any) -> redis.Redis[bytes]:
    """A client of the (started) test server with `streams` deleted. Each test writes streams of its own:
    writers of apps from other tests share this server and may flush late."""
    if not redis_server.running:
        redis_server.start()
    client: redis.Redis[bytes] = redis_server.client(**options)
    client.delete(*streams)
    return client


def _request_ids(client: redis.Redis, stream: bytes) -> list[str]:
    return [f[b"request_id"].decode() for _, f in client.xrange(stream)]


def test_writer_on_the_loop_loads_its_script_writes_in_order_and_drains_on_close(
    redis_server: RedisServerControl,
) -> None:
    """The service's writer (`start_on_loop`): on the event loop, through the request path's reader."""
    stream = b"test:exposures:loop-drain"
    client = _fresh_streams(redis_server, stream)
    client.script_flush()  # the first write meets NOSCRIPT, loads the script and writes
    metrics = Metrics()
    writer = ExposureWriter(client, metrics, stream=stream)
    now = datetime.now(UTC)

    async def run() -> int:
        reader = AsyncReader.for_client(client, 1.0)
        assert reader is not None
        writer.start_on_loop(reader)
        writer.submit(_packed(0, "q", now))
        for _ in range(200):  # written by the loop's writer within its flush interval
            if client.xlen(stream):
                break
            await asyncio.sleep(0.01)
        first = client.xlen(stream)
        for i in range(1, 50):
            writer.submit(_packed(i, "q", now))
        await writer.aclose()  # the last flush takes what the interval had not written yet
        reader.close()
        return first

    try:
        assert asyncio.run(run()) == 1
        assert _request_ids(client, stream) == [f"q{i}" for i in range(50)]
        text = metrics.render().decode()
        assert 'learnrec_exposures_total{outcome="written"} 50.0' in text
        assert "xadd_exposures" not in text and 'outcome="dropped"' not in text
    finally:
        client.close()


def test_stopping_the_writer_while_a_batch_is_out_writes_it_once(redis_server: RedisServerControl) -> None:
    """`aclose` while Redis has written a batch and its reply is not yet in: the batch is neither cut off
    and queued again (written twice by the last flush) nor lost. The reader holds the reply back until
    the close has begun: the race the close would otherwise lose now and then."""
    stream = b"test:exposures:close-in-flight"
    client = _fresh_streams(redis_server, stream)
    metrics = Metrics()
    writer = ExposureWriter(client, metrics, stream=stream, flush_interval=0.0)
    now = datetime.now(UTC)

    class ReplyHeldBack:
        """The real reader; the reply of a batch is handed over only once `release` is set."""

        def __init__(self, reader: AsyncReader) -> None:
            self.reader, self.written, self.release = reader, asyncio.Event(), asyncio.Event()

        async def execute(self, commands: Any) -> list[Any]:
            return await self.reader.execute(commands)

        async def execute_packed(self, payload: bytes, replies: int, *, retry: bool = True) -> list[Any]:
            got = await self.reader.execute_packed(payload, replies, retry=retry)
            self.written.set()
            await self.release.wait()
            return got

    async def run() -> None:
        reader = AsyncReader.for_client(client, 1.0)
        assert reader is not None
        held = ReplyHeldBack(reader)
        writer.start_on_loop(held)  # type: ignore[arg-type]
        writer.submit(_packed(0, "c", now))
        await asyncio.wait_for(held.written.wait(), 5)
        assert client.xlen(stream) == 1  # in Redis, the reply still out
        closing = asyncio.ensure_future(writer.aclose())
        await asyncio.sleep(0.05)  # the close has cancelled the writer's task by now
        held.release.set()
        await closing
        reader.close()

    try:
        asyncio.run(run())
        assert _request_ids(client, stream) == ["c0"]
        assert 'learnrec_exposures_total{outcome="written"} 1.0' in metrics.render().decode()
    finally:
        client.close()


def test_writer_on_the_loop_holds_exposures_while_redis_is_down_or_stalled(
    redis_server: RedisServerControl,
) -> None:
    """Down: the batch goes back into the queue (what does not fit is dropped, counted), and is written in
    order once Redis is back. Stalled past the timeout: the batch is kept and written again; a write Redis
    ran after the client gave up may appear twice (at least once: the A/B analysis counts request ids)."""
    stream = b"test:exposures:loop-down"
    client = _fresh_streams(redis_server, stream)
    metrics = Metrics()
    writer = ExposureWriter(client, metrics, stream=stream, capacity=3)
    now = datetime.now(UTC)
    records = [_packed(i, "d", now) for i in range(7)]

    async def run() -> None:
        reader = AsyncReader.for_client(client, 0.2)
        assert reader is not None
        with redis_server.down():
            assert all(writer.submit(r) for r in records[:3])
            assert not writer.submit(records[3])  # full: dropped, counted
            assert not await writer.flush_async(reader)  # Redis down: the batch goes back into the queue
            assert writer.pending == 3
        assert await writer.flush_async(reader)
        assert writer.submit(records[4]) and await writer.flush_async(reader)
        assert writer.submit(records[5]) and writer.submit(records[6])
        with redis_server.frozen():
            assert not await writer.flush_async(reader)  # timed out: kept
        assert writer.pending == 2
        assert await writer.flush_async(reader)
        reader.close()

    try:
        asyncio.run(run())
        ids = _request_ids(client, stream)
        assert ids[:4] == ["d0", "d1", "d2", "d4"]  # in order, none lost but the one the queue refused
        assert sorted(set(ids[4:])) == ["d5", "d6"] and len(ids) in (6, 8)
        text = metrics.render().decode()
        assert 'learnrec_exposures_total{outcome="dropped"} 1.0' in text
        assert 'learnrec_redis_errors_total{operation="xadd_exposures"} 2.0' in text
    finally:
        client.close()


def test_writer_on_the_loop_puts_each_exposure_in_its_shard(
    redis_server: RedisServerControl,
) -> None:
    stream = b"test:exposures:loop-shards"
    shards = keys.stream_shards(stream, 3)
    client = _fresh_streams(redis_server, *shards)
    writer = ExposureWriter(client, Metrics(), stream=stream, shards=3)
    now = datetime.now(UTC)

    async def run() -> None:
        reader = AsyncReader.for_client(client, 1.0)
        assert reader is not None
        for i in range(30):
            assert writer.submit(_packed(i, "h", now))
        assert await writer.flush_async(reader)  # one write: a script call per shard
        reader.close()

    try:
        asyncio.run(run())
        found = {}
        for k, shard in enumerate(shards):
            for _, f in client.xrange(shard):
                assert keys.shard_of(f[b"student_id"].decode(), 3) == k
                found[f[b"request_id"].decode()] = k
        assert sorted(found) == sorted(f"h{i}" for i in range(30)) and len(set(found.values())) == 3
    finally:
        client.close()
