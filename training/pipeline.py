"""The training pipeline as step functions: prepare (read, fingerprint, split, matrices), fit, evaluate,
log, register. `learnrec train`, `tune`, `retrain` and the demo call these; the commands only parse
options, call and print.

Progress is reported through a plain callback, ``step(task, description, done, total)``, so the same
functions run under the CLI's rich display, in tests, or silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from features.settings import Settings
    from features.tables import Dataset
    from models.base import Recommender, TrainingData
    from training.evaluate import EvaluationReport
    from training.splits import Split

#: ``step(task, description, done, total)``: a named task moved on (done/total None: unknown).
Step = Callable[[str, str, "int | None", "int | None"], None]


def _no_step(task: str, description: str, done: int | None, total: int | None) -> None:
    """The default `Step`: report nothing."""


@dataclass
class Prepared:
    """A dataset, its split and the split's training data."""

    dataset_dir: Path
    #: the dataset's students, lectures and manifest; its events are in `split` only (train and test)
    dataset: Dataset
    split: Split
    data: TrainingData
    fingerprint: str


def prepare(
    dataset_dir: Path, split_name: str, split_params: Mapping[str, Any], step: Step = _no_step
) -> Prepared:
    """Read the dataset, fingerprint it, split it and build the training matrices.

    Args:
        dataset_dir: dataset directory.
        split_name: split name.
        split_params: keyword arguments of the split.
        step: progress callback (task ``"prepare"``).

    Returns:
        Everything the models are fitted and evaluated on.

    Raises:
        LearnrecDataError: the dataset is missing or breaks its schema.
        SplitError: the split cannot be made from this data.
    """
    import pyarrow as pa

    from features.matrices import build_training_data
    from features.tables import read_dataset
    from training.splits import make_split

    step("prepare", f"reading {dataset_dir}", 0, 4)
    ds = read_dataset(dataset_dir)
    step("prepare", "fingerprinting the dataset", 1, 4)
    fingerprint = ds.fingerprint()
    step("prepare", f"{split_name} split", 2, 4)
    split = make_split(split_name, ds, **split_params)
    step("prepare", "building the training matrices", 3, 4)
    data = build_training_data(
        split.train.students, split.train.lectures, split.train.events, as_of=split.as_of
    )
    s = split.summary()
    step(
        "prepare",
        f"{ds.sizes['events']:,} events -> {s['train_events']:,} training, "
        f"{s['test_students']:,} test students ({split_name})",
        4,
        4,
    )
    # the split holds the events the run reads again: the whole table (the largest in memory, fingerprinted
    # above) is not kept beside it, and Arrow's pool hands its pages back
    without_events = replace(ds, events=ds.events.slice(0, 0))
    prepared = Prepared(Path(dataset_dir), without_events, split, data, fingerprint)
    del ds
    pa.default_memory_pool().release_unused()
    return prepared


def fit(
    name: str,
    params: Mapping[str, Any],
    data: TrainingData,
    seed: int,
    fitted: Mapping[str, Recommender] | None = None,
    fit_seconds: Mapping[str, float] | None = None,
) -> tuple[Recommender, float]:
    """Construct a registered model with `params` and fit it, or take its fit from `fitted`.

    Args:
        name: model registry name.
        params: constructor keyword arguments.
        data: the training data.
        seed: the model's seed.
        fitted: models already fitted on `data` itself, by name: the model is taken from it when it is
            this fit (`Recommender.is_fit_of`); a blend takes its components' fits from it
            (`BlendRecommender.fit`).
        fit_seconds: how long each model of `fitted` took to fit (a taken model reports that).

    Returns:
        (the fitted model, fit seconds).

    Raises:
        ValueError: a bad hyper-parameter (names the model and the parameter).
        ModelError: the fit failed (for example NaN in learned factors).
    """
    from models import BlendRecommender, get_model_class

    factory: Callable[..., Recommender] = get_model_class(name)
    try:
        model = factory(seed=seed, **params)
    except TypeError as exc:
        raise ValueError(f"{name}: bad hyper-parameter ({exc})") from exc
    given = (fitted or {}).get(name)
    if given is not None and given.is_fit_of(model, data):
        return given, (fit_seconds or {}).get(name, 0.0)
    started = time.perf_counter()
    if isinstance(model, BlendRecommender):
        model.fit(data, fitted)
    else:
        model.fit(data)
    return model, time.perf_counter() - started


@dataclass
class Fits:
    """Models of a training run fitted on its training data, by name, and how long each fit took."""

    models: dict[str, Recommender] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Trained:
    """Outcome of one model of a training run."""

    model: str
    report: EvaluationReport | None = None
    run_id: str | None = None
    fit_seconds: float = 0.0
    error: str | None = None
    version: str | None = None
    validation: float | None = None
    note: str = ""


