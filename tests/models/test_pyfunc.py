"""The MLflow pyfunc of a trained model: loads in a fresh process, answers, never repeats a taken lecture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.settings import Settings
from features.tables import read_dataset
from models.pyfunc import LearnrecRecommender
from tests.training import modelling_data
from training.cli import app
from training.splits import temporal

FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model(sys.argv[1])
    out = model.predict(pd.DataFrame({
        "student_id": ["s000", "s001", "newcomer"],
        "k": [5, 3, 4],
        "region": [None, None, "taebaek"],
        "grade": [None, None, "h2"],
    }))
    import models
    answer = {"rows": out.to_dict(orient="records"), "models_file": models.__file__}
    print(json.dumps(answer, ensure_ascii=False))
    """
)


@dataclass
class Trained:
    settings: Settings
    history: dict[str, set[str]]  # training lectures per student


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    with modelling_data.mlflow_store(tmp_path_factory.mktemp("pyfunc")) as settings:
        directory = modelling_data.write(settings.datasets_dir / "synthetic")
        result = CliRunner().invoke(app, ["train", "-m", "sequence", "--register"])
        assert result.exit_code == 0, result.output
        split = temporal(read_dataset(directory))
        history: dict[str, set[str]] = {}
        for sid, lid in zip(split.train.events["student_id"], split.train.events["lecture_id"], strict=True):
            history.setdefault(str(sid), set()).add(str(lid))
        yield Trained(settings, history)


@pytest.mark.slow
def test_pyfunc_loads_and_answers_in_a_fresh_process(trained: Trained, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LEARNREC_"))}
    env["MLFLOW_TRACKING_URI"] = trained.settings.tracking_uri()
    uri = f"models:/{trained.settings.mlflow.registered_model}@champion"
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FRESH_PROCESS, uri],
        cwd=tmp_path,  # not the project: `models` must come with the logged model
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/models/" in answer["models_file"]
    frame = pd.DataFrame(answer["rows"])
    per_student = frame.groupby("student_id")["lecture_id"].apply(list).to_dict()
    assert (
        len(per_student["s000"]) == 5 and len(per_student["s001"]) == 3 and len(per_student["newcomer"]) == 4
    )
    for sid in ("s000", "s001"):
        assert not set(per_student[sid]) & trained.history[sid], "a lecture taken in training came back"
        ranks = frame.loc[frame["student_id"] == sid, "rank"].tolist()
        assert ranks == list(range(1, len(ranks) + 1))
    assert all("강" in title for title in frame["title"])
    # a newcomer from a region the model never saw is only offered lectures licensed everywhere
    assert "SEOUL-1" not in per_student["newcomer"]


@pytest.fixture(scope="module")
def wrapper(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> LearnrecRecommender:
    mlflow.set_tracking_uri(trained.settings.tracking_uri())
    try:
        uri = f"models:/{trained.settings.mlflow.registered_model}@champion"
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path_factory.mktemp("model"))))
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    model = LearnrecRecommender()
    artifacts = local / "artifacts"
    model.setup(
        artifacts / "recommender",
        artifacts / "lectures.parquet",
        artifacts / "students.parquet",
        artifacts / "fallback.json",
    )
    return model


def test_predict_columns_ranks_and_default_k(wrapper: LearnrecRecommender, trained: Trained) -> None:
    out = wrapper.predict(None, pd.DataFrame({"student_id": ["s002"]}))
    assert list(out.columns) == ["student_id", "rank", "lecture_id", "title", "score", "reason"]
    assert out["rank"].tolist() == list(range(1, 11))  # default k = 10
    # the served list: at most two series slots first, then the model's order
    slots = out["reason"].tolist().index("similar_students")
    assert slots <= 2 and set(out["reason"][:slots]) <= {"next_in_series"}
    assert out["score"][slots:].is_monotonic_decreasing
    assert not set(out["lecture_id"]) & trained.history["s002"]
    three = wrapper.predict(None, pd.DataFrame({"student_id": ["s002"]}), params={"k": 3})
    assert three["lecture_id"].tolist() == out["lecture_id"].tolist()[:3]


def test_profile_of_unknown_student_changes_the_answer(wrapper: LearnrecRecommender) -> None:
    seoul = wrapper.predict(
        None, pd.DataFrame({"student_id": ["x"], "region": ["seoul"], "grade": ["h1"], "k": [23]})
    )
    nowhere = wrapper.predict(None, pd.DataFrame({"student_id": ["x"], "k": [23]}))
    assert "SEOUL-1" in set(seoul["lecture_id"])  # licensed in seoul only
    assert "SEOUL-1" not in set(nowhere["lecture_id"])


def test_bad_input_is_refused(wrapper: LearnrecRecommender) -> None:
    with pytest.raises(ValueError, match="'student_id' column"):
        wrapper.predict(None, pd.DataFrame({"id": ["s000"]}))
    with pytest.raises(ValueError, match="k must be between 1 and 500"):
        wrapper.predict(None, pd.DataFrame({"student_id": ["s000"], "k": [0]}))
    empty = wrapper.predict(None, pd.DataFrame({"student_id": pd.Series([], dtype=str)}))
    assert empty.empty and list(empty.columns) == [
        "student_id", "rank", "lecture_id", "title", "score", "reason"
    ]  # fmt: skip
