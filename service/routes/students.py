"""PUT/GET /students/{student_id}: the profile the model uses for cold start and the rules for eligibility."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path

from features.profile import FEATURE_ATTRIBUTES, LIST_ATTRIBUTES, StudentProfile
from service.deps import ClientDep, StateDep, check_known_region, check_region
from service.schemas import ID_PATTERN, ErrorOut, StudentIn, StudentOut

logger = logging.getLogger("learnrec.service.students")

router = APIRouter(prefix="/students", tags=["students"])

StudentIdPath = Annotated[
    str, Path(pattern=ID_PATTERN, description="Opaque student id.", examples=["s000123"])
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or unknown API key."},
    403: {"model": ErrorOut, "description": "The student (or the new region) is outside this key's regions."},
    503: {"model": ErrorOut, "description": "Redis could not be reached; nothing was stored."},
}
_PUT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    422: {
        "description": "A field is invalid, or the region is unknown (`detail` names it).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
    },
}


@router.put("/{student_id}", response_model=StudentOut, responses=_PUT_ERRORS)
def put_student(student_id: StudentIdPath, body: StudentIn, state: StateDep, client: ClientDep) -> StudentOut:
    """Register a student or update the profile (grade, region, optional cold-start attributes)."""
    check_known_region(state, body.region)
    check_region(client, body.region, "the new profile")
    existing = state.store.get_profiles([student_id]).get(student_id)
    if existing is not None:
        # a key of one region must not move another region's student into its own
        check_region(client, existing.region, "this student")
    state.store.put_profile(StudentProfile.from_mapping(student_id, body.model_dump()))
    logger.info(
        "student profile stored",
        extra={"student": state.hash_student(student_id), "client": client.name, "new": existing is None},
    )
    return StudentOut(student_id=student_id, created=existing is None, **body.model_dump())


@router.get(
    "/{student_id}",
    response_model=StudentOut,
    responses={**_ERRORS, 404: {"model": ErrorOut, "description": "No profile registered for this id."}},
)
def get_student(student_id: StudentIdPath, state: StateDep, client: ClientDep) -> StudentOut:
    """The registered profile of a student."""
    profile = state.store.get_profiles([student_id]).get(student_id)
    if profile is None:
        raise HTTPException(
            404, detail="no profile registered for this student; PUT /students/{student_id} first"
        )
    check_region(client, profile.region, "this student")
    # validated when stored: the stored attributes are the API's fields (tests hold the two equal)
    return StudentOut.model_validate({"student_id": student_id, "created": False, **_attributes(profile)})


def _attributes(profile: StudentProfile) -> dict[str, Any]:
    values = {name: getattr(profile, name) for name in FEATURE_ATTRIBUTES}
    return {name: list(v) if name in LIST_ATTRIBUTES else v for name, v in values.items()}
