"""Synthetic students who use the recommendation service, to prove the A/B loop end to end.

A simulation runs on a simulated clock of `SimConfig.days` days. Each day `students_per_day` students of
the chosen regions (drawn from a synthetic dataset's students) visit once, at an hour drawn from the
platform's hour-of-day profile, fetch a list of `k` lectures, and react to it with the generator's hidden
truth (`features.ground_truth`):

* a student looks at position p with probability ``1 / log2(p + 1)`` (the DCG discount) and enrols in a
  lecture looked at with `GroundTruth` enrol probability, so the chance to enrol at position p is
  ``enrol_probability * 1 / log2(p + 1)``;
* an enrolled lecture is completed with the `GroundTruth` completion probability, after a lognormal delay
  (median 2 days); on the way the student reports progress; a student who does not complete often reports
  some progress and sometimes drops the lecture;
* events carry the simulated time as ``occurred_at`` and the ``request_id`` of the list they follow, so
  outcomes are attributed to exposures by request id (exposures are stamped with the service's wall
  time, which a simulated clock cannot match).

Events are sent when the simulated clock reaches them: at the start of each day, everything that happened
before it; events after the last day are never sent (they have not happened yet, ``censored``).

Every random draw comes from a generator seeded by (seed, student, day) or (seed, day), with a fixed
layout of draws per visit: the same seed gives the same visits, times, event ids and, for the same
lists, the same reactions, whatever the concurrency or the experiment arm (common random numbers: two arms
showing the same list get the same outcome, so an A/A experiment differs only by assignment).

Two backends run the same engine:

* `HttpBackend`: the running service over real HTTP (``GET /recommendations``, ``POST /events``,
  ``PUT /students/{id}``); exposures and events flow through the service's Redis streams;
* `InProcessBackend`: no HTTP, for repeated runs (`repeat_experiment`): the service's own ranking
  (`service.ranking.RankingModel`, prepared from registered or fitted recommenders), the service's
  assignment (`service.experiments.ExperimentRegistry`), the exposure wire format
  (`service.experiments.exposure_fields` decoded by `training.ab.exposures.from_stream_fields`), and
  `OnlineState`, an in-process twin of the feature store's per-student state (same weights, drop rule and
  recent list as the Lua script of `features.store`; a test checks it against a real Redis). Attribution
  and statistics are `training.ab.attribution.attribute` and `training.ab.stats.analyse`.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from features.ground_truth import GroundTruth
from features.matrices import DROP_WEIGHT, PROGRESS_SLOPE, STAGE_WEIGHT
from features.store import EventIn, EventOutcome, StudentProfile, StudentRecord, event_fields
from features.synth_calendar import KST_OFFSET_S, hour_cdf
from training.errors import SimulationError

if TYPE_CHECKING:
    import httpx
    import pandas as pd

    from service.experiments import ExperimentConfig
    from service.ranking import RankingModel
    from training.ab.stats import Analysis

#: `progress(stage, done, total)` callback.
Progress = Callable[[str, int, int], None]

#: Events per POST /events (the service's limit).
POST_BATCH = 1000
#: Ids the service accepts (``service.schemas.ID_PATTERN``); longer simulated ids are hashed.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")
_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_REGION = re.compile(r"^[a-z][a-z0-9_]*$")
_DAY = timedelta(days=1)
_KST = timedelta(seconds=KST_OFFSET_S)
# draws per visit: hour, second, then one block of k per purpose (layout fixed so arms share draws)
_BLOCKS = ("enrol", "minute", "complete", "progress", "fraction", "drop")


# ----------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class Behaviour:
    """How simulated students react to a list; the appeal itself is the dataset's ground truth.

    Attributes:
        enrol_minutes: an enrolment follows the visit after this many minutes (uniform range).
        complete_median_days: median delay from enrolment to completion (lognormal).
        complete_sigma: sigma of the log of that delay.
        progress_share: share of students who do not complete but report some progress.
        drop_share: share of students who do not complete and drop the lecture explicitly.
    """

    enrol_minutes: tuple[float, float] = (1.0, 20.0)
    complete_median_days: float = 2.0
    complete_sigma: float = 0.8
    progress_share: float = 0.7
    drop_share: float = 0.45

    @staticmethod
    def examine(k: int) -> npt.NDArray[np.float64]:
        """Probability that a student looks at positions 1..k (``1 / log2(p + 1)``)."""
        out: npt.NDArray[np.float64] = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
        return out


@dataclass(frozen=True)
class SimConfig:
    """One simulation.

    Attributes:
        regions: region codes whose students visit.
        days: simulated days.
        students_per_day: visitors per day (each visits once that day; capped at the population).
        k: lectures asked for per visit.
        seed: seed of every draw.
        start: first simulated instant (UTC); None = `default_start`.
        run: name of the run (part of event and request ids, export directory); default ``seed<seed>``.
        behaviour: reaction parameters.
    """

    regions: tuple[str, ...]
    days: int = 14
    students_per_day: int = 200
    k: int = 10
    seed: int = 42
    start: datetime | None = None
    run: str | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError("regions is empty: name at least one region (e.g. gimpo,taebaek)")
        bad = [r for r in self.regions if not _REGION.match(r)]
        if bad:
            raise ValueError(f"region codes must be lower-case slugs like 'taebaek', got {bad}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if self.students_per_day < 1:
            raise ValueError(f"students_per_day must be >= 1, got {self.students_per_day}")
        if not 1 <= self.k <= 100:
            raise ValueError(f"k must be in 1..100 (the service's limit), got {self.k}")
        if self.start is not None and self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        if self.run is not None and not _RUN.match(self.run):
            raise ValueError(f"run name {self.run!r}: use 1-40 letters, digits, '_' or '-'")

    @property
    def run_name(self) -> str:
        """The run's name (``seed<seed>`` unless given)."""
        return self.run or f"seed{self.seed}"


