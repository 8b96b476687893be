"""`learnrec serve --workers 2`: two processes on one port, each with its own answer cache and exposure
writer, kept honest across processes by Redis's key-change reports (a real redis-server, real HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from features import keys
from features.redis_server import free_port
from tests.conftest import RedisServerControl
from tests.service.conftest import MODEL_NAME, PORTAL, Registry, answer, seed, wait_for
from tests.service.test_api import _event


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(x) for x in (task / "children").read_text().split()]
    return found


def _ids(url: str, student_id: str) -> list[str]:
    # a new connection per request: either worker may accept it
    r = httpx.get(f"{url}/recommendations", params={"student_id": student_id}, headers=PORTAL, timeout=10)
    return [item["lecture_id"] for item in answer(r)["items"]]


def test_two_workers_answer_and_drop_answers_another_worker_made_stale(
    registry: Registry, redis_server: RedisServerControl, tmp_path: Path
) -> None:
    store = seed(redis_server)
    port = free_port()
    env = {
        **os.environ,
        "LEARNREC_DATA_DIR": str(registry.root / "data"),
        "LEARNREC_REDIS__URL": redis_server.url,
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "LEARNREC_MLFLOW__REGISTERED_MODEL": MODEL_NAME,
        "LEARNREC_SERVICE__RELOAD_POLL_SECONDS": "0",
        "LEARNREC_ENV": "development",
    }
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--port", str(port), "--workers", "2",
         "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, timeout=120), (tmp_path / "serve.log").read_text()[-2000:]
        assert len(_children(proc.pid)) >= 2
        exposures_before = store.client.xlen(keys.EXPOSURES_STREAM)
        # both workers answer s001 and keep the answer (ENG-B-3 continues the series it is in)
        for _ in range(8):
            assert _ids(url, "s001")[0] == "ENG-B-3"
        events = [_event("w-1", "s001", "ENG-B-3", "enrol"), _event("w-2", "s001", "ENG-B-3", "complete")]
        r = httpx.post(f"{url}/events", json={"events": events}, headers=PORTAL, timeout=10)
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text

        def fresh_everywhere() -> bool:
            lists = [_ids(url, "s001") for _ in range(8)]
            return all("ENG-B-3" not in ids and ids[0] == "ENG-B-4" for ids in lists)

        # the worker that did not take the POST learns of it from Redis (CLIENT TRACKING), not at once
        assert wait_for(fresh_everywhere, timeout=10)
        # each worker's exposure writer flushes its own answers to the one stream
        assert wait_for(lambda: store.client.xlen(keys.EXPOSURES_STREAM) >= exposures_before + 16, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
