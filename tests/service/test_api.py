"""The API over real HTTP: a uvicorn server, a real redis-server, a real MLflow registry and trained model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import RedisServerControl
from tests.service.conftest import ADMIN, PORTAL, TAEBAEK, Registry, answer, running, service_settings
from tests.service.live import LiveServer, LogLines

NOW = datetime.now(UTC).replace(microsecond=0)


def _recommend(client: httpx.Client, student_id: str, k: int = 10, **params: Any) -> dict[str, Any]:
    r = client.get("/recommendations", params={"student_id": student_id, "k": k, **params}, headers=PORTAL)
    return answer(r)


def _event(event_id: str, student_id: str, lecture_id: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "student_id": student_id,
        "lecture_id": lecture_id,
        "type": kind,
        "occurred_at": NOW.isoformat(),
        **extra,
    }


def test_recommend_complete_then_recommend_again(client: httpx.Client) -> None:
    # s001 (seoul, h2) took ENG-B-1 and ENG-B-2 in training
    first = _recommend(client, "s001")
    ids = [item["lecture_id"] for item in first["items"]]
    assert first["source"] == "model" and not first["fallback"] and not first["degraded"]
    assert first["model"] == {
        "name": "learnrec-lectures",
        "version": "1",
        "alias": "champion",
        "run_id": first["model"]["run_id"],
    }
    assert ids[0] == "ENG-B-3" and first["items"][0]["reason"] == "next_in_series"
    assert (
        first["items"][0]["title"] == "영어 독해 기본 3강"
        and first["items"][0]["reason_text"] == "시리즈 다음 강의"
    )
    assert [item["rank"] for item in first["items"]] == list(range(1, len(ids) + 1))
    # never taken, retired or unsuited lectures
    assert not {"ENG-B-1", "ENG-B-2", "RETIRED-1", "M3-ONLY-1"} & set(ids)

    events = [_event("it-1", "s001", "ENG-B-3", "enrol"), _event("it-2", "s001", "ENG-B-3", "complete")]
    r = client.post("/events", json={"events": events}, headers=PORTAL)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2

    again = [item["lecture_id"] for item in _recommend(client, "s001")["items"]]
    assert "ENG-B-3" not in again
    assert again[0] == "ENG-B-4"


def test_events_are_validated_item_by_item_and_idempotent(client: httpx.Client) -> None:
    good = _event("v-1", "s010", "KOR-D-1", "progress", progress=0.4)
    batch = [
        good,
        _event("v-2", "s010", "KOR-D-2", "progress", progress=1.5),
        {k: v for k, v in _event("v-3", "s010", "KOR-D-2", "enrol").items() if k != "occurred_at"},
        _event("v-4", "s010", "KOR-D-2", "enrol", occurred_at="2025-09-01T10:00:00"),  # no time zone
        _event("v-5", "s010", "KOR-D-2", "watch"),
        _event("v-6", "s010", "KOR-D-2", "progress"),
        _event("v-7", "s010", "KOR-D-2", "enrol", colour="blue"),
        _event("v-8", "s010", "KOR-D-2", "enrol", occurred_at=(NOW + timedelta(days=2)).isoformat()),
        "not an object",
        _event("v-9", "s 010", "KOR-D-2", "enrol"),
    ]
    r = client.post("/events", json={"events": batch}, headers=PORTAL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 0, 9)
    items = body["items"]
    assert [i["index"] for i in items] == list(range(10))
    assert items[0] == {"index": 0, "event_id": "v-1", "status": "accepted", "errors": []}
    fields = {i["index"]: [e["field"] for e in i["errors"]] for i in items}
    assert fields[1] == ["progress"]
    assert fields[2] == ["occurred_at"]
    assert fields[3] == ["occurred_at"]
    assert fields[4] == ["type"]
    assert fields[5] == ["progress"]
    assert fields[6] == ["colour"]
    assert fields[7] == ["occurred_at"]
    assert fields[8] == ["(item)"]
    assert fields[9] == ["student_id"]
    assert items[1]["event_id"] == "v-2"

    # the same event again is a no-op, reported as a duplicate
    r = client.post(
        "/events", json={"events": [good, _event("v-10", "s010", "KOR-D-2", "enrol")]}, headers=PORTAL
    )
    assert [i["status"] for i in r.json()["items"]] == ["duplicate", "accepted"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ([], ["body", "events"]),
        ({"events": []}, ["body", "events"]),
        ({"events": "x"}, ["body", "events"]),
        ({"events": [{}], "extra": 1}, ["body", "extra"]),
        ({"events": [{}] * 1001}, ["body", "events"]),
    ],
)
def test_malformed_event_batches_are_422_naming_the_field(
    client: httpx.Client, body: Any, loc: list[str]
) -> None:
    r = client.post("/events", json=body, headers=PORTAL)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == loc


def test_invalid_json_is_422(client: httpx.Client) -> None:
    r = client.post("/events", content=b"{nope", headers={**PORTAL, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"student_id": "s001", "k": 0}, "k"),
        ({"student_id": "s001", "k": 101}, "k"),
        ({"student_id": "s001", "k": "ten"}, "k"),
        ({"k": 5}, "student_id"),
        ({"student_id": "has space"}, "student_id"),
        ({"student_id": "s001", "subject": "연금술"}, "subject"),
    ],
)
def test_bad_query_is_422_naming_the_field(client: httpx.Client, params: dict[str, Any], field: str) -> None:
    r = client.get("/recommendations", params=params, headers=PORTAL)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["query", field], detail


def test_subject_filter(client: httpx.Client) -> None:
    body = _recommend(client, "s002", subject="과학")
    assert body["items"] and {i["subject"] for i in body["items"]} == {"과학"}


def test_keys_are_required_and_scoped_to_regions(client: httpx.Client) -> None:
    assert client.get("/recommendations", params={"student_id": "s001"}).status_code == 401
    r = client.get("/recommendations", params={"student_id": "s001"}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    # s001 is a seoul student: the taebaek key may neither read nor write it
    r = client.get("/recommendations", params={"student_id": "s001"}, headers=TAEBAEK)
    assert r.status_code == 403 and "seoul" in r.json()["detail"]
    r = client.post("/events", json={"events": [_event("x-1", "s001", "MATH-A-1", "enrol")]}, headers=TAEBAEK)
    assert r.status_code == 403
    r = client.put("/students/s001", json={"region": "taebaek", "grade": "h1"}, headers=TAEBAEK)
    assert r.status_code == 403
    r = client.put("/students/new-seoul", json={"region": "seoul", "grade": "h1"}, headers=TAEBAEK)
    assert r.status_code == 403
    # nothing was written by the refused calls
    assert client.get("/students/s001", headers=PORTAL).json()["region"] == "seoul"
    assert client.get("/students/new-seoul", headers=PORTAL).status_code == 404
    # its own students are fine (s045 is a taebaek student)
    r = client.get("/recommendations", params={"student_id": "s045"}, headers=TAEBAEK)
    assert r.status_code == 200 and "SEOUL-ONLY-1" not in [i["lecture_id"] for i in r.json()["items"]]


def test_admin_routes_refuse_portal_keys(client: httpx.Client) -> None:
    assert client.post("/admin/reload").status_code == 401
    r = client.post("/admin/reload", headers=PORTAL)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert client.get("/admin/model", headers=TAEBAEK).status_code == 403
    r = client.post("/admin/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["serving"]["version"] == "1" and not r.json()["changed"]
    status = client.get("/admin/model", headers=ADMIN).json()
    assert (
        status["alias"] == "champion" and status["serving"]["version"] == "1" and status["last_error"] is None
    )


def test_register_student_then_cold_start(client: httpx.Client) -> None:
    profile = {"region": "taebaek", "grade": "h1", "school_level": "high", "interest_subjects": ["과학"]}
    r = client.put("/students/tb-new-1", json=profile, headers=TAEBAEK)
    assert r.status_code == 200 and r.json()["created"] is True
    r = client.put("/students/tb-new-1", json={**profile, "grade": "h2"}, headers=TAEBAEK)
    assert r.json()["created"] is False and r.json()["grade"] == "h2"
    body = _recommend(client, "tb-new-1", k=5)
    assert body["fallback"] and not body["degraded"]
    assert body["source"] in {"profile", "popular_region_grade", "popular_region"}
    assert len(body["items"]) == 5 and "SEOUL-ONLY-1" not in [i["lecture_id"] for i in body["items"]]


def test_unknown_unregistered_student_gets_global_popular(client: httpx.Client) -> None:
    body = _recommend(client, "never-seen-anywhere", k=4)
    assert body["fallback"] and body["source"] == "popular_global" and len(body["items"]) == 4
    assert {i["reason"] for i in body["items"]} == {"popular_overall"}


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        ({"region": "Seoul!", "grade": "h1"}, "region"),
        ({"region": "seoul", "grade": "h9"}, "grade"),
        ({"region": "seoul"}, "grade"),
        ({"region": "seoul", "grade": "h1", "name": "김철수"}, "name"),
        ({"region": "seoul", "grade": "h1", "interest_subjects": "수학"}, "interest_subjects"),
    ],
)
def test_bad_profile_is_422_naming_the_field(
    client: httpx.Client, profile: dict[str, Any], field: str
) -> None:
    r = client.put("/students/s999", json=profile, headers=PORTAL)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", field]


def test_request_id_logs_and_metrics(api: tuple[LiveServer, httpx.Client, LogLines]) -> None:
    _, client, logs = api
    r = client.get(
        "/recommendations", params={"student_id": "s003"}, headers={**PORTAL, "X-Request-ID": "trace-42"}
    )
    assert r.headers["X-Request-ID"] == "trace-42" and r.json()["request_id"] == "trace-42"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    lines = [x for x in logs.records() if x.get("request_id") == "trace-42"]
    # one line per request: the access line carries what the route adds
    (line,) = [x for x in lines if x["msg"] == "request"]
    assert line["route"] == "/recommendations" and line["status"] == 200
    assert line["student"].startswith("s_") and line["client"] == "dev-portal"
    assert line["returned"] == 10 and line["source"] == "model" and line["cached"] is False
    text = logs.text()
    # keys never logged; student ids only as a keyed hash
    for secret in ("dev-portal-key", "dev-taebaek-key", "dev-admin-key", '"s003"', '"s001"', "tb-new-1"):
        assert secret not in text

    metrics = client.get("/metrics").text
    assert (
        'learnrec_request_duration_seconds_bucket{le="0.005",method="GET",route="/recommendations",status="200"}'
        in metrics
    )
    assert (
        'learnrec_model_info{alias="champion",model="learnrec-lectures"' in metrics
        and 'version="1"' in metrics
    )
    assert "learnrec_recommendations_fallback_total{" in metrics
    assert 'learnrec_events_total{status="accepted"}' in metrics
    assert "learnrec_recommendations_degraded_total" in metrics
    assert "learnrec_model_reload_failures_total" in metrics


def test_native_thread_pools_are_capped_in_the_running_service(
    api: tuple[LiveServer, httpx.Client, LogLines], registry: Registry, redis_server: RedisServerControl
) -> None:
    """BLAS pools run one thread by default (service.native_threads), and the setting moves it.

    BLAS thread counts are process-wide, so the test process sees the running service's. (OpenMP's
    count is per thread: the service caps it through OMP_NUM_THREADS for the runtime a model loads; this
    process loaded its own OpenMP runtime earlier, when the fixtures trained the models.)
    """
    import os

    from threadpoolctl import threadpool_info

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    _, client, _ = api
    _recommend(client, "s003")  # the model has scored: every library it needs is loaded
    assert blas_threads() == {1}
    assert {os.environ[v] for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")} == {"1"}
    with running(service_settings(registry, redis_server.url, native_threads=2)) as (_, other, _logs):
        _recommend(other, "s003")
        # a pool started with one thread cannot grow in this process; libraries loaded from now on get 2
        assert blas_threads() <= {1, 2} and os.environ["OPENBLAS_NUM_THREADS"] == "2"
    with running(service_settings(registry, redis_server.url)) as (_, other, _logs):
        assert blas_threads() == {1}


def test_health_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["redis"]
    spec = client.get("/openapi.json").json()
    assert {"/recommendations", "/events", "/students/{student_id}", "/admin/reload", "/readyz"} <= set(
        spec["paths"]
    )
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    example = spec["components"]["schemas"]["RecommendationsOut"]["examples"][0]
    assert example["items"][0]["title"] == "수학 개념 완성 2강: 이차방정식"
    body = spec["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    assert (
        body["schema"]["$ref"] == "#/components/schemas/EventsIn"
        and "EventItem" in spec["components"]["schemas"]
    )
    responses = spec["paths"]["/recommendations"]["get"]["responses"]
    assert {"200", "401", "403", "422", "503"} <= set(responses)


def test_one_redis_round_trip_per_recommendation(
    client: httpx.Client, redis_server: RedisServerControl
) -> None:
    """Regression guard: a computed answer reads the student in one pipeline and nothing else; a
    repeated request is answered from the answer cache without Redis.

    Exposures are written by a background batcher (EVALSHA of a script of XADDs, off the request
    path), so they are left out of the count, as are the probe's own INFO calls and the key-change
    listener's health PINGs.
    """

    def reads() -> int:
        stats = probe.info("commandstats")
        ignored = ("cmdstat_info", "cmdstat_xadd", "cmdstat_evalsha", "cmdstat_script", "cmdstat_ping")
        return sum(int(v["calls"]) for k, v in stats.items() if k not in ignored)

    _recommend(client, "s005")  # warm the connection (a new one sends CLIENT SETINFO)
    probe = redis_server.client()
    try:
        before = reads()
        first = _recommend(client, "s005", k=7)  # a k no other test asks: computed
        middle = reads()
        again = _recommend(client, "s005", k=7)
        after = reads()
    finally:
        probe.close()
    # GET profile, HGETALL history, LRANGE recent, GET model state: one pipeline
    assert middle - before == 4
    assert after == middle
    assert again["items"] == first["items"] and again["request_id"] != first["request_id"]


# -- issue 11: bad input found by an outside tester ---------------------------------------------------------


def _stream_ids(redis_server: RedisServerControl) -> list[bytes]:
    from features import keys

    probe = redis_server.client()
    try:
        return [fields[b"event_id"] for _, fields in probe.xrange(keys.EVENTS_STREAM)]
    finally:
        probe.close()


def test_a_time_with_no_utc_equivalent_is_rejected_and_the_rest_of_the_batch_stored(
    client: httpx.Client, redis_server: RedisServerControl
) -> None:
    """Regression (issue 11, defect 1): `"occurred_at": "0001-01-01T00:00:00+14:00"` overflowed on the
    conversion to UTC: a 500, and the good items of the same batch were not stored."""
    batch = [
        _event("utc-1", "s011", "KOR-D-1", "enrol"),
        _event("utc-2", "s011", "KOR-D-2", "enrol", occurred_at="0001-01-01T00:00:00+14:00"),
        _event("utc-3", "s011", "KOR-D-3", "enrol", occurred_at="9999-12-31T23:30:00-14:00"),
        _event("utc-4", "s011", "KOR-D-2", "enrol", occurred_at="0001-01-01T00:00:00-01:00"),  # year 1 UTC
    ]
    r = client.post("/events", json={"events": batch}, headers=PORTAL)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["status"] for i in items] == ["accepted", "rejected", "rejected", "accepted"]
    assert items[1]["errors"][0]["field"] == "occurred_at"
    assert "no UTC equivalent" in items[1]["errors"][0]["message"]
    assert {b"utc-1", b"utc-4"} <= set(_stream_ids(redis_server))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"occurred_at": 0}, "occurred_at"),  # was stored as 1970-01-01
        ({"occurred_at": 1756700000.5}, "occurred_at"),
        ({"progress": False}, "progress"),
        ({"progress": "0.5"}, "progress"),
    ],
)
def test_loosely_typed_values_are_rejected_not_coerced(
    client: httpx.Client, extra: dict[str, Any], field: str
) -> None:
    """Regression (issue 11, defect 7): `"occurred_at": 0` was stored as 1970-01-01, and `"progress":
    false` and `"0.5"` were accepted: a number is a number and a time is ISO 8601 text."""
    event = _event(f"loose-{field}-{extra[field]!s}", "s012", "KOR-D-1", "progress", progress=0.5)
    r = client.post("/events", json={"events": [{**event, **extra}]}, headers=PORTAL)
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["status"] == "rejected" and [e["field"] for e in item["errors"]] == [field]
    # a whole number is still a number
    r = client.post(
        "/events", json={"events": [_event("loose-int", "s012", "KOR-D-1", "progress", progress=1)]},
        headers=PORTAL,
    )  # fmt: skip
    assert r.json()["items"][0]["status"] in {"accepted", "duplicate"}


def test_unknown_region_is_refused_and_a_configured_one_accepted(
    registry: Registry, redis_server: RedisServerControl
) -> None:
    """Regression (issue 11, defect 8): `PUT /students/{id}` accepted an unknown region (`"mars"`). A
    region is known when it is configured (LEARNREC_SERVICE__REGIONS), a key is scoped to it, or a
    serving model's catalogue has it; a new partner the model never saw is added by configuration."""
    from features.schemas import SEOUL_LEARN_REGIONS
    from features.settings import DEFAULT_REGIONS

    assert DEFAULT_REGIONS == SEOUL_LEARN_REGIONS
    settings = service_settings(registry, redis_server.url, regions=(*DEFAULT_REGIONS, "gangneung"))
    with running(settings) as (_, client, _logs):
        r = client.put("/students/mars-1", json={"region": "mars", "grade": "h1"}, headers=PORTAL)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "region"] and "unknown region 'mars'" in detail["msg"]
        assert client.get("/students/mars-1", headers=PORTAL).status_code == 404  # nothing stored
        spec = client.get("/openapi.json").json()
        enum = spec["components"]["schemas"]["StudentIn"]["properties"]["region"]["enum"]
        assert {"seoul", "taebaek", "gangneung"} <= set(enum) and "mars" not in enum
        # a new partner region the model never saw: no 500, only lectures licensed everywhere
        r = client.put("/students/gg-1", json={"region": "gangneung", "grade": "oos"}, headers=PORTAL)
        assert r.status_code == 200
        body = answer(client.get("/recommendations", params={"student_id": "gg-1", "k": 5}, headers=PORTAL))
        assert body["fallback"] and "SEOUL-ONLY-1" not in [i["lecture_id"] for i in body["items"]]


