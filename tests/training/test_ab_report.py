"""The A/B report end to end: synthetic exposures through the real assignment, Parquet in, HTML + JSON out."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from features.experiments import ExperimentRegistry, exposure_fields, load_experiments
from features.schemas import EVENTS
from training.ab.errors import ExperimentNotFoundError
from training.ab.exposures import from_stream_fields, read_events, read_exposures, records_to_table
from training.ab.report import build_report, write_report
from training.cli import app

START = datetime(2025, 9, 1, tzinfo=UTC)
SIZES = {"seoul": 2000, "gimpo": 600, "taebaek": 300}
CONFIG = {
    "experiments": [
        {
            "key": "lfm-v2",
            "salt": "lfm-v2-2025-09",
            "regions": list(SIZES),
            "start": "2025-09-01T00:00:00Z",
            "end": "2025-09-15T00:00:00Z",
            "variants": [
                {"name": "control", "weight": 1, "model": "champion"},
                {"name": "challenger", "weight": 1, "model": "challenger"},
            ],
        }
    ]
}


#: Support categories of the students (every third is multicultural) for the equity section.
CATEGORIES = ("multicultural", "basic_livelihood", "near_poverty")


def make_data(
    root: Path, seed: int = 0, drop_control_share: float = 0.0, no_lift_for: str | None = None
) -> Path:
    """Exposures assigned by the real registry, events with a true lift; optionally lose control exposures
    in Seoul (a logging bug that the SRM check must catch), or give one support category no lift at all
    (a planted group the treatment helps less, which the equity section must flag). Writes a students
    table (``students.parquet``) with the categories."""
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "experiments.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    reg = ExperimentRegistry.load(cfg_path)
    rng = np.random.default_rng(seed)
    records, events, people = [], [], []
    for region, n in SIZES.items():
        for i in range(n):
            sid = f"{region}-{i:05d}"
            category = CATEGORIES[i % 3]
            people.append({"student_id": sid, "region": region, "grade": "h1", "support_category": category})
            for _ in range(int(rng.integers(1, 3))):
                when = START + timedelta(minutes=float(rng.uniform(0, 13 * 24 * 60)))
                a = reg.assign(sid, region, when)
                assert a is not None
                if region == "seoul" and a.variant == "control" and rng.random() < drop_control_share:
                    continue
                rid = f"r{len(records)}"
                lectures = [f"L{x:03d}" for x in rng.choice(300, 4, replace=False)]
                fields = exposure_fields(
                    rid, sid, region, a, "3" if a.variant == "control" else "4", lectures, when
                )
                records.append(from_stream_fields(fields))
                p = 0.05 if a.variant == "control" or category == no_lift_for else 0.08
                for lec in lectures:
                    if rng.random() < p:
                        t = when + timedelta(hours=float(rng.uniform(0, 24 * 9)))  # some fall outside 7 days
                        tied = rid if rng.random() < 0.3 else None
                        events.append(_event(len(events), sid, lec, "enrol", t, tied))
                        if rng.random() < 0.5:
                            events.append(
                                _event(len(events), sid, lec, "complete", t + timedelta(days=2), None)
                            )
    for j in range(50):  # noise: enrolments of lectures never shown
        events.append(_event(len(events), f"seoul-{j:05d}", "L999", "enrol", START + timedelta(days=1), None))
    table = records_to_table(records)
    (root / "exposures").mkdir(exist_ok=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), root / "exposures" / "part-0.parquet")
    pq.write_table(table.slice(half), root / "exposures" / "part-1.parquet")
    (root / "events").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(events, schema=EVENTS), root / "events" / "events.parquet")
    pq.write_table(pa.Table.from_pylist(people), root / "students.parquet")
    return root


def _event(i: int, sid: str, lec: str, kind: str, at: datetime, rid: str | None) -> dict[str, object]:
    return {
        "event_id": f"e{i}",
        "student_id": sid,
        "lecture_id": lec,
        "type": kind,
        "progress": 1.0 if kind == "complete" else 0.0,
        "occurred_at": at,
        "request_id": rid,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("ab") / "fair")


@pytest.fixture(scope="module")
def written(data: Path) -> Iterator[tuple[Path, Path, dict]]:
    exp = load_experiments(data / "experiments.yaml").experiments[0]
    rep = build_report(read_exposures(data / "exposures"), read_events(data / "events"), exp)
    html_path, json_path = write_report(rep, data / "out" / "report.html")
    yield html_path, json_path, json.loads(json_path.read_text(encoding="utf-8"))


def test_html_is_self_contained_with_images(written: tuple[Path, Path, dict]) -> None:
    html_path, _, _ = written
    page = html_path.read_text(encoding="utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 6  # one forest plot per metric + the cumulative plot
    for img in images:
        assert base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<meta charset="utf-8">' in page or "<meta charset=utf-8>" in page
    assert "taebaek (태백)" in page and "seoul (서울)" in page and "gimpo (김포)" in page
    assert "How these numbers are computed" in page
    assert "Sample-ratio check passed" in page and "class=srm" not in page
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing fetched from elsewhere


def test_json_holds_every_comparison(written: tuple[Path, Path, dict]) -> None:
    _, json_path, doc = written
    assert json_path.name == "report.json"
    assert doc["experiment"]["key"] == "lfm-v2" and doc["experiment"]["control"] == "control"
    assert doc["srm_any"] is False
    regions = {c["region"] for c in doc["comparisons"]}
    assert regions == {"seoul", "gimpo", "taebaek", "pooled"}
    assert len(doc["comparisons"]) == 5 * 4  # metrics x (regions + pooled)
    assert doc["region_labels"]["taebaek"] == "태백"
    assert "태백" in json_path.read_text(encoding="utf-8")  # UTF-8, not \\u escapes
    pooled = next(
        c for c in doc["comparisons"] if c["metric"] == "enrolment_rate" and c["region"] == "pooled"
    )
    lo, hi = pooled["estimate"]["abs_ci"]
    assert lo < pooled["estimate"]["abs_lift"] < hi
    assert pooled["estimate"]["abs_lift"] > 0  # the challenger's true lift is positive
    assert pooled["estimate"]["test"] == "cmh"


def test_numbers_are_recomputable_from_the_parquet_files(
    data: Path, written: tuple[Path, Path, dict]
) -> None:
    """An independent, loop-by-loop reading of the documented rules gives the same counts as the report."""
    _, _, doc = written
    window = timedelta(days=7)
    ex = pq.read_table(data / "exposures").to_pylist()
    ev = pq.read_table(data / "events" / "events.parquet").to_pylist()
    first: dict[str, dict] = {}
    by_student: dict[str, list[dict]] = {}
    for x in sorted(ex, key=lambda x: (x["shown_at"], x["request_id"])):
        first.setdefault(x["student_id"], x)
        by_student.setdefault(x["student_id"], []).append(x)
    by_rid = {x["request_id"]: x for x in ex}
    enrolled: dict[tuple[str, str], datetime] = {}
    for e in sorted((e for e in ev if e["type"] == "enrol"), key=lambda e: e["occurred_at"]):
        sid, lec, t = e["student_id"], e["lecture_id"], e["occurred_at"]
        if sid not in by_student or (sid, lec) in enrolled:
            continue
        tied = by_rid.get(e["request_id"] or "")
        if (tied and tied["student_id"] == sid) or any(
            lec in x["lecture_ids"] and x["shown_at"] <= t <= x["shown_at"] + window for x in by_student[sid]
        ):
            enrolled[(sid, lec)] = t
    completed = {
        (e["student_id"], e["lecture_id"])
        for e in ev
        if e["type"] == "complete"
        and (e["student_id"], e["lecture_id"]) in enrolled
        and e["occurred_at"] >= enrolled[(e["student_id"], e["lecture_id"])]
    }
    for c in doc["comparisons"]:
        if c["region"] == "pooled":
            continue
        for arm in (c["control"], c["treatment"]):
            students = [
                s for s, x in first.items() if x["region"] == c["region"] and x["variant"] == arm["variant"]
            ]
            assert arm["students"] == len(students)
            if c["metric"] == "enrolment_rate":
                assert arm["numerator"] == sum(any(s == k[0] for k in enrolled) for s in students)
            if c["metric"] == "enrolments_per_student":
                assert arm["numerator"] == sum(1 for k in enrolled if k[0] in set(students))
            if c["metric"] == "completions_per_student":
                assert arm["numerator"] == sum(1 for k in completed if k[0] in set(students))


def test_unknown_experiment(data: Path) -> None:
    exp = load_experiments(data / "experiments.yaml").experiments[0].model_copy(update={"key": "other"})
    with pytest.raises(ExperimentNotFoundError, match="no exposures of experiment 'other'"):
        build_report(read_exposures(data / "exposures"), read_events(data / "events"), exp)


runner = CliRunner()


def test_cli_report_writes_html_and_json(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "lfm.html"
    res = runner.invoke(
        app,
        [
            *("ab", "report", "--exposures", str(data / "exposures"), "--events", str(data / "events")),
            *("--experiment", "lfm-v2", "--experiments", str(data / "experiments.yaml"), "--out", str(out)),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        out.is_file() and json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["srm_any"] is False
    )
    assert "taebaek (태백)" in res.output and "SRM in 0" in res.output
    assert "WARNING" not in res.output


def test_srm_is_flagged_in_html_json_and_cli(tmp_path: Path) -> None:
    root = make_data(tmp_path / "skewed", seed=1, drop_control_share=0.25)
    out = tmp_path / "skewed.html"
    res = runner.invoke(
        app,
        [
            *("ab", "report", "--exposures", str(root / "exposures"), "--events", str(root / "events")),
            *("--experiment", "lfm-v2", "--experiments", str(root / "experiments.yaml"), "--out", str(out)),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "WARNING: sample-ratio mismatch in seoul (서울)" in res.output
    page = out.read_text(encoding="utf-8")
    assert "<div class=srm>" in page and "Sample-ratio mismatch" in page
    doc = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert doc["srm_any"] is True
    flagged = {s["region"] for s in doc["srm"] if s["mismatch"]}
    assert "seoul" in flagged and "taebaek" not in flagged and "gimpo" not in flagged


def test_cli_report_errors_are_clear(data: Path, tmp_path: Path) -> None:
    base = ["ab", "report", "--exposures", str(data / "exposures"), "--events", str(data / "events")]
    cfg = ["--experiments", str(data / "experiments.yaml"), "--out", str(tmp_path / "x.html")]
    res = runner.invoke(app, [*base, "--experiment", "nope", *cfg])
    assert res.exit_code == 1 and "'nope' is not in" in res.output
    bad = tmp_path / "bad-events"
    bad.mkdir()
    pq.write_table(
        pa.table({"student_id": ["s"], "lecture_id": ["L"], "type": ["enrol"]}), bad / "part.parquet"
    )
    res = runner.invoke(
        app,
        [
            *("ab", "report", "--exposures", str(data / "exposures"), "--events", str(bad)),
            *("--experiment", "lfm-v2", *cfg),
        ],
    )
    assert res.exit_code == 1
    assert (
        "part.parquet" in res.output
        and "'occurred_at'" in res.output
        and "required column missing" in res.output
    )
    res = runner.invoke(app, [*base, "--experiment", "lfm-v2", "--experiments", str(tmp_path / "none.yaml")])
    assert res.exit_code == 1 and "experiments file not found" in res.output


def test_equity_flags_the_group_a_planted_effect_leaves_behind(tmp_path: Path) -> None:
    """Planted: the treatment lifts every support category but multicultural. The report's equity section
    (JSON, HTML, CLI) flags that group alone, and its other sections name models and daily looks."""
    root = make_data(tmp_path / "planted", seed=2, no_lift_for="multicultural")
    out = tmp_path / "planted.html"
    res = runner.invoke(
        app,
        [
            *("ab", "report", "--exposures", str(root / "exposures"), "--events", str(root / "events")),
            *("--experiment", "lfm-v2", "--experiments", str(root / "experiments.yaml"), "--out", str(out)),
            *("--students", str(root / "students.parquet"), "--history", str(root / "events")),
        ],
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "helps less: multicultural" in text
    assert "models: control = learnrec-lectures v3; challenger = learnrec-lectures v4" in text
    doc = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    rows = {r["group"]: r for r in doc["equity"]["support_category"]}
    assert set(rows) == set(CATEGORIES)
    assert rows["multicultural"]["helps_less"] and rows["multicultural"]["gap"] < 0
    assert rows["multicultural"]["ci"][0] < 0 < rows["multicultural"]["ci"][1]  # no lift of its own
    assert not rows["basic_livelihood"]["helps_less"] and not rows["near_poverty"]["helps_less"]
    assert rows["basic_livelihood"]["lift"] > 0 and rows["near_poverty"]["lift"] > 0
    assert [r["group"] for r in doc["equity"]["grade"]] == ["h1"]
    # daily looks: one pooled look per day, growing samples, the always-valid interval wider than the fixed
    pooled = [r for r in doc["looks"] if r["region"] == "pooled"]
    assert [r["day"] for r in pooled] == list(range(1, len(pooled) + 1)) and len(pooled) >= 13
    assert [r["students"] for r in pooled] == sorted(r["students"] for r in pooled)
    for r in pooled:
        assert r["seq_low"] <= r["ci_low"] <= r["lift"] <= r["ci_high"] <= r["seq_high"]
    assert doc["models"]["challenger"]["version"] == "4"
    page = out.read_text(encoding="utf-8")
    assert "<h2>Daily looks</h2>" in page and 'alt="daily sequential interval"' in page
    assert "<h2>Equity: the lift per group</h2>" in page and "<b>helps less</b>" in page
