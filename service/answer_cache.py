"""Answers already computed, kept in process until Redis reports that the student's keys changed.

Why: ranking one student costs 1-2 ms of CPU (the Redis round trip, the worker-thread hop, scoring every
lecture), while the answer only changes when the student's keys change (an event, a profile, a new state
namespace) or when the models or experiments serving change. The portal asks for the same student's list
on every page view. A repeat request is answered from here, on the event loop, without Redis or scoring.

Why it is safe: `features.key_changes.KeyChangeListener` has Redis push the name of every key written
under the student prefixes, by any client, and the cache drops that student's answers; writes through
this process are dropped at once as well (`invalidate` after the write). Entries are used only while that
report stream is live: `live(False)` (connection lost, Redis down) empties the cache and turns it off, and
`live(True)` empties it again, since what changed meanwhile went unreported.

A race the cache closes: a request misses, reads Redis, and while it ranks, an event changes the student
and its invalidation arrives. Storing the answer then would keep a stale answer for good. So a request
takes a `ticket` before it reads Redis and `put` refuses the answer when the student was invalidated (or
the cache emptied or the serving models changed) after the ticket. The last invalidation of each student is
remembered in a bounded table; a ticket older than what that table forgot is refused too.

Entries are keyed by student, then by what else the answer depends on: k, subject, the key's single
region (it decides unregistered students' region), as one string (`asked`), and the serving models and
experiments (`serving`: any change empties the cache). Degraded answers and answers where the model
failed are never stored. A student's entry keeps the answers to the last few shapes asked
(``service.answer_cache_shapes``; the portal asks a student for a few, a page's k and maybe a subject), so
that memory is bounded and a `put`, which writes the entry again, costs the same whatever the student was
asked for before. Without that bound an entry grew with every shape a student was asked for: memory beyond
the capacity's, and a put that marshalled every answer of the entry again.
"""

from __future__ import annotations

import marshal
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

from features.settings import ServiceSettings

#: The last invalidation of this many students is remembered against in-flight misses.
TOMBSTONES_PER_ENTRY = 2


class Answer(NamedTuple):
    """One computed answer, with what every request that serves it needs again.

    Only strings, bytes, numbers and None, so that the cache can keep it marshalled (`AnswerCache`).

    `tail` is the JSON body after its first field: ``"request_id"`` comes first, the rest (student id,
    model, items...) is the same for every request served from this answer.
    """

    #: `Ranked.source`, `Ranked.fallback` and `Ranked.model_error` of the list (counted per answer)
    source: str
    fallback: bool
    model_error: str | None
    degraded: bool
    #: the student's registered region (None: no profile), for the key's region check
    region: str | None
    #: the student's experiment and variant (None: the champion answered, no experiment)
    experiment: str | None
    variant: str | None
    #: the student's variant model was not loaded: the champion answered (counted per answer)
    variant_fell_back: bool
    tail: bytes
    #: exposure stream fields but ``request_id`` and ``shown_at``, packed (`features.streams.pack_pairs`)
    exposure: bytes
    #: the student's keyed hash (`service.logs.StudentHasher`: no student id in clear in the logs)
    student_hash: str
    #: lectures asked for and returned, and the model version that ranked them
    k: int
    returned: int
    model_version: str

    @property
    def cacheable(self) -> bool:
        return not self.degraded and not self.model_error

    def body(self, request_id: str) -> bytes:
        """The JSON body for one request. Request ids are tokens of ``[A-Za-z0-9._:-]``: no escaping."""
        return b'{"request_id":"' + request_id.encode("ascii") + b'",' + self.tail

    def log_fields(self, cached: bool) -> dict[str, str | int | bool | None]:
        """The fields the answer adds to its request's access log line."""
        return {
            "student": self.student_hash,
            "k": self.k,
            "returned": self.returned,
            "source": self.source,
            "fallback": self.fallback,
            "degraded": self.degraded,
            "model_version": self.model_version,
            "experiment": self.experiment,
            "variant": self.variant,
            "cached": cached,
        }


#: marshal's format 2: no table of shared objects (nothing in an entry is shared), loads twice as fast
_MARSHAL_VERSION = 2
#: One cached answer's length in a student's entry: what was asked, then the answer's fields.
_STRIDE = 1 + len(Answer._fields)


