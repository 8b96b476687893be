"""Power planning for per-region A/B tests on a rate (enrolment rate) or a count (enrolments per student).

Counts (`plan_mean`): the per-student standard deviation and the CUPED variance reduction come from past
data (`past_variation` reads them from an earlier `learnrec ab report` JSON: each region's control arm and
its adjusted estimate), so the detectable lift is ``(z_{1-alpha/2} + z_power) * sd * sqrt((1 - VR) *
(1/n_c + 1/n_t))``: the variance CUPED removes is sample the experiment does not need.

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
    variance_reduction: float = 0.0  # counts: the share of variance CUPED removes (from past data)
    sd: float | None = None  # counts: per-student standard deviation of the metric

    @property
    def days_needed(self) -> float | None:
        """`weeks_needed` in days."""
        return None if self.weeks_needed is None else self.weeks_needed * 7.0

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


def _check_plan(
    regions: Mapping[str, int],
    weeks: float,
    alpha: float,
    power: float,
    traffic: float,
    treatment_share: float,
    weekly_active: float,
    target_lift: float | None,
) -> None:
    """The inputs `plan` and `plan_mean` share, each in its range (`PowerInputError` names the first not)."""
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
    _check_plan(regions, weeks, alpha, power, traffic, treatment_share, weekly_active, target_lift)
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


def plan_mean(
    regions: Mapping[str, int],
    mean: Mapping[str, float],
    sd: Mapping[str, float],
    variance_reduction: Mapping[str, float] | None = None,
    weeks: float = 2.0,
    alpha: float = 0.05,
    power: float = 0.8,
    traffic: float = 1.0,
    treatment_share: float = 0.5,
    weekly_active: float = 0.5,
    target_lift: float | None = None,
) -> list[PowerRow]:
    """`plan` for a per-student count (enrolments per student): detectable lift and time to a target.

    Args:
        regions: students per region.
        mean: control mean per region (e.g. 1.6 enrolments per student).
        sd: per-student standard deviation per region.
        variance_reduction: share of the variance CUPED removes per region (0 = none; from past data).
        weeks: planned duration.
        alpha: significance level (two-sided).
        power: 1 - type II error.
        traffic: share of exposed students entering the experiment.
        treatment_share: share of the experiment's students in treatment.
        weekly_active: weekly probability that a student is exposed.
        target_lift: relative lift to plan a duration for (None = skip).

    Returns:
        One row per region, then ``pooled`` (all regions as one population: the student-weighted mean,
        the pooled standard deviation and variance reduction), as `plan`'s rows; ``baseline`` is the
        mean and ``mde_abs`` in the count's unit.

    Raises:
        PowerInputError: an input is out of range.
    """
    from scipy.stats import norm

    _check_plan(regions, weeks, alpha, power, traffic, treatment_share, weekly_active, target_lift)
    vr = {r: (variance_reduction or {}).get(r, 0.0) for r in regions}
    for r, size in regions.items():
        if size <= 0:
            raise PowerInputError(f"region {r!r}: student count must be positive, got {size}")
        if r not in mean or r not in sd:
            raise PowerInputError(f"region {r!r}: give its control mean and standard deviation")
        _check(f"mean of {r!r}", mean[r], 0, math.inf)
        _check(f"sd of {r!r}", sd[r], 0, math.inf)
        _check(f"variance reduction of {r!r}", vr[r], 0, 1, lo_open=False)
    total = sum(regions.values())
    means, sds = dict(mean), dict(sd)
    if len(regions) > 1:
        means[POOLED] = sum(mean[r] * n for r, n in regions.items()) / total
        sds[POOLED] = math.sqrt(sum(sd[r] ** 2 * n for r, n in regions.items()) / total)
        vr[POOLED] = sum(vr[r] * sd[r] ** 2 * n for r, n in regions.items()) / (sds[POOLED] ** 2 * total)
    rows_in = [*regions.items(), (POOLED, total)] if len(regions) > 1 else list(regions.items())
    z = float(norm.ppf(1 - alpha / 2) + norm.ppf(power))
    wa = min(weekly_active, 1 - 1e-12)
    out = []
    for region, students in rows_in:
        m0, s, v = means[region], sds[region], vr[region]
        in_test = reach(students, weeks, weekly_active, traffic)
        n_t, n_c = in_test * treatment_share, in_test * (1 - treatment_share)
        se = s * math.sqrt((1 - v) * (1 / n_c + 1 / n_t)) if n_c >= 2 and n_t >= 2 else math.nan
        m = mde_mean(se, alpha, power)
        need_c = need_t = wk = None
        reachable = None
        if target_lift is not None:
            delta = abs(target_lift) * m0
            factor = 1 / (1 - treatment_share) + 1 / treatment_share
            n = (z * s) ** 2 * (1 - v) * factor / delta**2 if delta > 0 else math.inf
            need_c, need_t = n * (1 - treatment_share), n * treatment_share
            wk = weeks_to_reach(n, students, wa, traffic) if math.isfinite(n) else None
            reachable = wk is not None
        out.append(
            PowerRow(
                region, students, m0, n_c, n_t, m, m / m0 if m0 > 0 else math.nan, target_lift,
                need_c, need_t, wk, reachable, variance_reduction=v, sd=s,
            )
        )  # fmt: skip
    return out


def past_variation(report: Mapping[str, Any], metric: str) -> dict[str, tuple[float, float, float]]:
    """Per region, the control mean, per-student sd and CUPED variance reduction of a past experiment.

    Args:
        report: a `learnrec ab report` JSON document.
        metric: a mean metric of it (e.g. ``enrolments_per_student``).

    Returns:
        region -> (mean, sd, variance reduction); regions whose control arm has fewer than 2 students
        are left out.

    Raises:
        PowerInputError: the report has no such metric per region.
    """
    out: dict[str, tuple[float, float, float]] = {}
    for c in report.get("comparisons", []):
        if c.get("metric") != metric or c.get("region") == POOLED:
            continue
        arm = c["control"]
        n, var = arm.get("students") or 0, arm.get("variance")
        if n < 2 or var is None:
            continue
        adjusted = c.get("adjusted") or {}
        reduction = (adjusted.get("extra") or {}).get("variance_reduction")
        vr = min(max(float(reduction), 0.0), 0.99) if reduction is not None else 0.0
        out[c["region"]] = (float(arm["value"]), math.sqrt(float(var) * n), vr)
    if not out:
        raise PowerInputError(f"the report has no per-region {metric!r} to plan from")
    return out
