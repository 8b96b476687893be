"""GET /recommendations: the ranked lectures for one student.

The route is a coroutine that hands the blocking part (the one Redis round trip, scoring) to the
threadpool in one hop, and answers JSON bytes built with orjson: FastAPI would otherwise run a `def`
route and the validation of its returned model in two hops and rebuild the body through pydantic. The
body has exactly the shape of `RecommendationsOut`, which stays the documented `response_model`
(tests validate real answers against it and fuzz the OpenAPI).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.auth import ApiClient
from service.deps import AppState, ClientDep, StateDep, check_region, require_model
from service.errors import InvalidFieldError
from service.experiments import Assignment, exposure_fields
from service.ranking import REASON_TEXT, Ranked, RankingModel
from service.schemas import ID_PATTERN, ErrorOut, RecommendationsOut

logger = logging.getLogger("learnrec.service.recommendations")

router = APIRouter(prefix="/recommendations", tags=["recommendations"])


@router.get(
    "",
    response_model=RecommendationsOut,
    responses={
        401: {"model": ErrorOut, "description": "Missing or unknown API key."},
        403: {"model": ErrorOut, "description": "The student belongs to a region this key does not serve."},
        503: {"model": ErrorOut, "description": "No model version is loaded yet."},
    },
)
async def get_recommendations(
    request: Request,
    state: StateDep,
    client: ClientDep,
    student_id: Annotated[
        str,
        Query(pattern=ID_PATTERN, description="Opaque student id.", examples=["s000123"]),
    ],
    k: Annotated[int, Query(ge=1, le=100, description="How many lectures to return.")] = 10,
    subject: Annotated[
        str | None,
        Query(min_length=1, max_length=20, description="Only lectures of this subject.", examples=["수학"]),
    ] = None,
) -> Response:
    """Ranked lectures for a student, with a reason each; never a lecture already taken, unlicensed or
    unsuited to the grade. Students the model never saw get profile-based or popular lectures
    (`fallback`); when Redis is down the answer comes from in-process popularity lists (`degraded`).
    A student in an A/B experiment gets the model of their (sticky) variant; `experiment` and `variant`
    say which, null when none (the champion answered). Every answer is logged as an exposure."""
    champion = require_model(state)
    if subject is not None and subject not in champion.subject_index:
        raise InvalidFieldError(
            ("query", "subject"),
            f"unknown subject '{subject}': expected one of {', '.join(champion.subjects)}",
        )
    body = await run_in_threadpool(
        _answer, state, client, champion, student_id, k, subject, request.state.request_id
    )
    return Response(body, media_type="application/json")


def _answer(
    state: AppState,
    client: ApiClient,
    champion: RankingModel,
    student_id: str,
    k: int,
    subject: str | None,
    request_id: str,
) -> bytes:
    """The blocking part of the request (worker thread): read, rank, count, log, queue the exposure."""
    experiments = state.experiments  # one snapshot for the whole request
    # a single-region key tells the region before Redis does: the variant's model (and its state) is
    # then read in the request's one round trip
    region = client.only_region
    assignment = experiments.assign(student_id, region) if region is not None else None
    model = _variant_model(state, champion, assignment, subject)
    record, degraded = state.store.read_student(student_id, model.model_name, model.version)
    profile = record.profile if record is not None else None
    if profile is not None:
        check_region(client, profile.region, "this student")
        if region is None:
            region = profile.region
            assignment = experiments.assign(student_id, region)
            variant = _variant_model(state, champion, assignment, subject)
            if variant is not model:
                model = variant
                if record is not None and model.state_width and not degraded:
                    # only students of multi-region keys in a variant whose model keeps per-student
                    # state pay this second round trip
                    record = replace(
                        record, state=state.store.read_state(student_id, model.model_name, model.version)
                    )
    ranked = model.rank(
        student_id,
        record,
        k,
        subject=subject,
        # an unregistered student (or one Redis cannot tell us about) of a single-region key
        # belongs to that region: its popularity lists and licences apply
        region_hint=client.only_region if profile is None else None,
        degraded=degraded,
    )
    experiment = assignment.experiment if assignment else None
    variant_name = assignment.variant if assignment else None
    m = state.metrics
    m.recommendations.labels(source=ranked.source).inc()
    m.assignments.labels(experiment=experiment or "none", variant=variant_name or "none").inc()
    if ranked.fallback:
        m.fallback.labels(source=ranked.source).inc()
    if degraded:
        m.degraded.inc()
    if ranked.model_error:
        m.model_errors.inc()
        logger.error("model failed to score; popularity answered", extra={"error": ranked.model_error})
    ids = model.catalogue.lectures.ids
    lecture_ids = [ids[r] for r in ranked.rows]
    logger.info(
        "recommendations",
        extra={
            "student": state.hash_student(student_id),
            "client": client.name,
            "k": k,
            "returned": len(lecture_ids),
            "source": ranked.source,
            "fallback": ranked.fallback,
            "degraded": degraded,
            "model_version": model.version,
            "experiment": experiment,
            "variant": variant_name,
        },
    )
    if state.exposures is not None:
        state.exposures.submit(
            exposure_fields(
                request_id,
                student_id,
                region or "",
                assignment,
                model.version,
                lecture_ids,
                datetime.now(UTC),
            )
        )
    return orjson.dumps(
        answer_body(request_id, student_id, model, ranked, lecture_ids, degraded, experiment, variant_name)
    )


def answer_body(
    request_id: str,
    student_id: str,
    model: RankingModel,
    ranked: Ranked,
    lecture_ids: list[str],
    degraded: bool,
    experiment: str | None,
    variant: str | None,
) -> dict[str, Any]:
    """The answer as `RecommendationsOut` serialises it (same keys, same order), from plain values."""
    titles, subjects, providers = model.titles, model.subject_of, model.providers
    return {
        "request_id": request_id,
        "student_id": student_id,
        "model": {
            "name": model.model_name,
            "version": model.version,
            "alias": model.alias,
            "run_id": model.run_id,
        },
        "source": ranked.source,
        "fallback": ranked.fallback,
        "degraded": degraded,
        "experiment": experiment,
        "variant": variant,
        "items": [
            {
                "rank": i,
                "lecture_id": lecture_id,
                "title": titles[r],
                "subject": subjects[r],
                "provider": providers[r],
                "score": float(score),
                "reason": reason,
                "reason_text": REASON_TEXT[reason],
            }
            for i, (lecture_id, r, score, reason) in enumerate(
                zip(lecture_ids, ranked.rows, ranked.scores, ranked.reasons, strict=True), start=1
            )
        ],
    }


def _variant_model(
    state: AppState, champion: RankingModel, assignment: Assignment | None, subject: str | None
) -> RankingModel:
    """The model serving the student's variant; the champion when none, or when it is not loaded (counted:
    the answer still records the variant, as intention to treat, with the version that really answered)."""
    if assignment is None:
        return champion
    model = state.models.get(assignment.model)
    if model is None or (subject is not None and subject not in model.subject_index):
        state.metrics.variant_fallback.labels(
            experiment=assignment.experiment, variant=assignment.variant
        ).inc()
        return champion
    return model