def fit_evaluate_log(
    name: str,
    params: Mapping[str, Any],
    prepared: Prepared,
    *,
    experiment_id: str,
    ks: tuple[int, ...],
    seed: int,
    extra_metrics: Mapping[str, float] | None = None,
    run_name: str | None = None,
    fits: Fits | None = None,
    step: Step = _no_step,
) -> Trained:
    """Fit one model, evaluate its served lists on the split and log one MLflow run (params, metrics, pyfunc).

    Args:
        name: model registry name.
        params: constructor keyword arguments.
        prepared: the dataset, split and training data.
        experiment_id: MLflow experiment.
        ks: cut-offs (first = primary).
        seed: the model's seed.
        extra_metrics: more metrics for the run (validation figures, ...).
        run_name: the run's name (default MLflow's).
        fits: models of this run fitted on `prepared.data`, by name, and their fit seconds, or None: the
            model is taken from it when it is that fit (`fit`); a blend fitted here adds the components
            it fitted on all the data.
        step: progress callback (task = `name`).

    Returns:
        The outcome (report and run id set).

    Raises:
        ValueError, ModelError: the model cannot be built, fitted or evaluated (nothing was logged).
    """
    from models import BlendRecommender
    from training import tracking
    from training.evaluate import evaluate

    step(name, f"{name}: fitting", None, None)
    taken, seconds = (fits.models, fits.seconds) if fits is not None else (None, None)
    model, fit_seconds = fit(name, params, prepared.data, seed, taken, seconds)
    if fits is not None and isinstance(model, BlendRecommender):
        fits.models.update(model.models)
        fits.seconds.update(model.fit_seconds)
    total = len(prepared.split.test_students)
    step(name, f"{name}: evaluating", 0, total)
    report = evaluate(
        model,
        prepared.split,
        prepared.dataset,
        ks,
        data=prepared.data,
        fingerprint=prepared.fingerprint,
        progress=lambda done, n: step(name, f"{name}: evaluating", done, n),
    )
    step(name, f"{name}: logging to MLflow", total, total)
    logged = tracking.log_evaluation_run(
        experiment_id,
        kind=tracking.KIND_MODEL,
        name=name,
        report=report,
        split=prepared.split,
        fingerprint=prepared.fingerprint,
        dataset_dir=prepared.dataset_dir,
        params=model.params(),
        extra_metrics={
            "fit_seconds": fit_seconds,
            "evaluate_seconds": report.seconds,
            **(extra_metrics or {}),
        },
        model=model,
        data=prepared.data,
        run_name=run_name,
    )
    return Trained(name, report=report, run_id=logged.run_id, fit_seconds=fit_seconds)


def oracle_logged(client: Any, experiment: str, prepared: Prepared, ks: tuple[int, ...]) -> bool:
    """An oracle run of the same evaluation (split, its parameters, dataset, cut-offs) exists already."""
    from training.tracking import KIND_ORACLE, TAG_FINGERPRINT, find_runs, param_value

    for run in find_runs(client, experiment, split=prepared.split.name, kinds=(KIND_ORACLE,)):
        params = run.data.params
        same_split = all(params.get(f"split.{k}") == param_value(v) for k, v in prepared.split.params.items())
        if (
            run.data.tags.get(TAG_FINGERPRINT) == prepared.fingerprint
            and params.get("ks") == ",".join(str(k) for k in ks)
            and same_split
        ):
            return True
    return False


def evaluate_and_log_oracle(
    prepared: Prepared, *, experiment_id: str, ks: tuple[int, ...], step: Step = _no_step
) -> Trained:
    """Evaluate the ground-truth oracle (synthetic data) on the split and log it."""
    from training import tracking
    from training.evaluate import oracle_report

    total = len(prepared.split.test_students)
    report = oracle_report(
        prepared.split,
        prepared.dataset,
        prepared.dataset_dir,
        ks,
        data=prepared.data,
        fingerprint=prepared.fingerprint,
        progress=lambda done, n: step("oracle", "oracle: evaluating", done, n),
    )
    logged = tracking.log_evaluation_run(
        experiment_id,
        kind=tracking.KIND_ORACLE,
        name="oracle",
        report=report,
        split=prepared.split,
        fingerprint=prepared.fingerprint,
        dataset_dir=prepared.dataset_dir,
    )
    step("oracle", "oracle: logged", total, total)
    return Trained("oracle", report=report, run_id=logged.run_id)