def test_the_openapi_document_says_what_the_server_enforces(client: httpx.Client) -> None:
    """Regression (issue 11, defect 9): `subject` had no enum but unknown subjects got 422; extra
    top-level keys of `POST /events` got 422 though the schema allowed them; OPTIONS on
    `/students/{id}` listed only PUT."""
    spec = client.get("/openapi.json").json()
    params = spec["paths"]["/recommendations"]["get"]["parameters"]
    subjects = next(p for p in params if p["name"] == "subject")["schema"]["enum"]
    assert set(subjects) == {"수학", "영어", "과학", "국어", "사회", "한국사"}
    assert _recommend(client, "s002", subject=subjects[0])["items"] is not None
    r = client.get("/recommendations", params={"student_id": "s002", "subject": "연금술"}, headers=PORTAL)
    assert r.status_code == 422 and "연금술" in r.json()["detail"][0]["msg"]

    assert spec["components"]["schemas"]["EventsIn"]["additionalProperties"] is False
    r = client.post(
        "/events", json={"events": [_event("x9", "s001", "KOR-D-1", "enrol")], "x": 1}, headers=PORTAL
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "x"]

    r = client.options("/students/s001", headers=PORTAL)
    assert r.status_code == 204 and r.headers["allow"] == "GET, PUT, OPTIONS"
    r = client.delete("/students/s001", headers=PORTAL)
    assert r.status_code == 405 and r.headers["allow"] == "GET, PUT"
    assert "GET, PUT" in r.json()["detail"]
    r = client.options("/events", headers=PORTAL)
    assert r.status_code == 204 and r.headers["allow"] == "POST, OPTIONS"


def test_a_deeply_nested_body_is_named_as_such(client: httpx.Client) -> None:
    """Regression (issue 11, defect 10): a 10,000-deep JSON body got "the body is not UTF-8 encoded
    JSON"; the message now says what is wrong."""
    deep = b"[" * 10_000 + b"]" * 10_000
    for path, method in (("/events", "POST"), ("/students/s001", "PUT")):
        r = client.request(method, path, content=deep, headers={**PORTAL, "content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert "nests JSON too deeply" in r.json()["detail"][0]["msg"]
    r = client.post(
        "/events", content=b'{"events": "\xff"}', headers={**PORTAL, "content-type": "application/json"}
    )
    assert r.status_code == 422 and "not UTF-8" in r.json()["detail"][0]["msg"]
