"""Daily looks at a running experiment: the primary metric as a report produced at the end of each day had it.

An analyst opens the report every day. Each look re-analyses the students first exposed before the
look's cut (`training.ab.attribution.as_of`), with the same covariates (fixed before each student's first
exposure, so the same at every look) and the same statistics: the fixed-horizon interval, valid only
when read once at a planned end, and the always-valid sequential interval (`training.ab.stats`, normal
mixture SPRT), valid however often it is read. The report draws both over time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd

from training.ab.attribution import Attribution, as_of
from training.ab.stats import PRIMARY_METRIC, analyse, metric

#: Columns of `daily_looks`.
LOOK_COLUMNS = (
    "day", "at", "region", "students", "lift", "ci_low", "ci_high", "seq_low", "seq_high", "p_value",
    "sequential_p",
)  # fmt: skip


def daily_looks(
    attribution: Attribution,
    students: pd.DataFrame,
    shares: Mapping[str, float],
    regions: Sequence[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    covariates: Sequence[str] = (),
    alpha: float = 0.05,
    metric_name: str = PRIMARY_METRIC,
) -> pd.DataFrame:
    """The metric's lift at the end of each day from ``start`` to ``end``, per region and pooled.

    Args:
        attribution: the attribution of the whole period (one experiment's exposures).
        students: the experiment's rows of ``attribution.students`` (labelled as there) with their
            ``covariates`` columns.
        shares: variant weights (first = control; the first treatment is read).
        regions: the regions analysed.
        start: the first day's start (UTC); looks at ``start + 1 day``, ``+ 2 days``, ... up to ``end``.
        end: the last look (the experiment's end or the last exposure).
        covariates: CUPED covariate columns of ``students`` (empty: unadjusted).
        alpha: significance level.
        metric_name: the metric read.

    Returns:
        `LOOK_COLUMNS` rows: day number (1 = after the first day), the cut, region or ``pooled``, students,
        the decision's lift, its fixed-horizon interval, its always-valid interval and both p-values.
    """
    spec = metric(metric_name)
    experiment = str(students["experiment"].iloc[0]) if len(students) else None
    pre = students[list(covariates)] if covariates else None  # joined by row label: one per student
    rows: list[dict[str, object]] = []
    days = max(1, math.ceil((end - start).total_seconds() / 86400.0))
    for day in range(1, days + 1):
        cut = start + pd.Timedelta(days=day)
        looked = as_of(attribution, min(cut, end + pd.Timedelta(microseconds=1)))
        looked = looked.loc[looked["experiment"] == experiment]
        if pre is not None:
            looked = looked.join(pre)
            looked[list(covariates)] = looked[list(covariates)].fillna(0)
        arms = looked["variant"].isin(list(shares)) & (looked["n_variants"] == 1)
        if looked.loc[arms, "variant"].nunique() < 2:
            continue
        analysis = analyse(
            looked, shares, alpha=alpha, metrics=[spec], regions=list(regions), covariates=covariates
        )
        for c in analysis.comparisons:
            est = c.decision
            rows.append(
                {
                    "day": day, "at": cut, "region": c.region,
                    "students": c.control.students + c.treatment.students,
                    "lift": est.abs_lift, "ci_low": est.abs_ci[0], "ci_high": est.abs_ci[1],
                    "seq_low": c.sequential_ci[0], "seq_high": c.sequential_ci[1],
                    "p_value": c.p_adjusted, "sequential_p": c.sequential_p,
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=list(LOOK_COLUMNS))
