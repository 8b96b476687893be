"""A tiny deterministic catalogue, students and events for the service tests (Korean titles, series)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from features.schemas import LECTURES

SUBJECT_SERIES: dict[str, tuple[str, str, str, int]] = {
    # series_id: (subject, provider, title stem, episodes)
    "MATH-A": ("수학", "EBS", "수학 개념 완성", 5),
    "ENG-B": ("영어", "메가스터디", "영어 독해 기본", 4),
    "SCI-C": ("과학", "EBS", "통합과학 핵심", 4),
    "KOR-D": ("국어", "대성마이맥", "국어 문학 읽기", 3),
}


def lectures() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for series, (subject, provider, stem, episodes) in SUBJECT_SERIES.items():
        for ep in range(1, episodes + 1):
            rows.append(
                {
                    "lecture_id": f"{series}-{ep}",
                    "title": f"{stem} {ep}강",
                    "provider": provider,
                    "subject": subject,
                    "grades": ["h1", "h2", "h3"],
                    "level": 2,
                    "series_id": series,
                    "series_position": ep,
                    "duration_min": 40.0,
                    "regions": ["*"],
                    "active": True,
                }
            )
    rows.append(
        {
            "lecture_id": "SEOUL-ONLY-1", "title": "서울 전용 진로 특강", "provider": "서울시",
            "subject": "사회", "grades": ["h1", "h2", "h3"], "level": 1, "series_id": "SEOUL-ONLY",
            "series_position": 1, "duration_min": 30.0, "regions": ["seoul"], "active": True,
        }
    )  # fmt: skip
    rows.append(
        {
            "lecture_id": "M3-ONLY-1", "title": "중3 수학 총정리", "provider": "EBS", "subject": "수학",
            "grades": ["m3"], "level": 1, "series_id": "M3-ONLY", "series_position": 1,
            "duration_min": 30.0, "regions": ["*"], "active": True,
        }
    )  # fmt: skip
    rows.append(
        {
            "lecture_id": "RETIRED-1", "title": "폐강된 한국사 강의", "provider": "EBS", "subject": "한국사",
            "grades": ["h1", "h2", "h3"], "level": 1, "series_id": "RETIRED", "series_position": 1,
            "duration_min": 30.0, "regions": ["*"], "active": False,
        }
    )  # fmt: skip
    return rows


def lectures_table() -> pa.Table:
    return pa.Table.from_pylist(lectures(), schema=LECTURES)


def students() -> list[dict[str, Any]]:
    out = []
    for i in range(60):
        region = "seoul" if i < 40 else "taebaek"
        out.append(
            {
                "student_id": f"s{i:03d}",
                "region": region,
                "grade": ("h1", "h2")[i % 2],
                "school_level": "high",
                "target_exam": "수능",
                "interest_subjects": [("수학", "영어", "과학")[i % 3]],
            }
        )
    return out


def events() -> list[dict[str, Any]]:
    """Each student walks one or two series in order; seoul students also take the seoul-only lecture."""
    start = datetime(2025, 3, 2, 9, tzinfo=UTC)
    series_ids = list(SUBJECT_SERIES)
    out: list[dict[str, Any]] = []
    n = 0
    for i, s in enumerate(students()):
        walk = [series_ids[i % 4]] + ([series_ids[(i + 1) % 4]] if i % 3 == 0 else [])
        t = start + timedelta(hours=i)
        for series in walk:
            episodes = SUBJECT_SERIES[series][3]
            for ep in range(1, 2 + (i % episodes)):
                for kind, progress in (("enrol", 0.0), ("complete", 1.0)):
                    n += 1
                    t += timedelta(minutes=30)
                    out.append(
                        {
                            "event_id": f"t{n:06d}",
                            "student_id": s["student_id"],
                            "lecture_id": f"{series}-{ep}",
                            "type": kind,
                            "progress": progress,
                            "occurred_at": t,
                            "request_id": None,
                        }
                    )
        if s["region"] == "seoul" and i % 2 == 0:
            n += 1
            out.append(
                {
                    "event_id": f"t{n:06d}", "student_id": s["student_id"], "lecture_id": "SEOUL-ONLY-1",
                    "type": "complete", "progress": 1.0, "occurred_at": t + timedelta(days=1),
                    "request_id": None,
                }
            )  # fmt: skip
    return out