def default_start(last_event: datetime | None, days: int, now: datetime | None = None) -> datetime:
    """Where the simulated clock starts: the KST midnight after the dataset's last event.

    The service refuses events from the future, so the start moves back when the simulation would end
    after ``now``.

    Args:
        last_event: the dataset's latest ``occurred_at`` (None: no events).
        days: simulated days.
        now: the wall clock (default: now).

    Returns:
        A UTC instant at 00:00 KST.
    """
    now = now or datetime.now(UTC)
    latest_start = _kst_midnight(now - days * _DAY - _DAY)
    if last_event is None:
        return latest_start
    after = _kst_midnight(last_event) + _DAY
    return min(after, latest_start)


def _kst_midnight(moment: datetime) -> datetime:
    local = moment.astimezone(UTC) + _KST
    return datetime(local.year, local.month, local.day, tzinfo=UTC) - _KST


# ----------------------------------------------------------------------------------------------------------
# the feature store's per-student state, in process


def _stored(value: float) -> float:
    """A number as the feature store keeps it (text with 9 significant digits, read back)."""
    return float(f"{value:.9g}")


def _epoch_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class OnlineState:
    """What the feature store holds per student (profile, weighted history, recent enrolments), in memory.

    The rules are those of `features.store`: a pair weighs the furthest funnel stage reached (enrol 0.25,
    progress 0.3 + 0.5 p, complete 1.0), or `DROP_WEIGHT` when its latest event is a drop before
    completion; the recent list holds the lectures enrolled in, oldest first, a re-enrolment moved to the
    end, at most `recent_len`; an event id is applied once. `fork` gives an independent copy
    cheaply (students are copied when first written), so repeated simulations start from one seeded state.

    Args:
        recent_len: length of the recent list (the feature store's default is 20).
    """

    def __init__(self, recent_len: int = 20) -> None:
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

    def seed(self, events: pd.DataFrame, profiles: Iterable[StudentProfile]) -> int:
        """Load profiles and past events as `FeatureStore.seed_history` does (replacing students' state).

        Args:
            events: events table (`features.schemas.EVENTS` columns; ``progress`` optional).
            profiles: profiles to store.

        Returns:
            Students whose history was loaded.
        """
        import pandas as pd

        self.put_profiles(profiles)
        if len(events) == 0:
            return 0
        when = pd.to_datetime(events["occurred_at"], utc=True)
        progress = (
            events["progress"].fillna(0.0).to_numpy(dtype=np.float64)
            if "progress" in events.columns
            else np.zeros(len(events))
        )
        types = events["type"].astype(str).to_numpy()
        stage = np.zeros(len(events))
        stage[types == "enrol"] = STAGE_WEIGHT["enrol"]
        is_progress = types == "progress"
        stage[is_progress] = STAGE_WEIGHT["progress"] + PROGRESS_SLOPE * np.clip(progress[is_progress], 0, 1)
        stage[types == "complete"] = STAGE_WEIGHT["complete"]
        frame = pd.DataFrame(
            {
                "s": events["student_id"].astype(str).to_numpy(),
                "l": events["lecture_id"].astype(str).to_numpy(),
                "type": types,
                "t": ((when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(),
                "stage": stage,
                "row": np.arange(len(events)),
            }
        ).sort_values(["t", "row"], kind="stable")
        pairs = (
            frame.groupby(["s", "l"], sort=False)
            .agg(max_stage=("stage", "max"), last_t=("t", "last"), last_type=("type", "last"))
            .reset_index()
        )
        drop = (pairs["last_type"] == "drop").to_numpy()
        weight = pairs["max_stage"].to_numpy().copy()
        weight[(weight <= 0) | (drop & (weight < STAGE_WEIGHT["complete"]))] = DROP_WEIGHT
        enrols = frame[frame["type"] == "enrol"].drop_duplicates(["s", "l"], keep="last")
        recent = enrols.groupby("s", sort=False)["l"].agg(list)
        for sid in pairs["s"].unique().tolist():
            self._pairs[sid] = {}
            self._history[sid] = {}
            self._recent[sid] = []
            self._owned.add(sid)
        rows = zip(
            pairs["s"].tolist(),
            pairs["l"].tolist(),
            pairs["max_stage"].tolist(),
            pairs["last_t"].tolist(),
            drop.tolist(),
            weight.tolist(),
            strict=True,
        )
        for sid, lid, max_stage, last_t, dropped, w in rows:
            self._pairs[sid][lid] = (_stored(max_stage), int(last_t), int(dropped))
            self._history[sid][lid] = _stored(w)
        for sid, lectures in recent.items():
            self._recent[str(sid)] = list(lectures)[-self.recent_len :]
        return int(pairs["s"].nunique())

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
            ts = _epoch_us(e.occurred_at)
            if e.type == "enrol":
                stage = STAGE_WEIGHT["enrol"]
            elif e.type == "progress":
                stage = STAGE_WEIGHT["progress"] + PROGRESS_SLOPE * min(max(float(e.progress), 0.0), 1.0)
            elif e.type == "complete":
                stage = STAGE_WEIGHT["complete"]
            else:
                stage = 0.0
            max_stage, last, drop = stage, ts, int(e.type == "drop")
            old = pairs.get(e.lecture_id)
            if old is not None:
                max_stage = max(max_stage, old[0])
                if ts < old[1]:  # the latest event decides the drop; ties go to the later arrival
                    last, drop = old[1], old[2]
            weight = max_stage
            if weight <= 0 or (drop and weight < STAGE_WEIGHT["complete"]):
                weight = DROP_WEIGHT
            pairs[e.lecture_id] = (_stored(max_stage), last, drop)
            history[e.lecture_id] = _stored(weight)
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


# ----------------------------------------------------------------------------------------------------------
# the population


@dataclass
class Population:
    """The students who may visit, their hidden truth and their online state before the simulation.

    Attributes:
        dataset_dir: the synthetic dataset.
        student_ids: visitors' ids (dataset order).
        regions: region per student.
        truth_rows: rows of the students in the ground truth.
        profiles: profiles by student id.
        truth: the dataset's ground truth.
        lecture_rows: lecture id -> row in the ground truth.
        state: online state seeded from the dataset's events of these students.
        last_event: the dataset's latest event time.
    """

    dataset_dir: Path
    student_ids: tuple[str, ...]
    regions: tuple[str, ...]
    truth_rows: npt.NDArray[np.int64]
    profiles: dict[str, StudentProfile]
    truth: GroundTruth
    lecture_rows: dict[str, int]
    state: OnlineState
    last_event: datetime | None

    def __len__(self) -> int:
        return len(self.student_ids)


def _profiles(students: pd.DataFrame) -> list[StudentProfile]:
    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    out = []
    for row in students.itertuples(index=False):
        interests: Any = row.interest_subjects
        out.append(
            StudentProfile(
                student_id=str(row.student_id),
                region=str(row.region),
                grade=str(row.grade),
                school_level=text(row.school_level),
                target_exam=text(row.target_exam),
                interest_subjects=tuple(str(x) for x in interests) if interests is not None else (),
            )
        )
    return out


def load_population(dataset_dir: Path, regions: Sequence[str], recent_len: int = 20) -> Population:
    """The students of `regions` in a synthetic dataset, with their ground truth and seeded online state.

    Args:
        dataset_dir: a dataset written by `learnrec data synth` (it carries ``ground_truth/``).
        regions: region codes.
        recent_len: length of the recent list of the online state.

    Returns:
        The population.

    Raises:
        DatasetNotFoundError: the dataset or its ground truth is missing.
        SimulationError: no student of those regions.
    """
    from features.tables import read_dataset

    dataset_dir = Path(dataset_dir)
    truth = GroundTruth.load(dataset_dir)  # first: a dataset without ground truth fails fast
    ds = read_dataset(dataset_dir)
    students = ds.students[ds.students["region"].isin(list(regions))]
    if students.empty:
        known = ", ".join(sorted(ds.students["region"].astype(str).unique()))
        raise SimulationError(
            f"no student of region(s) {', '.join(regions)} in {dataset_dir} (it has {known})"
        )
    ids = tuple(str(s) for s in students["student_id"])
    truth_rows = truth.student_rows(ids)
    lecture_ids = [str(x) for x in ds.lectures["lecture_id"]]
    lecture_rows = dict(zip(lecture_ids, truth.lecture_rows(lecture_ids).tolist(), strict=True))
    profiles = _profiles(students)
    state = OnlineState(recent_len)
    events = ds.events[ds.events["student_id"].isin(set(ids))]
    state.seed(events, profiles)
    last = ds.events["occurred_at"].max() if len(ds.events) else None
    return Population(
        dataset_dir=dataset_dir,
        student_ids=ids,
        regions=tuple(str(r) for r in students["region"]),
        truth_rows=truth_rows,
        profiles={p.student_id: p for p in profiles},
        truth=truth,
        lecture_rows=lecture_rows,
        state=state,
        last_event=None if last is None else last.to_pydatetime(),
    )


# ----------------------------------------------------------------------------------------------------------
# the engine


@dataclass(frozen=True)
class Visit:
    """One student opening the portal on a simulated day."""

    day: int
    at: datetime
    student: int  # index into the population
    student_id: str
    region: str
    request_id: str


@dataclass(frozen=True)
class Shown:
    """What the recommendation call answered (or why it failed)."""

    request_id: str
    lecture_ids: tuple[str, ...] = ()
    experiment: str | None = None
    variant: str | None = None
    model_version: str | None = None
    error: str | None = None


@dataclass
class PostSummary:
    """What the event intake answered."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: PostSummary) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.errors.extend(other.errors[: max(0, 10 - len(self.errors))])


class Backend(Protocol):
    """Where a simulation gets its lists and sends its events."""

    def recommend(self, visits: Sequence[Visit], k: int) -> list[Shown]:
        """One answer per visit, in order."""

    def post_events(self, events: Sequence[EventIn]) -> PostSummary:
        """Send events (in time order)."""


@dataclass
class ArmCounts:
    """Per experiment arm (or ``-`` outside any experiment): visits and what followed."""

    visits: int = 0
    students: set[str] = field(default_factory=set)
    shown: int = 0
    enrolments: int = 0
    completions: int = 0


@dataclass
class SimResult:
    """What one simulation did.

    Attributes:
        run: run name.
        start: first simulated instant.
        end: end of the simulated window (exclusive).
        visits: recommendation calls made.
        failed: calls that failed (after retries).
        errors: first failure messages.
        events: events sent (their time reached within the window), in sending order.
        censored: events after the window (never sent).
        posted: what the intake answered.
        arms: per (experiment, variant) label, visit and outcome counts.
        unknown_lectures: shown lectures the ground truth does not know (never enrolled in).
        seconds: wall time.
    """

    run: str
    start: datetime
    end: datetime
    visits: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    events: list[EventIn] = field(default_factory=list)
    censored: int = 0
    posted: PostSummary = field(default_factory=PostSummary)
    arms: dict[str, ArmCounts] = field(default_factory=dict)
    unknown_lectures: int = 0
    seconds: float = 0.0

    @property
    def enrolments(self) -> int:
        return sum(1 for e in self.events if e.type == "enrol")

    @property
    def completions(self) -> int:
        return sum(1 for e in self.events if e.type == "complete")


def _sim_id(*parts: str) -> str:
    text = ".".join(parts)
    if _ID.match(text):
        return text
    # ids must stay within the service's pattern: hash what does not fit, keeping a readable prefix
    return f"sim.{hashlib.sha256(text.encode('utf-8')).hexdigest()[:40]}"


def _arm_label(shown: Shown) -> str:
    return f"{shown.experiment}/{shown.variant}" if shown.experiment else "-"


def _funnel(
    run: str,
    visit: Visit,
    lecture_id: str,
    position: int,
    blocks: Mapping[str, npt.NDArray[np.float64]],
    z: float,
    p_complete: float,
    behaviour: Behaviour,
    request_id: str,
) -> list[EventIn]:
    """The events of one enrolment: enrol, then progress and completion, or progress and maybe a drop."""
    b, p = behaviour, position
    lo, hi = b.enrol_minutes
    # + p seconds: the enrolments of one list keep their list order
    t0 = visit.at + timedelta(minutes=lo + (hi - lo) * float(blocks["minute"][p]), seconds=p)
    days = max(math.exp(math.log(b.complete_median_days) + b.complete_sigma * z), 1 / 144)
    delay = timedelta(days=days)
    sid = visit.student_id

    def event(kind: str, progress: float, at: datetime) -> EventIn:
        return EventIn(
            _sim_id("sim", run, sid, lecture_id, kind), sid, lecture_id, kind, progress, at, request_id
        )

    out = [event("enrol", 0.0, t0)]
    if blocks["complete"][p] < p_complete:
        out += [event("progress", 0.5, t0 + delay / 2), event("complete", 1.0, t0 + delay)]
        return out
    if blocks["progress"][p] < b.progress_share:
        out.append(event("progress", round(0.1 + 0.8 * float(blocks["fraction"][p]), 3), t0 + delay / 2))
    if blocks["drop"][p] < b.drop_share:
        out.append(event("drop", 0.0, t0 + delay))
    return out


def _visits_of_day(
    config: SimConfig, population: Population, day: int, day_start: datetime, hours: npt.NDArray[np.float64]
) -> tuple[list[Visit], list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]]:
    """The day's visitors in time order, each with its fixed layout of draws (uniforms, normals)."""
    k = config.k
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1, day]))
    chosen = np.sort(
        rng.choice(len(population), size=min(config.students_per_day, len(population)), replace=False)
    )
    visits: list[Visit] = []
    draws: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
    for i in chosen.tolist():
        # seeded by (seed, student, day): the same student's day is the same whatever else happens
        vrng = np.random.default_rng(
            np.random.SeedSequence([config.seed, 2, int(population.truth_rows[i]), day])
        )
        u = vrng.random(2 + len(_BLOCKS) * k)
        z = vrng.standard_normal(k)
        hour = min(
            int(np.searchsorted(hours, u[0], side="right")), 23
        )  # KST hour; the day starts at 00:00 KST
        at = day_start + timedelta(hours=hour, seconds=float(u[1]) * 3600.0)
        sid = population.student_ids[i]
        request_id = _sim_id("sim", config.run_name, f"d{day:03d}", sid)
        visits.append(Visit(day, at, i, sid, population.regions[i], request_id))
        draws.append((u, z))
    order = sorted(range(len(visits)), key=lambda j: (visits[j].at, visits[j].student_id))
    return [visits[j] for j in order], [draws[j] for j in order]


