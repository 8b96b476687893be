"""Power planning against statsmodels directly, and the `learnrec ab power` command."""

from __future__ import annotations

import json
import math

import pytest
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize
from typer.testing import CliRunner

from training.ab import power
from training.cli import app


@pytest.mark.parametrize(("n_c", "n_t", "p0"), [(250, 250, 0.2), (17_500, 17_500, 0.2), (900, 300, 0.05)])
def test_mde_matches_statsmodels(n_c: int, n_t: int, p0: float) -> None:
    m = power.mde(n_c, n_t, p0, alpha=0.05, power=0.8)
    h = proportion_effectsize(p0 + m, p0)
    expected_h = NormalIndPower().solve_power(None, nobs1=n_t, alpha=0.05, power=0.8, ratio=n_c / n_t)
    assert h == pytest.approx(expected_h, rel=1e-9)
    # and that effect has the requested power (up to the solver's tolerance)
    assert NormalIndPower().power(h, nobs1=n_t, alpha=0.05, ratio=n_c / n_t) == pytest.approx(0.8, abs=1e-4)


def test_mde_of_a_mean_matches_statsmodels() -> None:
    """Two-sided z power: a difference of mde_mean(se) has 80% power when its standard error is se."""
    se = 0.1
    d = power.mde_mean(se, alpha=0.05, power=0.8)
    assert d == pytest.approx(2.8016 * se, rel=1e-4)
    # statsmodels: noncentrality = effect size * sqrt(nobs1 / 2) with equal arms; make it d / se
    assert NormalIndPower().power(effect_size=d / se * math.sqrt(2), nobs1=1, alpha=0.05) == pytest.approx(
        0.8, abs=1e-3
    )
    assert math.isnan(power.mde_mean(0.0)) and math.isnan(power.mde_mean(math.nan))


def test_required_sizes_match_statsmodels() -> None:
    n_c, n_t = power.required_sizes(0.2, 0.1, alpha=0.05, power=0.8)
    h = proportion_effectsize(0.22, 0.2)
    expected = NormalIndPower().solve_power(abs(h), nobs1=None, alpha=0.05, power=0.8, ratio=1.0)
    assert n_t == pytest.approx(expected) and n_c == pytest.approx(expected)
    n_c, n_t = power.required_sizes(0.2, 0.1, treatment_share=0.25)
    assert n_c == pytest.approx(3 * n_t)
    assert NormalIndPower().power(abs(h), nobs1=n_t, alpha=0.05, ratio=3.0) == pytest.approx(0.8, abs=1e-6)


def test_reach_and_weeks_are_inverse() -> None:
    assert power.reach(1000, 1, 0.5) == pytest.approx(500)
    assert power.reach(1000, 2, 0.5, traffic=0.5) == pytest.approx(375)
    weeks = power.weeks_to_reach(600, 1000, 0.3)
    assert weeks is not None and power.reach(1000, weeks, 0.3) == pytest.approx(600)
    assert power.weeks_to_reach(1000, 1000, 0.3) is None


def test_plan_small_regions_detect_only_large_effects() -> None:
    rows = power.plan({"taebaek": 500, "seoul": 35_000}, 0.2, weeks=2, target_lift=0.1)
    by = {r.region: r for r in rows}
    assert list(by) == ["taebaek", "seoul", "pooled"]
    assert by["taebaek"].mde_abs > 5 * by["seoul"].mde_abs
    assert by["taebaek"].reachable is False and by["taebaek"].weeks_needed is None
    assert by["seoul"].reachable is True and by["seoul"].weeks_needed is not None
    n = power.reach(500, 2, 0.5) / 2
    assert by["taebaek"].n_control == pytest.approx(n)
    assert by["taebaek"].mde_abs == pytest.approx(power.mde(n, n, 0.2))
    assert by["pooled"].students == 35_500
    json.dumps([r.to_dict() for r in rows], allow_nan=False)


def test_plan_per_region_baselines_and_tiny_regions() -> None:
    rows = power.plan({"a": 2, "b": 10_000}, {"a": 0.3, "b": 0.1}, weeks=1)
    assert math.isnan(rows[0].mde_abs)  # one student per arm: nothing is detectable
    assert rows[1].baseline == 0.1
    assert rows[2].baseline == pytest.approx((0.3 * 2 + 0.1 * 10_000) / 10_002)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"regions": {}}, "at least one region"),
        ({"regions": {"a": 0}}, "student count must be positive"),
        ({"baseline": 1.2}, "baseline of 'a'"),
        ({"alpha": 0}, "alpha must be in"),
        ({"target_lift": 0.0}, "non-zero relative change"),
        ({"target_lift": 5.0}, "baseline * (1 + target lift)"),
    ],
)
def test_plan_refuses_bad_inputs(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"regions": {"a": 100}, "baseline": 0.2, **kwargs}
    with pytest.raises(power.PowerInputError) as err:
        power.plan(**args)  # type: ignore[arg-type]
    assert needle in str(err.value)


runner = CliRunner()


