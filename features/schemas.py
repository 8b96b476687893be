"""The three tables of the data model (students, lectures, events) as Arrow schemas and enums.

A dataset is a directory holding `students.parquet`, `lectures.parquet`, `events.parquet` and
`manifest.json`; `features.tables` reads and validates it.
"""

from __future__ import annotations

import pyarrow as pa

from models.interactions import EVENT_TYPES as INTERACTION_EVENT_TYPES

#: Grades in school order; `oos` is out-of-school youth, `adult` a learner outside school grades (OULAD).
GRADES: tuple[str, ...] = ("m1", "m2", "m3", "h1", "h2", "h3", "oos", "adult")
GRADE_LABELS_KO: dict[str, str] = {
    "m1": "중1",
    "m2": "중2",
    "m3": "중3",
    "h1": "고1",
    "h2": "고2",
    "h3": "고3",
    "oos": "학교 밖 청소년",
    "adult": "성인",
}
#: Event types of the learning funnel.
EVENT_TYPES: tuple[str, ...] = INTERACTION_EVENT_TYPES
#: Lecture levels: 1 기초 (basic), 2 기본 (standard), 3 심화 (advanced).
LEVELS: tuple[int, ...] = (1, 2, 3)
#: A lecture's `regions` list holding this value is licensed everywhere.
ALL_REGIONS = "*"
#: Region codes are lower-case ASCII slugs (`seoul`, `chungbuk`, `taebaek`, `east_anglian` ...).
REGION_PATTERN = r"^[a-z][a-z0-9_]*$"
#: Default partner regions of the platform (Seoul Learn and its partners).
SEOUL_LEARN_REGIONS: tuple[str, ...] = ("seoul", "chungbuk", "pyeongchang", "gimpo", "incheon", "taebaek")

#: Seoul Learn admits students by support category (the equity groups of `learnrec train` and the A/B
#: report): basic-livelihood recipients (기초생활수급), near-poverty (차상위), single-parent families
#: (한부모), multicultural families (다문화), out-of-school youth (학교밖청소년), other admissions.
#: Other datasets bring their own values (OULAD: the deprivation band of the student's area).
SUPPORT_CATEGORIES: tuple[str, ...] = (
    "basic_livelihood",
    "near_poverty",
    "single_parent",
    "multicultural",
    "out_of_school",
    "other",
)

STUDENTS = pa.schema(
    [
        pa.field("student_id", pa.string(), nullable=False),
        pa.field("region", pa.string(), nullable=False),
        pa.field("grade", pa.string(), nullable=False),
        # optional profile attributes that help cold start
        pa.field("school_level", pa.string()),  # middle | high | none
        pa.field("target_exam", pa.string()),  # 수능 | 검정고시 | 내신 | none ...
        pa.field("interest_subjects", pa.list_(pa.string())),
        pa.field("support_category", pa.string()),  # SUPPORT_CATEGORIES; OULAD: imd_band "20-30%"
        pa.field("age_band", pa.string()),
    ]
)
STUDENTS_REQUIRED: tuple[str, ...] = ("student_id", "region", "grade")

LECTURES = pa.schema(
    [
        pa.field("lecture_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("grades", pa.list_(pa.string()), nullable=False),  # grades the lecture suits
        pa.field("level", pa.int8(), nullable=False),
        pa.field("series_id", pa.string(), nullable=False),
        pa.field("series_position", pa.int32(), nullable=False),  # 1-based episode number
        pa.field("duration_min", pa.float32(), nullable=False),
        pa.field("regions", pa.list_(pa.string()), nullable=False),  # licensed regions, or ["*"]
        pa.field("active", pa.bool_(), nullable=False),
    ]
)
LECTURES_REQUIRED: tuple[str, ...] = ("lecture_id", "title", "provider", "subject")

EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("student_id", pa.string(), nullable=False),
        pa.field("lecture_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("progress", pa.float32(), nullable=False),
        pa.field("occurred_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("request_id", pa.string()),
    ]
)
EVENTS_REQUIRED: tuple[str, ...] = ("student_id", "lecture_id", "type", "occurred_at")

TABLES: dict[str, pa.Schema] = {"students": STUDENTS, "lectures": LECTURES, "events": EVENTS}
