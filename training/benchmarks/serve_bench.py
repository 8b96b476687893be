"""Serve suite: the real service over HTTP, driven by wrk, with a real redis-server and the champion.

Everything goes through the command line, as an operator would, in a scratch data directory
(``LEARNREC_DATA_DIR=<data_root>/serve-<size>``, wiped at the start):

1. ``learnrec train --model ... --register --dataset D --no-oracle``: the champion (timed, peak RSS);
2. every student's profile and training history into Redis (`seed_partitioned`, what ``learnrec features
   seed`` does: a group of students at a time, so memory stays bounded at any size; a measured item);
3. ``learnrec features materialize``: the champion's per-student state (time; Redis bytes per student);
   then wait until Redis has finished the AOF rewrite the bulk load set off;
4. ``learnrec serve``: time until ``/readyz`` answers 200;
5. wrk against that one server: maximum throughput of ``/recommendations`` (rotating over many students)
   and of ``/healthz``, their ratio (`RATIO_TARGET`, the median of `SIDE_BY_SIDE_PAIRS` pairs), then
   latency of ``/recommendations`` at a fixed rate of half the maximum (`P99_TARGET_MS`; at the large size
   `P99_GROWTH_TARGET` times the default size's, measured taking turns with the default size's server of the
   same ``--data-root``, `p99_in_turns`); the service's RSS.

The service logs every request (JSON, level info) to ``service.log`` in the scratch directory, as in
production. wrk runs with one thread, leaving the other core to the service and Redis. Redis forks (AOF
rewrites; snapshots, were any configured) during each run are counted: with a large dataset a rewrite competes
for the CPU. When ``learnrec train`` does not fit the budgets at the full size (the large size), the champion
is trained on the largest subsample of the students that fits (`train_bench.Datasets`), with the whole
catalogue; every student of the full dataset is still seeded and served, and the load rotates over students of
the full dataset: those the model never saw are answered from their profile (the model's user features) or
from the popularity lists. The share of answers by source (model / profile / history / popularity) is read
from the service's ``/metrics`` over the wrk runs.

Size: over 600 lines because one end-to-end scenario run step by step as an operator would run it; splitting
it would scatter the scenario.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.benchmarks.data_bench import dataset_sizes, ensure_dataset
from training.benchmarks.runner import (
    STATUS_OK,
    BenchOptions,
    ItemFn,
    ItemResult,
    Phase,
    Progress,
    SuiteResult,
    default_memory_budget,
    describe,
    run_item,
    run_measured,
    skipped,
)

SUITE = "serve"
RATIO_TARGET = 0.50
#: p99 of computed answers at half the maximum rate, default size.
P99_TARGET_MS = 20.0
#: ... and at the large size, as a multiple of the default size's (same champion): set against the default
#: run in RESULTS.md (`report`), since one run does not hold both.
P99_GROWTH_TARGET = 1.3
#: Students the load rotates over (a random sample of the dataset's students).
PATH_STUDENTS = 5_000
#: Students of the portal-shaped sessions workload, and how many sessions go in one round.
#: A round is short enough that a run of a few thousand requests reaches the second and third views (each
#: wrk run starts at the top of the list), and long enough that a student's events (sent `SESSION_ROUND`
#: requests before the next view, over `MAX_CONNECTIONS` connections) have landed when it is asked.
SESSION_STUDENTS = 10_000
SESSION_ROUND = 100
#: Most events posted in one session (the events of one lecture).
SESSION_EVENTS = 5
#: Most students the "every answer computed" workload rotates over (more than the answer cache holds,
#: so the least-recently-used cache never has the next one: `ComputedCycle`).
COMPUTED_STUDENTS = 200_000
#: Students of the computed workload beyond what the answer cache holds, at the least (`min_students`):
#: room for each run to start `CYCLE_AHEAD` past where the last one stopped.
CYCLE_SLACK = 1_000
#: Recommendations asked per request.
K = 10
#: Worker processes of the scaling runs (`learnrec serve --workers`).
SCALE_WORKERS = 2
#: Open connections of the maximum-throughput runs and of the fixed-rate run.
MAX_CONNECTIONS = 16
FIXED_CONNECTIONS = 8
#: How far past the requests a run counted the next run of the computed workload starts (`ComputedCycle`):
#: wrk's count leaves out the requests in flight when it stops, at most one per connection.
CYCLE_AHEAD = 4 * MAX_CONNECTIONS
WARMUP_SECONDS = 5
#: The computed workload's warm-up goes on (`WARMUP_SECONDS` at a time) until it has asked every student of
#: the group once, or for this long: the service's first sight of a student fills its per-profile memos
#: (the profile's decoded values, the model's feature columns) and its record cache, which a portal's
#: service, running for days, has long filled.
WARMUP_LAP_LIMIT_SECONDS = 120
READY_TIMEOUT_S = 600.0
#: Environment variables that would point the bench at someone else's Redis or MLflow.
_FOREIGN_ENV = (
    "REDIS_URL", "LEARNREC_REDIS_URL", "LEARNREC_REDIS__URL", "LEARNREC_REDIS__CLUSTER",
    "MLFLOW_TRACKING_URI", "LEARNREC_MLFLOW__TRACKING_URI", "LEARNREC_SERVICE__API_KEYS_FILE", "LEARNREC_ENV",
)  # fmt: skip


def _learnrec() -> list[str]:
    return [sys.executable, "-m", "training.cli"]


def _seed(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    """Profiles and training history of every student into the embedded Redis of the scratch dir."""
    from features.redis_server import connect
    from features.settings import get_settings
    from features.store import used_memory
    from training.commands.feature_store import seed_partitioned

    client = connect(get_settings(), bulk=True)
    before = used_memory(client)
    with Phase() as phase:
        summary = seed_partitioned(Path(params["dir"]), client, progress)
    after = used_memory(client)
    return {
        "students": summary.students,
        "students_with_history": summary.histories,
        "events": summary.events,
        "partitions": summary.partitions,
        "seed_s": phase.seconds,
        "redis_bytes": after - before,
        "redis_bytes_per_student": (after - before) / max(summary.students, 1),
        "note": f"{summary.students:,} profiles, {summary.histories:,} histories from {summary.events:,} "
        f"events, in {summary.partitions} partitions of students",
    }


#: Items the runner can start in a child process.
ITEMS: dict[str, ItemFn] = {"seed": _seed}


# ----------------------------------------------------------------------------------------------------------
# helpers of the parent


def bench_env(data_dir: Path) -> dict[str, str]:
    """This process's environment with the scratch data dir, development keys and no foreign Redis/MLflow."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["LEARNREC_DATA_DIR"] = str(data_dir)
    env["LEARNREC_ENV"] = "development"
    return env


def dev_keys() -> tuple[str, str]:
    """(portal key for every region, admin key) among the service's development keys."""
    from features.api_keys import DEV_KEYS
    from features.schemas import ALL_REGIONS

    portal = next(k for k, (_, regions, admin) in DEV_KEYS.items() if ALL_REGIONS in regions and not admin)
    admin = next(k for k, (_, _, is_admin) in DEV_KEYS.items() if is_admin)
    return portal, admin


