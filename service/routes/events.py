"""POST /events: learning events from the portal, validated item by item, applied at once."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import ValidationError

from service.deps import ClientDep, StateDep, check_region
from service.errors import InvalidFieldError
from service.schemas import MAX_EVENTS_PER_BATCH, ErrorOut, EventItem, EventResult, EventsOut, FieldError

if TYPE_CHECKING:
    from features.store import EventOutcome

logger = logging.getLogger("learnrec.service.events")

router = APIRouter(prefix="/events", tags=["events"])

#: Events stamped further in the future than this are refused (a wrong clock or time zone).
MAX_CLOCK_SKEW = timedelta(hours=1)
#: Progress stored for events that leave it out.
DEFAULT_PROGRESS = {"enrol": 0.0, "complete": 1.0, "drop": 0.0}

_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/EventsIn"},
            "examples": {
                "completion": {
                    "summary": "A completion and an enrolment",
                    "value": {
                        "events": [
                            {
                                "event_id": "e-20250901-000001",
                                "student_id": "s000123",
                                "lecture_id": "L00041",
                                "type": "complete",
                                "progress": 1.0,
                                "occurred_at": "2025-09-01T10:15:00Z",
                            },
                            {
                                "event_id": "e-20250901-000002",
                                "student_id": "s000123",
                                "lecture_id": "L00042",
                                "type": "enrol",
                                "occurred_at": "2025-09-01T10:16:00+09:00",
                                "request_id": "9b2f6c1e4d7a4e0f8c3b2a1d0e9f8a7b",
                            },
                        ]
                    },
                }
            },
        }
    },
}


def _field_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(item)"
        out.append(FieldError(field=loc, message=err["msg"]))
    return out


def _validate(index: int, item: Any, now: datetime) -> tuple[EventItem | None, EventResult | None]:
    """The parsed event, or the rejection naming each bad field."""
    event_id = item.get("event_id") if isinstance(item, dict) else None
    event_id = event_id if isinstance(event_id, str) and len(event_id) <= 128 else None
    if not isinstance(item, dict):
        errors = [FieldError(field="(item)", message="each event must be a JSON object")]
        return None, EventResult(index=index, event_id=None, status="rejected", errors=errors)
    try:
        event = EventItem.model_validate(item)
    except ValidationError as exc:
        return None, EventResult(index=index, event_id=event_id, status="rejected", errors=_field_errors(exc))
    errors = []
    if event.type == "progress" and event.progress is None:
        errors.append(FieldError(field="progress", message="required when type is 'progress' (0..1)"))
    if event.occurred_at > now + MAX_CLOCK_SKEW:
        errors.append(
            FieldError(
                field="occurred_at",
                message=f"{event.occurred_at.isoformat()} is in the future; check the clock",
            )
        )
    if errors:
        return None, EventResult(index=index, event_id=event.event_id, status="rejected", errors=errors)
    return event, None


@router.post(
    "",
    response_model=EventsOut,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        401: {"model": ErrorOut, "description": "Missing or unknown API key."},
        403: {
            "model": ErrorOut,
            "description": "An event names a student of a region this key does not serve.",
        },
        503: {"model": ErrorOut, "description": "Redis could not store the batch; retry it unchanged."},
    },
)
def post_events(
    request: Request,
    state: StateDep,
    client: ClientDep,
    payload: Annotated[Any, Body(description='`{"events": [...]}`, 1 to 1000 events.')],
) -> EventsOut:
    """Record enrol / progress / complete / drop events. Each item is validated on its own: a bad item
    is rejected with the fields at fault, the good ones are stored. Idempotent by `event_id`. Accepted
    events count in the student's next recommendations."""
    if not isinstance(payload, dict) or "events" not in payload:
        raise InvalidFieldError(("body", "events"), "the body must be a JSON object with an 'events' list")
    raw = payload["events"]
    extra = sorted(set(payload) - {"events"})
    if extra:
        raise InvalidFieldError(
            ("body", extra[0]), f"unexpected field '{extra[0]}': the body holds only 'events'"
        )
    if not isinstance(raw, list):
        raise InvalidFieldError(("body", "events"), "'events' must be a list of event objects")
    if not 1 <= len(raw) <= MAX_EVENTS_PER_BATCH:
        raise InvalidFieldError(
            ("body", "events"),
            f"'events' holds {len(raw)} items; send 1 to {MAX_EVENTS_PER_BATCH} per request",
        )

    now = datetime.now(UTC)
    results: list[EventResult | None] = []
    valid: list[tuple[int, EventItem]] = []
    for i, item in enumerate(raw):
        event, rejection = _validate(i, item, now)
        results.append(rejection)
        if event is not None:
            valid.append((i, event))

    students = sorted({e.student_id for _, e in valid})
    if valid and not client.all_regions:
        profiles = state.store.get_profiles(students)
        for i, event in valid:
            profile = profiles.get(event.student_id)
            if profile is not None:
                check_region(client, profile.region, f"events[{i}]: student")

    applied: list[EventOutcome] = []
    if valid:
        from features.store import EventIn

        events = [
            EventIn(
                event_id=e.event_id,
                student_id=e.student_id,
                lecture_id=e.lecture_id,
                type=e.type,
                progress=float(e.progress if e.progress is not None else DEFAULT_PROGRESS[e.type]),
                occurred_at=e.occurred_at.astimezone(UTC),
                request_id=e.request_id,
            )
            for _, e in valid
        ]
        applied = state.store.apply_events(events)

    for (i, event), outcome in zip(valid, applied, strict=True):
        if outcome == "conflict":
            conflict = FieldError(
                field="event_id",
                message=(
                    f"'{event.event_id}' was already recorded for another event (other student, lecture, "
                    "type, progress, time or request id); an event id names one event: send a new id"
                ),
            )
            results[i] = EventResult(index=i, event_id=event.event_id, status="rejected", errors=[conflict])
        else:
            results[i] = EventResult(index=i, event_id=event.event_id, status=outcome)
    items = [r for r in results if r is not None]
    counts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    for r in items:
        counts[r.status] += 1
    for status, n in counts.items():
        if n:
            state.metrics.events.labels(status=status).inc(n)
    logger.info(
        "events",
        extra={"client": client.name, "students": len(students), **counts},
    )
    return EventsOut(
        request_id=request.state.request_id,
        accepted=counts["accepted"],
        duplicates=counts["duplicate"],
        rejected=counts["rejected"],
        items=items,
    )
