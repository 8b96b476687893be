"""Side by side: the latest run of each model on one evaluation, as terminal tables and an HTML page.

Only runs of the same split, split parameters (cutoff, test horizon ...) and dataset fingerprint are
comparable; by default the split and evaluation of the most recent run are taken and runs of other
datasets or split parameters are counted as skipped. The oracle (ground truth) is
shown as a reference row when it was logged.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training import charts
from training.metrics import METRICS, metric_key
from training.tracking import (
    KIND_ORACLE,
    TAG_FINGERPRINT,
    TAG_K,
    TAG_KIND,
    TAG_MODEL,
    TAG_SPLIT,
    find_runs,
    param_value,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from rich.table import Table

    from training.evaluate import EvaluationReport

#: Accuracy metrics drawn in the first chart (all in [0, 1]).
ACCURACY: tuple[str, ...] = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")
#: Beyond-accuracy metrics in [0, 1] drawn in the third chart.
BEYOND: tuple[str, ...] = ("coverage", "subject_diversity", "intra_list_diversity")


@dataclass(frozen=True)
class ComparedRun:
    """One model's latest run."""

    model: str
    run_id: str
    kind: str
    started: datetime
    overall: dict[str, float]
    by_region: dict[str, dict[str, float]]
    n_students: int
    #: ``support`` / ``grade`` -> group -> metric key -> value (as logged: `EvaluationReport.metrics`).
    by_group: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


@dataclass
class Comparison:
    """The runs compared and the evaluation they share."""

    experiment: str
    split: str
    k: int
    fingerprint: str | None
    runs: list[ComparedRun] = field(default_factory=list)
    #: the split parameters the runs share (``name -> value`` as logged, without the ``split.`` prefix).
    split_params: dict[str, str] = field(default_factory=dict)
    skipped: int = 0

    @property
    def regions(self) -> list[str]:
        return sorted({r for run in self.runs for r in run.by_region})

    def value(self, run: ComparedRun, name: str, region: str | None = None) -> float | None:
        key = metric_key(name, self.k)
        values = run.overall if region is None else run.by_region.get(region, {})
        return values.get(key)


def _split_params(run: Any) -> dict[str, str]:
    """The split parameters a run was evaluated with (not the split's sizes), as logged."""
    params = {
        key.removeprefix("split."): value
        for key, value in run.data.params.items()
        if key.startswith("split.") and not key.startswith("split.n_")
    }
    if run.data.params.get("split") == "temporal":
        # runs logged before the test horizon existed tested every later event
        params.setdefault("horizon_days", param_value(None))
    return params


