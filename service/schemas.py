"""Request and response bodies of the API (separate from the storage records in features.store)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
)

from features.schemas import EVENT_TYPES, GRADES, REGION_PATTERN

#: Opaque ids (students, lectures, events): ASCII letters, digits and `_ . : @ -`, at most 128 characters.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$"
#: Most events one POST /events may carry.
MAX_EVENTS_PER_BATCH = 1000

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Region = Annotated[str, StringConstraints(pattern=REGION_PATTERN, max_length=40)]
Grade = Literal["m1", "m2", "m3", "h1", "h2", "h3", "oos", "adult"]
EventType = Literal["enrol", "progress", "complete", "drop"]
Reason = Literal["next_in_series", "similar_students", "popular_in_region", "popular_overall"]
Source = Literal["model", "profile", "history", "popular_region_grade", "popular_region", "popular_global"]
VariantState = Literal["serving", "serving_previous", "unavailable"]


def _iso_text(value: Any) -> Any:
    """Only text is a time: pydantic would read a number as seconds since 1970 (``0`` = 1970-01-01)."""
    if not isinstance(value, str):
        raise ValueError(
            f"{value!r} is not a date-time: send ISO 8601 text with a time zone, "
            "e.g. 2025-09-01T10:15:00+09:00"
        )
    return value


def _as_utc(value: datetime) -> datetime:
    """The time in UTC, as it is stored; a time that has none (year 1 at +14:00) is refused here."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value.isoformat()} has no UTC equivalent (it falls outside years 1-9999 in UTC)"
        ) from None


#: A moment with a time zone, given as ISO 8601 text and held in UTC.
UtcDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_as_utc)]
#: A number that is a number in the JSON: no booleans, no numeric strings.
StrictNumber = Annotated[float, Strict()]

assert set(Grade.__args__) == set(GRADES)  # type: ignore[attr-defined]  # keep in step with the data model
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


class ErrorOut(BaseModel):
    """An error answer; `detail` says what is wrong and, where it helps, what to do."""

    detail: str = Field(examples=["student 's000123' belongs to region 'seoul'; this key serves taebaek"])


class ModelRef(BaseModel):
    """The registered model version that produced an answer."""

    name: str = Field(examples=["learnrec-lectures"])
    version: str = Field(examples=["3"])
    alias: str | None = Field(default=None, examples=["champion"])
    run_id: str | None = Field(default=None, examples=["4f1c2e0a9b7d4c7e8a1b2c3d4e5f6a7b"])


class Recommendation(BaseModel):
    """One recommended lecture."""

    rank: int = Field(ge=1, description="1 = best.", examples=[1])
    lecture_id: str = Field(examples=["L00042"])
    title: str = Field(examples=["수학 개념 완성 2강: 이차방정식"])
    subject: str = Field(examples=["수학"])
    provider: str = Field(examples=["EBS"])
    score: float = Field(description="The model's score (or popularity); comparable within one answer only.")
    reason: Reason = Field(description="Why it is here, as a code the portal can map to its own wording.")
    reason_text: str = Field(
        description="The reason in Korean, ready to show.", examples=["시리즈 다음 강의"]
    )


class RecommendationsOut(BaseModel):
    """A ranked list of lectures for one student."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "9b2f6c1e4d7a4e0f8c3b2a1d0e9f8a7b",
                    "student_id": "s000123",
                    "model": {
                        "name": "learnrec-lectures",
                        "version": "3",
                        "alias": "champion",
                        "run_id": None,
                    },
                    "source": "model",
                    "fallback": False,
                    "degraded": False,
                    "experiment": "lightfm-v2-partners",
                    "variant": "control",
                    "items": [
                        {
                            "rank": 1,
                            "lecture_id": "L00042",
                            "title": "수학 개념 완성 2강: 이차방정식",
                            "subject": "수학",
                            "provider": "EBS",
                            "score": 3.42,
                            "reason": "next_in_series",
                            "reason_text": "시리즈 다음 강의",
                        },
                        {
                            "rank": 2,
                            "lecture_id": "L00310",
                            "title": "영어 독해 기본 1강",
                            "subject": "영어",
                            "provider": "메가스터디",
                            "score": 2.87,
                            "reason": "similar_students",
                            "reason_text": "나와 비슷한 학생들이 완강한 강의",
                        },
                    ],
                }
            ]
        }
    )

    request_id: str
    student_id: str
    model: ModelRef
    source: Source = Field(
        description=(
            "model: scored for a student the model knows; profile / history: scored from the registered "
            "profile or recent events of a student the model never saw; popular_*: popularity lists."
        )
    )
    fallback: bool = Field(description="True when the model never saw this student (cold start).")
    degraded: bool = Field(
        description="True when the feature store did not answer: popularity lists, filtered as far as known."
    )
    experiment: str | None = Field(
        default=None,
        description="Key of the A/B experiment the student is in; null = none (the champion answered).",
        examples=["lightfm-v2-partners"],
    )
    variant: str | None = Field(
        default=None,
        description="The student's variant in `experiment` (sticky); null when in no experiment.",
        examples=["control"],
    )
    items: list[Recommendation]


class StudentIn(BaseModel):
    """A student's profile as the portal registers it (no names, no national ids)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "region": "seoul",
                    "grade": "h2",
                    "school_level": "high",
                    "target_exam": "수능",
                    "interest_subjects": ["수학", "영어"],
                }
            ]
        },
    )

    region: Region = Field(
        description=(
            "A known partner region code (seoul, chungbuk, pyeongchang, gimpo, incheon, taebaek, ...: the "
            "enum lists those the running service knows)."
        )
    )
    grade: Grade
    school_level: Literal["middle", "high", "none"] | None = None
    target_exam: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        default=None, examples=["수능", "검정고시", "내신"]
    )
    interest_subjects: list[Annotated[str, StringConstraints(min_length=1, max_length=20)]] = Field(
        default_factory=list, max_length=12, examples=[["수학", "과학"]]
    )
    support_category: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        default=None,
        description=(
            "Why the programme supports the student: basic_livelihood, near_poverty, single_parent, "
            "multicultural, out_of_school, other (Seoul Learn); other platforms send their own groups "
            "(OULAD: the deprivation band of the student's area, e.g. 0-10%)."
        ),
        examples=["basic_livelihood", "multicultural", "0-10%"],
    )
    age_band: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = Field(
        default=None, examples=["0-35", "35-55"]
    )


