"""A/B statistics per region and pooled across regions, with the student as the unit of analysis.

Metrics (per exposed student; each student counts once, in the arm of their first exposure):

- ``enrolments_per_student`` (primary): attributed enrolments / exposed students (mean of a count).
- ``enrolment_rate``: students with >= 1 attributed enrolment / exposed students.
- ``completions_per_student``: attributed completions / exposed students (mean of a count).
- ``completion_rate``: students with >= 1 attributed completion / exposed students.
- ``completion_per_enrolment``: attributed completions / attributed enrolments (ratio of sums).

Why enrolments per student is primary: it is what the programme wants more of (lectures students start
because of their recommendations), its unit is the randomised one (the student, so exposures a model
might add or lose do not move the denominator), and it does not saturate. The enrolment rate does: a
student shown ten lectures on each of a few visits enrols at least once with high probability whatever
the model (about two thirds within two weeks in the simulation), so a much better model moves the rate
little while it moves the count a lot. In 200 repeated simulations of the default two-week experiment
in Gimpo and Taebaek (popularity vs blend, ~770 students per arm, `bench/AB.md`) the pooled test finds
the better model in 93% of runs on the count and in 28% on the rate, never the worse one, with an A/A
false-positive rate of 5.0% on the count (5.5% on the rate). Completions are the final outcome but come
days later (censored at the end of the window) and are rarer, so they are secondary.

Per region, treatment vs control (the control is the experiment's first variant):

- proportions: absolute lift CI by Newcombe's hybrid score interval and relative lift CI by the
  log-adjusted ratio interval (`statsmodels.stats.proportion.confint_proportions_2indep`); p-value from
  the pooled two-proportion z-test (`proportions_ztest`), or Fisher's exact test when an expected cell
  count is below 5 (small regions such as Taebaek);
- means: Welch's t-test and its CI (`statsmodels.stats.weightstats.CompareMeans`, unequal variances);
  relative lift CI by the delta method on the log of the ratio of means;
- ratio of sums: delta-method variance per arm (students are the units, so a student's enrolments are
  correlated and cannot be treated as independent trials), Wald z CI and test.

Pooled across regions (stratified by region, so a region with a different baseline and a different
traffic split cannot produce a Simpson's-paradox lift):

- estimate: the stratified difference sum_k w_k (t_k - c_k) / sum_k w_k with Mantel-Haenszel weights
  w_k = n_t,k n_c,k / (n_t,k + n_c,k) and variance sum_k w_k^2 (v_t,k + v_c,k) / (sum_k w_k)^2.
  MH weights, not inverse-variance weights, because an inverse-variance weight is infinite when a small
  region has 0 enrolments in an arm (variance 0), and MH weights do not depend on the outcome;
  relative lift = (sum_k w_k t_k) / (sum_k w_k c_k) - 1 with a delta-method CI on its log;
- p-value: for proportions the Cochran-Mantel-Haenszel test (`StratifiedTable.test_null_odds`), reported
  with the MH pooled odds ratio and the Breslow-Day test of equal odds ratios across regions; for means
  and ratios the z-test of the stratified difference.

Multiple testing: per metric and treatment, region p-values are adjusted with Holm's step-down method
(`holm`, equal to `statsmodels.stats.multitest.multipletests(method="holm")`, which a test checks; that one
runs a full garbage collection per call, a quarter of a second in a loaded process), which controls the
family-wise error rate under any dependence; each region is a separate go/no-go decision, so a false "win"
in one region is what must be bounded, and the number of regions is small (so Holm costs little power vs
Benjamini-Hochberg). The pooled result is a separate, pre-specified test and is not in the family.

Sample-ratio mismatch: per region (and overall), a chi-square goodness-of-fit test of the students per
variant against the configured weights (`scipy.stats.chisquare`); p < 0.001 flags a mismatch, in which case
the assignment or the logging is broken and the lifts in that region should not be trusted.

Size: over 600 lines because the per-region tests, the pooling and the intervals of one analysis must stay
consistent with each other.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from training.ab.errors import AnalysisInputError

Kind = Literal["proportion", "mean", "ratio"]
POOLED = "pooled"
SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class MetricSpec:
    """A metric over the per-student outcome table."""

    name: str
    kind: Kind
    column: str  # per-student value (bool for proportions, count for means, numerator for ratios)
    denominator: str | None  # per-student denominator of a ratio metric
    label: str
    formula: str

    def show(self, x: float | None) -> str:
        """A value as people read it: a rate in percent, a mean or ratio with three decimals."""
        if x is None or not math.isfinite(x):
            return "-"
        return f"{100 * x:.1f}%" if self.kind == "proportion" else f"{x:.3f}"

    def show_lift(self, x: float | None) -> str:
        """A difference: percentage points for a rate, plain for a mean or ratio."""
        if x is None or not math.isfinite(x):
            return "-"
        return f"{100 * x:+.2f}pp" if self.kind == "proportion" else f"{x:+.3f}"


def metric(name: str) -> MetricSpec:
    """The metric called ``name`` (one of `METRICS`)."""
    found = next((m for m in METRICS if m.name == name), None)
    if found is None:
        raise AnalysisInputError(f"unknown metric {name!r}; known: {[m.name for m in METRICS]}")
    return found


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "enrolments_per_student",
        "mean",
        "n_enrolled",
        None,
        "Enrolments from recommendations per student",
        "attributed enrolments / exposed students",
    ),
    MetricSpec(
        "enrolment_rate",
        "proportion",
        "enrolled",
        None,
        "Enrolment rate from recommendations",
        "students with >= 1 attributed enrolment / exposed students",
    ),
    MetricSpec(
        "completions_per_student",
        "mean",
        "n_completed",
        None,
        "Completions per student",
        "attributed completions / exposed students",
    ),
    MetricSpec(
        "completion_rate",
        "proportion",
        "completed",
        None,
        "Completion rate",
        "students with >= 1 attributed completion / exposed students",
    ),
    MetricSpec(
        "completion_per_enrolment",
        "ratio",
        "n_completed",
        "n_enrolled",
        "Completion among enrolments",
        "attributed completions / attributed enrolments",
    ),
)
PRIMARY_METRIC = "enrolments_per_student"


@dataclass(frozen=True)
class Arm:
    """One variant's numbers in one stratum."""

    variant: str
    students: int
    exposures: int
    value: float  # the metric's estimate; pooled rows: the region-standardised (MH-weighted) value
    variance: float  # variance of `value` (input of the pooled estimate; NaN on pooled rows)
    numerator: float  # successes (proportion), sum of values (mean), sum of numerators (ratio); crude sums
    denominator: float  # students (proportion, mean) or sum of denominators (ratio); crude sums


