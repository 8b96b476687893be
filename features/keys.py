"""Redis key layout of the feature store: pure key builders, one place for every key learnrec writes.

Every key starts with ``lr:``. All keys of one student carry the same hash tag ``{s:<student_id>}``, so in
a Redis Cluster they land in one slot: a request reads them in one pipeline from one node, and the event
script (`features.store`) updates them atomically. Ids are encoded as UTF-8 (Korean ids are fine).

========================================  ======  ===========================================================
key                                       type    value
========================================  ======  ===========================================================
``lr:{s:<student_id>}:profile``           string  JSON object: region, grade, school_level, target_exam,
                                                  interest_subjects (UTF-8, no TTL)
``lr:{s:<student_id>}:hist``              hash    lecture_id -> interaction weight as decimal text
                                                  (complete 1.0, progress 0.3 + 0.5 p, enrol 0.25, drop 0.1;
                                                  the weights of `features.matrices`)
``lr:{s:<student_id>}:pairs``             hash    lecture_id -> ``"<max stage>|<last event µs>|<drop 0/1>"``:
                                                  what the event script needs to recompute a weight exactly as
                                                  the batch pipeline does when events arrive out of order
``lr:{s:<student_id>}:recent``            list    lecture ids the student enrolled in, oldest first, no
                                                  duplicates (a re-enrolment moves to the end), at most
                                                  ``recent_len`` (default 20)
``lr:{s:<student_id>}:m:<model>:<ver>``   string  model state of one registered model version: float32
                                                  little-endian bytes (``state_width * 4`` bytes; LightFM:
                                                  the student's embedding and bias)
``lr:{s:<student_id>}:evt:<event_id>``    string  ``"1"``: the event is applied to this student's state (the
                                                  event script's own idempotency, so running it again is
                                                  harmless); TTL `features.store.EVENT_ID_TTL_SECONDS`
``lr:active:<model>``                     string  version whose state namespace is complete and in force
                                                  (switched by `FeatureStore.materialize` after all writes)
``lr:stream:events``                      stream  every accepted event once (fields: event_id, student_id,
                                                  lecture_id, type, progress, occurred_at ISO 8601 UTC,
                                                  request_id or "")
``lr:{lr:stream:events}:id:<event_id>``   string  the event id is in the events stream:
                                                  ``"<token>|<digest>"`` (the appending call, the digest of
                                                  the event's fields), TTL
                                                  `features.store.EVENT_ID_TTL_SECONDS` (7 days, the reason
                                                  is there); its hash tag is the stream key, so it shares
                                                  the stream's slot and one script checks it and appends
                                                  (`features.streams.append_once`)
``lr:stream:exposures``                   stream  every answered recommendation (fields written by
                                                  ``features.experiments.exposure_fields``)
========================================  ======  ===========================================================

**Shards.** One stream lives on one node, so on a cluster it caps the write rate of events (and exposures)
at what one primary takes. With ``redis.stream_shards`` = N > 1 each stream is N streams,
``lr:stream:events:<k>.<j>`` for k = 0 .. N-1 (`stream_shards`), each hashed whole; j is the smallest
number that puts shard k's slot in the k-th of N equal slot ranges, so with slots split evenly among the
primaries (as `features.cluster_local` does) each primary holds N / primaries shards (plain ``:<k>`` names
put four of six event shards on one of three primaries). A student's records always go to shard
``crc32(student_id) % N`` (`shard_of`). An event's id marker carries its shard's key as hash tag, so a
retried event meets its marker in the shard it went to the first time: exactly once per event id holds as
long as N stays the same (it is fixed per deployment). With N = 1 the names are the unsharded ones above.

Every key of a student starts with `STUDENT_PREFIX` and every version pointer with `ACTIVE_PREFIX`: the
service's answer cache asks Redis to report writes under these two prefixes (`features.key_changes`), and
`student_of` turns a reported key back into its student.

The two streams are read by consumer groups (`features.streams.export_stream`, group ``export`` by default)
that acknowledge an entry only after it is in an fsynced Parquet file. Model and version names are
restricted to ``[A-Za-z0-9_.-]`` so a version namespace can be matched by a ``SCAN`` pattern without
ambiguity.
"""