class StudentOut(StudentIn):
    """A stored profile."""

    model_config = ConfigDict(extra="forbid")

    student_id: str
    created: bool = Field(description="True when this call registered the student for the first time.")


class EventItem(BaseModel):
    """One learning event reported by the portal."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "e-20250901-000001",
                    "student_id": "s000123",
                    "lecture_id": "L00041",
                    "type": "complete",
                    "progress": 1.0,
                    "occurred_at": "2025-09-01T10:15:00Z",
                    "request_id": "9b2f6c1e4d7a4e0f8c3b2a1d0e9f8a7b",
                }
            ]
        },
    )

    event_id: Id = Field(description="Unique per event; sending it again is a no-op (idempotent).")
    student_id: Id
    lecture_id: Id
    type: EventType
    progress: StrictNumber | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Share watched, 0..1. Required for `progress`; defaults to 1 for `complete`, else 0.",
    )
    occurred_at: UtcDatetime = Field(
        description="When it happened: ISO 8601 text with a time zone (stored as UTC)."
    )
    request_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:\-]{1,128}$")] | None = Field(
        default=None, description="The recommendation answer this event follows from, if any."
    )


class EventsIn(BaseModel):
    """A batch of events. Items are validated one by one: a bad item is reported, the good ones kept."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventItem] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class FieldError(BaseModel):
    """What is wrong with one field of one item."""

    field: str = Field(examples=["progress"])
    message: str = Field(examples=["Input should be less than or equal to 1"])


class EventResult(BaseModel):
    """The outcome of one item of the batch, in request order."""

    index: int = Field(ge=0)
    event_id: str | None = None
    status: Literal["accepted", "duplicate", "rejected"]
    errors: list[FieldError] = Field(default_factory=list)


class EventsOut(BaseModel):
    """Per-item outcome of a batch; accepted events are already reflected in recommendations."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "0c1d2e3f405162738495a6b7c8d9e0f1",
                    "accepted": 1,
                    "duplicates": 0,
                    "rejected": 1,
                    "items": [
                        {"index": 0, "event_id": "e-1", "status": "accepted", "errors": []},
                        {
                            "index": 1,
                            "event_id": "e-2",
                            "status": "rejected",
                            "errors": [
                                {"field": "progress", "message": "Input should be less than or equal to 1"}
                            ],
                        },
                    ],
                }
            ]
        }
    )

    request_id: str
    accepted: int
    duplicates: int
    rejected: int
    items: list[EventResult]


class VariantModelOut(BaseModel):
    """A model version loaded for A/B experiment variants (by the reference the experiments file names)."""

    ref: str = Field(description="Alias or pinned version named by the experiments.", examples=["challenger"])
    name: str = Field(examples=["learnrec-lectures"])
    version: str | None = Field(default=None, description="Null when nothing is loaded.", examples=["4"])
    alias: str | None = Field(default=None, examples=["challenger"])
    run_id: str | None = None
    loaded_at: datetime | None = Field(default=None, description="When this version was put in service.")
    status: VariantState = Field(
        description=(
            "serving: loaded; serving_previous: the version the reference points at now failed to load, the "
            "previous one keeps serving; unavailable: nothing loaded, the champion answers for the variant."
        )
    )
    error: str | None = Field(default=None, description="Why the last load failed or nothing is loaded.")


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    """Whether the service can answer normally."""

    ready: bool
    model_loaded: bool
    redis: bool
    model: ModelRef | None = None
    detail: str | None = Field(default=None, description="What is missing, when not ready.")
    variants: list[VariantModelOut] = Field(
        default_factory=list,
        description="Models of A/B experiment variants (informative: the champion answers for missing ones).",
    )


class ModelStatusOut(BaseModel):
    """The model manager's view: what is serving, what the alias points at, the last failure."""

    serving: ModelRef | None
    alias: str
    loaded_at: datetime | None = Field(default=None, description="When the serving version was loaded.")
    last_check: datetime | None = None
    last_error: str | None = None
    failed_version: str | None = None
    variants: list[VariantModelOut] = Field(
        default_factory=list, description="Models loaded (or wanted) for A/B experiment variants."
    )


class ReloadOut(BaseModel):
    """The outcome of an alias check: swapped to a new version, already current, or failed (old kept)."""

    changed: bool
    serving: ModelRef | None
    previous: ModelRef | None = None
    error: str | None = None
