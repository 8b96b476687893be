"""GET /recommendations: the ranked lectures for one student.

The hot path of the service, so it is built for cost per request:

* A repeat request is answered from the in-process answer cache (`service.answer_cache`: answers kept
  until Redis reports that the student's keys changed) on the event loop: no Redis, no scoring, no thread.
* Otherwise the request reads Redis on the event loop (`GuardedStore.read_student_async`: one pipelined
  round trip through `service.redis_reads`, no worker thread) and ranks the student right there: on one
  core a worker thread only adds two GIL hand-overs to the same CPU work.
* The body is JSON bytes built with orjson, in exactly the shape of `RecommendationsOut` (the documented
  `response_model`: tests validate real answers against it and fuzz the OpenAPI); an answer keeps its
  encoded body but the request id, which goes in front per request.
* The app state, the API key and the three query parameters are read in the body (`client_of`,
  `_query`), not through FastAPI's dependencies and parameter validation, which cost more than the whole
  cached answer (about 60 µs a request on the bench machine, against ~140 µs for all of `/healthz`).
  `PARAMETERS` documents exactly what `_query` enforces, with FastAPI's 422 shape. The route's class
  (`DirectRoute`) goes one step further: FastAPI's request handler, which solves the (empty) dependencies
  and parses the query into a multi-dict anyway, is not run around the endpoint (~20 µs a request), nor
  are Starlette's per-route wrappers, and the route is matched first among the app's own routes, not
  through an included router's layers.
* Fields of the answer join the request's one access log line instead of a second log line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, cast
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from features.experiments import Assignment, ExperimentRegistry, answer_exposure, packed_exposure
from features.streams import pack_pairs
from models.ranking import REASON_TEXT, Ranked, RankingModel
from service.answer_cache import Answer
from service.auth import ApiClient
from service.deps import API_KEY_SCHEME, AppState, check_region, client_of, require_model
from service.errors import InvalidFieldError, StoreUnavailableError
from service.schemas import ID_PATTERN, ErrorOut, RecommendationsOut

logger = logging.getLogger("learnrec.service.recommendations")


class DirectRoute(APIRoute):
    """A route whose endpoint takes the `Request` and returns the `Response` itself, called straight from
    the route's match: FastAPI's request handler (dependency solving, which builds the query multi-dict,
    and response validation) and Starlette's per-route wrappers (`request_response`, its exception
    wrapper, the body limit: a GET here reads no body) are not run around it; an error it raises goes to
    the app's exception handlers as any route's does (`ExceptionMiddleware`). The route is documented as
    any other (`openapi_extra`). Its router is added to the app's own routes (`service.main.create_app`),
    not included: an included router is matched through FastAPI's include layers on every request.
    Together ~7% of a computed answer's CPU (in process, 16 rounds interleaved with the same endpoint
    behind the usual route)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        endpoint = cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)


router = APIRouter(prefix="/recommendations", tags=["recommendations"], route_class=DirectRoute)


#: The query parameters, once: `_query` enforces exactly what `PARAMETERS` documents.
K_DEFAULT, K_MIN, K_MAX = 10, 1, 100
SUBJECT_MAX = 20
_ID = re.compile(ID_PATTERN)
PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "student_id",
        "in": "query",
        "required": True,
        "description": "Opaque student id.",
        "schema": {"type": "string", "pattern": ID_PATTERN, "title": "Student Id"},
        "example": "s000123",
    },
    {
        "name": "k",
        "in": "query",
        "required": False,
        "description": "How many lectures to return.",
        "schema": {"type": "integer", "minimum": K_MIN, "maximum": K_MAX, "default": K_DEFAULT, "title": "K"},
    },
    {
        "name": "subject",
        "in": "query",
        "required": False,
        "description": "Only lectures of this subject.",
        "schema": {"type": "string", "minLength": 1, "maxLength": SUBJECT_MAX, "title": "Subject"},
        "example": "수학",
    },
]


