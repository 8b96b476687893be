"""Equity of an A/B result: a planted group effect is found, and only there."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.ab.covariates import COVARIATES
from training.ab.equity import group_lifts

GROUPS = ("basic_livelihood", "near_poverty", "single_parent", "general")


def _students(seed: int, lift: dict[str, float], n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(GROUPS, n)
    region = rng.choice(["gimpo", "taebaek"], n, p=[0.75, 0.25])
    treated = rng.random(n) < 0.5
    pre = rng.poisson(2.0, n)
    mean = np.exp(0.1 + 0.2 * pre) + treated * np.array([lift[g] for g in group])
    y = rng.poisson(mean)
    return pd.DataFrame(
        {
            "experiment": "e", "student_id": [f"s{i}" for i in range(n)], "region": region,
            "variant": np.where(treated, "treatment", "control"), "n_variants": 1, "n_exposures": 1,
            "n_enrolled": y, "n_completed": y // 2, "enrolled": y > 0, "completed": y > 1,
            "pre_enrolments": pre, "pre_completions": pre // 2,
            "support_category": np.where(group == "general", None, group),
        }
    )  # fmt: skip


def test_a_group_the_variant_helps_less_is_flagged() -> None:
    """Planted: +0.6 enrolments per student everywhere but basic-livelihood recipients (+0)."""
    lift = dict.fromkeys(GROUPS, 0.6) | {"basic_livelihood": 0.0}
    students = _students(1, lift)
    shares = {"control": 0.5, "treatment": 0.5}
    rows = {r.group: r for r in group_lifts(students, shares, "support_category", covariates=COVARIATES)}
    assert set(rows) == {"basic_livelihood", "near_poverty", "single_parent", "unknown"}
    assert rows["basic_livelihood"].helps_less
    assert rows["basic_livelihood"].gap < -0.3 and rows["basic_livelihood"].gap_ci[1] < 0
    assert rows["basic_livelihood"].ci[0] < 0 < rows["basic_livelihood"].ci[1]  # no effect there
    for g in ("near_poverty", "single_parent", "unknown"):
        assert not rows[g].helps_less and rows[g].ci[0] > 0, rows[g]


def test_no_group_is_flagged_when_the_lift_is_equal() -> None:
    flagged = 0
    for seed in range(10):
        students = _students(100 + seed, dict.fromkeys(GROUPS, 0.3), n=1500)
        rows = group_lifts(students, {"control": 0.5, "treatment": 0.5}, "support_category")
        flagged += any(r.helps_less for r in rows)
    assert flagged <= 2  # Holm at 5% across groups: rarely, by chance
