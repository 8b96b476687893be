"""`learnrec features materialize | seed | redis | cluster`: model state and online state in Redis."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from features.profile import from_table as profile_rows
from training.commands.console import ProgressFn, fail, progress_bars

if TYPE_CHECKING:
    from collections.abc import Sequence

    from features.store import FeatureStore, MaterializeSummary
    from models.loading import LoadedModel

app = typer.Typer(no_args_is_help=True)

#: Students whose state is computed per `Recommender.student_state` call (bounded memory per call).
STATE_CHUNK = 50_000
#: Students read from Redis per pipeline when building candidate lists.
CANDIDATE_CHUNK = 1_000


def student_states(
    loaded: LoadedModel, progress: ProgressFn | None = None, chunk: int = STATE_CHUNK
) -> tuple[tuple[str, ...], Any]:
    """All students of a loaded model and their state rows, computed in chunks.

    Args:
        loaded: the registered model version.
        progress: ``progress(stage, done, total)`` callback.
        chunk: students per `student_state` call.

    Returns:
        (student ids, float32 array (n, state_width)).
    """
    import numpy as np

    recommender = loaded.recommender
    ids = recommender.students.ids
    width = recommender.state_width()
    states = np.zeros((len(ids), width), dtype=np.float32)
    if width:
        for start in range(0, len(ids), chunk):
            rows = np.arange(start, min(start + chunk, len(ids)), dtype=np.int32)
            states[rows] = recommender.student_state(rows)
            if progress:
                progress("compute", int(rows[-1]) + 1, len(ids))
    return ids, states


def student_candidates(
    loaded: LoadedModel, store: FeatureStore, ids: Sequence[str], progress: ProgressFn | None = None
) -> list[bytes | None]:
    """Stage 1 of the two-stage ranking (`models.candidates`) for every student of `ids`: each student's
    candidate list from their state in Redis now (profile, history, recent lectures), stored form.

    Args:
        loaded: the registered model version.
        store: the feature store holding the students' state.
        ids: the students.
        progress: ``progress(stage, done, total)`` callback.

    Returns:
        Per student, the list's bytes; None when the model cannot score the student.
    """
    from models.ranking import RankingModel

    ranker = RankingModel.prepare(loaded)
    out: list[bytes | None] = []
    for start in range(0, len(ids), CANDIDATE_CHUNK):
        chunk = list(ids[start : start + CANDIDATE_CHUNK])
        for sid, record in zip(chunk, store.read_students(chunk), strict=True):
            listed = ranker.candidates(sid, record)
            out.append(listed.to_bytes() if listed is not None else None)
        if progress:
            progress("candidates", len(out), len(ids))
    return out


def materialize_loaded(
    loaded: LoadedModel, client: Any, progress: ProgressFn | None = None
) -> MaterializeSummary:
    """Materialise a loaded model version's per-student state and candidate lists, and switch it on (used
    by the CLI and demo). The lists are built from the students' state in Redis now: materialise after
    seeding.

    Args:
        loaded: the registered model version.
        client: Redis client (a bulk client: `features.redis_server.connect(settings, bulk=True)`).
        progress: ``progress(stage, done, total)`` callback.

    Returns:
        The summary of `FeatureStore.materialize`.
    """
    from features.store import FeatureStore

    store = FeatureStore(client)
    ids, states = student_states(loaded, progress)
    listed = student_candidates(loaded, store, ids, progress)
    return store.materialize(loaded.model_name, loaded.version, ids, states, progress, candidates=listed)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


@app.command("materialize")
def materialize(
    alias: Annotated[str, typer.Option(help="Alias of the registered model to materialise.")] = "champion",
    version: Annotated[
        str | None, typer.Option(help="Version number to materialise instead of the alias.")
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", help="Registered model (default settings.mlflow.registered_model)."),
    ] = None,
) -> None:
    """Write the per-student state of a registered model version into Redis and switch it on."""
    from mlflow.exceptions import MlflowException
    from redis.exceptions import RedisError

    from features.errors import FeatureStoreError
    from features.redis_server import connect
    from features.settings import get_settings
    from models.errors import ModelFormatError, RegisteredModelNotFoundError
    from models.loading import load_registered

    settings = get_settings()
    name = model_name or settings.mlflow.registered_model
    target = version or alias
    started = time.perf_counter()
    try:
        loaded = load_registered(name, target, settings.tracking_uri())
    except (RegisteredModelNotFoundError, ModelFormatError) as exc:
        raise fail(str(exc), 2) from None
    except MlflowException as exc:
        raise fail(f"MLflow registry at {settings.tracking_uri()}: {exc.message}") from None
    try:
        client = connect(settings, bulk=True)
        with progress_bars() as progress:
            summary = materialize_loaded(loaded, client, progress)
    except (FeatureStoreError, RedisError, OSError) as exc:
        raise fail(f"Redis: {exc}") from None
    except ValueError as exc:
        raise fail(f"{name} v{loaded.version}: {exc}", 2) from None
    seconds = time.perf_counter() - started
    label = f"{name} v{summary.version}" + (f" ({loaded.alias})" if loaded.alias else "")
    if summary.previous_version == summary.version:
        memory = f"same version rewritten in place; Redis uses {_mib(summary.memory_after_bytes)}"
    else:
        memory = (
            f"Redis +{_mib(summary.memory_delta_bytes)} ({summary.bytes_per_student:.0f} B/student), "
            f"{_mib(summary.memory_after_bytes)} in use after clean-up"
        )
    typer.echo(
        f"materialised {label}: {summary.students:,} students x {summary.state_width} float32 "
        f"+ candidate lists in "
        f"{summary.write_seconds:.1f} s (total {seconds:.1f} s with loading); {memory}; "
        f"active {summary.previous_version or 'none'} -> {summary.version}; "
        f"{summary.removed_keys:,} keys of older versions removed"
    )


@app.command("redis")
def redis_status(
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the embedded redis-server (it saves first).")
    ] = False,
) -> None:
    """Show the Redis in use (embedded server: pid, port, data dir) or stop the embedded server."""
    from features.redis_server import read_server_file, running_embedded, stop_embedded
    from features.settings import get_settings

    settings = get_settings()
    if settings.redis.url:
        kind = "Redis Cluster" if settings.redis.cluster else "Redis"
        typer.echo(f"{kind} at {settings.redis.url} (REDIS_URL); no embedded server is used")
        if stop:
            raise fail("--stop only stops the embedded server; this Redis is not ours to stop", 2)
        return
    directory = settings.redis_dir
    if stop:
        recorded = read_server_file(directory)
        if stop_embedded(directory):
            typer.echo(f"stopped embedded redis-server pid {recorded.pid if recorded else '?'} ({directory})")
        else:
            typer.echo(f"no embedded redis-server running for {directory}")
        return
    server = running_embedded(directory)
    if server is None:
        typer.echo(
            f"embedded redis-server not running ({directory}); it starts with the first command needing it"
        )
    else:
        typer.echo(f"embedded redis-server pid {server.pid} at {server.url} (data {directory})")


@app.command("cluster")
def cluster(
    stop: Annotated[bool, typer.Option("--stop", help="Stop every node (each saves first).")] = False,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Cluster directory (default <data_dir>/redis-cluster).")
    ] = None,
    primaries: Annotated[int, typer.Option(min=3, help="Primaries of a new cluster.")] = 3,
    replicas: Annotated[int, typer.Option(min=0, help="Replicas per primary of a new cluster.")] = 1,
) -> None:
    """Start (or reuse, or bring back) a local Redis Cluster of embedded servers, or stop it; prints the
    settings that point learnrec at it."""
    from features.cluster_local import read_cluster, start_cluster, stop_cluster
    from features.settings import get_settings

    root = directory or get_settings().data_dir / "redis-cluster"
    if stop:
        stopped = stop_cluster(root)
        typer.echo(
            f"stopped {stopped} node(s) of the local cluster in {root}"
            if stopped
            else f"no node running in {root}"
        )
        return
    known = read_cluster(root)
    running = start_cluster(root, primaries=primaries, replicas=replicas)
    verb = "running" if known is not None else "formed"
    typer.echo(
        f"local Redis Cluster {verb} in {root}: {running.primaries} primaries, "
        f"{len(running.nodes) - running.primaries} replicas; primaries on ports "
        f"{', '.join(str(p) for p in running.primaries_now())}"
    )
    typer.echo(f"export LEARNREC_REDIS__URL={running.url} LEARNREC_REDIS__CLUSTER=true")
    if len(running.nodes) > running.primaries:
        typer.echo("export LEARNREC_REDIS__REPLICA_ACKS=1  # POST /events waits for a replica")


@dataclass(frozen=True)
class SeedSummary:
    """What `seed_partitioned` wrote.

    Attributes:
        students: profiles written (every student of the dataset).
        histories: students whose history was written (those with events).
        events: events read.
        partitions: groups of students the events were seeded in.
        seconds: wall time, reading and validating included.
    """

    students: int
    histories: int
    events: int
    partitions: int
    seconds: float


def seed_partitioned(
    dataset_dir: Any,
    client: Any,
    progress: ProgressFn | None = None,
    *,
    partition_events: int | None = None,
    partitions: int | None = None,
) -> SeedSummary:
    """Load a dataset's profiles and event history into the online state, a group of students at a time.

    The events are read with pyarrow and checked over the whole file before anything is written
    (`features.tables.read_partitioned`); then the profiles are stored and each partition of students is
    taken out as an Arrow table (validated) and seeded on its own, so memory is bounded by the partition
    size, not by the dataset. The Redis state is the one `FeatureStore.seed_history` leaves with all
    events at once.

    Args:
        dataset_dir: dataset directory.
        client: Redis client (a bulk client).
        progress: ``progress(stage, done, total)`` callback (one bar per partition).
        partition_events: events per partition (default `features.tables.PARTITION_EVENTS`).
        partitions: the number of partitions instead.

    Returns:
        Counts and time.

    Raises:
        LearnrecDataError: the dataset is missing or breaks its schema (a partition's errors name the
            rows of the events file; partitions before it are already seeded).
    """
    from features.store import FeatureStore
    from features.tables import PARTITION_EVENTS, read_partitioned

    started = time.perf_counter()
    dataset = read_partitioned(
        dataset_dir, partition_events=partition_events or PARTITION_EVENTS, partitions=partitions
    )
    store = FeatureStore(client)
    n_students = store.put_profiles(profile_rows(dataset.students))
    if progress:
        progress("profiles", n_students, n_students)
    histories = 0
    for part in dataset.partitions():
        histories += store.seed_events(part.events, progress, label=f"partition {part.number}/{part.count}")
    return SeedSummary(
        n_students, histories, dataset.n_events, dataset.n_partitions, time.perf_counter() - started
    )


def seed_dataset(dataset_dir: Any, client: Any, progress: ProgressFn | None = None) -> tuple[int, int]:
    """Load a dataset's profiles and event history into the online state (used by the CLI and demo).

    Args:
        dataset_dir: dataset directory (`features.tables.read_partitioned`).
        client: Redis client (a bulk client).
        progress: ``progress(stage, done, total)`` callback.

    Returns:
        (students, events) written.
    """
    summary = seed_partitioned(dataset_dir, client, progress)
    return summary.students, summary.events


@app.command("seed")
def seed(
    dataset: Annotated[
        str | None, typer.Option(help="Dataset directory (default <data_dir>/datasets/synthetic).")
    ] = None,
    partition_events: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Events per partition: students are seeded in groups holding about this many events "
            "(bounds memory; default 1,000,000).",
        ),
    ] = None,
) -> None:
    """Load a dataset's student profiles and event history into the online state in Redis."""
    from pathlib import Path

    from redis.exceptions import RedisError

    from features.errors import LearnrecDataError
    from features.redis_server import connect
    from features.settings import get_settings

    settings = get_settings()
    directory = Path(dataset) if dataset else settings.datasets_dir / "synthetic"
    try:
        client = connect(settings, bulk=True)
        with progress_bars() as progress:
            summary = seed_partitioned(directory, client, progress, partition_events=partition_events)
    except LearnrecDataError as exc:
        raise fail(str(exc), 2) from None
    except RedisError as exc:
        raise fail(f"Redis is not reachable: {exc}") from None
    typer.echo(
        f"seeded the online state of {summary.students:,} students ({summary.histories:,} with a history) "
        f"from {summary.events:,} events of {directory} in {summary.partitions:,} partition(s) "
        f"in {summary.seconds:.1f} s"
    )
