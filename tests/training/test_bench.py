"""Smoke runs of the benchmark machinery on tiny sizes: subprocess items, budgets, wrk, results files.

Nothing here asserts a time or a speed: benchmarks measure, tests check that the measuring works.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from service.answer_cache import Answer, AnswerCache
from training.benchmarks import data_bench, report, serve_bench, train_bench
from training.benchmarks.load import LoadResult, run_wrk
from training.benchmarks.runner import (
    BenchOptions,
    ItemResult,
    Phase,
    SuiteResult,
    run_item,
    run_measured,
    skipped,
)

STUDENTS, LECTURES = 60, 40


@pytest.fixture(scope="module")
def tiny_opts(tmp_path_factory: pytest.TempPathFactory) -> BenchOptions:
    return BenchOptions(
        data_root=tmp_path_factory.mktemp("bench"),
        students=STUDENTS,
        lectures=LECTURES,
        models=("popularity",),
    )


@pytest.fixture(scope="module")
def data_result(tiny_opts: BenchOptions) -> SuiteResult:
    return data_bench.run(tiny_opts)


def test_data_suite_measures_generation_and_reading_in_subprocesses(data_result: SuiteResult) -> None:
    generate, read, imported = data_result.items
    assert [generate.item, read.item, imported.item] == ["generate", "read + validate", "import"]
    assert generate.ok and read.ok and imported.ok, (generate.reason, read.reason, imported.reason)
    # the events written as CSV and imported back are the dataset: same rows, same fingerprint
    assert imported.metrics["events"] == read.metrics["events"] and imported.metrics["same_fingerprint"]
    assert imported.metrics["import_peak_rss_bytes"] > 0
    assert generate.metrics["students"] == STUDENTS
    assert generate.metrics["lectures"] == LECTURES
    assert generate.metrics["events"] == read.metrics["events"] == data_result.dataset["events"] > 0
    assert generate.metrics["tables_bytes"] > 0
    for row in (generate, read):
        # the child's own peak: at least what the interpreter with numpy and pyarrow holds
        assert row.peak_rss_bytes > 20 * 2**20
    for step in ("load", "fingerprint", "split", "matrices"):
        assert read.metrics[f"{step}_s"] >= 0
        assert read.metrics[f"{step}_peak_rss_bytes"] > 0
    assert read.metrics["interactions"] > 0


def test_data_suite_reuses_a_generated_dataset(data_result: SuiteResult, tiny_opts: BenchOptions) -> None:
    again = data_bench.run(tiny_opts)
    assert [row.item for row in again.items] == ["read + validate", "import"]  # (the CSV kept: no export)
    assert again.items[0].ok, again.items[0].reason
    assert again.dataset == data_result.dataset
    assert any("reused" in note for note in again.notes)


def test_train_suite_reuses_the_dataset_and_scores(tiny_opts: BenchOptions, data_result: SuiteResult) -> None:
    result = train_bench.run(tiny_opts)
    assert [i.item for i in result.items] == ["matrices", "fit popularity"]  # no "prep: generate"
    matrices, fit = result.items
    assert matrices.ok and fit.ok, (matrices.reason, fit.reason)
    assert matrices.metrics["students"] == STUDENTS
    assert matrices.metrics["interactions"] > 0
    m = fit.metrics
    assert m["model"] == "popularity"
    assert m["score_students"] == STUDENTS  # 1,000 asked, only 60 exist
    assert m["score_students_per_s"] > 0
    assert m["single_calls"] == STUDENTS
    assert m["model_bytes"] > 0
    assert fit.peak_rss_bytes >= m["fit_peak_rss_bytes"] > 0

    out = tiny_opts.data_root / "results"
    machine = report.machine_info()
    for suite in (data_result, result):
        report.write_suite(
            suite, out, command="learnrec bench --students 60", started_at=_now(), machine=machine
        )
    payload = json.loads((out / "train-custom-60x40.json").read_text(encoding="utf-8"))
    assert payload["command"] == "learnrec bench --students 60"
    assert payload["machine"]["nproc"] >= 1 and payload["machine"]["memory_bytes"] > 0
    assert payload["machine"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(payload["git"]) == {"commit", "dirty"}
    markdown = report.write_markdown(out).read_text(encoding="utf-8")
    assert markdown.index("## data — custom-60x40") < markdown.index("## train — custom-60x40")
    assert "Command: `learnrec bench --students 60`" in markdown
    assert "| popularity |" in markdown and "| generate |" in markdown and "| load |" in markdown


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_subsample_keeps_a_share_of_the_students_with_all_their_events(
    data_result: SuiteResult, tiny_opts: BenchOptions, tmp_path: Path
) -> None:
    from features.tables import read_dataset

    source = data_bench.dataset_dir(tiny_opts)
    params = {"source": str(source), "out": str(tmp_path / "sub"), "fraction": 0.5, "seed": 3}
    row = run_item("train", "subsample", params, budget_s=120)
    assert row.ok, row.reason
    full, sub = read_dataset(source), read_dataset(tmp_path / "sub")  # validated: references hold
    kept = set(sub.students["student_id"])
    assert 0 < len(kept) < STUDENTS and row.metrics["students"] == len(kept)
    assert len(sub.lectures) == LECTURES
    full_events = full.events.to_pandas()
    expected = full_events[full_events["student_id"].isin(kept)]
    assert len(sub.events) == len(expected) == row.metrics["events"]
    assert sub.manifest["subsample"] == {"source": str(source), "fraction": 0.5, "seed": 3}


def test_train_suite_steps_down_and_reports_every_attempt(
    data_result: SuiteResult, tiny_opts: BenchOptions
) -> None:
    # a budget no item can meet (imports alone take longer): every attempt is skipped, none is lost
    opts = BenchOptions(
        data_root=tiny_opts.data_root, students=STUDENTS, lectures=LECTURES, models=("popularity",),
        budget_s=0.05, step_fractions=(0.5,),
    )  # fmt: skip
    result = train_bench.run(opts)
    items = [(i.item, i.status) for i in result.items]
    assert items == [
        (f"matrices ({STUDENTS} students)", "skipped"),
        ("prep: subsample 50% of the students", "skipped"),
        ("fit popularity", "skipped"),
    ]
    assert "time budget" in result.items[0].reason
    assert "no size of the matrices fitted" in result.items[-1].reason


def test_an_item_past_its_time_budget_is_killed() -> None:
    measured = run_measured([sys.executable, "-c", "import time; time.sleep(60)"], budget_s=0.3)
    assert measured.timed_out
    assert measured.returncode < 0  # killed by a signal, not finished


def test_an_item_past_its_memory_budget_is_killed() -> None:
    hog = "import numpy as np, time; a = np.ones(50_000_000); time.sleep(60)"  # 400 MB
    measured = run_measured([sys.executable, "-c", hog], memory_budget=150 * 2**20, budget_s=60)
    assert measured.out_of_memory and not measured.timed_out
    assert measured.returncode < 0


def test_a_failing_item_is_a_failed_row_naming_the_error(tmp_path: Path) -> None:
    row = run_item("train", "model", {"dir": str(tmp_path / "missing"), "model": "popularity"}, budget_s=120)
    assert row.status == "failed"
    assert "DatasetNotFoundError" in row.reason and "missing" in row.reason


def test_a_failed_item_keeps_the_metrics_of_the_phases_it_finished(
    data_result: SuiteResult, tiny_opts: BenchOptions
) -> None:
    """Regression: checkpoints went to the child's __main__ copy of the runner and were lost."""
    params = {"dir": str(data_bench.dataset_dir(tiny_opts)), "model": "no-such-model"}
    row = run_item("train", "model", params, budget_s=120)
    assert row.status == "failed" and "no-such-model" in row.reason
    assert row.metrics["students"] == STUDENTS and row.metrics["build_s"] >= 0
    assert (
        row.peak_rss_bytes >= row.metrics["process_peak_rss_bytes"] > row.metrics["build_peak_rss_bytes"] / 2
    )


