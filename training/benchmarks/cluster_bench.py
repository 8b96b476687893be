"""Cluster suite: the service as 1, 2 and 4 processes over a local 3-primary Redis Cluster, then a primary
SIGKILLed under load.

Everything runs as an operator would, in a scratch directory (``<data_root>/cluster-<students>x<lectures>``,
wiped at the start): a local cluster (`features.cluster_local`: 3 primaries, 3 replicas), a small dataset
(``learnrec data synth``, default 5,000 students x 1,000 lectures), ``learnrec train --register`` (the
``sequence`` model unless ``--serve-model`` says otherwise), ``learnrec features seed`` and ``materialize``
into the cluster. The service runs with ``LEARNREC_REDIS__CLUSTER=true``, six stream shards (the cluster
default) and ``LEARNREC_REDIS__REPLICA_ACKS=1`` (POST /events waits for one replica).

1. **Scaling.** ``learnrec serve --workers N`` for N = 1, 2, 4: N processes on one port (the kernel spreads
   connections over them, as ``--workers`` does in production; N servers on N ports behind wrk would need a
   balancer wrk does not have). wrk (one thread, 16 connections) at maximum rate on ``GET
   /recommendations`` rotating over 5,000 students with the answer cache off (every answer read from the
   cluster and computed: the cluster's read path, not the cache, is measured), then on ``POST /events``
   (one new event per request, each with its own id).
2. **Failover.** Two workers with the answer cache on; Python clients (two readers, two event writers)
   for `FAILOVER_SECONDS`. The writers send batches of five new events and send a batch again until it is
   answered 2xx (as the portal does; event ids make it safe). After `KILL_AFTER_SECONDS` the primary holding
   the first events shard is SIGKILLed; once a replica has taken over, the killed node is started again (a
   supervisor's job; it comes back as the new primary's replica, which the replica acknowledgement needs).
   Answers are counted by status (and degraded or not); afterwards every event answered 2xx must be in
   the streams exactly once.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from training.benchmarks.runner import (
    STATUS_OK,
    BenchOptions,
    ItemFn,
    ItemResult,
    SuiteResult,
    describe,
    skipped,
)

SUITE = "cluster"
#: Items the runner can start in a child process (none: every step is a `learnrec` command).
ITEMS: dict[str, ItemFn] = {}
DEFAULT_STUDENTS = 5_000
DEFAULT_LECTURES = 1_000
WORKERS = (1, 2, 4)
CONNECTIONS = 16
#: Length of the failover run, and when in it the primary is killed.
FAILOVER_SECONDS = 30
KILL_AFTER_SECONDS = 8
#: Events per POST of the failover writers.
BATCH = 5
#: Students the load rotates over.
PATH_STUDENTS = 5_000


def _lectures(dataset: Path) -> list[str]:
    import pyarrow.parquet as pq

    from features.tables import TABLE_FILES

    return [
        str(x) for x in pq.read_table(dataset / TABLE_FILES["lectures"], columns=["lecture_id"]).column(0)
    ]


def _students(paths: list[str]) -> list[str]:
    return [p.split("student_id=", 1)[1].split("&", 1)[0] for p in paths]


def event_lines(students: list[str], lectures: list[str], n: int, tag: str) -> list[str]:
    """wrk request lines: `n` POST /events of one new enrolment each (ids unique per run `tag`)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = []
    for i in range(n):
        event = {
            "event_id": f"{tag}-{i}",
            "student_id": students[i % len(students)],
            "lecture_id": lectures[(i * 7) % len(lectures)],
            "type": "enrol",
            "occurred_at": now,
        }
        lines.append("POST\t/events\t" + json.dumps({"events": [event]}, ensure_ascii=False))
    return lines


class _Client:
    """One keep-alive HTTP connection; a failed request reconnects."""

    def __init__(self, url: str, api_key: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body); status 0 = no answer (connection refused, reset, timeout)."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            self.conn.request(method, path, body=body, headers=self.headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return 0, b""


