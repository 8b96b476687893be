"""CUPED against statsmodels OLS, pre-period covariates, and the sequential interval's coverage on nulls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from training.ab.covariates import COVARIATES, add_pre_activity
from training.ab.stats import (
    POOLED,
    analyse,
    compare_adjusted,
    cuped,
    metric,
    sequential_halfwidth_factor,
    sequential_interval,
)


def _data(seed: int, n: int = 600, effect: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts whose mean grows with two pre-period counts (like enrolments after enrolments before)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 2, n)
    x = rng.poisson(2.0, (n, 2)).astype(float)
    y = rng.poisson(np.exp(0.2 + 0.25 * x[:, 0] + 0.1 * x[:, 1] + effect * t)).astype(float)
    return t, x, y


def test_cuped_estimate_is_the_ols_treatment_coefficient() -> None:
    """Known answer: the CUPED difference equals OLS y ~ 1 + T + x exactly; its SE is OLS's robust SE."""
    t, x, y = _data(1)
    est = compare_adjusted(y[t == 1], x[t == 1], y[t == 0], x[t == 0])
    fit = sm.OLS(y, sm.add_constant(np.column_stack([t, x]))).fit(cov_type="HC2")
    assert est.abs_lift == pytest.approx(fit.params[1], rel=1e-10)
    assert est.extra["se"] == pytest.approx(fit.bse[1], rel=0.02)  # Welch on adjusted values vs HC2
    plain = compare_adjusted(
        y[t == 1], np.zeros((int(t.sum()), 1)), y[t == 0], np.zeros((int((1 - t).sum()), 1))
    )
    assert plain.extra["variance_reduction"] == pytest.approx(0.0, abs=1e-12)
    assert est.extra["variance_reduction"] > 0.25  # the covariates predict the outcome
    lo, hi = est.abs_ci
    assert hi - lo < plain.abs_ci[1] - plain.abs_ci[0]


def test_cuped_keeps_a_constant_covariate_harmless() -> None:
    """A small region where nobody was active before: slope 0, the plain difference."""
    y_t, y_c = np.array([1.0, 2, 0, 3]), np.array([0.0, 1, 1])
    a_t, a_c, theta = cuped(y_t, np.zeros(4), y_c, np.zeros(3))
    assert theta.tolist() == [0.0]
    assert a_t.tolist() == y_t.tolist() and a_c.tolist() == y_c.tolist()