def _query(request: Request) -> tuple[str, int, str | None]:
    """(student_id, k, subject) from the query string, or a 422 naming the parameter (FastAPI's shape)."""
    # Starlette's own parse (`request.query_params`: the last of repeated values wins) without the
    # multi-dict it builds around it; a query with nothing escaped (the portal's) is split directly
    query = request.scope["query_string"].decode("latin-1")
    if "%" in query or "+" in query:
        params = dict(parse_qsl(query, keep_blank_values=True))
    else:
        params = {name: value for name, _, value in (p.partition("=") for p in query.split("&") if p)}
    student_id = params.get("student_id")
    if student_id is None:
        raise InvalidFieldError(("query", "student_id"), "Field required", "missing")
    if not _ID.match(student_id):
        raise InvalidFieldError(
            ("query", "student_id"), f"String should match pattern '{ID_PATTERN}'", "string_pattern_mismatch"
        )
    raw_k = params.get("k")
    k = K_DEFAULT
    if raw_k is not None:
        try:
            k = int(raw_k)
        except ValueError:
            raise InvalidFieldError(
                ("query", "k"),
                "Input should be a valid integer, unable to parse string as an integer",
                "int_parsing",
            ) from None
        if k < K_MIN:
            raise InvalidFieldError(
                ("query", "k"), f"Input should be greater than or equal to {K_MIN}", "greater_than_equal"
            )
        if k > K_MAX:
            raise InvalidFieldError(
                ("query", "k"), f"Input should be less than or equal to {K_MAX}", "less_than_equal"
            )
    subject = params.get("subject")
    if subject is not None and not 1 <= len(subject) <= SUBJECT_MAX:
        raise InvalidFieldError(
            ("query", "subject"),
            f"String should have 1 to {SUBJECT_MAX} characters",
            "string_too_short" if not subject else "string_too_long",
        )
    return student_id, k, subject


@router.get(
    "",
    response_model=RecommendationsOut,
    responses={
        401: {"model": ErrorOut, "description": "Missing or unknown API key."},
        403: {"model": ErrorOut, "description": "The student belongs to a region this key does not serve."},
        422: {
            "description": "A query parameter is missing or invalid (`detail` names it).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
        },
        503: {
            "model": ErrorOut,
            "description": (
                "No model version is loaded yet; or, for a key scoped to regions, Redis is unavailable "
                "and the student's region cannot be checked (keys for all regions get a `degraded` answer)."
            ),
        },
    },
    # the key and the query are read in the body (`client_of`, `_query`), not by FastAPI's dependency
    # and parameter machinery: see the module docstring
    openapi_extra={"security": [{API_KEY_SCHEME: []}], "parameters": PARAMETERS},
)
async def get_recommendations(request: Request) -> Response:
    """Ranked lectures for a student, with a reason each; never a lecture already taken, unlicensed or
    unsuited to the grade. Students the model never saw get profile-based or popular lectures
    (`fallback`); when Redis is down the answer comes from in-process popularity lists (`degraded`),
    but a key scoped to regions gets 503 for a student whose region the service cannot check.
    A student in an A/B experiment gets the model of their (sticky) variant; `experiment` and `variant`
    say which, null when none (the champion answered). Every answer is logged as an exposure."""
    state: AppState = request.app.state.learnrec
    client = client_of(request, state)
    student_id, k, subject = _query(request)
    champion = require_model(state)
    if subject is not None and subject not in champion.subject_index:
        raise InvalidFieldError(
            ("query", "subject"),
            f"unknown subject '{subject}': expected one of {', '.join(champion.subjects)}",
        )
    request_id: str = request.state.request_id
    # what the answer depends on besides the student's keys (objects replaced whole, never mutated)
    experiments = state.experiments
    serving = (champion, state.models.variants, experiments)
    # k and a region are never ambiguous in front of the subject
    asked = f"{k}/{client.only_region}/{subject}"
    answer = state.answers.get(student_id, asked, serving)
    if answer is None:
        ticket = state.answers.ticket()
        answer = await _answer(state, client, champion, experiments, student_id, k, subject)
        state.answers.put(student_id, asked, serving, answer, ticket)
        cached = False
    else:
        check_region(client, answer.region, "this student")
        cached = True
    _account(state, request, request_id, student_id, answer, cached)
    return Response(answer.body(request_id), media_type="application/json")


