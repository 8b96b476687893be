"""The Redis feature store: per-student online state, versioned model state, idempotent event intake.

Key layout: `features.keys`. Reads of one student (or a batch) are one pipeline (`transaction=False`), so
a request costs one round trip. Events are applied per student by one Lua script whose keys all share the
student's hash tag (atomic, and legal in a Redis Cluster); the interaction weights are those of
`models.interactions` (complete 1.0 > progress 0.3 + 0.5 p > enrol 0.25; a pair whose latest event is a
drop weighs 0.1), recomputed from the furthest stage reached and the latest event so that events
arriving late or out of order give the batch pipeline's weight. Applied events go to the events stream.

Event intake is exactly-once, by construction rather than by timing, in two idempotent steps:

1. the event id decides: one script in the events stream's slot (the student's shard when the stream
   is sharded, `features.keys.stream_shards`) checks the id's marker and, if absent, XADDs the event and
   sets the marker (`features.streams.append_once`). With one shard the id is global (the same id under
   another student is the same event); with several, a marker lives in its student's shard, so an id
   reused for another student in another shard is not seen as a conflict (the same event sent again
   always meets its marker: same student, same shard). The answer depends on the marker alone: a resent
   command finds its own call's token and answers "accepted" again, a request sent again or
   concurrently answers "duplicate", a reused id with other fields "conflict". With ``replica_acks``
   the script is followed by ``WAIT`` on its connection, and a batch not acknowledged in time raises
   (503) rather than report events a failover could lose;
2. the events the stream holds (accepted now, or duplicates of the same event, in case an earlier call
   failed before this step) are applied to the students' state by the per-student script, which keeps
   its own marker per event, so applying an event again changes nothing.

A failure between the steps leaves an event in the stream but not yet in the state; the client was not
told it was stored (503: retry unchanged), and its retry completes step 2.

Size: over 600 lines because the Lua scripts and the Python that calls them must change together.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from features import keys
from features.errors import FeatureStoreError
from features.online_state import StudentRecord, aggregate_history, epoch_us, weight_text
from features.profile import StudentProfile
from models.interactions import DROP_WEIGHT, EVENT_TYPES, PROGRESS_SLOPE, RECENT_LEN, STAGE_WEIGHT

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

#: `progress(stage, done, total)` callback that long operations call as they go.
Progress = Callable[[str, int, int], None]

#: Students per pipeline in bulk writes (bounded memory on both sides, few round trips).
WRITE_CHUNK = 2_000
#: Keys per SCAN step and per UNLINK when removing old versions (1M old keys: ~10 s).
SCAN_COUNT = 10_000
#: How long an event id is remembered (its two markers), counted from when the event was accepted. A
#: marker only has to outlive every resend of its event: redis-py resends a timed-out command within
#: milliseconds, a client retries a 503 within minutes, and the portal's outbox replays what it could not
#: deliver after an outage of its own, within days. A week covers all of these; beyond it a marker only
#: costs memory, about 300 bytes an event for the two (measured on redis-server 6.2): 35,000 events a
#: day (a fifth of 35,000 students active, five events each) keep about 75 MB. An event resent later than
#: this is stored again.
EVENT_ID_TTL_SECONDS = 7 * 86_400
#: What `FeatureStore.apply_events` says of each event: stored now; stored before (the same event sent
#: again, by a retry or concurrently); or its id already names another event (nothing stored).
EventOutcome = Literal["accepted", "duplicate", "conflict"]

# One script call per student: KEYS = hist, pairs, recent, then one marker per event of that student.
# ARGV = recent_len, ttl, enrol weight, progress base, progress slope, complete weight, drop weight, then
# (lecture_id, type, progress, occurred_at µs) per event. Returns per event 1 applied, 0 applied before
# (its marker exists: running the script again changes nothing).
_APPLY_LUA = """
local recent_len = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local w_enrol, w_prog, slope = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local w_complete, w_drop = tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {}
local enrolled = false
for i = 1, #KEYS - 3 do
  local marker = KEYS[3 + i]
  local base = 8 + 4 * (i - 1)
  if redis.call('EXISTS', marker) == 1 then
    out[i] = 0
  else
    local lecture, typ = ARGV[base], ARGV[base + 1]
    local p, ts_text = tonumber(ARGV[base + 2]), ARGV[base + 3]
    local ts = tonumber(ts_text)
    local stage = 0
    if typ == 'enrol' then
      stage = w_enrol
    elseif typ == 'progress' then
      if p < 0 then p = 0 elseif p > 1 then p = 1 end
      stage = w_prog + slope * p
    elseif typ == 'complete' then
      stage = w_complete
    end
    local max_stage, last_text, drop = stage, ts_text, 0
    if typ == 'drop' then drop = 1 end
    local old = redis.call('HGET', KEYS[2], lecture)
    if old then
      local a, b, c = string.match(old, '^([^|]*)|([^|]*)|([^|]*)$')
      if tonumber(a) > max_stage then max_stage = tonumber(a) end
      -- the latest event decides whether a drop lowers the weight; ties go to the later arrival
      if ts < tonumber(b) then last_text = b; drop = tonumber(c) end
    end
    local w = max_stage
    if w <= 0 or (drop == 1 and w < w_complete) then w = w_drop end
    redis.call('HSET', KEYS[2], lecture, string.format('%.9g', max_stage) .. '|' .. last_text .. '|' .. drop)
    redis.call('HSET', KEYS[1], lecture, string.format('%.9g', w))
    if typ == 'enrol' then
      redis.call('LREM', KEYS[3], 0, lecture)
      redis.call('RPUSH', KEYS[3], lecture)
      enrolled = true
    end
    redis.call('SET', marker, '1', 'EX', ttl)
    out[i] = 1
  end
