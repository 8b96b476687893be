"""Redis streams of events and exposures: append, and export to Parquet through a consumer group, losslessly.

`export_stream` reads a stream through a consumer group and writes each batch to one Parquet file named
after the range of stream ids it holds (``<name>-<first id>-<last id>.parquet``, ids as ``ms-seq``). A
batch is written to a temporary file, fsynced, renamed into place (and the directory fsynced), and only
then acknowledged with XACK. A crash at any point loses nothing and duplicates nothing:

* before the rename: the temporary file is deleted on the next run and the entries, still pending in the
  group, are read again (pending entries are read first);
* after the rename but before the XACK: the next run reads the entries again as pending, sees that their
  ids are not above the highest id already in a file, and acknowledges them without writing them again.

Entries that cannot be decoded (a field missing or malformed) are not dropped: they go, with the reason,
to ``<name>-<first id>-<last id>.rejected.jsonl`` (written before the batch's Parquet file) and are
acknowledged with it. One exporter per stream and output directory at a time (a file lock enforces it on
one host).

Size: over 600 lines because appending and exporting share the streams' wire format and the crash-safety
argument above, which is easier to check with the code that implements it beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from features.durable import fsync_dir
from features.errors import FeatureStoreError, SchemaError

if TYPE_CHECKING:
    import pyarrow as pa

#: `progress(stage, done, total)` callback; ``total`` 0 = unknown.
Progress = Callable[[str, int, int], None]
#: Decodes one stream entry's fields into a row of the export schema (raises `SchemaError` if it cannot).
Decoder = Callable[[Mapping[bytes, bytes]], Mapping[str, object]]
#: Called after a batch file is fsynced (``"written"``, temporary path) and after it is renamed into place
#: (``"renamed"``, final path, before XACK); used to test crashes at those points.
CommitHook = Callable[[str, Path], None]

DEFAULT_GROUP = "export"
DEFAULT_CONSUMER = "exporter"
DEFAULT_BATCH = 10_000
LOCK_FILE = ".export.lock"

StreamId = tuple[int, int]


@dataclass
class ExportSummary:
    """What one `export_stream` run did.

    Attributes:
        stream: the stream key.
        group: the consumer group.
        files: Parquet files written by this run.
        rows: rows written to them.
        rejected: entries that could not be decoded (written to ``*.rejected.jsonl``).
        skipped: entries already in a file from an earlier, interrupted run (acknowledged, not rewritten).
        first_id: first stream id written (None when nothing was).
        last_id: last stream id written or acknowledged.
        seconds: wall time.
        trimmed: entries removed from the stream (``trim=True``).
    """

    stream: str
    group: str
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    rejected: int = 0
    skipped: int = 0
    first_id: str | None = None
    last_id: str | None = None
    seconds: float = 0.0
    trimmed: int = 0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def parse_id(value: bytes | str) -> StreamId:
    """A stream id ``"ms-seq"`` as a comparable tuple.

    Args:
        value: the id.

    Returns:
        ``(ms, seq)``.
    """
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def format_id(value: StreamId) -> str:
    """The ``"ms-seq"`` text of a stream id tuple."""
    return f"{value[0]}-{value[1]}"


#: Appends records to the stream KEYS[1]; ARGV holds each record as its field count (2 x fields) followed
#: by its fields and values. Returns the entry ids in order.
APPEND_SCRIPT = """
local ids, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return ids
"""
_APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode("ascii")).hexdigest()
#: Most records per script call (Redis runs a script alone: keep each call around a millisecond).
APPEND_CHUNK = 500
#: The start of `append`'s script call for one key (`append_packed`): command, script digest, one key.
_EVALSHA_APPEND = b"$7\r\nEVALSHA\r\n$40\r\n" + _APPEND_SHA.encode("ascii") + b"\r\n$1\r\n1\r\n"


def append(
    client: Any, stream: bytes | str, records: Iterable[Mapping[str, str | bytes | int | float]]
) -> list[bytes]:
    """XADD records to a stream, up to `APPEND_CHUNK` records per Redis call.

    One EVALSHA of a small script per chunk instead of a pipeline of XADDs: the arguments go as one flat
    list (packed in C by hiredis), and the reply is one array. This is the service's exposure writer's
    whole Redis cost, so it counts: about half the client CPU per record of a pipeline of XADDs.

    Args:
        client: Redis client (standalone or cluster: the one key routes the call).
        stream: stream key (`features.keys.EVENTS_STREAM`, `features.keys.EXPOSURES_STREAM`).
        records: field -> value mappings (values as redis-py encodes them: str as UTF-8, numbers as text).

    Returns:
        The ids given to the records, in order.

    Raises:
        redis.exceptions.ResponseError: a record Redis refuses (no fields): the records before it in its
            chunk, and the earlier chunks, are written.
    """
    ids: list[bytes] = []
    args: list[Any] = []
    count = 0
    for record in records:
        args.append(2 * len(record))
        for pair in record.items():
            args.extend(pair)
        count += 1
        if count == APPEND_CHUNK:
            ids += _append_call(client, stream, args)
            args, count = [], 0
    if count:
        ids += _append_call(client, stream, args)
    return ids


class PackedRecord(NamedTuple):
    """A stream record encoded when it is made, so that whoever writes it only concatenates bytes.

    Attributes:
        shard_key: what picks the record's shard of a sharded stream (the student id).
        n_fields: its number of fields.
        body: its fields and values in order, each a RESP bulk string (`pack_pairs`).
    """

    shard_key: str
    n_fields: int
    body: bytes


def bulk(value: str | bytes) -> bytes:
    """One RESP bulk string (text as UTF-8)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