def recommendation_paths(dataset: Path, n: int, seed: int, k: int = K) -> list[str]:
    """``/recommendations?student_id=...&k=...`` for `n` students sampled from the dataset (seeded)."""
    import numpy as np
    import pyarrow.parquet as pq

    from features.tables import TABLE_FILES

    ids = pq.read_table(dataset / TABLE_FILES["students"], columns=["student_id"]).column(0).to_pylist()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ids), size=min(n, len(ids)), replace=False)
    return [f"/recommendations?student_id={ids[i]}&k={k}" for i in chosen]


def student_groups(dataset: Path, seed: int) -> dict[str, list[str]]:
    """The dataset's students split at random (seeded) into the three workloads' disjoint groups.

    ``repeats`` (`PATH_STUDENTS`), ``sessions`` (`SESSION_STUDENTS`) and ``computed`` (the rest, at most
    `COMPUTED_STUDENTS`): no workload warms the answer cache for another.
    """
    import numpy as np
    import pyarrow.parquet as pq

    from features.tables import TABLE_FILES

    ids = pq.read_table(dataset / TABLE_FILES["students"], columns=["student_id"]).column(0).to_pylist()
    order = np.random.default_rng(seed).permutation(len(ids))
    a, b = PATH_STUDENTS, PATH_STUDENTS + SESSION_STUDENTS
    return {
        "repeats": [ids[i] for i in order[:a]],
        "sessions": [ids[i] for i in order[a:b]],
        "computed": [ids[i] for i in order[b : b + COMPUTED_STUDENTS]],
    }


def answer_cache_setting(name: str, service_env: Mapping[str, str] | None = None) -> int:
    """The service's answer-cache setting `name` (``answer_cache_size``, ``answer_cache_shapes``): the one
    its environment `service_env` sets, else the default."""
    from features.settings import ServiceSettings

    value = (service_env or {}).get(f"LEARNREC_SERVICE__{name.upper()}")
    return int(value) if value is not None else int(ServiceSettings.model_fields[name].default)


def min_students(service_env: Mapping[str, str] | None = None) -> int:
    """Students a dataset needs for `student_groups`: the repeats' and the sessions' groups, and more than
    the answer cache holds (``answer_cache_size`` in the service's environment `service_env`) left for the
    computed group, with `CYCLE_SLACK` to spare, so that cycling over it never meets a cached answer
    (`ComputedCycle`)."""
    cache = answer_cache_setting("answer_cache_size", service_env)
    return PATH_STUDENTS + SESSION_STUDENTS + cache + CYCLE_SLACK


def paths_for(students: list[str], k: int = K) -> list[str]:
    """``/recommendations?student_id=...&k=...`` per student."""
    return [f"/recommendations?student_id={sid}&k={k}" for sid in students]


class ComputedCycle:
    """The computed workload's requests asked as one cycle across its runs: each run starts where the last
    one stopped (`CYCLE_AHEAD` past it), so a student is asked again only after every other student of the
    group, more of them than the answer cache holds. With the cache's least-recently-used order the student
    is never in it: every answer is computed and is put into a new entry, as after a student's keys changed
    (the portal's computed answer).

    Each wrk run starts at the top of its list of paths. Starting every run at the top again and telling
    the runs apart by k (as this bench did) kept the students of one run in the cache into the next, where
    each was asked for another k: a miss, but one that added an answer to the student's entry, up to six
    by the last run, so the later runs measured bigger entries than the first.

    Args:
        students: the computed group.
        ks: the k of each lap over the group, in turn. One worker needs one (the group is more than its cache
            holds); a server of several workers, each with its own cache, needs at least as many laps as
            workers before a k comes back, so that the worker that kept a student's answer has put more
            students than it holds since.
    """

    def __init__(self, students: list[str], ks: Sequence[int] = (K,)) -> None:
        self.paths = [path for k in ks for path in paths_for(students, k)]
        #: requests in one lap over the group
        self.lap = len(students)
        self.at = 0

    def next_run(self) -> list[str]:
        """The paths of the next run, from where the last one stopped."""
        at = self.at % len(self.paths)
        return self.paths[at:] + self.paths[:at]

    def advance(self, requests: int) -> None:
        """A run of `requests` requests is over."""
        self.at += requests + CYCLE_AHEAD

    def warm_up(self, url: str, api_key: str, seconds: int) -> int:
        """Runs of `seconds` at the maximum rate along the cycle until it has gone one lap over the group
        (or `WARMUP_LAP_LIMIT_SECONDS` have passed); the requests they made."""
        from training.benchmarks.load import run_wrk

        deadline, asked = time.monotonic() + WARMUP_LAP_LIMIT_SECONDS, 0
        while self.at < self.lap and time.monotonic() < deadline:
            warm = run_wrk(url, self.next_run(), label="warm-up", api_key=api_key, seconds=seconds,
                           connections=MAX_CONNECTIONS)  # fmt: skip
            if not warm.requests:
                break
            self.advance(warm.requests)
            asked += warm.requests
        return asked


def session_requests(dataset: Path, students: list[str], seed: int, k: int = K) -> list[str]:
    """Portal sessions replayed from the dataset's events, as wrk request lines (`load.run_wrk`).

    A session is a page view (``GET /recommendations``), the events of one lecture of the student's
    (enrol, progress, complete, as the dataset has them, at most `SESSION_EVENTS`) through ``POST
    /events`` under new event ids (so they apply and change the student's keys), the next page view, and
    one more view with nothing done in between (back to the list). Sessions go in rounds of
    `SESSION_ROUND` students (their first views, then their events, then their second views, then their
    third), so a student's events have landed before their next view is asked. The first view of a
    student is never in the answer cache (nobody asked before), the second follows events (computed), the
    third repeats the second: the share from the cache is at most a third of the views.
    """
    import numpy as np
    import orjson
    import pyarrow.dataset as pads

    from features.tables import TABLE_FILES

    table = (
        pads.dataset(dataset / TABLE_FILES["events"])
        .to_table(
            columns=["event_id", "student_id", "lecture_id", "type", "progress", "occurred_at"],
            filter=pads.field("student_id").isin(students),
        )
        .to_pylist()
    )
    by_student: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for e in table:
        by_student.setdefault(e["student_id"], {}).setdefault(e["lecture_id"], []).append(e)
    rng = np.random.default_rng(seed)
    sessions: list[tuple[str, str]] = []
    for sid in students:
        lectures = by_student.get(sid)
        if not lectures:
            continue
        names = sorted(lectures)
        events = sorted(lectures[names[int(rng.integers(len(names)))]], key=lambda e: e["occurred_at"])
        body = orjson.dumps(
            {
                "events": [
                    {
                        "event_id": f"{e['event_id']}-s",
                        "student_id": sid,
                        "lecture_id": e["lecture_id"],
                        "type": e["type"],
                        "progress": float(e["progress"]),
                        "occurred_at": e["occurred_at"].isoformat(),
                    }
                    for e in events[:SESSION_EVENTS]
                ]
            }
        ).decode("utf-8")
        sessions.append((f"/recommendations?student_id={sid}&k={k}", f"POST\t/events\t{body}"))
    lines: list[str] = []
    for start in range(0, len(sessions), SESSION_ROUND):
        group = sessions[start : start + SESSION_ROUND]
        views = [view for view, _ in group]
        lines += views + [post for _, post in group] + views + views
    return lines


