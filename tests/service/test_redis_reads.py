"""The event-loop reader (`service.redis_reads.AsyncReader`) against the real redis-server.

The service tests reach it through HTTP one request at a time; here many reads are in flight at once
(their commands share one write and one connection, replies handed out in order), and the server is
stalled under them (every waiting read times out, the next one connects again).
"""

from __future__ import annotations

import asyncio

import redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis_reads import AsyncReader
from tests.conftest import RedisServerControl


def _reader(client: redis.Redis, timeout_s: float) -> AsyncReader:
    reader = AsyncReader.for_client(client, timeout_s)
    assert reader is not None
    return reader


def test_reads_in_flight_together_share_one_write_and_each_get_their_own_replies(
    redis_client: redis.Redis,
) -> None:
    n = 200
    for i in range(n):
        redis_client.set(f"k:{i}", f"학생-{i}".encode())
        redis_client.rpush(f"l:{i}", *[str(j) for j in range(i % 5)] or ["-"])

    async def run() -> tuple[list[list[object]], int]:
        reader = _reader(redis_client, 5.0)
        await reader.execute([("GET", "k:0")])  # connected
        protocol = reader._protocol
        assert protocol is not None and protocol.transport is not None
        transport = protocol.transport
        writes = 0
        write = transport.write

        def counting(data: bytes | bytearray | memoryview) -> None:
            nonlocal writes
            writes += 1
            write(data)

        transport.write = counting  # type: ignore[method-assign]
        try:
            replies = await asyncio.gather(
                *(reader.execute([("GET", f"k:{i}"), ("LRANGE", f"l:{i}", 0, -1)]) for i in range(n))
            )
        finally:
            reader.close()
        return replies, writes

    replies, writes = asyncio.run(run())
    for i, (value, items) in enumerate(replies):
        assert value == f"학생-{i}".encode()
        assert items == ([str(j).encode() for j in range(i % 5)] or [b"-"])
    assert writes == 1  # every read started in one turn of the loop went out in one write


def test_a_stalled_server_times_out_every_waiting_read_and_the_next_read_reconnects(
    redis_client: redis.Redis, redis_server: RedisServerControl
) -> None:
    redis_client.set("k", b"v")

    async def run() -> tuple[list[BaseException | list[object]], list[object]]:
        reader = _reader(redis_client, 0.2)
        await reader.execute([("GET", "k")])
        first = reader._protocol
        with redis_server.frozen():
            stalled = await asyncio.gather(
                *(reader.execute([("GET", "k")]) for _ in range(5)), return_exceptions=True
            )
        after = await reader.execute([("GET", "k")])
        assert reader._protocol is not first  # the stuck connection was dropped
        reader.close()
        return stalled, after

    stalled, after = asyncio.run(run())
    assert all(isinstance(r, RedisTimeoutError) and "within 200 ms" in str(r) for r in stalled), stalled
    assert after == [b"v"]


def test_a_refused_command_is_an_error_of_that_read_only(redis_client: redis.Redis) -> None:
    redis_client.set("k", b"v")

    async def run() -> list[BaseException | list[object]]:
        reader = _reader(redis_client, 5.0)
        try:
            return await asyncio.gather(
                reader.execute([("LRANGE", "k", 0, -1)]),  # wrong type: Redis refuses it
                reader.execute([("GET", "k")]),
                return_exceptions=True,
            )
        finally:
            reader.close()

    refused, fine = asyncio.run(run())
    assert isinstance(refused, redis.exceptions.ResponseError) and "WRONGTYPE" in str(refused)
    assert fine == [b"v"]
