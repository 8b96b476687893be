"""`learnrec ab` commands: the A/B report of an experiment and power planning per region."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from training.commands.console import fail

if TYPE_CHECKING:
    import pyarrow as pa

    from features.experiments import ExperimentConfig
    from features.settings import Settings

app = typer.Typer(no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)


def _pairs(values: list[str], option: str, cast: type[int] | type[float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for raw in values:
        name, sep, value = raw.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            out[name] = cast(value)
        except ValueError:
            kind = "an integer" if cast is int else "a number"
            raise typer.BadParameter(
                f"{raw!r}: expected NAME=VALUE with {kind} value", param_hint=option
            ) from None
    return out


@app.command()
def report(
    exposures: Annotated[Path, typer.Option(help="Exposures Parquet export (file or directory of parts).")],
    events: Annotated[
        Path, typer.Option(help="Events Parquet (dataset directory, export directory or file).")
    ],
    experiment: Annotated[str, typer.Option(help="Experiment key to analyse.")],
    out: Annotated[
        Path | None,
        typer.Option(help="HTML file to write (JSON next to it); default data_dir/reports/ab-KEY.html."),
    ] = None,
    experiments_file: Annotated[
        Path | None,
        typer.Option("--experiments", help="Experiments YAML; default settings.service.experiments_file."),
    ] = None,
    window_days: Annotated[float, typer.Option(help="Attribution window after an exposure, in days.")] = 7.0,
    alpha: Annotated[float, typer.Option(help="Significance level (CIs are 1 - alpha).")] = 0.05,
    history: Annotated[
        Path | None,
        typer.Option(
            help="Events before the experiment (e.g. the dataset directory): each student's activity in the "
            "28 days before their first exposure adjusts the estimates (CUPED)."
        ),
    ] = None,
    students: Annotated[
        Path | None,
        typer.Option(
            help="Students table (dataset directory or Parquet): the lift per support category and grade, "
            "with a flag for a group the treatment helps significantly less."
        ),
    ] = None,
) -> None:
    """Attribute outcomes to exposures and write the experiment's HTML + JSON report."""
    from features.experiments import load_experiments
    from features.settings import get_settings
    from training.ab.exposures import read_events, read_exposures, read_students
    from training.ab.report import build_report, on_run_clock, read_run_clock, region_label, write_report
    from training.ab.stats import PRIMARY_METRIC, metric

    settings = get_settings()
    if not 0 < alpha < 1:
        raise typer.BadParameter(f"must be in (0, 1), got {alpha}", param_hint="--alpha")
    if not window_days >= 0:
        raise typer.BadParameter(f"must be >= 0, got {window_days}", param_hint="--window-days")
    config_path = experiments_file or settings.service.experiments_file
    if config_path is None:
        raise fail("no experiments file: pass --experiments FILE or set LEARNREC_SERVICE__EXPERIMENTS_FILE")
    out = out or settings.data_dir / "reports" / f"ab-{experiment}.html"
    config = load_experiments(config_path)
    exp = next((e for e in config.experiments if e.key == experiment), None)
    if exp is None:
        known = [e.key for e in config.experiments]
        raise fail(f"experiment {experiment!r} is not in {config_path} (known: {known})")
    with _err.status("reading exposures and events..."):
        ex_table = read_exposures(exposures)
        ev_table = read_events(events)
        before = read_events(history) if history is not None else None
        people = read_students(students).to_pandas() if students is not None else None
    models = served_models(settings, ex_table, exp)
    sources = {"exposures_path": str(exposures), "events_path": str(events)}
    sources.update({k: str(v) for k, v in (("history_path", history), ("students_path", students)) if v})
    clock = read_run_clock(exposures)  # a simulated run's export: its window is the simulated days
    if clock is not None:
        exp = on_run_clock(exp, *clock, sources)
    with _err.status(f"attributing {ex_table.num_rows:,} exposures, analysing, plotting..."):
        rep = build_report(
            ex_table, ev_table, exp, window=timedelta(days=window_days), alpha=alpha, sources=sources,
            history=before, students=people, models=models,
        )  # fmt: skip
        html_path, json_path = write_report(rep, out)

    primary = metric(PRIMARY_METRIC)
    unit = " (pp = percentage points)" if primary.kind == "proportion" else ""
    table = Table(
        title=f"{experiment}: {primary.label} ({PRIMARY_METRIC}), treatment - control{unit}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("region", "ctrl", "treat", "n c/t", "lift", "CI", "p adj", "SRM"):
        table.add_column(col, justify="left" if col == "region" else "right", no_wrap=True)
    srm = {s["region"]: s for s in rep.data["srm"]}
    several = len(rep.data["experiment"]["variants"]) > 2
    for c in rep.data["comparisons"]:
        if c["metric"] != PRIMARY_METRIC:
            continue
        est = c["estimate"]
        lo, hi = est["abs_ci"]
        region = c["region"]
        # region rows: Holm-adjusted across regions; the pooled row: the CMH test itself
        p_adj = c["p_adjusted"]
        table.add_row(
            region_label(region) + (f" [{c['treatment']['variant']}]" if several else ""),
            primary.show(c["control"]["value"]),
            primary.show(c["treatment"]["value"]),
            f"{c['control']['students']:,}/{c['treatment']['students']:,}",
            primary.show_lift(est["abs_lift"]),
            f"[{primary.show_lift(lo)}, {primary.show_lift(hi)}]",
            "-" if p_adj is None else f"{p_adj:.4f}",
            "[bold red]MISMATCH[/]" if srm.get(region, {}).get("mismatch") else "ok",
        )
    _out.print(table)
    print_report_notes(rep.data)
    for s in rep.data["srm"]:
        if s["mismatch"]:
            observed = ", ".join(f"{v}={n:,}" for v, n in s["observed"].items())
            expected = ", ".join(f"{v}={share:.0%}" for v, share in s["expected_share"].items())
            _err.print(
                f"[bold red]WARNING: sample-ratio mismatch in {region_label(s['region'])}[/]: "
                f"observed {observed}, configured {expected}, p={s['p_value']:.2g}; "
                "do not trust this region's lifts.",
                highlight=False,
                soft_wrap=True,
            )
    inputs = rep.data["inputs"]
    _out.print(
        f"wrote {html_path} and {json_path.name}: {inputs['students']:,} students, "
        f"{inputs['exposures']:,} exposures, {len(rep.data['experiment']['regions'])} region(s), "
        f"SRM in {len(rep.srm_regions)}",
        highlight=False,
        soft_wrap=True,
    )


def served_models(
    settings: Settings, exposures: pa.Table, experiment: ExperimentConfig
) -> dict[str, dict[str, Any]] | None:
    """Variant -> registered model, version, alias and kind, from the exposures' versions and the registry.

    None when the exposures name no version (the report then says what the exposures say); a registry
    that cannot be read, or a local store that does not exist (nothing is created for a report), leaves
    ``alias`` and ``model`` unknown rather than failing the report.
    """
    from training.ab.exposures import of_experiment, versions_shown
    from training.registry import describe_versions
    from training.tracking import configure

    versions = versions_shown(of_experiment(exposures, experiment.key))
    if not versions:
        return None
    uri = settings.tracking_uri()
    client = None
    if not (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()):
        try:
            client = configure(settings)
        except Exception:  # an unreachable registry must not cost the analyst the report
            client = None
    name = settings.mlflow.registered_model
    if client is None:
        return {v: {"name": name, "version": ver, "alias": "", "model": "?"} for v, ver in versions.items()}
    return describe_versions(client, name, versions)


def print_report_notes(data: dict[str, Any]) -> None:
    """The models compared, the CUPED variance reduction and the equity flags, under the primary table."""
    from training.ab.report import model_label
    from training.ab.stats import PRIMARY_METRIC

    served = data.get("models", {})
    if served:
        _out.print(
            "models: " + "; ".join(f"{v} = {model_label(m)}" for v, m in served.items()),
            highlight=False,
            soft_wrap=True,
        )
    pooled = next(
        (c for c in data["comparisons"] if c["metric"] == PRIMARY_METRIC and c["region"] == "pooled"), None
    )
    if pooled and pooled.get("adjusted"):
        vr = pooled["adjusted"]["extra"].get("variance_reduction")
        lo, hi = (("-" if x is None else f"{x:+.3f}") for x in pooled.get("sequential_ci") or (None, None))
        _out.print(
            f"pooled decision: CUPED (variance reduction {'-' if vr is None else f'{vr:.0%}'}); "
            f"always-valid interval [{lo}, {hi}]",
            highlight=False,
            soft_wrap=True,
        )
    for attribute, rows in data.get("equity", {}).items():
        flagged = [r for r in rows if r["helps_less"]]
        text = ", ".join(f"{r['group']} (gap {r['gap']:+.3f}, Holm p {r['gap_p']:.3g})" for r in flagged)
        _out.print(
            f"equity by {attribute}: "
            + (
                f"[bold red]helps less: {text}[/]"
                if flagged
                else f"no group helped significantly less ({len(rows)} groups)"
            ),
            highlight=False,
            soft_wrap=True,
        )


def _lift_text(x: float, count: bool) -> str:
    return f"{x:+.3f}" if count else f"{_pp(x)}pp"


def _pp(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:+.2f}"


@app.command()
def power(
    region: Annotated[
        list[str], typer.Option("--region", help="NAME=STUDENTS, repeatable (e.g. --region taebaek=500).")
    ],
    baseline: Annotated[
        float, typer.Option(help="Control rate (e.g. enrolment rate 0.2) for every region.")
    ] = 0.2,
    region_baseline: Annotated[
        list[str] | None,
        typer.Option("--region-baseline", help="NAME=RATE overriding --baseline, repeatable."),
    ] = None,
    weeks: Annotated[float, typer.Option(help="Planned duration in weeks.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Significance level (two-sided).")] = 0.05,
    power_: Annotated[float, typer.Option("--power", help="Statistical power, 1 - type II error.")] = 0.8,
    traffic: Annotated[
        float, typer.Option(help="Share of exposed students that enter the experiment.")
    ] = 1.0,
    treatment_share: Annotated[float, typer.Option(help="Share of experiment students in treatment.")] = 0.5,
    weekly_active: Annotated[
        float, typer.Option(help="Probability a student is shown recommendations in a given week.")
    ] = 0.5,
    target_lift: Annotated[
        float | None, typer.Option(help="Relative lift to plan a duration for (0.1 = +10%).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    metric_name: Annotated[
        str,
        typer.Option(
            "--metric",
            help="enrolment_rate (a rate: --baseline) or a count such as enrolments_per_student "
            "(--mean and --sd, or --past).",
        ),
    ] = "enrolment_rate",
    mean: Annotated[
        float | None, typer.Option(help="Counts: control mean per student (all regions).")
    ] = None,
    sd: Annotated[float | None, typer.Option(help="Counts: per-student standard deviation.")] = None,
    variance_reduction: Annotated[
        float, typer.Option(help="Counts: share of the variance CUPED removes (0-1; --past reads it).")
    ] = 0.0,
    past: Annotated[
        Path | None,
        typer.Option(
            help="Counts: a past `ab report` JSON; each region's control mean, per-student sd and CUPED "
            "variance reduction are taken from it (regions it lacks use --mean/--sd/--variance-reduction)."
        ),
    ] = None,
) -> None:
    """Minimum detectable effect per region for a planned duration, and the days needed for a target lift.

    For a rate (enrolment rate) or a count per student (enrolments per student, planned with the
    variance reduction CUPED achieved in past data).
    """
    from training.ab.power import PowerInputError, past_variation, plan, plan_mean
    from training.ab.stats import METRICS

    sizes = {k: int(v) for k, v in _pairs(region, "--region", int).items()}
    overrides = _pairs(region_baseline or [], "--region-baseline", float)
    unknown = sorted(set(overrides) - set(sizes))
    if unknown:
        raise typer.BadParameter(
            f"regions {unknown} have no --region NAME=STUDENTS", param_hint="--region-baseline"
        )
    kinds = {m.name: m.kind for m in METRICS}
    if kinds.get(metric_name) not in ("proportion", "mean"):
        usable = [n for n, k in kinds.items() if k in ("proportion", "mean")]
        raise typer.BadParameter(f"{metric_name!r}: choose one of {', '.join(usable)}", param_hint="--metric")
    count = kinds[metric_name] == "mean"
    if count:
        known: dict[str, tuple[float, float, float]] = {}
        if past is not None:
            try:
                known = past_variation(json.loads(past.read_text(encoding="utf-8")), metric_name)
            except (OSError, ValueError) as exc:
                raise typer.BadParameter(f"cannot read {past}: {exc}", param_hint="--past") from None
        for name in sizes:
            if name not in known:
                if mean is None or sd is None:
                    raise typer.BadParameter(
                        f"region {name!r}: give --mean and --sd (or a --past report that has it)",
                        param_hint="--sd",
                    )
                known[name] = (mean, sd, variance_reduction)
        try:
            rows = plan_mean(
                sizes, {n: known[n][0] for n in sizes}, {n: known[n][1] for n in sizes},
                {n: known[n][2] for n in sizes}, weeks=weeks, alpha=alpha, power=power_, traffic=traffic,
                treatment_share=treatment_share, weekly_active=weekly_active, target_lift=target_lift,
            )  # fmt: skip
        except PowerInputError as exc:
            raise typer.BadParameter(str(exc)) from None
    else:
        baselines = {r: overrides.get(r, baseline) for r in sizes}
        rows = plan(
            sizes,
            baselines,
            weeks=weeks,
            alpha=alpha,
            power=power_,
            traffic=traffic,
            treatment_share=treatment_share,
            weekly_active=weekly_active,
            target_lift=target_lift,
        )
    if as_json:
        _out.print_json(
            json.dumps([{**r.to_dict(), "days_needed": r.days_needed} for r in rows], ensure_ascii=False)
        )
        return

    from training.ab.report import region_label

    table = Table(
        title=f"Power: alpha={alpha}, power={power_}, {weeks:g} week(s), weekly active {weekly_active:.0%}, "
        f"traffic {traffic:.0%}, treatment {treatment_share:.0%}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.title = f"{metric_name}: {table.title}"
    cols = ["region", "students", "mean, sd" if count else "base", "in test", "MDE", "MDE rel"]
    if count:
        cols.insert(3, "CUPED VR")
    if target_lift is not None:
        cols += [f"need {target_lift:+.0%}", "days"]
    for col in cols:
        table.add_column(col, justify="left" if col == "region" else "right", no_wrap=True)
    for r in rows:
        cells = [
            region_label(r.region),
            f"{r.students:,}",
            f"{r.baseline:.2f}, {r.sd:.2f}" if count and r.sd is not None else f"{r.baseline:.1%}",
        ]
        if count:
            cells.append(f"{r.variance_reduction:.0%}")
        cells += [
            f"{r.n_control + r.n_treatment:,.0f}",
            "-"
            if not math.isfinite(r.mde_abs)
            else (f"{r.mde_abs:+.3f}" if count else f"{100 * r.mde_abs:+.1f}pp"),
            "-" if not math.isfinite(r.mde_rel) else f"{r.mde_rel:+.0%}",
        ]
        if target_lift is not None:
            assert r.needed_control is not None and r.needed_treatment is not None
            cells.append(f"{math.ceil(r.needed_control) + math.ceil(r.needed_treatment):,}")
            cells.append("[bold red]never[/]" if r.days_needed is None else f"{r.days_needed:.0f}")
        table.add_row(*cells)
    _out.print(table)
    if count:
        _out.print(
            f"MDE of {metric_name} in its own unit (treatment - control); CUPED VR = share of the "
            "per-student variance the pre-exposure covariates remove"
            + (f" (from {past})" if past else "")
            + ".",
            highlight=False,
            soft_wrap=True,
        )

    regional = [r for r in rows if r.region != "pooled"]
    smallest = min(regional, key=lambda r: r.students)
    largest = max(regional, key=lambda r: r.students)
    _out.print(
        f"Small regions are where power runs out: {region_label(smallest.region)} with {smallest.students:,} "
        + (
            f"students can only detect {_lift_text(smallest.mde_abs, count)} ({smallest.mde_rel:+.0%}) "
            f"in {weeks:g} week(s)"
            if math.isfinite(smallest.mde_abs)
            else f"students cannot detect any lift in {weeks:g} week(s)"
        )
        + (
            f", vs {_lift_text(largest.mde_abs, count)} in {region_label(largest.region)}."
            if largest is not smallest
            else "."
        )
        + " Running longer cannot add students a region does not have; judge small regions on the pooled "
        "(stratified) result and read their own lifts as descriptive.",
        highlight=False,
    )
    never = [r.region for r in regional if r.reachable is False]
    summary = f"{len(regional)} region(s) planned"
    if target_lift is not None:
        summary += f"; {target_lift:+.0%} lift unreachable in {len(never)}: {', '.join(never) or 'none'}"
    _out.print(summary, highlight=False, soft_wrap=True)