def http_get(url: str, api_key: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET; connection errors give status 0."""
    request = urllib.request.Request(url, headers={"X-API-Key": api_key} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used, all its threads (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a running process, in bytes."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _redis_client(redis_dir: Path) -> Any:
    from redis import Redis

    from features.redis_server import running_embedded

    server = running_embedded(redis_dir)
    if server is None:
        raise RuntimeError(f"no embedded redis-server is running for {redis_dir}")
    return Redis.from_url(server.url, socket_timeout=30)


def _used_memory(redis_dir: Path) -> int:
    from features.store import used_memory

    return used_memory(_redis_client(redis_dir))


@dataclass
class _Service:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_service(
    env: Mapping[str, str], log: Path, timeout_s: float = READY_TIMEOUT_S, workers: int = 1
) -> tuple[_Service, float]:
    """Start ``learnrec serve`` on a free port and wait until ``/readyz`` answers 200.

    Returns:
        The running service and the seconds it took to become ready.

    Raises:
        RuntimeError: it exited or was not ready in time (the message quotes the end of its log).
    """
    from features.redis_server import free_port

    port = free_port()
    sink = log.open("ab")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*_learnrec(), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "info",
         "--workers", str(workers)],
        env=dict(env), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    sink.close()
    service = _Service(proc, f"http://127.0.0.1:{port}", log)
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"learnrec serve exited with {proc.returncode}: {_tail(log)}")
        status, _ = http_get(service.url + "/readyz", timeout=2.0)
        if status == 200:
            return service, time.perf_counter() - started
        time.sleep(0.25)
    stop_service(service)
    raise RuntimeError(f"learnrec serve was not ready within {timeout_s:.0f} s: {_tail(log)}")


def stop_service(service: _Service) -> None:
    """SIGTERM (graceful), then SIGKILL after 20 s."""
    if service.proc.poll() is not None:
        return
    service.proc.send_signal(signal.SIGTERM)
    try:
        service.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait(timeout=10)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip()[:300] for line in text[-lines:])


def sample_responses(url: str, paths: list[str], api_key: str, n: int = 200) -> dict[str, Any]:
    """GET `n` of the paths one at a time: status codes, answer sources, and unloaded latency."""
    statuses: Counter[int] = Counter()
    sources: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    items: list[int] = []
    latencies: list[float] = []
    for path in paths[:n]:
        started = time.perf_counter()
        status, body = http_get(url + path, api_key)
        latencies.append(1000 * (time.perf_counter() - started))
        statuses[status] += 1
        if status == 200:
            answer = json.loads(body)
            sources[str(answer.get("source"))] += 1
            items.append(len(answer.get("items", [])))
            for flag in ("fallback", "degraded"):
                if answer.get(flag):
                    flags[flag] += 1
    latencies.sort()
    return {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()},
        "sources": dict(sources),
        "fallback": flags["fallback"],
        "degraded": flags["degraded"],
        "mean_items": sum(items) / len(items) if items else 0.0,
        "p50_ms": latencies[len(latencies) // 2] if latencies else 0.0,
    }


def parse_counter(metrics_text: str, metric: str) -> dict[str, int]:
    """A counter with one label, by label value, from the Prometheus text of ``/metrics``."""
    pattern = re.compile(rf'^{re.escape(metric)}\{{[a-z_]+="([^"]*)"\}}\s+([0-9.eE+-]+)$', re.MULTILINE)
    return {value: int(float(n)) for value, n in pattern.findall(metrics_text)}


def parse_answer_sources(metrics_text: str) -> dict[str, int]:
    """Answers by source from the Prometheus text of ``/metrics`` (``learnrec_recommendations_total``)."""
    return parse_counter(metrics_text, "learnrec_recommendations_total")


def answer_counts(url: str) -> dict[str, dict[str, int]]:
    """Recommendation answers so far by source (model, profile, history, popular_*) and by answer-cache
    outcome (hit, miss), from ``/metrics``."""
    status, body = http_get(url + "/metrics")
    text = body.decode("utf-8", errors="replace") if status == 200 else ""
    return {
        "source": parse_answer_sources(text),
        "cache": parse_counter(text, "learnrec_answer_cache_total"),
    }


def source_shares(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """Share of the answers by source between two `answer_counts` readings (largest first)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(v for v in delta.values() if v > 0)
    if not total:
        return {}
    return {k: v / total for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v > 0}


def _champion(env: Mapping[str, str], data_dir: Path) -> dict[str, Any]:
    """The registered champion's version and the recommender behind it (from the MLflow registry)."""
    from mlflow import MlflowClient

    from features.settings import Settings

    settings = Settings(data_dir=data_dir)
    client = MlflowClient(tracking_uri=settings.tracking_uri(), registry_uri=settings.tracking_uri())
    name = env.get("LEARNREC_MLFLOW__REGISTERED_MODEL", settings.mlflow.registered_model)
    version = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(version.run_id) if version.run_id else None
    model = run.data.tags.get("learnrec.model", "?") if run else "?"
    return {"registered_model": name, "version": str(version.version), "model": model}


def _train_champion(
    opts: BenchOptions, models: list[str], full: Path, env: Mapping[str, str], log: Path, result: SuiteResult
) -> Path | None:
    """``learnrec train --register`` on the full dataset, stepping down to subsamples past a budget.

    Returns:
        The dataset the champion was trained on (the one to serve), or None when no size fitted.
    """
    from training.benchmarks.train_bench import Datasets, fractions_for

    fractions = fractions_for(opts)
    datasets = Datasets(opts, full, result)
    tried: list[str] = []
    for fraction in fractions:
        dataset = datasets.get(fraction)
        if dataset is None:
            return None
        n = dataset_sizes(dataset)["students"]
        argv = [*_learnrec(), "train", *[a for m in models for a in ("--model", m)], "--register",
                "--dataset", str(dataset), "--no-oracle",
                "--budget-seconds", f"{opts.select_budget_s:g}"]  # fmt: skip
        label = "train --register" + (f" ({n:,} students)" if len(fractions) > 1 else "")
        opts.say(f"  learnrec train --model {' '.join(models)} --register on {n:,} students ...")
        row = _step(label, argv, env, opts, log)
        if row.ok and tried:
            row.reason = f"on {fraction:.0%} of the students: {'; '.join(tried)}"
        opts.say(describe(row))
        result.items.append(row)
        if row.ok:
            return dataset
        if row.status != "skipped":
            return None
        tried.append(f"{n:,} students {row.reason.removeprefix('skipped: ')}")
    return None


def _step(name: str, argv: list[str], env: Mapping[str, str], opts: BenchOptions, log: Path) -> ItemResult:
    """One CLI command, measured (time, peak RSS), its output kept in `log` and its last line as the note."""
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(argv[2:]) if argv[:2] == _learnrec()[:2] else ' '.join(argv)}\n")
    memory = opts.memory_budget or default_memory_budget()
    measured = run_measured(argv, env=env, budget_s=opts.budget_s, capture=True, memory_budget=memory)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(measured.output)
    last = next((ln.strip() for ln in reversed(measured.output.splitlines()) if ln.strip()), "")
    row = ItemResult(
        SUITE, name, STATUS_OK, "", measured.seconds, measured.peak_rss_bytes, {"argv": argv[2:]}
    )
    row.metrics = {"note": last[:400], "output_tail": measured.output[-4000:]}
    if measured.timed_out:
        row.status, row.reason = "skipped", f"skipped: exceeded the time budget of {opts.budget_s / 60:g} min"
    elif measured.out_of_memory:
        budget = f"{(memory or 0) / 2**30:.1f} GiB"
        row.status, row.reason = "skipped", f"skipped: exceeded the memory budget of {budget} (killed)"
    elif measured.returncode != 0:
        row.status, row.reason = "failed", f"failed: exit {measured.returncode}: {last[:300]}"
    return row