def pack_pairs(pairs: Iterable[tuple[str, str]]) -> tuple[int, bytes]:
    """(number of pairs, their fields and values as RESP bulk strings), encoded in C by hiredis."""
    import hiredis

    flat = tuple(x for pair in pairs for x in pair)
    if not flat:
        return 0, b""
    packed: bytes = hiredis.pack_command(flat)  # type: ignore[arg-type]  # an array header, then bulk strings
    return len(flat) // 2, packed[packed.index(b"\r\n") + 2 :]


def pack_record(shard_key: str, fields: Mapping[str, str]) -> PackedRecord:
    """`fields` as a `PackedRecord`."""
    n, body = pack_pairs(fields.items())
    return PackedRecord(shard_key, n, body)


def unpack_record(record: PackedRecord) -> dict[str, str]:
    """The fields of a `PackedRecord` (inverse of `pack_record`)."""
    import hiredis

    reader = hiredis.Reader(encoding="utf-8")
    reader.feed(b"*%d\r\n" % (2 * record.n_fields) + record.body)
    flat = reader.gets()
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def append_packed(client: Any, stream: bytes | str, records: Sequence[PackedRecord]) -> None:
    """`append` of packed records: the script calls are assembled from their bytes (`packed_appends`)
    and sent as they are over one of a standalone client's connections (no per-value work in Python: the
    service's exposure writer writes every answer's record, and encoding each value took most of its
    CPU). Through a Redis Cluster client, which routes by key, the records are unpacked and go through
    `append`.

    Raises:
        redis.exceptions.RedisError: the call failed (some chunks may be written: at least once, as
            `append`).
    """
    from features.store import _is_cluster

    if _is_cluster(client):
        append(client, stream, [unpack_record(r) for r in records])
        return
    for payload in packed_appends(stream, records):
        _send_packed(client, payload)


def packed_appends(stream: bytes | str, records: Sequence[PackedRecord]) -> list[bytes]:
    """The RESP-encoded script calls (one per `APPEND_CHUNK` records) that append `records` to `stream`,
    joined from the records' bytes; each replies with the ids given. The script must be loaded
    (`APPEND_SCRIPT`): a server that lacks it answers NOSCRIPT."""
    head = _EVALSHA_APPEND + bulk(stream)
    payloads = []
    for start in range(0, len(records), APPEND_CHUNK):
        chunk = records[start : start + APPEND_CHUNK]
        n_args = 4 + sum(1 + 2 * r.n_fields for r in chunk)
        parts = [b"%b%b" % (bulk(b"%d" % (2 * r.n_fields)), r.body) for r in chunk]
        payloads.append(b"".join([b"*%d\r\n" % n_args, head, *parts]))
    return payloads