end
if enrolled then redis.call('LTRIM', KEYS[3], -recent_len, -1) end
return out
"""


@dataclass(frozen=True)
class EventIn:
    """One learning event as the portal reports it (already validated by the service)."""

    event_id: str
    student_id: str
    lecture_id: str
    type: str
    progress: float
    occurred_at: datetime
    request_id: str | None = None


@dataclass(frozen=True)
class MaterializeSummary:
    """What `FeatureStore.materialize` wrote and what it cost.

    Attributes:
        model_name: registered model name.
        version: version now active.
        previous_version: version active before (None if none).
        students: state keys written.
        state_width: float32 values per student.
        seconds: total wall time (writes, switch, clean-up).
        write_seconds: time spent writing the state keys.
        payload_bytes: bytes written (states and candidate lists).
        memory_delta_bytes: growth of Redis ``used_memory`` from before to after the writes (before
            old versions were removed): what this version costs in Redis memory.
        memory_after_bytes: ``used_memory`` at the end (old versions removed).
        removed_keys: state keys of other versions removed.
    """

    model_name: str
    version: str
    previous_version: str | None
    students: int
    state_width: int
    seconds: float
    write_seconds: float
    payload_bytes: int
    memory_delta_bytes: int
    memory_after_bytes: int
    removed_keys: int

    @property
    def bytes_per_student(self) -> float:
        """Redis memory per student of this version (``memory_delta_bytes / students``)."""
        return self.memory_delta_bytes / self.students if self.students else 0.0


def _is_cluster(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def used_memory(client: Any) -> int:
    """Redis ``used_memory`` in bytes (summed over the primaries of a cluster).

    Args:
        client: a standalone or cluster client.

    Returns:
        Bytes used.
    """
    if _is_cluster(client):
        from redis.cluster import RedisCluster

        per_node = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        if "used_memory" in per_node:  # a single primary answers with its own dict
            return int(per_node["used_memory"])
        return sum(int(info["used_memory"]) for info in per_node.values())
    return int(client.info("memory")["used_memory"])


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def event_fields(event: EventIn) -> dict[str, str]:
    """The events-stream fields of one event (all text; decoded by `features.streams.record_decoder`).

    Args:
        event: the event.

    Returns:
        Field -> value: ``occurred_at`` is ISO 8601 UTC with microseconds, ``request_id`` "" when None.
    """
    return {
        "event_id": event.event_id,
        "student_id": event.student_id,
        "lecture_id": event.lecture_id,
        "type": event.type,
        "progress": repr(float(event.progress)),
        "occurred_at": _utc(event.occurred_at).isoformat(timespec="microseconds"),
        "request_id": event.request_id or "",
    }


def _check_event(i: int, event: EventIn) -> None:
    for name in ("event_id", "student_id", "lecture_id"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"event {i}: {name} must be a non-empty string, got {value!r}")
    if event.type not in EVENT_TYPES:
        raise ValueError(f"event {i}: type {event.type!r} is not one of {', '.join(EVENT_TYPES)}")
    if not (isinstance(event.progress, int | float) and math.isfinite(event.progress)):
        raise ValueError(f"event {i}: progress must be a finite number in 0..1, got {event.progress!r}")
    if not 0.0 <= float(event.progress) <= 1.0:
        raise ValueError(f"event {i}: progress {event.progress!r} is outside 0..1")
    if not isinstance(event.occurred_at, datetime):
        raise ValueError(f"event {i}: occurred_at must be a datetime, got {event.occurred_at!r}")


#: Profiles read, by their stored JSON: students share a few thousand distinct profiles, and every
#: computed answer reads one (parsing it cost more than building it from the remembered values).
_PROFILE_VALUES: dict[bytes | str, tuple[Any, ...]] = {}
#: Most distinct stored profiles remembered; past it the memo starts over.
PROFILE_MEMO_SIZE = 65_536


def _profile_from(student_id: str, raw: bytes | str | None) -> StudentProfile | None:
    if raw is None:
        return None
    values = _PROFILE_VALUES.get(raw)
    if values is not None:
        return StudentProfile(student_id, *values)
    try:
        profile = StudentProfile.from_json(student_id, raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise FeatureStoreError(
            f"profile of student {student_id!r} in Redis ({keys.profile(student_id)!r}) is corrupt: {exc}; "
            "send the profile again (PUT /students/{id})"
        ) from exc
    if len(_PROFILE_VALUES) >= PROFILE_MEMO_SIZE:
        _PROFILE_VALUES.clear()
    _PROFILE_VALUES[raw] = profile.feature_key
    return profile


#: The student keys a read names, after ``lr:<tag>`` (`keys.profile`, `keys.history`, `keys.recent`).
_PROFILE, _HISTORY, _RECENT = (b":" + end for end in (keys.PROFILE_KEY, keys.HISTORY_KEY, keys.RECENT_KEY))
_LR = keys.PREFIX + b":"
#: `FeatureStore.read_commands` with a state key as RESP: each of the four keys is ``lr:<tag>`` and its end
#: after its length; `tests/features/test_store.py` holds it to `read_commands` encoded.
_READ_RESP = (
    b"*2\r\n$3\r\nGET\r\n$%d\r\n" + _LR + b"%b" + _PROFILE + b"\r\n"
    b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n" + _LR + b"%b" + _HISTORY + b"\r\n"
    b"*4\r\n$6\r\nLRANGE\r\n$%d\r\n" + _LR + b"%b" + _RECENT + b"\r\n$1\r\n0\r\n$2\r\n-1\r\n"
    b"*2\r\n$3\r\nGET\r\n$%d\r\n" + _LR + b"%b%b\r\n"
)


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class FeatureStore:
    """Per-student online state and model state in Redis (standalone or cluster).

    Args:
        client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` with bytes responses
            (`features.redis_server.connect`).
        recent_len: how many recent enrolments are kept per student.
        event_ttl_seconds: how long an event id is remembered for idempotency (`EVENT_ID_TTL_SECONDS`).
    """

    def __init__(
        self,
        client: Any,
        *,
        recent_len: int = RECENT_LEN,
        event_ttl_seconds: int = EVENT_ID_TTL_SECONDS,
        stream_shards: int = 1,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 25,
    ) -> None:
        if recent_len < 1:
            raise ValueError(f"recent_len must be >= 1, got {recent_len}")
        if event_ttl_seconds < 1:
            raise ValueError(f"event_ttl_seconds must be >= 1, got {event_ttl_seconds}")
        self.client = client
        self.recent_len = int(recent_len)
        self.event_ttl_seconds = int(event_ttl_seconds)
        #: the events stream's shards (`features.keys.stream_shards`); a student's events go to one
        self.event_streams = keys.stream_shards(keys.EVENTS_STREAM, stream_shards)
        self.replica_acks = int(replica_acks)
        self.replica_ack_timeout_ms = int(replica_ack_timeout_ms)
        self._script_sha: str | None = None
        self._weights = [
            repr(float(STAGE_WEIGHT["enrol"])),
            repr(float(STAGE_WEIGHT["progress"])),
            repr(float(PROGRESS_SLOPE)),
            repr(float(STAGE_WEIGHT["complete"])),
            repr(float(DROP_WEIGHT)),
        ]

    # -- reads ----------------------------------------------------------------------------------------

    @staticmethod
    def read_commands(student_id: str, state_key: bytes | None) -> list[tuple[bytes | str | int, ...]]:
        """The commands of one student's read (profile, history, recent lectures, optionally the model
        state under `state_key`); `record` turns their replies into the record."""
        commands: list[tuple[bytes | str | int, ...]] = [
            ("GET", keys.profile(student_id)),
            ("HGETALL", keys.history(student_id)),
            ("LRANGE", keys.recent(student_id), 0, -1),
        ]
        if state_key is not None:
            commands.append(("GET", state_key))
        return commands

    @staticmethod
    def read_payload(student_id: str, model_name: str, version: str) -> bytes:
        """`read_commands` with the state of `model_name` `version`, RESP-encoded: what the service's
        pipelined reader sends for each computed answer, the student's tag made once and the whole
        written in one format operation (~3 µs against ~9 to 14 for encoding the commands, timeit).
        """
        tag = keys.student_tag(student_id)
        state = keys.model_state_suffix(model_name, version)
        n = len(_LR) + len(tag)
        return _READ_RESP % (
            n + len(_PROFILE),
            tag,
            n + len(_HISTORY),
            tag,
            n + len(_RECENT),
            tag,
            n + len(state),
            tag,
            state,
        )

    def _queue_read(self, pipe: Any, student_id: str, state_key: bytes | None) -> None:
        for command in self.read_commands(student_id, state_key):
            pipe.execute_command(*command)

    def record(self, student_id: str, replies: Sequence[Any], with_state: bool) -> StudentRecord:
        """The record of a student from the replies of `read_commands` (HGETALL as a mapping or as
        redis' flat list of field, value pairs)."""
        raw_profile, raw_hist, raw_recent = replies[0], replies[1], replies[2]
        if isinstance(raw_hist, list):
            fields, values = raw_hist[0::2], raw_hist[1::2]
        else:
            fields, values = list(raw_hist or {}), list((raw_hist or {}).values())
        try:
            # every request decodes its student's history: `map` over C functions (a client returns all
            # bytes or all text), float() reads bytes itself
            names = list(map(bytes.decode, fields)) if fields and isinstance(fields[0], bytes) else fields
            history = dict(zip(names, map(float, values), strict=True))
        except ValueError as exc:
            raise FeatureStoreError(f"history of student {student_id!r} in Redis is corrupt: {exc}") from exc
        return StudentRecord(
            profile=_profile_from(student_id, raw_profile),
            history=history,
            recent=tuple(
                map(bytes.decode, raw_recent)
                if raw_recent and isinstance(raw_recent[0], bytes)
                else raw_recent or ()
            ),
            state=replies[3] if with_state else None,
        )

    def _state_version(self, model_name: str | None, version: str | None) -> str | None:
        if model_name is None:
            return None
        return version if version is not None else self.active_version(model_name)

    def read_student(
        self, student_id: str, model_name: str | None = None, version: str | None = None
    ) -> StudentRecord:
        """Profile, history, recent lectures and model state of one student in one round trip.

        Args:
            student_id: the student.
            model_name: registered model whose state to read (None = no state).
            version: its version; None = the active version (costs one more round trip).

        Returns:
            The record; an unknown student gives an empty record (no profile, no history).

        Raises:
            redis.exceptions.RedisError: Redis cannot answer.
            FeatureStoreError: a stored value is corrupt.
        """
        return self.read_students([student_id], model_name, version)[0]

    def read_students(
        self, student_ids: Sequence[str], model_name: str | None = None, version: str | None = None
    ) -> list[StudentRecord]:
        """`read_student` for many students in one pipeline.

        Args:
            student_ids: the students.
            model_name: registered model whose state to read (None = no state).
            version: its version; None = the active version (one more round trip).

        Returns:
            One record per id, in order.
        """
        ids = list(student_ids)
        if not ids:
            return []
        version = self._state_version(model_name, version)
        with_state = model_name is not None and version is not None
        pipe = self.client.pipeline(transaction=False)
        for sid in ids:
            state_key = None
            if model_name is not None and version is not None:
                state_key = keys.model_state(sid, model_name, version)
            self._queue_read(pipe, sid, state_key)
        replies = pipe.execute()
        step = 4 if with_state else 3
        return [self.record(sid, replies[i * step : (i + 1) * step], with_state) for i, sid in enumerate(ids)]

    def get_profile(self, student_id: str) -> StudentProfile | None:
        """The stored profile of a student.

        Args:
            student_id: the student.

        Returns:
            The profile, None when none was stored.
        """
        return _profile_from(student_id, self.client.get(keys.profile(student_id)))

    def active_version(self, model_name: str) -> str | None:
        """The model version whose state is complete and in force.

        Args:
            model_name: registered model name.

        Returns:
            The version, None when nothing was materialised for the model.
        """
        raw = self.client.get(keys.active_version(model_name))
        return None if raw is None else _decode(raw)

    # -- profiles -------------------------------------------------------------------------------------

    def put_profiles(self, profiles: Iterable[StudentProfile]) -> int:
        """Store (replace) profiles, pipelined in chunks.

        Args:
            profiles: the profiles.

        Returns:
            How many were stored.

        Raises:
            ValueError: a profile lacks its id, region or grade (nothing of its chunk is written).
        """
        count = 0
        batch: list[tuple[bytes, bytes]] = []
        for profile in profiles:
            batch.append((keys.profile(profile.student_id), profile.to_json()))
            if len(batch) >= WRITE_CHUNK:
                count += self._set_many(batch)
                batch = []
        if batch:
            count += self._set_many(batch)
        return count

    def _set_many(self, pairs: Sequence[tuple[bytes, bytes]]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key, value in pairs:
            pipe.set(key, value)
        pipe.execute()
        return len(pairs)

    # -- events ---------------------------------------------------------------------------------------

    def _sha(self, reload: bool = False) -> str:
        if self._script_sha is None or reload:
            self._script_sha = _decode(self.client.script_load(_APPLY_LUA))
        return self._script_sha

    def _script_call(self, student_id: str, batch: Sequence[EventIn]) -> tuple[list[bytes], list[str]]:
        call_keys = [keys.history(student_id), keys.pairs(student_id), keys.recent(student_id)]
        call_keys += [keys.event_marker(student_id, e.event_id) for e in batch]
        args = [str(self.recent_len), str(self.event_ttl_seconds), *self._weights]
        for e in batch:
            args += [e.lecture_id, e.type, repr(float(e.progress)), str(epoch_us(e.occurred_at))]
        return call_keys, args

    def _run_scripts(self, groups: Sequence[tuple[str, list[EventIn]]]) -> list[list[int]]:
        """Run the event script once per student in one pipeline; reload the script if Redis forgot it."""
        from redis.exceptions import NoScriptError

        calls = [self._script_call(sid, batch) for sid, batch in groups]
        if _is_cluster(self.client):
            return self._run_scripts_cluster(calls)
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            sha = self._sha(reload=attempt > 0)
            pipe = self.client.pipeline(transaction=False)
            for i in todo:
                call_keys, args = calls[i]
                pipe.evalsha(sha, len(call_keys), *call_keys, *args)
            replies = pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    missing.append(i)  # the script did not run: safe to run again
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = [int(x) for x in reply]
            if not missing:
                break
            todo = missing
        else:
            raise FeatureStoreError("Redis keeps forgetting the event script (SCRIPT FLUSH in a loop?)")
        return results

    def _run_scripts_cluster(self, calls: Sequence[tuple[list[bytes], list[str]]]) -> list[list[int]]:
        """Cluster variant: redis-py's cluster pipeline refuses EVALSHA, so pipeline per node instead.

        A call refused by its node (MOVED/ASK after a resharding, NOSCRIPT on a new node) did not run and
        is sent again through the cluster client, which follows redirections.
        """
        from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

        sha = self._sha()
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (call_keys, _) in enumerate(calls):
            node = self.client.get_node_from_key(call_keys[0])
            by_node.setdefault(node.name, (node, []))[1].append(i)
        results: list[Any] = [None] * len(calls)
        again: list[int] = []
        for node, rows in by_node.values():
            pipe = self.client.get_redis_connection(node).pipeline(transaction=False)
            for i in rows:
                call_keys, args = calls[i]
                pipe.evalsha(sha, len(call_keys), *call_keys, *args)
            try:
                replies = pipe.execute(raise_on_error=False)
            except (ConnectionError, TimeoutError):
                # the node died (a failover is under way): the next call must see the new slot owners
                with contextlib.suppress(Exception):  # no node answers: the next call tries again
                    self.client.nodes_manager.initialize()
                raise
            for i, reply in zip(rows, replies, strict=True):
                if isinstance(reply, ResponseError):
                    again.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = [int(x) for x in reply]
        for i in again:
            call_keys, args = calls[i]
            try:
                reply = self.client.evalsha(self._sha(), len(call_keys), *call_keys, *args)
            except NoScriptError:
                reply = self.client.evalsha(self._sha(reload=True), len(call_keys), *call_keys, *args)
            results[i] = [int(x) for x in reply]
        return results

    def apply_events(self, events: Sequence[EventIn]) -> list[EventOutcome]:
        """Store events exactly once: into the events stream, then into the students' state.

        The event id decides (see the module docstring): `features.streams.append_once` appends the
        events whose id is new and says, for each, whether this call appended it; then the per-student
        script applies the stored events to the state (one call per student, all in one pipeline), a
        no-op for those applied before. Every step is safe to run again, so a resent command, a retried
        request and concurrent senders of the same events store each event once.

        Args:
            events: the events, in arrival order (validated by the caller; re-checked here).

        Returns:
            Per event ``"accepted"`` (stored by this call), ``"duplicate"`` (the same event was stored
            before, by an earlier or a concurrent call, or earlier in this one) or ``"conflict"`` (its id
            was stored with other fields: another student, lecture, type, progress, time or request id;
            nothing stored).

        Raises:
            ValueError: an event is malformed (names the event and field; nothing is written).
            redis.exceptions.RedisError: Redis failed; some events may be stored, and retrying the same
                events is safe (they complete, reported as duplicates).
            ReplicaAckError: ``replica_acks`` replicas did not acknowledge a shard's append in time; as
                above, sending the same events again is safe.
        """
        from features.streams import ALREADY_APPENDED, APPENDED, append_once

        events = list(events)
        for i, event in enumerate(events):
            _check_event(i, event)
        fields = [event_fields(e) for e in events]
        outcomes: list[EventOutcome] = ["duplicate"] * len(events)
        first: dict[str, int] = {}
        for i, event in enumerate(events):
            j = first.setdefault(event.event_id, i)
            if j != i and fields[j] != fields[i]:
                outcomes[i] = "conflict"
        by_shard: dict[bytes, list[int]] = {}
        for i in first.values():
            shard = self.event_streams[keys.shard_of(events[i].student_id, len(self.event_streams))]
            by_shard.setdefault(shard, []).append(i)
        unique: list[int] = []
        codes: list[int] = []
        for stream, rows in by_shard.items():
            unique += rows
            codes += append_once(
                self.client,
                stream,
                [(keys.stream_marker(stream, events[i].event_id), fields[i]) for i in rows],
                ttl_seconds=self.event_ttl_seconds,
                replicas=self.replica_acks,
                replica_timeout_ms=self.replica_ack_timeout_ms,
            )
        positions: dict[str, list[int]] = {}
        for i, code in zip(unique, codes, strict=True):
            if code == APPENDED:
                outcomes[i] = "accepted"
            elif code == ALREADY_APPENDED:
                outcomes[i] = "duplicate"  # applied again below: harmless, and completes a failed call
            else:
                outcomes[i] = "conflict"
                continue
            positions.setdefault(events[i].student_id, []).append(i)
        groups = list(positions.items())
        for start in range(0, len(groups), WRITE_CHUNK):
            chunk = groups[start : start + WRITE_CHUNK]
            self._run_scripts([(sid, [events[i] for i in rows]) for sid, rows in chunk])
        return outcomes

    # -- bulk -----------------------------------------------------------------------------------------

    def seed_history(
        self,
        events: pd.DataFrame | pa.Table,
        profiles: Iterable[StudentProfile],
        progress: Progress | None = None,
    ) -> int:
        """Load profiles and the history of past events in bulk (pipelined), replacing what students had.

        Weights, per-lecture aggregates and recent lists are computed as `apply_events` would have left
        them after applying `events` in time order; event markers are not written (re-sending an old
        event later does not change its weight).

        Args:
            events: events table (`features.schemas.EVENTS` columns; ``progress`` optional).
            profiles: profiles to store.
            progress: ``progress(stage, done, total)`` callback.

        Returns:
            Number of students whose history was written.

        Raises:
            SchemaError: a column is missing, an event type is unknown or a timestamp unreadable.
        """
        n_profiles = self.put_profiles(profiles)
        if progress:
            progress("profiles", n_profiles, n_profiles)
        return self.seed_events(events, progress)

    def seed_events(
        self, events: pd.DataFrame | pa.Table, progress: Progress | None = None, label: str = "history"
    ) -> int:
        """The history part of `seed_history`: replace the history of the students found in `events`.

        Students are independent: seeding disjoint groups of students one after the other (every event of
        a student in the same group, each group in dataset order) leaves what one call with all the
        events leaves (`features.tables.read_partitioned`).

        Args:
            events: events table (`features.schemas.EVENTS` columns; ``progress`` optional), in pandas or
                Arrow (`features.online_state.aggregate_history`).
            progress: ``progress(stage, done, total)`` callback, counting students.
            label: the stage name given to `progress`.

        Returns:
            Number of students whose history was written.

        Raises:
            SchemaError: a column is missing, an event type is unknown or a timestamp unreadable.
        """
        if len(events) == 0:
            return 0
        agg = aggregate_history(events, self.recent_len)
        total = len(agg.students)
        done = 0
        pipe = self.client.pipeline(transaction=False)
        queued = 0
        weights = [weight_text(w) for w in agg.weight.tolist()]
        aggregates = [
            f"{weight_text(m)}|{t}|{int(d)}"
            for m, t, d in zip(
                agg.max_stage.tolist(), agg.last_us.tolist(), agg.dropped.tolist(), strict=True
            )
        ]
        for sid, a, b in zip(agg.students, agg.bounds[:-1].tolist(), agg.bounds[1:].tolist(), strict=True):
            hist_key, pairs_key, recent_key = keys.history(sid), keys.pairs(sid), keys.recent(sid)
            lectures = agg.lectures[a:b]
            for key in (hist_key, pairs_key, recent_key):  # one key per DEL: a cluster pipeline needs it
                pipe.delete(key)
            pipe.hset(hist_key, mapping=dict(zip(lectures, weights[a:b], strict=True)))
            pipe.hset(pairs_key, mapping=dict(zip(lectures, aggregates[a:b], strict=True)))
            order = agg.recent.get(sid)
            if order:
                pipe.rpush(recent_key, *order)
            queued += 1
            if queued >= WRITE_CHUNK:
                pipe.execute()
                done += queued
                queued = 0
                pipe = self.client.pipeline(transaction=False)
                if progress:
                    progress(label, done, total)
        if queued:
            pipe.execute()
            done += queued
        if progress:
            progress(label, done, total)
        return done

    def materialize(
        self,
        model_name: str,
        version: str,
        student_ids: Sequence[str],
        states: npt.NDArray[np.float32],
        progress: Progress | None = None,
        candidates: Sequence[bytes | None] | None = None,
    ) -> MaterializeSummary:
        """Write one model version's per-student state, switch the version on, remove older versions.

        A student's key holds the state's float32 values, then, when given, the student's candidate
        list (`models.candidates.Candidates.to_bytes`): one value read in the request's round trip.

        The state keys are written under the version's namespace in pipelined chunks; only when all are
        written does ``lr:active:<model>`` point to `version` (one SET: readers see the old version or
        the complete new one, never a half-written one). Then the state keys of every other version of
        the model are removed (SCAN + UNLINK).

        Args:
            model_name: registered model name.
            version: the version being materialised.
            student_ids: the model's students, one per row of `states`.
            states: (len(student_ids), width) float32 (`Recommender.student_state`).
            progress: ``progress(stage, done, total)`` callback.
            candidates: per student (row of `states`), the stored candidate list, None for none.

        Returns:
            Counts, time and Redis memory.

        Raises:
            ValueError: bad names, shapes, duplicate ids or non-finite values (nothing written).
        """
        started = time.perf_counter()
        suffix = keys.model_state_suffix(model_name, version)
        pointer = keys.active_version(model_name)
        ids = list(student_ids)
        matrix = np.asarray(states)
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(
                f"states must be (len(student_ids)={len(ids)}, width) but has shape {matrix.shape}"
            )
        matrix = np.ascontiguousarray(matrix, dtype="<f4")
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"state of student {ids[row]!r} (row {row}) holds NaN or inf: refusing to materialise "
                f"{model_name} v{version}"
            )
        if len(set(ids)) != len(ids):
            raise ValueError("student_ids holds duplicates: each student must appear once")
        if candidates is not None and len(candidates) != len(ids):
            raise ValueError(f"candidates has {len(candidates)} lists for {len(ids)} students")
        width = int(matrix.shape[1])
        n = len(ids) if width or candidates is not None else 0

        memory_before = used_memory(self.client)
        write_started = time.perf_counter()
        cluster = _is_cluster(self.client)
        payload = 0
        for start in range(0, n, WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, n)
            block = matrix[start:stop].tobytes()
            row_bytes = width * 4
            mapping = {
                keys.PREFIX + b":" + keys.student_tag(ids[r]) + suffix: block[
                    (r - start) * row_bytes : (r - start + 1) * row_bytes
                ]
                + ((candidates[r] or b"") if candidates is not None else b"")
                for r in range(start, stop)
            }
            mapping = {key: value for key, value in mapping.items() if value}
            payload += sum(len(value) for value in mapping.values())
            if mapping and cluster:
                self.client.mset_nonatomic(mapping)
            elif mapping:
                self.client.mset(mapping)
            if progress:
                progress("state", stop, n)
        write_seconds = time.perf_counter() - write_started
        memory_written = used_memory(self.client)

        previous_raw = self.client.set(pointer, version.encode("ascii"), get=True)
        previous = None if previous_raw is None else _decode(previous_raw)
        removed = self._remove_other_versions(model_name, suffix, progress)
        return MaterializeSummary(
            model_name=model_name,
            version=version,
            previous_version=previous,
            students=n,
            state_width=width,
            seconds=time.perf_counter() - started,
            write_seconds=write_seconds,
            payload_bytes=payload,
            memory_delta_bytes=memory_written - memory_before,
            memory_after_bytes=used_memory(self.client),
            removed_keys=removed,
        )

    def _remove_other_versions(self, model_name: str, keep_suffix: bytes, progress: Progress | None) -> int:
        removed = 0
        batch: list[bytes] = []
        marker = keys.model_state_suffix(model_name, "x")[:-1]  # b":m:<model>:"
        for key in self.client.scan_iter(match=keys.model_state_pattern(model_name), count=SCAN_COUNT):
            # the pattern can also match an event marker whose id contains ":m:<model>:"; a state key is
            # exactly "lr:{s:<id>}:m:<model>:<version>" with no ':' in the version
            head, _, tail = key.rpartition(marker)
            if not head.endswith(b"}") or b":" in tail:
                continue
            if not key.endswith(keep_suffix):
                batch.append(key)
                if len(batch) >= SCAN_COUNT:
                    removed += int(self.client.unlink(*batch))
                    batch = []
                    if progress:
                        progress("clean-up", removed, 0)
        if batch:
            removed += int(self.client.unlink(*batch))
        if progress:
            progress("clean-up", removed, removed)
        return removed
