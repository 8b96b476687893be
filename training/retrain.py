"""The retraining loop: new events from the stream -> a new dataset version -> a challenger, resumably.

`run_retrain` runs five steps and records each finished one in a JSON state file (written atomically);
run again after a failure, it continues after the last finished step with the arguments it started with:

1. ``export``: the events stream to Parquet through a consumer group (`features.streams.export_stream`:
   an entry is acknowledged only once its file is on disk, so nothing is lost or written twice). The
   default directory and group are those of ``learnrec events export``, so both tools share one export.
2. ``append``: the base dataset plus the exported events it does not hold yet (by ``event_id``) is
   validated and written as a NEW dataset directory ``<base>-v<N>`` (atomically; the base is never
   touched). Events of students or lectures the dataset does not know are set aside in
   ``rejected-events.parquet`` next to the state file, with the reason. The ground truth of a synthetic
   dataset is carried over. No new event: the loop stops there (nothing to retrain on).
3. ``train``: the model is fitted on the new version's split, evaluated and logged to MLflow like
   ``learnrec train`` (run name ``<model>-<split>-retrain-<id>``, found again on a rerun). By default
   the split is temporal with its cutoff just before the first new event (`split_params`): trained on
   all the earlier history, tested on what students did since.
4. ``champion``: the model serving as ``champion`` is loaded from the registry and evaluated on the SAME
   split (same dataset version, same test students), logged as a run of kind ``reevaluation`` tagged with
   the champion's version: the two numbers are comparable, unlike the champion's original metrics.
5. ``register``: the trained run is registered and the ``challenger`` alias points to it (through
   `training.registry.promote`, so the move is in the alias history). ``champion`` never moves here: that
   stays behind ``learnrec promote`` and its guard.

Size: over 600 lines because the five resumable steps share the state file and its recovery rules.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import RetrainError
from training.registry import KIND_REEVALUATION, TAG_REEVALUATION_OF

if TYPE_CHECKING:
    import pyarrow as pa

    from features.experiments import ExperimentConfig
    from features.settings import Settings
    from training.evaluate import EvaluationReport
    from training.pipeline import Prepared
    from training.splits import Split

#: `progress(stage, done, total)` callback.
Progress = Callable[[str, int, int], None]

STEPS: tuple[str, ...] = ("export", "append", "train", "champion", "register")
STATE_VERSION = 1
TAG_RETRAIN = "learnrec.retrain"
REJECTED_FILE = "rejected-events.parquet"
_VERSIONED = re.compile(r"^(?P<stem>.+)-v(?P<n>\d+)$")


@dataclass(frozen=True)
class RetrainOptions:
    """What one retraining does (recorded in the state file; a resumed run keeps them).

    Attributes:
        dataset: base dataset directory.
        events_dir: directory of the exported events Parquet files.
        model: recommender to train (registry name).
        params: its hyper-parameters.
        split: split name.
        split_params: the split's keyword arguments.
        seed: seed of the model and the split.
        ks: cut-offs (first = primary).
        experiment: MLflow experiment.
        export: export the stream first (False: use the files already in `events_dir`).
        group: consumer group of the export.
    """

    dataset: str
    events_dir: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    split: str = "temporal"
    split_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    ks: tuple[int, ...] = (10,)
    experiment: str = "learnrec"
    export: bool = True
    group: str = "export"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ks"] = list(self.ks)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RetrainOptions:
        return cls(**{**values, "ks": tuple(values.get("ks", (10,)))})


@dataclass
class RetrainState:
    """The state file: options, finished steps with their results, and whether the loop is over."""

    path: Path
    id: str
    options: RetrainOptions
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: bool = False
    outcome: str = ""
    started_at: str = ""
    scratch: dict[str, Any] = field(default_factory=dict)  # decisions a step takes before its side effects

    def done(self, step: str) -> bool:
        """Whether `step` finished (in this run or an earlier one)."""
        return step in self.steps

    def save(self) -> None:
        """Write the state file atomically (temporary file, fsync, rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "version": STATE_VERSION,
            "id": self.id,
            "started_at": self.started_at,
            "options": self.options.to_dict(),
            "steps": self.steps,
            "finished": self.finished,
            "outcome": self.outcome,
            "scratch": self.scratch,
        }
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(document, fh, ensure_ascii=False, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> RetrainState | None:
        """The state in `path`, None when there is none.

        Raises:
            RetrainError: the file is not a state file of this version.
        """
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"version {raw.get('version')!r}, expected {STATE_VERSION}")
            return cls(
                path=path,
                id=str(raw["id"]),
                options=RetrainOptions.from_dict(raw["options"]),
                steps=dict(raw["steps"]),
                finished=bool(raw["finished"]),
                outcome=str(raw.get("outcome", "")),
                started_at=str(raw.get("started_at", "")),
                scratch=dict(raw.get("scratch", {})),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RetrainError(
                f"{path} is not a readable retrain state file ({exc}); move it away to start afresh"
            ) from None

    @property
    def work_dir(self) -> Path:
        """Directory of this retraining's side files (rejected events)."""
        return self.path.parent / self.id


def state_path(settings: Settings) -> Path:
    """Default state file: ``<data_dir>/retrain/state.json``."""
    return settings.data_dir / "retrain" / "state.json"


def latest_version(base: Path) -> Path:
    """The newest version of a dataset: ``base`` or its highest ``<base>-v<N>`` sibling.

    Args:
        base: a dataset directory (possibly itself a version).

    Returns:
        The newest existing version (``base`` when it has none).
    """
    stem = _stem(base)
    best, best_n = base, _number(base)
    if base.parent.is_dir():
        for path in base.parent.iterdir():
            m = _VERSIONED.match(path.name)
            if m and m.group("stem") == stem.name and path.is_dir() and int(m.group("n")) > best_n:
                best, best_n = path, int(m.group("n"))
    return best


def _stem(path: Path) -> Path:
    m = _VERSIONED.match(path.name)
    return path.with_name(m.group("stem")) if m else path


def _number(path: Path) -> int:
    m = _VERSIONED.match(path.name)
    return int(m.group("n")) if m else 1


def next_version(base: Path) -> Path:
    """The directory name of the next version of `base` (``<stem>-v<N>``, N one above the newest)."""
    stem = _stem(base)
    return stem.with_name(f"{stem.name}-v{_number(latest_version(base)) + 1}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrainError(f"another `learnrec retrain` is running with {path}; wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class _Context:
    """What the steps share within one process (rebuilt from the state file after a restart)."""

    settings: Settings
    state: RetrainState
    progress: Progress | None
    prepared: Prepared | None = None


def begin(
    path: Path, options: RetrainOptions | None, *, restart: bool = False, given: dict[str, Any] | None = None
) -> RetrainState:
    """The state to work on: the unfinished one in `path`, or a new one with `options`.

    Args:
        path: the state file.
        options: options of a new retraining (None: only resume).
        restart: abandon an unfinished retraining (its state is kept as ``<id>.abandoned.json``).
        given: options the caller set explicitly; resuming with a different value is refused.

    Returns:
        The state (saved).

    Raises:
        RetrainError: nothing to resume and no options, or options that contradict the unfinished run.
    """
    current = RetrainState.load(path)
    if current is not None and not current.finished and not restart:
        recorded = current.options.to_dict()
        clash = {
            k: (v, recorded.get(k))
            for k, v in (given or {}).items()
            if v is not None and _plain(v) != _plain(recorded.get(k))
        }
        if clash:
            what = "; ".join(f"{k}: recorded {old!r}, given {new!r}" for k, (new, old) in clash.items())
            done = ", ".join(current.steps) or "nothing"
            raise RetrainError(
                f"{path} holds an unfinished retraining ({current.id}, done: {done}) started with other "
                f"options ({what}); rerun without them to continue it, or pass --restart"
            )
        return current
    if current is not None:
        suffix = "abandoned" if not current.finished else "done"
        archive = path.parent / "history" / f"{current.id}.{suffix}.json"
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, archive)
    if options is None:
        raise RetrainError("nothing to resume: start a retraining with its options")
    now = datetime.now(UTC)
    state = RetrainState(
        path=path,
        id=now.strftime("%Y%m%dT%H%M%SZ"),
        options=options,
        started_at=now.isoformat(timespec="seconds"),
    )
    state.save()
    return state


def _plain(value: Any) -> Any:
    """JSON round trip, so tuples and lists, paths and strings compare equal."""
    return json.loads(json.dumps(value, default=str))


def run_retrain(state: RetrainState, settings: Settings, progress: Progress | None = None) -> RetrainState:
    """Run the steps not finished yet, saving the state after each.

    Args:
        state: from `begin`.
        settings: the settings (Redis, MLflow, registered model name).
        progress: ``progress(stage, done, total)`` callback.

    Returns:
        The state, finished (``outcome`` says how).

    Raises:
        RetrainError, TrainingError, LearnrecDataError, RedisError, MlflowException: a step failed; the
            steps before it stay recorded and a rerun continues with it.
    """
    if state.finished:
        return state
    ctx = _Context(settings, state, progress)
    steps: dict[str, Callable[[_Context], dict[str, Any]]] = {
        "export": _export,
        "append": _append,
        "train": _train,
        "champion": _champion,
        "register": _register,
    }
    with _locked(state.path):
        for name in STEPS:
            if state.done(name):
                continue
            if progress:
                progress(name, 0, 1)
            result = steps[name](ctx)
            result["done_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            state.steps[name] = result
            if result.get("stop"):
                state.finished = True
                state.outcome = str(result["stop"])
            state.save()
            if progress:
                progress(name, 1, 1)
            if state.finished:
                return state
        state.finished = True
        version = state.steps["register"]["version"]
        state.outcome = f"challenger is v{version}"
        state.save()
    return state


# ----------------------------------------------------------------------------------------------------------
# steps


def _export(ctx: _Context) -> dict[str, Any]:
    options = ctx.state.options
    if not options.export:
        return {"skipped": True}
    from features import keys
    from features.redis_server import connect
    from features.schemas import EVENTS
    from features.streams import export_shards

    client = connect(ctx.settings, bulk=True)
    summary = export_shards(
        client,
        keys.EVENTS_STREAM,
        ctx.settings.redis.shards(),
        options.group,
        Path(options.events_dir),
        progress=ctx.progress,
        schema=EVENTS,
    )
    return {
        "rows": summary.rows,
        "files": len(summary.files),
        "rejected": summary.rejected,
        "last_id": summary.last_id,
    }


def _read_exported(events_dir: Path) -> pa.Table:
    """Every exported event under `events_dir` (an empty table when there are none yet)."""

    from features.errors import DatasetNotFoundError
    from features.schemas import EVENTS
    from training.ab.exposures import read_events

    try:
        table: pa.Table = read_events(events_dir)
    except DatasetNotFoundError:
        return EVENTS.empty_table()
    return table


def _append(ctx: _Context) -> dict[str, Any]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.event_table import rows_where, take_ascending
    from features.ids import arrow_codes, distinct_text, is_in
    from features.stored_events import checked_events
    from features.tables import Dataset, append_events, read_dataset, write_dataset

    state, options = ctx.state, ctx.state.options
    base = Path(options.dataset)
    ds = read_dataset(base)
    exported = _read_exported(Path(options.events_dir))
    total = exported.num_rows
    # the stream is at-least-once: each event id's first row
    _, first = np.unique(arrow_codes(exported["event_id"])[0], return_index=True)
    exported = take_ascending(exported, np.sort(first))
    # the dataset's events scanned for the exported ids (a set of those, not of every event's id)
    held = ds.events["event_id"]
    known_ids = distinct_text(held.filter(pa.array(is_in(held, distinct_text(exported["event_id"])))))
    new = rows_where(exported, ~is_in(exported["event_id"], known_ids))
    already = exported.num_rows - new.num_rows
    no_student = ~is_in(new["student_id"], distinct_text(ds.students["student_id"]))
    no_lecture = ~is_in(new["lecture_id"], distinct_text(ds.lectures["lecture_id"]))
    reason = np.where(
        no_student, "student not in the dataset", np.where(no_lecture, "lecture not in the dataset", "")
    )
    bad = reason != ""
    rejected = rows_where(new, bad).append_column("reason", pa.array(reason[bad].tolist(), pa.string()))
    new = rows_where(new, ~bad)
    result: dict[str, Any] = {
        "base": str(base),
        "exported": total,
        "stream_duplicates": total - exported.num_rows,
        "already_in_dataset": already,
        "appended": new.num_rows,
        "rejected": rejected.num_rows,
    }
    if rejected.num_rows:
        state.work_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(rejected, state.work_dir / REJECTED_FILE)
        result["rejected_file"] = str(state.work_dir / REJECTED_FILE)
    if new.num_rows == 0:
        result["stop"] = (
            f"no new events in {options.events_dir} since {base.name}: nothing to retrain on "
            "(run the service or `learnrec simulate` first)"
        )
        return result
    # the target is chosen once: a rerun after a crash rewrites the same version, never a second one
    target = Path(state.scratch.get("append_target") or next_version(base))
    state.scratch["append_target"] = str(target)
    state.save()
    # the base was checked as it was read and the new rows are checked here (their ids are new, their
    # students and lectures known): the whole table is not checked again
    checked = checked_events(
        f"the exported events in {options.events_dir}",
        new,
        pd.Index(ds.students["student_id"].astype(str)),
        pd.Index(ds.lectures["lecture_id"].astype(str)),
    )
    span = pc.min_max(checked["occurred_at"]).as_py()
    written = ("sizes", "fingerprint", "fingerprint_version", "format")  # write_dataset records them anew
    manifest = {k: v for k, v in ds.manifest.items() if k not in written}
    manifest["lineage"] = [
        *ds.manifest.get("lineage", []),
        {
            "parent": str(base),
            "parent_fingerprint": ds.recorded_fingerprint() or ds.fingerprint(),
            "appended_events": checked.num_rows,
            "first_new_event": span["min"].isoformat(),
            "last_new_event": span["max"].isoformat(),
            "events_dir": options.events_dir,
            "retrain": state.id,
        },
    ]
    appended = Dataset(ds.students, ds.lectures, append_events(ds.events, checked), manifest)
    del ds, held  # (the appended table shares the base's columns: no copy of them)
    write_dataset(appended, target, validate=False, progress=ctx.progress)
    _carry_ground_truth(base, target)
    result["dataset"] = str(target)
    request = new["request_id"]
    tied = pc.and_(pc.is_valid(request), pc.not_equal(pc.fill_null(request, ""), ""))
    result["from_recommendations"] = round(float(pc.mean(tied.cast(pa.float64())).as_py()), 4)
    result["first_new_event"] = manifest["lineage"][-1]["first_new_event"]
    result["last_new_event"] = manifest["lineage"][-1]["last_new_event"]
    return result


def _carry_ground_truth(base: Path, target: Path) -> None:
    """Link (or copy) the synthetic ground truth into the new version; the students did not change."""
    from features.ground_truth import GROUND_TRUTH_DIR

    source = base / GROUND_TRUTH_DIR
    if not source.is_dir():
        return
    tmp = target / f".{GROUND_TRUTH_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)

    def link(src: str, dst: str) -> object:
        try:
            os.link(src, dst)  # the arrays are read-only: a hard link costs no space
        except OSError:
            shutil.copy2(src, dst)
        return dst

    shutil.copytree(source, tmp, copy_function=link)
    final = target / GROUND_TRUTH_DIR
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def split_params(options: RetrainOptions, append: dict[str, Any]) -> dict[str, Any]:
    """The split's keyword arguments; a temporal split without any tests on the new events.

    With no cutoff or quantile given (a test horizon may be), the temporal cutoff falls just before the
    first appended event:
    the models learn from everything the dataset held before, and are compared on what students did
    since, which no model has seen (the champion was trained on an earlier part of the same history).

    Args:
        options: the retraining's options.
        append: the result of the append step (``first_new_event``).

    Returns:
        Keyword arguments of `training.splits.make_split`.
    """
    import pandas as pd

    params = dict(options.split_params)
    if options.split == "new_students":
        params.setdefault("seed", options.seed)
    if options.split == "temporal" and not {"cutoff", "quantile"} & set(params):
        first = pd.Timestamp(append["first_new_event"]) - pd.Timedelta(microseconds=1)
        params["cutoff"] = first.isoformat()
    return params


def _prepared(ctx: _Context) -> Prepared:
    if ctx.prepared is None:
        from training.pipeline import prepare

        options = ctx.state.options
        ctx.prepared = prepare(
            Path(ctx.state.steps["append"]["dataset"]),
            options.split,
            split_params(options, ctx.state.steps["append"]),
        )
    return ctx.prepared


def _client(ctx: _Context) -> Any:
    import logging

    import mlflow

    from training import tracking

    logging.getLogger(mlflow.__name__).setLevel(logging.WARNING)
    return tracking.configure(ctx.settings)


def _finished_run(client: Any, experiment: str, run_name: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def _report_summary(report: EvaluationReport) -> dict[str, Any]:
    k = report.ks[0]
    keys = [f"{m}_at_{k}" for m in ("ndcg", "recall", "precision", "coverage")]
    return {
        "overall": {key: report.overall[key] for key in keys if key in report.overall},
        "by_region": {r: m.get(f"ndcg_at_{k}") for r, m in report.by_region.items()},
        "n_students": report.n_students,
    }


def _train(ctx: _Context) -> dict[str, Any]:
    from training import tracking
    from training.pipeline import fit_evaluate_log
    from training.splits import split_model_params

    state, options = ctx.state, ctx.state.options
    client = _client(ctx)
    run_name = f"{options.model}-{options.split}-retrain-{state.id}"
    existing = _finished_run(client, options.experiment, run_name)
    if existing is not None:  # logged before a crash that kept the state from recording it
        client.set_tag(existing.info.run_id, TAG_RETRAIN, state.id)
        metrics = existing.data.metrics
        return {"run_id": existing.info.run_id, "model": options.model, "recovered": True,
                "overall": {k: v for k, v in metrics.items() if "/" not in k}}  # fmt: skip
    prepared = _prepared(ctx)
    fingerprint, split = prepared.fingerprint, prepared.split
    experiment_id = tracking.ensure_experiment(client, options.experiment, ctx.settings)
    try:
        trained = fit_evaluate_log(
            options.model, split_model_params(options.model, options.params, split), prepared,
            experiment_id=experiment_id, ks=options.ks, seed=options.seed, run_name=run_name,
        )  # fmt: skip
    except ValueError as exc:
        raise RetrainError(str(exc)) from None
    assert trained.run_id is not None and trained.report is not None
    report, fit_seconds = trained.report, trained.fit_seconds
    client.set_tag(trained.run_id, TAG_RETRAIN, state.id)
    return {
        "run_id": trained.run_id,
        "model": options.model,
        "fingerprint": fingerprint,
        "split_params": dict(split.params),
        "fit_seconds": round(fit_seconds, 2),
        **_report_summary(report),
    }


def _champion(ctx: _Context) -> dict[str, Any]:
    from models.loading import load_registered
    from models.ranking import RankingModel
    from training import tracking
    from training.evaluate import evaluate
    from training.registry import CHAMPION, alias_version, candidate

    state, options = ctx.state, ctx.state.options
    client = _client(ctx)
    name = ctx.settings.mlflow.registered_model
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return {"version": None, "note": f"'{name}' has no champion: nothing to compare with"}
    held = candidate(client, name, version)
    run_name = f"champion-v{version}-{options.split}-retrain-{state.id}"
    existing = _finished_run(client, options.experiment, run_name)
    if existing is not None:  # logged before a crash: make sure it carries its tags
        client.set_tag(existing.info.run_id, TAG_REEVALUATION_OF, version)
        client.set_tag(existing.info.run_id, TAG_RETRAIN, state.id)
        metrics = existing.data.metrics
        return {"version": version, "model": held.model, "run_id": existing.info.run_id, "recovered": True,
                "overall": {k: v for k, v in metrics.items() if "/" not in k}}  # fmt: skip
    prepared = _prepared(ctx)
    ds, fingerprint, split = prepared.dataset, prepared.fingerprint, prepared.split
    loaded = load_registered(name, version, ctx.settings.tracking_uri())
    report = evaluate(RankingModel.prepare(loaded), split, ds, options.ks, fingerprint=fingerprint)
    experiment_id = tracking.ensure_experiment(client, options.experiment, ctx.settings)
    logged = tracking.log_evaluation_run(
        experiment_id, kind=KIND_REEVALUATION, name=held.model, report=report, split=split,
        fingerprint=fingerprint, dataset_dir=Path(state.steps["append"]["dataset"]),
        params={"reevaluation_of": version, "original_run": held.run_id}, run_name=run_name,
    )  # fmt: skip
    client.set_tag(logged.run_id, TAG_REEVALUATION_OF, version)
    client.set_tag(logged.run_id, TAG_RETRAIN, state.id)
    result = {"version": version, "model": held.model, "run_id": logged.run_id, **_report_summary(report)}
    note = _overlap_note(held, split)
    if note:
        result["note"] = note
    return result


def _overlap_note(held: Any, split: Split) -> str:
    """A warning when the champion may have been trained on this split's test period."""
    if held.split != "temporal" or split.name != "temporal":
        return (
            f"the champion was evaluated on the {held.split or '?'} split: its training may overlap this "
            f"{split.name} split's test events, so its re-evaluation can be optimistic"
        )
    return ""


def _register(ctx: _Context) -> dict[str, Any]:
    from training.registry import CHALLENGER, promote, register_run

    state = ctx.state
    client = _client(ctx)
    name = ctx.settings.mlflow.registered_model
    run_id = state.steps["train"]["run_id"]
    version = str(register_run(client, run_id, name).version)
    move = promote(client, name, version, CHALLENGER, by="learnrec retrain", settings=ctx.settings)
    return {
        "version": version,
        "alias": CHALLENGER,
        "previous": move.from_version if move else version,
        "moved": move is not None,
    }


# ----------------------------------------------------------------------------------------------------------
# what to put in the experiments file


def experiment_snippet(
    champion: str | None,
    challenger: str,
    region: str,
    share: float,
    start: datetime,
    days: int,
    key: str | None = None,
) -> tuple[str, ExperimentConfig]:
    """YAML for the experiments file that sends `share` of a region's students to the challenger.

    Versions are pinned (not aliases), so a later alias move cannot change an arm in the middle of the
    experiment. The result is validated with the service's own parser.

    Args:
        champion: the champion's version (None: the alias ``champion``).
        challenger: the challenger's version.
        region: region code.
        share: treatment share in (0, 1).
        start: window start (UTC).
        days: window length.
        key: experiment key (default ``retrain-v<challenger>-<region>``).

    Returns:
        (YAML text of one list item under ``experiments:``, the parsed config).
    """
    import yaml

    from features.experiments import parse_experiments

    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    key = key or f"retrain-v{challenger}-{region}"
    end = start + timedelta(days=days)
    treatment = round(share * 100, 2)
    item = {
        "key": key,
        "regions": [region],
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "variants": [
            {"name": "control", "weight": round(100 - treatment, 2), "model": champion or "champion"},
            {"name": "challenger", "weight": treatment, "model": challenger},
        ],
    }
    config = parse_experiments({"experiments": [item]}, "retrain snippet").experiments[0]
    text = yaml.safe_dump([item], allow_unicode=True, sort_keys=False, default_flow_style=None)
    return text, config


def signature_params(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """The entries of `params` that the model's constructor takes (others are dropped).

    Args:
        model: registry name.
        params: candidate keyword arguments (e.g. a champion run's params, JSON text values).

    Returns:
        The accepted ones, JSON text parsed where it parses.
    """
    from models import get_model_class

    accepted = set(inspect.signature(get_model_class(model)).parameters) - {"seed"}
    out = {}
    for key, value in params.items():
        if key in accepted:
            try:
                out[key] = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError:
                out[key] = value
    return out
