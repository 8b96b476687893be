"""The synthetic generator: determinism, exact schemas, ids, funnel, series order, licences, realism."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.ground_truth import SUBJECTS, GroundTruth
from features.schemas import ALL_REGIONS, EVENTS, GRADES, LECTURES, STUDENTS, SUPPORT_CATEGORIES
from features.synth import DEFAULT_REGION_SIZES, SynthConfig, SynthSummary, generate, scaled_config
from features.synth_calendar import suneung_day
from features.tables import MANIFEST_FILE, TABLE_FILES, read_dataset

#: small enough to be fast, big enough (about 80 series) that students have choices
SMALL = scaled_config(600, 1000, seed=7)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "small"
    return out, generate(SMALL, out)


@pytest.fixture(scope="module")
def tables(small: tuple[Path, SynthSummary]) -> dict[str, pd.DataFrame]:
    ds = read_dataset(small[0])
    return {"students": ds.students, "lectures": ds.lectures, "events": ds.events.to_pandas()}


def _enrolments(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    ev = tables["events"]
    return ev[ev["type"] == "enrol"].merge(tables["students"], on="student_id")


# ----------------------------------------------------------------------------------------------------------
# files, schemas, determinism


def test_writes_the_dataset_layout_with_exact_schemas(small: tuple[Path, SynthSummary]) -> None:
    out, summary = small
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*TABLE_FILES.values(), MANIFEST_FILE, "ground_truth"]
    )
    for name, schema in (("students", STUDENTS), ("lectures", LECTURES), ("events", EVENTS)):
        written = pq.read_schema(out / TABLE_FILES[name])
        assert written.remove_metadata().equals(schema), name  # order, types and nullability
    assert summary.students == 600 and summary.lectures == 1000
    assert summary.events == pq.ParquetFile(out / "events.parquet").metadata.num_rows
    assert sum(summary.event_types.values()) == summary.events
    assert not list((out / "ground_truth").glob("*.pkl"))


def test_output_passes_the_dataset_reader(small: tuple[Path, SynthSummary]) -> None:
    ds = read_dataset(small[0])  # validates types, enums, ranges, unique ids and references
    assert ds.sizes == {"students": 600, "lectures": 1000, "events": small[1].events}
    assert ds.manifest["source"] == "synthetic"


def test_manifest_names_source_config_counts_and_version(small: tuple[Path, SynthSummary]) -> None:
    out, summary = small
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifest["source"] == "synthetic"
    assert manifest["config"] == SMALL.as_dict()
    assert manifest["sizes"] == {"students": 600, "lectures": 1000, "events": summary.events}
    assert manifest["counts"]["event_types"] == summary.event_types
    assert manifest["generator"]["version"]
    assert manifest["events_order"] == "occurred_at, event_id"
    assert "created_at" in manifest["wall_time"]


def test_same_seed_gives_identical_tables_and_another_seed_does_not(
    small: tuple[Path, SynthSummary], tmp_path: Path
) -> None:
    again = tmp_path / "again"
    generate(SMALL, again)
    for file in TABLE_FILES.values():
        assert pq.read_table(small[0] / file).equals(pq.read_table(again / file)), file
    for array in sorted((small[0] / "ground_truth").glob("*.npy")):
        assert array.read_bytes() == (again / "ground_truth" / array.name).read_bytes(), array.name
    first = json.loads((small[0] / MANIFEST_FILE).read_text(encoding="utf-8"))
    second = json.loads((again / MANIFEST_FILE).read_text(encoding="utf-8"))
    first.pop("wall_time")
    second.pop("wall_time")
    assert first == second

    other = tmp_path / "other"
    generate(scaled_config(600, 1000, seed=8), other)
    assert not pq.read_table(small[0] / "events.parquet").equals(pq.read_table(other / "events.parquet"))


def test_regenerating_replaces_the_directory_atomically(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    stages: list[tuple[str, int, int]] = []
    generate(scaled_config(40, 30, seed=1), out, progress=lambda s, d, t: stages.append((s, d, t)))
    (out / "stale.txt").write_text("old", encoding="utf-8")
    generate(scaled_config(50, 30, seed=2), out)
    assert not (out / "stale.txt").exists()
    assert read_dataset(out).sizes["students"] == 50
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary directories left
    assert {s for s, _, _ in stages} == {"catalogue", "students", "events"}
    assert ("students", 40, 40) in stages


def test_an_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from features.errors import DatasetNotFoundError

    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(DatasetNotFoundError, match="not a directory"):
        generate(scaled_config(10, 10), target)


def test_chunking_keeps_every_student_and_id_unique(tmp_path: Path) -> None:
    config = SynthConfig(region_sizes={"seoul": 90, "taebaek": 7}, lectures=60, seed=3, chunk_students=25)
    ds = read_dataset(generate(config, tmp_path / "chunked").out_dir)
    assert ds.students["student_id"].tolist() == [f"s{i:07d}" for i in range(1, 98)]
    assert ds.students["region"].value_counts().to_dict() == {"seoul": 90, "taebaek": 7}
    assert ds.events.to_pandas()["student_id"].nunique() > 50


# ----------------------------------------------------------------------------------------------------------
# ids, references, ordering, funnel


def test_ids_are_unique_opaque_and_referenced(tables: dict[str, pd.DataFrame]) -> None:
    st, lec, ev = tables["students"], tables["lectures"], tables["events"]
    assert st["student_id"].is_unique and lec["lecture_id"].is_unique and ev["event_id"].is_unique
    assert st["student_id"].str.fullmatch(r"s\d{7}").all()
    assert ev["student_id"].isin(st["student_id"]).all()
    assert ev["lecture_id"].isin(lec["lecture_id"]).all()
    assert ev["request_id"].isna().all()
    # the region is not readable from the id: regions are spread over the id range
    seoul = st.index[st["region"] == "seoul"]
    assert seoul.min() < 50 and seoul.max() > 550


def test_events_are_sorted_and_strictly_increasing_per_student(tables: dict[str, pd.DataFrame]) -> None:
    ev = tables["events"]
    ts = ev["occurred_at"].astype("int64").to_numpy()
    assert (np.diff(ts) >= 0).all()
    assert ev["event_id"].is_monotonic_increasing
    per_student = ev.sort_values(["student_id", "occurred_at"], kind="stable")
    same = per_student["student_id"].to_numpy()[1:] == per_student["student_id"].to_numpy()[:-1]
    assert (np.diff(per_student["occurred_at"].astype("int64").to_numpy())[same] > 0).all()
    window_start = pd.Timestamp("2024-02-29T15:00:00Z")  # 2024-03-01 00:00 KST
    assert ev["occurred_at"].min() >= window_start
    assert ev["occurred_at"].max() < window_start + pd.Timedelta(days=730)


def test_funnel_shape(tables: dict[str, pd.DataFrame]) -> None:
    ev = tables["events"]
    counts = ev["type"].value_counts()
    assert counts["complete"] < 0.8 * counts["enrol"]  # many enrolments are never completed
    assert counts["drop"] > 0.05 * counts["enrol"]
    assert counts["progress"] > 0
    # one enrolment per pair, and it is the pair's first event
    first = ev.sort_values("occurred_at", kind="stable").groupby(["student_id", "lecture_id"])["type"].first()
    assert (first == "enrol").all()
    assert ev[ev["type"] == "enrol"].duplicated(["student_id", "lecture_id"]).sum() == 0
    assert (ev.loc[ev["type"] == "enrol", "progress"] == 0).all()
    assert (ev.loc[ev["type"] == "complete", "progress"] == 1).all()
    progress = ev.loc[ev["type"] == "progress", "progress"]
    assert ((progress > 0) & (progress < 1)).all()
    # never both completed and dropped; a drop carries the last progress reached
    kinds = ev.groupby(["student_id", "lecture_id"])["type"].agg(set)
    assert not kinds.map(lambda k: {"complete", "drop"} <= k).any()
    last_progress = (
        ev[ev["type"] == "progress"]
        .sort_values("occurred_at")
        .groupby(["student_id", "lecture_id"])["progress"]
        .last()
    )
    drops = ev[ev["type"] == "drop"].set_index(["student_id", "lecture_id"])["progress"]
    expected = last_progress.reindex(drops.index).fillna(0.0)
    assert np.array_equal(drops.to_numpy(), expected.to_numpy(dtype=np.float32))
    # the funnel runs in order inside a pair
    order = {"enrol": 0, "progress": 1, "complete": 2, "drop": 2}
    staged = ev.assign(stage=ev["type"].map(order)).sort_values("occurred_at", kind="stable")
    assert staged.groupby(["student_id", "lecture_id"])["stage"].is_monotonic_increasing.all()


def test_students_walk_series_in_order_mostly(tables: dict[str, pd.DataFrame]) -> None:
    en = tables["events"][tables["events"]["type"] == "enrol"].merge(
        tables["lectures"][["lecture_id", "series_id", "series_position"]], on="lecture_id"
    )
    en = en.sort_values(["student_id", "occurred_at"], kind="stable")
    steps = en.groupby(["student_id", "series_id"])["series_position"].diff().dropna()
    assert len(steps) > 1000
    assert 0.9 < (steps > 0).mean() < 1.0  # mostly forward, a few catch-ups of skipped episodes
    assert (steps == 1).mean() > 0.8
    starts = en.groupby(["student_id", "series_id"])["series_position"].first()
    assert (starts == 1).mean() > 0.7


def test_enrolments_respect_licence_grade_and_activity(tables: dict[str, pd.DataFrame]) -> None:
    en = _enrolments(tables).merge(tables["lectures"], on="lecture_id")
    licensed = [
        ALL_REGIONS in r or region in r for r, region in zip(en["regions"], en["region"], strict=True)
    ]
    suited = [grade in g for g, grade in zip(en["grades"], en["grade"], strict=True)]
    assert all(licensed) and all(suited)
    # partner regions start after their launch: taebaek joined in September 2025
    taebaek = en[en["region"] == "taebaek"]
    if len(taebaek):
        assert taebaek["occurred_at"].min() >= pd.Timestamp("2025-08-31T15:00:00Z")


# ----------------------------------------------------------------------------------------------------------
# realism


def test_catalogue_looks_like_the_platform(tables: dict[str, pd.DataFrame]) -> None:
    lec = tables["lectures"]
    assert lec["provider"].nunique() >= 5
    shares = lec["subject"].value_counts(normalize=True)
    assert set(shares.index[:3]) <= {"수학", "영어", "국어", "과학"}
    assert set(lec["subject"]) <= set(SUBJECTS)
    assert lec["title"].str.fullmatch(r"\[[^\]]+\] .+ \d+강: .+").all()
    assert lec["title"].str.contains("수학").any()
    per_series = lec.groupby("series_id")["series_position"]
    assert (per_series.max() == per_series.size()).all()  # positions 1..n without gaps
    assert (per_series.min() == 1).all()
    assert per_series.size().max() <= 30
    assert lec["level"].isin([1, 2, 3]).all() and lec["level"].nunique() == 3
    restricted = lec["regions"].map(lambda r: ALL_REGIONS not in r)
    assert 0 < restricted.mean() < 0.5  # most providers everywhere, some licensed only somewhere
    assert 0 < (~lec["active"]).sum() < 0.2 * len(lec)
    assert lec["grades"].map(lambda g: "oos" in g).any()
    assert lec["grades"].map(lambda g: set(g) <= set(GRADES) and len(g) >= 1).all()
    assert ((lec["duration_min"] >= 10) & (lec["duration_min"] <= 90)).all()


def test_students_have_grades_and_an_optional_profile(tables: dict[str, pd.DataFrame]) -> None:
    st = tables["students"]
    assert set(st["grade"]) <= {"m1", "m2", "m3", "h1", "h2", "h3", "oos"}
    assert 0.01 < (st["grade"] == "oos").mean() < 0.12
    assert set(st["school_level"].dropna()) <= {"middle", "high", "none"}
    assert set(st["target_exam"].dropna()) <= {"수능", "내신", "검정고시", "none"}
    assert st["target_exam"].isna().any() and st["interest_subjects"].isna().any()
    shown = st["interest_subjects"].dropna()
    assert shown.map(lambda s: 1 <= len(s) <= 3 and len(set(s)) == len(s) and set(s) <= set(SUBJECTS)).all()
    assert st["age_band"].isna().all()
    # a support category for everyone; out-of-school youth are exactly the out_of_school category
    assert set(st["support_category"]) <= set(SUPPORT_CATEGORIES) and st["support_category"].notna().all()
    assert ((st["grade"] == "oos") == (st["support_category"] == "out_of_school")).all()
    assert st["support_category"].value_counts(normalize=True)["basic_livelihood"] > 0.2
    oos = st[st["grade"] == "oos"]
    assert (oos["school_level"].dropna() == "none").all()


def test_support_activity_is_an_assumption_that_changes_only_that_category(
    small: tuple[Path, SynthSummary], tmp_path: Path
) -> None:
    """Default: no effect. Configured: the category's students start fewer series, everyone else as before."""
    config = SynthConfig(**{**SMALL.__dict__, "support_activity": {"basic_livelihood": 0.25}})
    generate(config, tmp_path / "less")
    base, less = read_dataset(small[0]), read_dataset(tmp_path / "less")
    pd.testing.assert_frame_equal(base.students, less.students)  # the categories do not move

    def per_student(ds: Any) -> pd.Series:
        events = ds.events.to_pandas()
        enrols = events[events["type"] == "enrol"].groupby("student_id").size()
        st = ds.students.set_index("student_id")
        return enrols.reindex(st.index, fill_value=0).groupby(st["support_category"]).mean()

    before, after = per_student(base), per_student(less)
    assert after["basic_livelihood"] < 0.5 * before["basic_livelihood"]
    others = [c for c in before.index if c != "basic_livelihood"]
    # the others' own draws are untouched (a separate stream), up to the shared catalogue's crowding
    assert np.allclose(after[others], before[others], rtol=0.2)


