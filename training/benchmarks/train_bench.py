"""Train suite: the training matrices, then per model fit time, peak RSS and scoring throughput.

Every model runs in its own process (`training.benchmarks.runner`), so its peak RSS is its own: read the
dataset (no validation: the data suite times that), `features.matrices.build_training_data` on all
events (no split: this measures cost, not accuracy; `learnrec train` fits on the training part of a
split, so a little less), fit with the model's default hyper-parameters, then score
`model.score(data.batch(rows))` for 1,000 random students at once (students/s) and one student at a
time (latency per call, what one request costs the model), and save it (bytes on disk).

At the large size the matrices may not fit in memory, nor a model's fit in the time budget. Then the
suite steps down through `LARGE_FRACTIONS`: a subsample dataset keeping that share of the students (with
all their events, written by streaming the Parquet files, so the subsample never needs the full table in
memory), and reports the attempts that did not fit as skipped rows with the reason.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.benchmarks.data_bench import dataset_sizes, ensure_dataset
from training.benchmarks.runner import (
    BenchOptions,
    ItemFn,
    Phase,
    Progress,
    SuiteResult,
    checkpoint,
    describe,
    run_item,
    skipped,
)

SUITE = "train"
#: Students scored at once for the throughput figure.
SCORE_STUDENTS = 1_000
#: One-student calls timed for the per-call latency.
SINGLE_CALLS = 200

#: Shares of the students tried at the large size, largest first (a step down when a budget is exceeded).
LARGE_FRACTIONS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1)


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def _load(params: Mapping[str, Any], progress: Progress) -> tuple[Any, dict[str, Any]]:
    """Read the dataset and build the training data."""
    from features.matrices import build_training_data
    from features.tables import read_dataset

    with Phase() as read:
        ds = read_dataset(Path(params["dir"]), validate=False)
    checkpoint({"read_s": read.seconds, "read_peak_rss_bytes": read.peak_rss_bytes, **ds.sizes})
    progress("read", 1, 2)
    students, events = ds.students, ds.events
    n_events = len(events)
    with Phase() as build:
        data = build_training_data(students, ds.lectures, events)
    progress("matrices", 2, 2)
    del ds, students, events
    nbytes = sum(
        m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        for m in (data.interactions, data.age_days, data.student_features)
    ) + sum(s.nbytes for s in data.sequences)
    facts = {
        "students": len(data.students),
        "lectures": len(data.catalogue.lectures),
        "events": n_events,
        "interactions": int(data.interactions.nnz),
        "read_s": read.seconds,
        "build_s": build.seconds,
        "build_peak_rss_bytes": build.peak_rss_bytes,
        "matrices_bytes": int(nbytes),
    }
    checkpoint(facts)
    return data, facts


def _matrices(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    _, facts = _load(params, progress)
    return facts


def _model(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    import numpy as np

    from models import get_model_class

    data, facts = _load(params, progress)
    seed = int(params.get("seed", 42))
    overrides: dict[str, Any] = {"seed": seed}  # every model takes a seed; the base class does not say so
    model = get_model_class(params["model"])(**overrides)
    with Phase() as fit:
        model.fit(data)
    facts.update(fit_s=fit.seconds, fit_peak_rss_bytes=fit.peak_rss_bytes)
    checkpoint(facts)
    progress("fit", 1, 1)

    n = len(data.students)
    rng = np.random.default_rng(seed)
    rows = np.sort(
        rng.choice(n, size=min(int(params.get("score_students", SCORE_STUDENTS)), n), replace=False)
    )
    rows = rows.astype(np.int32)
    model.score(data.batch(rows[: min(8, rows.size)]))  # warm-up: lazy imports and caches are not scoring
    with Phase() as score:
        scores = model.score(data.batch(rows))
    if scores.shape != (rows.size, len(data.catalogue.lectures)) or not np.isfinite(scores).all():
        raise ValueError(f"{params['model']}.score returned shape {scores.shape} or non-finite values")
    del scores
    single: list[float] = []
    for r in rows[: int(params.get("single_calls", SINGLE_CALLS))]:
        started = time.perf_counter()
        model.score(data.batch(np.asarray([r], dtype=np.int32)))
        single.append(time.perf_counter() - started)
    progress("score", 1, 1)
    with tempfile.TemporaryDirectory(prefix="learnrec-bench-model-") as tmp:
        started = time.perf_counter()
        model.save(Path(tmp) / "model")
        save_s = time.perf_counter() - started
        saved = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    return {
        **facts,
        "model": params["model"],
        "model_params": model.params(),
        "fit_s": fit.seconds,
        "fit_peak_rss_bytes": fit.peak_rss_bytes,
        "fit_peak_is_phase": fit.peak_is_phase,
        "score_students": int(rows.size),
        "score_s": score.seconds,
        "score_students_per_s": rows.size / score.seconds if score.seconds else 0.0,
        "score_peak_rss_bytes": score.peak_rss_bytes,
        "single_calls": len(single),
        "single_p50_ms": 1000 * _percentile(single, 50),
        "single_p99_ms": 1000 * _percentile(single, 99),
        "save_s": save_s,
        "model_bytes": saved,
    }


def _subsample(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    """Write a dataset keeping a random share of the students and all their events, streaming the events."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.tables import MANIFEST_FILE, TABLE_FILES

    source, out = Path(params["source"]), Path(params["out"])
    fraction, seed = float(params["fraction"]), int(params["seed"])
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        students = pq.read_table(source / TABLE_FILES["students"])
        keep = np.random.default_rng(seed).random(students.num_rows) < fraction
        students = students.filter(keep)
        pq.write_table(students, tmp / TABLE_FILES["students"], compression="zstd")
        shutil.copyfile(source / TABLE_FILES["lectures"], tmp / TABLE_FILES["lectures"])
        chosen = students.column("student_id")
        events_in = pq.ParquetFile(source / TABLE_FILES["events"])
        n_events = 0
        with pq.ParquetWriter(
            tmp / TABLE_FILES["events"], events_in.schema_arrow, compression="zstd"
        ) as writer:
            groups = events_in.num_row_groups
            for g in range(groups):
                batch = events_in.read_row_group(g)
                kept = batch.filter(pc.is_in(batch.column("student_id"), value_set=chosen))
                writer.write_table(kept)
                n_events += kept.num_rows
                progress("events", g + 1, groups)
        manifest = json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))
        manifest["sizes"] = {
            "students": students.num_rows,
            "lectures": manifest.get("sizes", {}).get("lectures"),
            "events": n_events,
        }
        manifest["subsample"] = {"source": str(source), "fraction": fraction, "seed": seed}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"students": students.num_rows, "events": n_events, "fraction": fraction}