def test_an_unknown_item_is_refused() -> None:
    row = run_item("data", "no-such-item", {}, budget_s=60)
    assert row.status == "failed" and "no-such-item" in row.reason


def test_phase_peak_covers_the_phase_and_the_process_peak_survives_resets() -> None:
    from training.benchmarks.runner import process_peak, rss_bytes

    with Phase() as big:
        block = np.ones(30_000_000)  # 240 MB
        del block
    if not big.peak_is_phase:
        pytest.skip("this kernel does not allow resetting the peak RSS mark")
    with Phase() as small:
        pass
    assert big.peak_rss_bytes - small.peak_rss_bytes > 150 * 2**20
    assert process_peak() >= big.peak_rss_bytes > rss_bytes()[0]


def test_report_shows_skipped_and_partial_rows(tmp_path: Path) -> None:
    result = SuiteResult("train", "large", {"students": 1_000_000, "lectures": 20_000, "events": 5})
    result.items.append(skipped("train", "fit blend", "not run in this test"))
    reason = "skipped: exceeded the time budget of 20 min (killed)"
    killed = ItemResult(
        "train", "fit lightfm", "skipped", reason, 1200.0, 2**30, {}, {"build_s": 12.5, "read_s": 3.0}
    )
    result.items.append(killed)
    report.write_suite(result, tmp_path / "results", command="learnrec bench --large", started_at=_now(),
                       machine=report.machine_info())  # fmt: skip
    text = report.render(tmp_path / "results")
    assert "skipped: not run in this test" in text
    assert "skipped: exceeded the time budget of 20 min (killed) (finished: matrices 12.5 s)" in text
    assert "1,000,000 students" in text


