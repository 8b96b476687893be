"""A student's online state (profile, weighted history, recent enrolments): how events build it, and its
in-memory twin of the Redis feature store.

`aggregate_history` is the bulk rule: what the state is after a table of events was applied in time
order. `features.store.FeatureStore.seed_events` writes its result to Redis; `OnlineState.seed` keeps it in
memory. `OnlineState.apply` is the one-event-at-a-time rule, the twin of the store's Lua script (both
take their weights from `models.interactions`; the parity tests hold the three together).

`OnlineState` satisfies what the ranking reads (`models.ranking.StudentState` through `record`), so the
offline evaluation and the simulator rank from the state the service would read from Redis.
"""

from __future__ import annotations

import marshal
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from features.errors import SchemaError
from features.profile import FEATURE_ATTRIBUTES, StudentProfile
from models.interactions import (
    DROP,
    ENROL,
    EVENT_TYPES,
    RECENT_LEN,
    pair_weight,
    pair_weights,
    stage_weight,
    stage_weights,
    type_code,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from features.store import EventIn, EventOutcome


def stored(value: float) -> float:
    """A number as the feature store keeps it (text with 9 significant digits, read back)."""
    return float(weight_text(value))


def weight_text(value: float) -> str:
    """The text the feature store keeps for a weight."""
    return f"{value:.9g}"


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch, exact (a naive time is taken as UTC, as `features.matrices` does)."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class StudentRecord:
    """Everything the request path needs about one student, read in one round trip.

    Attributes:
        profile: the stored profile, None when the portal never sent one.
        history: lecture_id -> interaction weight (training history seeded plus online events).
        recent: lectures enrolled most recently, oldest first, at most ``recent_len``.
        state: model state (float32 bytes) under the model version asked for; None when absent or not asked.
    """

    profile: StudentProfile | None
    history: dict[str, float]
    recent: tuple[str, ...]
    state: bytes | None

    def packed(self) -> bytes:
        """The record as bytes (`unpacked` reverses it).

        What a long-lived cache of records keeps: a record and its profile stay tracked by the garbage
        collector for as long as they are kept, and every collection walks them. Bytes hold nothing the
        collector looks at, and one is freed at once when it leaves the cache. The layout, marshalled: state,
        history, how many recent lectures and the lectures, then the profile's feature values
        (`StudentProfile.feature_key`) with its interest subjects spread at the end (none: no profile).
        """
        profile, head = self.profile, (self.state, self.history, len(self.recent), *self.recent)
        if profile is None:
            return marshal.dumps(head)
        return marshal.dumps((*head, *_SCALAR_FEATURES(profile), *profile.interest_subjects))

    @classmethod
    def unpacked(cls, student_id: str, packed: bytes) -> StudentRecord:
        """The record `packed` was made from."""
        flat = marshal.loads(packed)
        state, history, n_recent = flat[:3]
        rest = flat[3 + n_recent :]
        profile = None
        if rest:
            scalars = dict(zip(_SCALAR_NAMES, rest, strict=False))
            profile = StudentProfile(student_id, interest_subjects=rest[len(_SCALAR_NAMES) :], **scalars)
        return cls(profile=profile, history=history, recent=flat[3 : 3 + n_recent], state=state)


#: A profile's feature attributes but its interest subjects (a tuple), for `StudentRecord.packed`.
_SCALAR_NAMES = tuple(name for name in FEATURE_ATTRIBUTES if name != "interest_subjects")
_SCALAR_FEATURES = operator.attrgetter(*_SCALAR_NAMES)


@dataclass(frozen=True)
class HistoryAggregate:
    """Per (student, lecture) aggregates of an event table, grouped by student (first-seen order).

    Attributes:
        students: distinct students, in order of their first pair.
        bounds: pairs of ``students[i]`` are ``bounds[i]:bounds[i + 1]``.
        lectures, max_stage, last_us, dropped, weight: one value per pair.
        recent: per student with enrolments, the lectures by latest enrolment, oldest first, at most
            ``recent_len``.
    """

    students: list[str]
    bounds: npt.NDArray[np.int64]
    lectures: list[str]
    max_stage: npt.NDArray[np.float64]
    last_us: npt.NDArray[np.int64]
    dropped: npt.NDArray[np.bool_]
    weight: npt.NDArray[np.float64]
    recent: dict[str, list[str]]


def aggregate_history(events: pd.DataFrame | pa.Table, recent_len: int = RECENT_LEN) -> HistoryAggregate:
    """The online state left by applying `events` in time order (ties: table order), computed in bulk.

    The events are grouped as integers: each id column is coded once (a dictionary-encoded column hands
    over its codes, `features.ids.text_codes`), and the pairs, their aggregates and the recent lists come
    from numpy sorts and reductions over the codes. Only the distinct ids and the output become Python
    text, never a value per event. The events may be held by pandas or by Arrow (a partition of
    `features.tables.read_partitioned`), read column by column either way.

    Args:
        events: events table (`features.schemas.EVENTS` columns; ``progress`` optional).
        recent_len: length of the recent lists.

    Returns:
        The aggregates: students in order of their first event, each student's pairs in order of their
        first event.

    Raises:
        SchemaError: a column is missing, an event type is unknown or a timestamp unreadable.
    """
    import pyarrow as pa

    from features.ids import positions, text_codes

    names = events.column_names if isinstance(events, pa.Table) else list(events.columns)
    for col in ("student_id", "lecture_id", "type", "occurred_at"):
        if col not in names:
            raise SchemaError("events", col, [], f"column '{col}' is missing")
    kind = positions(EVENT_TYPES, events["type"])  # -1: unknown or null
    if (kind < 0).any():
        rows = (np.flatnonzero(kind < 0) + 1).tolist()
        type_codes, type_text = text_codes(events["type"])  # (the value shown in the error)
        code = int(type_codes[rows[0] - 1])
        shown = type_text[code] if code >= 0 else None
        raise SchemaError(
            "events", "type", rows, f"unknown event type '{shown}': expected one of {', '.join(EVENT_TYPES)}"
        )
    micros = _event_microseconds(events["occurred_at"])
    progress = _floats(events["progress"]) if "progress" in names else np.zeros(len(events))
    student, student_ids = text_codes(events["student_id"])
    lecture, lecture_ids = text_codes(events["lecture_id"])
    for name, codes in (("student_id", student), ("lecture_id", lecture)):
        if (codes < 0).any():
            rows = (np.flatnonzero(codes < 0) + 1).tolist()
            raise SchemaError("events", name, rows, f"missing {name}: every event needs one")
    return _aggregate_codes(
        student.astype(np.int64), student_ids.astype(str),
        lecture.astype(np.int64), lecture_ids.astype(str),
        kind.astype(np.int8), micros, progress, recent_len,
    )  # fmt: skip


def _event_microseconds(column: pd.Series[Any] | pa.ChunkedArray) -> npt.NDArray[np.int64]:
    """The events' times in microseconds since the epoch (UTC); a pandas column is parsed first."""
    import pandas as pd
    import pyarrow as pa

    from features.validation import epoch_microseconds

    if isinstance(column, pa.ChunkedArray | pa.Array):
        if not pa.types.is_timestamp(column.type):
            raise SchemaError("events", "occurred_at", [], f"cannot read {column.type} as timestamps")
        missing = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
    else:
        try:
            column = pd.to_datetime(column, utc=True)
        except (ValueError, TypeError) as exc:
            raise SchemaError("events", "occurred_at", [], f"cannot read as timestamps: {exc}") from exc
        missing = column.isna().to_numpy() if column.isna().any() else None
    if missing is not None:
        rows = (np.flatnonzero(missing) + 1).tolist()
        raise SchemaError("events", "occurred_at", rows, "missing timestamp: every event needs occurred_at")
    return epoch_microseconds(column)


def _floats(column: pd.Series[Any] | pa.ChunkedArray) -> npt.NDArray[np.float64]:
    """A numeric column as float64, a null or NaN as 0 (pandas' `fillna(0.0)`)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray | pa.Array):
        values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        values = np.asarray(column.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    return np.where(np.isnan(values), 0.0, values)


def _aggregate_codes(
    student: npt.NDArray[np.int64],
    student_ids: npt.NDArray[np.str_],
    lecture: npt.NDArray[np.int64],
    lecture_ids: npt.NDArray[np.str_],
    kind: npt.NDArray[np.int8],
    micros: npt.NDArray[np.int64],
    progress: npt.NDArray[np.float64],
    recent_len: int,
) -> HistoryAggregate:
    """`aggregate_history` on integer codes: per event its student and lecture (indices into the id arrays),
    type (index into `EVENT_TYPES`), time in microseconds and progress."""
    order = np.argsort(micros, kind="stable")  # time order; ties keep table order
    key = (student * max(len(lecture_ids), 1) + lecture)[order]
    stage = stage_weights(kind[order], progress[order])
    # the pairs, numbered in order of their first event; the events grouped by pair, in time order
    by_pair = np.argsort(key, kind="stable")
    grouped_keys = key[by_pair]
    starts = np.flatnonzero(np.r_[True, grouped_keys[1:] != grouped_keys[:-1]])
    ends = np.r_[starts[1:], by_pair.size] - 1
    pair_keys, first = grouped_keys[starts], by_pair[starts]
    max_stage = np.maximum.reduceat(stage[by_pair], starts).astype(np.float64)
    last = order[by_pair[ends]]  # each pair's last event (in the table)
    pair_student = pair_keys // max(len(lecture_ids), 1)
    pair_lecture = pair_keys % max(len(lecture_ids), 1)
    # students in order of their first event; a student's pairs in order of theirs
    student_first = np.full(len(student_ids), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(student_first, pair_student, first)
    listed = np.argsort(student_first, kind="stable")[: len(np.unique(pair_student))]
    rank = np.empty(len(student_ids), dtype=np.int64)
    rank[listed] = np.arange(listed.size)
    pairs = np.lexsort((first, rank[pair_student]))
    bounds = np.zeros(listed.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(rank[pair_student], minlength=listed.size), out=bounds[1:])
    dropped = kind[last[pairs]] == DROP
    max_stage = max_stage[pairs]
    # recent: each student's enrolled lectures by their last enrolment, oldest first, the last `recent_len`
    enrol_at = np.flatnonzero(kind[order] == ENROL)
    enrol_key = key[enrol_at]
    _, last_of_key = np.unique(enrol_key[::-1], return_index=True)
    kept = np.sort(enrol_at[enrol_at.size - 1 - last_of_key])
    kept_student = student[order[kept]]
    by_student = np.argsort(kept_student, kind="stable")
    grouped = kept_student[by_student]
    recent_lectures = lecture_ids[lecture[order[kept[by_student]]]].tolist()
    group_starts = np.flatnonzero(np.r_[True, np.diff(grouped) != 0]) if grouped.size else grouped
    group_ends = np.r_[group_starts[1:], grouped.size] if grouped.size else grouped
    recent = {
        str(student_ids[grouped[a]]): recent_lectures[max(a, b - recent_len) : b]
        for a, b in zip(group_starts.tolist(), group_ends.tolist(), strict=True)
    }
    return HistoryAggregate(
        students=student_ids[listed].tolist(),
        bounds=bounds,
        lectures=lecture_ids[pair_lecture[pairs]].tolist(),
        max_stage=max_stage,
        last_us=micros[last[pairs]],
        dropped=dropped,
        weight=pair_weights(max_stage, dropped),
        recent=recent,
    )


class OnlineState:
    """What the feature store holds per student (profile, weighted history, recent enrolments), in memory.

    The rules are those of `features.store`: a pair weighs as `models.interactions` says; the recent list
    holds the lectures enrolled in, oldest first, a re-enrolment moved to the end, at most `recent_len`;
    an event id is applied once. `fork` gives an independent copy cheaply (students are copied when first
    written), so repeated simulations start from one seeded state.

    Args:
        recent_len: length of the recent list (the feature store's default is `RECENT_LEN`).
    """

    def __init__(self, recent_len: int = RECENT_LEN) -> None:
        self.recent_len = recent_len
        self._profiles: dict[str, StudentProfile] = {}
        self._pairs: dict[str, dict[str, tuple[float, int, int]]] = {}
        self._history: dict[str, dict[str, float]] = {}
        self._recent: dict[str, list[str]] = {}
        self._seen: dict[str, dict[str, str]] = {}  # event id -> its stream fields
        self._owned: set[str] = set()

    def fork(self) -> OnlineState:
        """An independent copy (copy-on-write per student)."""
        other = OnlineState(self.recent_len)
        other._profiles = dict(self._profiles)
        other._pairs = dict(self._pairs)
        other._history = dict(self._history)
        other._recent = dict(self._recent)
        other._seen = dict(self._seen)
        return other

    def put_profiles(self, profiles: Iterable[StudentProfile]) -> None:
        """Store profiles (replacing earlier ones)."""
        for p in profiles:
            self._profiles[p.student_id] = p

    def seed(self, events: pd.DataFrame | pa.Table, profiles: Iterable[StudentProfile]) -> int:
        """Load profiles and past events as `FeatureStore.seed_history` does (replacing students' state).

        Args:
            events: events table (`features.schemas.EVENTS` columns; ``progress`` optional).
            profiles: profiles to store.

        Returns:
            Students whose history was loaded.
        """
        self.put_profiles(profiles)
        if len(events) == 0:
            return 0
        agg = aggregate_history(events, self.recent_len)
        rows = zip(
            agg.lectures,
            agg.max_stage.tolist(),
            agg.last_us.tolist(),
            agg.dropped.tolist(),
            agg.weight.tolist(),
            strict=True,
        )
        for sid, a, b in zip(agg.students, agg.bounds[:-1].tolist(), agg.bounds[1:].tolist(), strict=True):
            pairs: dict[str, tuple[float, int, int]] = {}
            history: dict[str, float] = {}
            for _ in range(b - a):
                lid, max_stage, last_t, dropped, w = next(rows)
                pairs[lid] = (stored(max_stage), int(last_t), int(dropped))
                history[lid] = stored(w)
            self._pairs[sid], self._history[sid] = pairs, history
            self._recent[sid] = list(agg.recent.get(sid, ()))
            self._owned.add(sid)
        return len(agg.students)

    def _own(self, sid: str) -> None:
        if sid not in self._owned:
            self._pairs[sid] = dict(self._pairs.get(sid, {}))
            self._history[sid] = dict(self._history.get(sid, {}))
            self._recent[sid] = list(self._recent.get(sid, []))
            self._owned.add(sid)

    def apply(self, events: Sequence[EventIn]) -> list[EventOutcome]:
        """Apply events in order, idempotently by event id, as `FeatureStore.apply_events`.

        Args:
            events: the events.

        Returns:
            Per event ``"accepted"``, ``"duplicate"`` (the id was seen with the same fields) or
            ``"conflict"`` (seen with other fields: not applied).
        """
        from features.store import event_fields  # the store imports this module

        out: list[EventOutcome] = []
        for e in events:
            fields = event_fields(e)
            seen = self._seen.get(e.event_id)
            if seen is not None:
                out.append("duplicate" if seen == fields else "conflict")
                continue
            self._seen[e.event_id] = fields
            self._own(e.student_id)
            pairs, history = self._pairs[e.student_id], self._history[e.student_id]
            ts = epoch_us(e.occurred_at)
            max_stage, last, drop = stage_weight(e.type, e.progress), ts, int(type_code(e.type) == DROP)
            old = pairs.get(e.lecture_id)
            if old is not None:
                max_stage = max(max_stage, old[0])
                if ts < old[1]:  # the latest event decides the drop; ties go to the later arrival
                    last, drop = old[1], old[2]
            pairs[e.lecture_id] = (stored(max_stage), last, drop)
            history[e.lecture_id] = stored(pair_weight(max_stage, bool(drop)))
            if e.type == "enrol":
                recent = self._recent[e.student_id]
                if e.lecture_id in recent:
                    recent.remove(e.lecture_id)
                recent.append(e.lecture_id)
                del recent[: max(0, len(recent) - self.recent_len)]
            out.append("accepted")
        return out

    def record(self, student_id: str) -> StudentRecord:
        """What `FeatureStore.read_student` would return (no model state: the model's own is used)."""
        return StudentRecord(
            profile=self._profiles.get(student_id),
            history=dict(self._history.get(student_id, {})),
            recent=tuple(self._recent.get(student_id, ())),
            state=None,
        )