#: Items the runner can start in a child process.
ITEMS: dict[str, ItemFn] = {"matrices": _matrices, "model": _model, "subsample": _subsample}


def model_names(opts: BenchOptions) -> list[str]:
    """The models to run: `opts.models`, else every model of `models.MODELS` (in registry order)."""
    from models import MODELS

    if opts.models:
        unknown = [m for m in opts.models if m not in MODELS]
        if unknown:
            raise ValueError(f"unknown model {', '.join(unknown)}: choose from {', '.join(MODELS)}")
        return list(opts.models)
    return list(MODELS)


def _subsample_dir(source: Path, fraction: float) -> Path:
    return source.parent / f"{source.name}-students{round(fraction * 100)}pct"


def _subsample_matches(directory: Path, source: Path, fraction: float, seed: int) -> bool:
    from features.tables import MANIFEST_FILE

    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        source_manifest = json.loads((source / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    wanted = {"source": str(source), "fraction": fraction, "seed": seed}
    return bool(
        manifest.get("subsample") == wanted and manifest.get("config") == source_manifest.get("config")
    )


class Datasets:
    """The full dataset and its subsamples, made (and measured, as ``prep:`` rows) when first needed.

    Args:
        opts: budgets, seed, printer.
        full: the full dataset directory.
        result: the suite whose rows receive the ``prep: subsample`` rows.
    """

    def __init__(self, opts: BenchOptions, full: Path, result: SuiteResult) -> None:
        self.opts, self.full, self.result = opts, full, result
        self.dirs: dict[float, Path | None] = {1.0: full}

    def get(self, fraction: float) -> Path | None:
        """The dataset keeping `fraction` of the students (None when it could not be made)."""
        if fraction not in self.dirs:
            out = _subsample_dir(self.full, fraction)
            if _subsample_matches(out, self.full, fraction, self.opts.seed):
                self.dirs[fraction] = out
            else:
                params = {
                    "source": str(self.full),
                    "out": str(out),
                    "fraction": fraction,
                    "seed": self.opts.seed,
                }
                opts = self.opts
                row = run_item(
                    SUITE, "subsample", params, budget_s=opts.budget_s, memory_budget=opts.memory_budget,
                    label=f"prep: subsample {fraction:.0%} of the students",
                )  # fmt: skip
                self.opts.say(describe(row))
                self.result.items.append(row)
                self.dirs[fraction] = out if row.ok else None
        return self.dirs[fraction]


def fractions_for(opts: BenchOptions) -> tuple[float, ...]:
    """Shares of the students to try, largest first: 1.0, then the steps down of `opts` or the large size."""
    if opts.step_fractions is not None:
        return tuple(dict.fromkeys((1.0, *sorted(opts.step_fractions, reverse=True))))
    return LARGE_FRACTIONS if opts.large and opts.students is None else (1.0,)


def _label(base: str, directory: Path, stepped: bool) -> str:
    return f"{base} ({dataset_sizes(directory)['students']:,} students)" if stepped else base


def _step_note(fraction: float, tried: list[str]) -> str:
    if fraction >= 1.0:
        return ""
    return f"on {fraction:.0%} of the students: {'; '.join(tried)}"


def run(opts: BenchOptions) -> SuiteResult:
    """Build the matrices, then fit and score each model, each in its own process.

    At the large size, the matrices and each model step down through `LARGE_FRACTIONS` of the students
    until they fit the memory and time budgets; the attempts that did not fit stay in the results.

    Args:
        opts: size, models, budget, scratch directory, progress printer.

    Returns:
        Rows ``matrices`` and ``fit <model>`` (plus ``prep: ...`` rows for datasets made on the way).
    """
    names = model_names(opts)
    result = SuiteResult(SUITE, opts.size_label)
    opts.say(f"train suite ({opts.size_label}): {', '.join(names)}")
    directory, prep = ensure_dataset(opts)
    if prep is not None:
        result.items.append(prep)
        if not prep.ok:
            result.items.extend(skipped(SUITE, f"fit {m}", "the dataset was not generated") for m in names)
            return result
    result.dataset = dataset_sizes(directory)
    fractions = fractions_for(opts)
    stepped = len(fractions) > 1
    datasets = Datasets(opts, directory, result)

    def attempt(item: str, label: str, start: int, extra: Mapping[str, Any]) -> int | None:
        """Run `item` from fraction index `start` down; the index that fitted, or None."""
        tried: list[str] = []
        for i in range(start, len(fractions)):
            d = datasets.get(fractions[i])
            if d is None:
                return None
            params = {"dir": str(d), "seed": opts.seed, **extra}
            opts.say(f"  {_label(label, d, stepped)} ...")
            row = run_item(
                SUITE, item, params, budget_s=opts.budget_s, memory_budget=opts.memory_budget,
                label=_label(label, d, stepped), note=_step_note(fractions[i], tried),
            )  # fmt: skip
            opts.say(describe(row))
            result.items.append(row)
            if row.ok:
                return i
            if row.status != "skipped":  # an error, not a budget: a smaller size would not help
                return None
            tried.append(f"{dataset_sizes(d)['students']:,} students {row.reason.removeprefix('skipped: ')}")
        return None

    fitted = attempt("matrices", "matrices", 0, {})
    if fitted is None:
        result.items.extend(
            skipped(SUITE, f"fit {m}", "no size of the matrices fitted the budgets") for m in names
        )
        result.notes.append("The training matrices did not fit the memory or time budget at any size tried.")
        return result
    if fitted:
        result.notes.append(
            f"The matrices of all {result.dataset.get('students', 0):,} students did not fit the budgets: "
            f"the models ran on {fractions[fitted]:.0%} of the students (all their events), or less where "
            "noted."
        )
    for name in names:
        index = attempt("model", f"fit {name}", fitted, {"model": name})
        if index is not None:
            row = result.items[-1]
            m = row.metrics
            result.summary[name] = {
                "students": m["students"],
                "fit_s": m["fit_s"],
                "peak_rss_bytes": row.peak_rss_bytes,
                "score_students_per_s": m["score_students_per_s"],
            }
    result.notes.append(
        "Each model in its own process: read the dataset (no validation), build_training_data on all "
        "events (no split), fit with default hyper-parameters (seeded; LightFM single-threaded), score "
        f"{SCORE_STUDENTS:,} random students in one model.score call (students/s) and "
        f"{SINGLE_CALLS} one-student calls (latency per call), save. Process peak RSS includes the "
        "dataset and the matrices (see the matrices row)."
    )
    return result
