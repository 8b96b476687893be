"""The OULAD mapping: exact rules on a small hand-made copy of the layout, and counts on the real files."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from features.errors import DatasetNotFoundError, SchemaError
from features.oulad import DOI, LICENSE, OuladReport, load_oulad, region_slug
from features.tables import Dataset, read_dataset, write_dataset

REAL_OULAD = Path(
    os.environ.get(
        "LEARNREC_OULAD_DIR", Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "oulad"
    )
)

INFO_HEADER = (
    "code_module,code_presentation,id_student,gender,region,highest_education,imd_band,age_band,"
    "num_of_prev_attempts,studied_credits,disability,final_result"
)
SMALL = {
    "courses.csv": """"code_module","code_presentation","module_presentation_length"
"AAA","2013J","268"
"AAA","2014B","240"
"CCC","2014J","269"
""",
    "assessments.csv": """"code_module","code_presentation","id_assessment","assessment_type","date","weight"
"AAA","2013J","11","TMA","20","50"
"AAA","2013J","12","TMA","100","50"
"AAA","2013J","13","Exam","","100"
"AAA","2014B","21","TMA","20","100"
"CCC","2014J","31","CMA","30","0"
"CCC","2014J","32","Exam","","100"
""",
    "studentInfo.csv": INFO_HEADER
    + """
"AAA","2013J","1","M","East Anglian Region","HE Qualification","90-100%","55<=","0","60","N","Pass"
"AAA","2014B","1","M","Scotland","HE Qualification","10-20","35-55","1","60","N","Fail"
"AAA","2013J","2","F","London Region","A Level or Equivalent","","0-35","0","60","N","Withdrawn"
"CCC","2014J","3","F","Wales","Lower Than A Level","20-30%","0-35","0","30","Y","Withdrawn"
"CCC","2014J","4","M","North Western Region","A Level","30-40%","0-35","0","60","N","Distinction"
"AAA","2013J","5","F","Ireland","No Formal quals","0-10%","0-35","0","60","N","Fail"
""",
    "studentRegistration.csv": """\
"code_module","code_presentation","id_student","date_registration","date_unregistration"
"AAA","2013J","1","-30",""
"AAA","2014B","1","-10",""
"AAA","2013J","2","-5","30"
"CCC","2014J","3","0",""
"CCC","2014J","4","",""
"AAA","2013J","5","-20","50"
""",
    "studentAssessment.csv": """id_student,id_assessment,date_submitted,is_banked,score
