"""Synthetic Seoul Learn (서울런)-shaped datasets: students, a lecture catalogue, two school years of events.

`generate(config, out_dir)` writes a dataset directory (see `features.tables`) plus ``ground_truth/``:

* **students** of the partner regions (Seoul 35,000 and the partners that joined later), grades 중1..고3
  and out-of-school youth (~5%), an optional profile (school level, target exam, 1-3 interest subjects
  that partly reveal the hidden taste) and a support category (`features.schemas.SUPPORT_CATEGORIES`:
  out-of-school youth are ``out_of_school``, the others drawn by `SUPPORT_SHARES`, an assumption: the
  programme publishes no breakdown). Its effect on behaviour is an ASSUMPTION too, configurable and none
  by default: `SynthConfig.support_activity` multiplies the activity rate of a category's students;
* **lectures** from `features.synth_catalogue`: series of ordered episodes by several providers, some
  licensed only in some regions, a few withdrawn;
* **events** (enrol, progress, complete, drop) driven by hidden per-student tastes
  (`features.ground_truth`): a student starts a heavy-tailed number of series, chosen by a multinomial
  logit over the true appeal among the series licensed in their region and suited to their grade, at
  times that follow the school calendar (`features.synth_calendar`), and walks each series in order,
  completing episodes with the true completion probability and stopping more often after a failure.

Each student is active within one school year (their grade is that year's), from a join day (partner
regions only after their launch) for a lognormal span; third-year high-school students stop soon after
the 수능. Students are simulated in chunks of `chunk_students` with numpy (no per-event Python loops),
events go to weekly temporary files and are then written sorted by (occurred_at, event_id) with one
`pyarrow.parquet.ParquetWriter`, so memory stays bounded for a million students. The same config (seed
and chunk size included) gives identical tables.

Size: over 600 lines because one generative model whose parts share the random streams that make a seed
reproducible (the calendar, the catalogue and the I/O already live in their own modules).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from features.durable import fsync_dir, swap_in
from features.errors import DatasetNotFoundError
from features.ground_truth import (
    EXAM_GOALS,
    GROUND_TRUTH_DIR,
    LATENT_DIM,
    SUBJECT_SHARES,
    SUBJECTS,
    GroundTruthMeta,
    IdFormat,
    ModelWeights,
    StudentTraits,
    StudentTraitsWriter,
    appeal_matrix,
    appeal_pairs,
    complete_from_appeal,
    write_lecture_traits,
    write_meta,
)
from features.schemas import EVENT_TYPES, EVENTS, GRADES, REGION_PATTERN, STUDENTS, SUPPORT_CATEGORIES
from features.synth_calendar import DAY_S, US, Window, daily_intensity, hour_cdf, suneung_day, window_for
from features.synth_catalogue import PROVIDER_NAMES, SynthCatalogue, build_catalogue
from features.synth_io import RECORD, EventBuckets, fixed_ids, take_strings
from features.tables import DATASET_FORMAT, MANIFEST_FILE, TABLE_FILES

#: Students per region of the platform (Seoul Learn and its partner regions).
DEFAULT_REGION_SIZES: dict[str, int] = {
    "seoul": 35_000,
    "chungbuk": 3_000,
    "incheon": 2_500,
    "gimpo": 1_500,
    "pyeongchang": 800,
    "taebaek": 500,
}
#: Day a partner region's students could start (Seoul runs since 2021); other regions start with the window.
REGION_LAUNCH: dict[str, dt.date] = {
    "chungbuk": dt.date(2024, 12, 1),
    "gimpo": dt.date(2025, 2, 1),
    "pyeongchang": dt.date(2025, 3, 1),
    "incheon": dt.date(2025, 4, 1),
    "taebaek": dt.date(2025, 9, 1),
}
GENERATOR: Final = "learnrec.features.synth"
GENERATOR_VERSION: Final = "1"
STUDENT_IDS_PREFIX: Final = "s"

Progress = Callable[[str, int, int], None]

# -- behaviour constants (see the module docstring of features.ground_truth for the appeal model) ---------
_GRADE_SHARES: dict[str, float] = {
    "m1": 0.14,
    "m2": 0.15,
    "m3": 0.16,
    "h1": 0.17,
    "h2": 0.17,
    "h3": 0.16,
    "oos": 0.05,
}
#: Goal (over EXAM_GOALS: 수능, 내신, 검정고시, none) by grade.
_GOAL_SHARES: dict[str, tuple[float, float, float, float]] = {
    "m1": (0.0, 0.7, 0.0, 0.3),
    "m2": (0.0, 0.7, 0.0, 0.3),
    "m3": (0.05, 0.7, 0.0, 0.25),
    "h1": (0.35, 0.55, 0.0, 0.10),
    "h2": (0.35, 0.55, 0.0, 0.10),
    "h3": (0.70, 0.20, 0.0, 0.10),
    "oos": (0.20, 0.0, 0.70, 0.10),
}
#: Support category of a student who is not out of school (an assumption; out-of-school youth are
#: ``out_of_school``): shares over `SUPPORT_CATEGORIES` without ``out_of_school``.
SUPPORT_SHARES: dict[str, float] = {
    "basic_livelihood": 0.38,
    "near_poverty": 0.20,
    "single_parent": 0.20,
    "multicultural": 0.08,
    "other": 0.14,
}
_PREFERRED_LEVEL = {"m1": 1.7, "m2": 1.7, "m3": 1.8, "h1": 2.0, "h2": 2.0, "h3": 2.2, "oos": 1.3}
_TASTE_SD: Final = 1.0
_LATENT_SD: Final = 0.35
_PROVIDER_SD: Final = 0.35
#: Series started per month of activity: lognormal (median, sigma): the heavy tail of activity.
_RATE_MEDIAN: Final = 0.7
_RATE_SIGMA: Final = 1.0
_OUTSIDE_BASE: Final = 3.0
#: Days a student stays active: lognormal (median, sigma), cut at the end of the school year.
_SPAN_MEDIAN_DAYS: Final = 150.0
_SPAN_SIGMA: Final = 0.8
_MAX_STARTS: Final = 150
_MID_SERIES_ENTRY: Final = 0.15  # starts a series at a later episode (a unit needed for an exam)
_SKIP_EPISODE: Final = 0.05  # jumps one episode ahead
_CATCH_UP: Final = 0.5  # a skipped episode is taken later
_CONTINUE_DONE: Final = 2.0  # logit of going on to the next episode after completing one
_CONTINUE_UNDONE: Final = 0.3  # ... after leaving one unfinished
_BINGE: Final = 0.3  # next episode right after this one
_DROP_EXPLICIT: Final = 0.45  # an unfinished enrolment is dropped explicitly (else abandoned silently)
_PROFILE_MISSING = {"school_level": 0.08, "target_exam": 0.10, "interest_subjects": 0.30}
_SCHOOL_LEVEL = ("middle", "high", "none")
#: Students per choice block: bounds the (students x series) utility matrix to ~4M cells.
_CHOICE_CELLS: Final = 4_000_000


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Attributes:
        region_sizes: students per region code (Seoul Learn and its partner regions by default).
        lectures: lectures in the catalogue.
        start: first day (KST) of the simulated window (two Korean school years from 1 March 2024).
        years: length of the window in years.
        seed: random seed; the same config gives the same tables.
        chunk_students: students simulated at once (memory bound; part of the random stream).
        support_activity: support category -> multiplier of its students' activity rate (series started
            per month): the assumed effect of the category on behaviour. Empty (the default): none, every
            category behaves alike; e.g. ``{"basic_livelihood": 0.8}`` makes them 20% less active.
    """

    region_sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_REGION_SIZES))
    lectures: int = 5000
    start: dt.date = dt.date(2024, 3, 1)
    years: float = 2.0
    seed: int = 42
    chunk_students: int = 20_000
    support_activity: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.region_sizes:
            raise ValueError("region_sizes is empty: give at least one region and its number of students")
        for region, size in self.region_sizes.items():
            if not re.fullmatch(REGION_PATTERN, region):
                raise ValueError(f"region code {region!r} must be a lower-case ASCII slug like 'seoul'")
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"region {region!r}: students must be a whole number >= 0, got {size!r}")
        if self.students < 1:
            raise ValueError("region_sizes adds up to 0 students: give at least one")
        if self.lectures < 1:
            raise ValueError(f"lectures must be >= 1, got {self.lectures}")
        if not self.years > 0:
            raise ValueError(f"years must be > 0, got {self.years}")
        if self.chunk_students < 1:
            raise ValueError(f"chunk_students must be >= 1, got {self.chunk_students}")
        for category, factor in self.support_activity.items():
            if category not in SUPPORT_CATEGORIES:
                raise ValueError(
                    f"support category {category!r} is not one of {', '.join(SUPPORT_CATEGORIES)}"
                )
            if not (isinstance(factor, int | float) and 0 < factor < float("inf")):
                raise ValueError(
                    f"support category {category!r}: activity factor must be > 0, got {factor!r}"
                )

    @property
    def students(self) -> int:
        """Students over all regions."""
        return sum(self.region_sizes.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        out["region_sizes"] = dict(self.region_sizes)
        out["support_activity"] = dict(self.support_activity)
        return out


def scaled_config(
    students: int | None = None,
    lectures: int = 5000,
    seed: int = 42,
    support_activity: dict[str, float] | None = None,
) -> SynthConfig:
    """A config with the default regions scaled to `students` in total.

    Sizes are proportional to `DEFAULT_REGION_SIZES` (largest remainders), every region gets at least
    one student (so fewer than 6 students round up to 6) and taebaek stays the smallest region.

    Args:
        students: total students; None keeps the default sizes (43,300).
        lectures: lectures in the catalogue.
        seed: random seed.
        support_activity: `SynthConfig.support_activity` (default none).

    Returns:
        The config.
    """
    support = dict(support_activity or {})
    if students is None:
        return SynthConfig(lectures=lectures, seed=seed, support_activity=support)
    if students < 1:
        raise ValueError(f"students must be >= 1, got {students}")
    names = list(DEFAULT_REGION_SIZES)
    students = max(students, len(names))
    base = np.asarray([DEFAULT_REGION_SIZES[n] for n in names], dtype=np.float64)
    exact = base / base.sum() * students
    sizes = np.floor(exact).astype(np.int64)
    remainder = exact - sizes
    for k in np.argsort(-remainder, kind="stable")[: students - int(sizes.sum())]:
        sizes[k] += 1
    # every region keeps a student: take them from the biggest region
    for k in np.flatnonzero(sizes == 0).tolist():
        sizes[int(np.argmax(sizes))] -= 1
        sizes[k] = 1
    smallest = names.index("taebaek")
    low = min(int(sizes[k]) for k in range(len(names)) if k != smallest)
    if sizes[smallest] > low:  # rounding can lift taebaek above pyeongchang; give the excess to seoul
        sizes[names.index("seoul")] += int(sizes[smallest]) - low
        sizes[smallest] = low
    return SynthConfig(
        region_sizes={n: int(s) for n, s in zip(names, sizes, strict=True)},
        lectures=lectures,
        seed=seed,
        support_activity=support,
    )


@dataclass
class SynthSummary:
    """What `generate` wrote."""

    students: int
    lectures: int
    series: int
    events: int
    event_types: dict[str, int]
    seconds: float
    out_dir: Path

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (per-type counts as a nested mapping)."""
        return {
            "students": self.students,
            "lectures": self.lectures,
            "series": self.series,
            "events": self.events,
            "event_types": dict(self.event_types),
            "seconds": round(self.seconds, 2),
            "out_dir": str(self.out_dir),
        }


# ----------------------------------------------------------------------------------------------------------
# students


@dataclass
class _Students:
    """One chunk of students: hidden traits, visible profile and activity window."""

    traits: StudentTraits
    region: npt.NDArray[np.int64]
    school_level: npt.NDArray[np.int64]  # index into _SCHOOL_LEVEL, -1 = null
    target_exam: npt.NDArray[np.int64]  # index into EXAM_GOALS, -1 = null
    interests: npt.NDArray[np.int64]  # (n, 3) subject indices, best first
    interest_count: npt.NDArray[np.int64]  # (n,) how many of them are shown; 0 = null
    active_from: npt.NDArray[np.int64]  # day
    active_until: npt.NDArray[np.int64]  # day, exclusive
    starts: npt.NDArray[np.int64]  # series the student would start
    support: npt.NDArray[np.int64]  # index into SUPPORT_CATEGORIES


@dataclass(frozen=True)
class _Context:
    """Everything fixed across chunks."""

    config: SynthConfig
    window: Window
    regions: tuple[str, ...]
    catalogue: SynthCatalogue
    weights: ModelWeights
    segment_lo: npt.NDArray[np.int64]  # (R, G, Y) first day a student can be active in school year Y
    segment_hi: npt.NDArray[np.int64]  # (R, G, Y) end day (exclusive)
    segment_p: npt.NDArray[np.float64]  # (R, G, Y) probability of school year Y (rows sum to 1 or 0)
    day_cdf: npt.NDArray[np.float64]  # (G, D + 1) cumulative daily intensity, each row 0..1
    hours: npt.NDArray[np.float64]  # (24,) cumulative hour-of-day distribution


def _activity_segments(
    window: Window, regions: tuple[str, ...]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per region and grade, the part of each school year a student can be active in, and its odds."""
    years = window.school_years()
    shape = (len(regions), len(GRADES), len(years))
    lo = np.zeros(shape, dtype=np.int64)
    hi = np.zeros(shape, dtype=np.int64)
    for r, region in enumerate(regions):
        launch = max(0, window.day_of(REGION_LAUNCH[region])) if region in REGION_LAUNCH else 0
        for g, grade in enumerate(GRADES):
            for y, (first, end, march) in enumerate(years):
                stop = end
                if grade == "h3":  # graduating: active until shortly after the 수능
                    stop = min(end, window.day_of(suneung_day(march.year)) + 21)
                lo[r, g, y] = max(first, launch)
                hi[r, g, y] = max(stop, lo[r, g, y])
    length = np.where(hi - lo >= 7, hi - lo, 0).astype(np.float64)
    total = length.sum(axis=2, keepdims=True)
    p = np.divide(length, total, out=np.zeros_like(length), where=total > 0)
    return lo, hi, p


def _draw_students(
    ctx: _Context, region: npt.NDArray[np.int64], rng: np.random.Generator, support_rng: np.random.Generator
) -> _Students:
    """Hidden traits, profile and activity of one chunk of students (vectorised).

    The support category has its own random stream, so adding it left every other draw as it was.
    """
    n = region.shape[0]
    grade_names = list(_GRADE_SHARES)
    grade_p = np.asarray(list(_GRADE_SHARES.values()))
    local_grade = rng.choice(len(grade_names), size=n, p=grade_p / grade_p.sum())
    grade = np.asarray([GRADES.index(g) for g in grade_names], dtype=np.int64)[local_grade]
    goal_table = np.asarray([_GOAL_SHARES[g] for g in grade_names])
    goal_cdf = np.cumsum(goal_table, axis=1)
    goal_cdf /= goal_cdf[:, -1:]
    goal = (rng.random((n, 1)) > goal_cdf[local_grade]).sum(axis=1)
    goal = np.minimum(goal, len(EXAM_GOALS) - 1)

    shares = np.asarray(SUBJECT_SHARES)
    prior = 0.5 * np.log(shares / shares.mean())
    taste = prior[None, :] + rng.normal(0.0, _TASTE_SD, (n, len(SUBJECTS)))
    core = [SUBJECTS.index(s) for s in ("국어", "수학", "영어")]
    ged = [SUBJECTS.index(s) for s in ("국어", "수학", "영어", "사회", "과학", "한국사")]
    extra = [SUBJECTS.index(s) for s in ("정보", "제2외국어", "진로")]
    taste[np.ix_(goal == EXAM_GOALS.index("수능"), core)] += 0.3
    is_ged = goal == EXAM_GOALS.index("검정고시")
    taste[np.ix_(is_ged, ged)] += 0.5
    taste[np.ix_(is_ged, extra)] -= 1.0

    diligence = rng.normal(0.0, 1.0, n) - 0.3 * (grade == GRADES.index("oos"))
    level_mean = np.asarray([_PREFERRED_LEVEL[g] for g in grade_names])[local_grade]
    level = np.clip(level_mean + 0.3 * diligence + rng.normal(0.0, 0.55, n), 1.0, 3.0)
    provider = rng.normal(0.0, _PROVIDER_SD, (n, len(PROVIDER_NAMES)))
    latent = rng.normal(0.0, _LATENT_SD, (n, LATENT_DIM))
    rate = np.exp(np.log(_RATE_MEDIAN) + _RATE_SIGMA * rng.normal(0.0, 1.0, n) + 0.2 * diligence)
    names = list(SUPPORT_SHARES)
    shares = np.asarray(list(SUPPORT_SHARES.values()))
    drawn = np.asarray([SUPPORT_CATEGORIES.index(c) for c in names])[
        support_rng.choice(len(names), size=n, p=shares / shares.sum())
    ]
    support = np.where(grade == GRADES.index("oos"), SUPPORT_CATEGORIES.index("out_of_school"), drawn)
    factor = np.asarray([ctx.config.support_activity.get(c, 1.0) for c in SUPPORT_CATEGORIES])
    rate = rate * factor[support]
    outside = _OUTSIDE_BASE - 0.5 * np.log(rate / _RATE_MEDIAN)

    school_level = np.where(grade <= GRADES.index("m3"), 0, np.where(grade <= GRADES.index("h3"), 1, 2))
    school_level = np.where(rng.random(n) < _PROFILE_MISSING["school_level"], -1, school_level)
    target_exam = np.where(rng.random(n) < _PROFILE_MISSING["target_exam"], -1, goal)
    shown = rng.random(n) >= _PROFILE_MISSING["interest_subjects"]
    how_many = rng.choice(3, size=n, p=(0.35, 0.4, 0.25)) + 1
    ranked = np.argsort(-(taste + rng.normal(0.0, 0.8, taste.shape)), axis=1, kind="stable")[:, :3]

    # activity: one school year (probability by its usable length), a join day skewed early, a span
    seg_p = ctx.segment_p[region, grade]  # (n, Y)
    usable = seg_p.sum(axis=1) > 0
    seg = np.minimum((rng.random((n, 1)) > np.cumsum(seg_p, axis=1)).sum(axis=1), seg_p.shape[1] - 1)
    lo = ctx.segment_lo[region, grade, seg]
    hi = ctx.segment_hi[region, grade, seg]
    join = lo + np.floor((hi - lo) * rng.beta(0.6, 3.0, n)).astype(np.int64)
    span = np.maximum(7.0, np.exp(np.log(_SPAN_MEDIAN_DAYS) + _SPAN_SIGMA * rng.normal(0.0, 1.0, n)))
    until = np.minimum(join + np.ceil(span).astype(np.int64), hi)
    until = np.where(usable & (until > join), until, join)
    starts = rng.poisson(rate * (until - join) / 30.4)
    starts = np.minimum(starts, _MAX_STARTS)

    traits = StudentTraits(
        taste=taste.astype(np.float32),
        level=level.astype(np.float32),
        provider=provider.astype(np.float32),
        latent=latent.astype(np.float32),
        diligence=diligence.astype(np.float32),
        outside=outside.astype(np.float32),
        goal=goal.astype(np.int8),
        grade=grade.astype(np.int8),
    )
    return _Students(
        traits=traits,
        region=region,
        school_level=school_level.astype(np.int64),
        target_exam=target_exam.astype(np.int64),
        interests=ranked.astype(np.int64),
        interest_count=np.where(shown, how_many, 0).astype(np.int64),
        active_from=join.astype(np.int64),
        active_until=until.astype(np.int64),
        starts=starts.astype(np.int64),
        support=support.astype(np.int64),
    )


# ----------------------------------------------------------------------------------------------------------
# events


def _logistic(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def _day_at(ctx: _Context, grade: npt.NDArray[np.int64], u: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """The day where the grade's cumulative intensity reaches `u` (0..1); `days` when `u` >= 1."""
    cdf = ctx.day_cdf
    width = cdf.shape[1]
    # each grade's CDF is shifted by 2 * grade so one searchsorted serves every grade
    flat = (cdf + 2.0 * np.arange(cdf.shape[0])[:, None]).ravel()
    day = np.searchsorted(flat, np.minimum(u, 1.0) + 2.0 * grade, side="right") - 1 - grade * width
    out: npt.NDArray[np.int64] = np.where(u >= 1.0, ctx.window.days, day).astype(np.int64)
    return out


def _sample_days(
    ctx: _Context,
    grade: npt.NDArray[np.int64],
    lo: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """A day in [lo, hi) for each row, following the grade's daily intensity (inverse CDF)."""
    a = ctx.day_cdf[grade, lo]
    b = ctx.day_cdf[grade, hi]
    u = a + rng.random(grade.shape[0]) * (b - a)
    out: npt.NDArray[np.int64] = np.clip(_day_at(ctx, grade, u), lo, hi - 1)
    return out


def _days_later(
    ctx: _Context, grade: npt.NDArray[np.int64], day: npt.NDArray[np.int64], gap: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """The day `gap` average days after `day` in the grade's seasonal clock (at least the next day).

    Gaps run in intensity time, so students come back sooner before exams and later in quiet weeks.
    """
    u = ctx.day_cdf[grade, np.minimum(day + 1, ctx.window.days)] + gap / ctx.window.days
    return np.maximum(_day_at(ctx, grade, u), day + 1)


def _time_of_day_us(ctx: _Context, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    hour = np.searchsorted(ctx.hours, rng.random(n), side="right")
    seconds = hour * 3600.0 + rng.random(n) * 3600.0
    return (seconds * US).astype(np.int64)


def _choose_series(
    ctx: _Context, students: _Students, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Which series each student starts: Gumbel-max (multinomial logit) without replacement.

    Returns:
        (student row in the chunk, series) per started series.
    """
    cat = ctx.catalogue
    n_series = cat.n_series
    entry = cat.traits.take(cat.first)
    block = max(1, _CHOICE_CELLS // max(1, n_series))
    out_s: list[npt.NDArray[np.int64]] = []
    out_j: list[npt.NDArray[np.int64]] = []
    n = students.region.shape[0]
    for lo in range(0, n, block):
        rows = np.arange(lo, min(n, lo + block))
        rows = rows[students.starts[rows] > 0]
        if rows.size == 0:
            continue
        a = students.active_from[rows][:, None]
        b = students.active_until[rows][:, None]
        grade = students.traits.grade[rows].astype(np.int64)
        mask = cat.eligible[students.region[rows], grade]
        mask &= np.maximum(a, cat.available_from[None, :]) < np.minimum(b, cat.available_until[None, :])
        want = np.minimum(students.starts[rows], mask.sum(axis=1))
        k = int(want.max())
        if k == 0:
            continue
        utility = appeal_matrix(students.traits.take(rows), entry, ctx.weights)
        utility += rng.gumbel(size=utility.shape)
        utility[~mask] = -np.inf
        if k < n_series:
            top = np.argpartition(-utility, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(n_series), (rows.size, n_series))
        order = np.argsort(-np.take_along_axis(utility, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)[:, :k]
        chosen = np.arange(k)[None, :] < want[:, None]
        out_s.append(np.broadcast_to(rows[:, None], chosen.shape)[chosen])
        out_j.append(top[chosen].astype(np.int64))
    if not out_s:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(out_s), np.concatenate(out_j)


def _start_times(
    ctx: _Context,
    students: _Students,
    st: npt.NDArray[np.int64],
    ser: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """When each series is started (UTC microseconds), ordered along the curriculum within a subject."""
    cat = ctx.catalogue
    lo = np.maximum(students.active_from[st], cat.available_from[ser])
    hi = np.minimum(students.active_until[st], cat.available_until[ser])
    grade = students.traits.grade[st].astype(np.int64)
    day = _sample_days(ctx, grade, lo, hi, rng)
    t = ctx.window.start_us + day * (DAY_S * US) + _time_of_day_us(ctx, st.shape[0], rng)
    # a student takes the series of one subject mostly in curriculum order (basic before advanced,
    # earlier courses first): swap start times within (student, subject) among series available
    # for the whole window (their time ranges are the same, so any permutation stays valid)
    free = np.flatnonzero((cat.available_from[ser] == 0) & (cat.available_until[ser] == ctx.window.days))
    if free.size > 1:
        group = st[free] * len(SUBJECTS) + cat.subject[ser[free]]
        noisy = cat.curriculum[ser[free]] + rng.normal(0.0, 0.8, free.size)
        by_time = np.lexsort((t[free], group))
        by_curriculum = np.lexsort((noisy, group))
        swapped = np.empty(free.size, dtype=np.int64)
        swapped[by_curriculum] = t[free][by_time]
        t[free] = swapped
    return t


@dataclass
class _Enrolments:
    student: npt.NDArray[np.int64]  # row in the chunk
    lecture: npt.NDArray[np.int64]
    at: npt.NDArray[np.int64]  # UTC microseconds
    completed: npt.NDArray[np.bool_]


def _walk_series(
    ctx: _Context,
    students: _Students,
    st: npt.NDArray[np.int64],
    ser: npt.NDArray[np.int64],
    start: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> _Enrolments:
    """Enrol episode after episode of each started series (vectorised over series, one step per episode)."""
    cat = ctx.catalogue
    lt = cat.traits
    traits = students.traits
    dil = traits.diligence.astype(np.float64)
    grade = traits.grade.astype(np.int64)
    length = cat.length[ser]
    pos = np.ones(st.shape[0], dtype=np.int64)
    mid = (rng.random(st.shape[0]) < _MID_SERIES_ENTRY) & (length >= 2)
    pos[mid] = 2 + np.floor(rng.random(int(mid.sum())) * (length[mid] - 1)).astype(np.int64)
    until_us = ctx.window.start_us + cat.available_until * (DAY_S * US)
    at = start.copy()
    once = np.zeros(st.shape[0], dtype=bool)  # a catch-up of a skipped episode: no continuation
    parts: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], Any]] = []
    while st.size:
        n = st.shape[0]
        lecture = cat.first[ser] + pos - 1
        s_traits = traits.take(st)
        l_traits = lt.take(lecture)
        appeal = appeal_pairs(s_traits, l_traits, ctx.weights)
        p_complete = complete_from_appeal(
            appeal,
            s_traits.diligence,
            s_traits.outside,
            s_traits.level,
            l_traits.level,
            l_traits.duration,
            ctx.weights,
        )
        done = rng.random(n) < p_complete
        parts.append((st, lecture, at, done))
        d = dil[st]
        p_next = np.where(done, _logistic(_CONTINUE_DONE + 0.8 * d), _logistic(_CONTINUE_UNDONE + 0.6 * d))
        n_len = cat.length[ser]
        step = 1 + ((rng.random(n) < _SKIP_EPISODE) & (pos + 2 <= n_len) & ~once)
        go = (rng.random(n) < p_next) & (pos + step <= n_len) & ~once
        minutes_us = l_traits.duration.astype(np.float64) * 60.0 * US
        binge = rng.random(n) < _BINGE
        right_after = at + (minutes_us * rng.uniform(1.0, 1.4, n)).astype(np.int64)
        gap_days = rng.lognormal(np.log(1.5), 0.9, n) * np.exp(-0.3 * d)
        day = _days_later(ctx, grade[st], (at - ctx.window.start_us) // (DAY_S * US), gap_days)
        later = ctx.window.start_us + day * (DAY_S * US) + _time_of_day_us(ctx, n, rng)
        nxt = np.where(binge, right_after, later)
        open_ = (nxt < ctx.window.end_us) & (nxt < until_us[ser])
        keep = go & open_
        # some students come back later for the episode they skipped: out of series order
        back = nxt + (rng.uniform(1.0, 10.0, size=(n,)) * (DAY_S * US)).astype(np.int64)
        catch = (
            (step == 2) & (rng.random(n) < _CATCH_UP) & (back < ctx.window.end_us) & (back < until_us[ser])
        )
        st = np.concatenate([st[keep], st[catch]])
        ser = np.concatenate([ser[keep], ser[catch]])
        pos = np.concatenate([(pos + step)[keep], (pos + 1)[catch]])
        at = np.concatenate([nxt[keep], back[catch]])
        once = np.concatenate([np.zeros(int(keep.sum()), dtype=bool), np.ones(int(catch.sum()), dtype=bool)])
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Enrolments(empty, empty, empty, np.zeros(0, dtype=bool))
    return _Enrolments(
        student=np.concatenate([p[0] for p in parts]),
        lecture=np.concatenate([p[1] for p in parts]),
        at=np.concatenate([p[2] for p in parts]),
        completed=np.concatenate([p[3] for p in parts]),
    )


def _events(ctx: _Context, enr: _Enrolments, rng: np.random.Generator) -> npt.NDArray[Any]:
    """The funnel events of the enrolments, per student in strictly increasing time (records `RECORD`).

    Completed: enrol, 0-3 progress events, complete. Unfinished: enrol, 0-2 progress events up to the
    fraction reached, then an explicit drop at that last progress or nothing (abandoned silently).
    """
    n = enr.student.shape[0]
    duration = ctx.catalogue.traits.duration[enr.lecture].astype(np.float64)
    minutes_us = duration * 60.0 * US
    one_sitting = rng.random(n) < 0.6
    spread = rng.lognormal(np.log(1.5 * DAY_S), 0.8, n) * US
    watch = np.where(one_sitting, minutes_us * rng.uniform(1.02, 1.6, n), minutes_us + spread)
    done = enr.completed
    reached = np.clip(rng.beta(1.3, 2.4, n), 0.02, 0.97)
    m = np.where(
        done, rng.choice(4, size=n, p=(0.25, 0.35, 0.25, 0.15)), rng.choice(3, size=n, p=(0.35, 0.4, 0.25))
    )
    values = np.where(
        done[:, None],
        np.sort(rng.uniform(0.05, 0.95, (n, 3)), axis=1),
        np.sort(rng.uniform(0.1, 1.0, (n, 3)), axis=1) * reached[:, None],
    )
    has = m > 0
    values[np.flatnonzero(has & ~done), (m - 1)[has & ~done]] = reached[has & ~done]
    values = values.astype(np.float32)
    dropped = ~done & (rng.random(n) < _DROP_EXPLICIT)
    drop_gap = np.maximum(60.0 * US, rng.lognormal(np.log(2.0 * DAY_S), 1.0, n) * US)
    last = np.where(has, values[np.arange(n), np.maximum(m - 1, 0)], np.float32(0.0)).astype(np.float32)

    codes = {t: i for i, t in enumerate(EVENT_TYPES)}
    pieces: list[tuple[npt.NDArray[np.int64], Any, Any, Any, int]] = [
        (np.arange(n), enr.at, np.full(n, codes["enrol"], np.int8), np.zeros(n, np.float32), 0)
    ]
    for j in range(3):
        rows = np.flatnonzero(m > j)
        at = enr.at[rows] + np.maximum(1_000_000, (watch[rows] * values[rows, j])).astype(np.int64)
        pieces.append((rows, at, np.full(rows.size, codes["progress"], np.int8), values[rows, j], 1 + j))
    rows = np.flatnonzero(done)
    at = enr.at[rows] + np.maximum(5_000_000, watch[rows]).astype(np.int64)
    pieces.append(
        (rows, at, np.full(rows.size, codes["complete"], np.int8), np.ones(rows.size, np.float32), 4)
    )
    rows = np.flatnonzero(dropped)
    at = enr.at[rows] + (watch[rows] * reached[rows] + drop_gap[rows]).astype(np.int64)
    pieces.append((rows, at, np.full(rows.size, codes["drop"], np.int8), last[rows], 4))

    which = np.concatenate([p[0] for p in pieces])
    at_all = np.concatenate([p[1] for p in pieces]).astype(np.int64)
    kind = np.concatenate([p[2] for p in pieces])
    progress = np.concatenate([p[3] for p in pieces]).astype(np.float32)
    stage = np.concatenate([np.full(p[0].size, p[4], np.int64) for p in pieces])
    student = enr.student[which]
    # a progress event can land after the completion when the fractions are close; keep funnel order
    order = np.lexsort((stage, which))
    at_sorted = at_all[order]
    same = np.r_[False, which[order][1:] == which[order][:-1]]
    for _ in range(8):
        bad = same & np.r_[False, at_sorted[1:] <= at_sorted[:-1]]
        if not bad.any():
            break
        idx = np.flatnonzero(bad)
        at_sorted[idx] = at_sorted[idx - 1] + 1_000_000
    at_all[order] = at_sorted
    # per student in time order (funnel order within an enrolment on ties), then strictly increasing
    order = np.lexsort((stage, which, at_all, student))
    rec = np.empty(order.size, dtype=RECORD)
    rec["s"] = student[order]
    rec["l"] = enr.lecture[which[order]]
    rec["k"] = kind[order]
    rec["p"] = progress[order]
    t = at_all[order]
    same_student = np.r_[False, rec["s"][1:] == rec["s"][:-1]]
    while True:
        tie = same_student & np.r_[False, t[1:] <= t[:-1]]
        if not tie.any():
            break
        idx = np.flatnonzero(tie)
        t[idx] = t[idx - 1] + 1
    rec["t"] = t
    kept: npt.NDArray[Any] = rec[rec["t"] < ctx.window.end_us]
    return kept


# ----------------------------------------------------------------------------------------------------------
# writing


def _students_table(ctx: _Context, first_row: int, students: _Students, ids: IdFormat) -> pa.Table:
    n = students.region.shape[0]
    lengths = students.interest_count
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    flat = students.interests[np.arange(3)[None, :] < lengths[:, None]]
    interests = pa.ListArray.from_arrays(
        pa.array(offsets), take_strings(SUBJECTS, flat), mask=pa.array(lengths == 0)
    )
    columns = [
        fixed_ids(ids.prefix, np.arange(first_row + 1, first_row + n + 1), ids.width),
        take_strings(ctx.regions, students.region),
        take_strings(GRADES, students.traits.grade.astype(np.int64)),
        take_strings(_SCHOOL_LEVEL, students.school_level),
        take_strings(EXAM_GOALS, students.target_exam),
        interests,
        take_strings(SUPPORT_CATEGORIES, students.support),
        pa.nulls(n, pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=STUDENTS)


def _events_table(
    records: npt.NDArray[Any], first_id: int, id_width: int, students: IdFormat, lectures: IdFormat
) -> pa.Table:
    n = records.shape[0]
    columns = [
        fixed_ids("e", np.arange(first_id, first_id + n), id_width),
        fixed_ids(students.prefix, records["s"].astype(np.int64) + 1, students.width),
        fixed_ids(lectures.prefix, records["l"].astype(np.int64) + 1, lectures.width),
        take_strings(EVENT_TYPES, records["k"].astype(np.int64)),
        pa.array(records["p"], type=pa.float32()),
        pa.array(records["t"], type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.nulls(n, pa.string()),
    ]
    return pa.Table.from_arrays(columns, schema=EVENTS)


# ----------------------------------------------------------------------------------------------------------
# the generator


def _context(config: SynthConfig) -> _Context:
    window = window_for(config.start, config.years)
    regions = tuple(config.region_sizes)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0]))
    catalogue = build_catalogue(config.lectures, regions, window.days, rng)
    lo, hi, p = _activity_segments(window, regions)
    intensity = daily_intensity(window)
    cdf = np.concatenate([np.zeros((intensity.shape[0], 1)), np.cumsum(intensity, axis=1)], axis=1)
    cdf /= cdf[:, -1:]
    return _Context(config, window, regions, catalogue, ModelWeights(), lo, hi, p, cdf, hour_cdf())


def generate(config: SynthConfig, out_dir: Path, progress: Progress | None = None) -> SynthSummary:
    """Generate a synthetic dataset directory (replaced atomically when it exists).

    Args:
        config: what to generate.
        out_dir: the dataset directory to write.
        progress: optional `progress(stage, done, total)` callback (stages "catalogue", "students",
            "events").

    Returns:
        Counts and timing of what was written.

    Raises:
        DatasetNotFoundError: `out_dir` exists and is not a directory.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetNotFoundError(f"{out_dir} exists and is not a directory; choose another output path")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        summary = _generate_into(config, tmp, progress)
        fsync_dir(tmp)
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.out_dir = out_dir
    summary.seconds = time.perf_counter() - started
    return summary


def _generate_into(config: SynthConfig, directory: Path, progress: Progress | None) -> SynthSummary:
    started = time.perf_counter()
    ctx = _context(config)
    cat = ctx.catalogue
    n = config.students
    truth_dir = directory / GROUND_TRUTH_DIR
    truth_dir.mkdir()
    pq.write_table(cat.table, directory / TABLE_FILES["lectures"], compression="zstd")
    write_lecture_traits(truth_dir, cat.traits)
    if progress:
        progress("catalogue", 1, 1)

    student_ids = IdFormat(STUDENT_IDS_PREFIX, max(7, len(str(n))))
    # regions are shuffled over the ids so an id says nothing about its region
    region_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 1]))
    region = region_rng.permutation(
        np.repeat(np.arange(len(ctx.regions)), list(config.region_sizes.values()))
    ).astype(np.int64)
    writer = StudentTraitsWriter(truth_dir, n, len(PROVIDER_NAMES))
    activity = np.lib.format.open_memmap(
        truth_dir / "students_activity.npy", mode="w+", dtype=np.int32, shape=(n, 3)
    )
    enrolments = 0
    buckets = EventBuckets(directory / ".events-tmp", ctx.window)
    try:
        with pq.ParquetWriter(directory / TABLE_FILES["students"], STUDENTS, compression="zstd") as out:
            for chunk, lo in enumerate(range(0, n, config.chunk_students)):
                hi = min(n, lo + config.chunk_students)
                rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2, chunk]))
                support_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 4, chunk]))
                students = _draw_students(ctx, region[lo:hi], rng, support_rng)
                st, ser = _choose_series(ctx, students, rng)
                start = _start_times(ctx, students, st, ser, rng)
                enr = _walk_series(ctx, students, st, ser, start, rng)
                enrolments += int(enr.student.shape[0])
                records = _events(ctx, enr, rng)
                records["s"] += lo
                buckets.add(records)
                out.write_table(_students_table(ctx, lo, students, student_ids))
                writer.write(lo, students.traits)
                activity[lo:hi, 0] = students.active_from
                activity[lo:hi, 1] = students.active_until
                activity[lo:hi, 2] = students.starts
                if progress:
                    progress("students", hi, n)
    finally:
        buckets.close()
    writer.close()
    activity.flush()
    del activity

    total = int(buckets.counts.sum())
    id_width = max(9, len(str(total)))
    type_counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
    first_id = 1
    with pq.ParquetWriter(directory / TABLE_FILES["events"], EVENTS, compression="zstd") as out:
        for b in range(buckets.n):
            records = buckets.pop(b)
            if records.size:
                # (time, student) is unique: times are strictly increasing per student
                records = records[np.lexsort((records["s"], records["t"]))]
                type_counts += np.bincount(records["k"], minlength=len(EVENT_TYPES))
                table = _events_table(records, first_id, id_width, student_ids, cat.ids)
                out.write_table(table, row_group_size=1 << 20)
                first_id += records.shape[0]
            if progress:
                progress("events", b + 1, buckets.n)
    shutil.rmtree(buckets.directory)

    event_types = {t: int(c) for t, c in zip(EVENT_TYPES, type_counts, strict=True)}
    write_meta(
        truth_dir,
        GroundTruthMeta(
            weights=ctx.weights,
            students=student_ids,
            lectures=cat.ids,
            n_students=n,
            n_lectures=config.lectures,
            providers=PROVIDER_NAMES,
            extra={
                "series": cat.n_series,
                "students_activity": "students_activity.npy: (n, 3) int32 first active day, end day "
                "(exclusive), series the student would start; days from the window start (KST)",
            },
        ),
    )
    seconds = time.perf_counter() - started
    manifest = {
        "source": "synthetic",
        "generator": {"name": GENERATOR, "version": GENERATOR_VERSION},
        "config": config.as_dict(),
        "format": DATASET_FORMAT,
        "sizes": {"students": n, "lectures": config.lectures, "events": total},
        "counts": {"series": cat.n_series, "enrolments": enrolments, "event_types": event_types},
        "window": {
            "start": ctx.window.start.isoformat(),
            "end": ctx.window.date_of(ctx.window.days).isoformat(),
            "days": ctx.window.days,
            "note": "days run 00:00-24:00 KST (UTC+9); timestamps are UTC",
        },
        "regions": {
            r: {
                "students": config.region_sizes[r],
                "launch": REGION_LAUNCH[r].isoformat() if r in REGION_LAUNCH else None,
            }
            for r in ctx.regions
        },
        "events_order": "occurred_at, event_id",
        "ground_truth": GROUND_TRUTH_DIR,
        "wall_time": {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 2),
        },
    }
    with (directory / MANIFEST_FILE).open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, ensure_ascii=False, indent=2)
        fh.write("\n")
    return SynthSummary(
        students=n,
        lectures=config.lectures,
        series=cat.n_series,
        events=total,
        event_types=event_types,
        seconds=seconds,
        out_dir=directory,
    )