def _day_probabilities(
    population: Population, visits: Sequence[Visit], answers: Sequence[Shown], k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """Enrol and completion probabilities of every shown (student, lecture) pair of the day, in list order,
    in one vectorised call; lectures the ground truth does not know are skipped (and counted)."""
    s_rows: list[int] = []
    l_rows: list[int] = []
    unknown = 0
    for visit, answer in zip(visits, answers, strict=True):
        for lid in answer.lecture_ids[:k]:
            lrow = population.lecture_rows.get(lid, -1)
            if lrow >= 0:
                s_rows.append(int(population.truth_rows[visit.student]))
                l_rows.append(lrow)
            else:
                unknown += 1
    if not s_rows:
        return np.zeros(0), np.zeros(0), unknown
    enrol, complete = population.truth.pair_probabilities(
        np.asarray(s_rows, dtype=np.int64), np.asarray(l_rows, dtype=np.int64)
    )
    return enrol, complete, unknown


def simulate(
    config: SimConfig, population: Population, backend: Backend, progress: Progress | None = None
) -> SimResult:
    """Run one simulation against a backend.

    Args:
        config: what to simulate.
        population: the students who may visit.
        backend: the service over HTTP (`HttpBackend`) or in process (`InProcessBackend`).
        progress: ``progress("day", done, days)`` callback.

    Returns:
        Counts, and the events that were sent.

    Raises:
        SimulationError: every call of a day failed (the message quotes the first error).
    """
    started = time.perf_counter()
    start = config.start or default_start(population.last_event, config.days)
    end = start + config.days * _DAY
    run = config.run_name
    result = SimResult(run=run, start=start, end=end)
    k = config.k
    examine = Behaviour.examine(k)
    hours = hour_cdf()
    b = config.behaviour
    pending: list[tuple[datetime, str, EventIn]] = []
    enrolled: dict[str, set[str]] = {}

    def flush(before: datetime) -> None:
        due = []
        while pending and pending[0][0] < before:
            due.append(heapq.heappop(pending)[2])
        if due:
            result.posted.add(backend.post_events(due))
            result.events.extend(due)

    for day in range(config.days):
        day_start = start + day * _DAY
        flush(day_start)
        visits, draws = _visits_of_day(config, population, day, day_start, hours)
        answers = backend.recommend(visits, k)
        failures = [a for a in answers if a.error is not None]
        result.visits += len(visits)
        result.failed += len(failures)
        result.errors.extend(a.error or "" for a in failures[: max(0, 10 - len(result.errors))])
        if visits and len(failures) == len(visits):
            raise SimulationError(
                f"day {day + 1}: all {len(visits)} recommendation calls failed; "
                f"first error: {failures[0].error}"
            )

        p_enrol, p_complete, unknown = _day_probabilities(population, visits, answers, k)
        result.unknown_lectures += unknown
        pair = 0
        for visit, answer, (u, z) in zip(visits, answers, draws, strict=True):
            if answer.error is not None:
                continue
            arm = result.arms.setdefault(_arm_label(answer), ArmCounts())
            arm.visits += 1
            arm.students.add(visit.student_id)
            arm.shown += len(answer.lecture_ids)
            blocks = {name: u[2 + j * k : 2 + (j + 1) * k] for j, name in enumerate(_BLOCKS)}
            taken = enrolled.setdefault(visit.student_id, set())
            for p, lid in enumerate(answer.lecture_ids[:k]):
                if population.lecture_rows.get(lid, -1) < 0:
                    continue
                pe, pc = float(p_enrol[pair]), float(p_complete[pair])
                pair += 1
                if lid in taken or not blocks["enrol"][p] < pe * examine[p]:
                    continue
                taken.add(lid)
                out = _funnel(run, visit, lid, p, blocks, float(z[p]), pc, b, answer.request_id)
                for event in out:
                    if event.occurred_at < end:  # counted as sent: an enrolment after the end is censored
                        heapq.heappush(pending, (event.occurred_at, event.event_id, event))
                        arm.enrolments += event.type == "enrol"
                        arm.completions += event.type == "complete"
                    else:
                        result.censored += 1
        if progress:
            progress("day", day + 1, config.days)
    flush(end)
    result.seconds = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------------------------------------
# in process: the service's ranking, assignment and exposure format without HTTP


class InProcessBackend:
    """The service's answer computed in process, with an `OnlineState` standing in for Redis.

    Args:
        state: the online state (use `OnlineState.fork` of the population's state).
        models: prepared models by reference: the references experiment variants name (``champion``,
            ``challenger``, a version number, or any alias-like name).
        default: reference served to students in no experiment.
        experiments: the experiments in force (assignment uses the simulated time), or None.
    """

    def __init__(
        self,
        state: OnlineState,
        models: Mapping[str, RankingModel],
        default: str,
        experiments: Sequence[ExperimentConfig] = (),
    ) -> None:
        from service.experiments import ExperimentRegistry, ExperimentsFile

        if default not in models:
            raise SimulationError(f"default model {default!r} is not among the models {sorted(models)}")
        self.state = state
        self.models = dict(models)
        self.default = default
        self.registry = ExperimentRegistry(ExperimentsFile(experiments=tuple(experiments)))
        missing = sorted(self.registry.models() - set(self.models))
        if missing:
            raise SimulationError(f"experiment variants name models {missing} that were not loaded")
        self.exposures: list[dict[str, object]] = []
        self.accepted: list[EventIn] = []

    def recommend(self, visits: Sequence[Visit], k: int) -> list[Shown]:
        """Assign, rank and log an exposure per visit, as the service's route does."""
        from service.experiments import exposure_fields
        from training.ab.exposures import from_stream_fields

        out = []
        for v in visits:
            record = self.state.record(v.student_id)
            region = record.profile.region if record.profile is not None else v.region
            assignment = self.registry.assign(v.student_id, region, now=v.at)
            model = self.models[assignment.model if assignment else self.default]
            ranked = model.rank(v.student_id, record, k)
            ids = model.catalogue.lectures.ids
            lecture_ids = tuple(ids[r] for r in ranked.rows)
            fields = exposure_fields(
                v.request_id, v.student_id, region, assignment, model.version, lecture_ids, v.at
            )
            self.exposures.append(from_stream_fields(fields))
            out.append(
                Shown(
                    request_id=v.request_id,
                    lecture_ids=lecture_ids,
                    experiment=assignment.experiment if assignment else None,
                    variant=assignment.variant if assignment else None,
                    model_version=model.version,
                )
            )
        return out

    def post_events(self, events: Sequence[EventIn]) -> PostSummary:
        """Apply events to the online state (idempotent by event id)."""
        outcomes = self.state.apply(events)
        self.accepted.extend(e for e, o in zip(events, outcomes, strict=True) if o == "accepted")
        return PostSummary(
            accepted=outcomes.count("accepted"),
            duplicates=outcomes.count("duplicate"),
            rejected=outcomes.count("conflict"),
        )

    def exposures_frame(self) -> pd.DataFrame:
        """The exposures logged so far (columns of `training.ab.exposures.EXPOSURES`)."""
        from training.ab.exposures import records_to_table

        frame: pd.DataFrame = records_to_table(self.exposures).to_pandas()
        return frame

    def events_frame(self) -> pd.DataFrame:
        """The events applied so far (columns of `features.schemas.EVENTS`)."""
        return events_frame(self.accepted)


def events_frame(events: Sequence[EventIn]) -> pd.DataFrame:
    """Events as a table with the columns of `features.schemas.EVENTS`.

    Args:
        events: the events.

    Returns:
        The frame (``occurred_at`` UTC).
    """
    import pandas as pd

    frame = pd.DataFrame(
        {
            "event_id": [e.event_id for e in events],
            "student_id": [e.student_id for e in events],
            "lecture_id": [e.lecture_id for e in events],
            "type": [e.type for e in events],
            "progress": np.asarray([e.progress for e in events], dtype=np.float32),
            "occurred_at": pd.to_datetime([e.occurred_at for e in events], utc=True),
            "request_id": [e.request_id for e in events],
        }
    )
    return frame


# ----------------------------------------------------------------------------------------------------------
# over HTTP


class _Unauthorized(SimulationError):
    """The service refused the API key: no call can succeed, the run stops."""


class HttpBackend:
    """The running service over real HTTP, with `concurrency` requests in flight.

    Transport errors and 503 answers are retried (events are idempotent by id); a 401 stops the run.

    Args:
        url: base URL of the service.
        api_key: the portal's API key.
        concurrency: requests in flight.
        timeout: seconds per request.
        retries: extra attempts on transport errors and 503.
    """

    def __init__(
        self, url: str, api_key: str, concurrency: int = 4, timeout: float = 10.0, retries: int = 2
    ) -> None:
        import httpx

        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.url = url.rstrip("/")
        self.retries = retries
        self.client = httpx.Client(
            base_url=self.url,
            headers={"X-API-Key": api_key},
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="simulate")

    def close(self) -> None:
        """Close the connections and the worker threads."""
        self.pool.shutdown(wait=True)
        self.client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = exc
                continue
            if response.status_code == 401:
                raise _Unauthorized(f"{self.url} refused the API key: {_detail(response)}")
            if response.status_code == 503 and attempt < self.retries:
                continue
            return response
        raise SimulationError(f"{method} {self.url}{path} failed after {self.retries + 1} attempts: {last!r}")

    def _get(self, visit: Visit, k: int) -> Shown:
        try:
            response = self._send(
                "GET",
                "/recommendations",
                params={"student_id": visit.student_id, "k": k},
                headers={"X-Request-ID": visit.request_id},
            )
        except _Unauthorized:
            raise
        except SimulationError as exc:
            return Shown(visit.request_id, error=str(exc))
        if response.status_code != 200:
            return Shown(
                visit.request_id,
                error=f"GET /recommendations {visit.student_id}: {response.status_code} {_detail(response)}",
            )
        body = response.json()
        experiment, variant = _experiment_fields(body)
        model = body.get("model") or {}
        return Shown(
            request_id=str(body.get("request_id") or visit.request_id),
            lecture_ids=tuple(str(item["lecture_id"]) for item in body.get("items", ())),
            experiment=experiment,
            variant=variant,
            model_version=str(model.get("version")) if isinstance(model, dict) else None,
        )

    def recommend(self, visits: Sequence[Visit], k: int) -> list[Shown]:
        """GET /recommendations for each visit (`concurrency` at a time), answers in visit order."""
        return list(self.pool.map(lambda v: self._get(v, k), visits))

    def post_events(self, events: Sequence[EventIn]) -> PostSummary:
        """POST /events in batches of `POST_BATCH`, in time order.

        Raises:
            SimulationError: a batch was refused as a whole (4xx) or the service stayed unavailable.
        """
        summary = PostSummary()
        for lo in range(0, len(events), POST_BATCH):
            batch = events[lo : lo + POST_BATCH]
            body = {"events": [_event_json(e) for e in batch]}
            response = self._send("POST", "/events", json=body)
            if response.status_code != 200:
                raise SimulationError(
                    f"POST /events refused a batch: {response.status_code} {_detail(response)}"
                )
            answer = response.json()
            part = PostSummary(
                accepted=int(answer.get("accepted", 0)),
                duplicates=int(answer.get("duplicates", 0)),
                rejected=int(answer.get("rejected", 0)),
            )
            for item in answer.get("items", ()):
                if item.get("status") == "rejected" and len(part.errors) < 10:
                    fields = "; ".join(f"{e['field']}: {e['message']}" for e in item.get("errors", ()))
                    part.errors.append(f"event {item.get('event_id')}: {fields}")
            summary.add(part)
        return summary

    def register_students(self, profiles: Sequence[StudentProfile], progress: Progress | None = None) -> int:
        """PUT /students/{id} for each profile, as the portal registers its students.

        Returns:
            Profiles stored.

        Raises:
            SimulationError: a profile was refused (the message quotes the service).
        """

        def put(p: StudentProfile) -> tuple[StudentProfile, int, str]:
            body: dict[str, Any] = {"region": p.region, "grade": p.grade}
            if p.school_level is not None:
                body["school_level"] = p.school_level
            if p.target_exam is not None:
                body["target_exam"] = p.target_exam
            if p.interest_subjects:
                body["interest_subjects"] = list(p.interest_subjects)
            response = self._send("PUT", f"/students/{p.student_id}", json=body)
            return p, response.status_code, "" if response.status_code == 200 else _detail(response)

        stored = 0
        for done, (p, status, detail) in enumerate(self.pool.map(put, profiles), start=1):
            if status != 200:
                raise SimulationError(f"PUT /students/{p.student_id}: {status} {detail}")
            stored += 1
            if progress and (done % 100 == 0 or done == len(profiles)):
                progress("register", done, len(profiles))
        return stored


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:200]


