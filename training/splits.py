"""Train/test splits of a dataset for offline evaluation: temporal, leave-last-n, new students, new region.

Every split returns a `Split`: the training dataset (students the model may know, all lectures, training
events), the test events, the test students and the relevant lectures per test student. A lecture is
relevant to a test student when the student has an event for it in the test events and none in the
training events: what the student went on to take that the model could not have seen. Lectures in
the student's training history are never relevant (the evaluation also removes them from the ranking).

All splits are deterministic: the same dataset, parameters and seed give the same split.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from features.event_table import as_event_table, event_ticks, rows_where
from features.ids import distinct_text, is_in, positions, sorted_distinct, text_codes, used_text
from training.errors import SplitError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from features.tables import Dataset

#: Split names accepted by `make_split` and `learnrec train --split`.
SPLITS: tuple[str, ...] = ("temporal", "leave_last_n", "new_students", "new_region", "explicit")
DEFAULT_QUANTILE = 0.8
#: Days after the temporal cutoff whose events are tested: what a student does until the next retrain
#: (`learnrec retrain`), and the length of an A/B experiment. None (or 0) tests every later event.
DEFAULT_HORIZON_DAYS = 14
DEFAULT_NEW_REGION = "taebaek"
DEFAULT_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """A train/test split of one dataset.

    Attributes:
        name: split kind (one of `SPLITS`).
        train: what the model is fitted on: the students it may know, every lecture, the training events.
        test: the test events (of test students; may include events of lectures already in training),
            an Arrow table as the training events are (`features.event_table`).
        test_students: ids of the students scored, sorted; each has at least one relevant lecture.
        relevant: unique (student_id, lecture_id) pairs to find, sorted; lectures of the student's
            training history are excluded.
        params: the split's parameters as plain JSON values (logged to MLflow).
        as_of: end of the training window (temporal split: the cutoff), None = the latest training event.
        cold_start: the test students are absent from training (scored from profile features only).
    """

    name: str
    train: Dataset
    test: pa.Table
    test_students: tuple[str, ...]
    relevant: pd.DataFrame
    params: dict[str, Any] = field(default_factory=dict)
    as_of: datetime | None = None
    cold_start: bool = False

    def relevant_by_student(self) -> dict[str, list[str]]:
        """Relevant lecture ids per test student (sorted)."""
        out: dict[str, list[str]] = {s: [] for s in self.test_students}
        for sid, lid in zip(self.relevant["student_id"], self.relevant["lecture_id"], strict=True):
            out[str(sid)].append(str(lid))
        return out

    def summary(self) -> dict[str, Any]:
        """Sizes of the split (for logs and MLflow params)."""
        return {
            "split": self.name,
            "train_students": len(used_text(self.train.events["student_id"])),
            "train_events": len(self.train.events),
            "test_students": len(self.test_students),
            "test_events": len(self.test),
            "relevant_pairs": len(self.relevant),
        }


def _relevant(test_events: pa.Table, train_events: pa.Table, lectures: pd.DataFrame) -> pd.DataFrame:
    """Each test student's lectures of the catalogue that the student's training events do not hold.

    Matched as integer pair codes over the test students and the lectures in text order, so only the
    distinct ids become text, and the codes' order is the (student_id, lecture_id) text order.

    Returns:
        The pairs (`student_id`, `lecture_id`, text), sorted by student, then lecture.
    """
    import pandas as pd

    students = pd.Index(np.sort(used_text(test_events["student_id"])), dtype=object)
    lecture_ids = pd.Index(np.unique(lectures["lecture_id"].astype(str).to_numpy(dtype=object)), dtype=object)
    width = max(len(lecture_ids), 1)

    def pairs(events: pa.Table) -> npt.NDArray[np.int64]:
        student = positions(students, events["student_id"])
        mine = np.flatnonzero(student >= 0)  # the lectures of these rows only
        lecture = positions(lecture_ids, events["lecture_id"].take(mine))
        keep = lecture >= 0
        return sorted_distinct(student[mine[keep]] * width + lecture[keep])

    # only the test students' training pairs can match
    codes = np.setdiff1d(pairs(test_events), pairs(train_events), assume_unique=True)
    return pd.DataFrame(
        {
            "student_id": students.to_numpy()[codes // width],
            "lecture_id": lecture_ids.to_numpy()[codes % width],
        }
    )


def _finish(
    name: str,
    ds: Dataset,
    train_students: pd.DataFrame,
    train_events: pa.Table,
    test_events: pa.Table,
    params: dict[str, Any],
    *,
    as_of: datetime | None = None,
    cold_start: bool = False,
) -> Split:
    """Relevant pairs and test students from the train/test events; refuses a split with nothing to test."""
    from features.tables import Dataset

    if len(train_events) == 0:
        raise SplitError(f"{name} split leaves no training events: {_hint(name)}")
    relevant = _relevant(test_events, train_events, ds.lectures)
    if len(relevant) == 0:
        raise SplitError(f"{name} split leaves no test student with a new lecture to find: {_hint(name)}")
    test_students = tuple(sorted(relevant["student_id"].unique().tolist()))
    test = rows_where(test_events, is_in(test_events["student_id"], test_students))
    train = Dataset(
        students=train_students.reset_index(drop=True),
        lectures=ds.lectures,
        events=train_events,
        manifest={**ds.manifest, "split": name, "split_params": params},
    )
    return Split(
        name=name,
        train=train,
        test=test,
        test_students=test_students,
        relevant=relevant,
        params=params,
        as_of=as_of,
        cold_start=cold_start,
    )


def _hint(name: str) -> str:
    return {
        "temporal": "choose a cutoff (or --quantile) inside the event period, or a longer --horizon-days",
        "leave_last_n": "use a smaller n: students need more than n lectures",
        "new_students": "use a fraction between 0 and 1 that leaves students on both sides",
        "new_region": "choose a region with students who have events (and keep other regions for training)",
        "explicit": "check that the test file holds events of lectures the students did not take in training",
    }.get(name, "check the dataset")


def _utc(value: datetime | str) -> pd.Timestamp:
    import pandas as pd

    ts = pd.Timestamp(value)
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def _instant(tick: int, unit: str) -> pd.Timestamp:
    """The UTC instant `tick` counts of `unit` after the epoch (the inverse of `_ticks`), in that unit."""
    import pandas as pd

    return pd.Timestamp(np.array([tick], dtype=np.int64).view(f"datetime64[{unit}]")[0]).tz_localize(UTC)


def _ticks(moment: pd.Timestamp, unit: str) -> int:
    """A UTC instant as a count of `unit` since the epoch, rounded down: a time held in `unit` is at or
    before `moment` exactly when its count is at or before this one (any date pandas can hold)."""
    return int(np.datetime64(moment.tz_convert(None).asm8).astype(f"datetime64[{unit}]").view(np.int64))


def _horizon(value: float | None) -> float | None:
    """The test horizon in days: a positive finite number, or None (0 and None both mean unbounded)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SplitError(f"temporal split: horizon_days must be a number of days, got {value!r}")
    days = float(value)
    if not np.isfinite(days) or days < 0:
        raise SplitError(
            f"temporal split: horizon_days must be a positive number of days (0 or None = unbounded), "
            f"got {value!r}"
        )
    return days or None