def collect(
    client: MlflowClient,
    experiment: str,
    split: str | None = None,
    *,
    k: int | None = None,
    fingerprint: str | None = None,
    split_params: Mapping[str, Any] | None = None,
) -> Comparison:
    """The latest finished run per model (and the oracle) of `split` on one dataset and split parameters.

    Args:
        client: the MLflow client.
        experiment: experiment name.
        split: split name (default: the newest run's).
        k: cut-off to show (default: the newest run's primary k).
        fingerprint: dataset fingerprint (prefix) to compare on (default: the newest run's).
        split_params: split parameters the runs must have been evaluated with (e.g. ``horizon_days``;
            None = unbounded); the others are those of the newest such run.

    Returns:
        The comparison (no runs when nothing matches).
    """
    runs = find_runs(client, experiment, split=split)
    if fingerprint:
        runs = [r for r in runs if r.data.tags.get(TAG_FINGERPRINT, "").startswith(fingerprint)]
    wanted = {name: param_value(value) for name, value in (split_params or {}).items()}
    runs = [r for r in runs if all(_split_params(r).get(n) == v for n, v in wanted.items())]
    if not runs:
        return Comparison(experiment, split or "", k or 10, fingerprint)
    newest = runs[0]
    if split is None:  # another split is another question, not a skipped run of this one
        split = newest.data.tags.get(TAG_SPLIT, "")
        runs = [r for r in runs if r.data.tags.get(TAG_SPLIT, "") == split]
    fp = newest.data.tags.get(TAG_FINGERPRINT)
    evaluation = _split_params(newest)
    k = k or int(newest.data.tags.get(TAG_K, "10"))
    comparison = Comparison(experiment, split, k, fp, split_params=evaluation)
    seen: set[str] = set()
    for run in runs:  # newest first: the first run of a model is its latest
        tags = run.data.tags
        if tags.get(TAG_FINGERPRINT) != fp or _split_params(run) != evaluation:
            comparison.skipped += 1
            continue
        model = tags.get(TAG_MODEL, "?")
        if model in seen:
            continue
        seen.add(model)
        overall: dict[str, float] = {}
        by_region: dict[str, dict[str, float]] = {}
        by_group: dict[str, dict[str, dict[str, float]]] = {}
        for key, value in run.data.metrics.items():
            parts = key.split("/")
            if len(parts) == 1:
                overall[key] = float(value)
            elif len(parts) == 3 and parts[1] == "region":
                by_region.setdefault(parts[2], {})[parts[0]] = float(value)
            elif len(parts) == 3 and parts[1] in ("support", "grade"):
                by_group.setdefault(parts[1], {}).setdefault(parts[2], {})[parts[0]] = float(value)
        comparison.runs.append(
            ComparedRun(
                model=model,
                run_id=run.info.run_id,
                kind=tags.get(TAG_KIND, ""),
                started=datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC),
                overall=overall,
                by_region=by_region,
                n_students=int(overall.get("n_test_students", 0)),
                by_group=by_group,
            )
        )
    # best first by NDCG; the oracle (a reference, not a candidate) last
    comparison.runs.sort(
        key=lambda r: (r.kind == KIND_ORACLE, -(comparison.value(r, "ndcg") or 0.0), r.model)
    )
    return comparison


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


#: Short column headers for terminal tables.
SHORT: dict[str, str] = {
    "precision": "prec",
    "recall": "recall",
    "ndcg": "ndcg",
    "map": "map",
    "mrr": "mrr",
    "hit_rate": "hit",
    "coverage": "cover",
    "novelty": "novelty",
    "subject_diversity": "subj.div",
    "intra_list_diversity": "ild",
}


def _label(run: ComparedRun) -> str:
    return f"{run.model} (ref)" if run.kind == KIND_ORACLE else run.model


def _table(title: str) -> Table:
    """A compact rich table (fits 80 columns), the style of the other learnrec commands."""
    from rich import box
    from rich.table import Table

    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def _metric_table(comparison: Comparison, title: str, names: tuple[str, ...], extra: bool) -> Table:
    table = _table(title)
    table.add_column("model", style="bold", no_wrap=True)
    for name in names:
        table.add_column(SHORT.get(name, name), justify="right", no_wrap=True)
    if extra:
        table.add_column("students", justify="right", no_wrap=True)
        table.add_column("run", style="dim", no_wrap=True)
    candidates = [r for r in comparison.runs if r.kind != KIND_ORACLE]
    best = {
        n: max((comparison.value(r, n) or float("-inf") for r in candidates), default=None) for n in names
    }
    for run in comparison.runs:
        cells = []
        for name in names:
            v = comparison.value(run, name)
            text = _fmt(v)
            # novelty is not better when higher in every sense; do not crown it
            if v is not None and run.kind != KIND_ORACLE and v == best[name] and name != "novelty":
                text = f"[green]{text}[/]"
            cells.append(text)
        if extra:
            cells += [str(run.n_students), run.run_id[:8]]
        table.add_row(_label(run), *cells)
    return table


def _describe(params: Mapping[str, str]) -> str:
    """The test horizon of a temporal evaluation for a title ("" when there is none)."""
    if "horizon_days" not in params:
        return ""
    value = params["horizon_days"]
    return " (all later events)" if value == "null" else f" ({value}-day horizon)"


