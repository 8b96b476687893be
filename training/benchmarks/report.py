"""Benchmark results: one JSON per suite and size in bench/results/, and bench/RESULTS.md rendered from them.

Every JSON carries the machine (CPU model, cores, memory, Python and library versions, load average
before and after), the date, the git commit and the exact command, so a figure is never separated from
where and how it was measured. RESULTS.md is regenerated from all JSON files in the results directory
after every run, so results of different suites and sizes sit side by side.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.benchmarks.runner import SuiteResult
from training.benchmarks.serve_bench import P99_GROWTH_TARGET

#: Order of the sections in RESULTS.md.
SUITE_ORDER = ("quality", "data", "train", "serve", "cluster")
_LIBRARIES = (
    "numpy", "scipy", "pandas", "pyarrow", "scikit-learn", "lightfm-next", "fastapi", "uvicorn", "redis",
)  # fmt: skip
_REPO = Path(__file__).resolve().parents[2]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_info() -> dict[str, Any]:
    """The machine and software the figures were measured on.

    Returns:
        nproc, usable cores, memory, CPU model, OS, Python and library versions, load average now.
    """
    versions: dict[str, str] = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "nproc": os.cpu_count() or 0,
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_bytes": _memory_bytes(),
        "cpu_model": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def git_info(repo: Path = _REPO) -> dict[str, Any]:
    """Commit of the code measured and whether the working tree had uncommitted changes.

    Returns:
        ``{"commit": sha or None, "dirty": bool or None}``.
    """
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index of someone else's checkout
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, env=env, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def suite_file(out_dir: Path, suite: str, size: str, variant: str = "") -> Path:
    """``<out_dir>/<suite>-<size>[-<variant>].json``."""
    return out_dir / (f"{suite}-{size}-{variant}.json" if variant else f"{suite}-{size}.json")


def write_suite(
    result: SuiteResult,
    out_dir: Path,
    *,
    command: str,
    started_at: dt.datetime,
    machine: Mapping[str, Any],
) -> Path:
    """Write one suite's results as JSON (replacing the previous file of that suite and size).

    Args:
        result: what the suite measured.
        out_dir: results directory (bench/results).
        command: the exact command line that ran it.
        started_at: when the suite started (UTC).
        machine: `machine_info()` taken when the run started (its load average is kept as "before").

    Returns:
        The file written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    after = machine_info()
    payload = {
        "suite": result.suite,
        "size": result.size,
        "command": command,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": {**machine, "loadavg_before": machine.get("loadavg"), "loadavg_after": after["loadavg"]},
        **{k: v for k, v in result.as_dict().items() if k not in ("suite", "size")},
    }
    payload["machine"].pop("loadavg", None)
    path = suite_file(out_dir, result.suite, result.size, result.variant)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Markdown