def temporal(
    ds: Dataset,
    cutoff: datetime | str | None = None,
    quantile: float = DEFAULT_QUANTILE,
    horizon_days: float | None = DEFAULT_HORIZON_DAYS,
) -> Split:
    """Global time cutoff: train on events up to the cutoff, test on the events of the next `horizon_days`.

    Training events are those at or before the cutoff; test events those in (cutoff, cutoff + horizon]
    (after the cutoff, up to and including its end). Test students are those with events on both sides
    of the cutoff (students who appear only after it are new students, evaluated by `new_students`);
    their relevant lectures are the ones they started within the horizon. The horizon is the time a
    served model has to be right: until the next retrain; an unbounded horizon asks which series a
    student starts months later.

    Args:
        ds: the dataset.
        cutoff: the cutoff instant (naive = UTC); default the `quantile` of `occurred_at`.
        quantile: quantile of event times used when `cutoff` is None, in (0, 1).
        horizon_days: length of the test window in days (fractions allowed); None or 0 = every event
            after the cutoff.

    Returns:
        The split; `as_of` is the cutoff; `params["horizon_days"]` the horizon (None = unbounded).

    Raises:
        SplitError: a bad quantile or horizon, or a cutoff that leaves one side empty.
    """
    import pandas as pd

    if not 0.0 < quantile < 1.0:
        raise SplitError(f"temporal split: quantile must be in (0, 1), got {quantile}")
    horizon = _horizon(horizon_days)
    events = ds.events
    if len(events) == 0:
        raise SplitError("temporal split: the dataset has no events")
    ticks, unit = event_ticks(events)
    if cutoff is None:
        # the 'lower' quantile is an actual event time: no float interpolation between instants
        k = int(np.floor(quantile * (ticks.size - 1)))
        cut = _instant(int(np.partition(ticks, k)[k]), unit)
        params: dict[str, Any] = {"quantile": quantile}
    else:
        cut = _utc(cutoff)
        params = {}
    params["cutoff"] = cut.isoformat()
    # whole days log as integers (14, not 14.0); None = unbounded
    params["horizon_days"] = None if horizon is None else (int(horizon) if horizon.is_integer() else horizon)
    before = ticks <= _ticks(cut, unit)
    train_events = rows_where(events, before)
    later = ~before
    if horizon is not None:
        later &= ticks <= _ticks(cut + pd.Timedelta(days=horizon), unit)
    # the test side: later events of students seen before the cut, taken in one pass
    seen = used_text(train_events["student_id"])
    test_events = rows_where(events, later & is_in(events["student_id"], seen))
    return _finish("temporal", ds, ds.students, train_events, test_events, params, as_of=cut.to_pydatetime())


