"""Which students' keys changed, as Redis reports them: server-assisted invalidation (CLIENT TRACKING).

A process that keeps answers computed from a student's keys (the service's answer cache) must forget
them as soon as any client writes one of those keys: this service's ``POST /events``, another instance's,
``learnrec features seed`` or ``materialize``, or an operator with redis-cli. Rather than trusting every
writer to announce its writes, `KeyChangeListener` asks Redis itself. One dedicated RESP3 connection turns
on tracking in broadcasting mode for the two prefixes answers depend on::

    CLIENT TRACKING ON BCAST PREFIX lr:{s: PREFIX lr:active:

From then on Redis pushes ``invalidate [key ...]`` for every key written under them, by any client; a
``FLUSHDB``/``FLUSHALL`` arrives as ``invalidate nil``. The listener thread turns each message into calls
on a `ChangeSink`: the students whose keys changed, or "everything" (a flush, a version pointer moved).

The sink can only trust what it holds while the connection is up: whatever happens while it is down goes
unreported. So the sink is told `live(False)` the moment the connection fails or a health check (PING
every `PING_INTERVAL_SECONDS` while idle) goes unanswered, and `live(True)` only once tracking is on again
on a fresh connection; a sink forgets everything on both transitions. Broadcasting mode keeps no
per-key state on the server, so it costs Redis nothing per read; the price is one message per write under
the prefixes, which a bulk load (seeding, materialising) turns into a burst the thread drains.

On Redis Cluster a key is written on the primary that holds its slot, and tracking reports only the
writes of the server it is on: `ClusterKeyChangeListener` keeps one such connection per primary (the same
prefixes) and follows the topology. It asks a live node for ``CLUSTER SLOTS`` every `TOPOLOGY_SECONDS`;
when the primaries change (a failover, a resharding to a new node) it drops the old primaries'
connections and opens one to each new primary. The sink is live only while every current primary's
connection is: a primary that dies breaks its connection at once, so the sink goes not-live (and forgets
everything) before the replica is even elected, and live again once the new primary's tracking is on.
A failover where the old primary stays up (``CLUSTER FAILOVER``, an operator's) leaves a window of up to
`TOPOLOGY_SECONDS` in which writes on the new primary go unreported; a crash leaves none.
`listener_for` picks the listener a client needs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Protocol

from features import keys

logger = logging.getLogger("learnrec.features.key_changes")

#: Health check of an idle tracking connection: PING this often, and give up on it when PONG is late.
PING_INTERVAL_SECONDS = 1.0
PING_TIMEOUT_SECONDS = 2.0
#: Pause before reconnecting after the connection failed.
RECONNECT_PAUSE_SECONDS = 0.5
#: How often `ClusterKeyChangeListener` asks the cluster which nodes are its primaries.
TOPOLOGY_SECONDS = 0.5


class ChangeSink(Protocol):
    """What the listener reports to (the service's answer cache)."""

    def invalidate(self, student_ids: list[str]) -> None: ...

    def clear(self) -> None: ...

    def live(self, up: bool) -> None: ...


def listener_for(client: Any, sink: ChangeSink) -> KeyChangeListener | ClusterKeyChangeListener:
    """The listener `client` needs (not started): one connection to a single Redis, or one per primary."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        return ClusterKeyChangeListener(client, sink)
    return KeyChangeListener(client, sink)


class KeyChangeListener:
    """A daemon thread reporting writes under the student and active-version prefixes to `sink`.

    Args:
        client: the ``redis.Redis`` client whose connection settings (URL, socket, password) to use.
        sink: told which students changed, when to forget everything, and whether reports flow (`live`).
        prefixes: key prefixes to track (default: every student key and every active-version pointer).
        address: (host, port) to connect to instead of the client's own (a cluster's primary).
    """

    def __init__(
        self,
        client: Any,
        sink: ChangeSink,
        *,
        prefixes: tuple[bytes, ...] = (keys.STUDENT_PREFIX, keys.ACTIVE_PREFIX),
        address: tuple[str, int] | None = None,
    ) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = {
            **pool.connection_kwargs,
            "protocol": 3,  # invalidations arrive as push messages on this same connection
            "socket_timeout": PING_TIMEOUT_SECONDS,
            "retry": None,
        }
        if address is not None:
            self._connection_kwargs.update(host=address[0], port=address[1])
        self._sink = sink
        self._prefixes = prefixes
        self._stop = threading.Event()
        name = "learnrec-key-changes" + (f"-{address[1]}" if address else "")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._connection: Any = None
        #: True while tracking is on and reports flow.
        self.up = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (it ends within about `PING_INTERVAL_SECONDS`) without waiting for it."""
        self._stop.set()

    def close(self) -> None:
        """Stop the thread (within about `PING_INTERVAL_SECONDS`) and tell the sink reports stopped."""
        self._stop.set()
        self._thread.join(timeout=PING_INTERVAL_SECONDS + PING_TIMEOUT_SECONDS + 1.0)
        self._set_up(False)

    # -- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        from redis.exceptions import RedisError

        failures = 0
        while not self._stop.is_set():
            try:
                self._track()
            except (RedisError, OSError) as exc:
                if self.up or failures == 0:
                    logger.warning(
                        "key-change tracking lost; cached answers are bypassed until it is back",
                        extra={"error": repr(exc)},
                    )
                failures += 1
            except Exception:  # a bug here must not end the thread silently
                logger.exception("key-change listener crashed; restarting it")
                failures += 1
            finally:
                self._set_up(False)
                self._disconnect()
            self._stop.wait(RECONNECT_PAUSE_SECONDS)

    def _track(self) -> None:
        connection = self._connection_class(**self._connection_kwargs)
        self._connection = connection
        connection.connect()
        # the same hook redis-py's own client-side cache uses for RESP3 `invalidate` pushes
        connection._parser.set_invalidation_push_handler(self._on_push)
        args: list[Any] = ["CLIENT", "TRACKING", "ON", "BCAST"]
        for prefix in self._prefixes:
            args += ["PREFIX", prefix]
        connection.send_command(*args)
        reply = connection.read_response()
        if reply not in (b"OK", "OK"):
            raise OSError(f"CLIENT TRACKING refused: {reply!r}")
        self._set_up(True)
        while not self._stop.is_set():
            if connection.can_read(timeout=PING_INTERVAL_SECONDS):
                connection.read_response(push_request=True)  # pushes go to `_on_push`
                continue
            connection.send_command("PING")
            # pushes that were already on the way are handled first; then PONG must come in time
            while connection.read_response(push_request=True) not in (b"PONG", "PONG"):
                pass

    def _on_push(self, message: list[Any]) -> None:
        changed = message[1] if len(message) > 1 else None
        if changed is None:  # FLUSHDB / FLUSHALL
            self._sink.clear()
            return
        students: list[str] = []
        for key in changed:
            raw = key if isinstance(key, bytes) else str(key).encode("utf-8")
            student = keys.student_of(raw)
            if student is not None:
                students.append(student)
            elif raw.startswith(keys.ACTIVE_PREFIX):
                self._sink.clear()  # a model's state namespace switched: every answer may change
                return
        if students:
            self._sink.invalidate(students)

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self._sink.live(up)
            if up:
                logger.info("key-change tracking on; cached answers in use")

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a broken socket: nothing left to do
                connection.disconnect()