def test_activity_is_heavy_tailed(tables: dict[str, pd.DataFrame]) -> None:
    per = (
        tables["events"][tables["events"]["type"] == "enrol"]
        .groupby("student_id")
        .size()
        .reindex(tables["students"]["student_id"], fill_value=0)
    )
    active = per[per > 0]
    assert active.quantile(0.99) > 5 * active.median()
    top = active.sort_values(ascending=False)
    assert top.iloc[: len(top) // 10].sum() > 0.3 * top.sum()  # the busiest 10% do a third of it
    assert (per == 0).mean() < 0.4


def test_seasonality_is_visible(tables: dict[str, pd.DataFrame]) -> None:
    en = _enrolments(tables)
    kst = en["occurred_at"].dt.tz_convert("Asia/Seoul")
    day = kst.dt.date
    h3 = en["grade"] == "h3"
    suneung = suneung_day(2024)
    before = (h3 & (day >= dt.date(2024, 9, 1)) & (day <= suneung)).sum() / (
        suneung - dt.date(2024, 9, 1)
    ).days
    after = (h3 & (day > suneung) & (day < dt.date(2025, 3, 1))).sum() / (dt.date(2025, 3, 1) - suneung).days
    assert before > 5 * max(after, 0.01)  # third-years stop after the 수능
    weekday = kst.dt.day_of_week.value_counts()
    assert weekday[6] > 1.15 * weekday[4]  # Sundays busier than Fridays
    hours = kst.dt.hour.value_counts()
    assert hours.loc[19:23].sum() > 4 * hours.loc[2:6].sum()  # evenings, not nights


def test_tastes_are_learnable(small: tuple[Path, SynthSummary], tables: dict[str, pd.DataFrame]) -> None:
    """Series starts follow hidden tastes: higher true appeal and favourite subjects beyond chance."""
    truth = GroundTruth.load(small[0])
    st, lec = tables["students"], tables["lectures"]
    en = _enrolments(tables).merge(lec[["lecture_id", "series_id", "series_position"]], on="lecture_id")
    starts = en.sort_values("occurred_at").groupby(["student_id", "series_id"], as_index=False).first()
    entry = lec[lec["series_position"] == 1].reset_index(drop=True)
    appeal = truth.appeal(st["student_id"].tolist(), entry["lecture_id"].tolist())
    taste = np.asarray(truth.students.taste)[truth.student_rows(st["student_id"].tolist())]
    subject = entry["subject"].map(SUBJECTS.index).to_numpy()
    row = pd.Series(np.arange(len(st)), index=st["student_id"])
    col = pd.Series(np.arange(len(entry)), index=entry["series_id"])
    chosen_appeal, eligible_appeal, chosen_taste, eligible_taste = [], [], [], []
    for sid, group in starts.groupby("student_id"):
        i = int(row[sid])
        region, grade = st.at[i, "region"], st.at[i, "grade"]
        eligible = np.asarray(
            [
                (ALL_REGIONS in r or region in r) and grade in g
                for r, g in zip(entry["regions"], entry["grades"], strict=True)
            ]
        )
        cols = col[group["series_id"]].to_numpy()
        chosen_appeal.append(appeal[i, cols].mean())
        eligible_appeal.append(appeal[i, eligible].mean())
        chosen_taste.append(taste[i, subject[cols]].mean())
        eligible_taste.append(taste[i, subject[eligible]].mean())
    assert np.mean(chosen_appeal) > np.mean(eligible_appeal) + 0.7
    assert np.mean(chosen_taste) > np.mean(eligible_taste) + 0.2
    assert np.mean(np.asarray(chosen_appeal) > np.asarray(eligible_appeal)) > 0.75


def test_interest_subjects_partly_reveal_tastes(
    small: tuple[Path, SynthSummary], tables: dict[str, pd.DataFrame]
) -> None:
    truth = GroundTruth.load(small[0])
    st = tables["students"].dropna(subset=["interest_subjects"])
    taste = np.asarray(truth.students.taste)[truth.student_rows(st["student_id"].tolist())]
    favourite = np.asarray(SUBJECTS)[taste.argmax(axis=1)]
    hits = [f in s for f, s in zip(favourite, st["interest_subjects"], strict=True)]
    assert 0.5 < np.mean(hits) < 1.0  # correlated, not a copy


# ----------------------------------------------------------------------------------------------------------
# configs


def test_scaled_config_keeps_region_proportions() -> None:
    assert scaled_config().region_sizes == DEFAULT_REGION_SIZES
    assert scaled_config(None, 123, seed=9) == SynthConfig(lectures=123, seed=9)
    big = scaled_config(1_000_000, 20_000)
    assert sum(big.region_sizes.values()) == 1_000_000 and big.lectures == 20_000
    total = sum(DEFAULT_REGION_SIZES.values())
    for region, size in DEFAULT_REGION_SIZES.items():
        assert abs(big.region_sizes[region] - size * 1_000_000 / total) <= 1
    for students in (6, 7, 60, 600, 4_330):
        sizes = scaled_config(students).region_sizes
        assert sum(sizes.values()) == students
        assert list(sizes) == list(DEFAULT_REGION_SIZES)
        assert min(sizes.values()) >= 1
        assert sizes["taebaek"] == min(sizes.values())
        assert sizes["seoul"] == max(sizes.values())
    assert sum(scaled_config(3).region_sizes.values()) == 6  # every region keeps one student


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"region_sizes": {"Seoul City": 5}}, "slug"),
        ({"region_sizes": {"seoul": -1}}, ">= 0"),
        ({"region_sizes": {}}, "empty"),
        ({"region_sizes": {"seoul": 0}}, "0 students"),
        ({"lectures": 0}, "lectures"),
        ({"years": 0.0}, "years"),
        ({"chunk_students": 0}, "chunk_students"),
        ({"support_activity": {"rich": 1.0}}, "not one of"),
        ({"support_activity": {"multicultural": 0.0}}, "must be > 0"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SynthConfig(**kwargs)
    with pytest.raises(ValueError, match="students"):
        scaled_config(0)


def test_tiny_and_custom_configs_still_make_valid_data(tmp_path: Path) -> None:
    tiny = read_dataset(generate(scaled_config(60, 30, seed=7), tmp_path / "tiny").out_dir)
    assert tiny.sizes["lectures"] == 30 and tiny.sizes["events"] > 0
    custom = SynthConfig(
        region_sizes={"busan": 40, "seoul": 10}, lectures=40, start=dt.date(2025, 9, 1), years=0.5, seed=1
    )
    ds = read_dataset(generate(custom, tmp_path / "custom").out_dir)
    assert set(ds.students["region"]) == {"busan", "seoul"}
    events = ds.events.to_pandas()
    assert events["occurred_at"].min() >= pd.Timestamp("2025-08-31T15:00:00Z")
    assert events["occurred_at"].max() < pd.Timestamp("2026-03-02T15:00:00Z")
