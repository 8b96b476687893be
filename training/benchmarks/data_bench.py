"""Data suite: synthetic generation (time, peak RSS, events/s, bytes on disk), then reading and validating it.

Items run in their own processes (`training.benchmarks.runner`): ``generate`` calls
`features.synth.generate` on `features.synth.scaled_config`; ``read`` times `features.tables.read_dataset`
(reading and checking every rule, as `learnrec train` reads), then `Dataset.fingerprint`, the temporal
split and the training matrices: the steps `learnrec train` takes before it fits; ``import`` times
`learnrec data import` (`features.event_files.load_event_files`) of the events exported as plain CSV
(``export``, once per dataset) with the dataset's students and lectures files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.benchmarks.runner import (
    BenchOptions,
    ItemFn,
    ItemResult,
    Phase,
    Progress,
    SuiteResult,
    checkpoint,
    describe,
    run_item,
    skipped,
)

SUITE = "data"


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _generate(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    from features.synth import generate, scaled_config
    from features.tables import TABLE_FILES

    config = scaled_config(params["students"], params["lectures"], params["seed"])
    out = Path(params["out"])
    with Phase() as phase:
        summary = generate(config, out, progress)
    tables = sum(_tree_bytes(out / f) for f in TABLE_FILES.values())
    total = _tree_bytes(out)
    return {
        "students": summary.students,
        "lectures": summary.lectures,
        "series": summary.series,
        "events": summary.events,
        "event_types": dict(summary.event_types),
        "generate_s": phase.seconds,
        "generate_peak_rss_bytes": phase.peak_rss_bytes,
        "events_per_s": summary.events / phase.seconds if phase.seconds else 0.0,
        "tables_bytes": tables,
        "ground_truth_bytes": total - tables,
    }


def _read(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    from features.matrices import build_training_data
    from features.tables import read_dataset
    from training.splits import make_split

    directory = Path(params["dir"])
    metrics: dict[str, Any] = {}
    with Phase() as load:
        ds = read_dataset(directory)
    metrics.update(ds.sizes, load_s=load.seconds, load_peak_rss_bytes=load.peak_rss_bytes)
    checkpoint(metrics)
    progress("read and check", 1, 4)
    with Phase() as fingerprint:
        ds.fingerprint()
    metrics.update(fingerprint_s=fingerprint.seconds, fingerprint_peak_rss_bytes=fingerprint.peak_rss_bytes)
    checkpoint(metrics)
    progress("fingerprint", 2, 4)
    with Phase() as split_phase:
        split = make_split("temporal", ds)
    metrics.update(split_s=split_phase.seconds, split_peak_rss_bytes=split_phase.peak_rss_bytes)
    checkpoint(metrics)
    progress("split", 3, 4)
    del ds
    train = split.train
    with Phase() as matrices:
        data = build_training_data(train.students, train.lectures, train.events, as_of=split.as_of)
    metrics.update(
        matrices_s=matrices.seconds,
        matrices_peak_rss_bytes=matrices.peak_rss_bytes,
        interactions=int(data.interactions.nnz),
    )
    progress("matrices", 4, 4)
    return metrics


def _export_csv(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    """The dataset's events written as a plain CSV file, a row group at a time (what `_import` reads)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from features.tables import TABLE_FILES

    source = pq.ParquetFile(Path(params["dir"]) / TABLE_FILES["events"])
    out = Path(params["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    writer = None
    with Phase() as phase:
        for group in range(source.num_row_groups):
            table = source.read_row_group(group)
            table = pa.table(
                [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns],
                names=table.column_names,
            )  # (plain text, as a CSV from another system holds it)
            writer = writer or pcsv.CSVWriter(str(partial), table.schema)
            writer.write_table(table)
            progress("export csv", group + 1, source.num_row_groups)
        if writer is not None:
            writer.close()
        partial.replace(out)
    return {"export_s": phase.seconds, "csv_bytes": out.stat().st_size}


def _import(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    """`learnrec data import` of the exported CSV with the dataset's students and lectures files."""
    from features.event_files import load_event_files
    from features.tables import TABLE_FILES, read_dataset

    directory = Path(params["dir"])
    with Phase() as phase:
        ds = load_event_files(
            Path(params["csv"]), directory / TABLE_FILES["students"], directory / TABLE_FILES["lectures"]
        )
    metrics: dict[str, Any] = dict(
        ds.sizes, import_s=phase.seconds, import_peak_rss_bytes=phase.peak_rss_bytes
    )
    checkpoint(metrics)
    progress("import", 1, 2)
    imported = ds.fingerprint()
    del ds
    metrics["same_fingerprint"] = read_dataset(directory).fingerprint() == imported
    progress("import", 2, 2)
    return metrics


#: Items the runner can start in a child process.
ITEMS: dict[str, ItemFn] = {"generate": _generate, "read": _read, "export": _export_csv, "import": _import}


def generate_params(opts: BenchOptions, out: Path) -> dict[str, Any]:
    """Parameters of the ``generate`` item for the size in `opts`."""
    students, lectures = opts.size
    return {"students": students, "lectures": lectures, "seed": opts.seed, "out": str(out)}


def dataset_dir(opts: BenchOptions) -> Path:
    """Where the benchmarks keep the generated dataset of the size in `opts` (shared by the suites)."""
    from features.synth import scaled_config

    students, lectures = opts.size
    config = scaled_config(students, lectures, opts.seed)
    return opts.data_root / "datasets" / f"synth-{config.students}x{config.lectures}-seed{opts.seed}"


def dataset_matches(directory: Path, opts: BenchOptions) -> bool:
    """True when `directory` holds a complete dataset generated with the config and generator of today."""
    from features.synth import GENERATOR_VERSION, scaled_config
    from features.tables import MANIFEST_FILE

    manifest_file = directory / MANIFEST_FILE
    if not manifest_file.is_file():
        return False
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    students, lectures = opts.size
    expected = scaled_config(students, lectures, opts.seed).as_dict()
    generator = manifest.get("generator", {})
    return bool(manifest.get("config") == expected and generator.get("version") == GENERATOR_VERSION)


def dataset_sizes(directory: Path) -> dict[str, int]:
    """Students, lectures and events recorded in a dataset's manifest."""
    from features.tables import MANIFEST_FILE

    manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    return {k: int(v) for k, v in manifest.get("sizes", {}).items()}


def ensure_dataset(opts: BenchOptions) -> tuple[Path, ItemResult | None]:
    """The dataset of the size in `opts`, generated (and measured) only when it is not there yet.

    Returns:
        (its directory, the ``generate`` row when it had to be generated, else None).
    """
    directory = dataset_dir(opts)
    if dataset_matches(directory, opts):
        opts.say(f"  dataset {directory} already generated: reused")
        return directory, None
    opts.say(f"  generating the dataset {directory} first")
    row = run_item(
        SUITE,
        "generate",
        generate_params(opts, directory),
        budget_s=opts.budget_s,
        memory_budget=opts.memory_budget,
        label="prep: generate",
    )
    opts.say(describe(row))
    return directory, row


def run(opts: BenchOptions) -> SuiteResult:
    """Generate the dataset of the size in `opts`, then read and validate it, each in its own process.

    Args:
        opts: size, budget, scratch directory, progress printer.

    Returns:
        Rows ``generate`` and ``read + validate``.
    """
    students, lectures = opts.size
    directory = dataset_dir(opts)
    result = SuiteResult(SUITE, opts.size_label)
    opts.say(
        f"data suite ({opts.size_label}): {students or 'default regions (43,300)'} students x "
        f"{lectures:,} lectures -> {directory}"
    )
    reused = dataset_matches(directory, opts)
    if reused:
        opts.say(f"  dataset {directory} already generated: reused (no generate row)")
    else:
        gen = run_item(
            SUITE,
            "generate",
            generate_params(opts, directory),
            budget_s=opts.budget_s,
            memory_budget=opts.memory_budget,
        )
        opts.say(describe(gen))
        result.items.append(gen)
        if not gen.ok:
            result.items.append(skipped(SUITE, "read + validate", "the dataset was not generated"))
            return result
        m = gen.metrics
        result.summary = {
            "generate_s": m["generate_s"],
            "generate_peak_rss_bytes": gen.peak_rss_bytes,
            "events_per_s": m["events_per_s"],
        }
    sizes = dataset_sizes(directory)
    result.dataset = {k: sizes[k] for k in ("students", "lectures", "events")}
    read = run_item(
        SUITE,
        "read",
        {"dir": str(directory)},
        budget_s=opts.budget_s,
        memory_budget=opts.memory_budget,
        label="read + validate",
    )
    opts.say(describe(read))
    result.items.append(read)
    if read.ok:
        result.summary["read_validate_s"] = read.metrics["load_s"]
    result.items.extend(_import_rows(opts, directory))
    if reused:
        result.notes.append("the dataset was already there (generated earlier with the same config): reused")
    result.notes.append(
        "generate = features.synth.generate(scaled_config(students, lectures, seed)); the process peak "
        "includes interpreter and imports. read and check = read_dataset (Parquet read, every rule "
        "checked, events sorted), fingerprint = Dataset.fingerprint, split = the "
        "default temporal split (training.splits), matrices = build_training_data on its training side "
        "(what learnrec train prepares). import = learnrec data import (features.event_files) of the "
        "events written as plain CSV, with the dataset's students and lectures files."
    )
    return result


def _import_rows(opts: BenchOptions, directory: Path) -> list[ItemResult]:
    """The events exported as CSV (kept under the data root's `imports/` until the dataset is written
    again), then imported in a process of its own."""
    from features.tables import TABLE_FILES

    csv_file = opts.data_root / "imports" / f"{directory.name}.events.csv"
    events_file = directory / TABLE_FILES["events"]
    if not csv_file.is_file() or csv_file.stat().st_mtime < events_file.stat().st_mtime:
        export = run_item(
            SUITE, "export", {"dir": str(directory), "out": str(csv_file)},
            budget_s=opts.budget_s, memory_budget=opts.memory_budget, label="prep: export csv",
        )  # fmt: skip
        opts.say(describe(export))
        if not export.ok:
            return [skipped(SUITE, "import", "the events could not be exported as CSV")]
    imported = run_item(
        SUITE, "import", {"dir": str(directory), "csv": str(csv_file)},
        budget_s=opts.budget_s, memory_budget=opts.memory_budget, label="import",
    )  # fmt: skip
    opts.say(describe(imported))
    return [imported]