def failover_run(
    url: str,
    api_key: str,
    paths: list[str],
    lectures: list[str],
    kill: Any,
    *,
    seconds: float = FAILOVER_SECONDS,
    kill_after: float = KILL_AFTER_SECONDS,
    say: Any = print,
) -> dict[str, Any]:
    """Readers and retrying event writers against `url`; `kill()` is called after `kill_after` seconds.

    Returns:
        Status counts of reads (``degraded`` apart) and of event posts, the event ids answered 2xx, the
        retries, and what `kill` returned.
    """
    stop = threading.Event()
    lock = threading.Lock()
    reads: Counter[str] = Counter()
    posts: Counter[str] = Counter()
    stored: list[str] = []
    retries = Counter[str]()
    students = _students(paths)

    def reader(offset: int) -> None:
        client = _Client(url, api_key)
        i = offset
        while not stop.is_set():
            status, body = client.call("GET", paths[i % len(paths)])
            label = str(status)
            if status == 200 and b'"degraded":true' in body:
                label = "200 degraded"
            with lock:
                reads[label] += 1
            i += 7

    def writer(w: int) -> None:
        client = _Client(url, api_key)
        n = 0
        while not stop.is_set():
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            batch = [
                {
                    "event_id": f"fo-{w}-{n}-{j}",
                    "student_id": students[(n * BATCH + j + w * 997) % len(students)],
                    "lecture_id": lectures[(n + j) % len(lectures)],
                    "type": "enrol",
                    "occurred_at": now,
                }
                for j in range(BATCH)
            ]
            body = json.dumps({"events": batch}, ensure_ascii=False).encode()
            while True:  # the same batch until it is answered 2xx (the time the run ends included)
                status, answer = client.call("POST", "/events", body)
                with lock:
                    posts[str(status)] += 1
                if 200 <= status < 300:
                    items = json.loads(answer)["items"]
                    with lock:
                        stored.extend(
                            x["event_id"] for x in items if x["status"] in ("accepted", "duplicate")
                        )
                    break
                with lock:
                    retries["batches"] += 1
                time.sleep(0.05)
            n += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    threads += [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    started = time.monotonic()
    time.sleep(kill_after)
    say(f"  SIGKILL a primary after {kill_after:.0f} s ...")
    killed = kill()
    rest = seconds - (time.monotonic() - started)
    if rest > 0:
        time.sleep(rest)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    return {
        "reads": dict(reads),
        "posts": dict(posts),
        "stored_ids": stored,
        "retried_batches": retries["batches"],
        "kill": killed,
        "kill_after": kill_after,
        "seconds": time.monotonic() - started,
    }


def _wipe(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def run(opts: BenchOptions) -> SuiteResult:
    """Form the local cluster, prepare the service's data in it, and measure scaling and a failover.

    Args:
        opts: size (students, lectures), wrk run length (``serve_seconds``), champion models, printer.

    Returns:
        One row per wrk run and the failover row; the summary holds the figures of each.
    """
    from features import keys
    from features.cluster_local import start_cluster, stop_cluster
    from features.settings import RedisSettings, Settings
    from training.benchmarks.load import ensure_wrk, run_wrk
    from training.benchmarks.serve_bench import (
        _learnrec,
        _step,
        bench_env,
        dev_keys,
        recommendation_paths,
        start_service,
        stop_service,
    )

    students = opts.students or DEFAULT_STUDENTS
    lectures = opts.lectures or DEFAULT_LECTURES
    result = SuiteResult(SUITE, f"{students}x{lectures}")
    try:
        ensure_wrk()
        portal_key, _ = dev_keys()
    except (RuntimeError, ImportError, StopIteration) as exc:
        result.items.append(skipped(SUITE, "cluster", f"not ready to run: {exc}"))
        return result
    root = opts.data_root / f"cluster-{students}x{lectures}"
    _wipe(root)
    log = root / "bench-steps.log"
    opts.say(f"cluster suite: {students:,} students x {lectures:,} lectures in {root}")
    cluster = start_cluster(root / "redis-cluster", daemon=False)
    try:
        env = bench_env(root / "data")
        env.update(
            LEARNREC_REDIS__URL=cluster.url, LEARNREC_REDIS__CLUSTER="true", LEARNREC_REDIS__REPLICA_ACKS="1"
        )
        dataset = root / "dataset"
        models = list(opts.serve_models or ("sequence",))
        steps = [
            ("data synth", ["data", "synth", "--students", str(students), "--lectures", str(lectures),
                            "--seed", str(opts.seed), "--out", str(dataset)]),
            ("train --register", ["train", *[a for m in models for a in ("--model", m)], "--register",
                                  "--dataset", str(dataset), "--no-oracle", "--budget-seconds", "0"]),
            ("features seed", ["features", "seed", "--dataset", str(dataset)]),
            ("features materialize", ["features", "materialize"]),
        ]  # fmt: skip
        for name, argv in steps:
            opts.say(f"  learnrec {' '.join(argv[:2])} ...")
            row = _step(name, [*_learnrec(), *argv], env, opts, log)
            opts.say(describe(row))
            result.items.append(row)
            if not row.ok:
                return result
        paths = recommendation_paths(dataset, PATH_STUDENTS, opts.seed)
        lecture_ids = _lectures(dataset)
        seconds = opts.serve_seconds
        for workers in WORKERS:
            service_env = {**env, "LEARNREC_SERVICE__ANSWER_CACHE_SIZE": "0"}
            service, ready_s = start_service(service_env, root / f"service-{workers}.log", workers=workers)
            try:
                opts.say(
                    f"  {workers} worker(s): wrk {seconds} s on /recommendations, then on POST /events ..."
                )
                run_wrk(
                    service.url,
                    paths,
                    label="warm-up",
                    api_key=portal_key,
                    seconds=3,
                    connections=CONNECTIONS,
                )
                load = _load()
                recs = run_wrk(service.url, paths, label=f"GET /recommendations ({workers} workers)",
                               api_key=portal_key, seconds=seconds, connections=CONNECTIONS)  # fmt: skip
                lines = event_lines(_students(paths), lecture_ids, 200_000, f"w{workers}")
                posts = run_wrk(service.url, lines, label=f"POST /events ({workers} workers)",
                                api_key=portal_key, seconds=seconds, connections=CONNECTIONS)  # fmt: skip
            finally:
                stop_service(service)
            for run in (recs, posts):
                row = ItemResult(SUITE, run.label, STATUS_OK, "", run.duration_s, 0,
                                 {"workers": workers, "connections": CONNECTIONS},
                                 {**run.as_dict(), "load_before": load, "ready_s": ready_s})  # fmt: skip
                result.items.append(row)
                opts.say(
                    f"    {run.label}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.1f} ms, "
                    f"p99 {run.p99_ms:.1f} ms, {run.errors} non-2xx/errors (load before: {load})"
                )
        result.summary["failover"] = _failover(cluster, env, root, paths, lecture_ids, portal_key, opts)
        settings = Settings(redis=RedisSettings(url=cluster.url, cluster=True))
        result.summary["cluster"] = {
            "primaries": 3,
            "replicas": 3,
            "stream_shards": settings.redis.shards(),
            "shard_keys": [
                k.decode() for k in keys.stream_shards(keys.EVENTS_STREAM, settings.redis.shards())
            ],
        }
    finally:
        stop_cluster(cluster.root)
    return result


def _failover(
    cluster: Any,
    env: dict[str, str],
    root: Path,
    paths: list[str],
    lectures: list[str],
    key: str,
    opts: BenchOptions,
) -> dict[str, Any]:
    """The failover run (module docstring, 2.) and its check against the streams."""
    from redis.cluster import RedisCluster

    from features import keys
    from features.cluster_local import kill_node, restart_node, wait_ok
    from features.redis_server import connect
    from features.settings import RedisSettings, Settings
    from training.benchmarks.serve_bench import start_service, stop_service

    settings = Settings(redis=RedisSettings(url=cluster.url, cluster=True))
    shards = keys.stream_shards(keys.EVENTS_STREAM, settings.redis.shards())
    probe = connect(settings, bulk=True)
    assert isinstance(probe, RedisCluster)
    node = probe.get_node_from_key(shards[0])
    assert node is not None
    victim_port = int(node.port)
    before = {s: probe.xlen(s) for s in shards}
    probe.close()
    state: dict[str, Any] = {"cluster": cluster}

    def kill() -> dict[str, Any]:
        current = state["cluster"]
        index = next(i for i, n in enumerate(current.nodes) if n.port == victim_port)
        t0 = time.monotonic()
        kill_node(current.nodes[index])
        wait_ok(current, timeout=60)
        failover_s = time.monotonic() - t0
        healed = restart_node(current, index, daemon=False)
        wait_ok(healed, timeout=60)
        state["cluster"] = healed
        return {"port": victim_port, "failover_s": failover_s, "back_as_replica_s": time.monotonic() - t0}

    service, _ = start_service(env, root / "service-failover.log", workers=2)
    try:
        load = _load()
        run = failover_run(service.url, key, paths, lectures, kill, say=opts.say)
    finally:
        stop_service(service)
    bulk = connect(settings, bulk=True)
    in_streams = [
        f[b"event_id"].decode()
        for s in shards
        for _, f in bulk.xrange(s)
        if f[b"event_id"].startswith(b"fo-")
    ]
    bulk.close()
    stored = run.pop("stored_ids")
    seen = Counter(in_streams)
    out = {
        **run,
        "load_before": load,
        "events_2xx": len(stored),
        "events_in_streams": len(in_streams),
        "answered_2xx_missing": len(set(stored) - set(seen)),
        "in_streams_twice": sum(1 for c in seen.values() if c > 1),
        "stream_lengths_before": {k.decode(): v for k, v in before.items()},
    }
    opts.say(f"  failover: {json.dumps(out)}")
    return out