def _send_packed(client: Any, payload: bytes) -> None:
    from redis.exceptions import NoScriptError

    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        try:
            connection.send_packed_command([payload])
            connection.read_response()
        except NoScriptError:  # first call on this server, or SCRIPT FLUSH
            client.script_load(APPEND_SCRIPT)
            connection.send_packed_command([payload])
            connection.read_response()
    except BaseException:
        connection.disconnect()  # never hand back a connection with a reply left unread
        raise
    finally:
        pool.release(connection)


def _append_call(client: Any, stream: bytes | str, args: list[Any]) -> list[bytes]:
    from redis.exceptions import NoScriptError

    try:
        reply = client.evalsha(_APPEND_SHA, 1, stream, *args)
    except NoScriptError:  # first call on this server, or SCRIPT FLUSH, or a new cluster node
        client.script_load(APPEND_SCRIPT)
        reply = client.evalsha(_APPEND_SHA, 1, stream, *args)
    return [x if isinstance(x, bytes) else str(x).encode() for x in reply]


#: Appends each record to the stream KEYS[1] once: KEYS[1 + i] is record i's id marker; ARGV = marker TTL
#: (s), the call's token, then per record its digest, field count (2 x fields) and fields. A record whose
#: marker is absent is XADDed and its marker set to "<token>|<digest>" (after the XADD: a failed XADD
#: leaves no marker). Check, XADD and marker are one atomic script, and its answer for a record depends
#: only on the marker: the same call run again (redis-py resends a command whose reply timed out) finds
#: its own token and answers 1 again without appending. Returns per record 1 appended by this call, 0
#: already there with the same digest (a resend), 2 already there with another digest (the id was reused).
#: A record found already there has its marker written again, unchanged: the call then always writes, so a
#: WAIT after it (`append_once` with ``replicas``) covers the earlier call's append too (a primary
#: replicates in order), where a call that wrote nothing would be acknowledged at once.
_APPEND_ONCE_LUA = """
local ttl, token = ARGV[1], ARGV[2]
local out, a = {}, 3
for i = 2, #KEYS do
  local digest, n = ARGV[a], tonumber(ARGV[a + 1])
  local seen = redis.call('GET', KEYS[i])
  if not seen then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, a + 2, a + 1 + n))
    redis.call('SET', KEYS[i], token .. '|' .. digest, 'EX', ttl)
    out[i - 1] = 1
  elseif seen == token .. '|' .. digest then
    redis.call('SET', KEYS[i], seen, 'KEEPTTL')
    out[i - 1] = 1
  elseif string.sub(seen, -(#digest + 1)) == '|' .. digest then
    redis.call('SET', KEYS[i], seen, 'KEEPTTL')
    out[i - 1] = 0
  else
    out[i - 1] = 2
  end
  a = a + 2 + n
end
return out
"""
_APPEND_ONCE_SHA = hashlib.sha1(_APPEND_ONCE_LUA.encode("ascii")).hexdigest()
#: `append_once` outcomes per record.
APPENDED, ALREADY_APPENDED, ID_REUSED = 1, 0, 2


def record_digest(fields: Mapping[str, str]) -> str:
    """A short digest of a record's fields and values (in order): what makes two sends the same record.

    Args:
        fields: field -> value, all text.

    Returns:
        16 hex digits.
    """
    h = hashlib.blake2b(digest_size=8)
    for name, value in fields.items():
        h.update(name.encode("utf-8") + b"\x1f" + value.encode("utf-8") + b"\x1e")
    return h.hexdigest()


