"""Exposure logging off the request path: a bounded in-process queue flushed to the Redis stream in batches.

Why a background batcher: the exposure (the lectures actually shown) is only known once the answer is
ranked, after the one feature-store read of the request, so it cannot ride in that pipeline; a second
XADD round trip per request would add ~0.1-1 ms and, worse, a Redis stall would stall answers. Instead the
route appends the exposure to a bounded queue (O(1), no I/O, no lock) and one daemon thread writes
whatever has gathered (one Redis call per 500) 50 ms after the first item arrives. The delay is what keeps
the writer cheap under load: at 5,000 answers a second it wakes 20 times a second with batches of ~250,
instead of waking, taking the GIL from the event loop and paying a Redis call for every few answers.
The exposure arrives packed (`features.streams.PackedRecord`: its answer's fields encoded once when the
answer was computed, the request id and time per request), and the writer sends the batch's script call
joined from those bytes (`features.streams.append_packed`): encoding each field in the thread cost
~13 µs of CPU an exposure, and the GIL it held slowed the event loop by about as much again; packed,
the thread takes ~3 µs an exposure (serve bench, every answer computed: the service's CPU per answer
fell by ~40 µs). While Redis fails, the batch is put back (ahead of newer items) and
retried after a pause; what does not fit in the queue is dropped and counted
(`learnrec_exposures_total{outcome="dropped"}`): losing exposures is preferable to holding answers or
growing memory without bound. At shutdown the queue is flushed once more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from features.streams import PackedRecord
from service.metrics import Metrics

logger = logging.getLogger("learnrec.service.exposures")

#: After the first queued exposure, wait this long for others to join the batch.
FLUSH_INTERVAL_SECONDS = 0.05
#: Most exposures per write.
MAX_BATCH = 500
#: Most exposures held while Redis is slow or down (about 300 bytes each).
QUEUE_CAPACITY = 20_000
#: Pause before retrying after a failed flush.
RETRY_PAUSE_SECONDS = 0.5


class ExposureWriter:
    """Queues exposures and writes them to the exposures stream from one background thread.

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
        self._wake = threading.Event()
        self._stop = False
        self._failing = False
        self._thread: threading.Thread | None = None

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
        if not self._wake.is_set():  # wake the writer for the first exposure of a batch only
            self._wake.set()
        return True

    @property
    def pending(self) -> int:
        """Exposures queued and not yet written."""
        return len(self._queue)

    # -- background --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flushing thread (idempotent)."""
        if self._thread is None and self.client is not None:
            self._thread = threading.Thread(target=self._run, name="learnrec-exposures", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after a last flush of what is queued (bounded by `timeout`)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop:
                deadline = time.monotonic() + 2.0
                while self._queue and time.monotonic() < deadline and self.flush():
                    pass
                with self._lock:
                    lost = len(self._queue)
                    self._queue.clear()
                if lost:
                    self._metrics.exposures.labels(outcome="dropped").inc(lost)
                    logger.error("exposures lost at shutdown: Redis did not take them", extra={"lost": lost})
                return
            time.sleep(self.flush_interval)  # let concurrent answers join this batch
            self._wake.clear()
            while self._queue and not self._stop:
                if not self.flush():
                    time.sleep(RETRY_PAUSE_SECONDS)
                    break
            if self._queue:
                self._wake.set()  # left over after a failure (or stop requested): go round again

    def flush(self) -> bool:
        """Write one batch (up to `max_batch`) now; False when Redis failed (the batch is queued again)."""
        from features.streams import append_packed

        with self._lock:
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
        self._metrics.exposure_queue.set(len(self._queue))
        if not batch:
            return True
        try:
            if len(self.streams) == 1:
                append_packed(self.client, self.stream, batch)
            else:
                self._append_sharded(batch)
        except Exception as exc:  # Redis down, timeout, ...: keep the batch, count what cannot be kept
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

    def _append_sharded(self, batch: list[PackedRecord]) -> None:
        """Append each exposure to its student's shard. A shard that fails after others were written
        raises, and the whole batch is queued again: at least once, as exposures are (counted once per
        request id by the A/B analysis)."""
        from features import keys
        from features.streams import append_packed

        by_shard: dict[bytes, list[PackedRecord]] = {}
        n = len(self.streams)
        for record in batch:
            by_shard.setdefault(self.streams[keys.shard_of(record.shard_key, n)], []).append(record)
        for stream, part in by_shard.items():
            append_packed(self.client, stream, part)

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
