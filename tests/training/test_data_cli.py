"""`learnrec data ...` through the real Typer app: summaries, datasets on disk, exit code 2 on bad data."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.settings import get_settings
from features.tables import read_dataset
from training.cli import app

REAL_OULAD = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "oulad"

EVENTS_CSV = """student_id,lecture_id,type,occurred_at,progress
s1,l1,enrol,2025-03-01T09:00:00+09:00,
s1,l1,progress,2025-03-02T10:00:00Z,0.4
s2,l2,complete,2025-03-03T00:00:00Z,
"""
LECTURES_CSV = """lecture_id,title,provider,subject,grades
l1,수학 기초,EBS,수학,h1|h2
l2,영어 독해,메가스터디,영어,m1
"""

runner = CliRunner()


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LEARNREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path / "data"
    get_settings.cache_clear()


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_import_writes_a_dataset_and_prints_a_summary(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(EVENTS_CSV, encoding="utf-8")
    (tmp_path / "lectures.csv").write_text(LECTURES_CSV, encoding="utf-8")
    out = tmp_path / "imported"
    args = ["--events", str(tmp_path / "events.csv"), "--lectures", str(tmp_path / "lectures.csv")]
    result = runner.invoke(app, ["data", "import", *args, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}: 2 students, 2 lectures, 3 events" in result.stdout
    assert "derived from events: students" in result.stdout
    ds = read_dataset(out)
    assert ds.lectures.set_index("lecture_id").loc["l1", "title"] == "수학 기초"

    result = runner.invoke(app, ["data", "validate", str(out)])
    assert result.exit_code == 0, result.stderr
    assert f"valid {out}: 2 students, 2 lectures, 3 events" in result.stdout
    assert ds.manifest["fingerprint"][:12] in result.stdout


def test_import_of_a_broken_file_exits_2_with_one_line_naming_file_row_and_column(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        EVENTS_CSV.replace("s1,l1,progress,2025-03-02T10:00:00Z", "s1,l1,progress,soon"), encoding="utf-8"
    )
    result = runner.invoke(app, ["data", "import", "--events", str(events), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    _no_traceback(result.stderr)
    assert f"error: {events}: row 2, column 'occurred_at': cannot read 'soon'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_failed_import_keeps_the_existing_dataset(tmp_path: Path) -> None:
    good, bad, out = tmp_path / "good.csv", tmp_path / "bad.csv", tmp_path / "out"
    good.write_text(EVENTS_CSV, encoding="utf-8")
    bad.write_text(EVENTS_CSV.replace("complete", "finish"), encoding="utf-8")
    assert runner.invoke(app, ["data", "import", "--events", str(good), "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["data", "import", "--events", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "row 3, column 'type': unknown type 'finish'" in result.stderr
    assert read_dataset(out).sizes["events"] == 3


def test_validate_missing_directory_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    _no_traceback(result.stderr)
    assert "nothing does not exist" in result.stderr


def test_validate_a_dataset_with_a_broken_row_exits_2(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(EVENTS_CSV, encoding="utf-8")
    out = tmp_path / "ds"
    assert (
        runner.invoke(
            app, ["data", "import", "--events", str(tmp_path / "events.csv"), "--out", str(out)]
        ).exit_code
        == 0
    )
    table = pq.read_table(out / "events.parquet")
    progress = table.column("progress").to_pylist()
    progress[1] = 7.0
    table = table.set_column(
        table.schema.get_field_index("progress"), "progress", pa.array(progress, pa.float32())
    )
    pq.write_table(table, out / "events.parquet")
    result = runner.invoke(app, ["data", "validate", str(out)])
    assert result.exit_code == 2
    _no_traceback(result.stderr)
    assert f"{out / 'events.parquet'}: row 2, column 'progress': progress 7 is outside 0..1" in result.stderr


def test_validate_warns_when_tables_changed_after_writing(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(EVENTS_CSV, encoding="utf-8")
    out = tmp_path / "ds"
    assert (
        runner.invoke(
            app, ["data", "import", "--events", str(tmp_path / "events.csv"), "--out", str(out)]
        ).exit_code
        == 0
    )
    table = pq.read_table(out / "events.parquet")
    pq.write_table(table.slice(0, 2), out / "events.parquet")
    result = runner.invoke(app, ["data", "validate", str(out)])
    assert result.exit_code == 0
    assert "fingerprint differs from manifest.json" in result.stderr


def test_validate_does_not_compare_a_fingerprint_of_an_earlier_rule(tmp_path: Path) -> None:
    import json

    (tmp_path / "events.csv").write_text(EVENTS_CSV, encoding="utf-8")
    out = tmp_path / "ds"
    imported = runner.invoke(
        app, ["data", "import", "--events", str(tmp_path / "events.csv"), "--out", str(out)]
    )
    assert imported.exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["fingerprint_version"] == "learnrec-fingerprint/2"
    # as written before the rule had a version: another digest of the same tables
    del manifest["fingerprint_version"]
    manifest["fingerprint"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = runner.invoke(app, ["data", "validate", str(out)])
    assert result.exit_code == 0
    assert "differs" not in result.stderr
    assert (
        "earlier rule (learnrec-fingerprint/1)" in result.stderr
        and "not a change of the tables" in result.stderr
    )


def test_oulad_command_writes_under_the_data_dir(data_dir: Path) -> None:
    if not (REAL_OULAD / "studentInfo.csv").is_file():
        pytest.skip(f"OULAD not found at {REAL_OULAD}")
    result = runner.invoke(app, ["data", "oulad", "--source", str(REAL_OULAD)])
    assert result.exit_code == 0, result.stderr
    out = data_dir / "datasets" / "oulad"
    assert f"wrote {out}: 28,785 students, 22 lectures, 232,055 events" in result.stdout
    assert "blank imd_band rows (-> null): 1,111" in result.stdout
    assert "CC BY 4.0" in result.stdout
    assert read_dataset(out, validate=False).manifest["doi"] == "10.1038/sdata.2017.171"


def test_oulad_with_a_missing_source_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "oulad", "--source", str(tmp_path / "none")])
    assert result.exit_code == 2
    _no_traceback(result.stderr)
    assert "OULAD directory" in result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("features.synth") is None, reason="features.synth not written yet"
)
def test_synth_writes_a_valid_dataset(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    result = runner.invoke(
        app, ["data", "synth", "--students", "60", "--lectures", "30", "--seed", "7", "--out", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    ds = read_dataset(out)
    assert ds.sizes["students"] > 0 and ds.sizes["lectures"] > 0 and ds.sizes["events"] > 0
