"""The engine: visits on a simulated clock, lists fetched through a backend, reactions drawn from truth."""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt

from features.store import EventIn
from features.synth_calendar import hour_cdf
from training.errors import SimulationError
from training.simulate.config import (
    DAY,
    DRAW_BLOCKS,
    SERVICE_ID,
    Behaviour,
    Progress,
    SimConfig,
    default_start,
)
from training.simulate.population import Population

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        clock: request id -> the simulated instant of its visit (the service stamps exposures with the
            wall clock; the export puts them back on the simulated clock the events share).
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
    clock: dict[str, datetime] = field(default_factory=dict)

    @property
    def enrolments(self) -> int:
        return sum(1 for e in self.events if e.type == "enrol")

    @property
    def completions(self) -> int:
        return sum(1 for e in self.events if e.type == "complete")


def _sim_id(*parts: str) -> str:
    text = ".".join(parts)
    if SERVICE_ID.match(text):
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


def visit_weights(
    config: SimConfig, population: Population, start: datetime
) -> npt.NDArray[np.float64] | None:
    """Each student's weight in the daily draw of visitors (`training.simulate.config.Visiting`).

    Args:
        config: the simulation (its `Visiting` and seed).
        population: the students, with their history before the simulation.
        start: the first simulated instant: history at or after it is ignored.

    Returns:
        One positive weight per student (population order); None in ``uniform`` mode.
    """
    v = config.visiting
    if v.mode == "uniform":
        return None
    import pyarrow as pa

    from training.ab.columns import NONE, index_in, micros, microseconds

    n = len(population)
    activity = np.zeros(n, dtype=np.float64)
    history = population.history
    if history is not None and history.num_rows:
        at = micros(history.column("occurred_at"))
        start_at = microseconds(start - _EPOCH)
        before = (at < start_at) & (at != NONE)
        age_days = (start_at - at[before]) / 1e6 / 86400.0  # (as pandas' total_seconds() / 86400)
        rows = index_in(history.column("student_id"), pa.array(population.student_ids, pa.string()))[before]
        known = rows >= 0
        np.add.at(activity, rows[known], np.exp(-age_days[known] * math.log(2) / v.half_life_days))
    # one normal per ground-truth row: a student's propensity does not depend on who else is simulated
    rows = population.truth_rows.astype(np.int64)
    z = np.random.default_rng(np.random.SeedSequence([config.seed, 3])).standard_normal(
        int(rows.max()) + 1 if n else 0
    )[rows]
    weights: npt.NDArray[np.float64] = (v.floor + activity) ** v.exponent * np.exp(
        v.sigma * z - v.sigma**2 / 2
    )
    return weights


def _visits_of_day(
    config: SimConfig,
    population: Population,
    day: int,
    day_start: datetime,
    hours: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64] | None = None,
) -> tuple[list[Visit], list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]]:
    """The day's visitors in time order, each with its fixed layout of draws (uniforms, normals).

    Visitors are drawn without replacement, uniformly or with probabilities proportional to ``weights``
    (successive sampling: the ``students_per_day`` largest ``log(w) + Gumbel`` keys).
    """
    k = config.k
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1, day]))
    size = min(config.students_per_day, len(population))
    if weights is None:
        chosen = np.sort(rng.choice(len(population), size=size, replace=False))
    else:
        keys = np.log(weights) + rng.gumbel(size=len(population))
        chosen = np.sort(np.argpartition(-keys, size - 1)[:size])
    visits: list[Visit] = []
    draws: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = []
    for i in chosen.tolist():
        # seeded by (seed, student, day): the same student's day is the same whatever else happens
        vrng = np.random.default_rng(
            np.random.SeedSequence([config.seed, 2, int(population.truth_rows[i]), day])
        )
        u = vrng.random(2 + len(DRAW_BLOCKS) * k)
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
    end = start + config.days * DAY
    run = config.run_name
    result = SimResult(run=run, start=start, end=end)
    k = config.k
    examine = Behaviour.examine(k)
    hours = hour_cdf()
    b = config.behaviour
    pending: list[tuple[datetime, str, EventIn]] = []
    enrolled: dict[str, set[str]] = {}
    weights = visit_weights(config, population, start)

    def flush(before: datetime) -> None:
        due = []
        while pending and pending[0][0] < before:
            due.append(heapq.heappop(pending)[2])
        if due:
            result.posted.add(backend.post_events(due))
            result.events.extend(due)

    for day in range(config.days):
        day_start = start + day * DAY
        flush(day_start)
        visits, draws = _visits_of_day(config, population, day, day_start, hours, weights)
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
            result.clock[answer.request_id] = visit.at
            arm = result.arms.setdefault(_arm_label(answer), ArmCounts())
            arm.visits += 1
            arm.students.add(visit.student_id)
            arm.shown += len(answer.lecture_ids)
            blocks = {name: u[2 + j * k : 2 + (j + 1) * k] for j, name in enumerate(DRAW_BLOCKS)}
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
