"""Failing dependencies over real HTTP: Redis down or slow, alias moves, broken versions, no model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from features.settings import Settings
from service.auth import hash_key
from service.errors import ServiceConfigError
from service.main import create_app
from tests.conftest import RedisServerControl
from tests.service.conftest import (
    ADMIN,
    MODEL_NAME,
    PORTAL,
    TAEBAEK,
    Registry,
    answer,
    running,
    seed,
    service_settings,
    wait_for,
)


def _get(client: httpx.Client, student_id: str, headers: dict[str, str] = PORTAL) -> dict[str, Any]:
    r = client.get("/recommendations", params={"student_id": student_id, "k": 10}, headers=headers)
    return answer(r)


def test_redis_down_degrades_then_recovers(registry: Registry, redis_server: RedisServerControl) -> None:
    seed(redis_server)
    with running(service_settings(registry, redis_server.url)) as (_, client, logs):
        assert not _get(client, "s001")["degraded"]  # s001 is now known "as far as known" in process
        with redis_server.down():
            # s001's kept answer goes as soon as the key-change listener sees the connection drop
            assert wait_for(lambda: _get(client, "s001")["degraded"], timeout=5)
            body = _get(client, "s001")
            ids = [i["lecture_id"] for i in body["items"]]
            assert body["degraded"] and body["source"].startswith("popular_")
            assert body["items"] and not {"ENG-B-1", "ENG-B-2", "RETIRED-1", "M3-ONLY-1"} & set(ids)
            cold = _get(client, "nobody-at-all")
            assert cold["degraded"] and cold["source"] == "popular_global" and cold["fallback"]
            # a taebaek key's student whose region the service cannot check now: 503 (issue 11)
            r = client.get("/recommendations", params={"student_id": "tb-unknown"}, headers=TAEBAEK)
            assert r.status_code == 503 and "region cannot be checked" in r.json()["detail"]
            assert all(_get(client, f"s{i:03d}")["degraded"] for i in range(10, 30))
            event = {
                "event_id": "down-1", "student_id": "s001", "lecture_id": "ENG-B-3", "type": "enrol",
                "occurred_at": "2025-09-01T10:00:00Z",
            }  # fmt: skip
            r = client.post("/events", json={"events": [event]}, headers=PORTAL)
            assert r.status_code == 503 and "retry" in r.json()["detail"]
            r = client.put("/students/s500", json={"region": "seoul", "grade": "h1"}, headers=PORTAL)
            assert r.status_code == 503
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
        # back: normal answers without a restart of the service
        assert wait_for(lambda: not _get(client, "s001")["degraded"], timeout=10)
        body = _get(client, "s001")
        assert body["source"] == "model" and body["items"][0]["lecture_id"] == "ENG-B-3"
        assert client.post("/events", json={"events": [event]}, headers=PORTAL).json()["accepted"] == 1
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        degraded = [
            x for x in metrics.splitlines() if x.startswith("learnrec_recommendations_degraded_total ")
        ]
        assert float(degraded[0].split()[1]) >= 23
        assert "feature store unavailable; answering degraded" in logs.text()


def test_a_region_scoped_key_learns_nothing_outside_its_regions_while_redis_is_down(
    registry: Registry, redis_server: RedisServerControl
) -> None:
    """Regression (issue 11, defect 6): region scoping failed open while Redis was unavailable: a
    taebaek-only key got degraded 200 answers for every seoul student (403 with Redis up). A student
    whose region the service cannot check is refused (503); one it knows from the last read is checked
    as usual; keys for all regions still get degraded answers."""
    seed(redis_server)
    seoul = [f"s{i:03d}" for i in range(40)]  # tests.service.data: s000-s039 seoul, s040-s059 taebaek
    with running(service_settings(registry, redis_server.url)) as (_, client, _logs):
        for sid in seoul[:20]:  # read once while Redis is up: their records are kept in process
            assert not _get(client, sid)["degraded"]
        assert not _get(client, "s045", TAEBAEK)["degraded"]
        with redis_server.down():
            assert wait_for(lambda: _get(client, "s001")["degraded"], timeout=5)
            statuses = {}
            for sid in seoul:
                r = client.get("/recommendations", params={"student_id": sid}, headers=TAEBAEK)
                statuses[sid] = r.status_code
            assert all(statuses[sid] == 403 for sid in seoul[:20]), statuses  # region known: refused
            assert all(statuses[sid] == 503 for sid in seoul[20:]), statuses  # region unknown: refused
            r = client.get("/recommendations", params={"student_id": seoul[30]}, headers=TAEBAEK)
            assert "taebaek" in r.json()["detail"] and "retry later" in r.json()["detail"]
            tb = _get(client, "s045", TAEBAEK)  # its own student, known from the last read
            assert tb["degraded"] and "SEOUL-ONLY-1" not in [i["lecture_id"] for i in tb["items"]]
            assert all(_get(client, sid)["degraded"] for sid in seoul)  # all-region key: degraded 200
        assert wait_for(lambda: not _get(client, seoul[30])["degraded"], timeout=10)
        r = client.get("/recommendations", params={"student_id": seoul[30]}, headers=TAEBAEK)
        assert r.status_code == 403


def test_slow_redis_answers_degraded_fast(registry: Registry, redis_server: RedisServerControl) -> None:
    seed(redis_server)
    with running(service_settings(registry, redis_server.url)) as (_, client, _logs):
        assert not _get(client, "s002")["degraded"]
        # s002's answer is now kept: while Redis merely pauses (no write can change it) it still serves
        assert not _get(client, "s002")["degraded"]
        pauser = redis_server.client()
        pauser.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # Redis stops answering clients for 1.5 s
        try:
            started = time.perf_counter()
            body = _get(client, "s003")  # not kept: needs Redis
            elapsed = time.perf_counter() - started
            assert body["degraded"] and elapsed < 1.0, elapsed  # not the 1.5 s pause
        finally:
            pauser.execute_command("CLIENT", "UNPAUSE")
            pauser.close()
        assert wait_for(lambda: not _get(client, "s003")["degraded"], timeout=10)


def test_alias_moves_under_load_without_failed_requests(
    registry: Registry, redis_server: RedisServerControl
) -> None:
    from features.store import FeatureStore
    from models.loading import load_registered

    seed(redis_server)
    v1, v2 = registry.versions["sequence"], registry.versions["lightfm"]
    # the champion-to-be's per-student state, materialised as `learnrec features materialize` would
    lightfm = load_registered(MODEL_NAME, v2, registry.tracking_uri).recommender
    ids = list(lightfm.students.ids)
    states = lightfm.student_state(np.arange(len(ids), dtype=np.int32))
    FeatureStore(redis_server.client()).materialize(MODEL_NAME, v2, ids, states)

    students = ("s004", "s045", "brand-new")
    results: dict[str, list[tuple[int, str | None]]] = {s: [] for s in students}
    stop = threading.Event()
    settings = service_settings(registry, redis_server.url, reload_poll_seconds=0.1)
    with running(settings) as (live, _, _logs):

        def hammer(student: str) -> None:
            with httpx.Client(base_url=live.url, headers=PORTAL, timeout=10) as c:
                while not stop.is_set():
                    try:
                        r = c.get("/recommendations", params={"student_id": student, "k": 5})
                    except httpx.HTTPError as exc:  # recorded, so the assertion below shows it
                        results[student].append((-1, repr(exc)))
                        continue
                    version = r.json()["model"]["version"] if r.status_code == 200 else r.text
                    results[student].append((r.status_code, version))

        def count() -> int:
            return sum(len(r) for r in results.values())

        threads = [threading.Thread(target=hammer, args=(s,)) for s in students]
        for t in threads:
            t.start()
        try:
            assert wait_for(lambda: count() > 20, timeout=10)
            registry.set_alias(v2)
            assert wait_for(lambda: all(r and r[-1][1] == v2 for r in results.values()), timeout=15)
            seen = count()
            assert wait_for(lambda: count() > seen + 20, timeout=10)
            with httpx.Client(base_url=live.url) as c:
                metrics = c.get("/metrics").text  # before the alias goes back (the poller would follow it)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            registry.set_alias(v1)
        for student, answers in results.items():
            failed = [a for a in answers if a[0] != 200]
            assert not failed, (student, failed[:3])
            versions = [v for _, v in answers]
            # each client sees the old version, then the new one, never back: one atomic switch
            switch = versions.index(v2)
            assert versions[0] == v1 and set(versions[:switch]) == {v1} and set(versions[switch:]) == {v2}
        assert f'learnrec_model_info{{alias="champion",model="{MODEL_NAME}"' in metrics
        assert (
            f'version="{v2}"' in metrics
            and f'version="{v1}"' not in metrics.split("learnrec_model_info{")[-1]
        )


def test_broken_version_keeps_the_old_one_serving(
    registry: Registry, redis_server: RedisServerControl, tmp_path: Path
) -> None:
    seed(redis_server)
    v1 = registry.versions["sequence"]
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "MLmodel").write_text("not a learnrec model\n", encoding="utf-8")
    client_ml = registry.client()
    broken = client_ml.create_model_version(MODEL_NAME, source=broken_dir.as_uri())
    with running(service_settings(registry, redis_server.url)) as (_, client, logs):
        try:
            registry.set_alias(str(broken.version))
            r = client.post("/admin/reload", headers=ADMIN)
            assert r.status_code == 200
            body = r.json()
            assert not body["changed"] and body["serving"]["version"] == v1
            assert f"version {broken.version} failed to load" in body["error"]
            assert _get(client, "s001")["model"]["version"] == v1
            status = client.get("/admin/model", headers=ADMIN).json()
            assert (
                status["failed_version"] == str(broken.version) and "failed to load" in status["last_error"]
            )
            metrics = client.get("/metrics").text
            assert 'learnrec_model_reload_failures_total{reason="load_error"} 1.0' in metrics
            assert any(x["msg"].startswith("model reload failed") for x in logs.records())
        finally:
            registry.set_alias(v1)
            client_ml.delete_model_version(MODEL_NAME, str(broken.version))


def test_service_starts_without_any_registered_model(
    tmp_path: Path, redis_server: RedisServerControl
) -> None:
    seed(redis_server)
    settings = Settings(
        data_dir=tmp_path / "data",
        redis={"url": redis_server.url},
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'empty.db'}", "registered_model": MODEL_NAME},
        service={"reload_poll_seconds": 0},
    )
    with running(settings) as (_, client, _logs):
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and not ready.json()["model_loaded"] and ready.json()["redis"]
        r = client.get("/recommendations", params={"student_id": "s001"}, headers=PORTAL)
        assert r.status_code == 503
        assert "no model loaded" in r.json()["detail"] and "'champion'" in r.json()["detail"]
        event = {
            "event_id": "nm-1", "student_id": "s001", "lecture_id": "ENG-B-3", "type": "enrol",
            "occurred_at": "2025-09-01T10:00:00+09:00",
        }  # fmt: skip
        r = client.post("/events", json={"events": [event]}, headers=PORTAL)
        assert r.status_code == 200 and r.json()["accepted"] == 1


def test_production_needs_a_keys_file(
    tmp_path: Path, registry: Registry, redis_server: RedisServerControl
) -> None:
    with pytest.raises(ServiceConfigError, match="production"):
        create_app(Settings(data_dir=tmp_path, env="production"))
    keys = tmp_path / "keys.json"
    portal_key = "portal-taebaek-" + "x" * 24
    entry = {"name": "portal-taebaek", "sha256": hash_key(portal_key), "regions": ["taebaek"]}
    keys.write_text(json.dumps({"keys": [entry]}), encoding="utf-8")
    seed(redis_server)
    settings = service_settings(registry, redis_server.url, api_keys_file=keys, admin_key="a" * 40)
    settings = settings.model_copy(update={"env": "production"})
    with running(settings) as (_, client, logs):
        assert (
            client.get("/recommendations", params={"student_id": "s045"}, headers=PORTAL).status_code == 401
        )
        r = client.get("/recommendations", params={"student_id": "s045"}, headers={"X-API-Key": portal_key})
        assert r.status_code == 200
        assert client.get("/admin/model", headers={"X-API-Key": "a" * 40}).status_code == 200
        assert client.get("/admin/model", headers={"X-API-Key": portal_key}).status_code == 403
        assert portal_key not in logs.text() and "a" * 40 not in logs.text()


def test_removed_alias_keeps_the_loaded_version(registry: Registry, redis_server: RedisServerControl) -> None:
    seed(redis_server)
    v1 = registry.versions["sequence"]
    with running(service_settings(registry, redis_server.url)) as (_, client, logs):
        try:
            registry.client().delete_registered_model_alias(MODEL_NAME, "champion")
            body = client.post("/admin/reload", headers=ADMIN).json()
            assert body["serving"]["version"] == v1 and not body["changed"]
            assert _get(client, "s001")["model"]["version"] == v1
            assert any(x["msg"] == "alias no longer set; keeping the loaded version" for x in logs.records())
        finally:
            registry.set_alias(v1)
