"""`learnrec events export`: copy the events or exposures stream to Parquet files, losslessly."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from training.commands.console import fail, progress_bars

app = typer.Typer(no_args_is_help=True)


class StreamName(StrEnum):
    """Streams that can be exported."""

    events = "events"
    exposures = "exposures"


@app.command("export")
def export(
    stream: Annotated[StreamName, typer.Option(help="Stream to export.")] = StreamName.events,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default <data_dir>/exports/<stream>).")
    ] = None,
    group: Annotated[str, typer.Option(help="Consumer group that tracks what was exported.")] = "export",
    batch_size: Annotated[int, typer.Option(min=1, help="Entries per Parquet file.")] = 10_000,
    trim: Annotated[
        bool,
        typer.Option(
            "--trim/--keep",
            help="Afterwards remove entries every consumer group has acknowledged (default), or keep them.",
        ),
    ] = True,
) -> None:
    """Export a Redis stream (every shard of it) to Parquet; entries are acknowledged only once their file
    is on disk, and then removed from the stream unless another consumer group still needs them (the
    files are the record: run it on a schedule, and the streams stay as long as what arrived since the
    last run)."""
    from redis.exceptions import RedisError

    from features import keys
    from features.errors import FeatureStoreError
    from features.redis_server import connect
    from features.schemas import EVENTS
    from features.settings import get_settings
    from features.streams import export_shards

    settings = get_settings()
    directory = out or settings.data_dir / "exports" / stream.value
    if stream is StreamName.exposures:
        from training.ab.exposures import EXPOSURES, from_stream_fields

        schema, decode = EXPOSURES, from_stream_fields
    else:
        schema, decode = EVENTS, None
    try:
        client = connect(settings, bulk=True)
        with progress_bars() as progress:
            summary = export_shards(
                client, keys.stream(stream.value), settings.redis.shards(), group, directory, batch_size,
                progress, schema=schema, decode=decode, trim=trim,
            )  # fmt: skip
    except (FeatureStoreError, RedisError, OSError) as exc:
        raise fail(f"{stream.value} export: {exc}") from None
    parts = [f"exported {summary.rows:,} {stream.value} to {len(summary.files)} file(s) in {directory}"]
    if summary.rejected:
        parts.append(f"{summary.rejected:,} undecodable entries kept in *.rejected.jsonl")
    if summary.skipped:
        parts.append(f"{summary.skipped:,} already exported by an interrupted run (acknowledged)")
    if trim:
        parts.append(f"{summary.trimmed:,} entries trimmed from the stream")
    typer.echo("; ".join(parts) + f" ({summary.seconds:.1f} s)")
