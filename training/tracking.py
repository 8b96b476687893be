"""MLflow tracking for learnrec: store setup, the artifacts a model version carries, and run logging.

Runs carry these tags (the registry, `learnrec compare` and `learnrec promote` rely on them):

* ``learnrec.kind``: ``model`` (a trained recommender), ``oracle`` (ground-truth ranking), ``tune``
  (an Optuna study, parent run) or ``trial`` (one of its trials, nested);
* ``learnrec.model``: registry name of the recommender (``lightfm`` ...);
* ``learnrec.split``, ``learnrec.dataset_fingerprint``, ``learnrec.dataset``: the evaluation;
* ``learnrec.model_uri``: the logged pyfunc (``models:/m-...``) of a ``model`` run;
* ``mlflow.source.git.commit`` (+ ``learnrec.git_dirty``): the code version.

Metrics are `EvaluationReport.metrics()`: ``ndcg_at_10``, ``ndcg_at_10/region/seoul``,
``ndcg_at_10/grade/h1`` ... mlflow is imported inside the functions.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.loading import ARTIFACT_FILES, FALLBACK, LECTURES, RECOMMENDER, STUDENTS
from models.popularity import popular_lists
from training.errors import TrackingError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from features.settings import Settings
    from features.tables import Dataset
    from models.base import Recommender, TrainingData
    from training.evaluate import EvaluationReport
    from training.splits import Split

TAG_KIND = "learnrec.kind"
TAG_MODEL = "learnrec.model"
TAG_SPLIT = "learnrec.split"
TAG_FINGERPRINT = "learnrec.dataset_fingerprint"
TAG_DATASET = "learnrec.dataset"
TAG_MODEL_URI = "learnrec.model_uri"
TAG_K = "learnrec.k"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_DIRTY = "learnrec.git_dirty"
KIND_MODEL = "model"
KIND_ORACLE = "oracle"
KIND_TUNE = "tune"
KIND_TRIAL = "trial"
#: Name of the pyfunc inside a run (`mlflow.pyfunc.log_model(name=...)`).
PYFUNC_NAME = "recommender"
#: MLflow stores dataset digests in a 36-character column: the fingerprint's prefix.
DIGEST_CHARS = 36
#: Packages a logged pyfunc needs (pinned to the versions that trained it).
PYFUNC_REQUIREMENTS: tuple[str, ...] = (
    "mlflow",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "lightfm-next",
)
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------
# store


def configure(settings: Settings | None = None) -> MlflowClient:
    """Point mlflow's fluent API at the project's tracking store; returns a client for store and registry.

    The SQLite store's directory is created when missing (at call time, never at import).

    Args:
        settings: the settings (default `get_settings()`).

    Returns:
        A client bound to `settings.tracking_uri()`.
    """
    import mlflow
    from mlflow import MlflowClient

    from features.settings import get_settings

    settings = settings or get_settings()
    uri = settings.tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # a tqdm bar per artifact download clutters the CLI's own progress display
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # the fluent API (start_run, log_model) follows the global URI; mlflow also exports it as
    # MLFLOW_TRACKING_URI so that subprocesses inherit it. The registry is reached through the client.
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def ensure_experiment(client: MlflowClient, name: str, settings: Settings | None = None) -> str:
    """The id of experiment `name`, created (with its artifacts under the artifact root) when missing.

    With a local store the artifact location is ``<artifact_root>/<name>``; a tracking server decides
    its own. A deleted experiment of that name is restored.

    Args:
        client: the MLflow client.
        name: experiment name.
        settings: the settings (artifact root).

    Returns:
        The experiment id.
    """
    from features.settings import get_settings

    settings = settings or get_settings()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    location = f"{settings.artifact_root()}/{name}" if _is_local_store(settings.tracking_uri()) else None
    return str(client.create_experiment(name, artifact_location=location))


def git_tags(root: Path = _PROJECT_ROOT) -> dict[str, str]:
    """The code version as run tags: the git commit and whether the work tree had changes.

    Args:
        root: a directory inside the git work tree.

    Returns:
        {} when git or the repository is unavailable.
    """
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: "true" if status.strip() else "false"}


# ----------------------------------------------------------------------------------------------------------
# what a model version carries


def students_table(data: TrainingData, students: pd.DataFrame) -> pa.Table:
    """Profiles and ordered histories of the training students (the pyfunc's lookup table).

    Args:
        data: the training data (student order, sequences, interaction weights).
        students: the students table the data was built from.

    Returns:
        Arrow table: the profile columns of `features.schemas.STUDENTS` (nullable) plus `history`
        (lecture ids, first enrolled first) and `history_weight` (their interaction weights).
    """
    import pyarrow as pa

    from features.schemas import STUDENTS as STUDENTS_SCHEMA

    ids = list(data.students.ids)
    table = students.assign(student_id=students["student_id"].astype(str)).set_index("student_id")
    table = table.reindex(ids)
    history, history_weight = _history_columns(data)
    columns: dict[str, Any] = {"student_id": ids}
    fields = [pa.field("student_id", pa.string(), nullable=False)]
    for f in STUDENTS_SCHEMA:
        if f.name == "student_id":
            continue
        values = table[f.name].tolist() if f.name in table.columns else [None] * len(ids)
        columns[f.name] = [
            None
            if v is None or (isinstance(v, float) and np.isnan(v))
            else (list(v) if f.name == "interest_subjects" else v)
            for v in values
        ]
        fields.append(pa.field(f.name, f.type, nullable=True))
    columns["history"] = history
    columns["history_weight"] = history_weight
    fields += [pa.field("history", pa.list_(pa.string())), pa.field("history_weight", pa.list_(pa.float32()))]
    return pa.table(columns, schema=pa.schema(fields))


#: Students per block of `_history_columns` (bounds its temporary arrays: ~40 bytes an event of a block).
HISTORY_BLOCK_STUDENTS = 65_536


def _history_columns(data: TrainingData) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """Per student, the lecture ids of `data.sequences` and their interaction weights, as Arrow lists.

    Built from the arrays in blocks of students (no Python object per event): a lecture of a sequence
    that has no interaction weighs 0.
    """
    import pyarrow as pa

    lecture_ids = pa.array(data.catalogue.lectures.ids, type=pa.string())
    n_lectures = len(data.catalogue.lectures)
    interactions = data.interactions.tocsr()
    if not interactions.has_sorted_indices:
        interactions = interactions.sorted_indices()
    histories, weights = [], []
    n = len(data.sequences)
    for start in range(0, n, HISTORY_BLOCK_STUDENTS):
        stop = min(start + HISTORY_BLOCK_STUDENTS, n)
        sequences = data.sequences[start:stop]
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(sequences).astype(np.int64)
        # (row, lecture) as one sorted key: the block's CSR entries are sorted by row, then lecture
        block = interactions[start:stop]
        stored = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(block.indptr)) * n_lectures
        stored += block.indices
        wanted = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths) * n_lectures + flat
        at = np.searchsorted(stored, wanted)
        found = at < len(stored)
        found[found] = stored[at[found]] == wanted[found]
        weight = np.zeros(len(wanted), dtype=np.float32)
        weight[found] = block.data[at[found]]
        histories.append(pa.ListArray.from_arrays(pa.array(offsets), lecture_ids.take(pa.array(flat))))
        weights.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(weight)))
    return (
        pa.chunked_array(histories, type=pa.list_(pa.string())),
        pa.chunked_array(weights, type=pa.list_(pa.float32())),
    )


def lectures_table(lectures: pd.DataFrame) -> pa.Table:
    """The catalogue as an Arrow table with the exact `features.schemas.LECTURES` schema."""
    import pyarrow as pa

    from features.schemas import LECTURES as LECTURES_SCHEMA
    from features.validation import validate_lectures

    frame = validate_lectures(lectures, "lectures")
    return pa.Table.from_pandas(frame[LECTURES_SCHEMA.names], schema=LECTURES_SCHEMA, preserve_index=False)


def write_model_artifacts(
    directory: Path, model: Recommender, data: TrainingData, train: Dataset
) -> dict[str, str]:
    """Write the pyfunc artifacts of a fitted model into `directory`.

    Args:
        directory: an empty directory.
        model: the fitted recommender.
        data: its training data.
        train: the training dataset (students table, lectures table).

    Returns:
        Artifact name -> local path, as `mlflow.pyfunc.log_model(artifacts=...)` takes it.
    """
    import pyarrow.parquet as pq

    paths = {key: directory / name for key, name in ARTIFACT_FILES.items()}
    paths[RECOMMENDER].mkdir(parents=True)
    model.save(paths[RECOMMENDER])
    pq.write_table(lectures_table(train.lectures), paths[LECTURES])
    pq.write_table(students_table(data, train.students), paths[STUDENTS])
    paths[FALLBACK].write_text(
        json.dumps(popular_lists(data), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return {key: str(path) for key, path in paths.items()}


def _requirements() -> list[str]:
    out = []
    for name in PYFUNC_REQUIREMENTS:
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(name)
    return out


def log_pyfunc(artifacts: Mapping[str, str], example_student: str | None) -> Any:
    """Log the pyfunc wrapper (a model from code, `models` as code) in the active run.

    Args:
        artifacts: artifact name -> local path (see `write_model_artifacts`).
        example_student: a student id for the input example (MLflow checks the model answers it).

    Returns:
        MLflow's ModelInfo (``model_uri`` is ``models:/m-...``).
    """
    import mlflow
    import pandas as pd

    import models
    from models.pyfunc import ENTRY_SCRIPT, signature

    with tempfile.TemporaryDirectory(prefix="learnrec-pyfunc-") as tmp:
        code = Path(tmp) / "code"
        shutil.copytree(
            Path(models.__file__).parent,
            code / "models",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        entry = Path(tmp) / "learnrec_model.py"
        entry.write_text(ENTRY_SCRIPT, encoding="utf-8")
        example = pd.DataFrame({"student_id": [example_student], "k": [5]}) if example_student else None
        return mlflow.pyfunc.log_model(
            name=PYFUNC_NAME,
            python_model=str(entry),
            artifacts=dict(artifacts),
            code_paths=[str(code / "models")],
            pip_requirements=_requirements(),
            signature=signature(),
            input_example=example,
        )


def _local_source(uri: str) -> Any:
    """A dataset source for a local path, picked explicitly (MLflow registers two that both match)."""
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source

    local = [s for s in get_registered_sources() if s._get_source_type() == "local"]
    if local:
        return local[-1]._resolve(uri)
    return resolve_dataset_source(uri)


#: Rows MLflow's schema inference looks at (inferring it from millions of events takes many seconds).
SCHEMA_SAMPLE_ROWS = 1000


def log_dataset_inputs(split: Split, dataset_dir: Path | None, fingerprint: str, dataset_name: str) -> None:
    """Log the split's training and test events as MLflow inputs (digest = the dataset fingerprint).

    The logged profile counts every row; the column schema is inferred from the first
    `SCHEMA_SAMPLE_ROWS` rows (the tables were validated against their schema when read).

    Args:
        split: the split.
        dataset_dir: where the dataset lives (the source), None for an in-memory dataset.
        fingerprint: `Dataset.fingerprint()` of the full dataset.
        dataset_name: a short name (the directory name).
    """
    from functools import cached_property

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.pandas_dataset import PandasDataset
    from mlflow.models import infer_signature

    class EventsDataset(PandasDataset):  # type: ignore[misc]
        """The events held by Arrow (`features.event_table`): MLflow is handed their first rows as pandas
        (for the schema) and the whole table's counts (the profile)."""

        def __init__(self, events: pa.Table, **kwargs: Any) -> None:
            super().__init__(df=events.slice(0, SCHEMA_SAMPLE_ROWS).to_pandas(), **kwargs)
            self.rows, self.columns = events.num_rows, events.num_columns

        @property
        def profile(self) -> Any:
            return {"num_rows": self.rows, "num_elements": self.rows * self.columns}

        @cached_property
        def schema(self) -> Any:
            sample = self.df.copy()
            if "occurred_at" in sample.columns:
                # naive UTC: MLflow reads tz-aware columns through a deprecated pandas path
                sample["occurred_at"] = sample["occurred_at"].dt.tz_convert(None)
            return infer_signature(sample).inputs

    source = (
        _local_source(str(Path(dataset_dir).resolve()))
        if dataset_dir is not None
        else CodeDatasetSource(tags={})
    )
    for context, events in (("training", split.train.events), ("testing", split.test)):
        ds = EventsDataset(
            events,
            source=source,
            name=f"{dataset_name}/{split.name}/{context}",
            digest=fingerprint[:DIGEST_CHARS],
        )
        mlflow.log_input(ds, context=context, tags={"fingerprint": fingerprint})


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it (JSON for non-strings, at most 6000 characters)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text[:6000]  # MLflow's param value limit


@dataclass(frozen=True)
class LoggedRun:
    """A run written by `log_evaluation_run`."""

    run_id: str
    model_uri: str | None


def log_evaluation_run(
    experiment_id: str,
    *,
    kind: str,
    name: str,
    report: EvaluationReport,
    split: Split,
    fingerprint: str,
    dataset_dir: Path | None,
    params: Mapping[str, Any] | None = None,
    extra_metrics: Mapping[str, float] | None = None,
    model: Recommender | None = None,
    data: TrainingData | None = None,
    nested: bool = False,
    run_name: str | None = None,
) -> LoggedRun:
    """One MLflow run: params, tags, inputs, every metric, the report (JSON + HTML) and the pyfunc model.

    Call it only after the model was fitted and evaluated without error: nothing of a failed model is
    logged.

    Args:
        experiment_id: experiment to log into.
        kind: `KIND_MODEL`, `KIND_ORACLE` or `KIND_TRIAL`.
        name: model name (``learnrec.model``).
        report: the evaluation report.
        split: the split evaluated on.
        fingerprint: dataset fingerprint.
        dataset_dir: dataset directory (None: in memory).
        params: hyper-parameters (model.params() plus anything else).
        extra_metrics: more metrics (fit_seconds ...).
        model: the fitted model to log as pyfunc (None: no model, e.g. the oracle or a trial).
        data: its training data (needed with `model`).
        nested: a child of the active run (tuning trials).
        run_name: run name (default ``<name>-<split>``).

    Returns:
        The run id and the logged model's URI.
    """
    import mlflow

    metrics = report.metrics()
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        from models.errors import NumericalError

        raise NumericalError(f"{name}: metrics {', '.join(bad[:5])} are NaN or infinite; nothing was logged")
    dataset_name = Path(dataset_dir).name if dataset_dir is not None else "dataset"
    tags = {
        TAG_KIND: kind,
        TAG_MODEL: name,
        TAG_SPLIT: split.name,
        TAG_FINGERPRINT: fingerprint,
        TAG_DATASET: str(Path(dataset_dir).resolve()) if dataset_dir is not None else dataset_name,
        TAG_K: str(report.ks[0]),
        **git_tags(),
    }
    all_params = {f"split.{k}": v for k, v in split.params.items()}
    all_params.update({f"split.n_{k}": v for k, v in split.summary().items() if k != "split"})
    all_params.update({"split": split.name, "ks": ",".join(str(k) for k in report.ks)})
    all_params.update(params or {})
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name or f"{name}-{split.name}", nested=nested, tags=tags
    ) as run:
        mlflow.log_params({k: param_value(v) for k, v in all_params.items()})
        log_dataset_inputs(split, dataset_dir, fingerprint, dataset_name)
        model_uri: str | None = None
        model_id: str | None = None
        if model is not None:
            if data is None:
                raise TrackingError("log_evaluation_run: a model needs its training data to be logged")
            with tempfile.TemporaryDirectory(prefix="learnrec-artifacts-") as tmp:
                artifacts = write_model_artifacts(Path(tmp), model, data, split.train)
                info = log_pyfunc(artifacts, data.students.ids[0] if len(data.students) else None)
            model_uri, model_id = info.model_uri, info.model_id
            mlflow.set_tag(TAG_MODEL_URI, model_uri)
        mlflow.log_metrics({**metrics, **(extra_metrics or {})}, model_id=model_id)
        with tempfile.TemporaryDirectory(prefix="learnrec-report-") as tmp:
            report.write(Path(tmp))
            mlflow.log_artifacts(tmp, artifact_path="evaluation")
        return LoggedRun(run.info.run_id, model_uri)


