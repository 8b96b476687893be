"""Load a registered model version (by alias or number) from the MLflow registry, natively and fast.

A version registered by `learnrec train` is an MLflow pyfunc whose artifacts are the model's native save
directory and the tables the service needs::

    artifacts/recommender/        Recommender.save() output (.npz + JSON, no pickle)
    artifacts/lectures.parquet    the catalogue table, Korean titles included
    artifacts/students.parquet    profiles and ordered histories of the training students
    artifacts/fallback.json       popular lecture ids: global, per region, per "region|grade"

`load_registered` downloads only those artifacts and reads them directly (it never unpickles the pyfunc
wrapper), so the service and `learnrec features materialize` load a version in well under a second plus
the download. mlflow and pyarrow are imported inside the functions: importing this module is light.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import ModelFormatError, RegisteredModelNotFoundError

if TYPE_CHECKING:
    import pyarrow as pa
    from mlflow import MlflowClient

    from models.base import Recommender

#: Names of the pyfunc artifacts (keys of `mlflow.pyfunc.log_model(artifacts=...)`) and their files.
RECOMMENDER = "recommender"
LECTURES = "lectures"
STUDENTS = "students"
FALLBACK = "fallback"
ARTIFACT_FILES: dict[str, str] = {
    RECOMMENDER: "recommender",
    LECTURES: "lectures.parquet",
    STUDENTS: "students.parquet",
    FALLBACK: "fallback.json",
}
#: Where `mlflow.pyfunc.log_model` puts the artifacts inside the logged model directory.
PYFUNC_ARTIFACTS_DIR = "artifacts"
#: Separator of the region x grade keys in fallback.json ("seoul|h1").
SEGMENT_SEPARATOR = "|"


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version ready to serve.

    Attributes:
        model_name: registered model name.
        version: version number, as a string.
        alias: the alias it was loaded by, None when loaded by number.
        run_id: the training run.
        recommender: the natively loaded recommender.
        lectures: catalogue table (schema `features.schemas.LECTURES`).
        fallback: popular lecture ids, {"global": [...], "by_region": {...}, "by_region_grade": {...}}.
    """

    model_name: str
    version: str
    alias: str | None
    run_id: str | None
    recommender: Recommender
    lectures: pa.Table
    fallback: dict[str, Any]


def _client(tracking_uri: str) -> MlflowClient:
    import os

    from mlflow import MlflowClient

    # the tqdm bar of artifact downloads would land in service logs
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _aliases(client: MlflowClient, model_name: str) -> dict[str, str] | None:
    """Alias -> version of a registered model, None when the model does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return {str(a): str(v) for a, v in dict(registered.aliases).items()}


def resolve_alias(model_name: str, alias: str, tracking_uri: str) -> str | None:
    """The version an alias points to.

    Args:
        model_name: registered model name.
        alias: alias such as "champion".
        tracking_uri: MLflow tracking/registry URI.

    Returns:
        The version number as a string, or None when the model or the alias does not exist.

    Raises:
        MlflowException: the registry cannot be reached or answers with another error.
    """
    aliases = _aliases(_client(tracking_uri), model_name)
    return None if aliases is None else aliases.get(alias)


def read_artifacts(directory: Path) -> tuple[Recommender, pa.Table, dict[str, Any]]:
    """Read the recommender, the lectures table and the fallback lists from a pyfunc artifacts directory.

    Args:
        directory: a directory holding `recommender/`, `lectures.parquet` and `fallback.json`.

    Returns:
        (recommender, lectures, fallback).

    Raises:
        ModelFormatError: a file is missing or malformed.
    """
    import pyarrow.parquet as pq

    from models import load_model

    directory = Path(directory)
    for key in (RECOMMENDER, LECTURES, FALLBACK):
        if not (directory / ARTIFACT_FILES[key]).exists():
            raise ModelFormatError(
                f"{directory} lacks {ARTIFACT_FILES[key]}: not a model logged by `learnrec train`"
            )
    recommender = load_model(directory / ARTIFACT_FILES[RECOMMENDER])
    try:
        lectures = pq.read_table(directory / ARTIFACT_FILES[LECTURES])
        fallback = json.loads((directory / ARTIFACT_FILES[FALLBACK]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(
            f"{directory}: cannot read the lectures table or fallback lists: {exc}"
        ) from exc
    if not isinstance(fallback, dict):
        raise ModelFormatError(f"{directory / ARTIFACT_FILES[FALLBACK]}: expected a JSON object")
    return recommender, lectures, fallback


def load_registered(model_name: str, alias_or_version: str, tracking_uri: str) -> LoadedModel:
    """Download a registered version's artifacts and load the recommender natively.

    Args:
        model_name: registered model name (settings.mlflow.registered_model).
        alias_or_version: an alias ("champion", "challenger") or a version number ("3").
        tracking_uri: MLflow tracking/registry URI.

    Returns:
        The loaded model.

    Raises:
        RegisteredModelNotFoundError: no such model, alias or version.
        ModelFormatError: the version was not logged by `learnrec train`.
        MlflowException: the registry or artifact store cannot be reached.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    alias: str | None = None
    version = str(alias_or_version)
    if not version.isdigit():
        alias = version
        aliases = _aliases(client, model_name)
        if aliases is None:
            raise RegisteredModelNotFoundError(
                f"registered model '{model_name}' does not exist: train one with `learnrec train --register`"
            )
        if alias not in aliases:
            known = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
            raise RegisteredModelNotFoundError(
                f"registered model '{model_name}' has no alias '{alias}' (aliases: {known}); "
                "set it with `learnrec promote`"
            )
        version = aliases[alias]
    try:
        mv = client.get_model_version(model_name, version)
        source = client.get_model_version_download_uri(model_name, version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegisteredModelNotFoundError(
                f"registered model '{model_name}' has no version {version}"
            ) from exc
        raise
    with tempfile.TemporaryDirectory(prefix="learnrec-model-") as tmp:
        local = Path(tmp)
        for key in (RECOMMENDER, LECTURES, FALLBACK):
            name = ARTIFACT_FILES[key]
            try:
                download_artifacts(
                    artifact_uri=f"{source.rstrip('/')}/{PYFUNC_ARTIFACTS_DIR}/{name}",
                    dst_path=str(local),
                    tracking_uri=tracking_uri,
                )
            except (MlflowException, OSError) as exc:
                raise ModelFormatError(
                    f"version {version} of '{model_name}' lacks {PYFUNC_ARTIFACTS_DIR}/{name}: "
                    f"not a model logged by `learnrec train` ({exc})"
                ) from exc
        recommender, lectures, fallback = read_artifacts(local)
    return LoadedModel(
        model_name=model_name,
        version=str(mv.version),
        alias=alias,
        run_id=mv.run_id,
        recommender=recommender,
        lectures=lectures,
        fallback=fallback,
    )
