"""Feature-store reads on the event loop: one pipelined round trip per request, no worker thread.

Why: a computed answer is dominated by fixed costs, not by the ranking. Through the synchronous
redis-py client a request hops to a worker thread and back (two GIL hand-overs under load) and spends
about 120 µs of client CPU on the three-command pipeline; redis-py's asyncio client costs more still
(about 200 µs: futures, connection pool, response callbacks in Python). This reader writes the
request's commands as one pre-encoded RESP buffer on one long-lived connection and parses the replies
with hiredis (the C parser redis-py uses too): about 30 µs a request, measured on the bench machine.

Redis answers commands in the order it receives them, so one connection serves every in-flight request:
each request queues a waiter for its number of replies, and replies are handed out first in, first out.
The commands of the requests that reach their read in the same turn of the event loop go out in one
write (`_Protocol.send` queues them and writes once, at the loop's next turn): under load a request's
read costs a share of one ``send`` system call instead of one each, the largest part of its client CPU
(on loopback TCP the sender's call also runs the receiving side's network stack). The timeout is a
timer on the reply's future (`AsyncReader._wait`), not `asyncio.wait_for` and its extra future.

Failure semantics match the synchronous request-path client (`features.redis_server.connect`): a
command times out after ``redis.socket_timeout_ms`` and is retried once on a fresh connection; errors
are redis-py's exception types, so `service.deps.GuardedStore` treats both clients alike (circuit breaker,
degraded answers). A timed-out or failed connection is dropped with every request waiting on it, and the
next request connects again (the embedded server's supervisor restarts it on the same port).

Only a standalone server over TCP or a Unix socket without TLS is read this way (`AsyncReader.for_client`
says None otherwise: Redis Cluster, TLS); the service then reads through the synchronous client.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[bytes | str | int]


def encode(commands: Sequence[Command]) -> bytes:
    """The RESP encoding of commands (arrays of bulk strings), concatenated; encoded in C by hiredis."""
    return b"".join([hiredis.pack_command(tuple(command)) for command in commands])  # type: ignore[arg-type]


class _Protocol(asyncio.Protocol):
    """One connection: writes pre-encoded commands, hands replies to waiters in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        #: (future, replies expected, replies so far), in the order the commands were written
        self.waiting: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = (
            collections.deque()
        )
        self.lost = False
        #: payloads waiting for the write at the loop's next turn
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream cannot be trusted
                self.fail(RedisConnectionError("Redis sent a reply no command was waiting for"))
                return
            future, expected, replies = self.waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                self.waiting.popleft()
                if not future.done():  # a request that timed out no longer waits
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost ({exc!r})" if exc else "Redis closed"))

    def fail(self, exc: Exception) -> None:
        """Drop the connection and fail every request waiting on it."""
        self.lost = True
        self.outgoing.clear()
        waiting, self.waiting = self.waiting, collections.deque()
        for future, _, _ in waiting:
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def send(self, payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Queue `payload` for the write at the loop's next turn; the future gets its `replies`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if self.lost:
            future.set_exception(RedisConnectionError("connection to Redis lost"))
            return future
        self.waiting.append((future, replies, []))
        if not self.outgoing:
            loop.call_soon(self._write)
        self.outgoing.append(payload)
        return future

    def _write(self) -> None:
        """Write every payload queued since the last write, in order, in one call."""
        outgoing = self.outgoing
        if not outgoing or self.lost:
            return
        payload = outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)
        outgoing.clear()
        assert self.transport is not None
        self.transport.write(payload)


class AsyncReader:
    """Pipelined reads over one connection on the event loop (see the module docstring).

    Args:
        connection: redis-py connection keywords (``host``/``port`` or ``path``, ``db``, ``username``,
            ``password``), as the synchronous client's pool holds them.
        timeout_s: per request, the longest wait for the replies (and for connecting).
    """

    def __init__(self, connection: dict[str, Any], timeout_s: float) -> None:
        self._connection = connection
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    @classmethod
    def for_client(cls, client: Any, timeout_s: float) -> AsyncReader | None:
        """A reader of the server `client` (a ``redis.Redis``) talks to; None when it cannot be read this
        way (Redis Cluster, TLS, anything but a plain TCP or Unix-socket connection)."""
        from redis.connection import Connection, UnixDomainSocketConnection

        pool = getattr(client, "connection_pool", None)
        if pool is None or pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        kwargs = dict(pool.connection_kwargs)
        if kwargs.get("credential_provider") is not None:
            return None
        return cls(kwargs, timeout_s)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        kw = self._connection
        path = kw.get("path")
        try:
            if path:
                make = loop.create_unix_connection(_Protocol, path)
            else:
                host, port = kw.get("host", "localhost"), int(kw.get("port", 6379))
                make = loop.create_connection(_Protocol, host, port)
            _, protocol = await asyncio.wait_for(make, max(self.timeout_s, 0.1))
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
        hello: list[Command] = []
        if kw.get("password"):
            user = kw.get("username")
            hello.append(("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"]))
        if kw.get("db"):
            hello.append(("SELECT", int(kw["db"])))
        if hello:
            replies = await self._wait(protocol, protocol.send(encode(hello), len(hello)))
            _raise_errors(replies)
        return protocol

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self._connecting is None:  # one connection attempt, however many requests wait for it
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            protocol = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._protocol = protocol
        return protocol

    async def _wait(self, protocol: _Protocol, future: asyncio.Future[list[Any]]) -> list[Any]:
        timer = asyncio.get_running_loop().call_later(self.timeout_s, _expire, protocol, future)
        try:
            return await future
        except _Expired:
            raise RedisTimeoutError(f"Redis did not answer within {self.timeout_s * 1000:.0f} ms") from None
        finally:
            timer.cancel()

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of `commands`, sent in one write (one round trip).

        Raises:
            redis.exceptions.ConnectionError / TimeoutError: after one retry on a fresh connection.
            redis.exceptions.ResponseError: Redis refused a command.
        """
        return await self.execute_packed(encode(commands), len(commands))

    async def execute_packed(self, payload: bytes, replies: int, *, retry: bool = True) -> list[Any]:
        """`execute` of commands already RESP-encoded: `payload` holds `replies` commands. A write that
        must not be sent twice by this layer passes ``retry=False`` (its caller decides).

        Raises:
            redis.exceptions.ConnectionError / TimeoutError: the reply did not come (after one retry on a
                fresh connection unless ``retry=False``).
            redis.exceptions.ResponseError: Redis refused a command (`NoScriptError` for NOSCRIPT).
        """
        for attempt in (0, 1) if retry else (1,):
            try:
                protocol = await self._connected()
                got = await self._wait(protocol, protocol.send(payload, replies))
            except (RedisConnectionError, RedisTimeoutError):
                if attempt:
                    raise
                continue
            _raise_errors(got)
            return got
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the connection (pending requests fail)."""
        if self._protocol is not None:
            with contextlib.suppress(Exception):
                self._protocol.fail(RedisConnectionError("reader closed"))
            self._protocol = None


class _Expired(RedisTimeoutError):
    """The replies did not come in time (`AsyncReader._wait` raises it with the timeout named)."""


def _expire(protocol: _Protocol, future: asyncio.Future[list[Any]]) -> None:
    """A request's replies are late: the connection may be stuck (a stalled server), so it is dropped
    with every request waiting on it."""
    if not future.done():
        protocol.fail(_Expired("Redis did not answer in time"))


def _raise_errors(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            raise (NoScriptError if text.startswith("NOSCRIPT") else ResponseError)(text)