# ----------------------------------------------------------------------------------------------------------
# reading runs back


def find_runs(
    client: MlflowClient,
    experiment: str,
    *,
    split: str | None = None,
    kinds: tuple[str, ...] = (KIND_MODEL, KIND_ORACLE),
    max_results: int = 1000,
) -> list[Run]:
    """Finished runs of an experiment, newest first, filtered by split and kind.

    Args:
        client: the MLflow client.
        experiment: experiment name.
        split: only runs evaluated on this split.
        kinds: run kinds to keep.
        max_results: upper bound on runs read.

    Returns:
        The runs ([] when the experiment does not exist).
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = ["attributes.status = 'FINISHED'"]
    if split:
        clauses.append(f"tags.`{TAG_SPLIT}` = '{split}'")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=" and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
    )
    return [r for r in runs if r.data.tags.get(TAG_KIND) in kinds]


def load_report(client: MlflowClient, run_id: str) -> EvaluationReport:
    """The evaluation report logged with a run.

    Raises:
        TrackingError: the run has no report.
    """
    from training.evaluate import EvaluationReport

    try:
        with tempfile.TemporaryDirectory(prefix="learnrec-report-") as tmp:
            path = client.download_artifacts(run_id, "evaluation/report.json", tmp)
            return EvaluationReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except Exception as exc:  # MlflowException, OSError, bad JSON: all mean "no usable report"
        raise TrackingError(f"run {run_id} has no readable evaluation/report.json: {exc}") from exc