from __future__ import annotations

import functools
import re

PREFIX = b"lr"
#: The start of every key of one student (``lr:{s:``), and of every active-version pointer.
STUDENT_PREFIX = PREFIX + b":{s:"
ACTIVE_PREFIX = PREFIX + b":active:"
#: The ends of a student's keys after ``lr:{s:<id>}:`` (`profile`, `history`, `recent`; the service's
#: read, `features.store.FeatureStore.read_payload`, writes them into its RESP template).
PROFILE_KEY, HISTORY_KEY, RECENT_KEY = b"profile", b"hist", b"recent"
EVENTS_STREAM = b"lr:stream:events"
EXPOSURES_STREAM = b"lr:stream:exposures"
#: Stream names accepted by the CLI -> stream key.
STREAMS: dict[str, bytes] = {"events": EVENTS_STREAM, "exposures": EXPOSURES_STREAM}

#: Most shards per stream.
MAX_SHARDS = 1024

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _text(value: str, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value.encode("utf-8")


def check_name(value: str, what: str) -> bytes:
    """Encode a model name, version or stream name, refusing characters that would break key patterns.

    Args:
        value: the name.
        what: what it is, for the error message ("model name", "version").

    Returns:
        The UTF-8 bytes of `value`.

    Raises:
        ValueError: `value` is empty or holds a character outside ``[A-Za-z0-9_.-]``.
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"{what} {value!r} is not allowed: use letters, digits, '_', '.', '-' only")
    return value.encode("ascii")


def student_tag(student_id: str) -> bytes:
    """The hash tag ``{s:<student_id>}`` shared by all keys of one student.

    Args:
        student_id: the student's opaque id.

    Returns:
        The tag bytes, braces included.
    """
    return b"{s:" + _text(student_id, "student_id") + b"}"


def _student_key(student_id: str, suffix: bytes) -> bytes:
    return PREFIX + b":" + student_tag(student_id) + b":" + suffix


def student_of(key: bytes) -> str | None:
    """The student a key belongs to (the inverse of the student key builders), None for other keys.

    Args:
        key: a Redis key, e.g. ``lr:{s:s000123}:hist``.

    Returns:
        The student id (``s000123``), or None when `key` is not a student's key.
    """
    if not key.startswith(STUDENT_PREFIX):
        return None
    end = key.find(b"}", len(STUDENT_PREFIX))
    if end <= len(STUDENT_PREFIX):
        return None
    try:
        return key[len(STUDENT_PREFIX) : end].decode("utf-8")
    except UnicodeDecodeError:
        return None


def profile(student_id: str) -> bytes:
    """Key of the student's profile (JSON string).

    Args:
        student_id: the student's id.

    Returns:
        ``lr:{s:<student_id>}:profile``.
    """
    return _student_key(student_id, PROFILE_KEY)


def history(student_id: str) -> bytes:
    """Key of the student's interaction weights (hash lecture_id -> weight).

    Args:
        student_id: the student's id.

    Returns:
        ``lr:{s:<student_id>}:hist``.
    """
    return _student_key(student_id, HISTORY_KEY)


def pairs(student_id: str) -> bytes:
    """Key of the per-lecture aggregates the event script keeps (hash lecture_id -> "stage|µs|drop").

    Args:
        student_id: the student's id.

    Returns:
        ``lr:{s:<student_id>}:pairs``.
    """
    return _student_key(student_id, b"pairs")


def recent(student_id: str) -> bytes:
    """Key of the student's recent enrolments (list, oldest first).

    Args:
        student_id: the student's id.

    Returns:
        ``lr:{s:<student_id>}:recent``.
    """
    return _student_key(student_id, RECENT_KEY)


def model_state(student_id: str, model_name: str, version: str) -> bytes:
    """Key of the student's state under one model version's namespace (float32 bytes).

    Args:
        student_id: the student's id.
        model_name: registered model name.
        version: model version.

    Returns:
        ``lr:{s:<student_id>}:m:<model>:<version>``.
    """
    return _student_key(student_id, model_state_suffix(model_name, version)[1:])


@functools.lru_cache(maxsize=256)
def model_state_suffix(model_name: str, version: str) -> bytes:
    """The common end of all state keys of one model version (``:m:<model>:<version>``).

    Args:
        model_name: registered model name.
        version: model version.

    Returns:
        The suffix bytes (kept for the last 256 versions asked: every computed answer names its
        model's state key).
    """
    return b":m:" + check_name(model_name, "model name") + b":" + check_name(version, "version")


def model_state_pattern(model_name: str) -> bytes:
    """``SCAN MATCH`` pattern of the state keys of every version of one model.

    Args:
        model_name: registered model name.

    Returns:
        ``lr:{s:*}:m:<model>:*``.
    """
    return PREFIX + b":{s:*}:m:" + check_name(model_name, "model name") + b":*"


def event_marker(student_id: str, event_id: str) -> bytes:
    """Key of the idempotency marker of one event (same slot as the student's state).

    Args:
        student_id: the student the event belongs to.
        event_id: the event's unique id.

    Returns:
        ``lr:{s:<student_id>}:evt:<event_id>``.
    """
    return _student_key(student_id, b"evt:" + _text(event_id, "event_id"))


def stream_marker(stream: bytes, record_id: str) -> bytes:
    """Key of the marker saying a record id is in a stream (global: one per id, whatever the student).

    The stream key is its hash tag (``{lr:stream:events}``), so in a Redis Cluster the marker lives in
    the stream's slot (a key without braces hashes whole) and one script can check it and append.

    Args:
        stream: the stream key (`EVENTS_STREAM`).
        record_id: the record's unique id (an event id).

    Returns:
        ``lr:{<stream>}:id:<record_id>``.
    """
    return PREFIX + b":{" + stream + b"}:id:" + _text(record_id, "record id")


def active_version(model_name: str) -> bytes:
    """Key of the pointer to the model version whose state is complete and in force.

    Args:
        model_name: registered model name.

    Returns:
        ``lr:active:<model>``.
    """
    return ACTIVE_PREFIX + check_name(model_name, "model name")


def stream(name: str) -> bytes:
    """Stream key of a stream name accepted by the CLI.

    Args:
        name: "events" or "exposures".

    Returns:
        The stream key.

    Raises:
        ValueError: unknown stream name.
    """
    try:
        return STREAMS[name]
    except KeyError:
        raise ValueError(f"unknown stream {name!r}: expected one of {', '.join(STREAMS)}") from None


def stream_shards(stream_key: bytes, shards: int) -> list[bytes]:
    """The keys of a stream's shards: the stream itself when `shards` is 1, else ``<stream>:<k>``.

    Args:
        stream_key: the stream key (`EVENTS_STREAM`, `EXPOSURES_STREAM`).
        shards: how many shards (``redis.stream_shards``).

    Returns:
        One key per shard, shard 0 first.

    Raises:
        ValueError: `shards` outside 1..`MAX_SHARDS`.
    """
    if not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"stream shards must be an integer in 1..{MAX_SHARDS}, got {shards!r}")
    if shards == 1:
        return [stream_key]
    return list(_spread(stream_key, shards))


@functools.lru_cache(maxsize=64)
def _spread(stream_key: bytes, shards: int) -> tuple[bytes, ...]:
    from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

    out = []
    for k in range(shards):
        lo, hi = k * REDIS_CLUSTER_HASH_SLOTS // shards, (k + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        j = 0
        while not lo <= key_slot(stream_key + b":%d.%d" % (k, j)) < hi:
            j += 1
        out.append(stream_key + b":%d.%d" % (k, j))
    return tuple(out)


def shard_of(student_id: str, shards: int) -> int:
    """The shard a student's records go to: ``crc32(UTF-8 id) % shards`` (stable across processes).

    Args:
        student_id: the student.
        shards: how many shards.

    Returns:
        0 .. shards - 1.
    """
    import zlib

    return zlib.crc32(_text(student_id, "student_id")) % shards