def test_cli_power_table_and_note() -> None:
    res = runner.invoke(
        app,
        [
            *("ab", "power", "--region", "taebaek=500", "--region", "seoul=35000", "--baseline", "0.2"),
            *("--weeks", "2", "--target-lift", "0.1"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "taebaek (태백)" in res.output and "seoul (서울)" in res.output and "pooled" in res.output
    assert "never" in res.output
    assert "Small regions" in res.output
    assert "unreachable in 1: taebaek" in res.output


def test_cli_power_json_matches_plan() -> None:
    res = runner.invoke(
        app,
        ["ab", "power", "--region", "gimpo=3000", "--region-baseline", "gimpo=0.1", "--json", "--weeks", "3"],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    expected = power.plan({"gimpo": 3000}, {"gimpo": 0.1}, weeks=3)[0]
    assert rows[0]["mde_abs"] == pytest.approx(expected.mde_abs)


def test_cli_power_bad_arguments() -> None:
    res = runner.invoke(app, ["ab", "power", "--region", "taebaek:500"])
    assert res.exit_code == 2 and "NAME=VALUE" in res.output
    res = runner.invoke(app, ["ab", "power", "--region", "taebaek=500", "--region-baseline", "seoul=0.1"])
    assert res.exit_code == 2 and "['seoul'] have no --region" in res.output
    res = runner.invoke(app, ["ab", "power", "--region", "taebaek=500", "--power", "1.5"])
    assert res.exit_code == 1 and "power must be in" in res.output


def test_counts_are_planned_with_the_variance_reduction_of_past_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Counts: statsmodels' sample size for the standardised effect; CUPED's variance reduction cuts it by
    exactly (1 - VR); a past report supplies the mean, sd and reduction per region."""
    rows = power.plan_mean(
        {"gimpo": 1500, "taebaek": 500}, {"gimpo": 1.6, "taebaek": 1.6}, {"gimpo": 2.5, "taebaek": 2.5},
        {"gimpo": 0.25, "taebaek": 0.25}, weeks=2, target_lift=0.2,
    )  # fmt: skip
    gimpo, taebaek, pooled = rows
    assert pooled.region == "pooled" and pooled.students == 2000
    d = 0.2 * 1.6 / (2.5 * math.sqrt(1 - 0.25))  # Cohen's d on the CUPED-adjusted scale
    n_t = NormalIndPower().solve_power(effect_size=d, nobs1=None, alpha=0.05, power=0.8, ratio=1.0)
    assert gimpo.needed_treatment == pytest.approx(n_t, rel=1e-3)
    plain = power.plan_mean({"gimpo": 1500}, {"gimpo": 1.6}, {"gimpo": 2.5}, weeks=2, target_lift=0.2)[0]
    assert gimpo.needed_treatment == pytest.approx(plain.needed_treatment * 0.75)
    assert gimpo.mde_abs == pytest.approx(plain.mde_abs * math.sqrt(0.75))
    # Gimpo's 1,500 students are too few for +20% without CUPED, enough with it
    assert plain.days_needed is None and gimpo.days_needed is not None and gimpo.days_needed > 0
    assert taebaek.reachable is False and taebaek.days_needed is None  # 500 students cannot give enough
    report = {
        "comparisons": [
            {"metric": "enrolments_per_student", "region": "gimpo",
             "control": {"students": 400, "value": 1.5, "variance": 4.0 / 400},
             "adjusted": {"extra": {"variance_reduction": 0.3}}},
            {"metric": "enrolments_per_student", "region": "pooled", "control": {"students": 600}},
        ]
    }  # fmt: skip
    assert power.past_variation(report, "enrolments_per_student") == {"gimpo": (1.5, 2.0, 0.3)}
    with pytest.raises(power.PowerInputError, match="no per-region"):
        power.past_variation(report, "completions_per_student")
    path = tmp_path / "past.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    res = runner.invoke(
        app,
        [
            *("ab", "power", "--metric", "enrolments_per_student", "--region", "gimpo=1500"),
            *("--region", "taebaek=500", "--past", str(path), "--mean", "1.6", "--sd", "2.5"),
            *("--target-lift", "0.2", "--json"),
        ],
    )
    assert res.exit_code == 0, res.output
    got = {r["region"]: r for r in json.loads(res.output)}
    assert got["gimpo"]["variance_reduction"] == 0.3 and got["gimpo"]["sd"] == 2.0  # from the past report
    assert got["taebaek"]["variance_reduction"] == 0.0 and got["taebaek"]["sd"] == 2.5  # from the options
    assert got["gimpo"]["days_needed"] == pytest.approx(got["gimpo"]["weeks_needed"] * 7)
    res = runner.invoke(app, ["ab", "power", "--metric", "enrolments_per_student", "--region", "gimpo=1500"])
    assert res.exit_code == 2 and "--mean and --sd" in " ".join(res.output.split())
    res = runner.invoke(app, ["ab", "power", "--metric", "nope", "--region", "gimpo=1500"])
    assert res.exit_code == 2 and "choose one of" in res.output