def append_once(
    client: Any,
    stream: bytes,
    records: Sequence[tuple[bytes, Mapping[str, str]]],
    *,
    ttl_seconds: int,
    token: str | None = None,
    replicas: int = 0,
    replica_timeout_ms: int = 25,
) -> list[int]:
    """XADD each record unless a record with the same id was appended within `ttl_seconds`.

    Idempotent by construction: the id marker and the XADD happen in one Lua script, so neither a
    resent command (redis-py retries on timeouts), nor a request sent again, nor concurrent senders of
    the same record can append it twice. Each marker must share the stream's slot (`features.keys`
    builds it with the stream key as its hash tag), so one script call is legal in a Redis Cluster too.

    Args:
        client: Redis client (standalone or cluster).
        stream: stream key.
        records: (id marker key, fields) per record; fields are text.
        ttl_seconds: how long a marker (the memory of an id) lives.
        token: identifies this call (default: a random one); a call resent with the same token gets the
            same answers.
        replicas: after each chunk, wait (Redis ``WAIT``, on the connection that ran the script, so it
            covers that write) until this many replicas hold it; 0 = do not wait.
        replica_timeout_ms: how long ``WAIT`` waits.

    Returns:
        Per record `APPENDED` (by this call), `ALREADY_APPENDED` (same fields: a resend) or `ID_REUSED`
        (the id was appended with other fields; nothing written).

    Raises:
        ReplicaAckError: fewer than `replicas` acknowledged a chunk in time (it is written on the primary
            and may or may not survive a failover: send the same records again, they are not doubled).
        redis.exceptions.ResponseError: Redis refused a record (no fields, the key is no stream): the
            records before it in its chunk are appended and marked, it and those after are not.
    """
    import secrets

    from redis.exceptions import NoScriptError

    token = token or secrets.token_hex(8)
    out: list[int] = []
    for start in range(0, len(records), APPEND_CHUNK):
        chunk = records[start : start + APPEND_CHUNK]
        markers = [marker for marker, _ in chunk]
        args: list[Any] = [str(int(ttl_seconds)), token]
        for _, fields in chunk:
            args += [record_digest(fields), str(2 * len(fields))]
            for pair in fields.items():
                args.extend(pair)
        call = [_APPEND_ONCE_SHA, 1 + len(markers), stream, *markers, *args]
        if replicas:
            reply = _evalsha_acked(client, stream, call, replicas, replica_timeout_ms)
        else:
            try:
                reply = client.evalsha(*call)
            except NoScriptError:  # the script did not run: loading it and calling again is safe
                client.script_load(_APPEND_ONCE_LUA)
                reply = client.evalsha(*call)
        out += [int(x) for x in reply]
    return out


def _evalsha_acked(client: Any, key: bytes, call: list[Any], replicas: int, timeout_ms: int) -> Any:
    """EVALSHA then ``WAIT replicas timeout_ms`` in one pipeline on the key's node connection.

    WAIT counts the replicas holding every write of ITS connection, so both must go through the same
    connection: on a cluster, a pipeline of the node's own client (the cluster pipeline refuses
    EVALSHA). A stale slot map (the node died, or moved the slot) is refreshed and the call sent once
    more: the script answers a resend of the same token the same way.
    """
    from redis.exceptions import AskError, ClusterDownError, ConnectionError, NoScriptError, TimeoutError

    from features.errors import ReplicaAckError

    for attempt in (1, 2):
        node = _node_client(client, key)
        try:
            try:
                reply, acked = _pipe_acked(node, call, replicas, timeout_ms)
            except NoScriptError:
                node.script_load(_APPEND_ONCE_LUA)
                reply, acked = _pipe_acked(node, call, replicas, timeout_ms)
        except (ConnectionError, TimeoutError, AskError, ClusterDownError) as exc:
            if attempt == 2 or node is client:
                raise
            try:
                client.nodes_manager.initialize()  # the cluster's current slot owners
            except Exception:  # no node answers: the caller's next call tries again
                raise exc from None
            continue
        if int(acked) < replicas:
            raise ReplicaAckError(
                f"{int(acked)} of {replicas} replica(s) acknowledged the write within {timeout_ms} ms; "
                "it is not reported as stored (send it again: it is not doubled)"
            )
        return reply
    raise AssertionError("unreachable")  # pragma: no cover