def _text_order_codes(values: Any, what: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """(code per row, distinct values as text): codes number the distinct values in their text order.

    Only the distinct values become text (`features.ids.text_codes`).

    Raises:
        SplitError: a null id.
    """
    codes, labels = text_codes(values)
    if (codes < 0).any():
        raise SplitError(f"{what} has a null value")
    order = np.argsort(labels, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank[codes], labels[order]


def pair_codes(events: pa.Table) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any], npt.NDArray[Any]]:
    """One integer per event naming its (student, lecture) pair, in the pairs' text order.

    Pairs are grouped, ordered and matched as integers; only the distinct ids become text, never every
    event's (at 1 M students the events are 63 M rows, their distinct pairs 18 M, their ids 1 M + 20 k).

    Args:
        events: events with `student_id` and `lecture_id`.

    Returns:
        (pair code per event, student ids sorted, lecture ids sorted): a code is
        ``student * len(lecture ids) + lecture``, indices into the two id arrays, so codes sort as
        (student_id, lecture_id) text does.

    Raises:
        SplitError: a null student or lecture id.
    """
    students, student_ids = _text_order_codes(events["student_id"], "student_id")
    lectures, lecture_ids = _text_order_codes(events["lecture_id"], "lecture_id")
    return students * max(lecture_ids.size, 1) + lectures, student_ids, lecture_ids


@dataclass(frozen=True)
class PairTimes:
    """The distinct (student, lecture) pairs of some events with each pair's first event time, sorted by
    pair code (`pair_codes`: student id, then lecture id, in text order); numpy arrays aligned by pair.

    Attributes:
        student: the pair's student code (in student-id order).
        lecture: the pair's lecture code (in lecture-id order).
        pair: the pair code.
        first: the pair's first event time, a count since the epoch (UTC) in the events' time unit
            (`event_ticks`).
    """

    student: npt.NDArray[np.int64]
    lecture: npt.NDArray[np.int64]
    pair: npt.NDArray[np.int64]
    first: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.pair.size)


