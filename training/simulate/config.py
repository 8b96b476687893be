"""Simulation settings: the simulated clock, the students' behaviour, the run's configuration."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from features.synth_calendar import KST_OFFSET_S

if TYPE_CHECKING:
    pass

#: `progress(stage, done, total)` callback.
Progress = Callable[[str, int, int], None]

#: Events per POST /events (the service's limit).
POST_BATCH = 1000
#: Ids the service accepts (``service.schemas.ID_PATTERN``); longer simulated ids are hashed.
SERVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$")
_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_REGION = re.compile(r"^[a-z][a-z0-9_]*$")
DAY = timedelta(days=1)
_KST = timedelta(seconds=KST_OFFSET_S)
# draws per visit: hour, second, then one block of k per purpose (layout fixed so arms share draws)
DRAW_BLOCKS = ("enrol", "minute", "complete", "progress", "fraction", "drop")


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


#: How the day's visitors are chosen (`Visiting.mode`).
VISIT_MODES = ("activity", "uniform")


@dataclass(frozen=True)
class Visiting:
    """Who visits on a simulated day: an ASSUMPTION about students, documented here and in `bench/AB.md`.

    ``activity`` (the default): a student's propensity to visit persists. Student i's weight is

        w_i = (floor + A_i) ** exponent * exp(sigma * z_i - sigma ** 2 / 2)

    where A_i is the student's recency-weighted activity in the dataset before the simulation starts
    (each enrol and complete event counts ``exp(-age / half_life_days * ln 2)``), and z_i a standard normal
    drawn once per student and run (unobserved propensity: a student with no history may still be a
    regular). Each day `SimConfig.students_per_day` students are drawn without replacement with
    probabilities proportional to w (successive sampling, via the Gumbel-top-k trick), so the students who
    were active lately come back more often, as real ones do: the heavy tail of the generator's activity
    rates carries over into the experiment, and pre-experiment activity predicts in-experiment outcomes
    (what CUPED needs). The weights are fixed for the run (what happens during the experiment does not
    change who visits).

    ``uniform``: every student of the regions is equally likely each day (the behaviour before issue 15;
    pre-experiment activity then predicts nothing about visits, and CUPED cannot reduce variance).

    Attributes:
        mode: ``activity`` or ``uniform``.
        half_life_days: half-life of an event's weight in A_i.
        floor: added to A_i, so a student without recent activity still visits now and then.
        exponent: how steeply the weight grows with activity.
        sigma: spread of the unobserved propensity (log scale); 0 = none.
    """

    mode: str = "activity"
    half_life_days: float = 21.0
    floor: float = 1.0
    exponent: float = 1.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in VISIT_MODES:
            raise ValueError(f"visit mode must be one of {', '.join(VISIT_MODES)}, got {self.mode!r}")
        if not self.half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0, got {self.half_life_days}")
        if not self.floor > 0:
            raise ValueError(f"floor must be > 0, got {self.floor}")
        if not self.exponent >= 0:
            raise ValueError(f"exponent must be >= 0, got {self.exponent}")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")


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
        visiting: who visits each day (`Visiting`).
    """

    regions: tuple[str, ...]
    days: int = 14
    students_per_day: int = 200
    k: int = 10
    seed: int = 42
    start: datetime | None = None
    run: str | None = None
    behaviour: Behaviour = field(default_factory=Behaviour)
    visiting: Visiting = field(default_factory=Visiting)

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
    latest_start = _kst_midnight(now - days * DAY - DAY)
    if last_event is None:
        return latest_start
    after = _kst_midnight(last_event) + DAY
    return min(after, latest_start)


def _kst_midnight(moment: datetime) -> datetime:
    local = moment.astimezone(UTC) + _KST
    return datetime(local.year, local.month, local.day, tzinfo=UTC) - _KST
