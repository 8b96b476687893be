"""The A/B report of one experiment: a self-contained HTML page (plots inlined as PNG) and a JSON twin.

Every number comes from the exported exposures and events Parquet files through `attribution.attribute`
and `stats.analyse`; the page documents the rules and formulas so an analyst can recompute them.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from training import charts
from training.ab import stats
from training.ab.attribution import Attribution, attribute
from training.ab.errors import ExperimentNotFoundError

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


def _frame(x: pa.Table | pd.DataFrame) -> pd.DataFrame:
    return x.to_pandas() if isinstance(x, pa.Table) else x


def build_report(
    exposures: pa.Table | pd.DataFrame,
    events: pa.Table | pd.DataFrame,
    experiment: ExperimentConfig,
    window: timedelta = timedelta(days=7),
    alpha: float = 0.05,
    sources: dict[str, str] | None = None,
) -> Report:
    """Attribute, analyse and render one experiment.

    Args:
        exposures: exposures (any experiments; only ``experiment.key`` is used).
        events: learning events.
        experiment: the experiment's config (variants, weights, regions; first variant = control).
        window: attribution window after an exposure.
        alpha: significance level.
        sources: where the inputs came from (shown in the report).

    Returns:
        The report.

    Raises:
        ExperimentNotFoundError: no exposure carries the experiment key.
    """
    ex = _frame(exposures)
    ex = ex.loc[ex["experiment"] == experiment.key]
    if ex.empty:
        raise ExperimentNotFoundError(
            f"no exposures of experiment {experiment.key!r} in the input "
            f"(experiments present: {sorted(_frame(exposures)['experiment'].dropna().unique().tolist())})"
        )
    ev = _frame(events)
    att = attribute(ex, ev, window=window)
    present = sorted(att.students["region"].unique())
    regions = list(experiment.regions) + [r for r in present if r not in experiment.regions]
    analysis = stats.analyse(att.students, experiment.shares(), alpha=alpha, regions=regions)
    cumulative = stats.cumulative_rates(
        att.students.loc[(att.students["n_variants"] == 1) & att.students["variant"].isin(analysis.variants)]
    )
    data = _document(experiment, att, analysis, cumulative, window, alpha, sources or {}, ev, regions)
    return Report(data, _html(data, analysis, cumulative))


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
    events: pd.DataFrame,
    regions: Sequence[str],
) -> dict[str, Any]:
    a = analysis.to_dict()
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
            "exposures": len(att.exposures),
            "events": len(events),
            "students": len(att.students),
            "attributed_enrolments": len(att.outcomes),
            "attributed_completions": int(att.outcomes["completed_at"].notna().sum()),
            "first_exposure": _ts(att.exposures["shown_at"].min()),
            "last_exposure": _ts(att.exposures["shown_at"].max()),
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


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,"Noto Sans KR","Malgun Gothic",sans-serif;
  margin:2rem;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} tr.pooled td{font-weight:600;background:#fafafa}
.srm{background:#b00020;color:#fff;padding:1rem;font-size:1.1rem;border-radius:4px;margin:1rem 0}
.ok{background:#e8f5e9;padding:.6rem;border-radius:4px}
.sig{color:#1b5e20;font-weight:600} .muted{color:#777} code{background:#f5f5f5;padding:0 .2rem}
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
            f"<td>{_p(c.estimate.p_value)}</td><td{sig}>{p_adj}</td>"
            f"<td class=l>{e(c.estimate.test)}</td></tr>"
        )
    t, k = comps[0].treatment.variant, comps[0].control.variant
    return (
        f"<table><tr><th class=l>region</th><th>students {e(k)}</th><th>students {e(t)}</th>"
        f"<th>exposures {e(k)}</th><th>exposures {e(t)}</th><th>{e(k)}</th><th>{e(t)}</th>"
        f"<th>absolute lift [{ci}]</th><th>relative lift [{ci}]</th><th>p</th><th>p (Holm)</th>"
        f"<th class=l>test</th></tr>{''.join(rows)}</table>"
    )


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
        "<th>share</th><th class=l>model</th></tr>"
    )
    for v in exp["variants"]:
        role = "control" if v["name"] == exp["control"] else "treatment"
        parts.append(
            f"<tr><td class=l>{e(v['name'])}</td><td class=l>{role}</td><td>{_f(v['weight'], 2)}</td>"
            f"<td>{_pct(v['share'])}</td><td class=l>{e(str(v['model']))}</td></tr>"
        )
    parts.append("</table>")
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
