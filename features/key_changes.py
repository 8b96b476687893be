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

Redis Cluster would need one such connection per primary (and to follow failovers): not done, so
`supported` says no and the service keeps its answer cache off there.
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


class ChangeSink(Protocol):
    """What the listener reports to (the service's answer cache)."""

    def invalidate(self, student_ids: list[str]) -> None: ...

    def clear(self) -> None: ...

    def live(self, up: bool) -> None: ...


def supported(client: Any) -> bool:
    """True when `client` talks to a single Redis (not a cluster), the case `KeyChangeListener` covers."""
    from redis.cluster import RedisCluster

    return not isinstance(client, RedisCluster)


class KeyChangeListener:
    """A daemon thread reporting writes under the student and active-version prefixes to `sink`.

    Args:
        client: the ``redis.Redis`` client whose connection settings (URL, socket, password) to use.
        sink: told which students changed, when to forget everything, and whether reports flow (`live`).
        prefixes: key prefixes to track (default: every student key and every active-version pointer).
    """

    def __init__(
        self,
        client: Any,
        sink: ChangeSink,
        *,
        prefixes: tuple[bytes, ...] = (keys.STUDENT_PREFIX, keys.ACTIVE_PREFIX),
    ) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = {
            **pool.connection_kwargs,
            "protocol": 3,  # invalidations arrive as push messages on this same connection
            "socket_timeout": PING_TIMEOUT_SECONDS,
            "retry": None,
        }
        self._sink = sink
        self._prefixes = prefixes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="learnrec-key-changes", daemon=True)
        self._connection: Any = None
        #: True while tracking is on and reports flow.
        self.up = False

    def start(self) -> None:
        self._thread.start()

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