def first_times(events: pa.Table) -> tuple[PairTimes, npt.NDArray[np.int64]]:
    """Each (student, lecture) pair's first event time, on integer codes (`pair_codes`) and a numpy sort.

    Returns:
        (the pairs, sorted by student then lecture id; per event, its pair's position in them).
    """
    pair, _, lecture_ids = pair_codes(events)
    ticks, _ = event_ticks(events)
    bits = max(pair.size - 1, 1).bit_length()  # a row number's bits
    in_time_order = bool((ticks[1:] >= ticks[:-1]).all())
    if in_time_order and pair.size and int(pair.max()) < 1 << (63 - bits):
        # (dataset order) one sort of (pair, row) packed in an int64 instead of an argsort
        packed = np.sort((pair << bits) | np.arange(pair.size, dtype=np.int64))
        grouped, rows = packed >> bits, packed & ((1 << bits) - 1)
        del packed
    else:
        rows = np.argsort(pair)  # the minimum below needs no stable order
        grouped = pair[rows]
    del pair
    new = np.r_[True, grouped[1:] != grouped[:-1]] if grouped.size else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(new)
    codes = grouped[starts]
    del grouped
    first = np.minimum.reduceat(ticks[rows], starts) if starts.size else ticks[:0]
    position = np.empty(rows.size, dtype=np.int64)
    position[rows] = np.cumsum(new) - 1  # each event's pair, back in the events' order
    width = max(lecture_ids.size, 1)
    return PairTimes(codes // width, codes % width, codes, first), position


def held_out_pairs(
    pairs: PairTimes,
    held: Callable[[npt.NDArray[np.int64]], npt.NDArray[Any]],
    key: npt.NDArray[Any] | None = None,
) -> npt.NDArray[np.bool_]:
    """Which pairs each student holds out: their first `held(count)` pairs in `key` order.

    Args:
        pairs: `first_times`'s pairs.
        held: per pair, from the count of its student's pairs, how many of that student's to hold out.
        key: the order within a student, ascending (default: newest first event first); ties by lecture id
            descending, so the newest of lectures started at the same instant is the later id.

    Returns:
        Per pair (aligned with `pairs`), whether it is held out; an event is held out when its pair is
        (`held[position]`, the positions `first_times` gives).
    """
    student = pairs.student
    if key is None:
        key = -pairs.first
    order = np.lexsort((-pairs.lecture, key, student))
    grouped = student[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    counts = np.diff(np.r_[starts, grouped.size])
    rank = np.arange(grouped.size) - np.repeat(starts, counts)
    out = np.zeros(len(pairs), dtype=bool)
    out[order] = rank < held(np.repeat(counts, counts))
    return out


def leave_last_n(ds: Dataset, n: int = 1) -> Split:
    """Per student, hold out the n lectures started last (all their events); train on the rest.

    Only students with more than n distinct lectures are tested (the others stay whole in training).
    Lectures are ordered by the student's first event for them; ties by lecture id.

    Args:
        ds: the dataset.
        n: lectures held out per student (>= 1).

    Returns:
        The split.

    Raises:
        SplitError: n < 1, or no student has more than n lectures.
    """
    if n < 1:
        raise SplitError(f"leave_last_n split: n must be >= 1, got {n}")
    events = ds.events
    first, position = first_times(events)
    is_test = held_out_pairs(first, lambda count: np.where(count > n, n, 0))[position]
    del first, position  # (1 GiB at 1M students) before the two sides are copied out
    return _finish(
        "leave_last_n", ds, ds.students, rows_where(events, ~is_test), rows_where(events, is_test), {"n": n}
    )


def _hold_out_students(name: str, ds: Dataset, held: set[str], params: dict[str, Any]) -> Split:
    students = ds.students
    events = ds.events
    in_test = is_in(events["student_id"], held)
    return _finish(
        name,
        ds,
        students[~is_in(students["student_id"], held)],
        rows_where(events, ~in_test),
        rows_where(events, in_test),
        params,
        cold_start=True,
    )


def new_students(ds: Dataset, fraction: float = DEFAULT_FRACTION, seed: int = 42) -> Split:
    """Hold out a random fraction of the students entirely; they are scored from their profile only.

    Args:
        ds: the dataset.
        fraction: share of the students with events to hold out, in (0, 1).
        seed: random seed of the draw.

    Returns:
        The split (`cold_start` True).

    Raises:
        SplitError: a bad fraction or too few students.
    """
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"new_students split: fraction must be in (0, 1), got {fraction}")
    candidates = np.array(sorted(distinct_text(ds.events["student_id"])), dtype=object)
    if candidates.size < 2:
        raise SplitError("new_students split: needs at least two students with events")
    size = min(max(1, round(fraction * candidates.size)), candidates.size - 1)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(candidates, size=size, replace=False).tolist())
    return _hold_out_students("new_students", ds, held, {"fraction": fraction, "seed": seed})


