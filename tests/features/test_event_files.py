"""The plain event-file loader on CSV and Parquet files, its documented defaults and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import event_files
from features.errors import DatasetNotFoundError, SchemaError
from features.event_files import load_event_files
from features.schemas import GRADES

EVENTS_CSV = """student_id,lecture_id,type,occurred_at,progress
s1,l1,enrol,2025-03-01T09:00:00+09:00,
s1,l1,progress,2025-03-02 10:00,0.4
s2,l2,enrol,2025-03-02T00:00:00Z,
s2,l2,complete,2025-03-03T00:00:00Z,
"""

LECTURES_CSV = """\
lecture_id,title,provider,subject,grades,level,series_id,series_position,duration_min,regions,active
l1,수학 기초 1강,EBS,수학,h1|h2,1,math,1,45,seoul|*,true
l2,영어 독해,메가스터디,영어,"[""m1"", ""m2""]",2,eng,2,30.5,*,FALSE
l3,한국사,EBS,한국사,oos,3,hist,1,50,*,yes
"""

STUDENTS_CSV = """student_id,region,grade,interest_subjects,target_exam
s1,seoul,h1,수학|영어,수능
s2,taebaek,m2,,
"""


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def error(fn: object, *args: object) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


def test_csv_events_only_with_documented_defaults(tmp_path: Path) -> None:
    ds = load_event_files(write(tmp_path / "events.csv", EVENTS_CSV))
    ev = ds.events.to_pandas()
    assert ds.sizes == {"students": 2, "lectures": 2, "events": 4}
    # "+09:00" converted to UTC; a timestamp without zone is read as UTC
    assert ev["occurred_at"].tolist()[0] == pd.Timestamp("2025-03-01T00:00:00Z")
    assert pd.Timestamp("2025-03-02T10:00:00Z") in ev["occurred_at"].tolist()
    # blank progress: 1.0 for complete, 0.0 otherwise
    by_type = dict(zip(ev["type"], ev["progress"], strict=True))
    assert (
        by_type["complete"] == 1.0 and by_type["enrol"] == 0.0 and by_type["progress"] == pytest.approx(0.4)
    )
    assert ev["event_id"].str.fullmatch(r"ev-[0-9a-f]{16}").all() and ev["event_id"].is_unique
    # derived tables
    assert ds.students["region"].tolist() == ["unknown", "unknown"]
    assert ds.students["grade"].tolist() == ["adult", "adult"]
    lec = ds.lectures.set_index("lecture_id")
    assert lec.loc["l1", "title"] == "l1" and lec.loc["l1", "provider"] == "unknown"
    assert lec.loc["l1", "grades"] == list(GRADES) and lec.loc["l1", "regions"] == ["*"]
    assert lec.loc["l2", "series_id"] == "l2" and lec.loc["l2", "series_position"] == 1
    assert ds.manifest["derived"] == {"students": True, "lectures": True}
    assert ds.manifest["defaults"] == {
        "event_ids_generated": 4,
        "progress_defaulted": 3,
        "timestamps_read_as_utc": 1,
    }


def test_generated_ids_are_the_same_on_every_load(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV)
    assert (
        load_event_files(path).events["event_id"].to_pylist()
        == load_event_files(path).events["event_id"].to_pylist()
    )


def test_csv_with_students_and_lectures_files(tmp_path: Path) -> None:
    ds = load_event_files(
        write(tmp_path / "events.csv", EVENTS_CSV),
        write(tmp_path / "students.csv", STUDENTS_CSV),
        write(tmp_path / "lectures.csv", LECTURES_CSV),
    )
    lec = ds.lectures.set_index("lecture_id")
    assert lec.loc["l1", "grades"] == ["h1", "h2"] and lec.loc["l1", "regions"] == ["seoul", "*"]
    assert lec.loc["l2", "grades"] == ["m1", "m2"] and not lec.loc["l2", "active"]
    assert lec.loc["l3", "grades"] == ["oos"] and lec.loc["l3", "active"] and lec.loc["l3", "level"] == 3
    assert lec.loc["l2", "title"] == "영어 독해" and lec.loc["l2", "duration_min"] == pytest.approx(30.5)
    assert ds.students.set_index("student_id").loc["s1", "interest_subjects"] == ["수학", "영어"]
    assert ds.manifest["derived"] == {"students": False, "lectures": False}


def test_blank_list_cell_in_a_required_list_column_is_an_error(tmp_path: Path) -> None:
    err = error(
        load_event_files,
        write(tmp_path / "events.csv", EVENTS_CSV),
        None,
        write(tmp_path / "lectures.csv", LECTURES_CSV.replace(",oos,3,hist", ",,3,hist")),
    )
    assert err.column == "grades" and err.rows == [3]
    assert str(err).startswith(f"{tmp_path / 'lectures.csv'}: row 3, column 'grades'")


def test_derived_students_take_the_grade_of_their_lectures(tmp_path: Path) -> None:
    ds = load_event_files(
        write(tmp_path / "events.csv", EVENTS_CSV), None, write(tmp_path / "lectures.csv", LECTURES_CSV)
    )
    grades = ds.students.set_index("student_id")["grade"]
    assert grades["s1"] == "h1"  # l1 suits h1|h2: ties go to school order
    assert grades["s2"] == "m1"


def test_parquet_events_with_integer_ids_and_naive_timestamps(tmp_path: Path) -> None:
    table = pa.table(
        {
            "event_id": pa.array(["a", "b"]),
            "student_id": pa.array([101, 102], pa.int64()),
            "lecture_id": pa.array(["l1", "l1"]),
            "type": pa.array(["enrol", "complete"]),
            "occurred_at": pa.array(
                pd.to_datetime(["2025-03-01 09:00", "2025-03-02 09:00"]).to_numpy(), pa.timestamp("ms")
            ),
            "progress": pa.array([None, None], pa.float64()),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    ds = load_event_files(tmp_path / "events.parquet")
    ev = ds.events.to_pandas()
    assert ev["student_id"].tolist() == ["101", "102"]
    assert ev["occurred_at"].tolist()[0] == pd.Timestamp("2025-03-01T09:00:00Z")
    assert ev["progress"].tolist() == [0.0, 1.0]
    assert ds.manifest["defaults"]["timestamps_read_as_utc"] == 2


def test_parquet_text_in_a_number_column_is_an_error(tmp_path: Path) -> None:
    table = pa.table(
        {
            "student_id": ["s1", "s1"],
            "lecture_id": ["l1", "l1"],
            "type": ["enrol", "progress"],
            "occurred_at": ["2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z"],
            "progress": ["0", "half"],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    err = error(load_event_files, tmp_path / "events.parquet")
    assert err.column == "progress" and err.rows[0] == 1
    assert "expected a number, got text '0'" in str(err)


def test_unparseable_timestamp_names_file_row_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV.replace("2025-03-02T00:00:00Z", "02/03/2025 at noon"))
    err = error(load_event_files, path)
    assert str(err).startswith(f"{path}: row 3, column 'occurred_at': cannot read '02/03/2025 at noon'")


def test_bad_progress_text_names_row(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV.replace(",0.4", ",40%"))
    err = error(load_event_files, path)
    assert str(err) == f"{path}: row 2, column 'progress': expected a number, got '40%'"


def test_progress_out_of_range_names_row(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV.replace(",0.4", ",40"))
    err = error(load_event_files, path)
    assert str(err).startswith(f"{path}: row 2, column 'progress': progress 40 is outside 0..1")


def test_malformed_csv_row_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV.replace("s2,l2,enrol,", "s2,l2,enrol,extra,"))
    err = error(load_event_files, path)
    assert err.rows == [3]
    assert "malformed CSV row" in str(err) and str(path) in str(err)


def test_csv_that_is_not_utf8_is_named_with_its_row(tmp_path: Path) -> None:
    text = (
        "student_id,lecture_id,type,occurred_at\n"
        + "s1,l1,enrol,2025-03-01\n" * 3
        + "학생,l1,enrol,2025-03-01\n"
    )
    path = write(tmp_path / "events.csv", text, encoding="cp949")
    err = error(load_event_files, path)
    assert err.rows == [4]
    assert "not UTF-8" in str(err) and "CSV UTF-8" in str(err)


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "student_id,lecture_id,occurred_at\ns1,l1,2025-03-01\n")
    err = error(load_event_files, path)
    assert err.column == "type" and "required column 'type' is missing" in str(err)


def test_blank_required_cell_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV.replace("s2,l2,complete", ",l2,complete"))
    err = error(load_event_files, path)
    assert str(err).startswith(f"{path}: row 4, column 'student_id': missing student_id")


def test_event_of_unknown_student_names_row(tmp_path: Path) -> None:
    students = "student_id,region,grade\ns1,seoul,h1\n"
    err = error(
        load_event_files,
        write(tmp_path / "events.csv", EVENTS_CSV),
        write(tmp_path / "students.csv", students),
    )
    assert err.column == "student_id" and err.rows == [3, 4]
    assert "unknown student_id 's2'" in str(err)


def test_bad_lecture_level_text_names_row(tmp_path: Path) -> None:
    lectures = "lecture_id,title,provider,subject,level\nl1,a,b,c,1\nl2,a,b,c,1급\n"
    err = error(
        load_event_files,
        write(tmp_path / "events.csv", EVENTS_CSV),
        None,
        write(tmp_path / "lectures.csv", lectures),
    )
    assert (
        str(err) == f"{tmp_path / 'lectures.csv'}: row 2, column 'level': expected a whole number, got '1급'"
    )


def test_bad_active_flag_names_row(tmp_path: Path) -> None:
    lectures = "lecture_id,title,provider,subject,active\nl1,a,b,c,true\nl2,a,b,c,maybe\n"
    err = error(
        load_event_files,
        write(tmp_path / "events.csv", EVENTS_CSV),
        None,
        write(tmp_path / "lectures.csv", lectures),
    )
    assert err.column == "active" and err.rows == [2]


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"events file .*nope.csv does not exist"):
        load_event_files(tmp_path / "nope.csv")


def test_unsupported_file_type(tmp_path: Path) -> None:
    err = error(load_event_files, write(tmp_path / "events.xlsx", "x"))
    assert "use .csv (UTF-8) or .parquet" in str(err)


def test_empty_csv(tmp_path: Path) -> None:
    err = error(load_event_files, write(tmp_path / "events.csv", ""))
    assert "the file is empty" in str(err)


# ----------------------------------------------------------------------------------------------------------
# the streaming Arrow reader (issue 14): blocks, compression, times, derived grades


def test_rows_are_numbered_across_blocks_and_ids_do_not_depend_on_the_block_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = "".join(
        f"s{i % 7},l{i % 5},enrol,2025-03-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z,\n" for i in range(400)
    )
    path = write(tmp_path / "events.csv", "student_id,lecture_id,type,occurred_at,progress\n" + rows)
    whole = load_event_files(path)
    monkeypatch.setattr(event_files, "_CSV_BLOCK_BYTES", 512)  # about 12 rows a block
    assert len(list(event_files._csv_batches(path)[1])) > 10
    blocks = load_event_files(path)
    assert blocks.fingerprint() == whole.fingerprint()  # generated ids hash the row number across blocks
    lines = rows.splitlines(keepends=True)
    lines[300] = "s4,l0,enrol,sometime,\n"
    bad = write(tmp_path / "bad.csv", "student_id,lecture_id,type,occurred_at,progress\n" + "".join(lines))
    err = error(load_event_files, bad)
    assert err.column == "occurred_at" and err.rows == [301] and "'sometime'" in str(err)
    short = write(
        tmp_path / "short.csv", "student_id,lecture_id,type,occurred_at,progress\n" + rows + "s9,l1\n"
    )
    err = error(load_event_files, short)
    assert err.rows == [401] and "malformed CSV row (2 cells, the header has 5)" in str(err)


def test_a_parquet_file_of_many_row_groups_names_the_row_of_a_bad_time(tmp_path: Path) -> None:
    times = [f"2025-03-01T00:00:{i % 60:02d}Z" for i in range(50)]
    times[37] = "not a time"
    table = pa.table(
        {"student_id": ["s1"] * 50, "lecture_id": ["l1"] * 50, "type": ["enrol"] * 50, "occurred_at": times}
    )
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=8)
    err = error(load_event_files, tmp_path / "events.parquet")
    assert err.column == "occurred_at" and err.rows == [38]


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip", ".csv.zst"])
def test_compressed_csv_reads_as_the_plain_file(tmp_path: Path, suffix: str) -> None:
    import bz2
    import gzip
    import lzma
    import zipfile

    raw = EVENTS_CSV.encode()
    path = tmp_path / f"events{suffix}"
    if suffix == ".csv.zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("events.csv", raw)
    elif suffix == ".csv.zst":
        with pa.output_stream(str(path), compression="zstd") as out:
            out.write(raw)
    else:
        path.write_bytes({".csv.gz": gzip, ".csv.bz2": bz2, ".csv.xz": lzma}[suffix].compress(raw))
    plain = load_event_files(write(tmp_path / "events.csv", EVENTS_CSV))
    assert load_event_files(path).fingerprint() == plain.fingerprint()


def test_iso_forms_are_read_as_the_same_instants(tmp_path: Path) -> None:
    forms = {
        "2025-03-01T09:00:00+09:00": "2025-03-01T00:00:00Z",
        "2025-03-01T00:00:00.1234567Z": "2025-03-01T00:00:00.123456Z",  # past microseconds: cut
        "20250301T090000+0900": "2025-03-01T00:00:00Z",  # basic format
        "20250301T0900Z": "2025-03-01T09:00:00Z",
        "2025-03-01T00:00:00,5Z": "2025-03-01T00:00:00.5Z",  # decimal comma
        "2025-03-01T09:00:00 +09:00": "2025-03-01T00:00:00Z",  # a space before the zone
        "2025-03-01": "2025-03-01T00:00:00Z",  # a date alone has no zone: read as UTC
        "2025-03-01 00:00": "2025-03-01T00:00:00Z",
    }
    rows = "".join(f's1,l1,enrol,"{text}",\n' for text in forms)
    ds = load_event_files(
        write(tmp_path / "events.csv", "student_id,lecture_id,type,occurred_at,progress\n" + rows)
    )
    got = sorted(ds.events.column("occurred_at").to_pylist())
    assert got == sorted(pd.Timestamp(v).to_pydatetime() for v in forms.values())
    assert ds.manifest["defaults"]["timestamps_read_as_utc"] == 2


@pytest.mark.parametrize("cell", ["nan", "0x1", "1,5", "half"])
def test_progress_text_that_is_not_a_number_names_its_row(tmp_path: Path, cell: str) -> None:
    path = write(tmp_path / "events.csv", EVENTS_CSV.replace(",0.4", f',"{cell}"'))
    err = error(load_event_files, path)
    assert err.column == "progress" and err.rows == [2] and f"got {cell!r}" in str(err)


def test_a_header_name_twice_and_a_file_of_only_a_byte_order_mark(tmp_path: Path) -> None:
    dupe = write(
        tmp_path / "dupe.csv", "student_id,lecture_id,type,occurred_at,type\ns1,l1,enrol,2025-03-01,enrol\n"
    )
    err = error(load_event_files, dupe)
    assert err.column == "type" and "appears more than once" in str(err)
    err = error(load_event_files, write(tmp_path / "bom.csv", "\ufeff"))
    assert "the file is empty" in str(err)


def test_integer_request_ids_in_parquet_become_their_digits(tmp_path: Path) -> None:
    table = pa.table(
        {
            "event_id": ["a", "b"],
            "student_id": ["s1", "s2"],
            "lecture_id": ["l1", "l1"],
            "type": ["enrol", "complete"],
            "occurred_at": pa.array(["2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z"]),
            "request_id": pa.array([17, None], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    assert load_event_files(tmp_path / "events.parquet").events.column("request_id").to_pylist() == [
        "17",
        None,
    ]


def test_derived_grades_are_the_most_common_grade_among_a_students_restricted_lectures(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    lectures = pd.DataFrame(
        {
            "lecture_id": [f"l{i}" for i in range(30)],
            "title": "t",
            "provider": "p",
            "subject": "s",
            "grades": [
                "|".join(rng.choice(GRADES, size=rng.integers(1, 4), replace=False))
                if i % 3
                else "|".join(GRADES)
                for i in range(30)
            ],
        }
    )
    events = pd.DataFrame(
        {
            "student_id": [f"s{i}" for i in rng.integers(0, 60, 900)],
            "lecture_id": [f"l{i}" for i in rng.integers(0, 30, 900)],
            "type": "enrol",
            "occurred_at": "2025-03-01T00:00:00Z",
        }
    )
    lectures.to_csv(tmp_path / "lectures.csv", index=False)
    events.to_csv(tmp_path / "events.csv", index=False)
    ds = load_event_files(tmp_path / "events.csv", None, tmp_path / "lectures.csv")
    # the rule, counted plainly: each (student, lecture) pair once, restricted lectures only
    suits = {
        r.lecture_id: r.grades.split("|")
        for r in lectures.itertuples()
        if r.grades.count("|") < len(GRADES) - 1
    }
    expected = {}
    for student, group in events.drop_duplicates(["student_id", "lecture_id"]).groupby("student_id"):
        counts = dict.fromkeys(GRADES, 0)
        for lecture in group["lecture_id"]:
            for g in suits.get(lecture, []):
                counts[g] += 1
        best = max(GRADES, key=lambda g: (counts[g], -GRADES.index(g)))
        expected[student] = best if counts[best] else "adult"
    assert dict(zip(ds.students["student_id"], ds.students["grade"], strict=True)) == expected
    assert ds.students["student_id"].tolist() == sorted(expected)


@pytest.mark.parametrize("with_ids", [True, False])
def test_events_are_checked_on_arrow_never_through_the_pandas_validator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_ids: bool
) -> None:
    """The import of a file in the documented forms never falls back to `validate_events` (a pandas frame
    of every event): its columns are converted block by block into the types the Arrow check reads."""
    import features.validation

    text = EVENTS_CSV if not with_ids else EVENTS_CSV.replace("student_id,", "event_id,student_id,", 1)
    if with_ids:
        lines = text.splitlines()
        text = "\n".join([lines[0], *(f"e{i},{line}" for i, line in enumerate(lines[1:]))]) + "\n"
    path = write(tmp_path / "events.csv", text)
    expected = load_event_files(path).fingerprint()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the events went through the pandas validator")

    monkeypatch.setattr(features.validation, "validate_events", refuse)
    assert load_event_files(path).fingerprint() == expected


@pytest.mark.parametrize(
    "text",
    [
        "student_id,lecture_id,type,occurred_at\rs1,l1,enrol,2025-03-01T00:00:00Z\r",  # CR alone ends lines
        "\n\nstudent_id,lecture_id,type,occurred_at\ns1,l1,enrol,2025-03-01T00:00:00Z\n",  # blank lines first
        "student_id,lecture_id,type,occurred_at\ns1,l1,enrol,2025-03-01T00:00:00Z\n \n\t\n",  # blank lines
        "student_id,lecture_id,type,occurred_at,,\ns1,l1,enrol,2025-03-01T00:00:00Z,,\n",  # unnamed columns
    ],
)
def test_line_endings_blank_lines_and_unnamed_columns_read_as_the_plain_file(
    tmp_path: Path, text: str
) -> None:
    plain = "student_id,lecture_id,type,occurred_at\ns1,l1,enrol,2025-03-01T00:00:00Z\n"
    expected = load_event_files(write(tmp_path / "plain.csv", plain)).fingerprint()
    assert load_event_files(write(tmp_path / "events.csv", text)).fingerprint() == expected


def test_a_header_alone_without_a_line_break_is_an_empty_dataset(tmp_path: Path) -> None:
    ds = load_event_files(write(tmp_path / "events.csv", "student_id,lecture_id,type,occurred_at"))
    assert ds.sizes["events"] == 0


def test_types_that_are_not_text_in_parquet_are_named(tmp_path: Path) -> None:
    table = pa.table(
        {
            "student_id": ["s1", "s2"],
            "lecture_id": ["l1", "l1"],
            "type": pa.array([1, 2], pa.int64()),
            "occurred_at": ["2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z"],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    err = error(load_event_files, tmp_path / "events.parquet")
    assert err.column == "type" and "expected text, got int 1" in str(err)


def test_nanoseconds_before_1970_are_rounded_down_like_every_other_time(tmp_path: Path) -> None:
    table = pa.table(
        {
            "student_id": ["s1", "s2"],
            "lecture_id": ["l1", "l1"],
            "type": ["enrol", "enrol"],
            "occurred_at": pa.array([-1500, 2500], pa.timestamp("ns", tz="UTC")),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    micros = load_event_files(tmp_path / "events.parquet").events.column("occurred_at").cast(pa.int64())
    assert sorted(micros.to_pylist()) == [-2, 2]  # floor, not toward zero