@dataclass(frozen=True)
class Estimate:
    """Treatment minus control, with CIs and a p-value (NaN when the data cannot say)."""

    abs_lift: float
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    p_value: float
    test: str
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    """One metric, one treatment vs the control, in one region (or pooled).

    ``p_adjusted`` is Holm-adjusted across regions; on the pooled row it is the pooled test's own p-value
    (the pooled comparison is a single pre-specified test, not part of the regional family).
    """

    metric: str
    region: str
    control: Arm
    treatment: Arm
    estimate: Estimate
    p_adjusted: float = math.nan
    significant: bool = False
    adjusted: Estimate | None = None  # CUPED (regression-adjusted) estimate, when covariates were given
    sequential_ci: tuple[float, float] = (math.nan, math.nan)  # always-valid interval of `decision`
    sequential_p: float = math.nan  # always-valid p-value (regions: Holm-adjusted like p_adjusted)

    @property
    def decision(self) -> Estimate:
        """The estimate the decision rests on: the adjusted one when there is one (pre-specified)."""
        return self.adjusted if self.adjusted is not None else self.estimate


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio check of one region (or ``pooled`` = all regions)."""

    region: str
    observed: dict[str, int]
    expected_share: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool
    note: str = ""


@dataclass
class Analysis:
    """Everything `analyse` computes for one experiment."""

    variants: list[str]
    control: str
    regions: list[str]
    alpha: float
    comparisons: list[Comparison]
    srm: list[SrmResult]
    excluded: dict[str, int]

    @property
    def srm_regions(self) -> list[str]:
        """Regions (or ``pooled``) whose sample ratio is off."""
        return [s.region for s in self.srm if s.mismatch]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN/inf become None)."""
        out: dict[str, Any] = json_ready(asdict(self))
        return out


