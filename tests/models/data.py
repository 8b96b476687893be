"""Small known-answer datasets and per-model test configurations for the model tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from features.matrices import build_training_data
from models import MODELS

#: Small, fast hyper-parameters per model (the defaults are sized for real data).
LIGHTFM_TEST = {"no_components": 8, "epochs": 30, "learning_rate": 0.05}
TEST_PARAMS: dict[str, dict[str, Any]] = {
    "popularity": {},
    "segment_popularity": {"shrinkage": 5.0},
    "item_knn": {"neighbours": 20},
    "ease": {"regularisation": 1.0},
    "lightfm": LIGHTFM_TEST,
    "sequence": {},
    "blend": {"component_params": {"lightfm": LIGHTFM_TEST}, "negatives": 5},
}
ALL_MODELS = tuple(MODELS)
#: Models that personalise from a student's own history.
PERSONALISED = ("item_knn", "ease", "lightfm", "sequence", "blend")

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def make_events(
    sequences: dict[str, Sequence[str]], start: datetime = T0, complete: bool = True
) -> pd.DataFrame:
    """Enrol (and complete) events for each student's lectures, one hour apart, in the given order."""
    rows: list[dict[str, Any]] = []
    for k, (student, lectures) in enumerate(sequences.items()):
        t = start + timedelta(minutes=k)
        for lecture in lectures:
            rows.append(
                {
                    "student_id": student,
                    "lecture_id": lecture,
                    "type": "enrol",
                    "progress": 0.0,
                    "occurred_at": t,
                }
            )
            if complete:
                rows.append(
                    {"student_id": student, "lecture_id": lecture, "type": "complete", "progress": 1.0,
                     "occurred_at": t + timedelta(minutes=30)}
                )  # fmt: skip
            t += timedelta(hours=1)
    frame = pd.DataFrame(rows, columns=["student_id", "lecture_id", "type", "progress", "occurred_at"])
    frame.insert(0, "event_id", [f"e{i}" for i in range(len(frame))])
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)
    return frame


def lecture(
    lid: str, series: str, pos: int, subject: str, grades: list[str], regions: list[str], active: bool = True
):
    return {
        "lecture_id": lid, "title": f"강의 {lid}", "provider": "EBS", "subject": subject, "grades": grades,
        "level": 1 + (pos - 1) // 2, "series_id": series, "series_position": pos, "duration_min": 30.0,
        "regions": regions, "active": active,
    }  # fmt: skip


ALL_GRADES = ["m1", "m2", "m3", "h1", "h2", "h3", "oos", "adult"]


class Blocks:
    """Known-answer data: two series-following groups in Seoul, one group in Gimpo.

    Group A (12 students, seoul/h1): a1 x a2 y a3 z a4 a5 — x is licensed only in Gimpo, y suits only m1,
    z is inactive, so none of them may ever be recommended to a Seoul h1 student.
    Group B (8 students, seoul/h1): b1 .. b5.
    Group G (6 students, gimpo/m1): c1 .. c4 (licensed only in Gimpo, middle school), plus x and y.
    Test students: "tA" (a1..a4, withheld a5; group A is the majority, so even popularity finds it) and
    "tB" (b1..b4, withheld b5: only a personalised model finds it).
    """

    def __init__(self) -> None:
        lectures = [lecture(f"a{i}", "A", i, "수학", ALL_GRADES, ["*"]) for i in range(1, 6)]
        lectures += [lecture(f"b{i}", "B", i, "영어", ALL_GRADES, ["*"]) for i in range(1, 6)]
        lectures += [lecture(f"c{i}", "C", i, "국어", ["m1", "m2", "m3"], ["gimpo"]) for i in range(1, 5)]
        lectures += [
            lecture("x", "X", 1, "과학", ALL_GRADES, ["gimpo"]),
            lecture("y", "Y", 1, "과학", ["m1"], ["*"]),
            lecture("z", "Z", 1, "과학", ALL_GRADES, ["*"], active=False),
            lecture("w", "W", 1, "사회", ALL_GRADES, ["seoul", "gimpo"]),
        ]
        self.lectures = pd.DataFrame(lectures)
        seq: dict[str, list[str]] = {}
        students: list[dict[str, Any]] = []

        def add(sid: str, region: str, grade: str, items: list[str], interests: list[str]) -> None:
            seq[sid] = items
            students.append(
                {"student_id": sid, "region": region, "grade": grade,
                 "school_level": "high" if grade[0] == "h" else "middle", "target_exam": "수능",
                 "interest_subjects": interests, "support_category": None, "age_band": None}
            )  # fmt: skip

        for i in range(12):
            add(f"A{i:02d}", "seoul", "h1", ["a1", "x", "a2", "y", "a3", "z", "a4", "a5"], ["수학"])
        for i in range(8):
            add(f"B{i:02d}", "seoul", "h1", ["b1", "b2", "b3", "b4", "b5"], ["영어"])
        for i in range(6):
            add(f"G{i:02d}", "gimpo", "m1", ["c1", "x", "c2", "y", "c3", "c4"], ["국어"])
        add("tA", "seoul", "h1", ["a1", "a2", "a3", "a4"], ["수학"])
        add("tB", "seoul", "h1", ["b1", "b2", "b3", "b4"], ["영어"])
        self.students = pd.DataFrame(students)
        self.events = make_events(seq)
        self.data = build_training_data(self.students, self.lectures, self.events)

    def row(self, student: str) -> int:
        return self.data.students.get(student)

    def lec(self, lecture_id: str) -> int:
        return self.data.catalogue.lectures.get(lecture_id)


def sequential_dataset(
    n_students: int = 300, n_series: int = 12, length: int = 6, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Students who each follow 1-2 series in episode order from a random starting point.

    Popularity cannot tell which episode comes next for a given student; order can.
    """
    rng = np.random.default_rng(seed)
    lectures = pd.DataFrame(
        [lecture(f"s{s}e{e}", f"S{s}", e, ["국어", "수학", "영어"][s % 3], ALL_GRADES, ["*"])
         for s in range(n_series) for e in range(1, length + 1)]
    )  # fmt: skip
    seq: dict[str, list[str]] = {}
    for u in range(n_students):
        items: list[str] = []
        for s in rng.choice(n_series, size=int(rng.integers(1, 3)), replace=False):
            first = int(rng.integers(1, length - 1))
            last = int(rng.integers(first + 2, length + 1))
            items += [f"s{s}e{e}" for e in range(first, last + 1)]
        seq[f"u{u:03d}"] = items
    students = pd.DataFrame(
        {"student_id": list(seq), "region": "seoul", "grade": rng.choice(["h1", "h2"], size=len(seq))}
    )
    return students, lectures, make_events(seq)
