"""A tiny seeded dataset (3 regions, 4 series, Korean titles) and a throw-away MLflow store for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.settings import Settings, get_settings
from features.tables import Dataset, write_dataset

SERIES: dict[str, tuple[str, str, int]] = {
    # series: (subject, title stem, episodes)
    "MATH": ("수학", "수학 개념 완성", 6),
    "ENG": ("영어", "영어 독해 기본", 6),
    "SCI": ("과학", "통합과학 핵심", 5),
    "KOR": ("국어", "국어 문학 읽기", 5),
}
REGIONS: tuple[tuple[str, int], ...] = (("seoul", 36), ("gimpo", 14), ("taebaek", 10))
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def lectures() -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for series, (subject, stem, episodes) in SERIES.items():
        for ep in range(1, episodes + 1):
            rows.append(
                {
                    "lecture_id": f"{series}-{ep}",
                    "title": f"{stem} {ep}강",
                    "provider": "EBS",
                    "subject": subject,
                    "grades": ["h1", "h2", "h3"],
                    "level": 1 + (ep - 1) // 3,
                    "series_id": series,
                    "series_position": ep,
                    "duration_min": 40.0,
                    "regions": ["*"],
                    "active": True,
                }
            )
    rows.append(
        {
            "lecture_id": "SEOUL-1", "title": "서울 진로 특강", "provider": "서울시", "subject": "사회",
            "grades": ["h1", "h2", "h3"], "level": 1, "series_id": "SEOUL", "series_position": 1,
            "duration_min": 30.0, "regions": ["seoul"], "active": True,
        }
    )  # fmt: skip
    return pd.DataFrame(rows)


def dataset(seed: int = 7) -> Dataset:
    """60 students who follow one or two series in order, spread over 60 days."""
    rng = np.random.default_rng(seed)
    subjects = list(SERIES)
    students: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    i = 0
    for region, count in REGIONS:
        for _ in range(count):
            sid = f"s{i:03d}"
            first = subjects[i % 4]
            students.append(
                {
                    "student_id": sid, "region": region, "grade": ("h1", "h2")[i % 2],
                    "school_level": "high", "target_exam": "수능",
                    "interest_subjects": [SERIES[first][0]],
                }
            )  # fmt: skip
            taken = [f"{first}-{ep}" for ep in range(1, int(rng.integers(2, SERIES[first][2] + 1)) + 1)]
            if rng.random() < 0.5:
                second = subjects[(i + 1) % 4]
                taken += [f"{second}-{ep}" for ep in range(1, int(rng.integers(1, 4)) + 1)]
            if region == "seoul" and rng.random() < 0.3:
                taken.append("SEOUL-1")
            t = T0 + timedelta(days=float(rng.uniform(0, 20)))
            for lid in taken:
                events.append(
                    {"student_id": sid, "lecture_id": lid, "type": "enrol", "progress": 0.0, "occurred_at": t}
                )
                if rng.random() < 0.7:
                    events.append(
                        {"student_id": sid, "lecture_id": lid, "type": "complete", "progress": 1.0,
                         "occurred_at": t + timedelta(hours=2)}
                    )  # fmt: skip
                t += timedelta(days=float(rng.uniform(0.5, 6)))
            i += 1
    ev = pd.DataFrame(events)
    ev.insert(0, "event_id", [f"e{j:05d}" for j in range(len(ev))])
    ev["occurred_at"] = pd.to_datetime(ev["occurred_at"], utc=True)
    ev["request_id"] = None
    ev["progress"] = ev["progress"].astype("float32")
    return Dataset(pd.DataFrame(students), lectures(), ev, {"source": "tests.training.modelling_data"})


def write(directory: Path, seed: int = 7) -> Path:
    """The dataset written as a dataset directory (validated, with manifest)."""
    return write_dataset(dataset(seed), directory)


@contextmanager
def mlflow_store(root: Path) -> Iterator[Settings]:
    """Settings whose data directory and MLflow SQLite store live under `root` (env restored after).

    mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI into the environment; the global URI is reset
    and the variable restored on exit so other tests see the environment they started with.
    """
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNREC_DATA_DIR", str(root / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("LEARNREC_MLFLOW__TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        get_settings.cache_clear()
        try:
            yield get_settings()
        finally:
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None = back to the environment
            get_settings.cache_clear()
    get_settings.cache_clear()