def test_report_sets_the_large_p99_against_the_default_sizes(tmp_path: Path) -> None:
    """The 1M serve run's p99 at half the maximum is read against the default size's, same champion."""
    out = tmp_path / "results"

    def serve(size: str, model: str, p99: float) -> None:
        result = SuiteResult("serve", size, {"students": 10})
        result.variant = f"champion-from-{model}"
        result.summary.update(champion={"model": model}, p99_ms=p99)
        report.write_suite(result, out, command="learnrec bench --suite serve", started_at=_now(),
                           machine=report.machine_info())  # fmt: skip

    serve("large", "sequence", 5.2)
    assert "this size ÷ the default size" not in report.render(out)  # no default run of the champion
    serve("default", "lightfm", 2.0)
    assert "this size ÷ the default size" not in report.render(out)  # another champion
    serve("default", "sequence", 4.0)
    assert "5.2 ÷ 4.0 ms = 1.30; target <= 1.3: met" in report.render(out)
    serve("large", "sequence", 5.3)
    assert "the same commit): 5.3 ÷ 4.0 ms = 1.32; target <= 1.3: NOT met" in report.render(out)
    default = out / "serve-default-champion-from-sequence.json"
    payload = json.loads(default.read_text(encoding="utf-8"))
    payload["git"]["commit"] = "0" * 40
    default.write_text(json.dumps(payload), encoding="utf-8")
    assert "commit 0000000, another commit, perhaps another machine: not side by side): 5.3 ÷ 4.0" in (
        report.render(out)
    )

    # the verdict taken in turns with the default size's server, when the large run has it
    large = out / "serve-large-champion-from-sequence.json"
    payload = json.loads(large.read_text(encoding="utf-8"))
    payload["summary"]["p99_turns"] = {
        "rounds": 2, "large_p99_ms": [4.0, 5.2], "default_p99_ms": [4.0, 4.0], "ratios": [1.0, 1.3],
        "ratio": 1.15, "target": 1.3, "met": True,
    }  # fmt: skip
    large.write_text(json.dumps(payload), encoding="utf-8")
    assert (
        "(same machine, same minutes; 2 rounds, the order turned each round): this size 4.0, 5.2 ms, the "
        "default size 4.0, 4.0 ms; this ÷ default per round 1.00, 1.30; median 1.15; target <= 1.3: met"
    ) in report.render(out)
    assert (
        "5.3 ÷ 4.0 ms = 1.32; context (runs apart in time): the verdict is taken in turns"
        in report.render(out)
    )


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("X-API-Key")))  # its own server's list
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def http_server() -> Iterator[str]:
    # each server records into a list of its own, which the tests read as `_Recorder.seen`: a request
    # the previous test's wrk left in flight, answered after that server shut down, lands in its old list
    seen: list[tuple[str, str | None]] = []
    _Recorder.seen = seen
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("_Recording", (_Recorder,), {"seen": seen}))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_wrk_rotates_paths_sends_the_key_and_reports_percentiles(http_server: str) -> None:
    result = run_wrk(http_server, ["/a?x=1", "/b"], label="max", api_key="k-1", seconds=1, connections=2)
    assert result.requests > 0 and result.errors == 0
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    paths = {p for p, _ in _Recorder.seen}
    assert paths == {"/a?x=1", "/b"}
    assert {k for _, k in _Recorder.seen} == {"k-1"}

    fixed = run_wrk(http_server, ["/c"], label="fixed", seconds=1, connections=2, rate=40)
    assert fixed.target_rps == 40
    assert 0 < fixed.requests <= 60  # held near 40/s, far below what the closed loop above managed


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_the_warm_up_goes_one_lap_over_the_computed_group_and_the_next_run_goes_on_from_there(
    http_server: str,
) -> None:
    """A real wrk against a server: the warm-up asks every student of the group (in runs of a second),
    and the next run starts past where it stopped."""
    students = [f"s{i:04d}" for i in range(300)]
    cycle = serve_bench.ComputedCycle(students)
    asked = cycle.warm_up(http_server, "k-1", seconds=1)
    seen = {p.split("student_id=")[1].split("&")[0] for p, _ in _Recorder.seen}
    assert asked >= len(students) and cycle.at >= cycle.lap and seen == set(students)
    assert cycle.next_run()[0] == serve_bench.paths_for(students)[cycle.at % len(students)]