class _PrimarySink:
    """What one primary's listener reports, passed on to the cluster listener's sink."""

    def __init__(self, owner: ClusterKeyChangeListener, address: tuple[str, int]) -> None:
        self._owner = owner
        self._address = address

    def invalidate(self, student_ids: list[str]) -> None:
        self._owner._sink.invalidate(student_ids)  # forgetting more than needed is always safe

    def clear(self) -> None:
        self._owner._sink.clear()

    def live(self, up: bool) -> None:
        self._owner._primary_live(self, up)


class ClusterKeyChangeListener:
    """One `KeyChangeListener` per primary of a Redis Cluster, following failovers (see the module doc).

    Args:
        client: the ``RedisCluster`` client whose connection settings to use.
        sink: told which students changed, when to forget everything, and whether reports flow from every
            primary (`live`).
        prefixes: key prefixes to track on each primary.
        topology_seconds: how often to ask the cluster for its primaries.
    """

    def __init__(
        self,
        client: Any,
        sink: ChangeSink,
        *,
        prefixes: tuple[bytes, ...] = (keys.STUDENT_PREFIX, keys.ACTIVE_PREFIX),
        topology_seconds: float = TOPOLOGY_SECONDS,
    ) -> None:
        self._template = client.get_nodes()[0].redis_connection
        self._addresses: list[tuple[str, int]] = [(n.host, int(n.port)) for n in client.get_nodes()]
        self._sink = sink
        self._prefixes = prefixes
        self._topology_seconds = topology_seconds
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, int], KeyChangeListener] = {}
        self._sinks: dict[tuple[str, int], _PrimarySink] = {}
        self._up: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learnrec-cluster-topology", daemon=True)
        #: True while tracking is on on every current primary.
        self.up = False

    @property
    def primaries(self) -> list[tuple[str, int]]:
        """The primaries tracked now."""
        with self._lock:
            return sorted(self._listeners)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop following the topology and every primary's listener; tell the sink reports stopped."""
        self._stop.set()
        self._thread.join(timeout=self._topology_seconds + PING_TIMEOUT_SECONDS + 1.0)
        with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
            self._sinks.clear()
            self._up.clear()
        for listener in listeners:
            listener.close()
        self._set_up(False)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                primaries = self._ask_primaries()
                if primaries:
                    self._follow(primaries)
            except Exception:  # a bug here must not end the thread silently
                logger.exception("cluster topology check crashed; retrying")
            self._stop.wait(self._topology_seconds)

    def _ask_primaries(self) -> set[tuple[str, int]]:
        """The slot owners as the first answering node sees them (and every node it names, remembered)."""
        from redis.exceptions import RedisError

        with self._lock:
            order = sorted(self._listeners) + [a for a in self._addresses if a not in self._listeners]
        pool = self._template.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": PING_TIMEOUT_SECONDS, "retry": None}
        for host, port in order:
            connection = pool.connection_class(**{**kwargs, "host": host, "port": port})
            try:
                connection.connect()
                connection.send_command("CLUSTER", "SLOTS")
                slots = connection.read_response()
            except (RedisError, OSError):
                continue
            finally:
                connection.disconnect()
            primaries: set[tuple[str, int]] = set()
            for row in slots:
                owner = (_text(row[2][0]) or host, int(row[2][1]))
                primaries.add(owner)
                for replica in row[3:]:
                    address = (_text(replica[0]) or host, int(replica[1]))
                    if address not in self._addresses:
                        self._addresses.append(address)
            for address in primaries:
                if address not in self._addresses:
                    self._addresses.append(address)
            return primaries
        return set()

    def _follow(self, primaries: set[tuple[str, int]]) -> None:
        with self._lock:
            gone = [a for a in self._listeners if a not in primaries]
            new = [a for a in primaries if a not in self._listeners]
            if not gone and not new:
                return
            for address in gone:
                self._listeners.pop(address).stop()  # its last reports are ignored: no longer current
                del self._sinks[address]
                self._up.discard(address)
            for address in new:
                sink = self._sinks[address] = _PrimarySink(self, address)
                self._listeners[address] = KeyChangeListener(
                    self._template, sink, prefixes=self._prefixes, address=address
                )
            self._refresh_locked()
            started = [self._listeners[a] for a in new]
        logger.info(
            "cluster primaries tracked", extra={"primaries": [f"{h}:{p}" for h, p in sorted(primaries)]}
        )
        for listener in started:
            listener.start()

    def _primary_live(self, sink: _PrimarySink, up: bool) -> None:
        address = sink._address
        with self._lock:
            if self._sinks.get(address) is not sink:
                return  # a listener already replaced (its primary failed over), however late it reports
            if up:
                self._up.add(address)
            else:
                self._up.discard(address)
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        self._set_up(bool(self._listeners) and self._up == set(self._listeners))

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self._sink.live(up)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
