"""Analysis of a run and repeated in-process runs (false-positive rate and power)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from training.simulate.config import DAY, Progress, SimConfig, default_start
from training.simulate.engine import simulate
from training.simulate.in_process import InProcessBackend
from training.simulate.population import Population

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from features.experiments import ExperimentConfig
    from models.ranking import RankingModel
    from training.ab.stats import Analysis


def run_students(
    exposures: pa.Table | pd.DataFrame,
    events: pa.Table | pd.DataFrame,
    experiment: ExperimentConfig,
    window: timedelta = timedelta(days=7),
    history: pa.Table | pd.DataFrame | None = None,
    pre_days: float | None = None,
) -> pd.DataFrame:
    """Per-student outcomes of one experiment, with their pre-experiment activity (CUPED covariates).

    Args:
        exposures: exposures (`training.ab.exposures.EXPOSURES` columns).
        events: events of the run (`features.schemas.EVENTS` columns).
        experiment: the experiment.
        window: attribution window.
        history: events before the run (the dataset's), counted with ``events`` for the covariates.
        pre_days: look-back of the covariates (default `training.ab.covariates.PRE_DAYS`).

    Returns:
        `training.ab.attribution.STUDENT_COLUMNS` + `training.ab.covariates.COVARIATES`.
    """
    from training.ab.attribution import attribute

    attribution = attribute(exposures, events, window=window)
    return with_covariates(attribution.students, events, experiment, history, pre_days)


def with_covariates(
    students: pd.DataFrame,
    events: pa.Table | pd.DataFrame,
    experiment: ExperimentConfig,
    history: pa.Table | pd.DataFrame | None = None,
    pre_days: float | None = None,
) -> pd.DataFrame:
    """The experiment's students with `training.ab.covariates.COVARIATES` from the history and the events."""
    from training.ab.covariates import PRE_DAYS, add_pre_activity

    students = students[students["experiment"] == experiment.key]
    every = [events] if history is None else [history, events]
    return add_pre_activity(students, every, PRE_DAYS if pre_days is None else pre_days)


def analyse_run(
    exposures: pa.Table | pd.DataFrame,
    events: pa.Table | pd.DataFrame,
    experiment: ExperimentConfig,
    alpha: float = 0.05,
    metrics: Sequence[str] | None = None,
    window: timedelta = timedelta(days=7),
    history: pa.Table | pd.DataFrame | None = None,
    cuped: bool = True,
) -> Analysis:
    """Attribute and analyse one experiment, as `learnrec ab report` does.

    Args:
        exposures: exposures (`training.ab.exposures.EXPOSURES` columns).
        events: events (`features.schemas.EVENTS` columns).
        experiment: the experiment (variants, weights; the first is the control).
        alpha: significance level.
        metrics: metric names (default all of `training.ab.stats.METRICS`).
        window: attribution window.
        history: events before the run, for the pre-experiment covariates.
        cuped: adjust by the pre-experiment covariates (`Comparison.adjusted`).

    Returns:
        The analysis.
    """
    from training.ab.covariates import COVARIATES
    from training.ab.stats import METRICS, analyse

    specs = METRICS if metrics is None else tuple(m for m in METRICS if m.name in set(metrics))
    students = run_students(exposures, events, experiment, window, history)
    return analyse(
        students, experiment.shares(), alpha=alpha, metrics=specs, regions=list(experiment.regions),
        covariates=COVARIATES if cuped else (),
    )  # fmt: skip


def experiment_for(
    key: str,
    regions: Sequence[str],
    shares: Mapping[str, float],
    start: datetime,
    end: datetime,
    salt: str | None = None,
) -> ExperimentConfig:
    """An experiment whose variant ``v`` is served by the model registered under reference ``v``.

    Args:
        key: experiment key.
        regions: its regions.
        shares: variant name -> weight; the first is the control.
        start: window start (UTC).
        end: window end (UTC, exclusive).
        salt: hash salt (default the key).

    Returns:
        The validated config.
    """
    from features.experiments import ExperimentConfig

    return ExperimentConfig.model_validate(
        {
            "key": key,
            "salt": salt or key,
            "regions": list(regions),
            "start": start,
            "end": end,
            "variants": [{"name": v, "weight": w, "model": v} for v, w in shares.items()],
        }
    )


#: Columns of `RepeatSummary.rows`.
REPEAT_COLUMNS = (
    "rep", "seed", "metric", "region", "control_students", "treatment_students", "control_value",
    "treatment_value", "abs_lift", "p_value", "p_adjusted", "significant", "srm_mismatch", "lift_se",
    "method", "variance_reduction", "sequential_p", "sequential_significant",
)  # fmt: skip


@dataclass
class RepeatSummary:
    """Outcomes of repeated simulations of one experiment (one row per repetition, metric and region).

    Attributes:
        rows: dicts with `REPEAT_COLUMNS`.
        variants: variant -> weight (first = control).
        alpha: significance level.
        repetitions: repetitions run.
        config: the base configuration (repetition r uses seed s = seed + r and salt ``<key>.s<s>``).
        seconds: wall time.
    """

    rows: list[dict[str, Any]]
    variants: dict[str, float]
    alpha: float
    repetitions: int
    config: SimConfig
    seconds: float = 0.0
    looks: list[dict[str, Any]] = field(default_factory=list)

    def rates(self) -> list[dict[str, Any]]:
        """Per (metric, region): share of repetitions significant, significant up / down, mean lift and p.

        Regions with no test in a repetition (too few students) count in ``tested`` only when they had one.
        ``mde`` is the smallest absolute lift the sample detects with 80% power, at alpha / regions for a
        region (Holm's first step, the strictest) and at alpha pooled: the sample "allows" the comparison
        when the lift exceeds it. For rates from the mean arm sizes and control rate
        (`training.ab.power.mde`); for means from the mean standard error of the difference
        (`training.ab.power.mde_mean`).
        """
        from training.ab.power import mde, mde_mean

        kinds = {"enrolment_rate", "completion_rate"}
        regions = len({r["region"] for r in self.rows} - {"pooled"})
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["metric"], row["region"], row.get("method", "plain")), []).append(row)
        out: list[dict[str, Any]] = []
        for (metric, region, method), rows in groups.items():
            tested = [r for r in rows if math.isfinite(r["p_adjusted"])]
            n = len(tested)
            up = sum(1 for r in tested if r["significant"] and r["abs_lift"] > 0)
            down = sum(1 for r in tested if r["significant"] and r["abs_lift"] < 0)
            lifts = [r["abs_lift"] for r in tested if math.isfinite(r["abs_lift"])]
            out.append(
                {
                    "metric": metric,
                    "region": region,
                    "method": method,
                    "tested": n,
                    "variance_reduction": float(np.nanmean([r.get("variance_reduction", 0.0) for r in rows])),
                    "significant": (up + down) / n if n else math.nan,
                    "significant_up": up / n if n else math.nan,
                    "significant_down": down / n if n else math.nan,
                    "mean_abs_lift": float(np.mean(lifts)) if lifts else math.nan,
                    "mean_p": float(np.mean([r["p_adjusted"] for r in tested])) if n else math.nan,
                    "mean_control_students": float(np.mean([r["control_students"] for r in rows])),
                    "mean_treatment_students": float(np.mean([r["treatment_students"] for r in rows])),
                    "mde": math.nan,
                }
            )
            n_c, n_t = out[-1]["mean_control_students"], out[-1]["mean_treatment_students"]
            base = float(np.mean([r["control_value"] for r in rows]))
            level = self.alpha if region == "pooled" else self.alpha / max(regions, 1)
            if metric in kinds and 0 < base < 1:
                out[-1]["mde"] = mde(n_c, n_t, base, alpha=level)
            elif metric not in kinds:
                ses = [r.get("lift_se", math.nan) for r in rows]
                ses = [x for x in ses if math.isfinite(x)]
                out[-1]["mde"] = mde_mean(float(np.mean(ses)), alpha=level) if ses else math.nan
        return out

    def p_values(self, metric: str, region: str, method: str = "plain") -> list[float]:
        """The p-values of one metric and region over the repetitions (adjusted for regions; raw pooled)."""
        return [
            r["p_adjusted"]
            for r in self.rows
            if r["metric"] == metric
            and r["region"] == region
            and r.get("method", "plain") == method
            and math.isfinite(r["p_adjusted"])
        ]

    def look_rates(self) -> list[dict[str, Any]]:
        """Daily looks: per (method, region), the share of runs EVER significant over the days.

        ``fixed_ever``: the fixed-horizon test read every day and stopped at the first significant day;
        ``sequential_ever``: the always-valid interval read the same way; ``fixed_last``: the fixed-horizon
        test read once, on the last day; ``first_day``: mean first significant day (sequential) among the
        runs that ever were.
        """
        groups: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
        for row in self.looks:
            groups.setdefault((row["method"], row["region"]), {}).setdefault(row["rep"], []).append(row)
        out = []
        for (method, region), reps in groups.items():
            fixed = [any(r["significant"] for r in rows) for rows in reps.values()]
            seq = [any(r["sequential_significant"] for r in rows) for rows in reps.values()]
            last = [max(rows, key=lambda r: r["day"])["significant"] for rows in reps.values()]
            firsts = [
                min(r["day"] for r in rows if r["sequential_significant"])
                for rows in reps.values()
                if any(r["sequential_significant"] for r in rows)
            ]
            ups = [
                any(r["sequential_significant"] and r["abs_lift"] > 0 for r in rows) for rows in reps.values()
            ]
            out.append(
                {
                    "method": method,
                    "region": region,
                    "runs": len(reps),
                    "fixed_ever": float(np.mean(fixed)),
                    "sequential_ever": float(np.mean(seq)),
                    "sequential_ever_up": float(np.mean(ups)),
                    "fixed_last": float(np.mean(last)),
                    "first_day": float(np.mean(firsts)) if firsts else math.nan,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""

        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [clean(v) for v in x]
            return x

        cfg = self.config
        out: dict[str, Any] = clean(
            {
                "variants": self.variants,
                "alpha": self.alpha,
                "repetitions": self.repetitions,
                "config": {
                    "regions": list(cfg.regions),
                    "days": cfg.days,
                    "students_per_day": cfg.students_per_day,
                    "k": cfg.k,
                    "seed": cfg.seed,
                    "start": cfg.start.isoformat() if cfg.start else None,
                    "visiting": asdict(cfg.visiting),
                },
                "seconds": round(self.seconds, 2),
                "rates": self.rates(),
                "look_rates": self.look_rates(),
                "rows": self.rows,
                "looks": self.looks,
            }
        )
        return out


def repeat_experiment(
    population: Population,
    models: Mapping[str, RankingModel],
    shares: Mapping[str, float],
    config: SimConfig,
    repetitions: int,
    *,
    alpha: float = 0.05,
    key: str = "simulated",
    metrics: Sequence[str] = ("enrolment_rate", "completion_rate"),
    looks: bool = False,
    progress: Progress | None = None,
) -> RepeatSummary:
    """Run the in-process simulation `repetitions` times and analyse each run's experiment.

    Repetition r uses seed ``s = config.seed + r`` (other visitors, times and reactions) and salt
    ``<key>.s<s>`` (another random split of the students), so the repetitions are independent (and runs
    of 50 from seed 42 and of 50 from seed 92 are the 100 runs from seed 42: a long study can be split)
    experiments. With the same model behind every variant (an A/A test) the share of significant results
    estimates the false-positive rate; with different models, the power to detect their difference.

    Args:
        population: the students (its state is forked per repetition, never changed).
        models: variant name -> prepared model (the same object twice for an A/A test).
        shares: variant name -> weight; the first is the control.
        config: the simulation (its seed is the first repetition's).
        repetitions: how many runs.
        alpha: significance level.
        key: experiment key.
        metrics: metrics analysed (each plain and CUPED-adjusted: rows carry ``method``).
        looks: also analyse the primary metric at the end of every simulated day (`look_rates`).
        progress: ``progress("repetition", done, total)`` callback.

    Returns:
        One row per repetition, metric and region (and ``pooled``).
    """
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    if list(models) != list(shares):
        raise ValueError(f"models {list(models)} and shares {list(shares)} must name the same variants")
    started = time.perf_counter()
    start = config.start or default_start(population.last_event, config.days)
    import pandas as pd

    from training.ab.attribution import as_of, attribute
    from training.ab.covariates import COVARIATES
    from training.ab.stats import METRICS, PRIMARY_METRIC, analyse

    specs = tuple(m for m in METRICS if m.name in set(metrics))
    primary = tuple(m for m in METRICS if m.name == PRIMARY_METRIC)
    regions = list(config.regions)
    rows: list[dict[str, Any]] = []
    look_rows: list[dict[str, Any]] = []
    for rep in range(repetitions):
        cfg = SimConfig(
            regions=config.regions, days=config.days, students_per_day=config.students_per_day, k=config.k,
            seed=config.seed + rep, start=start, run=f"{config.run_name}-r{rep}", behaviour=config.behaviour,
            visiting=config.visiting,
        )  # fmt: skip
        experiment = experiment_for(
            key, config.regions, shares, start, start + config.days * DAY, salt=f"{key}.s{cfg.seed}"
        )
        backend = InProcessBackend(population.state.fork(), models, next(iter(models)), [experiment])
        simulate(cfg, population, backend)
        ex, ev = backend.exposures_table(), backend.events_table()
        attribution = attribute(ex, ev)
        students = with_covariates(attribution.students, ev, experiment, population.history)
        for method, covs in (("plain", ()), ("cuped", COVARIATES)):
            analysis = analyse(students, shares, alpha=alpha, metrics=specs, regions=regions, covariates=covs)
            srm = {s.region: s.mismatch for s in analysis.srm}
            rows.extend(_row(rep, cfg.seed, method, c, srm, alpha) for c in analysis.comparisons)
        pre = students[list(COVARIATES)]  # labelled as `attribution.students`, as each look's rows are
        for day in range(1, config.days + 1) if looks else ():
            daily = as_of(attribution, pd.Timestamp(start + day * DAY))
            daily = daily.loc[daily["experiment"] == experiment.key].join(pre)
            for method, covs in (("plain", ()), ("cuped", COVARIATES)):
                analysis = analyse(
                    daily, shares, alpha=alpha, metrics=primary, regions=regions, covariates=covs
                )
                look_rows.extend(
                    {**_row(rep, cfg.seed, method, c, {}, alpha), "day": day} for c in analysis.comparisons
                )
        if progress:
            progress("repetition", rep + 1, repetitions)
    return RepeatSummary(
        rows=rows,
        variants=dict(shares),
        alpha=alpha,
        repetitions=repetitions,
        config=SimConfig(
            regions=config.regions,
            days=config.days,
            students_per_day=config.students_per_day,
            k=config.k,
            seed=config.seed,
            start=start,
            run=config.run,
            behaviour=config.behaviour,
            visiting=config.visiting,
        ),
        seconds=time.perf_counter() - started,
        looks=look_rows,
    )


def _row(rep: int, seed: int, method: str, c: Any, srm: Mapping[str, bool], alpha: float) -> dict[str, Any]:
    """One `REPEAT_COLUMNS` row of a comparison (``method`` plain or cuped: which estimate it reports)."""
    est = c.decision if method == "cuped" else c.estimate
    adjusted = method == "cuped" and c.adjusted is not None
    return {
        "rep": rep,
        "seed": seed,
        "method": method,
        "metric": c.metric,
        "region": c.region,
        "control_students": c.control.students,
        "treatment_students": c.treatment.students,
        "control_value": float(est.extra.get("control_value", c.control.value)),
        "treatment_value": float(est.extra.get("treatment_value", c.treatment.value)),
        "abs_lift": float(est.abs_lift),
        "p_value": float(est.p_value),
        "p_adjusted": float(c.p_adjusted),
        "significant": bool(c.significant),
        "srm_mismatch": bool(srm.get(c.region, False)),
        "lift_se": _lift_se(c) if not adjusted else float(est.extra.get("se", math.nan)),
        "variance_reduction": float(est.extra.get("variance_reduction", math.nan)) if adjusted else 0.0,
        "sequential_p": float(c.sequential_p),
        "sequential_significant": bool(c.sequential_p < alpha),
    }


def _lift_se(c: Any) -> float:
    """Standard error of a comparison's difference: from the arms' variances, or the pooled estimate's."""
    v = c.control.variance + c.treatment.variance
    if math.isfinite(v):
        return math.sqrt(v)
    return float(c.estimate.extra.get("se", math.nan)) if c.estimate.test == "stratified-z" else math.nan


def prepare_models(loaded: Mapping[str, Any]) -> dict[str, RankingModel]:
    """`RankingModel`s (the service's request-path form) of loaded model versions, one per distinct object.

    Args:
        loaded: name -> `models.loading.LoadedModel`; the same object under two names is prepared once
            (an A/A test then really serves one model).

    Returns:
        name -> prepared model.
    """
    from models.ranking import RankingModel

    prepared: dict[int, RankingModel] = {}
    out = {}
    for name, model in loaded.items():
        if id(model) not in prepared:
            prepared[id(model)] = RankingModel.prepare(model)
        out[name] = prepared[id(model)]
    return out