def _students(seed: int, sizes: dict[str, int], effect: float = 0.0) -> pd.DataFrame:
    frames = []
    for i, (region, n) in enumerate(sizes.items()):
        t, x, y = _data(seed + i, n, effect)
        frames.append(
            pd.DataFrame(
                {
                    "experiment": "e",
                    "student_id": [f"{region}-{j}" for j in range(n)],
                    "region": region,
                    "variant": np.where(t == 1, "treatment", "control"),
                    "n_variants": 1,
                    "n_exposures": 1,
                    "n_enrolled": y.astype(int),
                    "n_completed": (y // 2).astype(int),
                    "enrolled": y > 0,
                    "completed": y > 1,
                    "pre_enrolments": x[:, 0].astype(int),
                    "pre_completions": x[:, 1].astype(int),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_analyse_adjusts_every_region_then_pools_them() -> None:
    """Per region the adjusted lift is that region's OLS coefficient; pooled is their MH-weighted mean."""
    students = _students(3, {"gimpo": 800, "taebaek": 250}, effect=0.15)
    a = analyse(students, {"control": 0.5, "treatment": 0.5}, covariates=COVARIATES)
    rows = {c.region: c for c in a.comparisons if c.metric == "enrolments_per_student"}
    weights, lifts = {}, {}
    for region in ("gimpo", "taebaek"):
        g = students[students["region"] == region]
        t = (g["variant"] == "treatment").to_numpy(dtype=float)
        fit = sm.OLS(
            g["n_enrolled"].to_numpy(dtype=float), sm.add_constant(np.column_stack([t, g[list(COVARIATES)]]))
        ).fit()
        adjusted = rows[region].adjusted
        assert adjusted is not None and adjusted.abs_lift == pytest.approx(fit.params[1], rel=1e-9)
        assert rows[region].estimate.test == "welch"  # the plain estimate stays beside it
        lifts[region] = fit.params[1]
        weights[region] = t.sum() * (1 - t).sum() / len(t)
    pooled = rows[POOLED].adjusted
    assert pooled is not None and pooled.test == "cuped-stratified-z"
    expected = sum(weights[r] * lifts[r] for r in lifts) / sum(weights.values())
    assert pooled.abs_lift == pytest.approx(expected, rel=1e-9)
    assert pooled.extra["variance_reduction"] > 0.2
    assert rows[POOLED].p_adjusted == pooled.p_value  # the decision rests on the adjusted test
    ratio = next(c for c in a.comparisons if c.metric == "completion_per_enrolment")
    assert ratio.adjusted is None  # a ratio of sums is not adjusted


def test_pre_activity_counts_only_the_weeks_before_the_first_exposure() -> None:
    first = pd.Timestamp("2026-03-01", tz="UTC")
    students = pd.DataFrame({"student_id": ["a", "b"], "first_shown_at": [first, first]})
    day = pd.Timedelta(days=1)
    events = pd.DataFrame(
        {
            "event_id": ["1", "2", "2", "3", "4", "5", "6"],
            "student_id": ["a", "a", "a", "a", "a", "b", "z"],
            "type": ["enrol", "enrol", "enrol", "complete", "enrol", "progress", "enrol"],
            "occurred_at": [first - 2 * day, first - 3 * day, first - 3 * day, first - day, first - 40 * day,
                            first - day, first - day],
        }
    )  # fmt: skip
    out = add_pre_activity(students, events, days=28)
    assert out["pre_enrolments"].tolist() == [2, 0]  # the duplicate once, the 40-day-old one not
    assert out["pre_completions"].tolist() == [1, 0]
    late = events.assign(occurred_at=first + day)  # at or after the first exposure: not pre-period
    assert add_pre_activity(students, late)["pre_enrolments"].tolist() == [0, 0]


def test_pre_activity_from_several_tables_counts_an_event_given_twice_once() -> None:
    """The dataset's history and the experiment's export, given as two tables (pandas or Arrow, ids
    dictionary-encoded as a dataset holds them): an event in both counts once, as in one table."""
    from training.ab.columns import as_table

    first = pd.Timestamp("2026-03-01", tz="UTC")
    day = pd.Timedelta(days=1)
    students = pd.DataFrame(
        {"student_id": ["a", "b", "c"], "first_shown_at": [first, first + 5 * day, first]}
    )
    history = pd.DataFrame(
        {
            "event_id": ["h1", "h2", "x"],
            "student_id": ["a", "b", "c"],
            "type": ["enrol", "complete", "enrol"],
            "occurred_at": [first - day, first, first - 2 * day],
        }
    )
    export = pd.DataFrame(
        {
            "event_id": ["x", "e1", "e2"],
            "student_id": ["c", "b", "a"],
            "type": ["enrol", "enrol", "enrol"],
            "occurred_at": [first - 2 * day, first + day, first + day],
        }
    )
    coded = as_table(history)
    coded = coded.set_column(1, "student_id", coded.column("student_id").dictionary_encode())
    one = add_pre_activity(students, pd.concat([history, export], ignore_index=True))
    for given in ([history, export], [coded, as_table(export)], [coded, export]):
        out = add_pre_activity(students, given)
        pd.testing.assert_frame_equal(out, one)
    assert one["pre_enrolments"].tolist() == [1, 1, 1] and one["pre_completions"].tolist() == [0, 1, 0]


def test_sequential_interval_covers_the_truth_at_every_look() -> None:
    """Coverage on simulated experiments: 14 daily looks, the interval holds the true lift at all of them.

    Also the null share ever significant stays under alpha, while the fixed-horizon interval read daily
    (stopping at the first significant day) exceeds alpha: the inflation the sequential interval avoids.
    """
    rng = np.random.default_rng(7)
    runs, days, per_day, alpha = 2000, 14, 60, 0.05
    z = 1.959963984540054
    for true in (0.0, 0.3):
        a = rng.poisson(1.5, (runs, days, per_day)).astype(float)
        b = rng.poisson(1.5, (runs, days, per_day)).astype(float) + rng.normal(
            true, 1.0, (runs, days, per_day)
        )
        n = per_day * np.arange(1, days + 1)
        sa, sb = a.sum(axis=2).cumsum(axis=1), b.sum(axis=2).cumsum(axis=1)
        qa, qb = (a**2).sum(axis=2).cumsum(axis=1), (b**2).sum(axis=2).cumsum(axis=1)
        va = (qa - sa**2 / n) / (n - 1) / n
        vb = (qb - sb**2 / n) / (n - 1) / n
        diff, se = sb / n - sa / n, np.sqrt(va + vb)
        factor = np.array([sequential_halfwidth_factor(2 * k, alpha, tuning=2 * per_day * days) for k in n])
        missed_seq = (np.abs(diff - true) > factor * se).any(axis=1).mean()
        missed_fixed = (np.abs(diff - true) > z * se).any(axis=1).mean()
        assert missed_seq <= alpha + 0.01, (true, missed_seq)
        assert missed_fixed > alpha + 0.05, (true, missed_fixed)  # peeking at a fixed-horizon CI inflates
        assert (factor > z).all()


def test_sequential_p_value_agrees_with_its_interval() -> None:
    for est, se, n in ((0.3, 0.1, 500), (0.2, 0.1, 500), (-0.5, 0.2, 100), (0.0, 0.1, 1000)):
        (lo, hi), p = sequential_interval(est, se, n)
        assert (p < 0.05) == (lo > 0 or hi < 0)
        assert math.isclose(est, (lo + hi) / 2)
    assert sequential_interval(math.nan, 0.1, 10)[1] != sequential_interval(math.nan, 0.1, 10)[1]  # NaN
    assert metric("enrolments_per_student").kind == "mean"


def test_an_empty_arm_is_not_an_error() -> None:
    """Regression: a region (or an early daily look) where one variant has no student yet made CUPED
    raise ``cannot reshape array of size 0`` and the whole report fail; it has nothing to adjust."""
    from training.ab.stats import compare_adjusted

    x_c = np.asarray([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    a_t, a_c, theta = cuped([], np.zeros((0, 2)), [1.0, 2.0, 3.0], x_c)
    assert a_t.size == 0 and list(a_c) == [1.0, 2.0, 3.0] and list(theta) == [0.0, 0.0]
    est = compare_adjusted(np.zeros(0), np.zeros((0, 2)), [1.0, 2.0, 3.0], x_c)
    assert np.isnan(est.abs_lift) and np.isnan(est.p_value)  # no treatment student: the data cannot say
