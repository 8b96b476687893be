"""Session fixtures of the model tests: the known-answer data and models fitted on it once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from features.matrices import build_training_data
from models import MODELS
from models.base import Recommender, TrainingData
from tests.models.data import TEST_PARAMS, Blocks, sequential_dataset


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