# ----------------------------------------------------------------------------------------------------------
# the suite


def redis_persistence(redis_dir: Path) -> dict[str, int]:
    """Forks so far and whether a snapshot or AOF rewrite is running (INFO persistence and stats)."""
    client = _redis_client(redis_dir)
    info = {**client.info("persistence"), **client.info("stats")}
    return {
        "total_forks": int(info.get("total_forks", 0)),
        "busy": int(info.get("rdb_bgsave_in_progress", 0)) + int(info.get("aof_rewrite_in_progress", 0)),
    }


def wait_redis_quiet(redis_dir: Path, timeout_s: float = 600.0) -> float:
    """Wait until no snapshot or AOF rewrite runs (the bulk load triggers them); the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s and redis_persistence(redis_dir)["busy"]:
        time.sleep(0.5)
    return time.perf_counter() - started


#: Labels of the wrk runs (also the rows of the results table).
RUN_COMPUTED = "max /recommendations, every answer computed"
RUN_SESSIONS = "max sessions (view, POST /events, view, view again)"
RUN_REPEATS = "max /recommendations, repeats only"
RUN_HEALTHZ = "max /healthz"
RUN_HALF = "computed /recommendations at half the maximum"
#: Pairs of maximum runs, every answer computed then /healthz back to back, after the runs above: the
#: throughput ratio is their median (`side_by_side_ratio`). The workloads' own runs are half a minute apart,
#: and this shared machine's speed moves by a tenth in that time: one such pair is not a measurement. Five:
#: one pair's ratio spread by up to 0.23 within a run of three (stop 28, 30 pairs over ten runs), so that
#: three pairs decided a verdict against `RATIO_TARGET` by chance.
SIDE_BY_SIDE_PAIRS = 5


def pair_label(i: int, run: str) -> str:
    """The label of run `run` in side-by-side pair `i` (from 1)."""
    return f"pair {i}: {run}"


def side_by_side_ratio(pairs: Sequence[tuple[float, float]]) -> float:
    """The median of computed ÷ /healthz requests/s over (computed, /healthz) pairs run back to back (0.0
    without a pair whose /healthz completed)."""
    ratios = [c / h for c, h in pairs if h > 0]
    return statistics.median(ratios) if ratios else 0.0


#: Rounds of the large size's p99 at half its maximum taken in turn with the default size's server
#: (`p99_in_turns`): one run of each a round.
P99_TURNS = 5


def p99_in_turns(
    servers: Mapping[str, tuple[str, ComputedCycle]],
    api_key: str,
    seconds: int,
    rounds: int = P99_TURNS,
    run: Callable[..., Any] | None = None,
) -> dict[str, list[Any]]:
    """Every answer computed on live servers taking turns: each one's maximum, then `rounds` rounds of one
    run at half of it on each, the order turned round every round (first in odd rounds, last in even
    ones), so that a slow spell of the shared machine falls on every server alike. Set apart in time, the
    default size's p99 read 2.5 and 4.0 ms in two runs on this VM; taking turns reads the sizes, not the hour.

    Args:
        servers: per name, the service's URL and its computed cycle (each run goes on where the last
            stopped, so every answer stays computed).
        api_key: sent as X-API-Key.
        seconds: length of each run.
        rounds: runs at half the maximum per server.
        run: `load.run_wrk` (a double in unit tests).

    Returns:
        Per name, its maximum run, then its runs at half of it in order (`LoadResult`).
    """
    from training.benchmarks.load import run_wrk

    run = run or run_wrk
    names = list(servers)
    out: dict[str, list[Any]] = {name: [] for name in names}

    def measure(name: str, label: str, connections: int, rate: float | None) -> None:
        url, cycle = servers[name]
        load = run(url, cycle.next_run(), label=label, api_key=api_key, seconds=seconds,
                   connections=connections, rate=rate)  # fmt: skip
        cycle.advance(load.requests)
        out[name].append(load)

    for name in names:
        measure(name, f"turns: max /recommendations, every answer computed ({name})", MAX_CONNECTIONS, None)
    for r in range(1, rounds + 1):
        for name in names if r % 2 else names[::-1]:
            half = out[name][0].rps / 2
            measure(name, f"turn {r}: {RUN_HALF} ({name})", FIXED_CONNECTIONS, half)
    return out


def turns_summary(turns: Mapping[str, list[Any]], large: str, default: str) -> dict[str, Any]:
    """The p99s at half the maximum of `p99_in_turns`, and the large size's as a multiple of the default
    size's: per round, and their median (the verdict, against `P99_GROWTH_TARGET`)."""
    large_p99 = [load.p99_ms for load in turns[large][1:]]
    default_p99 = [load.p99_ms for load in turns[default][1:]]
    ratios = [a / b for a, b in zip(large_p99, default_p99, strict=True) if b > 0]
    ratio = statistics.median(ratios) if ratios else 0.0
    return {
        "rounds": len(ratios),
        "large_p99_ms": large_p99,
        "default_p99_ms": default_p99,
        "large_rps": [load.rps for load in turns[large][1:]],
        "default_rps": [load.rps for load in turns[default][1:]],
        "ratios": ratios,
        "ratio": ratio,
        "target": P99_GROWTH_TARGET,
        "met": bool(ratios) and ratio <= P99_GROWTH_TARGET,
    }


def cache_hit_share(before: Mapping[str, Any], after: Mapping[str, Any]) -> float:
    """Share of the answers between two `answer_counts` readings that came from the answer cache."""
    hits = after["cache"].get("hit", 0) - before["cache"].get("hit", 0)
    misses = after["cache"].get("miss", 0) - before["cache"].get("miss", 0)
    return hits / (hits + misses) if hits + misses > 0 else 0.0