def equity_table(report: EvaluationReport, title: str, subjects: int = 2) -> Table:
    """One model's served lists per group: students, ndcg and recall at k, level shares, top subjects.

    Args:
        report: the model's evaluation (`EvaluationReport.equity_rows`).
        title: the table's title.
        subjects: how many of a group's most frequent subjects to name.

    Returns:
        A compact rich table (one row per support category, region and grade).
    """
    k = report.ks[0]
    rows = report.equity_rows()
    levels = [c for c in (rows[0] if rows else {}) if c.startswith("level:")]
    table = _table(title)
    for col in ("group", "n", f"ndcg@{k}", f"recall@{k}", *(f"lv{c.split(':', 1)[1]}" for c in levels)):
        table.add_column(col, justify="left" if col == "group" else "right", no_wrap=True)
    table.add_column("top subjects (share of slots)", no_wrap=False)
    short = {"all": "", "support_category": "", "region": "region ", "grade": "grade "}
    for r in rows:
        top = sorted(
            ((c.split(":", 1)[1], v) for c, v in r.items() if c.startswith("subject:")), key=lambda x: -x[1]
        )[:subjects]
        table.add_row(
            f"{short.get(r['attribute'], '')}{r['group']}",
            str(r["students"]),
            _fmt(r.get(metric_key("ndcg", k))),
            _fmt(r.get(metric_key("recall", k))),
            *(f"{r[c]:.0%}" for c in levels),
            " ".join(f"{s} {v:.0%}" for s, v in top),
        )
    return table


def terminal_tables(comparison: Comparison, metric: str = "ndcg") -> list[Table]:
    """Rich tables: accuracy and beyond-accuracy metrics per model, then `metric` per model and region,
    support category and grade."""
    k = comparison.k
    split = f"{comparison.split} split{_describe(comparison.split_params)}"
    head = f"{split}, k={k}, dataset {(comparison.fingerprint or '?')[:12]}"
    accuracy = _metric_table(comparison, f"{head}: accuracy@{k}", ACCURACY, extra=False)
    others = tuple(m for m in METRICS if m not in ACCURACY)
    beyond = _metric_table(comparison, f"coverage, novelty and diversity@{k}", others, extra=True)
    regional = _table(f"{metric}@{k} per region")
    regional.add_column("model", style="bold", no_wrap=True)
    regions = comparison.regions
    for region in regions:
        regional.add_column(region, justify="right", no_wrap=True)
    for run in comparison.runs:
        regional.add_row(_label(run), *(_fmt(comparison.value(run, metric, r)) for r in regions))
    tables = [accuracy, beyond, regional]
    key = metric_key(metric, k)
    for kind, title in (("support", "support category"), ("grade", "grade")):
        groups = sorted({g for run in comparison.runs for g in run.by_group.get(kind, {})})
        if not groups:
            continue
        table = _table(f"{metric}@{k} per {title}")
        table.add_column("model", style="bold", no_wrap=True)
        for g in groups:
            table.add_column(g, justify="right", no_wrap=True)
        for run in comparison.runs:
            values = run.by_group.get(kind, {})
            table.add_row(_label(run), *(_fmt(values.get(g, {}).get(key)) for g in groups))
        tables.append(table)
    return tables


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]], title: str, ylabel: str) -> None:
    import numpy as np

    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)


def chart(comparison: Comparison, metric: str = "ndcg") -> Figure:
    """A matplotlib figure: accuracy metrics, `metric` per region, beyond-accuracy metrics, per model."""
    fig = charts.figure(figsize=(11, 12), layout="constrained")
    axes = fig.subplots(3, 1)
    k = comparison.k
    _bars(
        axes[0],
        [f"{m}@{k}" for m in ACCURACY],
        {r.model: [comparison.value(r, m) or 0.0 for m in ACCURACY] for r in comparison.runs},
        "Accuracy",
        "value",
    )
    regions = comparison.regions
    _bars(
        axes[1],
        regions,
        {r.model: [comparison.value(r, metric, g) or 0.0 for g in regions] for r in comparison.runs},
        f"{metric}@{k} per region",
        f"{metric}@{k}",
    )
    _bars(
        axes[2],
        [f"{m}@{k}" for m in BEYOND],
        {r.model: [comparison.value(r, m) or 0.0 for m in BEYOND] for r in comparison.runs},
        "Coverage and diversity",
        "value",
    )
    return fig


