"""Hyper-parameter search with Optuna: one parent MLflow run per study, one nested child run per trial.

The sampler is a seeded TPE, models are seeded, and every trial is fitted and evaluated on the same
split, so a study with the same seed, data and number of trials proposes the same parameters and finds
the same best trial. A trial whose model diverges (NaN scores) is pruned and logs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import TrainingError

if TYPE_CHECKING:
    import optuna

    from features.tables import Dataset
    from models.base import Recommender, TrainingData
    from training.evaluate import EvaluationReport
    from training.splits import Split

Space = Callable[["optuna.Trial"], dict[str, Any]]


def _popularity(t: optuna.Trial) -> dict[str, Any]:
    return {"half_life_days": t.suggest_float("half_life_days", 3.0, 365.0, log=True)}


def _segment_popularity(t: optuna.Trial) -> dict[str, Any]:
    return {
        "half_life_days": t.suggest_float("half_life_days", 3.0, 365.0, log=True),
        "shrinkage": t.suggest_float("shrinkage", 1.0, 500.0, log=True),
    }


def _item_knn(t: optuna.Trial) -> dict[str, Any]:
    return {
        "neighbours": t.suggest_int("neighbours", 10, 400, log=True),
        "min_similarity": t.suggest_float("min_similarity", 0.0, 0.2),
        "binary": t.suggest_categorical("binary", [False, True]),
        "half_life_days": t.suggest_categorical("half_life_days", [None, 30.0, 90.0, 365.0]),
    }


def _ease(t: optuna.Trial) -> dict[str, Any]:
    return {"regularisation": t.suggest_float("regularisation", 1.0, 30_000.0, log=True)}


def _lightfm(t: optuna.Trial) -> dict[str, Any]:
    return {
        "no_components": t.suggest_int("no_components", 8, 96, log=True),
        "epochs": t.suggest_int("epochs", 5, 40),
        "learning_rate": t.suggest_float("learning_rate", 0.005, 0.2, log=True),
        "item_alpha": t.suggest_float("item_alpha", 1e-8, 1e-3, log=True),
        "user_alpha": t.suggest_float("user_alpha", 1e-8, 1e-3, log=True),
        "loss": t.suggest_categorical("loss", ["warp", "bpr"]),
        "feature_weight": t.suggest_float("feature_weight", 0.0, 2.0),
    }


def _sequence(t: optuna.Trial) -> dict[str, Any]:
    return {
        "window": t.suggest_int("window", 1, 4),
        "skip_weight": t.suggest_float("skip_weight", 0.0, 1.0),
        "smoothing": t.suggest_float("smoothing", 0.1, 20.0, log=True),
        "recent": t.suggest_int("recent", 1, 10),
        "decay": t.suggest_float("decay", 0.2, 1.0),
        "series_weight": t.suggest_float("series_weight", 0.0, 3.0),
        "popularity_weight": t.suggest_float("popularity_weight", 0.0, 0.5),
    }


def _blend(t: optuna.Trial) -> dict[str, Any]:
    return {
        "regularisation": t.suggest_float("regularisation", 0.01, 10.0, log=True),
        "negatives": t.suggest_int("negatives", 5, 50, log=True),
        "hard_share": t.suggest_float("hard_share", 0.0, 1.0),
    }


#: Search space per model name.
SPACES: dict[str, Space] = {
    "popularity": _popularity,
    "segment_popularity": _segment_popularity,
    "item_knn": _item_knn,
    "ease": _ease,
    "lightfm": _lightfm,
    "sequence": _sequence,
    "blend": _blend,
}


@dataclass
class TuneResult:
    """Outcome of a study."""

    parent_run_id: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    completed: int
    pruned: int
    values: list[float] = field(default_factory=list)
    best_report: EvaluationReport | None = None


def tune(
    model_name: str,
    split: Split,
    dataset: Dataset,
    data: TrainingData,
    *,
    trials: int,
    experiment_id: str,
    fingerprint: str,
    dataset_dir: Path | None,
    metric: str = "ndcg",
    ks: tuple[int, ...] = (10,),
    seed: int = 42,
    base_params: Mapping[str, Any] | None = None,
    on_trial: Callable[[int, float | None, dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Run an Optuna study maximising `metric` at `ks[0]`, logging each trial as a nested MLflow run.

    Args:
        model_name: registry name of the model to tune.
        split: the split every trial is evaluated on.
        dataset: the full dataset (profiles of test students).
        data: the split's training data.
        trials: number of trials.
        experiment_id: MLflow experiment.
        fingerprint: dataset fingerprint.
        dataset_dir: dataset directory (for the logged inputs).
        metric: metric name (``ndcg``, ``recall`` ...).
        ks: cut-offs evaluated; the first is optimised.
        seed: seed of the sampler and of the models.
        base_params: fixed parameters merged under the suggested ones.
        on_trial: `on_trial(number, value or None when pruned, params)` after each trial.

    Returns:
        The result; the parent run holds the best parameters (params ``best.<name>``) and value.

    Raises:
        TrainingError: unknown model, or no trial completed.
    """
    import mlflow
    import optuna

    from models import get_model_class
    from models.errors import NumericalError
    from training.evaluate import evaluate
    from training.metrics import metric_key
    from training.tracking import (
        KIND_TRIAL,
        KIND_TUNE,
        TAG_FINGERPRINT,
        TAG_KIND,
        TAG_MODEL,
        TAG_SPLIT,
        git_tags,
        log_evaluation_run,
    )

    if model_name not in SPACES:
        raise TrainingError(f"no search space for '{model_name}': tune one of {', '.join(SPACES)}")
    if trials < 1:
        raise TrainingError(f"trials must be >= 1, got {trials}")
    cls: Callable[..., Recommender] = get_model_class(model_name)
    key = metric_key(metric, ks[0])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reports: dict[int, EvaluationReport] = {}
    tags = {
        TAG_KIND: KIND_TUNE,
        TAG_MODEL: model_name,
        TAG_SPLIT: split.name,
        TAG_FINGERPRINT: fingerprint,
        **git_tags(),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"tune-{model_name}-{split.name}", tags=tags
    ) as parent:
        mlflow.log_params(
            {"model": model_name, "trials": trials, "seed": seed, "metric": key, "split": split.name}
        )

        def objective(trial: optuna.Trial) -> float:
            params = {**(base_params or {}), **SPACES[model_name](trial)}
            try:
                model = cls(seed=seed, **params).fit(data)
                report = evaluate(model, split, dataset, ks, data=data, fingerprint=fingerprint)
            except NumericalError as exc:
                trial.set_user_attr("error", str(exc))
                if on_trial:
                    on_trial(trial.number, None, params)
                raise optuna.TrialPruned(str(exc)) from exc
            log_evaluation_run(
                experiment_id,
                kind=KIND_TRIAL,
                name=model_name,
                report=report,
                split=split,
                fingerprint=fingerprint,
                dataset_dir=dataset_dir,
                params={**model.params(), "trial": trial.number},
                nested=True,
                run_name=f"trial-{trial.number:03d}",
            )
            reports[trial.number] = report
            value = report.overall[key]
            if on_trial:
                on_trial(trial.number, value, params)
            return value

        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=trials)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise TrainingError(f"no trial of {model_name} completed: every trial diverged (NaN scores)")
        best = study.best_trial
        best_params = {**(base_params or {}), **best.params}
        mlflow.log_params({f"best.{k}": v for k, v in best_params.items()})
        best_report = reports[best.number]
        mlflow.log_metrics({f"best_{key}": float(best.value or 0.0), "best_trial": best.number})
        mlflow.log_metrics(best_report.metrics())
        mlflow.log_dict(
            {
                "best_params": best_params,
                "best_trial": best.number,
                "best_value": best.value,
                "trials": [
                    {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
                    for t in study.trials
                ],
            },
            "tuning/study.json",
        )
        mlflow.log_text(best_report.to_json(), "evaluation/report.json")
        mlflow.log_text(best_report.to_html(), "evaluation/report.html")
        return TuneResult(
            parent_run_id=parent.info.run_id,
            best_params=best_params,
            best_value=float(best.value or 0.0),
            best_trial=best.number,
            completed=len(complete),
            pruned=len(study.trials) - len(complete),
            values=[float(t.value) for t in complete if t.value is not None],
            best_report=best_report,
        )