def register(client: Any, results: list[Trained], key: str, settings: Settings) -> list[str]:
    """Register every logged model; the best on validation becomes champion when there is none.

    Args:
        client: MLflow client.
        results: logged models (run ids set).
        key: metric key of the champion's figure (``ndcg_at_10``).
        settings: the settings (registered model name).

    Returns:
        What was done, one line each, for the caller to show.
    """
    from training.registry import CHAMPION, alias_version, promote, register_run

    name = settings.mlflow.registered_model
    for r in results:
        assert r.run_id is not None
        r.version = str(register_run(client, r.run_id, name).version)
    if not results:
        return []
    held = alias_version(client, name, CHAMPION)
    if held is not None:
        return [f"'{name}' already has a champion (v{held}); use `learnrec promote` to replace it"]
    # the champion is the best on validation: choosing it on the test would make its test figure optimistic
    best = max(results, key=lambda r: float("-inf") if r.validation is None else r.validation)
    assert best.version is not None
    promote(client, name, best.version, CHAMPION, metric=key, settings=settings)
    return [f"'{name}' had no champion: v{best.version} ({best.model}, best on validation) is now champion"]


@dataclass
class TrainingRun:
    """What `run_training` did: one entry per model (failed ones carry `error`) and what to tell."""

    results: list[Trained]
    messages: list[str]


def run_training(
    models: list[str],
    split_name: str,
    split_params: Mapping[str, Any],
    *,
    dataset_dir: Path,
    ks: tuple[int, ...],
    params: Mapping[str, Mapping[str, Any]],
    experiment: str,
    seed: int,
    register_models: bool,
    oracle: bool,
    metric: str,
    settings: Settings,
    client: Any,
    budget_seconds: float = 600.0,
    step: Step = _no_step,
) -> TrainingRun:
    """Prepare, choose on validation, then fit, evaluate and log each model (and the oracle); register.

    Args:
        models: registry names.
        split_name: split name.
        split_params: the split's keyword arguments.
        dataset_dir: dataset directory.
        ks: cut-offs (first = primary).
        params: per model, constructor keyword arguments.
        experiment: MLflow experiment name.
        seed: seed of the models.
        register_models: register every logged model; make the best `champion` when there is none.
        oracle: also log the ground-truth oracle (synthetic datasets) unless logged already.
        metric: metric name used to pick the champion (``ndcg``).
        settings: the settings.
        client: MLflow client on the project's store.
        budget_seconds: time budget of the search on validation (`training.selection.select`).
        step: progress callback.

    Returns:
        The run's outcomes and messages.
    """
    from models.errors import ModelError
    from training import splits, tracking
    from training.evaluate import ground_truth_dir
    from training.metrics import metric_key
    from training.selection import select

    key = metric_key(metric, ks[0])
    results: list[Trained] = []
    prepared = prepare(dataset_dir, split_name, split_params, step)
    experiment_id = tracking.ensure_experiment(client, experiment, settings)
    # hyper-parameters, the blend's fallback and the champion come from validation, never the test
    step("selection", "choosing on validation", None, None)
    selection = select(
        models, prepared.split, ks=ks, metric=metric, params=dict(params), seed=seed,
        budget_seconds=budget_seconds,
        on_step=lambda line: step("selection", line, None, None),
    )  # fmt: skip
    step("selection", selection.summary(), 1, 1)

    def final_params(name: str) -> dict[str, Any]:
        choice = selection.choices.get(name)
        if choice is not None:
            return dict(choice.params)
        return splits.split_model_params(name, dict(params.get(name, {})), prepared.split)

    # the blend comes first: the components it fits on all the data are the single models' final fits
    # (same parameters, same data), each dropped once that model is logged; no fit is held beside the
    # blend's hold-out cut fits
    fits = Fits()
    for name in sorted(models, key=lambda m: m != "blend"):
        choice = selection.choices.get(name)
        extra = {} if choice is None else {f"validation_{key}": choice.value}
        try:
            result = fit_evaluate_log(
                name, final_params(name), prepared, experiment_id=experiment_id, ks=ks, seed=seed,
                extra_metrics=extra, fits=fits, step=step,
            )  # fmt: skip
            assert result.report is not None
            step(name, f"{name}: {key} = {result.report.overall.get(key, 0.0):.4f}", 1, 1)
        except (ModelError, ValueError) as exc:
            result = Trained(name, error=str(exc))
            step(name, f"[red]{name}: failed[/]", 1, 1)
        fits.models.pop(name, None)
        if choice is not None:
            result.validation, result.note = choice.value, choice.note
        results.append(result)
    fits.models.clear()
    results.sort(key=lambda r: r.model == "blend")  # reported as before: the blend after the others
    if oracle and ground_truth_dir(prepared.dataset_dir) is not None:
        if oracle_logged(client, experiment, prepared, ks):
            step("oracle", "oracle: already logged for this evaluation", 1, 1)
        else:
            result = evaluate_and_log_oracle(prepared, experiment_id=experiment_id, ks=ks, step=step)
            assert result.report is not None
            results.append(result)
            step("oracle", f"oracle: {key} = {result.report.overall.get(key, 0.0):.4f}", 1, 1)
    messages: list[str] = []
    if register_models:
        messages += register(client, [r for r in results if r.run_id and r.model != "oracle"], key, settings)
    messages += [selection.summary(), *(c.note for c in selection.choices.values() if c.note)]
    return TrainingRun(results, messages)
