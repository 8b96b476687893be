"""Session fixtures of the model tests: the known-answer data and models fitted on it once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from features.matrices import build_training_data
from models import MODELS
from models.base import Recommender, TrainingData
from models.loading import LoadedModel
from models.ranking import RankingModel
from models.sequence import SequenceRecommender
from tests.models.data import TEST_PARAMS, Blocks, sequential_dataset
from tests.service import data


@pytest.fixture(scope="session")
def blocks() -> Blocks:
    return Blocks()


@pytest.fixture(scope="session")
def fitted(blocks: Blocks) -> Callable[[str], Recommender]:
    """Fit each model on the blocks data once per session (seed 7, small test hyper-parameters)."""
    cache: dict[str, Recommender] = {}

    def get(name: str) -> Recommender:
        if name not in cache:
            cache[name] = MODELS[name](seed=7, **TEST_PARAMS[name]).fit(blocks.data)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def sequential() -> TrainingData:
    students, lectures, events = sequential_dataset()
    return build_training_data(students, lectures, events)


def _fallback(events: list[dict[str, Any]]) -> dict[str, Any]:
    region = {s["student_id"]: s["region"] for s in data.students()}
    grade = {s["student_id"]: s["grade"] for s in data.students()}
    overall: Counter[str] = Counter()
    by_region: dict[str, Counter[str]] = {}
    by_rg: dict[str, Counter[str]] = {}
    for e in events:
        sid, lid = e["student_id"], e["lecture_id"]
        overall[lid] += 1
        by_region.setdefault(region[sid], Counter())[lid] += 1
        by_rg.setdefault(f"{region[sid]}|{grade[sid]}", Counter())[lid] += 1
    return {
        "global": [x for x, _ in overall.most_common()],
        "by_region": {r: [x for x, _ in c.most_common()] for r, c in by_region.items()},
        "by_region_grade": {r: [x for x, _ in c.most_common()] for r, c in by_rg.items()},
    }


@pytest.fixture(scope="module")
def ranking() -> RankingModel:
    events = data.events()
    training = build_training_data(
        pd.DataFrame(data.students()), pd.DataFrame(data.lectures()), pd.DataFrame(events)
    )
    loaded = LoadedModel(
        model_name="m", version="1", alias="champion", run_id="r1",
        recommender=SequenceRecommender().fit(training), lectures=data.lectures_table(),
        fallback=_fallback(events),
    )  # fmt: skip
    return RankingModel.prepare(loaded)