def new_region(ds: Dataset, region: str = DEFAULT_NEW_REGION) -> Split:
    """Hold out every student of one region: a partner region joining the platform (cold start).

    Args:
        ds: the dataset.
        region: region code held out (default `taebaek`, the newest partner).

    Returns:
        The split (`cold_start` True).

    Raises:
        SplitError: no student of that region (the message lists the regions present).
    """
    regions = ds.students["region"].astype(str)
    held = set(ds.students.loc[(regions == region).to_numpy(), "student_id"].astype(str))
    if not held:
        counts = regions.value_counts().sort_index()
        present = ", ".join(f"{r} ({c})" for r, c in counts.items())
        raise SplitError(f"new_region split: no student of region '{region}'; regions present: {present}")
    if len(held) == len(regions):
        raise SplitError(f"new_region split: every student is in '{region}'; nothing is left to train on")
    return _hold_out_students("new_region", ds, held, {"region": region})


def read_events_file(path: Path | str, ds: Dataset) -> pa.Table:
    """Read and validate an events file (.parquet or .csv) against the dataset's students and lectures.

    Read as `learnrec data import` reads events (`features.event_files`: Arrow blocks, ids as text, zone-less
    times as UTC, missing event ids generated), never as a pandas frame.

    Args:
        path: the file.
        ds: the dataset whose students and lectures the events must reference.

    Returns:
        The validated events (`features.event_table`).

    Raises:
        DatasetNotFoundError: the file does not exist.
        SchemaError: a row breaks the events schema (names file, row, column).
    """
    import pandas as pd

    from features.event_files import read_checked_events

    return read_checked_events(
        path,
        student_ids=pd.Index(ds.students["student_id"].astype(str)),
        lecture_ids=pd.Index(ds.lectures["lecture_id"].astype(str)),
    )


def explicit(
    ds: Dataset,
    train_events: pd.DataFrame | pa.Table | Path | str,
    test_events: pd.DataFrame | pa.Table | Path | str,
) -> Split:
    """A split given as two event tables (for comparison with published results).

    Test students absent from the training events are scored as new students.

    Args:
        ds: the dataset (students and lectures; its own events are not used).
        train_events: training events, a table (Arrow or pandas) or a .parquet/.csv file.
        test_events: test events, a table (Arrow or pandas) or a .parquet/.csv file.

    Returns:
        The split.
    """
    params: dict[str, Any] = {}
    frames = []
    for role, value in (("train", train_events), ("test", test_events)):
        if isinstance(value, Path | str):
            params[f"{role}_events"] = str(value)
            frames.append(read_events_file(value, ds))
        else:
            frames.append(as_event_table(value))
    train, test = frames
    cold = not distinct_text(test["student_id"]) & distinct_text(train["student_id"])
    return _finish("explicit", ds, ds.students, train, test, params, cold_start=cold)


def make_split(name: str, ds: Dataset, **params: Any) -> Split:
    """The split `name` of `ds` with keyword parameters (those not used by that split are refused).

    Args:
        name: one of `SPLITS`.
        ds: the dataset.
        **params: the split function's keyword arguments (e.g. `cutoff`, `n`, `fraction`, `region`).

    Returns:
        The split.

    Raises:
        SplitError: unknown split name or parameter.
    """
    functions: dict[str, Callable[..., Split]] = {
        "temporal": temporal,
        "leave_last_n": leave_last_n,
        "new_students": new_students,
        "new_region": new_region,
        "explicit": explicit,
    }
    if name not in functions:
        raise SplitError(f"unknown split '{name}': choose one of {', '.join(SPLITS)}")
    accepted = [p for p in inspect.signature(functions[name]).parameters if p != "ds"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise SplitError(
            f"{name} split does not take {', '.join(unknown)}; it takes {', '.join(accepted) or 'nothing'}"
        )
    return functions[name](ds, **params)


def split_model_params(name: str, params: dict[str, Any], split: Split) -> dict[str, Any]:
    """A model's keyword arguments for `split`: the blend learns its weights on the split's horizon.

    On the temporal split the blend's validation window (`holdout_days`) is the split's test horizon
    (None for an unbounded one: the blend then holds out a share of the latest interactions), unless
    `--param` sets `holdout_days` or `holdout_share`. The test events are never looked at.
    """
    if name == "blend" and split.name == "temporal" and not {"holdout_days", "holdout_share"} & set(params):
        return {"holdout_days": split.params.get("horizon_days"), **params}
    return params