1,11,18,0,78
1,12,95,0,?
1,21,-1,1,80
2,11,25,0,60
2,12,100,0,55
4,31,300,0,90
""",
}


def small_oulad(directory: Path, **replace: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in {**SMALL, **replace}.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def at(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def events_of(ds_events: pd.DataFrame, student: str, lecture: str) -> list[tuple[str, pd.Timestamp, float]]:
    rows = ds_events[(ds_events["student_id"] == student) & (ds_events["lecture_id"] == lecture)]
    return [
        (t, ts, round(float(p), 4))
        for t, ts, p in zip(rows["type"], rows["occurred_at"], rows["progress"], strict=True)
    ]


def _as_text(events: pd.DataFrame) -> pd.DataFrame:
    """The events (read from Arrow) with any dictionary-encoded column (a categorical) as plain text, so
    grouping and matching read the text."""
    coded = [c for c in events.columns if isinstance(events[c].dtype, pd.CategoricalDtype)]
    return events.astype(dict.fromkeys(coded, "str"))


# ------------------------------------------------------------------------------------------------ exact rules


def test_small_oulad_lectures(tmp_path: Path) -> None:
    ds, report = load_oulad(small_oulad(tmp_path / "oulad"))
    lec = ds.lectures.set_index("lecture_id")
    assert list(lec.index) == ["AAA-2013J", "AAA-2014B", "CCC-2014J"]
    assert lec.loc["AAA-2013J", "title"] == "AAA 2013J (Social Sciences)"
    assert lec.loc["CCC-2014J", "subject"] == "STEM"
    assert lec.loc["AAA-2014B", "series_id"] == "AAA" and lec.loc["AAA-2014B", "series_position"] == 2
    assert lec.loc["AAA-2013J", "series_position"] == 1
    assert lec.loc["AAA-2014B", "duration_min"] == 240 * 60
    assert lec.loc["AAA-2013J", "grades"] == ["adult"] and lec.loc["AAA-2013J", "regions"] == ["*"]
    assert report.presentations == 3 and report.modules == 2


def test_small_oulad_students_take_the_latest_presentation(tmp_path: Path) -> None:
    ds, report = load_oulad(small_oulad(tmp_path / "oulad"))
    st = ds.students.set_index("student_id")
    assert list(st.index) == ["1", "2", "3", "4", "5"]
    # student 1: 2014B is later than 2013J -> Scotland, "10-20" normalised to "10-20%"
    assert st.loc["1", "region"] == "scotland" and st.loc["1", "support_category"] == "10-20%"
    assert st.loc["1", "age_band"] == "35-55"
    assert pd.isna(st.loc["2", "support_category"])  # blank imd_band -> null
    assert st.loc["2", "region"] == "london" and st.loc["4", "region"] == "north_western"
    assert set(st["grade"]) == {"adult"}
    assert report.students_in_several_presentations == 1
    assert report.blank_imd_band_rows == 1 and report.imd_band_without_percent_rows == 1


def test_small_oulad_event_rules(tmp_path: Path) -> None:
    ds, report = load_oulad(small_oulad(tmp_path / "oulad"))
    ev = ds.events.to_pandas()
    # Pass: enrol (2013-10-01 - 30 d), two submissions (1/3, 2/3 of 3 assessments; the '?' score counts),
    # complete at the end
    assert events_of(ev, "1", "AAA-2013J") == [
        ("enrol", at("2013-09-01 00:00"), 0.0),
        ("progress", at("2013-10-19 12:00"), 0.3333),
        ("progress", at("2014-01-04 12:00"), 0.6667),
        ("complete", at("2014-06-26 23:00"), 1.0),
    ]
    # Fail without unregistration: banked submission (day -1) placed on the enrol day; no drop, no complete
    assert events_of(ev, "1", "AAA-2014B") == [
        ("enrol", at("2014-01-22 00:00"), 0.0),
        ("progress", at("2014-01-22 12:00"), 1.0),
    ]
    # Withdrawn, unregistered on day 30 but submitted on day 100: the drop moves after the submission
    assert [e[0] for e in events_of(ev, "2", "AAA-2013J")] == ["enrol", "progress", "progress", "drop"]
    assert events_of(ev, "2", "AAA-2013J")[-1][1] == at("2014-01-09 18:00")
    # Withdrawn without an unregistration date: drop on the last activity (here the enrol day)
    assert events_of(ev, "3", "CCC-2014J") == [
        ("enrol", at("2014-10-01 00:00"), 0.0),
        ("drop", at("2014-10-01 18:00"), 0.0),
    ]
    # blank date_registration -> enrol at the start; Distinction with a submission after the end
    assert events_of(ev, "4", "CCC-2014J") == [
        ("enrol", at("2014-10-01 00:00"), 0.0),
        ("progress", at("2015-07-28 12:00"), 0.5),
        ("complete", at("2015-07-28 23:00"), 1.0),
    ]
    # Fail with an unregistration -> drop on that day
    assert events_of(ev, "5", "AAA-2013J") == [
        ("enrol", at("2013-09-11 00:00"), 0.0),
        ("drop", at("2013-11-20 18:00"), 0.0),
    ]
    assert ev["event_id"].is_unique and "oulad-enrol-AAA-2013J-1" in set(ev["event_id"])
    assert report.question_mark_scores == 1
    assert report.banked_submissions == 1
    assert report.blank_date_registration == 1
    assert report.unregistrations == 2
    assert report.fail_with_unregistration == 1
    assert report.withdrawn_without_unregistration == 1
    assert report.drops_moved_after_late_submissions == 1
    assert report.completions_moved_after_late_submissions == 1
    assert report.assessments_without_date == 2
    assert report.events == {"complete": 2, "drop": 3, "enrol": 6, "progress": 6}


def test_manifest_credits_the_source_and_carries_the_report(tmp_path: Path) -> None:
    ds, report = load_oulad(small_oulad(tmp_path / "oulad"))
    assert ds.manifest["doi"] == DOI == "10.1038/sdata.2017.171"
    assert ds.manifest["license"] == LICENSE == "CC BY 4.0"
    assert "Kuzilek" in ds.manifest["citation"] and "Hlosta" in ds.manifest["citation"]
    assert ds.manifest["mapping"]["question_mark_scores"] == 1
    assert any("CC BY 4.0" in line for line in report.lines())
    out = write_dataset(ds, tmp_path / "ds")
    assert read_dataset(out).manifest["citation"] == ds.manifest["citation"]


def test_bad_score_names_file_row_and_column(tmp_path: Path) -> None:
    source = small_oulad(
        tmp_path / "oulad",
        **{
            "studentAssessment.csv": SMALL["studentAssessment.csv"].replace("2,11,25,0,60", "2,11,25,0,sixty")
        },
    )
    with pytest.raises(SchemaError) as info:
        load_oulad(source)
    expected = "row 4, column 'score': expected a score 0..100 or '?', got 'sixty'"
    assert str(info.value) == f"{source / 'studentAssessment.csv'}: {expected}"


def test_bad_day_number_names_file_row_and_column(tmp_path: Path) -> None:
    source = small_oulad(
        tmp_path / "oulad",
        **{"studentRegistration.csv": SMALL["studentRegistration.csv"].replace('"-5","30"', '"-5","30.5"')},
    )
    with pytest.raises(
        SchemaError, match=r"studentRegistration.csv: row 3, column 'date_unregistration': .*'30.5'"
    ):
        load_oulad(source)


def test_bad_presentation_code(tmp_path: Path) -> None:
    source = small_oulad(
        tmp_path / "oulad", **{"courses.csv": SMALL["courses.csv"].replace('"2014B"', '"2014X"')}
    )
    with pytest.raises(SchemaError, match=r"courses.csv: row 2, column 'code_presentation': .*'2014X'"):
        load_oulad(source)


def test_missing_file_is_named(tmp_path: Path) -> None:
    source = small_oulad(tmp_path / "oulad")
    (source / "studentInfo.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"studentInfo.csv is missing"):
        load_oulad(source)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_oulad(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("East Anglian Region", "east_anglian"),
        ("Scotland", "scotland"),
        ("South West Region", "south_west"),
        ("Ireland", "ireland"),
    ],
)
def test_region_slug(name: str, slug: str) -> None:
    assert region_slug(name) == slug


# ------------------------------------------------------------------------------------------------ real files


@pytest.fixture(scope="module")
def real() -> tuple[Dataset, OuladReport]:
    if not (REAL_OULAD / "studentInfo.csv").is_file():
        pytest.skip(f"OULAD not found at {REAL_OULAD} (set LEARNREC_OULAD_DIR)")
    return load_oulad(REAL_OULAD)


def test_real_oulad_counts(real: tuple[Dataset, OuladReport]) -> None:
    ds, report = real
    assert ds.sizes["students"] == report.students == 28_785
    assert ds.sizes["lectures"] == report.presentations == 22
    assert report.registrations == 32_593
    assert report.student_info_rows == 32_593
    assert report.submissions == 173_912
    assert report.events == {
        "complete": 12_361 + 3_024,
        "drop": 10_072 + 93,
        "enrol": 32_593,
        "progress": 173_912,
    }
    assert report.final_results == {"Distinction": 3_024, "Fail": 7_052, "Pass": 12_361, "Withdrawn": 10_156}
    assert report.blank_imd_band_rows == 1_111
    assert report.imd_band_without_percent_rows == 3_516
    assert report.question_mark_scores == 173
    assert report.unregistrations == 10_072
    assert report.blank_date_registration == 45
    assert report.banked_submissions == 1_909
    assert report.fail_with_unregistration == 9
    assert report.withdrawn_without_unregistration == 93
    assert report.passed_with_unregistration == 0
    assert report.assessments_without_date == 11
    assert report.registrations_without_student_info == report.submissions_without_registration == 0


def test_real_oulad_funnel_is_ordered(real: tuple[Dataset, OuladReport]) -> None:
    ds, _ = real
    ev = _as_text(ds.events.to_pandas())
    assert ev["occurred_at"].is_monotonic_increasing
    pairs = ev.groupby(["student_id", "lecture_id"], sort=False)["type"]
    assert set(pairs.first()) == {"enrol"}
    last = pairs.last()
    assert (last == "complete").sum() == 15_385 and (last == "drop").sum() == 10_165
    progress = ev[ev["type"] == "progress"].groupby(["student_id", "lecture_id"], sort=False)["progress"]
    assert (progress.diff().dropna() >= 0).all()
    assert ds.students["region"].nunique() == 13
    assert set(ds.students["region"]) >= {"east_anglian", "scotland", "london", "wales", "ireland"}


def test_real_oulad_presentation_dates(real: tuple[Dataset, OuladReport]) -> None:
    ds, _ = real
    events = _as_text(ds.events.to_pandas())
    ev = events.set_index("event_id")
    # studentRegistration.csv: AAA 2013J 11391 registered on day -159
    assert ev.loc["oulad-enrol-AAA-2013J-11391", "occurred_at"] == at("2013-10-01") - pd.Timedelta(days=159)
    # BBB 2014B starts on 1 February 2014
    bbb = events[(events["lecture_id"] == "BBB-2014B") & (events["type"] == "complete")]
    assert set(bbb["occurred_at"].dt.normalize()) >= {at("2014-02-01") + pd.Timedelta(days=234)}