def _node_client(client: Any, key: bytes) -> Any:
    """The client of the node serving `key` (a cluster's node), or `client` itself (a single Redis)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        if node is None:
            from redis.exceptions import ClusterDownError

            raise ClusterDownError(f"no node serves the slot of {key!r}")
        return client.get_redis_connection(node)
    return client


def _pipe_acked(node: Any, call: list[Any], replicas: int, timeout_ms: int) -> tuple[Any, Any]:
    pipe = node.pipeline(transaction=False)
    pipe.evalsha(*call)
    pipe.execute_command("WAIT", replicas, timeout_ms)
    reply, acked = pipe.execute()
    return reply, acked


# -- decoding --------------------------------------------------------------------------------------------


def _convert(kind: pa.DataType, text: str, nullable: bool, column: str) -> object:
    import pyarrow as pa  # here, not at module level: the service appends events without pyarrow

    if text == "" and nullable and not pa.types.is_string(kind):
        return None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return None if (text == "" and nullable) else text
    if pa.types.is_floating(kind):
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{value} is not finite")
        return value
    if pa.types.is_integer(kind):
        return int(text)
    if pa.types.is_boolean(kind):
        if text.lower() in ("1", "true"):
            return True
        if text.lower() in ("0", "false"):
            return False
        raise ValueError(f"{text!r} is not a boolean")
    if pa.types.is_timestamp(kind):
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        value = json.loads(text)
        if not isinstance(value, list):
            raise ValueError("not a JSON array")
        return value
    return text


def record_decoder(schema: pa.Schema, source: str = "stream") -> Decoder:
    """A decoder of stream entries whose fields are the schema's columns, as text.

    Text becomes the column's type: numbers parsed, timestamps from ISO 8601 (naive = UTC), lists from
    JSON arrays; an empty string is null in a nullable column. A missing non-nullable field, or a value
    that does not parse, raises `SchemaError` naming the field.

    Args:
        schema: the export schema.
        source: name used in error messages.

    Returns:
        The decoder.
    """
    columns = [(f.name, f.name.encode(), f.type, f.nullable) for f in schema]

    def decode(fields: Mapping[bytes, bytes]) -> dict[str, object]:
        row: dict[str, object] = {}
        for name, raw_name, kind, nullable in columns:
            raw = fields.get(raw_name)
            if raw is None:
                raw = fields.get(name)  # type: ignore[call-overload]
            if raw is None:
                if not nullable:
                    raise SchemaError(source, name, [], "field missing from the entry")
                row[name] = None
                continue
            try:
                row[name] = _convert(kind, _text(raw), nullable, name)
            except (ValueError, TypeError) as exc:
                raise SchemaError(source, name, [], f"cannot read {_text(raw)!r}: {exc}") from None
        return row

    return decode


# -- files -----------------------------------------------------------------------------------------------


def _file_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-(\d+)-(\d+)-(\d+)-(\d+)\.parquet$")


def exported_ranges(out_dir: Path, name: str) -> list[tuple[StreamId, StreamId, Path]]:
    """The Parquet files an export of stream `name` wrote into `out_dir`, by id range.

    Args:
        out_dir: the export directory.
        name: the stream's short name (file prefix).

    Returns:
        ``(first id, last id, path)`` per file, sorted by first id.
    """
    pattern = _file_pattern(name)
    found = []
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            m = pattern.match(path.name)
            if m:
                a, b, c, d = (int(x) for x in m.groups())
                found.append(((a, b), (c, d), path))
    return sorted(found)


def _atomic_write(path: Path, write: Callable[[Any], None], hook: CommitHook | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    if hook:
        hook("written", tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_parquet(path: Path, table: pa.Table, hook: CommitHook | None) -> None:
    import pyarrow.parquet as pq

    _atomic_write(path, lambda fh: pq.write_table(table, fh), hook)


def _table(rows: list[Mapping[str, object]], schema: pa.Schema) -> pa.Table:
    import pyarrow as pa

    return pa.Table.from_pylist(list(rows), schema=schema)


@contextlib.contextmanager
def _export_lock(out_dir: Path) -> Iterator[None]:
    import fcntl

    with open(out_dir / LOCK_FILE, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FeatureStoreError(
                f"another export is writing to {out_dir}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# -- export ----------------------------------------------------------------------------------------------


def _ensure_group(client: Any, stream: bytes, group: str) -> None:
    from redis.exceptions import ResponseError

    try:
        # id 0: a new group starts with the whole stream, entries written before it existed included
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _read(client: Any, stream: bytes, group: str, consumer: str, start: str, count: int) -> list[Any]:
    reply = client.xreadgroup(group, consumer, {stream: start}, count=count)
    if not reply:
        return []
    # RESP2: [[stream, entries]]; RESP3: {stream: [entries]}
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0] if reply else [])
    return list(reply[0][1])


def _claim_orphans(client: Any, stream: bytes, group: str, consumer: str) -> None:
    """Claim entries pending for other consumers of the group (a renamed exporter, another host)."""
    start = "0-0"
    while True:
        reply = client.xautoclaim(stream, group, consumer, min_idle_time=0, start_id=start, count=1000)
        start = _text(reply[0])
        if start == "0-0":
            return


def _safe_trim_id(client: Any, stream: bytes) -> StreamId | None:
    """Lowest id some consumer group may still need (pending, or not yet delivered)."""
    lowest: StreamId | None = None
    for info in client.xinfo_groups(stream):
        name = info.get("name") or info.get(b"name")
        delivered = parse_id(info.get("last-delivered-id") or info.get(b"last-delivered-id") or "0-0")
        need = (delivered[0], delivered[1] + 1)
        if int(info.get("pending") or info.get(b"pending") or 0):
            summary = client.xpending(stream, name)
            if summary.get("min"):
                need = min(need, parse_id(summary["min"]))
        lowest = need if lowest is None else min(lowest, need)
    return lowest


def export_stream(
    client: Any,
    stream: bytes | str,
    group: str,
    out_dir: Path,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    *,
    schema: pa.Schema,
    decode: Decoder | None = None,
    name: str | None = None,
    consumer: str = DEFAULT_CONSUMER,
    trim: bool = False,
    hook: CommitHook | None = None,
) -> ExportSummary:
    """Export a stream to Parquet through a consumer group; acknowledge only what is safely on disk.

    Pending entries (delivered to an earlier run that stopped before acknowledging) are read first; then
    new entries, until the stream has none left.

    Args:
        client: Redis client with bytes responses (a bulk client: reads can be large).
        stream: stream key.
        group: consumer group (created at id 0 if missing: the whole stream is exported).
        out_dir: directory for the Parquet files (created if missing).
        batch_size: entries per file.
        progress: ``progress("export", done, 0)`` callback (the remaining count is not known).
        schema: Arrow schema of the files (`features.schemas.EVENTS` for events).
        decode: entry fields -> row; default `record_decoder(schema)`.
        name: file name prefix; default the last part of the stream key (``events``).
        consumer: consumer name within the group.
        trim: afterwards, remove stream entries that no consumer group still needs (XTRIM MINID).
        hook: test hook called at the commit points (see `CommitHook`).

    Returns:
        What was exported.

    Raises:
        FeatureStoreError: another export holds the output directory.
        redis.exceptions.RedisError: Redis failed (rerun: nothing is lost or duplicated).
    """
    started = time.perf_counter()
    stream_key = stream.encode() if isinstance(stream, str) else stream
    name = name or _text(stream_key).rsplit(":", 1)[-1]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    decode = decode or record_decoder(schema, f"{name} stream")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(stream=_text(stream_key), group=group)
    with _export_lock(out_dir):
        for stale in out_dir.glob(f".{name}-*.tmp"):
            stale.unlink()  # a batch that never reached its rename; its entries are still pending
        ranges = exported_ranges(out_dir, name)
        high: StreamId = max((r[1] for r in ranges), default=(0, 0))
        _ensure_group(client, stream_key, group)
        _claim_orphans(client, stream_key, group, consumer)
        done = 0
        for start in ("0", ">"):  # pending entries first, then new ones
            while True:
                entries = _read(client, stream_key, group, consumer, start, batch_size)
                if not entries:
                    break
                high = _export_batch(client, stream_key, group, entries, high, out_dir, name, schema, decode,
                                     summary, hook)  # fmt: skip
                done += len(entries)
                if progress:
                    progress("export", done, 0)
        if trim:
            lowest = _safe_trim_id(client, stream_key)
            if lowest is not None:
                summary.trimmed = int(client.xtrim(stream_key, minid=format_id(lowest), approximate=False))
    summary.seconds = time.perf_counter() - started
    return summary


def export_shards(
    client: Any,
    stream: bytes,
    shards: int,
    group: str,
    out_dir: Path,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    *,
    schema: pa.Schema,
    decode: Decoder | None = None,
    name: str | None = None,
    consumer: str = DEFAULT_CONSUMER,
    trim: bool = False,
) -> ExportSummary:
    """`export_stream` on every shard of a stream (`features.keys.stream_shards`), into one directory.

    Each shard keeps its own consumer group position and its own files, ``<name>-s<k>-<ids>.parquet``
    (one shard: ``<name>-<ids>.parquet``, as before sharding), so the crash-safety argument holds per
    shard. The files of all shards together are the stream: a student's records are in one shard, in
    the order they arrived; readers that need every record in time order sort by its time column (the A/B
    attribution sorts by ``shown_at`` and ``occurred_at``; training's tables by ``occurred_at``).

    Args:
        client: Redis client with bytes responses.
        stream: the unsharded stream key (`features.keys.EVENTS_STREAM`, `EXPOSURES_STREAM`).
        shards: ``redis.stream_shards`` in force.
        group, out_dir, batch_size, progress, schema, decode, consumer, trim: as `export_stream`.
        name: file name prefix; default the last part of the stream key.

    Returns:
        What was exported, summed over the shards (``first_id`` and ``last_id`` are the last shard's).
    """
    from features import keys

    name = name or _text(stream).rsplit(":", 1)[-1]
    shard_keys = keys.stream_shards(stream, shards)
    total = ExportSummary(stream=_text(stream), group=group)
    for k, key in enumerate(shard_keys):
        part = export_stream(
            client, key, group, out_dir, batch_size, progress, schema=schema, decode=decode,
            name=name if len(shard_keys) == 1 else f"{name}-s{k}", consumer=consumer, trim=trim,
        )  # fmt: skip
        total.files += part.files
        total.rows += part.rows
        total.rejected += part.rejected
        total.skipped += part.skipped
        total.trimmed += part.trimmed
        total.seconds += part.seconds
        total.first_id = part.first_id or total.first_id
        total.last_id = part.last_id or total.last_id
    return total


def _export_batch(
    client: Any,
    stream: bytes,
    group: str,
    entries: Sequence[Any],
    high: StreamId,
    out_dir: Path,
    name: str,
    schema: pa.Schema,
    decode: Decoder,
    summary: ExportSummary,
    hook: CommitHook | None,
) -> StreamId:
    """Write one batch (skipping ids already on disk), then XACK it; returns the new high-water id."""
    import pyarrow as pa

    ids = [_text(entry_id) for entry_id, _ in entries]
    fresh = [
        (i, f) for i, f in zip(ids, (fields for _, fields in entries), strict=True) if parse_id(i) > high
    ]
    summary.skipped += len(ids) - len(fresh)
    # an entry deleted from the stream while pending comes back with no fields: nothing left to export
    fresh = [(i, f) for i, f in fresh if f]
    if fresh:
        rows: list[Mapping[str, object]] = []
        row_ids: list[str] = []
        rejected: list[dict[str, Any]] = []
        for entry_id, fields in fresh:
            try:
                rows.append(decode(fields))
                row_ids.append(entry_id)
            except SchemaError as exc:
                rejected.append({"id": entry_id, "error": str(exc), "fields": _fields_json(fields)})
        try:
            table = _table(rows, schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError):
            table, rows = _table_row_by_row(rows, row_ids, schema, rejected, fresh)
        first, last = fresh[0][0], fresh[-1][0]
        stem = f"{name}-{first}-{last}"
        if rejected:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected)
            _atomic_write(
                out_dir / f"{stem}.rejected.jsonl", lambda fh: fh.write(lines.encode("utf-8")), None
            )
        table = table.replace_schema_metadata(
            {
                **(table.schema.metadata or {}),
                b"learnrec.stream": stream,
                b"learnrec.ids": f"{first}..{last}".encode(),
            }
        )
        path = out_dir / f"{stem}.parquet"
        _write_parquet(path, table, hook)
        if hook:
            hook("renamed", path)
        summary.files.append(path)
        summary.rows += table.num_rows
        summary.rejected += len(rejected)
        summary.first_id = summary.first_id or first
        high = max(high, parse_id(last))
    client.xack(stream, group, *ids)
    summary.last_id = ids[-1]
    return high


def _fields_json(fields: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _table_row_by_row(
    rows: list[Mapping[str, object]],
    row_ids: list[str],
    schema: pa.Schema,
    rejected: list[dict[str, Any]],
    fresh: Sequence[tuple[str, Mapping[bytes, bytes]]],
) -> tuple[pa.Table, list[Mapping[str, object]]]:
    """The batch table built row by row, rejecting the rows Arrow cannot convert (rare: slow path)."""
    import pyarrow as pa

    by_id = dict(fresh)
    good: list[Mapping[str, object]] = []
    for row, entry_id in zip(rows, row_ids, strict=True):
        try:
            _table([row], schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError) as exc:
            rejected.append({"id": entry_id, "error": str(exc), "fields": _fields_json(by_id[entry_id])})
        else:
            good.append(row)
    return _table(good, schema), good
