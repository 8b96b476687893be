"""Analysis of a run and repeated in-process runs (false-positive rate and power)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from training.simulate.config import DAY, Progress, SimConfig, default_start
from training.simulate.engine import simulate
from training.simulate.in_process import InProcessBackend
from training.simulate.population import Population

if TYPE_CHECKING:
    import pandas as pd

    from features.experiments import ExperimentConfig
    from models.ranking import RankingModel
    from training.ab.stats import Analysis


def analyse_run(
    exposures: pd.DataFrame,
    events: pd.DataFrame,
    experiment: ExperimentConfig,
    alpha: float = 0.05,
    metrics: Sequence[str] | None = None,
    window: timedelta = timedelta(days=7),
) -> Analysis:
    """Attribute and analyse one experiment, as `learnrec ab report` does.

    Args:
        exposures: exposures (`training.ab.exposures.EXPOSURES` columns).
        events: events (`features.schemas.EVENTS` columns).
        experiment: the experiment (variants, weights; the first is the control).
        alpha: significance level.
        metrics: metric names (default all of `training.ab.stats.METRICS`).
        window: attribution window.

    Returns:
        The analysis.
    """
    from training.ab.attribution import attribute
    from training.ab.stats import METRICS, analyse

    specs = METRICS if metrics is None else tuple(m for m in METRICS if m.name in set(metrics))
    attribution = attribute(exposures, events, window=window)
    students = attribution.students[attribution.students["experiment"] == experiment.key]
    return analyse(
        students, experiment.shares(), alpha=alpha, metrics=specs, regions=list(experiment.regions)
    )


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
)  # fmt: skip


@dataclass
class RepeatSummary:
    """Outcomes of repeated simulations of one experiment (one row per repetition, metric and region).

    Attributes:
        rows: dicts with `REPEAT_COLUMNS`.
        variants: variant -> weight (first = control).
        alpha: significance level.
        repetitions: repetitions run.
        config: the base configuration (repetition r uses seed + r and salt ``<key>.r<r>``).
        seconds: wall time.
    """

    rows: list[dict[str, Any]]
    variants: dict[str, float]
    alpha: float
    repetitions: int
    config: SimConfig
    seconds: float = 0.0

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
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["metric"], row["region"]), []).append(row)
        out: list[dict[str, Any]] = []
        for (metric, region), rows in groups.items():
            tested = [r for r in rows if math.isfinite(r["p_adjusted"])]
            n = len(tested)
            up = sum(1 for r in tested if r["significant"] and r["abs_lift"] > 0)
            down = sum(1 for r in tested if r["significant"] and r["abs_lift"] < 0)
            lifts = [r["abs_lift"] for r in tested if math.isfinite(r["abs_lift"])]
            out.append(
                {
                    "metric": metric,
                    "region": region,
                    "tested": n,
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

    def p_values(self, metric: str, region: str) -> list[float]:
        """The p-values of one metric and region over the repetitions (adjusted for regions; raw pooled)."""
        return [
            r["p_adjusted"]
            for r in self.rows
            if r["metric"] == metric and r["region"] == region and math.isfinite(r["p_adjusted"])
        ]

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
                },
                "seconds": round(self.seconds, 2),
                "rates": self.rates(),
                "rows": self.rows,
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
    progress: Progress | None = None,
) -> RepeatSummary:
    """Run the in-process simulation `repetitions` times and analyse each run's experiment.

    Repetition r uses seed ``config.seed + r`` (other visitors, times and reactions) and salt
    ``<key>.r<r>`` (another random split of the students), so the repetitions are independent
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
        metrics: metrics analysed.
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
    rows: list[dict[str, Any]] = []
    for rep in range(repetitions):
        cfg = SimConfig(
            regions=config.regions, days=config.days, students_per_day=config.students_per_day, k=config.k,
            seed=config.seed + rep, start=start, run=f"{config.run_name}-r{rep}", behaviour=config.behaviour,
        )  # fmt: skip
        experiment = experiment_for(
            key, config.regions, shares, start, start + config.days * DAY, salt=f"{key}.r{rep}"
        )
        backend = InProcessBackend(population.state.fork(), models, next(iter(models)), [experiment])
        simulate(cfg, population, backend)
        analysis = analyse_run(backend.exposures_frame(), backend.events_frame(), experiment, alpha, metrics)
        srm = {s.region: s.mismatch for s in analysis.srm}
        for c in analysis.comparisons:
            rows.append(
                {
                    "rep": rep,
                    "seed": cfg.seed,
                    "metric": c.metric,
                    "region": c.region,
                    "control_students": c.control.students,
                    "treatment_students": c.treatment.students,
                    "control_value": float(c.control.value),
                    "treatment_value": float(c.treatment.value),
                    "abs_lift": float(c.estimate.abs_lift),
                    "p_value": float(c.estimate.p_value),
                    "p_adjusted": float(c.p_adjusted),
                    "significant": bool(c.significant),
                    "srm_mismatch": bool(srm.get(c.region, False)),
                    "lift_se": _lift_se(c),
                }
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
        ),
        seconds=time.perf_counter() - started,
    )


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
