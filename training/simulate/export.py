"""The streams of an HTTP run: marking them, exporting a run's exposures and events to Parquet."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.simulate.config import Progress

if TYPE_CHECKING:
    pass


def stream_group(run: str) -> str:
    """Consumer group that exports one run's stream entries."""
    return f"simulate-{run}"


def mark_streams(client: Any, run: str, shards: int = 1) -> dict[str, str]:
    """Create the run's consumer groups at the current end of the events and exposures streams (of each
    of their `shards`).

    The export of the run then holds exactly what arrived during the run (other traffic of the same
    period included). A group left by an earlier run of the same name is moved to the end.

    Args:
        client: Redis client (bytes responses).
        run: run name.
        shards: ``redis.stream_shards`` in force.

    Returns:
        Stream (shard) key as text -> id the group starts after.
    """
    from redis.exceptions import ResponseError

    out = {}
    group = stream_group(run)
    for stream in _shard_keys(shards):
        last = client.xrevrange(stream, count=1)
        start = last[0][0].decode() if last else "0-0"
        try:
            client.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            client.xgroup_setid(stream, group, id=start)
        out[stream.decode()] = start
    return out


def _shard_keys(shards: int) -> list[bytes]:
    from features import keys

    return [k for s in (keys.EVENTS_STREAM, keys.EXPOSURES_STREAM) for k in keys.stream_shards(s, shards)]


def set_aside_previous_export(out_dir: Path, now: datetime | None = None) -> Path | None:
    """Move the export of an earlier run of the same name aside, so a run's directory holds that run only.

    A rerun with the same ``--run`` (the demo prints one fixed command) would otherwise add its files to
    the earlier run's, and the report read from the directory would mix both. Nothing is deleted.

    Args:
        out_dir: the run's export directory.
        now: time stamp of the new name (default now).

    Returns:
        Where the earlier export went (``<name>.before-<UTC time>`` beside it), or None when there was none.
    """
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return None
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    aside = out_dir.with_name(f"{out_dir.name}.before-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out_dir.with_name(f"{out_dir.name}.before-{stamp}-{n}")
    out_dir.rename(aside)
    return aside


@dataclass(frozen=True)
class RunExport:
    """Where an HTTP run's streams were exported."""

    events_dir: Path
    exposures_dir: Path
    events: int
    exposures: int
    rejected: int


def export_run(
    client: Any,
    run: str,
    out_dir: Path,
    *,
    expect_exposures: int = 0,
    wait_seconds: float = 10.0,
    progress: Progress | None = None,
    clock: Mapping[str, datetime] | None = None,
    shards: int = 1,
) -> RunExport:
    """Export the run's events and exposures (`features.streams.export_stream`) and drop its groups.

    Exposures are written by the service as it answers; the export waits up to `wait_seconds` for
    `expect_exposures` of them before it stops.

    Args:
        client: Redis client (bulk).
        run: run name (`mark_streams` created its groups).
        out_dir: export directory (``events/`` and ``exposures/`` below it).
        expect_exposures: exposures the run should have produced.
        wait_seconds: how long to wait for late exposures.
        progress: ``progress(stage, done, total)`` callback.
        clock: request id -> simulated time of the visit (`SimResult.clock`). The service stamps an
            exposure with ITS clock, the wall clock, while the simulated events carry simulated times;
            with ``clock`` each exposure's ``shown_at`` is its visit's simulated time, so exposures and
            events share one clock (the attribution window, daily looks and time charts need that).
        shards: ``redis.stream_shards`` in force (`mark_streams` was given the same).

    Returns:
        Directories and row counts.
    """
    from features import keys
    from features.schemas import EVENTS
    from features.streams import export_shards
    from training.ab.exposures import EXPOSURES, from_stream_fields

    decode = from_stream_fields
    if clock is not None:
        sim = dict(clock)

        def decode(fields: Mapping[Any, Any]) -> dict[str, object]:
            record = from_stream_fields(fields)
            at = sim.get(str(record.get("request_id")))
            return record if at is None else {**record, "shown_at": at}

    group = stream_group(run)
    events_dir, exposures_dir = out_dir / "events", out_dir / "exposures"
    ev = export_shards(
        client, keys.EVENTS_STREAM, shards, group, events_dir, progress=progress, schema=EVENTS
    )
    rejected = ev.rejected
    exposures = 0
    deadline = time.monotonic() + wait_seconds
    while True:
        ex = export_shards(
            client, keys.EXPOSURES_STREAM, shards, group, exposures_dir, progress=progress,
            schema=EXPOSURES, decode=decode,
        )  # fmt: skip
        exposures += ex.rows
        rejected += ex.rejected
        if exposures >= expect_exposures or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for stream in _shard_keys(shards):
        client.xgroup_destroy(stream, group)  # a finished run's group must not hold back stream trimming
    return RunExport(events_dir, exposures_dir, ev.rows, exposures, rejected)
