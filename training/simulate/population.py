"""The students who may visit: their profiles, hidden truth and seeded online state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from features.ground_truth import GroundTruth
from features.online_state import OnlineState
from features.profile import StudentProfile
from features.profile import from_table as profile_rows
from training.errors import SimulationError

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class Population:
    """The students who may visit, their hidden truth and their online state before the simulation.

    Attributes:
        dataset_dir: the synthetic dataset.
        student_ids: visitors' ids (dataset order).
        regions: region per student.
        truth_rows: rows of the students in the ground truth.
        profiles: profiles by student id.
        truth: the dataset's ground truth.
        lecture_rows: lecture id -> row in the ground truth.
        state: online state seeded from the dataset's events of these students.
        last_event: the dataset's latest event time.
        history: the dataset's enrol and complete events of these students (``event_id``, ``student_id``,
            ``type``, ``occurred_at``; an Arrow table): the pre-experiment activity CUPED adjusts by.
    """

    dataset_dir: Path
    student_ids: tuple[str, ...]
    regions: tuple[str, ...]
    truth_rows: npt.NDArray[np.int64]
    profiles: dict[str, StudentProfile]
    truth: GroundTruth
    lecture_rows: dict[str, int]
    state: OnlineState
    last_event: datetime | None
    history: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.student_ids)


def load_population(dataset_dir: Path, regions: Sequence[str], recent_len: int = 20) -> Population:
    """The students of `regions` in a synthetic dataset, with their ground truth and seeded online state.

    Args:
        dataset_dir: a dataset written by `learnrec data synth` (it carries ``ground_truth/``).
        regions: region codes.
        recent_len: length of the recent list of the online state.

    Returns:
        The population.

    Raises:
        DatasetNotFoundError: the dataset or its ground truth is missing.
        SimulationError: no student of those regions.
    """
    import pyarrow.compute as pc

    from features.event_table import rows_where
    from features.ids import is_in
    from features.tables import read_dataset

    dataset_dir = Path(dataset_dir)
    truth = GroundTruth.load(dataset_dir)  # first: a dataset without ground truth fails fast
    ds = read_dataset(dataset_dir)
    students = ds.students[ds.students["region"].isin(list(regions))]
    if students.empty:
        known = ", ".join(sorted(ds.students["region"].astype(str).unique()))
        raise SimulationError(
            f"no student of region(s) {', '.join(regions)} in {dataset_dir} (it has {known})"
        )
    ids = tuple(str(s) for s in students["student_id"])
    truth_rows = truth.student_rows(ids)
    lecture_ids = [str(x) for x in ds.lectures["lecture_id"]]
    lecture_rows = dict(zip(lecture_ids, truth.lecture_rows(lecture_ids).tolist(), strict=True))
    profiles = list(profile_rows(students))
    state = OnlineState(recent_len)
    events = rows_where(ds.events, is_in(ds.events["student_id"], set(ids)))  # (Arrow: a region's rows)
    state.seed(events, profiles)
    last = pc.max(ds.events["occurred_at"]).as_py() if len(ds.events) else None
    taken = rows_where(events, is_in(events["type"], {"enrol", "complete"}))
    return Population(
        dataset_dir=dataset_dir,
        student_ids=ids,
        regions=tuple(str(r) for r in students["region"]),
        truth_rows=truth_rows,
        profiles={p.student_id: p for p in profiles},
        truth=truth,
        lecture_rows=lecture_rows,
        state=state,
        last_event=last,
        history=taken.select(["event_id", "student_id", "type", "occurred_at"]),
    )