def drive(
    url: str,
    workloads: Mapping[str, list[str]],
    api_key: str,
    seconds: int,
    opts: BenchOptions,
    redis_dir: Path | None = None,
    pid: int | None = None,
    cycle: ComputedCycle | None = None,
) -> tuple[list[Any], dict[str, int], dict[str, float], dict[str, float]]:
    """The wrk runs on one server: the three workloads and /healthz at their maximum, every answer
    computed at half its maximum, then `SIDE_BY_SIDE_PAIRS` pairs of every answer computed and /healthz
    at their maximum, back to back (`side_by_side_ratio`).

    Args:
        url: the service.
        workloads: ``computed``: the students of the every-answer-computed runs (more than the answer
            cache holds), asked as one `ComputedCycle` across the warm-up and those runs; request lines
            of ``sessions`` (`session_requests`) and ``repeats`` (each asked once just before their run).
        api_key: sent as X-API-Key.
        seconds: length of each run.
        opts: the printer.
        redis_dir: the embedded Redis, to count its forks (snapshots, AOF rewrites) during each run.
        pid: the service's process, to read the CPU it spent per request in each run.
        cycle: the computed cycle over ``computed`` (None: a new one), for runs after these to go on with.

    Returns:
        The `LoadResult` of each run (after a warm-up that is not reported), per run label the Redis forks
        during it, the share of answers from the answer cache (from ``/metrics``) and the service's CPU
        microseconds per request (all its threads; 0 without `pid`). A one-process server at its maximum
        spends one core, so the throughput ratio of two runs is about the inverse of their CPU per
        request; CPU per request depends less on what else the shared machine runs than throughput does.
    """
    from training.benchmarks.load import run_wrk

    def forks() -> int:
        return redis_persistence(redis_dir)["total_forks"] if redis_dir is not None else 0

    repeats = workloads["repeats"]
    cycle = cycle or ComputedCycle(workloads["computed"])
    warmup = min(WARMUP_SECONDS, seconds)
    opts.say(f"  wrk: warm-up, one lap over the computed group ({cycle.lap:,} students) ...")
    opts.say(f"  warm-up: {cycle.warm_up(url, api_key, warmup):,} requests; then {seconds} s per run ...")
    results: list[Any] = []
    during: dict[str, int] = {}
    hits: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    #: (label, request lines or None for the computed cycle's next run, connections, at half the maximum)
    plan: list[tuple[str, list[str] | None, int, bool]] = [
        (RUN_COMPUTED, None, MAX_CONNECTIONS, False),
        (RUN_SESSIONS, workloads["sessions"], MAX_CONNECTIONS, False),
        (RUN_REPEATS, repeats, MAX_CONNECTIONS, False),
        (RUN_HEALTHZ, ["/healthz"], MAX_CONNECTIONS, False),
        (RUN_HALF, None, FIXED_CONNECTIONS, True),
    ]

    def measure(label: str, run_paths: list[str] | None, connections: int, rate: float | None = None) -> Any:
        before, counts = forks(), answer_counts(url)
        cpu_before = process_cpu_seconds(pid) if pid is not None else 0.0
        load = run_wrk(url, cycle.next_run() if run_paths is None else run_paths, label=label,
                       api_key=api_key, seconds=seconds, connections=connections, rate=rate)  # fmt: skip
        if run_paths is None:
            cycle.advance(load.requests)
        cpu = process_cpu_seconds(pid) - cpu_before if pid is not None else 0.0
        during[label] = forks() - before
        hits[label] = cache_hit_share(counts, answer_counts(url))
        cpu_us[label] = 1e6 * cpu / load.requests if load.requests else 0.0
        results.append(load)
        return load

    for label, run_paths, connections, half in plan:
        if half and results[0].rps <= 0:
            raise RuntimeError("no /recommendations request completed in the maximum-throughput run")
        if label == RUN_REPEATS:
            # asked once just before their run: the answer cache then holds these students, as it holds a
            # portal's returning ones (the runs before ask more students than it keeps)
            opts.say(f"  every repeat path once ({len(repeats):,} students) ...")
            for path in repeats:
                http_get(url + path, api_key)
        measure(label, run_paths, connections, results[0].rps / 2 if half else None)
    opts.say(f"  {SIDE_BY_SIDE_PAIRS} pairs side by side: every answer computed, then /healthz ...")
    for i in range(1, SIDE_BY_SIDE_PAIRS + 1):
        measure(pair_label(i, RUN_COMPUTED), None, MAX_CONNECTIONS)
        measure(pair_label(i, RUN_HEALTHZ), ["/healthz"], MAX_CONNECTIONS)
    return results, during, hits, cpu_us


def _p99_versus_default(
    opts: BenchOptions, model: str, api_key: str, url: str, cycle: ComputedCycle
) -> dict[str, list[Any]] | str:
    """The large size's p99 at half its maximum taking turns with the default size's server (`p99_in_turns`):
    the default size's serve run in the same ``--data-root`` (its champion, Redis and dataset, as its own
    run left them) is started beside the large one, warmed up, and the two take turns.

    Returns:
        The runs (`p99_in_turns`), or why there was nothing to take turns with.
    """
    from mlflow.exceptions import MlflowException

    from training.benchmarks.data_bench import dataset_dir, dataset_matches

    default_opts = replace(opts, large=False, students=None, lectures=None)
    default_dir = opts.data_root / f"serve-{default_opts.size_label}"
    dataset = dataset_dir(default_opts)
    rerun = f"`learnrec bench --suite serve --serve-model {model} --data-root {opts.data_root}` first"
    not_taken = "p99 not taken in turns with the default size"
    if not (default_dir / "mlflow").is_dir() or not dataset_matches(dataset, default_opts):
        return f"{not_taken}: no default-size serve run in {opts.data_root} ({rerun})"
    env = {**bench_env(default_dir), **(opts.serve_env or {})}
    try:
        other = _champion(env, default_dir)["model"]
    except MlflowException as exc:
        return f"{not_taken}: its champion could not be read ({exc.message[:200]}; {rerun})"
    if other != model:
        return f"{not_taken}: its champion is {other}, not {model} ({rerun})"
    opts.say(
        f"  p99 at half the maximum, taking turns with the default size's server ({P99_TURNS} rounds) ..."
    )
    service: _Service | None = None
    try:
        service, _ = start_service(env, default_dir / "service.log")
        default_cycle = ComputedCycle(student_groups(dataset, opts.seed)["computed"])
        default_cycle.warm_up(service.url, api_key, WARMUP_SECONDS)
        return p99_in_turns(
            {opts.size_label: (url, cycle), "default": (service.url, default_cycle)},
            api_key,
            opts.serve_seconds,
        )
    except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as exc:
        return f"{not_taken}: {' '.join(str(exc).split())[:300]}"
    finally:
        if service is not None:
            stop_service(service)
        _stop_redis(default_dir / "redis")