def write_html(comparison: Comparison, path: Path, metric: str = "ndcg") -> Path:
    """A self-contained HTML page (tables and the chart as an embedded PNG).

    Args:
        comparison: what to show.
        path: the HTML file to write (parents created).
        metric: metric shown per region.

    Returns:
        The path written.
    """
    k = comparison.k
    esc = html.escape

    def label(run: ComparedRun) -> str:
        return f"{esc(run.model)} <small>(reference)</small>" if run.kind == KIND_ORACLE else esc(run.model)

    head = "".join(f"<th>{esc(m)}@{k}</th>" for m in METRICS)
    rows = "".join(
        f"<tr><th>{label(r)}</th>"
        + "".join(f"<td>{_fmt(comparison.value(r, m))}</td>" for m in METRICS)
        + f"<td>{r.n_students}</td><td><code>{esc(r.run_id)}</code></td></tr>"
        for r in comparison.runs
    )
    regions = comparison.regions
    region_head = "".join(f"<th>{esc(g)}</th>" for g in regions)
    region_rows = "".join(
        f"<tr><th>{label(r)}</th>"
        + "".join(f"<td>{_fmt(comparison.value(r, metric, g))}</td>" for g in regions)
        + "</tr>"
        for r in comparison.runs
    )
    key = metric_key(metric, k)
    group_tables = ""
    for kind, title in (("support", "support category"), ("grade", "grade")):
        groups = sorted({g for run in comparison.runs for g in run.by_group.get(kind, {})})
        if groups:
            group_tables += (
                f"<h2>{esc(metric)}@{k} per {title}</h2><table><tr><th>model</th>"
                + "".join(f"<th>{esc(g)}</th>" for g in groups)
                + "</tr>"
                + "".join(
                    f"<tr><th>{label(r)}</th>"
                    + "".join(
                        f"<td>{_fmt(r.by_group.get(kind, {}).get(g, {}).get(key))}</td>" for g in groups
                    )
                    + "</tr>"
                    for r in comparison.runs
                )
                + "</table>"
            )
    body = (
        "<p>No finished runs match.</p>"
        if not comparison.runs
        else (
            "<h2>All metrics</h2><table>"
            f"<tr><th>model</th>{head}<th>students</th><th>run</th></tr>{rows}</table>"
            f"<h2>{esc(metric)}@{k} per region</h2><table>"
            f"<tr><th>model</th>{region_head}</tr>{region_rows}</table>{group_tables}"
            "<h2>Charts</h2><img alt='metrics per model' "
            f"src='data:image/png;base64,{charts.png_base64(chart(comparison, metric), dpi=90)}'>"
        )
    )
    skipped = (
        f"; {comparison.skipped} runs of other datasets or split parameters not shown"
        if comparison.skipped
        else ""
    )
    page = (
        "<!doctype html><html lang='ko'><head><meta charset='utf-8'>"
        f"<title>learnrec: {esc(comparison.split)} comparison</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>"
        "</head><body>"
        f"<h1>Models on the {esc(comparison.split)} split{esc(_describe(comparison.split_params))}</h1>"
        f"<p>experiment <b>{esc(comparison.experiment)}</b>, dataset "
        f"<code>{esc((comparison.fingerprint or '?')[:16])}</code>, k = {k}, "
        f"generated {datetime.now(UTC).isoformat(timespec='seconds')}{skipped}</p>"
        f"{body}</body></html>"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
