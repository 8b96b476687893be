"""Exposure logging off the request path: a bounded in-process queue flushed to the Redis stream in batches.

Why a background batcher: the exposure (the lectures actually shown) is only known once the answer is
ranked, after the one feature-store read of the request, so it cannot ride in that pipeline; a second
XADD round trip per request would add ~0.1-1 ms and, worse, a Redis stall would stall answers. Instead the
route appends the exposure to a bounded queue (O(1), no I/O, no lock) and the writer sends whatever has
gathered (one Redis call per 500) 50 ms after the first item arrives. The delay is what keeps the writer
cheap under load: at 5,000 answers a second it wakes 20 times a second with batches of ~250, instead of
paying a Redis call for every few answers. The exposure arrives packed (`features.streams.PackedRecord`:
its answer's fields encoded once when the answer was computed, the request id and time per request), and
the writer sends the batch's script calls joined from those bytes (`features.streams.packed_appends`).

Where the writer runs: on the service's event loop, through the request path's pipelined connection
(`start_on_loop`, `service.redis_reads.AsyncReader`), whenever the service has one (a standalone Redis);
else (Redis Cluster, TLS) in a daemon thread through the synchronous client (`start`). A thread beside a
busy event loop pays for every system call twice over: each one gives the GIL up and takes it back from
the loop, and under load the two threads traded it ~11,000 times a second (strace: futex calls of the
writer thread), ~25 µs of the writer's CPU per exposure, ~60 µs of the service's CPU per computed answer
in all (serve bench scratch service, every answer computed; exposures turned off for comparison). On the
loop the batch costs one more payload in the connection's next write and one reply.

While Redis fails, the batch is put back (ahead of newer items) and retried after a pause; what does not
fit in the queue is dropped and counted (`learnrec_exposures_total{outcome="dropped"}`): losing exposures
is preferable to holding answers or growing memory without bound. At shutdown the queue is flushed once
more, after the batch that is out (if any) has its reply: cut off, it would go back into the queue and be
written again though Redis had it. A batch is written at least once (a reply lost after Redis wrote it puts
the batch back): the A/B analysis counts each request id once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from features.streams import APPEND_SCRIPT, PackedRecord, append_packed, packed_appends
from service.metrics import Metrics

if TYPE_CHECKING:
    from service.redis_reads import AsyncReader

logger = logging.getLogger("learnrec.service.exposures")

#: After the first queued exposure, wait this long for others to join the batch.
FLUSH_INTERVAL_SECONDS = 0.05
#: Most exposures per write.
MAX_BATCH = 500
#: Most exposures held while Redis is slow or down (about 300 bytes each).
QUEUE_CAPACITY = 20_000
#: Pause before retrying after a failed flush.
RETRY_PAUSE_SECONDS = 0.5
#: At shutdown, the longest the last flushes may take.
DRAIN_SECONDS = 2.0


class ExposureWriter:
    """Queues exposures and writes them to the exposures stream: from the event loop (`start_on_loop`)
    or from one background thread (`start`).

    Args:
        client: Redis client (None when the feature store is unavailable: everything is dropped, counted).
        metrics: where written / dropped counts and the queue depth go.
        stream: stream key (default `features.keys.EXPOSURES_STREAM`).
        shards: the stream's shards (``redis.stream_shards``): each exposure goes to its student's shard,
            one write per shard of a batch.
        capacity: most exposures held in memory.
        flush_interval: batching delay after the first queued exposure.
        max_batch: most exposures per write.
    """

    def __init__(
        self,
        client: Any,
        metrics: Metrics,
        *,
        stream: bytes | None = None,
        shards: int = 1,
        capacity: int = QUEUE_CAPACITY,
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
        max_batch: int = MAX_BATCH,
    ) -> None:
        from features import keys

        self.client = client
        self.stream = stream if stream is not None else keys.EXPOSURES_STREAM
        self.streams = keys.stream_shards(self.stream, shards)
        self.capacity = capacity
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self._metrics = metrics
        self._queue: deque[PackedRecord] = deque()
        self._lock = threading.Lock()
        #: set for the first exposure of a batch: the writer's `threading.Event`, or its `asyncio.Event` on
        #: the loop (`submit` runs on the event loop's thread, where either may be set)
        self._signal: threading.Event | asyncio.Event = threading.Event()
        self._stop = False
        self._failing = False
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        #: the loop writer's batch out at Redis now (`_run_on_loop`), which `aclose` lets finish
        self._inflight: asyncio.Future[bool] | None = None
        self._reader: AsyncReader | None = None

    # -- request path ------------------------------------------------------------------------------

    def submit(self, record: PackedRecord) -> bool:
        """Queue one exposure (never blocks, never raises); False when it was dropped (queue full).

        The record is packed by its maker (`features.experiments.packed_exposure`, or
        `features.streams.pack_record` of `exposure_fields`): the writer only joins bytes.
        """
        if self.client is None:
            self._metrics.exposures.labels(outcome="dropped").inc()
            return False
        # no lock: deque appends and pops are atomic, and submits come from the event loop's one thread
        queue = self._queue
        if len(queue) >= self.capacity:
            self._metrics.exposures.labels(outcome="dropped").inc()
            return False
        queue.append(record)
        if not self._signal.is_set():  # wake the writer for the first exposure of a batch only
            self._signal.set()
        return True

    @property
    def pending(self) -> int:
        """Exposures queued and not yet written."""
        return len(self._queue)

    # -- on the event loop -------------------------------------------------------------------------

    def start_on_loop(self, reader: AsyncReader) -> None:
        """Write from the running event loop through `reader` (idempotent; instead of `start`)."""
        if self._task is None and self._thread is None and self.client is not None:
            self._reader = reader
            self._signal = asyncio.Event()
            if self._queue:
                self._signal.set()
            self._task = asyncio.get_running_loop().create_task(self._run_on_loop(reader))

    async def _run_on_loop(self, reader: AsyncReader) -> None:
        signal = self._signal
        assert isinstance(signal, asyncio.Event)
        while True:
            await signal.wait()
            await asyncio.sleep(self.flush_interval)  # let concurrent answers join this batch
            signal.clear()
            while self._queue:
                # shielded: stopping the writer (`aclose` cancels this task) must not cut off a batch that
                # is out, which Redis may have written already; queued again, it would be written twice
                self._inflight = asyncio.ensure_future(self.flush_async(reader))
                if not await asyncio.shield(self._inflight):
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
                    break
            if self._queue:
                signal.set()  # left over after a failure: go round again

    async def flush_async(self, reader: AsyncReader) -> bool:
        """`flush` through `reader` on the event loop: one batch's script calls (one per shard and chunk)
        in one write; False when Redis failed (the batch is queued again)."""
        batch = self._take()
        if not batch:
            return True
        payloads = [p for stream, part in self._by_shard(batch) for p in packed_appends(stream, part)]
        payload = b"".join(payloads)
        try:
            try:
                await reader.execute_packed(payload, len(payloads), retry=False)
            except NoScriptError:  # a new or restarted server, or SCRIPT FLUSH: nothing of it was written
                await reader.execute([("SCRIPT", "LOAD", APPEND_SCRIPT)])
                await reader.execute_packed(payload, len(payloads), retry=False)
        except Exception as exc:  # Redis down, timeout, ...: keep the batch, count what cannot be kept
            return self._done(batch, exc)
        except asyncio.CancelledError:  # stopped while the batch was out: keep it for the last flush
            self._requeue(batch)
            raise
        return self._done(batch, None)

    async def aclose(self) -> None:
        """Stop writing after a last flush of what is queued (at most `DRAIN_SECONDS`), whichever way
        the writer runs."""
        task, reader = self._task, self._reader
        if task is None or reader is None:
            await asyncio.to_thread(self.close)
            return
        self._task = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + DRAIN_SECONDS
        inflight, self._inflight = self._inflight, None
        if inflight is not None and not inflight.done():
            # its reply decides whether the batch was written or goes back to the queue for the drain
            await asyncio.wait([inflight], timeout=DRAIN_SECONDS)
        while self._queue and time.monotonic() < deadline and await self.flush_async(reader):
            pass
        self._drop_rest()

    # -- in a thread -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flushing thread (idempotent; for a client `start_on_loop` cannot use)."""
        if self._thread is None and self._task is None and self.client is not None:
            self._thread = threading.Thread(target=self._run, name="learnrec-exposures", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after a last flush of what is queued (bounded by `timeout`)."""
        self._stop = True
        self._signal.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        signal = self._signal
        assert isinstance(signal, threading.Event)
        while True:
            signal.wait()
            if self._stop:
                deadline = time.monotonic() + DRAIN_SECONDS
                while self._queue and time.monotonic() < deadline and self.flush():
                    pass
                self._drop_rest()
                return
            time.sleep(self.flush_interval)  # let concurrent answers join this batch
            signal.clear()
            while self._queue and not self._stop:
                if not self.flush():
                    time.sleep(RETRY_PAUSE_SECONDS)
                    break
            if self._queue:
                signal.set()  # left over after a failure (or stop requested): go round again

    def flush(self) -> bool:
        """Write one batch (up to `max_batch`) now; False when Redis failed (the batch is queued again)."""
        batch = self._take()
        if not batch:
            return True
        try:
            # each exposure to its student's shard: a shard that fails after others were written raises,
            # and the whole batch is queued again (at least once)
            for stream, part in self._by_shard(batch):
                append_packed(self.client, stream, part)
        except Exception as exc:  # Redis down, timeout, ...: keep the batch, count what cannot be kept
            return self._done(batch, exc)
        return self._done(batch, None)

    # -- either way --------------------------------------------------------------------------------

    def _take(self) -> list[PackedRecord]:
        with self._lock:
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
        self._metrics.exposure_queue.set(len(self._queue))
        return batch

    def _by_shard(self, batch: list[PackedRecord]) -> list[tuple[bytes, list[PackedRecord]]]:
        """The batch's exposures per stream shard (their student's), in order."""
        from features import keys

        n = len(self.streams)
        if n == 1:
            return [(self.stream, batch)]
        by_shard: dict[bytes, list[PackedRecord]] = {}
        for record in batch:
            by_shard.setdefault(self.streams[keys.shard_of(record.shard_key, n)], []).append(record)
        return list(by_shard.items())

    def _done(self, batch: list[PackedRecord], exc: Exception | None) -> bool:
        """Count a written batch (True), or keep a failed one for the next flush (False)."""
        if exc is not None:
            self._metrics.redis_errors.labels(operation="xadd_exposures").inc()
            self._requeue(batch)
            if not self._failing:
                logger.error(
                    "cannot write exposures; holding them in memory and retrying",
                    extra={"error": repr(exc), "pending": len(self._queue)},
                )
            self._failing = True
            return False
        if self._failing:
            logger.info("exposures written again", extra={"pending": len(self._queue)})
        self._failing = False
        self._metrics.exposures.labels(outcome="written").inc(len(batch))
        return True

    def _drop_rest(self) -> None:
        """At shutdown, count (and log) what Redis did not take."""
        with self._lock:
            lost = len(self._queue)
            self._queue.clear()
        if lost:
            self._metrics.exposures.labels(outcome="dropped").inc(lost)
            logger.error("exposures lost at shutdown: Redis did not take them", extra={"lost": lost})

    def _requeue(self, batch: list[PackedRecord]) -> None:
        with self._lock:
            room = self.capacity - len(self._queue)
            keep = batch[:room] if room > 0 else []
            self._queue.extendleft(reversed(keep))  # the oldest go first again, in their order
            dropped = len(batch) - len(keep)
            depth = len(self._queue)
        if dropped:
            self._metrics.exposures.labels(outcome="dropped").inc(dropped)
        self._metrics.exposure_queue.set(depth)