class AnswerCache:
    """Answers by student (least recently used first out), invalidated by key changes.

    Thread-safe: hits are read on the event loop, answers put from worker threads, invalidations come from
    the listener thread.

    Each student's entry is bytes: a flat tuple, marshalled, holding for each request shape asked its
    `asked` string followed by the answer's fields (`_STRIDE` values in all), oldest put first, at most
    `shapes` of them. Bytes hold nothing the garbage collector walks.
    Kept as objects (an `Answer`, a dict per student), every computed answer left two tracked objects
    behind, and the collector's passes over the ~40,000 of them the cache and the record cache held were
    the p99 of computed answers at half the maximum (young passes of 3-17 ms, older ones of 60-235 ms);
    kept as tuples, young passes walked every element of every entry made since the last pass (20-80 ms;
    `bench/results/ANALYSIS.md`). A hit unmarshals its entry (~1 us).

    Args:
        capacity: most students kept (0 turns the cache off).
        shapes: most answers kept per student (one per `asked`).
    """

    def __init__(
        self, capacity: int, shapes: int = ServiceSettings.model_fields["answer_cache_shapes"].default
    ) -> None:
        self.capacity = capacity
        self.shapes = shapes
        self._students: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._live = False
        self._serving: tuple[Any, ...] = ()
        #: bumped by every invalidation; tickets are values of it
        self._seq = 0
        #: student -> seq of their last invalidation (bounded: the oldest are forgotten)
        self._tombstones: OrderedDict[str, int] = OrderedDict()
        #: tickets at or below this may predate a forgotten tombstone
        self._forgotten = 0
        #: bumped when everything is dropped: older tickets are refused
        self._epoch = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._live and self.capacity > 0

    def __len__(self) -> int:
        return len(self._students)

    # -- requests -----------------------------------------------------------------------------------

    def get(self, student_id: str, asked: str, serving: tuple[Any, ...]) -> Answer | None:
        """The stored answer, or None (counted as a miss when the cache is on).

        `asked` is what the answer depends on in the request besides the student, as one string (the route
        writes k, the key's single region and the subject); `serving`, the serving objects.
        """
        if not self._live or self.capacity <= 0:
            return None
        with self._lock:
            if not _same(serving, self._serving):
                self._drop_all()
                self._serving = serving
            entry = _entry(self._students.get(student_id))
            at = _find(entry, asked)
            if at < 0:
                self.misses += 1
                return None
            self._students.move_to_end(student_id)
            self.hits += 1
            return Answer._make(entry[at + 1 : at + _STRIDE])

    def ticket(self) -> tuple[int, int]:
        """Taken before reading Redis for an answer that may be `put`."""
        return self._epoch, self._seq

    def put(
        self,
        student_id: str,
        asked: str,
        serving: tuple[Any, ...],
        answer: Answer,
        ticket: tuple[int, int],
    ) -> bool:
        """Store `answer` unless something it was computed from may have changed since `ticket`."""
        if not answer.cacheable or not self._live or self.capacity <= 0:
            return False
        epoch, seq = ticket
        with self._lock:
            if epoch != self._epoch or not _same(serving, self._serving) or seq < self._forgotten:
                return False
            if self._tombstones.get(student_id, -1) > seq:  # invalidated after the ticket
                return False
            entry = _entry(self._students.get(student_id))
            at = _find(entry, asked)
            if at >= 0:  # replaced
                entry = entry[:at] + entry[at + _STRIDE :]
            elif len(entry) >= self.shapes * _STRIDE:  # full: the shape put longest ago goes
                entry = entry[_STRIDE:]
            self._students[student_id] = marshal.dumps((*entry, asked, *answer), _MARSHAL_VERSION)
            self._students.move_to_end(student_id)
            while len(self._students) > self.capacity:
                self._students.popitem(last=False)
            return True

    # -- what Redis reports -------------------------------------------------------------------------

    def invalidate(self, student_ids: list[str]) -> None:
        """Drop these students' answers: their keys changed."""
        with self._lock:
            self._seq += 1
            for sid in student_ids:
                self._students.pop(sid, None)
                self._tombstones[sid] = self._seq
                self._tombstones.move_to_end(sid)
            limit = max(self.capacity, 1) * TOMBSTONES_PER_ENTRY
            while len(self._tombstones) > limit:
                _, forgotten = self._tombstones.popitem(last=False)
                self._forgotten = max(self._forgotten, forgotten)

    def clear(self) -> None:
        """Drop every answer (a flush, a version pointer switched)."""
        with self._lock:
            self._drop_all()

    def live(self, up: bool) -> None:
        """Whether key changes are being reported; either way, what is held can no longer be trusted."""
        with self._lock:
            self._drop_all()
            self._live = up

    def _drop_all(self) -> None:
        self._students.clear()
        self._tombstones.clear()
        self._epoch += 1


def _entry(packed: bytes | None) -> tuple[Any, ...]:
    """A student's entry as the flat tuple it was marshalled from (empty: none)."""
    return marshal.loads(packed) if packed is not None else ()


def _find(entry: tuple[Any, ...], asked: str) -> int:
    """Where the answer to `asked` starts in a student's entry (-1: none)."""
    for at in range(0, len(entry), _STRIDE):
        if entry[at] == asked:
            return at
    return -1


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """The same serving objects (identity: models and experiment registries are replaced, never mutated)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