def _mib(n: float | None) -> str:
    if not n:
        return "-"
    if n >= 10 * 2**30:
        return f"{n / 2**30:,.1f} GiB"
    if n < 2**20:
        return f"{n / 2**10:,.0f} KiB"
    return f"{n / 2**20:,.0f} MiB"


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.2f}" if x < 10 else f"{x:,.1f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return lines


def _status(item: Mapping[str, Any]) -> str | None:
    """The reason text of a row that did not run (None when it ran)."""
    return None if item["status"] == "ok" else str(item["reason"])


_READ_STEPS = {
    "load": "features.tables.read_dataset: the Parquet files read, every rule checked (on the Arrow columns "
    "when the file has the schema's types: no validated copy), events sorted; what learnrec train reads "
    "(events held by pandas until stop 33, by Arrow since stop 34)",
    # results written before the two were measured as one step (load)
    "read": "features.tables.read_dataset(validate=False): Parquet -> pandas, events sorted",
    "validate": "features.tables.validated: types, ids, enums, ranges, references",
    "fingerprint": "Dataset.fingerprint() (what learnrec train logs)",
    "split": "training.splits.make_split('temporal'): quantile 0.8, 14-day horizon",
    "matrices": "features.matrices.build_training_data on the split's training side",
}


def _data_tables(payload: Mapping[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    for item in payload["items"]:
        m = item["metrics"]
        why = _status(item)
        if item["item"].startswith("read"):
            for step in _READ_STEPS:
                if f"{step}_s" not in m:
                    if why:
                        rows.append([step, why, "-", "-", "-", _READ_STEPS[step]])
                        why = None
                    continue
                rate = m["events"] / m[f"{step}_s"] if m[f"{step}_s"] else None
                rows.append([
                    step, _s(m[f"{step}_s"]), _s(item["seconds"]) if step in ("load", "read") else "",
                    _mib(m[f"{step}_peak_rss_bytes"]), f"{_n(rate)} events/s", _READ_STEPS[step],
                ])  # fmt: skip
        elif why:
            rows.append([item["item"], why, _s(item["seconds"]), _mib(item["peak_rss_bytes"]), "-", "-"])
        elif item["item"] == "import":
            rate = m["events"] / m["import_s"] if m["import_s"] else None
            same = {True: "yes", False: "NO"}.get(m.get("same_fingerprint"), "not reached")
            rows.append([
                "import", _s(m["import_s"]), _s(item["seconds"]), _mib(m["import_peak_rss_bytes"]),
                f"{_n(rate)} events/s",
                "learnrec data import (features.event_files): the events as plain CSV, streamed by pyarrow, "
                f"with the students and lectures files; same fingerprint as the dataset: {same}",
            ])  # fmt: skip
        else:
            rows.append([
                item["item"], _s(m["generate_s"]), _s(item["seconds"]), _mib(item["peak_rss_bytes"]),
                f"{_n(m['events_per_s'])} events/s",
                f"{m['events']:,} events, {m['series']:,} series; tables {_mib(m['tables_bytes'])} on disk "
                f"(+ ground truth {_mib(m['ground_truth_bytes'])})",
            ])  # fmt: skip
    return _table(["step", "time s", "process wall s", "peak RSS", "throughput", "notes"], rows)


def _train_tables(payload: Mapping[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    for item in payload["items"]:
        m = item["metrics"]
        why = _status(item)
        if why:
            phases = (("build_s", "matrices"), ("fit_s", "fit"))
            done = [f"{label} {_s(m[key])} s" for key, label in phases if key in m]
            note = why + (f" (finished: {', '.join(done)})" if done else "")
            rows.append([
                item["item"].removeprefix("fit "), "-", "-", _mib(item["peak_rss_bytes"]), "-", "-", "-",
                _s(item["seconds"]), note,
            ])  # fmt: skip
        elif "fit_s" in m:
            note = item["reason"] or ""
            rows.append([
                item["item"].removeprefix("fit "), _s(m["fit_s"]), _mib(m["fit_peak_rss_bytes"]),
                _mib(item["peak_rss_bytes"]), _n(m["score_students_per_s"]),
                f"{_ms(m['single_p50_ms'])} / {_ms(m['single_p99_ms'])}", _mib(m["model_bytes"]),
                _s(item["seconds"]), note,
            ])  # fmt: skip
        elif "build_s" in m:
            rows.append([
                "(matrices)", _s(m["build_s"]), _mib(m["build_peak_rss_bytes"]), _mib(item["peak_rss_bytes"]),
                "-", "-", _mib(m["matrices_bytes"]), _s(item["seconds"]),
                f"read {_s(m['read_s'])} s; {m['students']:,} students x {m['lectures']:,} lectures, "
                f"{m['interactions']:,} interactions from {m['events']:,} events",
            ])  # fmt: skip
        elif "generate_s" in m:
            rows.append([
                item["item"], _s(m["generate_s"]), "-", _mib(item["peak_rss_bytes"]), "-", "-", "-",
                _s(item["seconds"]), "dataset was missing: generated first",
            ])  # fmt: skip
    header = [
        "model", "fit s", "peak RSS in fit", "process peak RSS", "score students/s (1,000 at once)",
        "1 student p50 / p99 ms", "size (model / matrices)", "process wall s", "notes",
    ]  # fmt: skip
    return _table(header, rows)


def _serve_tables(payload: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    s = payload.get("summary", {})
    if s:
        lines.append("Headline (same server, same run):")
        lines.append("")
        for key, text in (
            ("ratio_text", "throughput of computed /recommendations ÷ /healthz"),
            ("workloads_text", "workloads"),
            ("cpu_text", "service CPU per request (user + system, every thread, at the maximum rate)"),
            ("workers_text", "workers"),
            ("p99_text", "p99 of /recommendations at half the maximum rate"),
            ("service_rss_text", "service RSS"),
            ("redis_text", "Redis memory"),
            ("sources_text", "answers by source"),
            ("cache_text", "answer cache"),
            ("champion_text", "champion served"),
        ):
            if key in s:
                lines.append(f"- {text}: {s[key]}")
        saturated = [
            i for i in payload["items"]
            if "max /recommendations" in i["item"]
            and i["status"] == "ok" and i["metrics"].get("errors")
        ]  # fmt: skip
        for i in saturated:
            m = i["metrics"]
            lines.append(
                f"- caution: the maximum-throughput run of /recommendations had {m['errors']:,} failed "
                f"requests of {m['requests']:,} (wrk's 2 s timeout): the service collapsed under "
                f"{m['connections']} concurrent connections, so the ratio and the 'half the maximum' rate "
                "describe that collapse"
            )
        lines.append("")
    prep: list[list[str]] = []
    load: list[list[str]] = []
    for item in payload["items"]:
        m = item["metrics"]
        why = _status(item)
        if "rps" in m or (why and item["item"].startswith("wrk")):
            if why:
                load.append([item["item"], why, "", "", "", "", "", "", "", ""])
                continue
            target = m.get("target_rps")
            load.append([
                item["item"], str(m.get("connections", "")), _n(target) if target else "max", _n(m["rps"]),
                _ms(m["p50_ms"]), _ms(m["p95_ms"]), _ms(m["p99_ms"]), _ms(m["max_ms"]),
                f"{m['errors']:,} / {m['requests']:,}", _forks(m.get("redis_forks")),
            ])  # fmt: skip
        else:
            prep.append([
                item["item"], why or _s(item["seconds"]), _mib(item["peak_rss_bytes"]) if not why else "-",
                str(m.get("note", "")) if not why else "",
            ])  # fmt: skip
    if prep:
        lines += _table(["step", "time s", "peak RSS", "notes"], prep)
        lines.append("")
    if load:
        header = ["wrk run", "connections", "target rps", "achieved rps", "p50 ms", "p95 ms", "p99 ms",
                  "max ms", "errors / requests", "Redis forks during the run"]  # fmt: skip
        lines += _table(header, load)
    return lines


def _quality_tables(payload: Mapping[str, Any]) -> list[str]:
    """One table: NDCG@10 / recall@10 per model (columns) per dataset (rows), the champion in bold."""
    items = [i for i in payload["items"] if i["metrics"].get("models") or i["status"] != "ok"]
    models: list[str] = []
    for item in items:
        models += [m for m in item["metrics"].get("models", {}) if m not in models]
    reference = [m for m in models if m == "lightfm_direct"]
    models = [m for m in models if m not in reference] + reference
    rows: list[list[str]] = []
    checks: list[list[str]] = []
    for item in items:
        m = item["metrics"]
        why = _status(item)
        if why and not m.get("models"):
            rows.append([item["item"], why] + [""] * (len(models) + 1))
            continue
        cells = []
        for name in models:
            r = m["models"].get(name)
            cell = "-" if r is None else f"{r['ndcg']:.3f} / {r['recall']:.3f}"
            cells.append(f"**{cell}**" if name == m.get("champion") else cell)
        students = (
            f"{m.get('students', 0):,} x {m.get('lectures', 0):,}; {m.get('test_students', 0):,} tested"
        )
        split = m.get("split", {})
        how = "last lecture" if "n" in split else "14 d" if split.get("horizon_days") else "all later"
        rows.append([item["item"], students, how, *cells])
        c = payload.get("summary", {}).get(item["item"], {})
        if c:
            checks.append([
                item["item"],
                f"{c.get('lightfm_minus_direct', 0.0):+.3f} {'ok' if c.get('lightfm_ok') else 'BELOW'}"
                f" ({c.get('lightfm_minus_direct_served', c.get('lightfm_minus_direct', 0.0)):+.3f})",
                f"{c.get('blend_minus_best_component', 0.0):+.3f} {'ok' if c.get('blend_ok') else 'BELOW'}",
                f"{m.get('champion')}: {c.get('champion_gap', 0.0):.3f} "
                f"{'ok' if c.get('champion_ok') else 'FAR'}",
                "; ".join(m.get("notes", [])) or "-",
            ])  # fmt: skip
    lines = _table(["dataset", "students x lectures", "test", *models], rows)
    if checks:
        lines += [
            "",
            "Checks (issue 12): lightfm - lightfm_direct >= 0 on the raw rankings (model against library; "
            "the served lists' difference in brackets); blend - best component >= -0.005 and champion "
            "(chosen on validation) within 0.01 of the best model on test, both served.",
            "",
        ]
        header = ["dataset", "lightfm - direct: raw (served)", "blend - best component",
                  "champion: gap to best", "notes"]  # fmt: skip
        lines += _table(header, checks)
    return lines


def _cluster_tables(payload: Mapping[str, Any]) -> list[str]:
    """Preparation steps, one wrk row per (workers, endpoint), and the failover run's counts."""
    prep: list[list[str]] = []
    load: list[list[str]] = []
    for item in payload["items"]:
        m = item["metrics"]
        why = _status(item)
        if "rps" in m:
            load.append([
                item["item"], _n(m["rps"]), _ms(m["p50_ms"]), _ms(m["p99_ms"]), _ms(m["max_ms"]),
                f"{m['errors']:,} / {m['requests']:,}", str(m.get("load_before", "")),
            ])  # fmt: skip
        else:
            prep.append(
                [item["item"], why or _s(item["seconds"]), _mib(item["peak_rss_bytes"]) if not why else "-"]
            )
    lines = [*_table(["step", "time s", "peak RSS"], prep), ""] if prep else []
    if load:
        header = ["wrk run (max rate, 16 connections)", "requests/s", "p50 ms", "p99 ms", "max ms",
                  "non-2xx or errors / requests", "load average before (1, 5, 15 min)"]  # fmt: skip
        lines += [*_table(header, load), ""]
    f = payload.get("summary", {}).get("failover")
    if f:
        kill = f.get("kill", {})
        lines += [
            f"Failover: a primary (port {kill.get('port')}) SIGKILLed {f.get('kill_after', 8)} s into a "
            f"{f.get('seconds', 0):.0f} s run of 2 readers and 2 retrying event writers against 2 workers "
            f"(load before: {f.get('load_before')}); a replica took over after "
            f"{kill.get('failover_s', 0):.1f} s, the killed node was back as its replica "
            f"{kill.get('back_as_replica_s', 0):.1f} s after the kill.",
            "",
        ]
        reads = ", ".join(f"{k}: {v:,}" for k, v in sorted(f.get("reads", {}).items()))
        posts = ", ".join(f"{k}: {v:,}" for k, v in sorted(f.get("posts", {}).items()))
        lines += _table(
            ["what", "figure"],
            [
                ["GET /recommendations answers by status", reads or "-"],
                ["POST /events answers by status (0 = no answer)", posts or "-"],
                ["batches sent again after a non-2xx", f"{f.get('retried_batches', 0):,}"],
                ["events answered 2xx", f"{f.get('events_2xx', 0):,}"],
                ["of them missing from the streams", f"{f.get('answered_2xx_missing', 0):,}"],
                ["events in the streams twice", f"{f.get('in_streams_twice', 0):,}"],
            ],
        )
    return lines


_RENDER = {
    "cluster": _cluster_tables,
    "data": _data_tables,
    "train": _train_tables,
    "serve": _serve_tables,
    "quality": _quality_tables,
}


def _machine_line(payload: Mapping[str, Any]) -> str:
    m = payload["machine"]
    git = payload.get("git", {})
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    before, after = m.get("loadavg_before") or [], m.get("loadavg_after") or []
    return (
        f"{m['cpu_model']}, {m['nproc']} cores ({m['usable_cpus']} usable), {_mib(m['memory_bytes'])} RAM; "
        f"Python {m['python']}; {m['os']}. Load average before {before[0] if before else '?'}, after "
        f"{after[0] if after else '?'} (other work on the machine shows here). Commit {commit}; "
        f"{payload['started_at']} to {payload['finished_at']} UTC."
    )


#: Hand-written Markdown in the results directory, placed after the header of RESULTS.md (reading of the
#: figures across runs and sizes, which no single run measures).
ANALYSIS_FILE = "ANALYSIS.md"


def render(out_dir: Path) -> str:
    """RESULTS.md for every suite JSON in `out_dir` (data, train, serve; default size before large).

    Args:
        out_dir: the results directory.

    Returns:
        The Markdown text.
    """
    payloads = []
    for path in sorted(out_dir.glob("*.json")):
        try:
            payloads.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue

    def order(p: Mapping[str, Any]) -> tuple[int, int, str]:
        suite = SUITE_ORDER.index(p["suite"]) if p["suite"] in SUITE_ORDER else len(SUITE_ORDER)
        size = {"default": 0, "large": 1}.get(p["size"], 2)
        return suite, size, p["size"] + p.get("variant", "")

    lines = [
        "# learnrec benchmarks",
        "",
        "Generated by `learnrec bench` (`make bench`) from the JSON files in `bench/results/`; do not edit "
        "by hand, rerun the command. Each item runs in its own process, so its peak RSS (`ru_maxrss` of that "
        "process; per phase from `/proc/self/status` VmHWM after resetting it) is its own. Times are wall "
        "clock on the machine named under each section, which is shared with other work: compare figures "
        "within one run, and read the load average next to them.",
        "",
        "Sizes: *default* = the platform's regions today (43,300 students: Seoul 35,000 and five partner "
        "regions) x 5,000 lectures; *large* = 1,000,000 students x 20,000 lectures (`--large`).",
        "",
    ]
    if not payloads:
        lines.append("No results yet: run `learnrec bench`.")
    analysis = out_dir / ANALYSIS_FILE
    if analysis.is_file():  # written by a person from the figures below: how steps grow, where one box stops
        lines += [analysis.read_text(encoding="utf-8").rstrip(), ""]
    for p in sorted(payloads, key=order):
        d = p.get("dataset") or {}
        sizes = ", ".join(f"{v:,} {k}" for k, v in d.items())
        lines += [
            f"## {p['suite']} — {p['size']}"
            + (f", {p['variant'].replace('-', ' ')}" if p.get("variant") else "")
            + (f" ({sizes})" if sizes else ""),
            "",
            f"Command: `{p['command']}`",
            "",
            f"Machine: {_machine_line(p)}",
            "",
        ]
        lines += _RENDER.get(p["suite"], lambda _: [])(p)
        if p["suite"] == "serve" and p["size"] == "large":
            lines += _p99_across_sizes(p, payloads)
        lines.append("")
        for note in p.get("notes", []):
            lines.append(f"- {note}")
        if p.get("notes"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _p99_across_sizes(large: Mapping[str, Any], payloads: Sequence[Mapping[str, Any]]) -> list[str]:
    """The large serve run's p99 at half its maximum against the default size's, same champion model
    (the newest default run of it), said to be side by side only when it ran on the same commit (a run of
    another commit may be of another machine too); nothing when there is none."""
    lines = _p99_turns(large.get("summary", {}).get("p99_turns"))
    model = large.get("summary", {}).get("champion", {}).get("model")
    same = [
        p for p in payloads
        if p["suite"] == "serve" and p["size"] == "default" and p.get("summary", {}).get("p99_ms")
        and p["summary"].get("champion", {}).get("model") == model
    ]  # fmt: skip
    p99 = large.get("summary", {}).get("p99_ms")
    if not same or not p99 or model is None:
        return lines
    commit = large.get("git", {}).get("commit")
    default = max(same, key=lambda p: p["finished_at"])
    base = default["summary"]["p99_ms"]
    ratio = p99 / base
    verdict = "met" if ratio <= P99_GROWTH_TARGET else "NOT met"
    side_by_side = (
        "the same commit"
        if default.get("git", {}).get("commit") == commit
        else "another commit, perhaps another machine: not side by side"
    )
    # with turns taken, two runs apart in time are context: the verdict is the turns'
    verdict_text = (
        "context (runs apart in time): the verdict is taken in turns, above"
        if lines
        else f"target <= {P99_GROWTH_TARGET}: {verdict}"
    )
    return [
        *lines,
        "",
        f"- p99 at half the maximum rate, this size ÷ the default size ({model} champion, default run of "
        f"{default['finished_at'][:10]}, commit {default['git']['commit'][:7]}, {side_by_side}): "
        f"{p99:.1f} ÷ {base:.1f} ms = {ratio:.2f}; {verdict_text}",
    ]


def _forks(n: int | None) -> str:
    """Redis forks during a wrk run ("-": not counted, as in the runs taking turns on two Redis servers)."""
    return "-" if n is None else str(n)


def _p99_turns(turns: Mapping[str, Any] | None) -> list[str]:
    """The large serve run's p99 at half its maximum taking turns with the default size's server
    (`serve_bench.p99_in_turns`): the verdict measured side by side."""
    if not turns or not turns.get("rounds"):
        return []

    def ms(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    verdict = "met" if turns["met"] else "NOT met"
    return [
        "",
        f"- p99 at half the maximum rate, taking turns with the default size's server (same machine, same "
        f"minutes; {turns['rounds']} rounds, the order turned each round): this size "
        f"{ms(turns['large_p99_ms'])} ms, the default size {ms(turns['default_p99_ms'])} ms; this ÷ default "
        "per round "
        + ", ".join(f"{r:.2f}" for r in turns["ratios"])
        + f"; median {turns['ratio']:.2f}; target <= {turns['target']}: {verdict}",
    ]


def write_markdown(out_dir: Path) -> Path:
    """Regenerate ``RESULTS.md`` next to the results directory (bench/results -> bench/RESULTS.md).

    Args:
        out_dir: the results directory.

    Returns:
        The Markdown file written.
    """
    path = out_dir.parent / "RESULTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(out_dir), encoding="utf-8")
    return path
