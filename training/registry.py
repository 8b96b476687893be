"""The model registry: register a run's model, move the `champion` / `challenger` aliases, keep their history.

Aliases, never stages (deprecated in MLflow). A candidate becomes `champion` only when it is at least as
good as the current champion on the *same evaluation* (same split name and dataset fingerprint, read
from the runs' tags) on the chosen metric; otherwise the move is refused unless forced.

Alias history lives in MLflow itself, as one run per move in the experiment `learnrec-alias-history`
(tags: registered model, alias, from/to version, who, forced, reason; metrics: the candidate's and the
previous holder's overall metrics at the time; start time = when). Why runs rather than model-version
tags: a run per move is append-only and time-ordered (a tag on a version is overwritten by the next
move and vanishes when the version is deleted), it can be searched and read in the MLflow UI like any
run, and it holds numbers as real metrics. The move is recorded in a run that is opened before the alias
is set and closed FINISHED only after it was set, so the history never shows a move that did not happen.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from training.errors import PromotionRefused, TrackingError
from training.tracking import KIND_MODEL, TAG_FINGERPRINT, TAG_KIND, TAG_MODEL, TAG_MODEL_URI, TAG_SPLIT

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from features.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES: tuple[str, ...] = (CHAMPION, CHALLENGER)
AUDIT_EXPERIMENT = "learnrec-alias-history"
KIND_ALIAS_MOVE = "alias_move"
TAG_REGISTERED = "learnrec.registered_model"
TAG_ALIAS = "learnrec.alias"
TAG_FROM = "learnrec.from_version"
TAG_TO = "learnrec.to_version"
TAG_BY = "learnrec.by"
TAG_FORCED = "learnrec.forced"
TAG_REASON = "learnrec.reason"
TAG_METRIC = "learnrec.metric"
#: A run that evaluates a registered version again on another split/dataset (`learnrec retrain`).
KIND_REEVALUATION = "reevaluation"
TAG_REEVALUATION_OF = "learnrec.reevaluation_of"
#: Tags copied from the training run onto a registered version (shown in the registry UI).
VERSION_TAGS: tuple[str, ...] = (TAG_MODEL, TAG_SPLIT, TAG_FINGERPRINT)


@dataclass(frozen=True)
class Candidate:
    """A registered version and the evaluation it was logged with."""

    version: str
    run_id: str
    model: str
    split: str | None
    fingerprint: str | None
    metrics: dict[str, float]

    def same_evaluation(self, other: Candidate) -> bool:
        """Evaluated on the same split kind and the same dataset content."""
        return bool(self.split and self.fingerprint) and (self.split, self.fingerprint) == (
            other.split,
            other.fingerprint,
        )

    def describe(self) -> str:
        fp = (self.fingerprint or "?")[:12]
        return f"v{self.version} ({self.model}, split {self.split or '?'}, dataset {fp})"


@dataclass(frozen=True)
class AliasMove:
    """One recorded alias move."""

    model_name: str
    alias: str
    from_version: str | None
    to_version: str
    by: str
    when: datetime
    forced: bool
    metric: str
    to_value: float | None
    from_value: float | None
    reason: str = ""
    run_id: str = ""
    model: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def current_user(by: str | None = None) -> str:
    """Who moves an alias: `by` when given, else $USER, else the login name."""
    if by:
        return by
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if user:
        return user
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _ensure_registered_model(client: MlflowClient, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(
            model_name, description="Lecture recommenders of learnrec (Seoul Learn and partner regions)."
        )


def versions_of_run(client: MlflowClient, model_name: str, run_id: str) -> list[ModelVersion]:
    """Registered versions of `model_name` created from run `run_id` (oldest first)."""
    found = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    return sorted(found, key=lambda mv: int(mv.version))


def register_run(client: MlflowClient, run_id: str, model_name: str) -> ModelVersion:
    """Register the pyfunc logged by a `learnrec train` run (or return its existing version).

    Args:
        client: the MLflow client.
        run_id: the training run.
        model_name: registered model name.

    Returns:
        The model version.

    Raises:
        TrackingError: the run does not exist or logged no model.
    """
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id} does not exist in {client.tracking_uri}") from exc
    tags = run.data.tags
    model_uri = tags.get(TAG_MODEL_URI)
    if tags.get(TAG_KIND) != KIND_MODEL or not model_uri:
        raise TrackingError(
            f"run {run_id} logged no recommender (kind '{tags.get(TAG_KIND)}'): "
            "register a `learnrec train` run"
        )
    existing = versions_of_run(client, model_name, run_id)
    if existing:
        return existing[-1]
    _ensure_registered_model(client, model_name)
    model_id = model_uri.removeprefix("models:/")
    return client.create_model_version(
        model_name,
        source=model_uri,
        run_id=run_id,
        tags={k: tags[k] for k in VERSION_TAGS if k in tags},
        model_id=model_id,
    )


def candidate(client: MlflowClient, model_name: str, version: str) -> Candidate:
    """A registered version with its run's evaluation tags and metrics.

    Raises:
        TrackingError: no such version, or its run is gone.
    """
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise TrackingError(f"registered model '{model_name}' has no version {version}") from exc
    if not mv.run_id:
        raise TrackingError(f"version {version} of '{model_name}' has no training run")
    try:
        run = client.get_run(mv.run_id)
    except MlflowException as exc:
        raise TrackingError(f"the training run {mv.run_id} of version {version} is gone") from exc
    tags = run.data.tags
    return Candidate(
        version=str(mv.version),
        run_id=mv.run_id,
        model=tags.get(TAG_MODEL, "?"),
        split=tags.get(TAG_SPLIT),
        fingerprint=tags.get(TAG_FINGERPRINT),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
    )


def reevaluation(client: MlflowClient, held: Candidate, like: Candidate) -> Candidate | None:
    """The latest re-evaluation of `held` on `like`'s evaluation (same split and dataset), if any.

    `learnrec retrain` evaluates the champion's model again on the new dataset version's split and logs
    it as a run of kind ``reevaluation`` tagged with the champion's version, in the experiment of the
    candidate's run; this finds it so the guard compares like with like.

    Args:
        client: the MLflow client.
        held: the version holding the alias.
        like: the candidate whose evaluation (split, fingerprint) the re-evaluation must match.

    Returns:
        `held` with the re-evaluation's run and metrics, or None when there is none.
    """
    if not (like.split and like.fingerprint):
        return None
    experiment_id = client.get_run(like.run_id).info.experiment_id
    clauses = [
        "attributes.status = 'FINISHED'",
        f"tags.`{TAG_KIND}` = '{KIND_REEVALUATION}'",
        f"tags.`{TAG_REEVALUATION_OF}` = '{held.version}'",
        f"tags.`{TAG_SPLIT}` = '{like.split}'",
        f"tags.`{TAG_FINGERPRINT}` = '{like.fingerprint}'",
    ]
    runs = client.search_runs(
        [experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    return Candidate(
        version=held.version,
        run_id=run.info.run_id,
        model=held.model,
        split=like.split,
        fingerprint=like.fingerprint,
        metrics={k: float(v) for k, v in run.data.metrics.items()},
    )


def alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version `alias` points to, None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = dict(registered.aliases).get(alias)
    return str(version) if version is not None else None


def check_promotion(new: Candidate, held: Candidate | None, alias: str, metric: str, force: bool) -> str:
    """Refuse a champion that is worse than the current one, or evaluated differently.

    Args:
        new: the candidate.
        held: the version holding the alias now (None: nobody).
        alias: the alias to move.
        metric: metric key compared (``ndcg_at_10``).
        force: move even when refused; the reason is returned for the record.

    Returns:
        "" when the move is fine, else why it would have been refused (only when `force`).

    Raises:
        PromotionRefused: the move is refused and not forced.
    """
    if alias != CHAMPION or held is None or held.version == new.version:
        return ""
    reason = ""
    if not new.same_evaluation(held):
        reason = (
            f"different evaluation: champion {held.describe()} vs candidate {new.describe()}; "
            "their metrics are not comparable - retrain the candidate on the champion's split and dataset"
        )
    elif metric not in new.metrics or metric not in held.metrics:
        missing = new if metric not in new.metrics else held
        reason = f"metric '{metric}' was not logged for {missing.describe()}; choose another --metric"
    elif new.metrics[metric] < held.metrics[metric]:
        reason = (
            f"candidate {new.describe()} has {metric} = {new.metrics[metric]:.4f}, worse than champion "
            f"{held.describe()} with {metric} = {held.metrics[metric]:.4f}"
        )
    if reason and not force:
        raise PromotionRefused(f"refusing to make v{new.version} {alias}: {reason}; pass --force to override")
    return reason


def _audit_experiment(client: MlflowClient, settings: Settings | None) -> str:
    from training.tracking import ensure_experiment

    return ensure_experiment(client, AUDIT_EXPERIMENT, settings)


def promote(
    client: MlflowClient,
    model_name: str,
    version: str,
    alias: str = CHAMPION,
    *,
    metric: str = "ndcg_at_10",
    force: bool = False,
    by: str | None = None,
    settings: Settings | None = None,
) -> AliasMove | None:
    """Point `alias` at `version` after `check_promotion`, and record the move in the audit experiment.

    Args:
        client: the MLflow client.
        model_name: registered model name.
        version: the version to promote.
        alias: alias to move (`champion`, `challenger` or another name).
        metric: metric compared for `champion`.
        force: move even when the check refuses (recorded with the reason).
        by: who moves it (default $USER).
        settings: settings (artifact root of the audit experiment).

    Returns:
        The recorded move, or None when the alias already pointed at the version.

    Raises:
        PromotionRefused: worse or differently evaluated candidate without `force`.
        TrackingError: unknown version.
    """
    new = candidate(client, model_name, version)
    held_version = alias_version(client, model_name, alias)
    if held_version == new.version:
        return None
    held = candidate(client, model_name, held_version) if held_version else None
    if held is not None and alias == CHAMPION and not new.same_evaluation(held):
        # `learnrec retrain` re-evaluates the champion on the candidate's split: compare on that instead
        held = reevaluation(client, held, new) or held
    reason = check_promotion(new, held, alias, metric, force)
    who = current_user(by)
    overall = {k: v for k, v in new.metrics.items() if "/" not in k}
    experiment_id = _audit_experiment(client, settings)
    tags = {
        TAG_KIND: KIND_ALIAS_MOVE,
        TAG_REGISTERED: model_name,
        TAG_ALIAS: alias,
        TAG_FROM: held_version or "",
        TAG_TO: new.version,
        TAG_BY: who,
        TAG_FORCED: "true" if force and reason else "false",
        TAG_REASON: reason,
        TAG_METRIC: metric,
        TAG_MODEL: new.model,
        TAG_SPLIT: new.split or "",
        TAG_FINGERPRINT: new.fingerprint or "",
        "learnrec.to_run_id": new.run_id,
    }
    run = client.create_run(
        experiment_id, tags=tags, run_name=f"{model_name}@{alias}: v{held_version or '-'} -> v{new.version}"
    )
    run_id = run.info.run_id
    try:
        for key, value in overall.items():
            client.log_metric(run_id, f"to.{key}", value)
        if held is not None:
            for key, value in held.metrics.items():
                if "/" not in key:
                    client.log_metric(run_id, f"from.{key}", value)
        client.set_registered_model_alias(model_name, alias, new.version)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return AliasMove(
        model_name=model_name,
        alias=alias,
        from_version=held_version,
        to_version=new.version,
        by=who,
        when=datetime.now(UTC),
        forced=bool(force and reason),
        metric=metric,
        to_value=new.metrics.get(metric),
        from_value=held.metrics.get(metric) if held else None,
        reason=reason,
        run_id=run_id,
        model=new.model,
        metrics=overall,
    )


def history(client: MlflowClient, model_name: str, alias: str | None = None) -> list[AliasMove]:
    """Every recorded alias move of a registered model, oldest first.

    Args:
        client: the MLflow client.
        model_name: registered model name.
        alias: only moves of this alias.

    Returns:
        The moves ([] when nothing was recorded).
    """
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if exp is None:
        return []
    clauses = [
        "attributes.status = 'FINISHED'",
        f"tags.`{TAG_KIND}` = '{KIND_ALIAS_MOVE}'",
        f"tags.`{TAG_REGISTERED}` = '{model_name}'",
    ]
    if alias:
        clauses.append(f"tags.`{TAG_ALIAS}` = '{alias}'")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time ASC"],
        max_results=10_000,
    )
    out = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        metric = tags.get(TAG_METRIC, "")
        out.append(
            AliasMove(
                model_name=model_name,
                alias=tags.get(TAG_ALIAS, ""),
                from_version=tags.get(TAG_FROM) or None,
                to_version=tags.get(TAG_TO, ""),
                by=tags.get(TAG_BY, ""),
                when=datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC),
                forced=tags.get(TAG_FORCED) == "true",
                metric=metric,
                to_value=metrics.get(f"to.{metric}"),
                from_value=metrics.get(f"from.{metric}"),
                reason=tags.get(TAG_REASON, ""),
                run_id=run.info.run_id,
                model=tags.get(TAG_MODEL, ""),
                metrics={k.removeprefix("to."): v for k, v in metrics.items() if k.startswith("to.")},
            )
        )
    return out


def describe_versions(
    client: MlflowClient, model_name: str, versions: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """What serves each A/B variant: registered model, version, its aliases now and the learnrec model kind.

    Args:
        client: the MLflow client.
        model_name: the registered model.
        versions: variant -> the version its exposures name (several: comma-separated, first used).

    Returns:
        variant -> ``name``, ``version``, ``alias`` (comma-separated, "" when none) and ``model`` (e.g.
        ``sequence``; "?" when the version or its run cannot be read).
    """
    from mlflow.exceptions import MlflowException

    out: dict[str, dict[str, Any]] = {}
    for variant, version in versions.items():
        first = str(version).split(",")[0].strip()
        info: dict[str, Any] = {"name": model_name, "version": str(version), "alias": "", "model": "?"}
        try:
            mv = client.get_model_version(model_name, first)
            info["alias"] = ", ".join(sorted(mv.aliases or []))
            info["model"] = candidate(client, model_name, first).model
        except (MlflowException, TrackingError):
            pass
        out[variant] = info
    return out
