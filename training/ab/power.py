"""Power planning for per-region A/B tests on a rate (e.g. enrolment rate): detectable effects and durations.

Effect sizes are Cohen's h (`statsmodels.stats.proportion.proportion_effectsize`, the arcsine transform),
and sample sizes / detectable h come from `statsmodels.stats.power.NormalIndPower`, so the numbers match
statsmodels exactly.

Reach model (how many students an experiment sees): each week a student of the region comes to the portal
(and is shown recommendations) with probability ``weekly_active``, independently of other weeks, so after
``w`` weeks ``students * (1 - (1 - weekly_active) ** w)`` distinct students have been exposed; ``traffic``
is the share of them that enters the experiment, split between control and treatment by
``treatment_share``. A region of 500 students (Taebaek) can never exceed 500 students, however long it runs:
there the question is which effect it can detect at all, and the pooled (stratified) analysis is what
gives partner regions a usable answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from training.ab.errors import ABError

Alternative = Literal["two-sided", "larger", "smaller"]
POOLED = "pooled"


class PowerInputError(ABError):
    """A power-planning input is out of range (the message names it)."""


@dataclass(frozen=True)
class PowerRow:
    """Plan for one region (or ``pooled`` = all regions together)."""

    region: str
    students: int
    baseline: float
    n_control: float  # expected students in the control arm after `weeks`
    n_treatment: float
    mde_abs: float  # smallest detectable absolute lift (rate points), NaN if the arms are too small
    mde_rel: float  # the same relative to the baseline
    target_rel: float | None  # relative lift to plan a duration for
    needed_control: float | None  # students needed in the control arm for the target lift
    needed_treatment: float | None
    weeks_needed: float | None  # None when the region can never reach the needed size
    reachable: bool | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def _check(name: str, value: float, lo: float, hi: float, lo_open: bool = True, hi_open: bool = True) -> None:
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi and math.isfinite(value)):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise PowerInputError(f"{name} must be in {left}{lo}, {hi}{right}, got {value}")


def reach(students: float, weeks: float, weekly_active: float, traffic: float = 1.0) -> float:
    """Expected distinct students entering the experiment after ``weeks``.

    Args:
        students: students in the region.
        weeks: duration.
        weekly_active: probability a student is shown recommendations in a given week.
        traffic: share of exposed students that enter the experiment.

    Returns:
        ``students * traffic * (1 - (1 - weekly_active) ** weeks)``.
    """
    return float(students * traffic * (1.0 - (1.0 - weekly_active) ** weeks))


def mde(
    n_control: float,
    n_treatment: float,
    baseline: float,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Alternative = "two-sided",
) -> float:
    """Smallest absolute increase of a rate detectable with the given arm sizes.

    Args:
        n_control: students in the control arm.
        n_treatment: students in the treatment arm.
        baseline: control rate.
        alpha: significance level.
        power: 1 - type II error.
        alternative: as in statsmodels (``two-sided``, ``larger``).

    Returns:
        ``p1 - baseline`` where ``proportion_effectsize(p1, baseline)`` is the detectable Cohen's h; NaN when
        an arm is too small (< 2 students) or even p1 = 1 is not detectable.
    """
    if n_control < 2 or n_treatment < 2:
        return math.nan
    h = float(
        NormalIndPower().solve_power(
            effect_size=None,
            nobs1=n_treatment,
            alpha=alpha,
            power=power,
            ratio=n_control / n_treatment,
            alternative=alternative,
        )
    )
    # invert h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p0))
    angle = h / 2 + math.asin(math.sqrt(baseline))
    if angle >= math.pi / 2:
        return math.nan
    return math.sin(angle) ** 2 - baseline


def mde_mean(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference of two means detectable (two-sided, normal approximation) at a standard error.

    Args:
        se: standard error of the difference, ``sqrt(var_t / n_t + var_c / n_c)``.
        alpha: significance level.
        power: 1 - type II error.

    Returns:
        ``(z_{1 - alpha/2} + z_power) * se``; NaN when ``se`` is not a positive finite number.
    """
    from scipy.stats import norm

    if not (math.isfinite(se) and se > 0):
        return math.nan
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)