def _fake_wrk(calls: list[tuple[str, str, float | None]]) -> Any:
    """`run_wrk`'s double: twice the requests at the maximum as at a fixed rate, p99 by server."""

    def run(url: str, paths: list[str], *, label: str, rate: float | None = None, **_: Any) -> LoadResult:
        calls.append((url, paths[0], rate))
        rps = 1000.0 if url == "http://large" else 1200.0
        p99 = {"http://large": 5.0, "http://default": 4.0}[url]
        n = int(rps if rate is None else rate)
        return LoadResult(label, n, 1.0, float(n), 0, 1.0, 2.0, p99, 9.0, rate)

    return run


def test_the_large_size_takes_turns_with_the_default_size_at_half_their_maximums() -> None:
    """Each server's maximum first, then runs at half of it, the order turned round every round; each run
    goes on along the server's own computed cycle."""
    calls: list[tuple[str, str, float | None]] = []
    large = serve_bench.ComputedCycle([f"L{i}" for i in range(5000)])
    default = serve_bench.ComputedCycle([f"D{i}" for i in range(5000)])
    turns = serve_bench.p99_in_turns(
        {"large": ("http://large", large), "default": ("http://default", default)}, "k", 1, rounds=3,
        run=_fake_wrk(calls),
    )  # fmt: skip
    assert [(url, rate) for url, _, rate in calls] == [
        ("http://large", None), ("http://default", None),
        ("http://large", 500.0), ("http://default", 600.0),
        ("http://default", 600.0), ("http://large", 500.0),
        ("http://large", 500.0), ("http://default", 600.0),
    ]  # fmt: skip
    starts = [first for url, first, _ in calls if url == "http://large"]
    assert len(set(starts)) == len(starts)  # every run started where the last one stopped
    assert [len(turns["large"]), len(turns["default"])] == [4, 4]
    summary = serve_bench.turns_summary(turns, "large", "default")
    assert summary["ratios"] == [1.25, 1.25, 1.25] and summary["ratio"] == 1.25 and summary["met"]
    assert summary["large_p99_ms"] == [5.0, 5.0, 5.0] and summary["rounds"] == 3


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_turns_run_real_wrk_against_live_servers(http_server: str) -> None:
    """The same turns through wrk against a live server (under two names, two groups of students)."""
    groups = {name: [f"{name}{i:03d}" for i in range(200)] for name in ("a", "b")}
    cycles = {name: serve_bench.ComputedCycle(students) for name, students in groups.items()}
    turns = serve_bench.p99_in_turns(
        {name: (http_server, cycle) for name, cycle in cycles.items()}, "k-1", 1, rounds=2
    )
    for loads in turns.values():
        assert len(loads) == 3 and all(load.errors == 0 and load.requests > 0 for load in loads)
        assert [load.target_rps for load in loads[1:]] == [loads[0].rps / 2] * 2
    seen = {p.split("student_id=")[1].split("&")[0] for p, _ in _Recorder.seen}
    assert {s[0] for s in seen} == {"a", "b"}
    summary = serve_bench.turns_summary(turns, "a", "b")
    assert summary["rounds"] == 2 and summary["ratio"] > 0


