"""Equity of an A/B result: the lift per student group (support category, grade, ...) and who gains less.

Seoul Learn exists for students with the least support, so a variant that helps the others and leaves,
say, basic-livelihood recipients behind is not the same win. Per group (all regions together, stratified
by region like the pooled result), the lift of the primary metric with its interval, CUPED-adjusted when
the covariates are there; then, per group, the gap to the rest of the students
``lift_group - lift_rest`` with a z-test (the two are disjoint sets of students, so their variances add).
A group is flagged when its gap is negative and significant after Holm's adjustment across the groups:
the variant helps that group significantly less than the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from scipy import stats as sps

from training.ab.errors import AnalysisInputError
from training.ab.stats import POOLED, PRIMARY_METRIC, analyse, decision_se, holm, metric

#: Group label of students whose attribute is unknown.
UNKNOWN = "unknown"


@dataclass(frozen=True)
class GroupLift:
    """The lift of one group, and how it compares with the rest of the students."""

    attribute: str
    group: str
    students: int
    control_value: float
    treatment_value: float
    lift: float
    ci: tuple[float, float]
    p_value: float
    gap: float  # lift of the group - lift of the other students
    gap_ci: tuple[float, float]
    gap_p: float  # Holm-adjusted across the attribute's groups
    helps_less: bool  # gap < 0 and gap_p < alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def _pooled(
    students: pd.DataFrame, shares: Mapping[str, float], name: str, alpha: float, covs: Sequence[str]
) -> Any:
    a = analyse(students, shares, alpha=alpha, metrics=[metric(name)], covariates=covs)
    return next(c for c in a.comparisons if c.region == POOLED)


def group_lifts(
    students: pd.DataFrame,
    shares: Mapping[str, float],
    attribute: str,
    metric_name: str = PRIMARY_METRIC,
    alpha: float = 0.05,
    covariates: Sequence[str] = (),
    min_students: int = 20,
) -> list[GroupLift]:
    """Per value of ``attribute``: the treatment's lift, and its gap to the other students.

    Args:
        students: per-student outcomes of one experiment, with an ``attribute`` column (missing = unknown).
        shares: variant weights (first = control; the first treatment is compared).
        attribute: the grouping column (``support_category``, ``grade``, ...).
        metric_name: the metric (default the primary one).
        alpha: significance level.
        covariates: CUPED covariates (`training.ab.covariates.COVARIATES`), when present.
        min_students: groups smaller than this are left out (no usable interval).

    Returns:
        One row per group, largest first.

    Raises:
        AnalysisInputError: ``attribute`` is not a column of ``students``.
    """
    if attribute not in students.columns:
        raise AnalysisInputError(f"students have no {attribute!r} column to group by")
    label = students[attribute].astype("object").where(students[attribute].notna(), UNKNOWN).astype(str)
    groups = [g for g, n in label.value_counts().items() if n >= min_students]
    z = float(sps.norm.ppf(1 - alpha / 2))
    rows: list[dict[str, Any]] = []
    for g in groups:
        inside = _pooled(students.loc[label == g], shares, metric_name, alpha, covariates)
        rest = (
            _pooled(students.loc[label != g], shares, metric_name, alpha, covariates)
            if (label != g).any()
            else None
        )
        est = inside.decision
        gap, gap_ci, gap_p = math.nan, (math.nan, math.nan), math.nan
        if rest is not None:
            se = math.hypot(decision_se(inside), decision_se(rest))
            gap = est.abs_lift - rest.decision.abs_lift
            if math.isfinite(se) and se > 0 and math.isfinite(gap):
                gap_ci, gap_p = (gap - z * se, gap + z * se), float(2 * sps.norm.sf(abs(gap) / se))
        rows.append(
            {
                "attribute": attribute, "group": str(g),
                "students": int(inside.control.students + inside.treatment.students),
                "control_value": float(est.extra.get("control_value", inside.control.value)),
                "treatment_value": float(est.extra.get("treatment_value", inside.treatment.value)),
                "lift": float(est.abs_lift), "ci": tuple(map(float, est.abs_ci)),
                "p_value": float(est.p_value),
                "gap": gap, "gap_ci": gap_ci, "gap_p": gap_p,
            }
        )  # fmt: skip
    finite = [i for i, r in enumerate(rows) if math.isfinite(r["gap_p"])]
    if finite:
        adjusted = holm([rows[i]["gap_p"] for i in finite])
        for i, p in zip(finite, adjusted, strict=True):
            rows[i]["gap_p"] = float(p)
    return [
        GroupLift(**r, helps_less=bool(math.isfinite(r["gap_p"]) and r["gap_p"] < alpha and r["gap"] < 0))
        for r in rows
    ]