def worker_ks(workers: int, shapes: int) -> tuple[int, ...]:
    """The k of each lap of the computed cycle on a server of `workers` processes (`drive_workers`): one
    more lap than a student's entry keeps answers (`shapes`, ``service.answer_cache_shapes``), at
    consecutive k around `K`.

    Each worker keeps its own cache, and at the default size a worker puts fewer students in a lap than
    it holds, so a student sent to the same worker lap after lap keeps an entry there, one answer more each
    lap. By the time a k comes back, the entry has either dropped that answer (it keeps the last shapes
    put) or, if the student went to the other worker in between, been pushed out of the cache (two laps'
    puts, half of a group larger than the cache twice, are more than a worker holds).

    Raises:
        ValueError: more than 2 workers (two laps' puts at one worker may then be fewer than it holds).
    """
    if workers > 2:
        raise ValueError(f"the computed cycle is laid out for at most 2 workers, not {workers}")
    laps = shapes + 1
    return tuple(K + lap - laps // 2 for lap in range(laps))


def drive_workers(
    url: str, computed: list[str], api_key: str, seconds: int, workers: int, shapes: int
) -> tuple[Any, Any, float]:
    """Every answer computed and /healthz at their maximum on a server of `workers` processes.

    `computed` is asked as a `ComputedCycle` of laps at the k of `worker_ks`. A worker may still keep a
    student's answers of the laps before (other k): the miss then adds to that entry, a little more work
    than the one worker's computed answers do.

    Returns the two runs and the computed run's share of answers from the cache, as one worker's
    ``/metrics`` counts it."""
    from training.benchmarks.load import run_wrk

    cycle = ComputedCycle(computed, worker_ks(workers, shapes))
    cycle.warm_up(url, api_key, WARMUP_SECONDS)
    counts = answer_counts(url)
    recs = run_wrk(url, cycle.next_run(), label=f"{RUN_COMPUTED} ({workers} workers)", api_key=api_key,
                   seconds=seconds, connections=MAX_CONNECTIONS)  # fmt: skip
    hit = cache_hit_share(counts, answer_counts(url))
    health = run_wrk(url, ["/healthz"], label=f"{RUN_HEALTHZ} ({workers} workers)", api_key=api_key,
                     seconds=seconds, connections=MAX_CONNECTIONS)  # fmt: skip
    return recs, health, hit


def _load_row(
    load: Any, redis_forks: int | None, cache_hits: float | None = None, cpu_us: float | None = None
) -> ItemResult:
    return ItemResult(
        SUITE, load.label, STATUS_OK, "", load.duration_s, 0, {"connections": load.connections},
        {**load.as_dict(), "redis_forks": redis_forks, "cache_hit_share": cache_hits,
         "service_cpu_us_per_request": cpu_us},
    )  # fmt: skip


def run(opts: BenchOptions) -> SuiteResult:
    """Train and register a champion, load Redis, start the service and measure it with wrk.

    Args:
        opts: size, models for the champion, wrk run length, budget, scratch directory, printer.

    Returns:
        Rows of the preparation steps and of each wrk run; the summary holds the ratio, the p99 at half
        the maximum rate and their targets, the service RSS and Redis memory per student.
    """
    from training.benchmarks.load import ensure_wrk

    result = SuiteResult(SUITE, opts.size_label)
    target_p99 = None if opts.large else P99_TARGET_MS
    models = list(opts.serve_models or (("lightfm",) if opts.large else ("all",)))
    opts.say(f"serve suite ({opts.size_label}): champion from `learnrec train --model {' '.join(models)}`")
    try:
        ensure_wrk()
        portal_key, admin_key = dev_keys()
    except (RuntimeError, ImportError, StopIteration) as exc:
        reason = f"not ready to run: {exc}"
        result.items.append(skipped(SUITE, "serve", reason))
        result.notes.append(reason)
        return result

    dataset, prep = ensure_dataset(opts)
    if prep is not None:
        result.items.append(prep)
        if not prep.ok:
            result.items.append(skipped(SUITE, "serve", "the dataset was not generated"))
            return result
    result.dataset = dataset_sizes(dataset)
    data_dir = opts.data_root / f"serve-{opts.size_label}"
    env = bench_env(data_dir)
    # what `learnrec serve` runs with (the steps before it run with `env`)
    service_env = {**env, **(opts.serve_env or {})}
    needed, students = min_students(service_env), result.dataset.get("students", 0)
    if students < needed:
        reason = (
            f"the dataset {dataset} has {students:,} students; the serve bench needs at least {needed:,}: "
            f"{PATH_STUDENTS:,} asked again and again, {SESSION_STUDENTS:,} in sessions, and more than the "
            "answer cache holds for every answer to be computed (use --students)"
        )
        opts.say(f"  {reason}")
        result.items.append(skipped(SUITE, "serve", reason))
        result.notes.append(reason)
        return result
    _wipe(data_dir)
    log = data_dir / "bench-steps.log"

    def failed(row: ItemResult) -> bool:
        opts.say(describe(row))
        result.items.append(row)
        return not row.ok

    full_dataset = dataset
    served = _train_champion(opts, models, full_dataset, env, log, result)
    if served is None:
        return _finish(result, data_dir)
    dataset = served
    n_served = dataset_sizes(dataset)["students"]
    champion = _champion(env, data_dir)
    result.summary["champion"] = champion
    if opts.serve_env:
        result.notes.append(
            "The service ran with " + ", ".join(f"{k}={v}" for k, v in opts.serve_env.items()) + " set."
        )
    result.summary["champion_text"] = (
        f"{champion['model']} ({champion['registered_model']} v{champion['version']}), the best by ndcg@10 "
        f"of `learnrec train --model {' '.join(models)}`"
    )

    opts.say("  loading profiles and history into Redis ...")
    seed = run_item(
        SUITE,
        "seed",
        {"dir": str(full_dataset)},
        budget_s=opts.budget_s,
        memory_budget=opts.memory_budget,
        label="seed history",
        env=env,
    )
    if failed(seed):
        return _finish(result, data_dir)
    redis_dir = data_dir / "redis"
    before = _used_memory(redis_dir)
    opts.say("  learnrec features materialize ...")
    mat = _step("features materialize", [*_learnrec(), "features", "materialize"], env, opts, log)
    if failed(mat):
        return _finish(result, data_dir)
    after = _used_memory(redis_dir)
    n_state = _materialised_students(mat.metrics["note"])
    mat.metrics.update(redis_bytes=after - before, students=n_state)

    # the bulk load makes Redis rewrite its AOF; the service is measured once that is over
    quiet_s = wait_redis_quiet(redis_dir)
    if quiet_s > 1:
        opts.say(f"  waited {quiet_s:.0f} s for Redis to finish its AOF rewrite")
    service: _Service | None = None
    try:
        opts.say("  learnrec serve ...")
        try:
            service, ready_s = start_service(service_env, data_dir / "service.log")
        except RuntimeError as exc:
            result.items.append(ItemResult(SUITE, "start service", "failed", f"failed: {exc}"))
            return _finish(result, data_dir)
        memory = process_memory(service.proc.pid)
        ready_rss = memory.get("VmRSS", 0)
        start_row = ItemResult(
            SUITE, "start service (until /readyz 200)", STATUS_OK, "", ready_s, memory.get("VmHWM", 0), {},
            {"note": f"RSS when ready {ready_rss / 2**20:,.0f} MiB", "rss_bytes": ready_rss},
        )  # fmt: skip
        failed(start_row)
        groups = student_groups(full_dataset, opts.seed)
        paths = paths_for(groups["repeats"])
        workloads = {
            "repeats": paths,
            "computed": groups["computed"],
            "sessions": session_requests(full_dataset, groups["sessions"], opts.seed),
        }
        counts_before = answer_counts(service.url)
        sample = sample_responses(service.url, paths, portal_key)
        sample_row = ItemResult(
            SUITE, "sample requests (1 client)", STATUS_OK, "", 0.0, 0, {},
            {**sample, "note": f"{sample['statuses']} statuses, sources {sample['sources']}, "
             f"{sample['fallback']} fallback, {sample['degraded']} degraded, p50 {sample['p50_ms']:.1f} ms"},
        )  # fmt: skip
        if sample["statuses"].get("200", 0) != sample["requests"]:
            sample_row.status = "failed"
            sample_row.reason = f"failed: not every request answered 200: {sample['statuses']}"
        if failed(sample_row):
            return _finish(result, data_dir)

        seconds = opts.serve_seconds
        cycle = ComputedCycle(workloads["computed"])
        try:
            loads, forks, hits, cpu_us = drive(
                service.url, workloads, portal_key, seconds, opts, redis_dir, service.proc.pid, cycle
            )
        except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as exc:
            failed(ItemResult(SUITE, "wrk", "failed", f"failed: {' '.join(str(exc).split())[:300]}"))
            return _finish(result, data_dir)
        for load in loads:
            failed(_load_row(load, forks[load.label], hits[load.label], cpu_us[load.label]))
        if opts.large:
            turns = _p99_versus_default(opts, champion["model"], portal_key, service.url, cycle)
            if isinstance(turns, str):
                opts.say(f"  {turns}")
                result.notes.append(turns)
            else:
                for load in (load for runs in turns.values() for load in runs):
                    failed(_load_row(load, None))  # two Redis servers: forks not counted
                result.summary["p99_turns"] = turns_summary(turns, opts.size_label, "default")
        run = {load.label: load for load in loads}
        recs, sessions, repeats, health, fixed = (
            run[label] for label in (RUN_COMPUTED, RUN_SESSIONS, RUN_REPEATS, RUN_HEALTHZ, RUN_HALF)
        )
        pairs = [
            (run[pair_label(i, RUN_COMPUTED)].rps, run[pair_label(i, RUN_HEALTHZ)].rps)
            for i in range(1, SIDE_BY_SIDE_PAIRS + 1)
        ]
        counts_after = answer_counts(service.url)
        shares = source_shares(counts_before["source"], counts_after["source"])
        cache_shares = source_shares(counts_before["cache"], counts_after["cache"])
        memory = process_memory(service.proc.pid)
        _, admin_body = http_get(service.url + "/admin/model", admin_key)
        stop_service(service)
        service = None
        opts.say(f"  learnrec serve --workers {SCALE_WORKERS} ...")
        try:
            service, _ = start_service(service_env, data_dir / "service.log", workers=SCALE_WORKERS)
            shapes = answer_cache_setting("answer_cache_shapes", service_env)
            scaled = drive_workers(
                service.url, workloads["computed"], portal_key, seconds, SCALE_WORKERS, shapes
            )
            for load in scaled[:2]:
                failed(_load_row(load, 0, scaled[2] if load is scaled[0] else None))
        except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as exc:
            failed(ItemResult(SUITE, f"{SCALE_WORKERS} workers", "failed", f"failed: {exc}"[:300]))
            scaled = None
    finally:
        if service is not None:
            stop_service(service)
        _stop_redis(redis_dir)

    rate = fixed.target_rps or 0.0
    ratio = side_by_side_ratio(pairs)

    def ratio_of(load: Any) -> float:
        return load.rps / health.rps if health.rps else 0.0

    result.summary["workloads"] = {
        load.label: {"rps": load.rps, "ratio": ratio_of(load), "cache_hit_share": hits[load.label],
                     "p99_ms": load.p99_ms, "cpu_us": cpu_us[load.label]}
        for load in (recs, sessions, repeats)
    }  # fmt: skip
    if cpu_us[health.label] and cpu_us[recs.label]:
        result.summary["cpu"] = {label: cpu_us[load.label] for label, load in
                                 (("computed", recs), ("sessions", sessions), ("repeats", repeats),
                                  ("healthz", health))}  # fmt: skip
        result.summary["cpu_text"] = (
            ", ".join(f"{label} {us:,.0f} µs" for label, us in result.summary["cpu"].items())
            + f": /healthz ÷ computed = {cpu_us[health.label] / cpu_us[recs.label]:.2f} (the throughput "
            "ratio of a server held to one core, from CPU alone)"
        )
    result.summary["workloads_text"] = "; ".join(
        f"{label.removeprefix('max ')}: {w['rps']:,.0f} requests/s = {w['ratio']:.2f} of /healthz "
        f"({w['cache_hit_share']:.1%} from the answer cache, p99 {w['p99_ms']:.1f} ms at max)"
        for label, w in result.summary["workloads"].items()
    )
    if scaled is not None:
        s_recs, s_health, _ = scaled
        result.summary["workers"] = {"workers": SCALE_WORKERS, "computed_rps": s_recs.rps,
                                     "healthz_rps": s_health.rps}  # fmt: skip
        result.summary["workers_text"] = (
            f"every answer computed: {recs.rps:,.0f} requests/s with 1 worker, {s_recs.rps:,.0f} with "
            f"{SCALE_WORKERS} (x{s_recs.rps / recs.rps if recs.rps else 0:.2f}); /healthz {health.rps:,.0f} "
            f"-> {s_health.rps:,.0f}"
        )
    n_full = int(result.dataset.get("students", 0)) or n_served
    n_seeded = int(seed.metrics.get("students", 0)) or n_full
    seed_bytes = int(seed.metrics["redis_bytes"])
    state_bytes = int(mat.metrics["redis_bytes"])
    result.summary.update(
        recommendations_rps=recs.rps,
        healthz_rps=health.rps,
        ratio=ratio,
        side_by_side=[{"computed_rps": c, "healthz_rps": h} for c, h in pairs],
        ratio_target=RATIO_TARGET,
        ratio_met=ratio >= RATIO_TARGET,
        fixed_rate_target_rps=rate,
        fixed_rate_achieved_rps=fixed.rps,
        p50_ms=fixed.p50_ms,
        p95_ms=fixed.p95_ms,
        p99_ms=fixed.p99_ms,
        p99_target_ms=target_p99,
        p99_met=fixed.p99_ms < target_p99 if target_p99 is not None else None,
        errors=sum(load.errors for load in loads),
        service_rss_bytes=memory.get("VmRSS", 0),
        service_peak_rss_bytes=memory.get("VmHWM", 0),
        redis_history_bytes_per_student=seed_bytes / max(n_seeded, 1),
        redis_state_bytes_per_student=state_bytes / n_state if n_state else None,
        redis_used_bytes=before + state_bytes,
        redis_used_bytes_per_student=(before + state_bytes) / max(n_seeded, 1),
        seed_s=seed.seconds,
        seed_peak_rss_bytes=seed.peak_rss_bytes,
        materialize_s=mat.seconds,
        redis_quiet_wait_s=quiet_s,
        service_env=dict(opts.serve_env or {}),
        redis_forks_during_runs=forks,
        students_served=n_seeded,
        students_in_model=n_served,
        answer_sources=shares,
        answer_cache=cache_shares,
        admin_model=_json_or_text(admin_body),
    )
    s = result.summary
    result.summary["ratio_text"] = (
        # three decimals: 0.499 must not read 0.50 beside "NOT met"
        f"{ratio:.3f}, every answer computed, the median of {len(pairs)} pairs run back to back ("
        + ", ".join(f"{c:,.0f} ÷ {h:,.0f} = {c / h if h else 0:.2f}" for c, h in pairs)
        + f" requests/s); target >= {RATIO_TARGET:.2f}: "
        + ("met" if s["ratio_met"] else "NOT met")
    )
    result.summary["p99_text"] = (
        f"p50 {fixed.p50_ms:.1f} / p95 {fixed.p95_ms:.1f} / p99 {fixed.p99_ms:.1f} ms at {fixed.rps:,.0f} "
        f"requests/s (asked {rate:,.0f}); "
        + (
            f"target p99 < {target_p99:.0f} ms: " + ("met" if s["p99_met"] else "NOT met")
            if target_p99 is not None
            else f"target p99 within {P99_GROWTH_TARGET}x of the default size's (set against it below)"
        )
    )
    result.summary["service_rss_text"] = (
        f"{s['service_rss_bytes'] / 2**20:,.0f} MiB after the runs "
        f"(peak {s['service_peak_rss_bytes'] / 2**20:,.0f} MiB)"
    )
    per_state = s["redis_state_bytes_per_student"]
    state_text = (
        f"model state {per_state:,.0f} B/student"
        if per_state is not None
        else "no model state (the champion keeps none)"
    )
    result.summary["redis_text"] = (
        f"{s['redis_used_bytes'] / 2**20:,.1f} MiB used for {n_seeded:,} students "
        f"({s['redis_used_bytes_per_student']:,.0f} B/student in all, measured); profiles + history "
        f"{s['redis_history_bytes_per_student']:,.0f} B/student, {state_text}"
        + (f" ({n_state:,} students in the model)" if n_state and n_state < n_seeded else "")
        + f"; seeding took {seed.seconds:.0f} s, materialise {mat.seconds:.1f} s"
    )
    result.summary["sources_text"] = (
        ", ".join(f"{k} {v:.1%}" for k, v in shares.items()) + " of the answers in the wrk runs"
        if shares
        else "not reported by the service"
    )
    result.summary["cache_text"] = (
        f"{cache_shares.get('hit', 0.0):.1%} of the answers in the wrk runs came from the answer cache"
        if cache_shares.get("hit")
        else "answer cache off or empty: every answer was computed"
    )
    if n_served < n_full:
        result.notes.append(
            f"The champion was trained on {n_served:,} of the {n_full:,} students (the full size did not fit "
            f"the budgets, see the train rows), with the whole catalogue. All {n_seeded:,} students were "
            "seeded and the load rotates over students of the full dataset: those the model never saw are "
            "answered from their profile (the model's user features: source 'profile') or, without one, "
            f"from their history or the popularity lists. Answers by source: {s['sources_text']}."
        )
    if s["errors"]:
        result.notes.append(
            f"{s['errors']:,} requests failed (non-2xx, timeouts or socket errors) in the wrk runs."
        )
    result.notes.append(
        f"Three workloads on one server, students split at random into disjoint groups: every answer "
        f"computed ({len(workloads['computed']):,} students, more than the answer cache holds, asked as one "
        "cycle across the warm-up and the computed runs, each run starting where the last one stopped: "
        "a student comes back only after all the others, long out of the cache); portal sessions "
        "replayed from the dataset's events "
        f"({SESSION_STUDENTS:,} students: a page view, the events of one of the student's lectures through "
        "POST /events under new event ids, the next page view, the same view again with nothing done in "
        "between; the POSTs count as requests of that run); "
        f"repeats only ({len(paths):,} students, every one asked once just before that run: the runs before "
        "ask more students than the answer cache keeps). The share from the "
        "answer cache is read from /metrics around each run. "
        f"wrk 1 thread; maximum runs {MAX_CONNECTIONS} connections for {seconds} s each after a warm-up "
        f"(one lap over the computed group, at most {WARMUP_LAP_LIMIT_SECONDS} s); "
        "fixed rate = half the measured maximum of the computed workload, requests sent on a schedule "
        f"(start + n / rate) over {FIXED_CONNECTIONS} connections; latency percentiles from wrk's histogram "
        f"(from when a request is written). The throughput ratio is the median of {SIDE_BY_SIDE_PAIRS} "
        "pairs run back to back after those runs, every answer computed (the cycle goes on) then /healthz; "
        "the three workloads' ratios are of their own runs. "
        f"k={K}, key X-API-Key (dev key for every region). One uvicorn "
        f"worker, then `learnrec serve --workers {SCALE_WORKERS}` for the scaling rows (the computed cycle "
        "in laps at k="
        + ", ".join(
            map(str, worker_ks(SCALE_WORKERS, answer_cache_setting("answer_cache_shapes", service_env)))
        )
        + ", as each worker keeps its own cache; their "
        "cache share is one worker's /metrics); the service logs every request (info) to service.log."
    )
    return _finish(result, data_dir)


def _materialised_students(note: str) -> int | None:
    found = re.search(r"([\d,]+) students x \d+ float32", note)
    return int(found.group(1).replace(",", "")) if found else None


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", errors="replace")[:500]


def _wipe(data_dir: Path) -> None:
    """Remove the scratch data dir of a previous run (stopping its embedded Redis first)."""
    _stop_redis(data_dir / "redis")
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)


def _stop_redis(redis_dir: Path) -> None:
    from features.redis_server import stop_embedded

    if redis_dir.is_dir():
        stop_embedded(redis_dir)


def _finish(result: SuiteResult, data_dir: Path) -> SuiteResult:
    _stop_redis(data_dir / "redis")
    result.notes.append(f"Logs of the steps and the service: {data_dir}/bench-steps.log, service.log.")
    return result