def json_ready(x: Any) -> Any:
    """JSON-ready: NaN and infinity become None, numpy scalars Python ones (recursively)."""
    if isinstance(x, dict):
        return {k: json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_ready(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


_NAN2 = (math.nan, math.nan)


def _nan_estimate(test: str) -> Estimate:
    return Estimate(math.nan, _NAN2, math.nan, _NAN2, math.nan, test)


def _z(alpha: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2))


def _log_ratio_ci(
    t: float, var_t: float, c: float, var_c: float, alpha: float
) -> tuple[float, tuple[float, float]]:
    """Relative lift t/c - 1 and its CI by the delta method on log(t/c) (NaN when t or c <= 0)."""
    if not (t > 0 and c > 0) or not (math.isfinite(var_t) and math.isfinite(var_c)):
        rel = t / c - 1 if c > 0 else math.nan
        return rel, _NAN2
    se = math.sqrt(var_t / t**2 + var_c / c**2)
    log_r = math.log(t / c)
    z = _z(alpha)
    return t / c - 1, (math.exp(log_r - z * se) - 1, math.exp(log_r + z * se) - 1)


def compare_proportions(c_t: int, n_t: int, c_c: int, n_c: int, alpha: float = 0.05) -> Estimate:
    """Treatment vs control rates: Newcombe CI of the difference, log-adjusted CI of the ratio, a p-value.

    Args:
        c_t: successes in the treatment arm.
        n_t: students in the treatment arm.
        c_c: successes in the control arm.
        n_c: students in the control arm.
        alpha: 1 - confidence level.

    Returns:
        The estimate; ``test`` names the test used (``z`` pooled two-proportion z-test, or ``fisher``
        when an expected cell count is < 5). NaN everywhere when an arm is empty.
    """
    if n_t <= 0 or n_c <= 0:
        return _nan_estimate("insufficient data")
    p_t, p_c = c_t / n_t, c_c / n_c
    lo, hi = confint_proportions_2indep(c_t, n_t, c_c, n_c, method="newcomb", compare="diff", alpha=alpha)
    if c_c > 0:
        r_lo, r_hi = confint_proportions_2indep(
            c_t, n_t, c_c, n_c, method="log-adjusted", compare="ratio", alpha=alpha
        )
        rel, rel_ci = p_t / p_c - 1, (float(r_lo) - 1, float(r_hi) - 1)
    else:
        rel, rel_ci = math.nan, _NAN2  # no control successes: a relative lift has no finite value
    successes, total = c_t + c_c, n_t + n_c
    if successes in (0, total):
        p, test = 1.0, "z"  # both arms all-or-nothing and equal: no evidence of a difference
    else:
        expected_min = min(n_t, n_c) * min(successes, total - successes) / total
        if expected_min < 5:
            _, p = sps.fisher_exact([[c_t, n_t - c_t], [c_c, n_c - c_c]])
            test = "fisher"
        else:
            _, p = proportions_ztest([c_t, c_c], [n_t, n_c])
            test = "z"
    return Estimate(p_t - p_c, (float(lo), float(hi)), rel, rel_ci, float(p), test)


def compare_means(x_t: npt.ArrayLike, x_c: npt.ArrayLike, alpha: float = 0.05) -> Estimate:
    """Welch's t-test and CI of the difference of means; delta-method CI of the relative lift.

    Args:
        x_t: per-student values, treatment.
        x_c: per-student values, control.
        alpha: 1 - confidence level.

    Returns:
        The estimate (NaN when an arm has fewer than 2 students).
    """
    a = np.asarray(x_t, dtype=np.float64)
    b = np.asarray(x_c, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return _nan_estimate("insufficient data")
    m_t, m_c = float(a.mean()), float(b.mean())
    v_t, v_c = float(a.var(ddof=1)) / len(a), float(b.var(ddof=1)) / len(b)
    if v_t + v_c == 0:
        # constant values in both arms: the difference is known exactly
        p = 1.0 if m_t == m_c else 0.0
        rel = m_t / m_c - 1 if m_c else math.nan
        return Estimate(m_t - m_c, (m_t - m_c, m_t - m_c), rel, (rel, rel), p, "welch")
    cm = CompareMeans(DescrStatsW(a), DescrStatsW(b))
    _, p, _ = cm.ttest_ind(usevar="unequal")
    lo, hi = cm.tconfint_diff(alpha=alpha, usevar="unequal")
    rel, rel_ci = _log_ratio_ci(m_t, v_t, m_c, v_c, alpha)
    return Estimate(m_t - m_c, (float(lo), float(hi)), rel, rel_ci, float(p), "welch")


def ratio_of_sums(num: npt.ArrayLike, den: npt.ArrayLike) -> tuple[float, float]:
    """sum(num) / sum(den) over students and its delta-method variance.

    Args:
        num: per-student numerators.
        den: per-student denominators.

    Returns:
        (ratio, variance); NaN when the denominators sum to 0 or there are fewer than 2 students.
    """
    y = np.asarray(num, dtype=np.float64)
    x = np.asarray(den, dtype=np.float64)
    n = len(x)
    if n < 2 or x.sum() == 0:
        return math.nan, math.nan
    r = float(y.sum() / x.sum())
    mx = float(x.mean())
    cov = np.cov(y, x, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mx * mx)
    return r, float(max(var, 0.0))


def _wald(d: float, var: float, alpha: float) -> tuple[tuple[float, float], float]:
    if not math.isfinite(var) or not math.isfinite(d):
        return _NAN2, math.nan
    se = math.sqrt(var)
    z = _z(alpha)
    if se == 0:
        return (d, d), (1.0 if d == 0 else 0.0)
    return (d - z * se, d + z * se), float(2 * sps.norm.sf(abs(d) / se))


def compare_ratios(
    num_t: npt.ArrayLike,
    den_t: npt.ArrayLike,
    num_c: npt.ArrayLike,
    den_c: npt.ArrayLike,
    alpha: float = 0.05,
) -> Estimate:
    """Difference of two ratio-of-sums metrics, delta-method Wald CI and z-test.

    Args:
        num_t: per-student numerators, treatment.
        den_t: per-student denominators, treatment.
        num_c: per-student numerators, control.
        den_c: per-student denominators, control.
        alpha: 1 - confidence level.

    Returns:
        The estimate.
    """
    r_t, v_t = ratio_of_sums(num_t, den_t)
    r_c, v_c = ratio_of_sums(num_c, den_c)
    if math.isnan(r_t) or math.isnan(r_c):
        return _nan_estimate("insufficient data")
    ci, p = _wald(r_t - r_c, v_t + v_c, alpha)
    rel, rel_ci = _log_ratio_ci(r_t, v_t, r_c, v_c, alpha)
    return Estimate(r_t - r_c, ci, rel, rel_ci, p, "delta-z")


def cuped(
    y_t: npt.ArrayLike, x_t: npt.ArrayLike, y_c: npt.ArrayLike, x_c: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """CUPED: outcomes adjusted by pre-experiment covariates, ``y - (x - mean(x)) @ theta``.

    ``theta`` is the within-arm least-squares slope of y on x (each arm centred on its own means, then
    pooled), so the difference of the adjusted means is exactly the treatment coefficient of the OLS
    regression ``y ~ 1 + treatment + x`` (the regression adjustment of Deng et al. 2013 and Lin 2013
    with a common slope); the covariates are centred on their mean over both arms, so an adjusted mean
    stays on the outcome's scale. Covariates fixed before randomisation cannot carry the treatment
    effect, so the adjustment removes variance without bias. A covariate without variance (a small
    region where nobody was active before) gets slope 0 (minimum-norm least squares).

    Args:
        y_t: outcomes of the treatment arm, shape (n_t,).
        x_t: its covariates, shape (n_t,) or (n_t, p).
        y_c: outcomes of the control arm.
        x_c: its covariates.

    Returns:
        (adjusted treatment outcomes, adjusted control outcomes, theta of shape (p,)).
    """
    yt, yc = np.asarray(y_t, dtype=np.float64), np.asarray(y_c, dtype=np.float64)
    x_t_arr, x_c_arr = np.asarray(x_t, dtype=np.float64), np.asarray(x_c, dtype=np.float64)
    width = 1 if x_t_arr.ndim < 2 else x_t_arr.shape[1]
    # an empty arm (a region or day where one variant has no student yet) has nothing to adjust:
    # reshape(0, -1) cannot infer the width, so the covariates' own width is used
    xt, xc = x_t_arr.reshape(len(yt), width), x_c_arr.reshape(len(yc), width)
    if len(yt) == 0 or len(yc) == 0:
        return yt, yc, np.zeros(width)
    within_x = np.vstack([xt - xt.mean(axis=0), xc - xc.mean(axis=0)])
    within_y = np.concatenate([yt - yt.mean(), yc - yc.mean()])
    theta = np.linalg.lstsq(within_x, within_y, rcond=None)[0]
    centre = np.vstack([xt, xc]).mean(axis=0)
    return yt - (xt - centre) @ theta, yc - (xc - centre) @ theta, theta


def compare_adjusted(
    y_t: npt.ArrayLike, x_t: npt.ArrayLike, y_c: npt.ArrayLike, x_c: npt.ArrayLike, alpha: float = 0.05
) -> Estimate:
    """Treatment vs control on CUPED-adjusted outcomes: Welch's test and CI on the adjusted values.

    Args:
        y_t: outcomes, treatment (a count, or 0/1 for a rate: the linear-probability adjustment).
        x_t: pre-experiment covariates, treatment.
        y_c: outcomes, control.
        x_c: covariates, control.
        alpha: 1 - confidence level.

    Returns:
        The estimate (``test`` = ``cuped-welch``); ``extra`` carries ``variance_reduction`` (1 - variance
        of the adjusted difference / variance of the plain one), ``theta_<i>`` and the adjusted means
        ``treatment_value`` / ``control_value``.
    """
    a_t, a_c, theta = cuped(y_t, x_t, y_c, x_c)
    est = compare_means(a_t, a_c, alpha)
    if not math.isfinite(est.abs_lift):
        return est
    yt, yc = np.asarray(y_t, dtype=np.float64), np.asarray(y_c, dtype=np.float64)
    raw = float(yt.var(ddof=1)) / len(yt) + float(yc.var(ddof=1)) / len(yc)
    adj = float(a_t.var(ddof=1)) / len(a_t) + float(a_c.var(ddof=1)) / len(a_c)
    extra = {
        "variance_reduction": 1 - adj / raw if raw > 0 else 0.0,
        "treatment_value": float(a_t.mean()),
        "control_value": float(a_c.mean()),
        "se": math.sqrt(adj),
        "treatment_variance": float(a_t.var(ddof=1)) / len(a_t),
        "control_variance": float(a_c.var(ddof=1)) / len(a_c),
        **{f"theta_{i}": float(t) for i, t in enumerate(theta)},
    }
    return replace(est, test="cuped-welch", extra=extra)


def pooled_difference(pairs: Sequence[tuple[Arm, Arm]], alpha: float = 0.05) -> Estimate:
    """Stratified (Mantel-Haenszel-weighted) difference of (treatment, control) arms across strata.

    Args:
        pairs: per stratum, (treatment arm, control arm) with `value` and `variance` set.
        alpha: 1 - confidence level.

    Returns:
        The pooled estimate with a Wald CI and z-test p-value; strata with an undefined value are skipped.
    """
    rows = [
        (t.students * c.students / (t.students + c.students), t, c)
        for t, c in pairs
        if t.students > 0 and c.students > 0 and math.isfinite(t.value) and math.isfinite(c.value)
    ]
    w_sum = sum(w for w, _, _ in rows)
    if not rows or w_sum == 0:
        return _nan_estimate("insufficient data")
    big_t = sum(w * t.value for w, t, _ in rows) / w_sum
    big_c = sum(w * c.value for w, _, c in rows) / w_sum
    var_t = sum(w * w * t.variance for w, t, _ in rows) / w_sum**2
    var_c = sum(w * w * c.variance for w, _, c in rows) / w_sum**2
    ci, p = _wald(big_t - big_c, var_t + var_c, alpha)
    rel, rel_ci = _log_ratio_ci(big_t, var_t, big_c, var_c, alpha)
    extra = {
        "strata": float(len(rows)),
        "treatment_value": big_t,
        "control_value": big_c,
        # of the difference, as its CI has it (the pooled arms carry no variance of their own)
        "se": math.sqrt(var_t + var_c) if math.isfinite(var_t + var_c) else math.nan,
    }
    return Estimate(big_t - big_c, ci, rel, rel_ci, p, "stratified-z", extra)


#: Default tuning of the sequential interval: the total students (both arms) at which it is tightest.
SEQUENTIAL_TUNING = 1000


def sequential_rho(alpha: float, tuning: float = SEQUENTIAL_TUNING) -> float:
    """Mixing scale of the normal-mixture boundary, chosen so the interval is tightest near ``tuning`` units.

    ``rho = sqrt((-2 ln alpha + ln(-2 ln alpha + 1)) / tuning)`` (Howard et al. 2021, eq. 14; GrowthBook's
    ``sequential_tuning_parameter``).

    Args:
        alpha: 1 - confidence level.
        tuning: total units (students in both arms) where the boundary is optimised.

    Returns:
        rho.
    """
    if not 0 < alpha < 1 or not tuning > 0:
        raise AnalysisInputError(f"sequential: need 0 < alpha < 1 and tuning > 0, got {alpha}, {tuning}")
    a = -2 * math.log(alpha)
    return math.sqrt((a + math.log(a + 1)) / tuning)


def sequential_halfwidth_factor(n: float, alpha: float, tuning: float = SEQUENTIAL_TUNING) -> float:
    """How many standard errors the always-valid interval spans on each side after ``n`` units.

    The normal-mixture confidence sequence (the mixture SPRT, as GrowthBook and Howard et al. 2021 give
    it): with ``s2 = se^2 n`` the per-unit variance, the half-width is
    ``sqrt(s2) sqrt(2 (n rho^2 + 1) / (n rho)^2 ln(sqrt(n rho^2 + 1) / alpha))``, i.e. ``se`` times the
    factor returned. It exceeds the fixed-horizon ``z_{1-alpha/2}`` at every ``n``: the price of a
    guarantee that holds at every look, however many and whenever the analyst stops.

    Args:
        n: units analysed so far (students of both arms).
        alpha: 1 - confidence level.
        tuning: see `sequential_rho`.

    Returns:
        The factor (inf when ``n`` <= 0).
    """
    if n <= 0:
        return math.inf
    r2n = n * sequential_rho(alpha, tuning) ** 2
    return math.sqrt(2 * (r2n + 1) / r2n * math.log(math.sqrt(r2n + 1) / alpha))


def sequential_interval(
    estimate: float, se: float, n: float, alpha: float = 0.05, tuning: float = SEQUENTIAL_TUNING
) -> tuple[tuple[float, float], float]:
    """Always-valid interval and p-value of a difference with standard error ``se`` after ``n`` units.

    Args:
        estimate: the difference (plain or CUPED-adjusted).
        se: its standard error.
        n: students in both arms.
        alpha: 1 - confidence level; the rho of the mixture is tuned to it.
        tuning: see `sequential_rho`.

    Returns:
        ((low, high), p) where ``p = min(1, sqrt(n rho^2 + 1) exp(-z^2 n rho^2 / (2 (n rho^2 + 1))))`` is
        the inverse of the mixture likelihood ratio: ``p < alpha`` exactly when the interval excludes 0.
        The probability that a null experiment EVER shows ``p < alpha`` is at most alpha.
    """
    if not (math.isfinite(estimate) and math.isfinite(se)) or n <= 0:
        return _NAN2, math.nan
    if se == 0:
        return (estimate, estimate), (1.0 if estimate == 0 else 0.0)
    width = se * sequential_halfwidth_factor(n, alpha, tuning)
    r2n = n * sequential_rho(alpha, tuning) ** 2
    z2 = (estimate / se) ** 2
    log_p = 0.5 * math.log(r2n + 1) - z2 * r2n / (2 * (r2n + 1))
    return (estimate - width, estimate + width), min(1.0, math.exp(log_p))


def cmh(tables: Sequence[tuple[int, int, int, int]], alpha: float = 0.05) -> dict[str, float]:
    """Cochran-Mantel-Haenszel test over per-stratum (c_t, n_t, c_c, n_c), via statsmodels `StratifiedTable`.

    Args:
        tables: per stratum, successes and totals of treatment and control.
        alpha: 1 - confidence level of the pooled odds ratio.

    Returns:
        ``p_value`` (CMH, no continuity correction), ``odds_ratio`` with ``or_low``/``or_high``, and
        ``homogeneity_p`` (Breslow-Day); NaN where undefined (e.g. no successes at all).
    """
    mats = [
        np.array([[c_t, n_t - c_t], [c_c, n_c - c_c]], dtype=np.float64)
        for c_t, n_t, c_c, n_c in tables
        if n_t > 0 and n_c > 0
    ]
    out = dict.fromkeys(("p_value", "odds_ratio", "or_low", "or_high", "homogeneity_p"), math.nan)
    if not mats:
        return out
    successes = sum(m[:, 0].sum() for m in mats)
    total = sum(m.sum() for m in mats)
    if successes in (0, total):
        out["p_value"] = 1.0
        return out
    table = StratifiedTable(mats)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # zero cells in a small stratum make the odds ratio or Breslow-Day undefined: reported as NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        out["p_value"] = float(table.test_null_odds(correction=False).pvalue)
        out["odds_ratio"] = float(table.oddsratio_pooled)
        lo, hi = table.oddsratio_pooled_confint(alpha=alpha)
        out["or_low"], out["or_high"] = float(lo), float(hi)
        if len(mats) > 1:
            with contextlib.suppress(ZeroDivisionError, ValueError, np.linalg.LinAlgError):
                out["homogeneity_p"] = float(table.test_equal_odds().pvalue)
    return out


def srm_check(
    observed: Mapping[str, int],
    shares: Mapping[str, float],
    region: str = POOLED,
    threshold: float = SRM_THRESHOLD,
) -> SrmResult:
    """Chi-square goodness of fit of students per variant against the configured shares.

    Args:
        observed: students per variant (variants missing from it count 0).
        shares: configured share per variant (normalised here).
        region: label of the stratum.
        threshold: p-value below which the split is a mismatch.

    Returns:
        The check; ``mismatch`` is False (with a note) when there are no students.
    """
    names = list(shares)
    obs = np.array([observed.get(v, 0) for v in names], dtype=np.float64)
    total_share = sum(shares.values())
    exp_share = {v: shares[v] / total_share for v in names}
    n = obs.sum()
    if n == 0:
        return SrmResult(region, dict.fromkeys(names, 0), exp_share, math.nan, math.nan, False, "no students")
    expected = np.array([exp_share[v] * n for v in names])
    chi2, p = sps.chisquare(obs, expected)
    note = "expected count < 5: chi-square is approximate" if expected.min() < 5 else ""
    return SrmResult(
        region,
        {v: int(o) for v, o in zip(names, obs, strict=True)},
        exp_share,
        float(chi2),
        float(p),
        bool(p < threshold),
        note,
    )


def _arm(df: pd.DataFrame, spec: MetricSpec, variant: str) -> Arm:
    n = len(df)
    exposures = int(df["n_exposures"].sum())
    if spec.kind == "proportion":
        c = int(df[spec.column].sum())
        p = c / n if n else math.nan
        return Arm(variant, n, exposures, p, p * (1 - p) / n if n else math.nan, c, n)
    if spec.kind == "mean":
        x = df[spec.column].to_numpy(dtype=np.float64)
        m = float(x.mean()) if n else math.nan
        v = float(x.var(ddof=1)) / n if n > 1 else math.nan
        return Arm(variant, n, exposures, m, v, float(x.sum()), n)
    assert spec.denominator is not None
    r, v = ratio_of_sums(df[spec.column], df[spec.denominator])
    return Arm(variant, n, exposures, r, v, float(df[spec.column].sum()), float(df[spec.denominator].sum()))


def _compare(spec: MetricSpec, t: pd.DataFrame, c: pd.DataFrame, alpha: float) -> Estimate:
    if spec.kind == "proportion":
        return compare_proportions(
            int(t[spec.column].sum()), len(t), int(c[spec.column].sum()), len(c), alpha
        )
    if spec.kind == "mean":
        return compare_means(t[spec.column], c[spec.column], alpha)
    assert spec.denominator is not None
    return compare_ratios(t[spec.column], t[spec.denominator], c[spec.column], c[spec.denominator], alpha)


def analyse(
    students: pd.DataFrame,
    shares: Mapping[str, float],
    alpha: float = 0.05,
    metrics: Sequence[MetricSpec] = METRICS,
    regions: Sequence[str] | None = None,
    srm_threshold: float = SRM_THRESHOLD,
    covariates: Sequence[str] = (),
    sequential_tuning: float = SEQUENTIAL_TUNING,
) -> Analysis:
    """Per-region and pooled comparisons of every treatment against the control, plus SRM checks.

    Args:
        students: per-student outcomes of ONE experiment (`training.ab.attribution.STUDENT_COLUMNS`).
        shares: configured variant weights in config order; the first variant is the control.
        alpha: significance level (CIs are 1 - alpha).
        metrics: metrics to compute.
        regions: regions to report (default: the regions present, sorted).
        srm_threshold: SRM p-value threshold.
        covariates: pre-experiment columns of ``students`` (`training.ab.covariates.COVARIATES`); when
            given, every mean and rate metric also gets a CUPED estimate (`Comparison.adjusted`) per
            region and pooled, and the Holm-adjusted p-values and decisions rest on it.
        sequential_tuning: students (both arms) where the always-valid interval is tightest
            (`sequential_rho`); every comparison gets ``sequential_ci`` and ``sequential_p``.

    Returns:
        The analysis. Students seen in more than one variant, or in a variant not in ``shares``, are
        excluded (counted in ``excluded``).

    Raises:
        AnalysisInputError: more than one experiment in ``students`` or fewer than 2 variants.
    """
    variants = list(shares)
    if len(variants) < 2:
        raise AnalysisInputError(f"need a control and at least one treatment, got variants {variants}")
    if students["experiment"].nunique() > 1:
        raise AnalysisInputError(
            f"students of several experiments: {sorted(students['experiment'].unique())}"
        )
    mixed = students["n_variants"] > 1
    unknown = ~students["variant"].isin(variants)
    excluded = {
        "mixed_variant_students": int(mixed.sum()),
        "unknown_variant_students": int((unknown & ~mixed).sum()),
    }
    df = students.loc[~mixed & ~unknown]
    covs = list(covariates)
    absent = [c for c in covs if c not in df.columns]
    if absent:
        raise AnalysisInputError(f"covariate column(s) {absent} missing (see training.ab.covariates)")
    region_list = sorted(df["region"].unique()) if regions is None else list(regions)
    control = variants[0]
    # not dict(groupby): a GroupBy has a `keys` attribute, so dict() would treat it as a mapping
    groups = {key: g for key, g in df.groupby(["region", "variant"], sort=False)}  # noqa: C416
    empty = df.iloc[0:0]

    srm = [
        srm_check(
            {v: len(groups.get((r, v), empty)) for v in variants}, shares, region=r, threshold=srm_threshold
        )
        for r in region_list
    ]
    srm.append(
        srm_check(
            {str(k): int(n) for k, n in df["variant"].value_counts().items()}, shares, POOLED, srm_threshold
        )
    )

    comparisons: list[Comparison] = []
    for spec in metrics:
        for treatment in variants[1:]:
            family: list[Comparison] = []
            pairs: list[tuple[Arm, Arm]] = []
            adjusted_pairs: list[tuple[Arm, Arm]] = []
            adjust = bool(covs) and spec.kind != "ratio"  # a ratio of sums has no per-student outcome
            for r in region_list:
                t, c = groups.get((r, treatment), empty), groups.get((r, control), empty)
                arm_t, arm_c = _arm(t, spec, treatment), _arm(c, spec, control)
                comp = Comparison(spec.name, r, arm_c, arm_t, _compare(spec, t, c, alpha))
                if adjust:
                    comp.adjusted = compare_adjusted(t[spec.column], t[covs], c[spec.column], c[covs], alpha)
                    adjusted_pairs.append(_adjusted_arms(comp.adjusted, arm_t, arm_c))
                family.append(comp)
                pairs.append((arm_t, arm_c))
            _holm(family, alpha)
            for comp in family:
                _sequential(comp, alpha, sequential_tuning)
            _holm_sequential(family)
            comparisons.extend(family)
            all_t = df.loc[df["region"].isin(region_list) & (df["variant"] == treatment)]
            all_c = df.loc[df["region"].isin(region_list) & (df["variant"] == control)]
            pooled = pooled_difference(pairs, alpha)
            if spec.kind == "proportion":
                tables = [(int(t.numerator), t.students, int(c.numerator), c.students) for t, c in pairs]
                m = cmh(tables, alpha)
                pooled = Estimate(
                    pooled.abs_lift,
                    pooled.abs_ci,
                    pooled.rel_lift,
                    pooled.rel_ci,
                    m.pop("p_value"),
                    "cmh",
                    {**pooled.extra, **m},
                )
            # pooled arms show the standardised (MH-weighted) values, so treatment - control = the lift
            arm_c, arm_t = _arm(all_c, spec, control), _arm(all_t, spec, treatment)
            if "control_value" in pooled.extra:
                arm_c = replace(arm_c, value=pooled.extra["control_value"], variance=math.nan)
                arm_t = replace(arm_t, value=pooled.extra["treatment_value"], variance=math.nan)
            comp = Comparison(spec.name, POOLED, arm_c, arm_t, pooled, pooled.p_value)
            if adjust:
                comp.adjusted = _pooled_adjusted(adjusted_pairs, pooled, alpha)
                comp.p_adjusted = comp.adjusted.p_value
            comp.significant = bool(comp.p_adjusted < alpha)
            _sequential(comp, alpha, sequential_tuning)
            comparisons.append(comp)
    return Analysis(variants, control, region_list, alpha, comparisons, srm, excluded)


def _adjusted_arms(est: Estimate, arm_t: Arm, arm_c: Arm) -> tuple[Arm, Arm]:
    """The arms as the CUPED estimate sees them (adjusted means and their variances), for the pooling."""
    nan = math.nan
    return (
        replace(
            arm_t,
            value=est.extra.get("treatment_value", nan),
            variance=est.extra.get("treatment_variance", nan),
        ),
        replace(
            arm_c, value=est.extra.get("control_value", nan), variance=est.extra.get("control_variance", nan)
        ),
    )


def _pooled_adjusted(pairs: Sequence[tuple[Arm, Arm]], plain: Estimate, alpha: float) -> Estimate:
    """The stratified (MH-weighted) difference of the regions' CUPED-adjusted arms."""
    est = pooled_difference(pairs, alpha)
    se_plain, se = plain.extra.get("se", math.nan), est.extra.get("se", math.nan)
    reduction = 1 - (se / se_plain) ** 2 if se_plain > 0 and math.isfinite(se) else math.nan
    return replace(est, test="cuped-stratified-z", extra={**est.extra, "variance_reduction": reduction})


def decision_se(comp: Comparison) -> float:
    """Standard error of the difference the decision rests on (adjusted, pooled or plain)."""
    est = comp.decision
    if "se" in est.extra:
        return float(est.extra["se"])
    v = comp.control.variance + comp.treatment.variance
    return math.sqrt(v) if math.isfinite(v) and v >= 0 else math.nan


def _sequential(comp: Comparison, alpha: float, tuning: float) -> None:
    n = comp.control.students + comp.treatment.students
    comp.sequential_ci, comp.sequential_p = sequential_interval(
        comp.decision.abs_lift, decision_se(comp), n, alpha, tuning
    )


def holm(p_values: Sequence[float]) -> npt.NDArray[np.float64]:
    """Holm's step-down adjusted p-values, in the input order.

    The i-th smallest p-value (1-based) is multiplied by ``m - i + 1``, made non-decreasing along the
    sorted order and capped at 1; a hypothesis is rejected at level alpha when its adjusted p < alpha.

    Args:
        p_values: raw p-values (finite).

    Returns:
        The adjusted p-values.
    """
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * np.arange(m, 0, -1)))
    out = np.empty(m, dtype=np.float64)
    out[order] = stepped
    return out


def _holm_sequential(family: list[Comparison]) -> None:
    """Holm across regions on the always-valid p-values too (each stays valid at every look)."""
    idx = [i for i, c in enumerate(family) if math.isfinite(c.sequential_p)]
    if idx:
        adjusted = holm([family[i].sequential_p for i in idx])
        for i, adj in zip(idx, adjusted, strict=True):
            family[i].sequential_p = float(adj)


def _holm(family: list[Comparison], alpha: float) -> None:
    """Holm-adjust the family's p-values in place (comparisons without a p-value stay NaN)."""
    idx = [i for i, c in enumerate(family) if math.isfinite(c.decision.p_value)]
    if not idx:
        return
    adjusted = holm([family[i].decision.p_value for i in idx])
    for i, adj in zip(idx, adjusted, strict=True):
        family[i].p_adjusted = float(adj)
        family[i].significant = bool(adj < alpha)


def cumulative_rates(students: pd.DataFrame, freq: str = "D") -> pd.DataFrame:
    """Cumulative enrolment rate per variant over time (for the report's trend plot).

    Args:
        students: per-student outcomes of one experiment.
        freq: pandas frequency of the time axis (default daily).

    Returns:
        Columns ``at`` (period start, UTC), ``variant``, ``exposed`` (students first exposed by the end of
        the period), ``enrolled`` (of those, with an attributed enrolment by the end of the period), ``rate``.
    """
    columns = ["at", "variant", "exposed", "enrolled", "rate"]
    if students.empty:
        return pd.DataFrame(columns=columns)
    first = students["first_shown_at"].dt.floor(freq)
    enrol = students["first_enrolled_at"].dt.floor(freq)
    # an enrolment counts from the period the student was exposed in (a tied request may predate it)
    enrol = enrol.where(enrol >= first, first).where(enrol.notna())
    last = enrol.max() if enrol.notna().any() else first.max()
    periods = pd.date_range(first.min(), max(first.max(), last), freq=freq)
    grid = periods.to_numpy()
    frames = []
    for v, g in students.groupby("variant", sort=True):
        exposed = np.searchsorted(np.sort(first.loc[g.index].to_numpy()), grid, side="right")
        enrolled = np.searchsorted(np.sort(enrol.loc[g.index].dropna().to_numpy()), grid, side="right")
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(exposed > 0, enrolled / np.maximum(exposed, 1), np.nan)
        frames.append(
            pd.DataFrame(
                {"at": periods, "variant": v, "exposed": exposed, "enrolled": enrolled, "rate": rate}
            )
        )
    return pd.concat(frames, ignore_index=True)[columns]