def _experiment_fields(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(experiment key, variant) from a recommendations answer (flat fields or an ``experiment`` object)."""
    experiment = body.get("experiment")
    variant = body.get("variant")
    if isinstance(experiment, Mapping):
        variant = experiment.get("variant", variant)
        experiment = experiment.get("key") or experiment.get("experiment")
    return (str(experiment) if experiment else None), (str(variant) if variant else None)


def _event_json(e: EventIn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": e.event_id,
        "student_id": e.student_id,
        "lecture_id": e.lecture_id,
        "type": e.type,
        "progress": float(e.progress),
        "occurred_at": e.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
    }
    if e.request_id:
        out["request_id"] = e.request_id
    return out


# ----------------------------------------------------------------------------------------------------------
# streams of an HTTP run


def stream_group(run: str) -> str:
    """Consumer group that exports one run's stream entries."""
    return f"simulate-{run}"


def mark_streams(client: Any, run: str) -> dict[str, str]:
    """Create the run's consumer groups at the current end of the events and exposures streams.

    The export of the run then holds exactly what arrived during the run (other traffic of the same
    period included). A group left by an earlier run of the same name is moved to the end.

    Args:
        client: Redis client (bytes responses).
        run: run name.

    Returns:
        Stream name -> id the group starts after.
    """
    from redis.exceptions import ResponseError

    from features import keys

    out = {}
    group = stream_group(run)
    for name, stream in (("events", keys.EVENTS_STREAM), ("exposures", keys.EXPOSURES_STREAM)):
        last = client.xrevrange(stream, count=1)
        start = last[0][0].decode() if last else "0-0"
        try:
            client.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            client.xgroup_setid(stream, group, id=start)
        out[name] = start
    return out


def set_aside_previous_export(out_dir: Path, now: datetime | None = None) -> Path | None:
    """Move the export of an earlier run of the same name aside, so a run's directory holds that run only.

    A rerun with the same ``--run`` (the demo prints one fixed command) would otherwise add its files to
    the earlier run's, and the report read from the directory would mix both. Nothing is deleted.

    Args:
        out_dir: the run's export directory.
        now: time stamp of the new name (default now).

    Returns:
        Where the earlier export went (``<name>.before-<UTC time>`` beside it), or None when there was none.
    """
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return None
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    aside = out_dir.with_name(f"{out_dir.name}.before-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out_dir.with_name(f"{out_dir.name}.before-{stamp}-{n}")
    out_dir.rename(aside)
    return aside


@dataclass(frozen=True)
class RunExport:
    """Where an HTTP run's streams were exported."""

    events_dir: Path
    exposures_dir: Path
    events: int
    exposures: int
    rejected: int


def export_run(
    client: Any,
    run: str,
    out_dir: Path,
    *,
    expect_exposures: int = 0,
    wait_seconds: float = 10.0,
    progress: Progress | None = None,
) -> RunExport:
    """Export the run's events and exposures (`features.streams.export_stream`) and drop its groups.

    Exposures are written by the service as it answers; the export waits up to `wait_seconds` for
    `expect_exposures` of them before it stops.

    Args:
        client: Redis client (bulk).
        run: run name (`mark_streams` created its groups).
        out_dir: export directory (``events/`` and ``exposures/`` below it).
        expect_exposures: exposures the run should have produced.
        wait_seconds: how long to wait for late exposures.
        progress: ``progress(stage, done, total)`` callback.

    Returns:
        Directories and row counts.
    """
    from features import keys
    from features.schemas import EVENTS
    from features.streams import export_stream
    from training.ab.exposures import EXPOSURES, from_stream_fields

    group = stream_group(run)
    events_dir, exposures_dir = out_dir / "events", out_dir / "exposures"
    ev = export_stream(client, keys.EVENTS_STREAM, group, events_dir, progress=progress, schema=EVENTS)
    rejected = ev.rejected
    exposures = 0
    deadline = time.monotonic() + wait_seconds
    while True:
        ex = export_stream(
            client, keys.EXPOSURES_STREAM, group, exposures_dir, progress=progress,
            schema=EXPOSURES, decode=from_stream_fields,
        )  # fmt: skip
        exposures += ex.rows
        rejected += ex.rejected
        if exposures >= expect_exposures or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for stream in (keys.EVENTS_STREAM, keys.EXPOSURES_STREAM):
        client.xgroup_destroy(stream, group)  # a finished run's group must not hold back stream trimming
    return RunExport(events_dir, exposures_dir, ev.rows, exposures, rejected)


# ----------------------------------------------------------------------------------------------------------
# analysis and repetitions


def analyse_run(
    exposures: pd.DataFrame,
    events: pd.DataFrame,
    experiment: ExperimentConfig,
    alpha: float = 0.05,
    metrics: Sequence[str] | None = None,
    window: timedelta = timedelta(days=7),
) -> Analysis:
    """Attribute and analyse one experiment, as `learnrec ab report` does.

    Args:
        exposures: exposures (`training.ab.exposures.EXPOSURES` columns).
        events: events (`features.schemas.EVENTS` columns).
        experiment: the experiment (variants, weights; the first is the control).
        alpha: significance level.
        metrics: metric names (default all of `training.ab.stats.METRICS`).
        window: attribution window.

    Returns:
        The analysis.
    """
    from training.ab.attribution import attribute
    from training.ab.stats import METRICS, analyse

    specs = METRICS if metrics is None else tuple(m for m in METRICS if m.name in set(metrics))
    attribution = attribute(exposures, events, window=window)
    students = attribution.students[attribution.students["experiment"] == experiment.key]
    return analyse(
        students, experiment.shares(), alpha=alpha, metrics=specs, regions=list(experiment.regions)
    )


def experiment_for(
    key: str,
    regions: Sequence[str],
    shares: Mapping[str, float],
    start: datetime,
    end: datetime,
    salt: str | None = None,
) -> ExperimentConfig:
    """An experiment whose variant ``v`` is served by the model registered under reference ``v``.

    Args:
        key: experiment key.
        regions: its regions.
        shares: variant name -> weight; the first is the control.
        start: window start (UTC).
        end: window end (UTC, exclusive).
        salt: hash salt (default the key).

    Returns:
        The validated config.
    """
    from service.experiments import ExperimentConfig

    return ExperimentConfig.model_validate(
        {
            "key": key,
            "salt": salt or key,
            "regions": list(regions),
            "start": start,
            "end": end,
            "variants": [{"name": v, "weight": w, "model": v} for v, w in shares.items()],
        }
    )


#: Columns of `RepeatSummary.rows`.
REPEAT_COLUMNS = (
    "rep", "seed", "metric", "region", "control_students", "treatment_students", "control_value",
    "treatment_value", "abs_lift", "p_value", "p_adjusted", "significant", "srm_mismatch", "lift_se",
)  # fmt: skip


@dataclass
class RepeatSummary:
    """Outcomes of repeated simulations of one experiment (one row per repetition, metric and region).

    Attributes:
        rows: dicts with `REPEAT_COLUMNS`.
        variants: variant -> weight (first = control).
        alpha: significance level.
        repetitions: repetitions run.
        config: the base configuration (repetition r uses seed + r and salt ``<key>.r<r>``).
        seconds: wall time.
    """

    rows: list[dict[str, Any]]
    variants: dict[str, float]
    alpha: float
    repetitions: int
    config: SimConfig
    seconds: float = 0.0

    def rates(self) -> list[dict[str, Any]]:
        """Per (metric, region): share of repetitions significant, significant up / down, mean lift and p.

        Regions with no test in a repetition (too few students) count in ``tested`` only when they had one.
        ``mde`` is the smallest absolute lift the sample detects with 80% power, at alpha / regions for a
        region (Holm's first step, the strictest) and at alpha pooled: the sample "allows" the comparison
        when the lift exceeds it. For rates from the mean arm sizes and control rate
        (`training.ab.power.mde`); for means from the mean standard error of the difference
        (`training.ab.power.mde_mean`).
        """
        from training.ab.power import mde, mde_mean

        kinds = {"enrolment_rate", "completion_rate"}
        regions = len({r["region"] for r in self.rows} - {"pooled"})
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["metric"], row["region"]), []).append(row)
        out: list[dict[str, Any]] = []
        for (metric, region), rows in groups.items():
            tested = [r for r in rows if math.isfinite(r["p_adjusted"])]
            n = len(tested)
            up = sum(1 for r in tested if r["significant"] and r["abs_lift"] > 0)
            down = sum(1 for r in tested if r["significant"] and r["abs_lift"] < 0)
            lifts = [r["abs_lift"] for r in tested if math.isfinite(r["abs_lift"])]
            out.append(
                {
                    "metric": metric,
                    "region": region,
                    "tested": n,
                    "significant": (up + down) / n if n else math.nan,
                    "significant_up": up / n if n else math.nan,
                    "significant_down": down / n if n else math.nan,
                    "mean_abs_lift": float(np.mean(lifts)) if lifts else math.nan,
                    "mean_p": float(np.mean([r["p_adjusted"] for r in tested])) if n else math.nan,
                    "mean_control_students": float(np.mean([r["control_students"] for r in rows])),
                    "mean_treatment_students": float(np.mean([r["treatment_students"] for r in rows])),
                    "mde": math.nan,
                }
            )
            n_c, n_t = out[-1]["mean_control_students"], out[-1]["mean_treatment_students"]
            base = float(np.mean([r["control_value"] for r in rows]))
            level = self.alpha if region == "pooled" else self.alpha / max(regions, 1)
            if metric in kinds and 0 < base < 1:
                out[-1]["mde"] = mde(n_c, n_t, base, alpha=level)
            elif metric not in kinds:
                ses = [r.get("lift_se", math.nan) for r in rows]
                ses = [x for x in ses if math.isfinite(x)]
                out[-1]["mde"] = mde_mean(float(np.mean(ses)), alpha=level) if ses else math.nan
        return out

    def p_values(self, metric: str, region: str) -> list[float]:
        """The p-values of one metric and region over the repetitions (adjusted for regions; raw pooled)."""
        return [
            r["p_adjusted"]
            for r in self.rows
            if r["metric"] == metric and r["region"] == region and math.isfinite(r["p_adjusted"])
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""

        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [clean(v) for v in x]
            return x

        cfg = self.config
        out: dict[str, Any] = clean(
            {
                "variants": self.variants,
                "alpha": self.alpha,
                "repetitions": self.repetitions,
                "config": {
                    "regions": list(cfg.regions),
                    "days": cfg.days,
                    "students_per_day": cfg.students_per_day,
                    "k": cfg.k,
                    "seed": cfg.seed,
                    "start": cfg.start.isoformat() if cfg.start else None,
                },
                "seconds": round(self.seconds, 2),
                "rates": self.rates(),
                "rows": self.rows,
            }
        )
        return out


def repeat_experiment(
    population: Population,
    models: Mapping[str, RankingModel],
    shares: Mapping[str, float],
    config: SimConfig,
    repetitions: int,
    *,
    alpha: float = 0.05,
    key: str = "simulated",
    metrics: Sequence[str] = ("enrolment_rate", "completion_rate"),
    progress: Progress | None = None,
) -> RepeatSummary:
    """Run the in-process simulation `repetitions` times and analyse each run's experiment.

    Repetition r uses seed ``config.seed + r`` (other visitors, times and reactions) and salt
    ``<key>.r<r>`` (another random split of the students), so the repetitions are independent
    experiments. With the same model behind every variant (an A/A test) the share of significant results
    estimates the false-positive rate; with different models, the power to detect their difference.

    Args:
        population: the students (its state is forked per repetition, never changed).
        models: variant name -> prepared model (the same object twice for an A/A test).
        shares: variant name -> weight; the first is the control.
        config: the simulation (its seed is the first repetition's).
        repetitions: how many runs.
        alpha: significance level.
        key: experiment key.
        metrics: metrics analysed.
        progress: ``progress("repetition", done, total)`` callback.

    Returns:
        One row per repetition, metric and region (and ``pooled``).
    """
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    if list(models) != list(shares):
        raise ValueError(f"models {list(models)} and shares {list(shares)} must name the same variants")
    started = time.perf_counter()
    start = config.start or default_start(population.last_event, config.days)
    rows: list[dict[str, Any]] = []
    for rep in range(repetitions):
        cfg = SimConfig(
            regions=config.regions, days=config.days, students_per_day=config.students_per_day, k=config.k,
            seed=config.seed + rep, start=start, run=f"{config.run_name}-r{rep}", behaviour=config.behaviour,
        )  # fmt: skip
        experiment = experiment_for(
            key, config.regions, shares, start, start + config.days * _DAY, salt=f"{key}.r{rep}"
        )
        backend = InProcessBackend(population.state.fork(), models, next(iter(models)), [experiment])
        simulate(cfg, population, backend)
        analysis = analyse_run(backend.exposures_frame(), backend.events_frame(), experiment, alpha, metrics)
        srm = {s.region: s.mismatch for s in analysis.srm}
        for c in analysis.comparisons:
            rows.append(
                {
                    "rep": rep,
                    "seed": cfg.seed,
                    "metric": c.metric,
                    "region": c.region,
                    "control_students": c.control.students,
                    "treatment_students": c.treatment.students,
                    "control_value": float(c.control.value),
                    "treatment_value": float(c.treatment.value),
                    "abs_lift": float(c.estimate.abs_lift),
                    "p_value": float(c.estimate.p_value),
                    "p_adjusted": float(c.p_adjusted),
                    "significant": bool(c.significant),
                    "srm_mismatch": bool(srm.get(c.region, False)),
                    "lift_se": _lift_se(c),
                }
            )
        if progress:
            progress("repetition", rep + 1, repetitions)
    return RepeatSummary(
        rows=rows,
        variants=dict(shares),
        alpha=alpha,
        repetitions=repetitions,
        config=SimConfig(
            regions=config.regions,
            days=config.days,
            students_per_day=config.students_per_day,
            k=config.k,
            seed=config.seed,
            start=start,
            run=config.run,
            behaviour=config.behaviour,
        ),
        seconds=time.perf_counter() - started,
    )


def _lift_se(c: Any) -> float:
    """Standard error of a comparison's difference: from the arms' variances, or the pooled estimate's."""
    v = c.control.variance + c.treatment.variance
    if math.isfinite(v):
        return math.sqrt(v)
    return float(c.estimate.extra.get("se", math.nan)) if c.estimate.test == "stratified-z" else math.nan


def prepare_models(loaded: Mapping[str, Any]) -> dict[str, RankingModel]:
    """`RankingModel`s (the service's request-path form) of loaded model versions, one per distinct object.

    Args:
        loaded: name -> `models.loading.LoadedModel`; the same object under two names is prepared once
            (an A/A test then really serves one model).

    Returns:
        name -> prepared model.
    """
    from service.ranking import RankingModel

    prepared: dict[int, RankingModel] = {}
    out = {}
    for name, model in loaded.items():
        if id(model) not in prepared:
            prepared[id(model)] = RankingModel.prepare(model)
        out[name] = prepared[id(model)]
    return out
