"""The Korean school calendar of the synthetic generator: daily activity per grade, hours, school years.

Days are counted in Korea Standard Time (UTC+9) from the window start; timestamps are written in UTC.
The daily intensity multiplies a few well-known rhythms of Korean secondary school:

* new semester in March (a burst of enrolments);
* 내신 exams: 1st-semester 중간고사 late April and 기말고사 early July, 2nd-semester 중간고사 mid October
  and 기말고사 early December; study ramps up in the three weeks before and dips in the exam week;
* 수능 (the Thursday between 12 and 18 November): third-year high-school students ramp up from June and
  nearly stop after it; out-of-school youth prepare for 검정고시 (April and August sittings);
* summer vacation (late July to late August, with a holiday dip in early August) and winter vacation
  (late December to February: 선행학습 for the next school year, a dip at Christmas and New Year);
* 설날 and 추석 (a few quiet days), and a weekly rhythm (Sunday busiest, Friday quietest).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from features.schemas import GRADES

KST_OFFSET_S: Final = 9 * 3600
DAY_S: Final = 86_400
US: Final = 1_000_000
#: Lunar-calendar holidays (first day of the three-day break) for the years the default window touches;
#: other years fall back to typical dates.
_SEOLLAL = {
    2023: (1, 21),
    2024: (2, 9),
    2025: (1, 28),
    2026: (2, 16),
    2027: (2, 6),
    2028: (1, 26),
    2029: (2, 12),
    2030: (2, 2),
}
_CHUSEOK = {
    2023: (9, 28),
    2024: (9, 16),
    2025: (10, 5),
    2026: (9, 24),
    2027: (9, 14),
    2028: (10, 2),
    2029: (9, 21),
    2030: (9, 11),
}
#: Relative activity per hour of the day (KST): evenings after school and academies are the peak.
HOUR_WEIGHTS: tuple[float, ...] = (
    0.5, 0.25, 0.1, 0.05, 0.05, 0.1, 0.3, 0.6, 0.6, 0.7, 0.9, 1.0,
    1.0, 1.2, 1.5, 1.8, 2.2, 2.3, 2.4, 2.8, 3.4, 3.6, 3.0, 1.6,
)  # fmt: skip
_WEEKDAY = (1.0, 1.0, 1.0, 1.0, 0.8, 1.05, 1.2)  # Monday .. Sunday


def suneung_day(year: int) -> dt.date:
    """Day of the 수능 in `year`: the Thursday between 12 and 18 November."""
    day = dt.date(year, 11, 12)
    return day + dt.timedelta(days=(3 - day.weekday()) % 7)


def school_year_start(day: dt.date) -> dt.date:
    """1 March of the school year `day` belongs to (the Korean school year runs March to February)."""
    year = day.year if day.month >= 3 else day.year - 1
    return dt.date(year, 3, 1)


@dataclass(frozen=True)
class Window:
    """The simulated period: `days` whole KST days from `start`."""

    start: dt.date
    days: int

    @property
    def start_us(self) -> int:
        """UTC microseconds of the window start (00:00 KST)."""
        epoch = dt.datetime(self.start.year, self.start.month, self.start.day, tzinfo=dt.UTC)
        return (int(epoch.timestamp()) - KST_OFFSET_S) * US

    @property
    def end_us(self) -> int:
        """UTC microseconds of the window end (exclusive)."""
        return self.start_us + self.days * DAY_S * US

    def day_of(self, day: dt.date) -> int:
        """Day number of a calendar date (may fall outside 0..days)."""
        return (day - self.start).days

    def date_of(self, day: int) -> dt.date:
        """Calendar date of day number `day`."""
        return self.start + dt.timedelta(days=day)

    def school_years(self) -> list[tuple[int, int, dt.date]]:
        """The school years the window touches: (first day, end day exclusive, 1 March of the year)."""
        out = []
        first = school_year_start(self.start)
        while self.day_of(first) < self.days:
            nxt = dt.date(first.year + 1, 3, 1)
            lo, hi = max(0, self.day_of(first)), min(self.days, self.day_of(nxt))
            if hi > lo:
                out.append((lo, hi, first))
            first = nxt
        return out


def window_for(start: dt.date, years: float) -> Window:
    """The window of `years` (fractional allowed, at least one day) from `start`."""
    return Window(start, max(1, round(years * 365.2425)))


def _ramp(day: dt.date, begin: tuple[int, int], end: tuple[int, int]) -> float:
    """0 before `begin`, rising linearly to 1 at `end` (month, day of `day`'s year), 0 after."""
    a = dt.date(day.year, *begin)
    b = dt.date(day.year, *end)
    if not a <= day <= b:
        return 0.0
    return (day - a).days / max(1, (b - a).days)


def _within(day: dt.date, begin: tuple[int, int], end: tuple[int, int]) -> bool:
    """`day` is between two (month, day) dates of its year, inclusive (end may wrap into the next year)."""
    key = (day.month, day.day)
    if begin <= end:
        return begin <= key <= end
    return key >= begin or key <= end


def _near(day: dt.date, table: dict[int, tuple[int, int]], fallback: tuple[int, int], span: int) -> bool:
    month, dom = table.get(day.year, fallback)
    first = dt.date(day.year, month, dom) - dt.timedelta(days=1)
    return 0 <= (day - first).days <= span


def daily_intensity(window: Window) -> npt.NDArray[np.float64]:
    """Relative activity of each day for each grade.

    Args:
        window: the simulated period.

    Returns:
        (len(GRADES), window.days) positive float64.
    """
    out = np.ones((len(GRADES), window.days), dtype=np.float64)
    middle = [GRADES.index(g) for g in ("m1", "m2", "m3")]
    high = [GRADES.index(g) for g in ("h1", "h2")]
    h3 = GRADES.index("h3")
    oos = GRADES.index("oos")
    schooled = [*middle, *high, h3]
    for d in range(window.days):
        day = window.date_of(d)
        f = np.full(len(GRADES), _WEEKDAY[day.weekday()])
        if _within(day, (3, 2), (3, 21)):
            f *= 1.3  # new school year
        exam = 0.0
        for prep, week in (
            (((4, 1), (4, 21)), ((4, 22), (5, 2))),
            (((6, 7), (6, 27)), ((6, 28), (7, 8))),
            (((9, 16), (10, 6)), ((10, 7), (10, 18))),
            (((11, 11), (12, 1)), ((12, 2), (12, 13))),
        ):
            exam += 0.8 * _ramp(day, *prep)
            if _within(day, *week):
                exam -= 0.3
        f[schooled] *= 1.0 + exam
        suneung = suneung_day(day.year)
        if dt.date(day.year, 6, 1) <= day <= suneung:
            f[h3] *= (
                1.0 + 0.9 * (day - dt.date(day.year, 6, 1)).days / (suneung - dt.date(day.year, 6, 1)).days
            )
        elif day > suneung or day.month < 3:
            f[h3] *= 0.12  # after the 수능 third-years barely study online
        f[oos] *= 1.0 + 0.8 * (_ramp(day, (3, 10), (4, 8)) + _ramp(day, (7, 10), (8, 8)))
        if _within(day, (7, 20), (8, 25)):  # summer vacation: 특강 for high school, a dip for middle
            f[middle] *= 0.85
            f[high] *= 1.15
        if _within(day, (7, 29), (8, 6)):
            f *= 0.75
        if _within(day, (12, 24), (2, 28)):  # winter vacation: 선행학습 for next year
            f[middle] *= 1.1
            f[high] *= 1.2
        if _within(day, (12, 24), (1, 1)):
            f *= 0.7
        if _near(day, _SEOLLAL, (2, 5), 3) or _near(day, _CHUSEOK, (9, 25), 3):
            f *= 0.4
        out[:, d] = f
    return out


def hour_cdf() -> npt.NDArray[np.float64]:
    """Cumulative distribution of the KST hour of day (24 values ending at 1)."""
    w = np.asarray(HOUR_WEIGHTS, dtype=np.float64)
    out: npt.NDArray[np.float64] = np.cumsum(w) / w.sum()
    return out