async def _answer(
    state: AppState,
    client: ApiClient,
    champion: RankingModel,
    experiments: ExperimentRegistry,
    student_id: str,
    k: int,
    subject: str | None,
) -> Answer:
    """A request the cache could not answer: read Redis (awaited), rank.
    `experiments` is the request's one snapshot (the one its answer is kept under)."""
    # a single-region key tells the region before Redis does: the variant's model (and its state) is
    # then read in the request's one round trip
    region = client.only_region
    assignment = experiments.assign(student_id, region) if region is not None else None
    model, fell_back = _variant_model(state, champion, assignment, subject)
    record, degraded = await state.store.read_student_async(student_id, model.model_name, model.version)
    profile = record.profile if record is not None else None
    if profile is None and degraded and not client.all_regions:
        # a scoped key may only learn about its regions' students: without Redis the student's region
        # is unknown, and even a popularity list would say the student may be one of them
        raise StoreUnavailableError(
            "the feature store is unavailable, so this student's region cannot be checked against this "
            f"key's regions ({', '.join(sorted(client.regions))}); retry later"
        )
    if profile is not None:
        check_region(client, profile.region, "this student")
        if region is None:
            region = profile.region
            assignment = experiments.assign(student_id, region)
            variant, fell_back = _variant_model(state, champion, assignment, subject)
            if variant is not model:
                model = variant
                if record is not None and model.state_width and not degraded:
                    # only students of multi-region keys in a variant whose model keeps per-student
                    # state pay this second round trip
                    raw = await state.store.read_state_async(student_id, model.model_name, model.version)
                    record = replace(record, state=raw)
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
    if ranked.candidates is not None:
        state.metrics.count_candidates(ranked.candidates)
    ids = model.catalogue.lectures.ids
    lecture_ids = [ids[r] for r in ranked.rows]
    experiment = assignment.experiment if assignment else None
    variant_name = assignment.variant if assignment else None
    return Answer(
        source=ranked.source,
        fallback=ranked.fallback,
        model_error=ranked.model_error,
        degraded=degraded,
        region=profile.region if profile is not None else None,
        experiment=experiment,
        variant=variant_name,
        variant_fell_back=fell_back,
        tail=answer_tail(student_id, model, ranked, degraded, experiment, variant_name),
        exposure=pack_pairs(
            answer_exposure(student_id, region or "", assignment, model.version, lecture_ids).items()
        )[1],
        student_hash=state.hash_student(student_id),
        k=k,
        returned=len(lecture_ids),
        model_version=model.version,
    )


def _account(
    state: AppState, request: Request, request_id: str, student_id: str, answer: Answer, cached: bool
) -> None:
    """Count, log and record the exposure of one answer (a computed or a cached one alike)."""
    m = state.metrics
    m.count_answer(
        answer.source, answer.fallback, answer.experiment, answer.variant, answer.variant_fell_back, cached
    )
    if answer.degraded:
        m.degraded.inc()
    if answer.model_error:
        m.model_errors.inc()
        logger.error("model failed to score; popularity answered", extra={"error": answer.model_error})
    # these fields join the request's one access log line (`service.main.RequestContext`)
    request.state.log_fields = answer.log_fields(cached)
    if state.exposures is not None:
        state.exposures.submit(packed_exposure(student_id, answer.exposure, request_id))


#: Each reason's two answer members, encoded once.
_REASON_JSON: dict[str, bytes] = {
    reason: orjson.dumps({"reason": reason, "reason_text": text})[1:-1]
    for reason, text in REASON_TEXT.items()
}


def answer_tail(
    student_id: str,
    model: RankingModel,
    ranked: Ranked,
    degraded: bool,
    experiment: str | None,
    variant: str | None,
) -> bytes:
    """The answer's JSON body after its opening brace: exactly what orjson writes for
    `RecommendationsOut` (same keys, same order, UTF-8) but its first member, ``request_id``, which
    `Answer.body` puts in front per request.

    Each item is assembled from its lecture's members encoded at load (`RankingModel.lecture_json`) and
    its reason's (`_REASON_JSON`); only the rank and the score are written per answer, the scores in one
    orjson call (a JSON number never holds a comma).
    """
    head = orjson.dumps(
        {
            "student_id": student_id,
            "model": {"name": model.model_name, "version": model.version, "alias": model.alias,
                      "run_id": model.run_id},
            "source": ranked.source,
            "fallback": ranked.fallback,
            "degraded": degraded,
            "experiment": experiment,
            "variant": variant,
        }
    )  # fmt: skip
    lectures = model.lecture_json
    scores = orjson.dumps(ranked.scores)[1:-1].split(b",") if ranked.scores else []
    items = b",".join(
        [
            b'{"rank":%d,%b,"score":%b,%b}' % (i, lectures[r], score, _REASON_JSON[reason])
            for i, (r, score, reason) in enumerate(zip(ranked.rows, scores, ranked.reasons, strict=True), 1)
        ]
    )
    return head[1:-1] + b',"items":[' + items + b"]}"


def _variant_model(
    state: AppState, champion: RankingModel, assignment: Assignment | None, subject: str | None
) -> tuple[RankingModel, bool]:
    """The model serving the student's variant, and False; (champion, True) when the variant's model is
    not loaded (the answer still records the variant, as intention to treat, with the version that really
    answered; `_account` counts it). The champion and False when the student is in no experiment."""
    if assignment is None:
        return champion, False
    model = state.models.get(assignment.model)
    if model is None or (subject is not None and subject not in model.subject_index):
        return champion, True
    return model, False