def test_serve_helpers_pick_students_and_dev_keys(data_result: SuiteResult, tiny_opts: BenchOptions) -> None:
    from features.api_keys import DEV_KEYS

    paths = serve_bench.recommendation_paths(data_bench.dataset_dir(tiny_opts), 25, seed=1)
    assert len(paths) == len(set(paths)) == 25
    assert all(p.startswith("/recommendations?student_id=s") and p.endswith("&k=10") for p in paths)
    assert paths == serve_bench.recommendation_paths(data_bench.dataset_dir(tiny_opts), 25, seed=1)
    portal, admin = serve_bench.dev_keys()
    assert not DEV_KEYS[portal][2] and DEV_KEYS[admin][2]
    env = serve_bench.bench_env(Path("/x/serve"))
    assert env["LEARNREC_DATA_DIR"] == "/x/serve" and "REDIS_URL" not in env


def test_the_serve_bench_refuses_a_dataset_too_small_for_its_workloads(
    data_result: SuiteResult, tiny_opts: BenchOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: below ~15,000 students the sessions group came out empty and the bench died in pyarrow
    (ArrowTypeError) after training and loading Redis; it now says at once how many students it needs."""
    monkeypatch.setattr("training.benchmarks.load.ensure_wrk", lambda: "/usr/bin/wrk")  # not needed here
    result = serve_bench.run(tiny_opts)
    (row,) = result.items
    assert row.status == "skipped" and f"has {STUDENTS} students" in row.reason
    assert f"at least {serve_bench.min_students():,}" in row.reason and "--students" in row.reason
    slack = serve_bench.CYCLE_SLACK
    assert serve_bench.min_students() == 5_000 + 10_000 + 20_000 + slack
    assert serve_bench.min_students({"LEARNREC_SERVICE__ANSWER_CACHE_SIZE": "0"}) == 15_000 + slack
    assert not (tiny_opts.data_root / "serve-default").exists()  # nothing trained, nothing loaded


@pytest.mark.parametrize("workers", [1, 2])
def test_the_computed_cycle_never_meets_a_cached_answer_nor_an_entry(workers: int) -> None:
    """The computed workload's runs, played against the service's own answer cache (one per worker, each
    request to a worker at random): with the smallest group `min_students` allows, every answer is a miss,
    run after run, although wrk's count of each run leaves out up to one request per connection; with one
    worker it is put into a new entry (nothing kept of the student). Regression: every run started at the
    top of the list at another k, so the students of one run were still cached in the next and every put
    added an answer to their entries."""
    capacity = 2_000  # with the smallest group, a worker of two puts fewer students in a lap than it holds
    students = [f"s{i:05d}" for i in range(capacity + serve_bench.CYCLE_SLACK)]
    caches = [AnswerCache(capacity) for _ in range(workers)]
    for cache in caches:
        cache.live(True)
    shapes = caches[0].shapes
    cycle = serve_bench.ComputedCycle(
        students, serve_bench.worker_ks(workers, shapes) if workers > 1 else (10,)
    )
    rng = np.random.default_rng(7)
    asked = 0
    for _ in range(12):  # runs from a third of a lap of the group to more than a lap
        paths = cycle.next_run()
        n = int(rng.integers(1_000, 4_000))
        for path in (paths * 2)[:n]:
            query = dict(part.split("=") for part in path.split("?", 1)[1].split("&"))
            cache = caches[int(rng.integers(workers))]
            shape = f"{query['k']}/None/None"
            assert cache.get(query["student_id"], shape, ()) is None
            if workers == 1:  # a new entry, as after a key change (a worker of several may still keep the
                assert query["student_id"] not in cache._students  # student's answer of the lap before)
            computed = Answer(
                "model", False, None, False, "seoul", None, None, False, b"}", b"", "h", 10, 0, "1"
            )
            cache.put(query["student_id"], shape, (), computed, cache.ticket())
        asked += n
        cycle.advance(n - int(rng.integers(0, serve_bench.MAX_CONNECTIONS + 1)))  # in flight: not counted
    assert asked > 5 * len(students) and all(len(cache) == capacity for cache in caches)


def test_seed_item_loads_profiles_and_history_into_a_real_redis(
    data_result: SuiteResult, tiny_opts: BenchOptions, redis_client: object, redis_url: str, tmp_path: Path
) -> None:
    import redis

    from features import keys

    env = {**serve_bench.bench_env(tmp_path), "LEARNREC_REDIS__URL": redis_url}
    row = run_item("serve", "seed", {"dir": str(data_bench.dataset_dir(tiny_opts))}, budget_s=120, env=env)
    assert row.ok, row.reason
    assert row.metrics["students"] == STUDENTS
    assert 0 < row.metrics["students_with_history"] <= STUDENTS
    assert row.metrics["redis_bytes"] > 0
    assert isinstance(redis_client, redis.Redis)
    assert redis_client.exists(keys.profile("s0000001")) == 1


def test_answer_sources_are_read_from_the_metrics_and_shared_out() -> None:
    text = (
        "# HELP learnrec_recommendations_total Recommendation answers, by source\n"
        "# TYPE learnrec_recommendations_total counter\n"
        'learnrec_recommendations_total{source="model"} 120.0\n'
        'learnrec_recommendations_total{source="profile"} 75.0\n'
        'learnrec_recommendations_created{source="model"} 1.7e+09\n'
        'learnrec_recommendations_fallback_total{source="profile"} 75.0\n'
    )
    after = serve_bench.parse_answer_sources(text)
    assert after == {"model": 120, "profile": 75}
    shares = serve_bench.source_shares({"model": 20}, {**after, "popular_region": 5})
    assert list(shares) == ["model", "profile", "popular_region"]
    assert shares == pytest.approx({"model": 100 / 180, "profile": 75 / 180, "popular_region": 5 / 180})
    assert serve_bench.source_shares({}, {}) == {}
    cache = (
        'learnrec_answer_cache_total{outcome="hit"} 90.0\nlearnrec_answer_cache_total{outcome="miss"} 10.0\n'
    )
    assert serve_bench.parse_counter(text + cache, "learnrec_answer_cache_total") == {"hit": 90, "miss": 10}


def test_bench_says_first_what_it_needs_from_the_system(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Regression: the serve bench needed `wrk` without saying so up front (and installed it itself)."""
    from typer.testing import CliRunner

    from training.cli import app

    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk there
    result = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "results")])
    assert result.exit_code == 2
    first, second = result.output.splitlines()[:2]
    assert first.startswith("learnrec bench needs wrk") and "apt-get install wrk" in first
    assert first.endswith(": missing") and "--suite data" in second
    assert not (tmp_path / "results").exists()  # stopped before any suite ran


