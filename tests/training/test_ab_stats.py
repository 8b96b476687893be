"""A/B statistics against known answers: statsmodels/SciPy on the same counts and textbook formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats import proportion as smp
from statsmodels.stats.contingency_tables import StratifiedTable
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from training.ab import stats
from training.ab.errors import AnalysisInputError

SHARES = {"control": 0.5, "challenger": 0.5}


# ---------------------------------------------------------------- two-arm comparisons


@pytest.mark.parametrize(
    ("c_t", "n_t", "c_c", "n_c"), [(60, 200, 40, 200), (1200, 5000, 1100, 5000), (30, 90, 45, 110)]
)
def test_proportions_match_statsmodels_and_textbook(c_t: int, n_t: int, c_c: int, n_c: int) -> None:
    e = stats.compare_proportions(c_t, n_t, c_c, n_c)
    assert e.test == "z"
    # p-value: pooled z-test == score test of the difference without correction == Pearson chi-square
    assert e.p_value == pytest.approx(proportions_ztest([c_t, c_c], [n_t, n_c])[1], rel=1e-12)
    assert e.p_value == pytest.approx(
        smp.test_proportions_2indep(
            c_t, n_t, c_c, n_c, method="score", compare="diff", correction=False
        ).pvalue,
        rel=1e-9,
    )
    table = [[c_t, n_t - c_t], [c_c, n_c - c_c]]
    assert e.p_value == pytest.approx(sps.chi2_contingency(table, correction=False)[1], rel=1e-9)
    # Newcombe's hybrid score interval from two Wilson intervals
    p1, p2 = c_t / n_t, c_c / n_c
    l1, u1 = proportion_confint(c_t, n_t, method="wilson")
    l2, u2 = proportion_confint(c_c, n_c, method="wilson")
    d = p1 - p2
    assert e.abs_lift == pytest.approx(d)
    assert e.abs_ci[0] == pytest.approx(d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    assert e.abs_ci[1] == pytest.approx(d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    assert e.rel_lift == pytest.approx(p1 / p2 - 1)
    assert e.rel_ci[0] < e.rel_lift < e.rel_ci[1]


def test_small_counts_use_fisher() -> None:
    e = stats.compare_proportions(4, 20, 0, 20)
    assert e.test == "fisher"
    assert e.p_value == pytest.approx(sps.fisher_exact([[4, 16], [0, 20]])[1])
    assert math.isnan(e.rel_lift)  # no control successes: no finite relative lift


def test_degenerate_proportions_do_not_warn() -> None:
    assert stats.compare_proportions(0, 50, 0, 50).p_value == 1.0
    assert stats.compare_proportions(50, 50, 50, 50).p_value == 1.0
    e = stats.compare_proportions(3, 10, 0, 0)
    assert e.test == "insufficient data" and math.isnan(e.p_value)


def test_means_match_welch() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.poisson(1.3, 400), rng.poisson(1.0, 350)
    e = stats.compare_means(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert e.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval()
    assert e.abs_ci == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert e.rel_lift == pytest.approx(a.mean() / b.mean() - 1)
    assert stats.compare_means([1, 1], [1, 1]).p_value == 1.0
    assert stats.compare_means([1], [1, 2]).test == "insufficient data"


def test_ratio_of_sums_reduces_to_a_mean_when_denominators_are_one() -> None:
    y = np.array([0, 1, 1, 0, 1, 1, 1, 0], dtype=float)
    r, v = stats.ratio_of_sums(y, np.ones_like(y))
    assert r == pytest.approx(y.mean())
    assert v == pytest.approx(y.var(ddof=1) / len(y))


def test_ratio_of_sums_delta_variance_matches_bootstrap() -> None:
    rng = np.random.default_rng(7)
    den = rng.poisson(2.0, 3000) + 1
    num = rng.binomial(den, 0.4)
    r, v = stats.ratio_of_sums(num, den)
    idx = rng.integers(0, len(den), (400, len(den)))
    boot = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    assert r == pytest.approx(0.4, abs=0.02)
    assert math.sqrt(v) == pytest.approx(boot.std(ddof=1), rel=0.15)


# ---------------------------------------------------------------- pooled


TABLES = [(60, 200, 40, 200), (10, 50, 5, 50), (300, 1000, 280, 1000)]


def test_cmh_matches_statsmodels_and_the_textbook_statistic() -> None:
    out = stats.cmh(TABLES)
    st = StratifiedTable([np.array([[a, n - a], [c, m - c]]) for a, n, c, m in TABLES])
    assert out["p_value"] == pytest.approx(st.test_null_odds(correction=False).pvalue, rel=1e-12)
    assert out["odds_ratio"] == pytest.approx(st.oddsratio_pooled)
    assert out["homogeneity_p"] == pytest.approx(st.test_equal_odds().pvalue)
    # Mantel-Haenszel: sum(a - E[a])^2 / sum Var(a), Var = n1 n0 m1 m0 / (N^2 (N-1))
    num = den = 0.0
    for a, n1, c, n0 in TABLES:
        big_n, m1 = n1 + n0, a + c
        num += a - n1 * m1 / big_n
        den += n1 * n0 * m1 * (big_n - m1) / (big_n**2 * (big_n - 1))
    assert out["p_value"] == pytest.approx(sps.chi2.sf(num**2 / den, 1), rel=1e-9)


def test_cmh_degenerate_strata() -> None:
    assert stats.cmh([(0, 10, 0, 10), (0, 5, 0, 5)])["p_value"] == 1.0
    out = stats.cmh([(0, 10, 0, 10), (30, 100, 20, 100)])  # a stratum with no events carries no information
    assert out["p_value"] == pytest.approx(stats.cmh([(30, 100, 20, 100)])["p_value"])
    assert math.isnan(stats.cmh([(1, 1, 0, 0)])["p_value"])


def _arm(variant: str, c: int, n: int) -> stats.Arm:
    p = c / n
    return stats.Arm(variant, n, n, p, p * (1 - p) / n, c, n)


def test_pooled_difference_is_mh_weighted_and_resists_simpson() -> None:
    # Simpson: treatment better in both strata, but it got mostly the low-baseline stratum
    pairs = [
        (_arm("t", 90, 100), _arm("c", 850, 1000)),  # high baseline: +5 pp
        (_arm("t", 250, 1000), _arm("c", 20, 100)),  # low baseline: +5 pp
    ]
    crude = (90 + 250) / 1100 - (850 + 20) / 1100
    assert crude < 0
    e = stats.pooled_difference(pairs)
    assert e.abs_lift == pytest.approx(0.05)
    w = [100 * 1000 / 1100, 1000 * 100 / 1100]
    var = sum(wk**2 * (t.variance + c.variance) for wk, (t, c) in zip(w, pairs, strict=True)) / sum(w) ** 2
    z = sps.norm.ppf(0.975)
    assert e.abs_ci == pytest.approx((0.05 - z * math.sqrt(var), 0.05 + z * math.sqrt(var)))


def test_pooled_difference_of_one_stratum_is_the_wald_difference() -> None:
    e = stats.pooled_difference([(_arm("t", 60, 200), _arm("c", 40, 200))])
    se = math.sqrt(0.3 * 0.7 / 200 + 0.2 * 0.8 / 200)
    assert e.abs_lift == pytest.approx(0.1)
    assert e.p_value == pytest.approx(2 * sps.norm.sf(0.1 / se))


# ---------------------------------------------------------------- SRM


def test_srm_fires_on_55_45_of_10k_and_not_on_fair_splits() -> None:
    assert stats.srm_check({"control": 5500, "challenger": 4500}, SHARES).mismatch
    assert not stats.srm_check({"control": 5000, "challenger": 5000}, SHARES).mismatch
    assert not stats.srm_check({"control": 5080, "challenger": 4920}, SHARES).mismatch
    assert not stats.srm_check(
        {"control": 7000, "challenger": 3000}, {"control": 7, "challenger": 3}
    ).mismatch
    r = stats.srm_check({"control": 5500, "challenger": 4500}, SHARES)
    assert r.p_value == pytest.approx(sps.chisquare([5500, 4500], [5000, 5000]).pvalue)
    assert stats.srm_check({"control": 3, "challenger": 1}, SHARES).note.startswith("expected count < 5")
    assert not stats.srm_check({}, SHARES).mismatch


# ---------------------------------------------------------------- analyse


def _students(spec: dict[str, dict[str, tuple[int, int]]], experiment: str = "e") -> pd.DataFrame:
    """spec: region -> variant -> (students, enrolled); each enrolled student completes one of two."""
    rows = []
    for region, arms in spec.items():
        for variant, (n, k) in arms.items():
            for i in range(n):
                enrolled = i < k
                rows.append(
                    {
                        "experiment": experiment,
                        "student_id": f"{region}-{variant}-{i}",
                        "region": region,
                        "variant": variant,
                        "n_variants": 1,
                        "n_exposures": 2,
                        "n_enrolled": (1 + i % 3) if enrolled else 0,
                        "n_completed": (i % 2) if enrolled else 0,
                        "enrolled": enrolled,
                        "completed": enrolled and i % 2 == 1,
                    }
                )
    return pd.DataFrame(rows)


SPEC = {
    "seoul": {"control": (3000, 600), "challenger": (3000, 690)},
    "gimpo": {"control": (500, 100), "challenger": (500, 120)},
    "taebaek": {"control": (120, 24), "challenger": (130, 30)},
}


def test_analyse_per_region_matches_direct_calls_and_holm() -> None:
    a = stats.analyse(_students(SPEC), SHARES)
    rate = [c for c in a.comparisons if c.metric == "enrolment_rate"]
    assert [c.region for c in rate] == ["gimpo", "seoul", "taebaek", "pooled"]
    raw = []
    for c in rate[:3]:
        (n_c, k_c), (n_t, k_t) = SPEC[c.region]["control"], SPEC[c.region]["challenger"]
        assert (c.control.students, c.treatment.students) == (n_c, n_t)
        assert c.estimate.p_value == pytest.approx(proportions_ztest([k_t, k_c], [n_t, n_c])[1])
        raw.append(c.estimate.p_value)
    adjusted = multipletests(raw, method="holm")[1]
    assert [c.p_adjusted for c in rate[:3]] == pytest.approx(list(adjusted))
    # learnrec's own Holm (statsmodels' collects garbage on every call) equals statsmodels' on any input
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 30):
        for p in (rng.uniform(0, 1, m), rng.uniform(0, 0.05, m), np.repeat(rng.uniform(0, 0.1), m)):
            assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-15)
    pooled = rate[3]
    tables = [
        (SPEC[r]["challenger"][1], SPEC[r]["challenger"][0], SPEC[r]["control"][1], SPEC[r]["control"][0])
        for r in ("gimpo", "seoul", "taebaek")
    ]
    assert pooled.estimate.test == "cmh"
    assert pooled.estimate.p_value == pytest.approx(stats.cmh(tables)["p_value"])
    assert pooled.control.students == 3620 and pooled.treatment.students == 3630
    # pooled arms carry the standardised rates, so the row reads consistently
    assert pooled.treatment.value - pooled.control.value == pytest.approx(pooled.estimate.abs_lift)
    assert not a.srm_regions
    json.dumps(a.to_dict(), allow_nan=False)  # JSON-clean


def test_analyse_metrics_by_kind() -> None:
    a = stats.analyse(_students(SPEC), SHARES)
    kinds = {c.metric: c.estimate.test for c in a.comparisons if c.region == "seoul"}
    assert kinds == {
        "enrolment_rate": "z",
        "completion_rate": "z",
        "enrolments_per_student": "welch",
        "completions_per_student": "welch",
        "completion_per_enrolment": "delta-z",
    }
    per_enrol = next(
        c for c in a.comparisons if c.metric == "completion_per_enrolment" and c.region == "seoul"
    )
    df = _students(SPEC)
    seoul_c = df[(df.region == "seoul") & (df.variant == "control")]
    assert per_enrol.control.value == pytest.approx(seoul_c.n_completed.sum() / seoul_c.n_enrolled.sum())


def test_analyse_flags_srm_and_excludes_mixed_students() -> None:
    spec = {
        "seoul": {"control": (5500, 1100), "challenger": (4500, 900)},
        "gimpo": {"control": (500, 90), "challenger": (500, 90)},
    }
    df = _students(spec)
    df.loc[df.index[:7], "n_variants"] = 2
    df.loc[df.index[7:9], "variant"] = "ghost"
    a = stats.analyse(df, SHARES)
    assert a.srm_regions == ["seoul", "pooled"]
    assert a.excluded == {"mixed_variant_students": 7, "unknown_variant_students": 2}


def test_analyse_region_without_traffic_is_reported_not_crashed() -> None:
    a = stats.analyse(_students({"seoul": SPEC["seoul"]}), SHARES, regions=["seoul", "taebaek"])
    taebaek = [c for c in a.comparisons if c.region == "taebaek"]
    assert taebaek and all(math.isnan(c.estimate.p_value) for c in taebaek)
    d = a.to_dict()
    json.dumps(d, allow_nan=False)
    srm = {s["region"]: s for s in d["srm"]}
    assert srm["taebaek"]["note"] == "no students" and not srm["taebaek"]["mismatch"]


def test_analyse_three_arms_compares_each_treatment_with_the_control() -> None:
    spec = {"seoul": {"control": (1000, 200), "a": (1000, 260), "b": (1000, 200)}}
    a = stats.analyse(_students(spec), {"control": 1, "a": 1, "b": 1})
    rate = {
        c.treatment.variant: c for c in a.comparisons if c.metric == "enrolment_rate" and c.region == "seoul"
    }
    assert set(rate) == {"a", "b"}
    assert all(c.control.variant == "control" for c in rate.values())
    assert rate["a"].estimate.abs_lift == pytest.approx(0.06) and rate[
        "b"
    ].estimate.abs_lift == pytest.approx(0)


def test_analyse_refuses_bad_input() -> None:
    with pytest.raises(AnalysisInputError, match="at least one treatment"):
        stats.analyse(_students(SPEC), {"control": 1.0})
    df = pd.concat([_students(SPEC, "a"), _students(SPEC, "b")])
    with pytest.raises(AnalysisInputError, match="several experiments"):
        stats.analyse(df, SHARES)


def test_cumulative_rates() -> None:
    t = pd.Timestamp("2025-09-01", tz="UTC")
    df = pd.DataFrame(
        {
            "variant": ["a", "a", "b"],
            "first_shown_at": [t, t + pd.Timedelta(days=1), t],
            "first_enrolled_at": [t + pd.Timedelta(days=2), pd.NaT, t - pd.Timedelta(hours=1)],
        }
    ).astype({"first_shown_at": "datetime64[us, UTC]", "first_enrolled_at": "datetime64[us, UTC]"})
    out = stats.cumulative_rates(df)
    a = out[out.variant == "a"]
    assert a.exposed.tolist() == [1, 2, 2] and a.enrolled.tolist() == [0, 0, 1]
    b = out[out.variant == "b"]
    assert b.enrolled.tolist() == [1, 1, 1]  # a tied enrolment before the exposure counts from day one
