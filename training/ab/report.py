"""The A/B report of one experiment: a self-contained HTML page (plots inlined as PNG) and a JSON twin.

Every number comes from the exported exposures and events Parquet files through `attribution.attribute`
and `stats.analyse`; the page documents the rules and formulas so an analyst can recompute them. Beside
them: the CUPED-adjusted estimates (covariates: each student's activity before their first exposure,
`covariates`), the always-valid interval of the primary metric at the end of every day (`looks`), the
lift per support category and grade with a flag for a group helped significantly less (`equity`), and
the models behind the variants (name, version, alias).

Size: over 600 lines because the page's HTML, its charts and the method text are one document; the
numbers themselves come from `stats`, `looks` and `equity`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from training import charts
from training.ab import stats
from training.ab.attribution import Attribution, attribute
from training.ab.columns import as_table, text
from training.ab.covariates import COVARIATES, PRE_DAYS, add_pre_activity
from training.ab.equity import group_lifts
from training.ab.errors import ExperimentNotFoundError
from training.ab.exposures import of_experiment, versions_shown
from training.ab.looks import daily_looks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from features.experiments import ExperimentConfig

#: Korean names of the platform's regions, shown next to the codes.
REGION_LABELS_KO: dict[str, str] = {
    "seoul": "서울",
    "chungbuk": "충북",
    "pyeongchang": "평창",
    "gimpo": "김포",
    "incheon": "인천",
    "taebaek": "태백",
    stats.POOLED: "전체",
}


def region_label(code: str) -> str:
    """``taebaek (태백)``, or the code alone when no Korean name is known."""
    ko = REGION_LABELS_KO.get(code)
    return f"{code} ({ko})" if ko else code


@dataclass(frozen=True)
class Report:
    """A built report: the JSON document and the HTML page."""

    data: dict[str, Any]
    html: str

    @property
    def srm_regions(self) -> list[str]:
        """Regions (or ``pooled``) with a sample-ratio mismatch."""
        return [s["region"] for s in self.data["srm"] if s["mismatch"]]


#: Student attributes the equity section breaks the primary metric down by.
EQUITY_ATTRIBUTES: tuple[str, ...] = ("support_category", "grade")


def build_report(
    exposures: pa.Table | pd.DataFrame,
    events: pa.Table | pd.DataFrame,
    experiment: ExperimentConfig,
    window: timedelta = timedelta(days=7),
    alpha: float = 0.05,
    sources: dict[str, str] | None = None,
    *,
    history: pa.Table | pd.DataFrame | None = None,
    students: pd.DataFrame | None = None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> Report:
    """Attribute, analyse and render one experiment.

    Args:
        exposures: exposures (any experiments; only ``experiment.key`` is used).
        events: learning events.
        experiment: the experiment's config (variants, weights, regions; first variant = control).
        window: attribution window after an exposure.
        alpha: significance level.
        sources: where the inputs came from (shown in the report).
        history: events before the experiment (e.g. the dataset's), counted with ``events`` for the
            CUPED covariates; without it only the given events before a student's first exposure count.
        students: a students table (``student_id`` and `EQUITY_ATTRIBUTES` columns) for the equity
            section; without it the section is left out.
        models: variant -> what serves it (``name``, ``version``, ``alias``, ``model``: the registered
            model, version, alias and learnrec model kind); default: the versions the exposures name.

    Returns:
        The report.

    Raises:
        ExperimentNotFoundError: no exposure carries the experiment key.
    """
    table = as_table(exposures)
    ex = of_experiment(table, experiment.key)
    if ex.num_rows == 0:
        named = text(table.column("experiment")) if "experiment" in table.column_names else pa.array([])
        present = sorted(v for v in pc.unique(named).to_pylist() if v is not None)
        raise ExperimentNotFoundError(
            f"no exposures of experiment {experiment.key!r} in the input (experiments present: {present})"
        )
    ev = as_table(events)
    att = attribute(ex, ev, window=window)
    present = sorted(att.students["region"].unique())
    regions = list(experiment.regions) + [r for r in present if r not in experiment.regions]
    with_pre = add_pre_activity(att.students, [ev] if history is None else [history, ev])
    shares = experiment.shares()
    analysis = stats.analyse(with_pre, shares, alpha=alpha, regions=regions, covariates=COVARIATES)
    cumulative = stats.cumulative_rates(
        att.students.loc[(att.students["n_variants"] == 1) & att.students["variant"].isin(analysis.variants)]
    )
    first_shown, last_shown = _shown_range(att)
    looks = daily_looks(
        att, with_pre, shares, regions, _first_day(first_shown, experiment), last_shown,
        covariates=COVARIATES, alpha=alpha,
    )  # fmt: skip
    equity = _equity(with_pre, students, shares, alpha) if students is not None else {}
    served = (
        models
        if models is not None
        else {v: {"version": s} for v, s in versions_shown(att.exposures).items()}
    )
    data = _document(
        experiment,
        att,
        analysis,
        cumulative,
        window,
        alpha,
        sources or {},
        ev,
        regions,
        (first_shown, last_shown),
    )
    data["models"] = {v: dict(served.get(v, {})) for v in shares}
    data["covariates"] = {
        "columns": list(COVARIATES),
        "pre_days": PRE_DAYS,
        "history_given": history is not None,
        "students_with_activity": int((with_pre[list(COVARIATES)].sum(axis=1) > 0).sum()),
    }
    data["looks"] = [
        {k: (_ts(v) if k == "at" else v) for k, v in row.items()} for row in looks.to_dict("records")
    ]
    data["equity"] = equity
    data = stats.json_ready(data)
    return Report(data, _html(data, analysis, cumulative))


#: Beside a simulated run's exported ``events/`` and ``exposures/``: the clock their times are on.
CLOCK_FILE = "clock.json"


def write_run_clock(export_dir: Path, start: datetime, end: datetime) -> Path:
    """Record that the export at `export_dir` carries a simulated clock running from `start` to `end`."""
    path = Path(export_dir) / CLOCK_FILE
    document = {"clock": "simulated", "start": start.isoformat(), "end": end.isoformat()}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def read_run_clock(exposures: Path) -> tuple[datetime, datetime] | None:
    """The simulated window recorded beside an exposures export (its directory or its parent), if any."""
    exposures = Path(exposures)
    for folder in (exposures if exposures.is_dir() else exposures.parent, exposures.parent):
        path = folder / CLOCK_FILE
        if path.is_file():
            raw = json.loads(path.read_text(encoding="utf-8"))
            return datetime.fromisoformat(raw["start"]), datetime.fromisoformat(raw["end"])
    return None


def on_run_clock(
    experiment: ExperimentConfig, start: datetime, end: datetime, sources: dict[str, str]
) -> ExperimentConfig:
    """The experiment on a simulated run's clock when the run lies outside its configured window.

    An HTTP run is assigned by the service's wall clock inside the configured window, while its exposures
    and events carry the simulated time: the report's window and daily looks are then the simulated days,
    and ``sources`` (the report's inputs) says so.
    """
    if experiment.start <= start < experiment.end:
        return experiment
    sources["clock"] = (
        f"simulated; the service's configured window {experiment.start.isoformat()} to "
        f"{experiment.end.isoformat()} is wall-clock time"
    )
    return experiment.model_copy(update={"start": start, "end": end})


def _shown_range(att: Attribution) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and the last exposure's time (NaT when no exposure has one)."""
    first, last = pc.min_max(att.exposures.column("shown_at")).values()
    return pd.Timestamp(first.as_py()), pd.Timestamp(last.as_py())


def _first_day(first: pd.Timestamp, experiment: ExperimentConfig) -> pd.Timestamp:
    """Where the daily looks start: the experiment's start when its exposures begin on its first day (a
    simulated run's clock), else the UTC midnight before the first exposure."""
    start = pd.Timestamp(experiment.start)
    return start if start <= first < start + pd.Timedelta(days=1) else first.floor("D")


def _equity(
    students: pd.DataFrame, table: pd.DataFrame, shares: Mapping[str, float], alpha: float
) -> dict[str, list[dict[str, Any]]]:
    """Per `EQUITY_ATTRIBUTES` column of ``table``: the primary metric's lift per group (`equity`)."""
    wanted = [c for c in EQUITY_ATTRIBUTES if c in table.columns]
    if "student_id" not in table.columns or not wanted:
        return {}
    attrs = table[["student_id", *wanted]].astype({"student_id": str}).drop_duplicates("student_id")
    joined = students.merge(attrs, on="student_id", how="left")
    return {
        a: [g.to_dict() for g in group_lifts(joined, shares, a, alpha=alpha, covariates=COVARIATES)]
        for a in wanted
    }


def _ts(x: Any) -> str | None:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NaT:
        return None
    return pd.Timestamp(x).isoformat()


def _document(
    experiment: ExperimentConfig,
    att: Attribution,
    analysis: stats.Analysis,
    cumulative: pd.DataFrame,
    window: timedelta,
    alpha: float,
    sources: dict[str, str],
    events: pa.Table,
    regions: Sequence[str],
    shown: tuple[pd.Timestamp, pd.Timestamp],
) -> dict[str, Any]:
    a = analysis.to_dict()
    first_shown, last_shown = shown
    extra_regions = [r for r in regions if r not in experiment.regions]
    return {
        "experiment": {
            "key": experiment.key,
            "salt": experiment.salt,
            "regions": list(experiment.regions),
            "start": experiment.start.isoformat(),
            "end": experiment.end.isoformat(),
            "control": experiment.control,
            "variants": [
                {"name": v.name, "weight": v.weight, "share": experiment.shares()[v.name], "model": v.model}
                for v in experiment.variants
            ],
        },
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": {
            **sources,
            "exposures": att.exposures.num_rows,
            "events": events.num_rows,
            "students": len(att.students),
            "attributed_enrolments": att.outcomes.num_rows,
            "attributed_completions": att.outcomes.num_rows - att.outcomes.column("completed_at").null_count,
            "first_exposure": _ts(first_shown),
            "last_exposure": _ts(last_shown),
        },
        "settings": {
            "attribution_window_days": window / timedelta(days=1),
            "alpha": alpha,
            "correction": "holm",
            "srm_threshold": stats.SRM_THRESHOLD,
            "primary_metric": stats.PRIMARY_METRIC,
        },
        "region_labels": {r: REGION_LABELS_KO.get(r) for r in [*regions, stats.POOLED]},
        "metrics": [
            {"name": m.name, "kind": m.kind, "label": m.label, "formula": m.formula} for m in stats.METRICS
        ],
        "comparisons": a["comparisons"],
        "srm": a["srm"],
        "srm_any": bool(analysis.srm_regions),
        "data_quality": {
            **a["excluded"],
            **att.notes,
            "regions_not_in_config": extra_regions,
        },
        "cumulative": [
            {"at": _ts(at), "variant": str(v), "exposed": int(n_exp), "enrolled": int(n_enr)}
            for at, v, n_exp, n_enr in zip(
                cumulative["at"],
                cumulative["variant"],
                cumulative["exposed"],
                cumulative["enrolled"],
                strict=True,
            )
        ],
    }


# ---------------------------------------------------------------- plots


def _png(fig: Figure) -> str:
    return charts.png_base64(fig, dpi=100, bbox_inches="tight")


def _scale(kind: str) -> tuple[float, str]:
    return (100.0, "percentage points") if kind == "proportion" else (1.0, "difference")


def forest_plot(comparisons: Sequence[stats.Comparison], kind: str, title: str) -> str:
    """Absolute lift with CIs per region and pooled (one row each), as base64 PNG.

    Args:
        comparisons: one metric's comparisons of one treatment (regions then ``pooled``).
        kind: metric kind (proportions are drawn in percentage points).
        title: plot title.

    Returns:
        Base64 PNG.
    """
    k, unit = _scale(kind)
    fig = charts.figure(figsize=(7, 0.45 * len(comparisons) + 1.2))
    ax = fig.subplots()
    ys = list(range(len(comparisons)))[::-1]
    for y, c in zip(ys, comparisons, strict=True):
        e = c.estimate
        pooled = c.region == stats.POOLED
        color = "#b2182b" if pooled else "#2166ac"
        if math.isfinite(e.abs_lift):
            lo, hi = e.abs_ci
            if math.isfinite(lo) and math.isfinite(hi):
                ax.plot([lo * k, hi * k], [y, y], color=color, lw=2.5 if pooled else 1.6)
            ax.plot([e.abs_lift * k], [y], marker="D" if pooled else "o", color=color, ms=8 if pooled else 6)
        else:
            ax.text(0, y, "no data", va="center", ha="center", fontsize=8, color="#777")
    ax.axvline(0, color="#444", lw=0.8, ls="--")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{c.region} ({c.control.students:,}/{c.treatment.students:,})" for c in comparisons])
    ax.set_ylabel("region (students control/treatment)")
    ax.set_xlabel(f"{comparisons[0].treatment.variant} - {comparisons[0].control.variant}, {unit}")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def cumulative_plot(cumulative: pd.DataFrame, variants: Sequence[str]) -> str:
    """Cumulative enrolment rate per variant over time, as base64 PNG.

    Args:
        cumulative: output of `stats.cumulative_rates`.
        variants: legend order (control first).

    Returns:
        Base64 PNG.
    """
    fig = charts.figure(figsize=(7, 3.4))
    ax = fig.subplots()
    for v in variants:
        g = cumulative.loc[cumulative["variant"] == v]
        if len(g):
            ax.plot(g["at"].dt.tz_localize(None), g["rate"] * 100, marker="o", ms=3, label=str(v))
    ax.set_ylabel("cumulative enrolment rate, %")
    ax.set_xlabel("day (UTC)")
    ax.set_title("Enrolment rate of students exposed so far, all regions")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate()
    return _png(fig)


def looks_plot(looks: Sequence[dict[str, Any]], kind: str, title: str) -> str:
    """The pooled lift at each daily look with its fixed-horizon and always-valid intervals, as base64 PNG.

    Args:
        looks: `looks.daily_looks` rows (JSON form); the ``pooled`` ones are drawn.
        kind: metric kind (proportions in percentage points).
        title: plot title.

    Returns:
        Base64 PNG.
    """
    k, unit = _scale(kind)
    rows = [r for r in looks if r["region"] == stats.POOLED]
    fig = charts.figure(figsize=(7, 3.6))
    ax = fig.subplots()
    day = [r["day"] for r in rows]

    def series(name: str) -> list[float]:
        return [math.nan if r[name] is None else r[name] * k for r in rows]

    ax.fill_between(day, series("seq_low"), series("seq_high"), color="#b2182b", alpha=0.18,
                    label="always-valid interval (read any day)")  # fmt: skip
    ax.plot(day, series("ci_low"), color="#2166ac", lw=1, ls="--", label="fixed-horizon interval (read once)")
    ax.plot(day, series("ci_high"), color="#2166ac", lw=1, ls="--")
    ax.plot(day, series("lift"), color="#b2182b", marker="o", ms=3, label="lift (CUPED when available)")
    ax.axhline(0, color="#444", lw=0.8)
    # the first looks' intervals are wide; scale the axis to the looks with a tenth of the final sample
    most = max((r["students"] for r in rows), default=0)
    bounds = [
        x * k
        for r in rows
        if r["students"] >= most / 10
        for x in (r["seq_low"], r["seq_high"])
        if x is not None and math.isfinite(x)
    ]
    if bounds:
        pad = 0.15 * (max(bounds) - min(bounds) or 1.0)
        ax.set_ylim(min(min(bounds), 0.0) - pad, max(max(bounds), 0.0) + pad)
    ax.set_xlabel("day of the experiment (end of day)")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return _png(fig)


def _looks_section(looks: Sequence[dict[str, Any]], spec: stats.MetricSpec, ci: str) -> str:
    e = html.escape
    if not looks:
        return ""
    img = looks_plot(looks, spec.kind, f"{spec.label}, all regions: lift at each daily look")
    rows = "".join(
        f"<tr><td>{r['day']}</td><td class=l>{e(str(r['at']))}</td><td>{r['students']:,}</td>"
        f"<td>{_value_lift(spec.kind, r['lift'])}</td>"
        f"<td>[{_value_lift(spec.kind, r['ci_low'])}, {_value_lift(spec.kind, r['ci_high'])}]</td>"
        f"<td>[{_value_lift(spec.kind, r['seq_low'])}, {_value_lift(spec.kind, r['seq_high'])}]</td>"
        f"<td>{_p(_num(r['sequential_p']))}</td></tr>"
        for r in looks
        if r["region"] == stats.POOLED
    )
    return (
        "<h2>Daily looks</h2><p>What a report produced at the end of each day showed (students first exposed "
        "by then). Read every day, only the <b>always-valid</b> interval keeps its error rate: stopping at "
        "the first day the fixed-horizon interval excludes 0 finds false effects far more often than "
        f"alpha. The fixed-horizon {ci} is the pre-registered reading at the planned end.</p>"
        f'<img alt="daily sequential interval" src="data:image/png;base64,{img}">'
        "<table><tr><th>day</th><th class=l>look (UTC)</th><th>students</th><th>lift</th>"
        f"<th>fixed {ci}</th><th>always-valid {ci}</th><th>always-valid p</th></tr>{rows}</table>"
    )


def _equity_section(equity: Mapping[str, Sequence[dict[str, Any]]], spec: stats.MetricSpec, ci: str) -> str:
    e = html.escape
    if not equity:
        return (
            "<h2>Equity</h2><p class=muted>No students table given (<code>--students</code>): the lift per "
            "support category and grade is not shown.</p>"
        )
    parts = [
        "<h2>Equity: the lift per group</h2><p>Per group (all regions, stratified by region, CUPED when "
        "available): the lift and, beside it, the gap to the rest of the students (group − rest, z-test, "
        "Holm-adjusted across the groups of the attribute). <b>Helps less</b> marks a group the treatment "
        "helps significantly less than the others.</p>"
    ]
    for name, rows in equity.items():
        body = "".join(
            f"<tr{' class=flag' if r['helps_less'] else ''}><td class=l>{e(str(r['group']))}</td>"
            f"<td>{r['students']:,}</td><td>{_value(spec.kind, _num(r['control_value']))}</td>"
            f"<td>{_value(spec.kind, _num(r['treatment_value']))}</td>"
            f"<td>{_value_lift(spec.kind, r['lift'])} [{_value_lift(spec.kind, r['ci'][0])}, "
            f"{_value_lift(spec.kind, r['ci'][1])}]</td>"
            f"<td>{_value_lift(spec.kind, r['gap'])} [{_value_lift(spec.kind, r['gap_ci'][0])}, "
            f"{_value_lift(spec.kind, r['gap_ci'][1])}]</td><td>{_p(_num(r['gap_p']))}</td>"
            f"<td class=l>{'<b>helps less</b>' if r['helps_less'] else ''}</td></tr>"
            for r in rows
        )
        parts.append(
            f"<h3>{e(spec.label)} by {e(name.replace('_', ' '))}</h3><table><tr><th class=l>group</th>"
            f"<th>students</th><th>control</th><th>treatment</th><th>lift [{ci}]</th>"
            f"<th>gap to the rest [{ci}]</th><th>gap p (Holm)</th><th class=l></th></tr>{body}</table>"
        )
    return "".join(parts)


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _value_lift(kind: str, x: Any) -> str:
    k = 100.0 if kind == "proportion" else 1.0
    return _f(_num(x) * k, 2 if kind == "proportion" else 3)


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Noto Sans KR","Malgun Gothic",sans-serif;
  margin:2rem;max-width:1300px;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr.pooled td{font-weight:600;background:#fafafa}
.srm{background:#b00020;color:#fff;padding:1rem;font-size:1.1rem;border-radius:4px;margin:1rem 0}
.ok{background:#e8f5e9;padding:.6rem;border-radius:4px}
.sig{color:#1b5e20;font-weight:600} .muted{color:#777} code{background:#f5f5f5;padding:0 .2rem}
tr.flag td{background:#fdecea;color:#8a1c1c}
img{max-width:100%}
"""


def _f(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _p(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return "&lt;0.0001" if x < 1e-4 else f"{x:.4f}"


def _value(kind: str, x: float) -> str:
    return _pct(x) if kind == "proportion" else _f(x)


def _lift(kind: str, e: stats.Estimate) -> str:
    if kind == "proportion":
        k, unit = 100.0, " pp"
    else:
        k, unit = 1.0, ""
    lo, hi = e.abs_ci
    return f"{_f(e.abs_lift * k, 2)}{unit} [{_f(lo * k, 2)}, {_f(hi * k, 2)}]"


def _rel(e: stats.Estimate) -> str:
    lo, hi = e.rel_ci
    return f"{_pct(e.rel_lift)} [{_pct(lo)}, {_pct(hi)}]"


def _metric_table(spec: stats.MetricSpec, comps: Sequence[stats.Comparison], ci: str) -> str:
    e = html.escape
    rows = []
    for c in comps:
        pooled = c.region == stats.POOLED
        sig = ' class="sig"' if c.significant else ""
        p_adj = "pooled test" if pooled else _p(c.p_adjusted)
        rows.append(
            f'<tr{" class=pooled" if pooled else ""}><td class="l">{e(region_label(c.region))}</td>'
            f"<td>{c.control.students:,}</td><td>{c.treatment.students:,}</td>"
            f"<td>{c.control.exposures:,}</td><td>{c.treatment.exposures:,}</td>"
            f"<td>{_value(spec.kind, c.control.value)}</td><td>{_value(spec.kind, c.treatment.value)}</td>"
            f"<td>{_lift(spec.kind, c.estimate)}</td><td>{_rel(c.estimate)}</td>"
            f"<td>{_adjusted(spec.kind, c)}</td><td>{_lift(spec.kind, _seq(c))}</td>"
            f"<td>{_p(c.decision.p_value)}</td><td{sig}>{p_adj}</td>"
            f"<td class=l>{e(c.decision.test)}</td></tr>"
        )
    t, k = comps[0].treatment.variant, comps[0].control.variant
    return (
        f"<table><tr><th class=l>region</th><th>students {e(k)}</th><th>students {e(t)}</th>"
        f"<th>exposures {e(k)}</th><th>exposures {e(t)}</th><th>{e(k)}</th><th>{e(t)}</th>"
        f"<th>absolute lift [{ci}]</th><th>relative lift [{ci}]</th><th>CUPED lift [{ci}] "
        f"(variance reduction)</th><th>always-valid [{ci}]</th><th>p</th><th>p (Holm)</th>"
        f"<th class=l>test</th></tr>{''.join(rows)}</table>"
    )


def _adjusted(kind: str, c: stats.Comparison) -> str:
    if c.adjusted is None:
        return "–"
    vr = c.adjusted.extra.get("variance_reduction", math.nan)
    return f"{_lift(kind, c.adjusted)} ({_pct(vr, 0)})"


def _seq(c: stats.Comparison) -> stats.Estimate:
    """The decision's lift with its always-valid interval in place of the fixed one (for `_lift`)."""
    d = c.decision
    return stats.Estimate(d.abs_lift, c.sequential_ci, d.rel_lift, d.rel_ci, c.sequential_p, d.test)


def _srm_section(srm: Sequence[dict[str, Any]], variants: Sequence[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(v)}</th>" for v in variants)
    rows = []
    for s in srm:
        obs = "".join(
            f"<td>{s['observed'].get(v, 0):,} "
            f"<span class=muted>({_pct(s['expected_share'][v], 0)})</span></td>"
            for v in variants
        )
        flag = "<b style='color:#b00020'>MISMATCH</b>" if s["mismatch"] else "ok"
        rows.append(
            f"<tr><td class=l>{e(region_label(s['region']))}</td>{obs}<td>{_f(s['chi2'], 2)}</td>"
            f"<td>{_p(s['p_value'] if s['p_value'] is not None else math.nan)}</td><td class=l>{flag}</td>"
            f"<td class=l>{e(s['note'])}</td></tr>"
        )
    return (
        f"<table><tr><th class=l>region</th>{head}<th>chi²</th><th>p</th><th class=l>check</th>"
        f"<th class=l>note</th></tr>{''.join(rows)}</table>"
    )


def model_label(served: Mapping[str, Any]) -> str:
    """``learnrec-lectures v5 (sequence; champion)``: what serves a variant, as much as is known."""
    name = served.get("name") or "model"
    bits = [b for b in (served.get("model"), served.get("alias")) if b and b != "?"]
    return f"{name} v{served.get('version', '?')}" + (f" ({'; '.join(bits)})" if bits else "")


def _headline(data: Mapping[str, Any]) -> str:
    """``treatment (...) vs control (...)``: the models compared, in one line."""
    exp, served = data["experiment"], data.get("models", {})
    control = exp["control"]
    others = [v["name"] for v in exp["variants"] if v["name"] != control]
    if not served:
        return ""
    return " vs ".join(f"{v} = {model_label(served.get(v, {}))}" for v in [*others, control])


def _html(data: dict[str, Any], analysis: stats.Analysis, cumulative: pd.DataFrame) -> str:
    e = html.escape
    exp = data["experiment"]
    settings = data["settings"]
    ci = f"{100 * (1 - settings['alpha']):.0f}% CI"
    parts = [
        "<!doctype html><html lang=ko><head><meta charset=utf-8>",
        f"<title>A/B report {e(exp['key'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>A/B report: {e(exp['key'])}</h1>",
        f"<p class=muted>Generated {e(data['generated_at'])} · window {e(exp['start'])} → {e(exp['end'])} · "
        f"regions {e(', '.join(region_label(r) for r in exp['regions']))}</p>",
    ]
    bad = [s for s in data["srm"] if s["mismatch"]]
    if bad:
        names = ", ".join(region_label(s["region"]) for s in bad)
        parts.append(
            f"<div class=srm><b>⚠ Sample-ratio mismatch</b> in {e(names)}: the students per variant differ "
            f"from the configured weights (chi-square p &lt; {settings['srm_threshold']}). Assignment or "
            "exposure logging is broken there; do not trust the lifts of these regions until the cause is "
            "found.</div>"
        )
    else:
        parts.append("<div class=ok>Sample-ratio check passed in every region.</div>")

    parts.append(
        "<h2>Variants</h2><table><tr><th class=l>variant</th><th class=l>role</th><th>weight</th>"
        "<th>share</th><th class=l>configured</th><th class=l>registered model</th><th>version</th>"
        "<th class=l>alias now</th><th class=l>learnrec model</th></tr>"
    )
    for v in exp["variants"]:
        role = "control" if v["name"] == exp["control"] else "treatment"
        served = data.get("models", {}).get(v["name"], {})
        parts.append(
            f"<tr><td class=l>{e(v['name'])}</td><td class=l>{role}</td><td>{_f(v['weight'], 2)}</td>"
            f"<td>{_pct(v['share'])}</td><td class=l>{e(str(v['model']))}</td>"
            + "".join(
                f"<td class=l>{e(str(served.get(key) or '–'))}</td>"
                for key in ("name", "version", "alias", "model")
            )
            + "</tr>"
        )
    parts.append("</table>")
    headline = _headline(data)
    if headline:
        parts.append(f"<p><b>{e(headline)}</b></p>")
    inputs = data["inputs"]
    parts.append(
        "<p>" + " · ".join(f"{e(str(k))}: <code>{e(str(v))}</code>" for k, v in inputs.items()) + "</p>"
    )

    by_metric: dict[tuple[str, str], list[stats.Comparison]] = {}
    for c in analysis.comparisons:
        by_metric.setdefault((c.metric, c.treatment.variant), []).append(c)
    specs = {m.name: m for m in stats.METRICS}

    parts.append("<h2>Results</h2>")
    for (metric, treatment), comps in by_metric.items():
        spec = specs[metric]
        primary = " (primary)" if metric == settings["primary_metric"] else ""
        parts.append(
            f"<h3>{e(spec.label)}{primary}: {e(treatment)} vs {e(analysis.control)}</h3>"
            f"<p class=muted><code>{e(metric)}</code> = {e(spec.formula)}</p>"
        )
        parts.append(_metric_table(spec, comps, e(ci)))
        img = forest_plot(comps, spec.kind, f"{spec.label}: lift with {ci}")
        parts.append(f'<img alt="forest plot {e(metric)}" src="data:image/png;base64,{img}">')
    primary_spec = specs[settings["primary_metric"]]
    parts.append(_looks_section(data.get("looks", []), primary_spec, e(ci)))
    parts.append(_equity_section(data.get("equity", {}), primary_spec, e(ci)))
    if not cumulative.empty:
        img = cumulative_plot(cumulative, analysis.variants)
        parts.append("<h2>Over time</h2>")
        parts.append(f'<img alt="cumulative enrolment rate" src="data:image/png;base64,{img}">')

    parts.append("<h2>Sample-ratio check</h2>")
    parts.append(_srm_section(data["srm"], analysis.variants))
    dq = data["data_quality"]
    parts.append(
        "<h2>Data quality</h2><ul>"
        + "".join(f"<li>{e(k.replace('_', ' '))}: {e(str(v))}</li>" for k, v in dq.items())
        + "</ul>"
    )
    parts.append(_METHOD.format(window=_f(settings["attribution_window_days"], 1), alpha=settings["alpha"]))
    parts.append("</body></html>")
    return "\n".join(parts)


_METHOD = """
<h2>How these numbers are computed</h2>
<p>Inputs: the exposures Parquet export (one row per <code>/recommendations</code> answer: request_id,
student_id, region, experiment, variant, model_version, lecture_ids in rank order, shown_at UTC) and the
events Parquet (event_id, student_id, lecture_id, type, progress, occurred_at UTC, request_id).</p>
<ol>
<li><b>Exposures</b>: rows whose <code>experiment</code> is this key; duplicate request_ids counted once.
A student's variant and region are those of their first exposure; students seen in several variants are
excluded (counted under data quality).</li>
<li><b>Attributed enrolment</b>: an <code>enrol</code> event whose request_id is one of the student's
exposures (direct), otherwise an <code>enrol</code> of a lecture listed in an exposure of the same student
with shown_at ≤ occurred_at ≤ shown_at + {window} days, given to the <i>earliest</i> such exposure. Each
(student, lecture) counts once, at its earliest attributed enrolment.</li>
<li><b>Attributed completion</b>: a <code>complete</code> of an attributed (student, lecture) at or after
its attributed enrolment.</li>
<li><b>Per student</b>: enrolled = at least one attributed enrolment; completed = at least one attributed
completion; counts of each.</li>
<li><b>Metrics</b> per region and variant: enrolments (completions) per student = their sum / exposed
students (enrolments per student is the primary metric); enrolment rate = enrolled students / exposed
students; completion rate = completed students / exposed students; completion among enrolments =
Σ completions / Σ enrolments.</li>
<li><b>Per-region tests</b> (treatment − control): rates: Newcombe CI of the difference, log-adjusted CI of
the ratio, pooled two-proportion z-test (Fisher's exact test when an expected cell is below 5); means:
Welch t-test and CI; ratio of sums: delta-method variance per arm and a z-test. p-values are adjusted
across regions with Holm's method per metric; "significant" means adjusted p &lt; {alpha}.</li>
<li><b>Pooled</b> (stratified by region): Σ<sub>k</sub> w<sub>k</sub>(t<sub>k</sub> − c<sub>k</sub>) /
Σ<sub>k</sub> w<sub>k</sub> with Mantel–Haenszel weights w<sub>k</sub> = n<sub>t,k</sub>n<sub>c,k</sub> /
(n<sub>t,k</sub> + n<sub>c,k</sub>), variance Σ w<sub>k</sub>²(v<sub>t,k</sub> + v<sub>c,k</sub>) / (Σ
w<sub>k</sub>)²; for rates the p-value is the Cochran–Mantel–Haenszel test (no continuity correction), and
the JSON also holds the MH odds ratio and the Breslow–Day homogeneity p-value.</li>
<li><b>Sample-ratio check</b>: chi-square goodness of fit of students per variant against the configured
weights, per region and overall; p &lt; 0.001 is a mismatch.</li>
<li><b>CUPED</b> (the decision, when given): per region, each student's outcome is adjusted by their
enrolments and completions in the 28 days before their first exposure (fixed before randomisation):
<code>y − (x − x̄)θ</code> with θ the within-arm least-squares slope, so the lift equals the treatment
coefficient of the OLS regression <code>y ~ 1 + treatment + x</code>; then the stratified pooling above.
The p-values and the Holm adjustment use it.</li>
<li><b>Always-valid interval</b>: the normal-mixture sequential probability ratio test's confidence
sequence around the decision's lift; it holds at every daily look at once, so the experiment may be
watched every day and stopped early for harm or a large effect without raising the error rate.</li>
<li><b>Equity</b>: the primary metric per support category and grade (stratified by region, CUPED), and the
gap of each group to the rest of the students, Holm-adjusted across the groups.</li>
</ol>
<p>The JSON file next to this page holds every number shown here (counts per arm, estimates, intervals,
raw and adjusted p-values, the daily cumulative counts).</p>
"""


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and the JSON next to it (same name, ``.json``), both UTF-8.

    Args:
        report: the built report.
        out: HTML path; parent directories are created.

    Returns:
        (html path, json path).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    out.write_text(report.html, encoding="utf-8")
    json_path.write_text(
        json.dumps(report.data, ensure_ascii=False, indent=2, allow_nan=False), encoding="utf-8"
    )
    return out, json_path