def test_serve_workloads_split_students_and_replay_sessions(
    data_result: SuiteResult, tiny_opts: BenchOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setattr(serve_bench, "PATH_STUDENTS", 10)
    monkeypatch.setattr(serve_bench, "SESSION_STUDENTS", 8)
    monkeypatch.setattr(serve_bench, "SESSION_ROUND", 3)
    dataset = data_bench.dataset_dir(tiny_opts)
    groups = serve_bench.student_groups(dataset, seed=1)
    assert len(groups["repeats"]) == 10 and len(groups["sessions"]) == 8
    seen = [s for g in groups.values() for s in g]
    assert len(seen) == len(set(seen)) == STUDENTS
    lines = serve_bench.session_requests(dataset, groups["sessions"], seed=1)
    posts = [line for line in lines if line.startswith("POST\t/events\t")]
    views = [line for line in lines if line.startswith("/recommendations?student_id=")]
    assert len(views) == 3 * len(posts) and len(lines) == 4 * len(posts) and posts
    # a round: the first views, then the events, then the next views of the same students, then again
    assert lines[:3] == lines[6:9] == lines[9:12] and all(line.startswith("POST") for line in lines[3:6])
    for line in posts:
        events = json.loads(line.split("\t", 2)[2])["events"]
        assert 1 <= len(events) <= serve_bench.SESSION_EVENTS
        assert all(e["event_id"].endswith("-s") for e in events)
        assert len({(e["student_id"], e["lecture_id"]) for e in events}) == 1


def test_results_keep_the_hand_written_analysis(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    assert "## Growth" not in report.render(results)
    (results / report.ANALYSIS_FILE).write_text("## Growth\n\n한 대의 한계: read grows linearly.\n", "utf-8")
    text = report.render(results)
    assert "## Growth\n\n한 대의 한계: read grows linearly." in text


def test_process_cpu_is_read_from_proc_for_a_live_process_and_zero_when_gone() -> None:
    """The serve suite's CPU per request: a process's user + system seconds, every thread."""
    import subprocess

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ninput()"
    busy = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while serve_bench.process_cpu_seconds(busy.pid) < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.25 <= serve_bench.process_cpu_seconds(busy.pid) < 5
    finally:
        busy.communicate(b"\n", timeout=20)
    assert serve_bench.process_cpu_seconds(busy.pid) == 0.0


def test_the_throughput_ratio_is_the_median_of_the_side_by_side_pairs() -> None:
    pairs = [(2_400.0, 5_000.0), (2_750.0, 5_000.0), (2_600.0, 5_000.0)]  # 0.48, 0.55, 0.52
    assert serve_bench.side_by_side_ratio(pairs) == pytest.approx(0.52)  # not the first (0.48) nor the mean
    assert serve_bench.side_by_side_ratio(list(reversed(pairs))) == pytest.approx(0.52)
    assert serve_bench.side_by_side_ratio([(1_000.0, 4_000.0), (3_000.0, 4_000.0)]) == pytest.approx(0.5)
    # a pair whose /healthz run completed nothing says nothing; no pair at all gives 0
    assert serve_bench.side_by_side_ratio([(2_000.0, 0.0), (1_000.0, 4_000.0)]) == pytest.approx(0.25)
    assert serve_bench.side_by_side_ratio([]) == 0.0
    labels = {
        serve_bench.pair_label(i, run)
        for i in (1, 2)
        for run in (serve_bench.RUN_COMPUTED, serve_bench.RUN_HEALTHZ)
    }
    assert len(labels) == 4  # each run of each pair its own row