def required_sizes(
    baseline: float,
    lift_rel: float,
    alpha: float = 0.05,
    power: float = 0.8,
    treatment_share: float = 0.5,
    alternative: Alternative = "two-sided",
) -> tuple[float, float]:
    """Students needed per arm to detect a relative lift of the baseline rate.

    Args:
        baseline: control rate.
        lift_rel: relative lift to detect (0.1 = +10 %).
        alpha: significance level.
        power: 1 - type II error.
        treatment_share: share of the experiment's students in the treatment arm.
        alternative: as in statsmodels.

    Returns:
        (control, treatment) sizes, not rounded.
    """
    target = baseline * (1 + lift_rel)
    _check("baseline * (1 + target lift)", target, 0, 1)
    h = abs(float(proportion_effectsize(target, baseline)))
    ratio = (1 - treatment_share) / treatment_share  # nobs2 / nobs1, nobs1 = treatment
    n_t = float(
        NormalIndPower().solve_power(
            effect_size=h, nobs1=None, alpha=alpha, power=power, ratio=ratio, alternative=alternative
        )
    )
    return n_t * ratio, n_t


def weeks_to_reach(
    needed: float, students: float, weekly_active: float, traffic: float = 1.0
) -> float | None:
    """Weeks until ``needed`` distinct students have entered the experiment; None if never.

    Args:
        needed: total students needed (both arms).
        students: students in the region.
        weekly_active: weekly probability a student is exposed.
        traffic: share of exposed students in the experiment.

    Returns:
        Weeks (fractional), or None when ``needed >= students * traffic``.
    """
    cap = students * traffic
    if needed >= cap:
        return None
    return math.log(1 - needed / cap) / math.log(1 - weekly_active)


def plan(
    regions: Mapping[str, int],
    baseline: float | Mapping[str, float],
    weeks: float = 2.0,
    alpha: float = 0.05,
    power: float = 0.8,
    traffic: float = 1.0,
    treatment_share: float = 0.5,
    weekly_active: float = 0.5,
    target_lift: float | None = None,
    alternative: Alternative = "two-sided",
) -> list[PowerRow]:
    """Detectable effect per region after ``weeks``, and weeks needed for ``target_lift``, plus a pooled row.

    Args:
        regions: students per region.
        baseline: control rate, one for all regions or per region.
        weeks: planned duration.
        alpha: significance level.
        power: 1 - type II error.
        traffic: share of exposed students entering the experiment.
        treatment_share: share of the experiment's students in treatment.
        weekly_active: weekly probability that a student is exposed.
        target_lift: relative lift to plan a duration for (None = skip).
        alternative: as in statsmodels.

    Returns:
        One row per region in input order, then ``pooled`` (all regions as one population, the student-
        weighted mean baseline; a stratified analysis has about this power when baselines are similar).

    Raises:
        PowerInputError: an input is out of range.
    """
    if not regions:
        raise PowerInputError("give at least one region (e.g. --region taebaek=500)")
    _check("alpha", alpha, 0, 1)
    _check("power", power, 0, 1)
    _check("traffic", traffic, 0, 1, hi_open=False)
    _check("treatment_share", treatment_share, 0, 1)
    _check("weekly_active", weekly_active, 0, 1, hi_open=False)
    _check("weeks", weeks, 0, math.inf)
    if target_lift is not None and (target_lift == 0 or not math.isfinite(target_lift)):
        raise PowerInputError(f"target lift must be a non-zero relative change (e.g. 0.1), got {target_lift}")
    base = {r: baseline[r] if isinstance(baseline, Mapping) else baseline for r in regions}
    for r, size in regions.items():
        if size <= 0:
            raise PowerInputError(f"region {r!r}: student count must be positive, got {size}")
        _check(f"baseline of {r!r}", base[r], 0, 1)
    total = sum(regions.values())
    rows_in = [*regions.items(), (POOLED, total)] if len(regions) > 1 else list(regions.items())
    base[POOLED] = sum(base[r] * size for r, size in regions.items()) / total
    wa = min(weekly_active, 1 - 1e-12)  # weekly_active = 1 means everyone in week one
    out = []
    for region, students in rows_in:
        p0 = base[region]
        in_test = reach(students, weeks, weekly_active, traffic)
        n_t, n_c = in_test * treatment_share, in_test * (1 - treatment_share)
        m = mde(n_c, n_t, p0, alpha, power, alternative)
        need_c = need_t = wk = None
        reachable = None
        if target_lift is not None:
            need_c, need_t = required_sizes(p0, target_lift, alpha, power, treatment_share, alternative)
            wk = weeks_to_reach(need_c + need_t, students, wa, traffic)
            reachable = wk is not None
        out.append(
            PowerRow(region, students, p0, n_c, n_t, m, m / p0, target_lift, need_c, need_t, wk, reachable)
        )
    return out
