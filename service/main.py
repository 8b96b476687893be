"""The FastAPI app factory and its lifespan: keys, Redis, the model by alias, the alias poller, A/B
experiments (file watcher) and the exposure writer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from features.experiments import ExperimentConfigError, ExperimentRegistry
from features.settings import Settings, apply_telemetry_choice, get_settings
from models.errors import LearnrecError
from service.answer_cache import AnswerCache
from service.auth import KeyRing
from service.deps import AppState, GuardedStore, known_regions
from service.docs import add_docs
from service.errors import InvalidFieldError, ServiceConfigError, ServiceError
from service.exposures import ExposureWriter
from service.logs import StudentHasher, accept_request_id, configure_logging, request_id_var
from service.metrics import Metrics
from service.model_manager import ModelManager, serving_gc_thresholds
from service.redis_reads import AsyncReader
from service.routes import admin, events, health, recommendations, students
from service.schemas import EventItem, EventsIn

logger = logging.getLogger("learnrec.service")

#: How long start-up waits for the first model load before serving without it.
STARTUP_LOAD_WAIT_SECONDS = 60.0
#: How often the experiments file is checked for changes (one stat; re-read only when it changed).
EXPERIMENTS_CHECK_SECONDS = 1.0

DESCRIPTION = """
Lecture recommendations for Seoul Learn (서울런) and its partner regions.

* `GET /recommendations` ranks lectures for a student (never one already taken, always licensed in the
  student's region and suited to the grade), each with a reason.
* `POST /events` reports what students do; the next recommendation reflects it.
* `PUT /students/{student_id}` registers the profile used for new students.

Every call but the health checks needs an `X-API-Key`; keys are scoped to partner regions. Send an
`X-Request-ID` to trace a call (one is generated otherwise); it comes back as a header and in the body.
"""

TAGS = [
    {"name": "recommendations", "description": "Ranked lectures for a student."},
    {"name": "events", "description": "Learning events from the portal."},
    {"name": "students", "description": "Student profiles (cold start, eligibility)."},
    {"name": "admin", "description": "Model status and reload (admin keys)."},
    {"name": "health", "description": "Liveness, readiness, Prometheus metrics."},
]


class RequestContext:
    """ASGI middleware: request id in and out, latency histogram per route template, one access log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger("learnrec.service.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = accept_request_id(incoming)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # never a bare crash: the client gets JSON with the request id to quote, the log gets the trace
            # the route template, not the path: paths carry student ids
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.log.exception("unhandled error", extra={"route": route})
            if not response_started:
                body = orjson.dumps({"detail": f"internal error; quote request id {request_id}"})
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.request_latency.labels(route=template, method=method, status=str(status)).observe(
                elapsed
            )
            state = scope.get("state", {})
            extra = {
                "method": method,
                "route": template,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client": state.get("client"),
            }
            fields = state.get("log_fields")  # what the route adds to its one line (never student ids)
            self.log.info("request", extra={**extra, **fields} if fields else extra)
            request_id_var.reset(token)


#: Environment variables the BLAS/OpenMP pools read when their library is loaded.
NATIVE_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_native_threads(threads: int) -> None:
    """Cap the process's BLAS/OpenMP thread pools at `threads` (0: leave the libraries' defaults).

    Libraries already loaded (numpy's and scipy's OpenBLAS) are capped through threadpoolctl; the
    environment variables cover those a model loads later. Under concurrent requests each one scoring a
    single student, a pool of one thread per core only makes requests fight for the cores: the large
    serve bench fell from 601 to 19 requests/s with OpenBLAS's default.
    """
    if threads <= 0:
        return
    from threadpoolctl import threadpool_limits

    for name in NATIVE_THREAD_VARIABLES:
        os.environ[name] = str(threads)
    threadpool_limits(limits=threads)


def _connect_store(settings: Settings) -> tuple[Any, Any, str | None]:
    """(FeatureStore or None, connection or None, why unavailable); never raises (Redis down = degraded)."""
    try:
        from features.redis_server import connect
        from features.store import FeatureStore

        connection = connect(settings)
    except Exception as exc:
        logger.error("feature store unavailable at start-up; answering degraded", extra={"error": repr(exc)})
        return None, None, repr(exc)
    redis = settings.redis
    store = FeatureStore(
        connection,
        stream_shards=redis.shards(),
        replica_acks=redis.replica_acks,
        replica_ack_timeout_ms=redis.replica_ack_timeout_ms,
    )
    return store, connection, None


def _supervise_embedded(settings: Settings) -> Any:
    """Restart the embedded redis-server when it dies (None with a configured Redis: not ours to run)."""
    if settings.redis.url:
        return None
    from features.redis_server import EmbeddedSupervisor

    supervisor = EmbeddedSupervisor(settings.redis_dir)
    supervisor.start()
    return supervisor


def _listen_for_changes(connection: Any, answers: AnswerCache) -> Any:
    """Start the listener that keeps the answer cache honest (one connection, or one per cluster
    primary); None (cache off) without Redis or with size 0."""
    if connection is None or answers.capacity <= 0:
        return None
    from features.key_changes import listener_for

    listener = listener_for(connection, answers)
    listener.start()
    return listener


def _close(connection: Any) -> None:
    # the embedded redis-server is a daemon shared with the CLI: close our connections, leave it running
    with contextlib.suppress(Exception):
        connection.close()


def _load_experiments(settings: Settings) -> ExperimentRegistry | None:
    """The experiments file as a watched registry (None when none is configured); a bad file is refused."""
    path = settings.service.experiments_file
    if path is None:
        return None
    try:
        # never re-read on the request path: `_watch_experiments` stats the file and swaps configs
        return ExperimentRegistry.load(path, check_interval=float("inf"))
    except ExperimentConfigError as exc:
        raise ServiceConfigError(f"experiments (service.experiments_file): {exc}") from None


def _serving(watched: ExperimentRegistry) -> ExperimentRegistry:
    """A frozen copy of the watched registry's config for the request path (no file checks at all)."""
    return ExperimentRegistry(watched.config)


async def _watch_experiments(
    watched: ExperimentRegistry, manager: ModelManager, state: AppState, interval: float
) -> None:
    """Reload the experiments file when it changes: load the variants' models first, then put it in force."""
    while True:
        await asyncio.sleep(interval)
        try:
            changed = await asyncio.to_thread(watched.reload_if_changed)
            if not changed:
                if watched.last_error is not None and watched.last_error != state.extras.get(
                    "experiments_error"
                ):
                    state.metrics.experiments_reload_failures.inc()
                state.extras["experiments_error"] = watched.last_error
                continue
            state.extras["experiments_error"] = None
            manager.set_variant_refs(watched.models())
            await asyncio.to_thread(manager.check)
            state.experiments = _serving(watched)
            logger.info(
                "experiments in force",
                extra={
                    "experiments": [e.key for e in watched.experiments],
                    "variant_models": sorted(manager.variants),
                },
            )
        except Exception:  # a bug here must not stop the watcher (nor the service)
            logger.exception("experiments watcher crashed; retrying")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Keys are checked here (a refused configuration raises `ServiceConfigError` now);
    Redis and the model are opened by the lifespan, which never fails on them (see /readyz).

    Args:
        settings: settings to use (default: `get_settings()`).

    Returns:
        The app.
    """
    settings = settings or get_settings()
    apply_telemetry_choice(settings)  # the models are loaded through MLflow, however the app is started
    configure_logging()
    keys = KeyRing.from_settings(settings)
    watched = _load_experiments(settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn's access log would print every path and query in clear, student ids included; our
        # middleware logs requests by route template instead, however the app is launched
        logging.getLogger("uvicorn.access").disabled = True
        limit_native_threads(settings.service.native_threads)  # before the model loads its libraries
        serving_gc_thresholds()  # the heap is frozen after each model swap (`service.model_manager`)
        store, connection, why = await asyncio.to_thread(_connect_store, settings)
        supervisor = _supervise_embedded(settings)
        answers = AnswerCache(settings.service.answer_cache_size, settings.service.answer_cache_shapes)
        metrics.answer_cache_entries.set_function(lambda: len(answers))
        metrics.answer_cache_live.set_function(lambda: int(answers.enabled))
        listener = _listen_for_changes(connection, answers)
        reader = (
            AsyncReader.for_client(store.client, settings.redis.socket_timeout_ms / 1000.0)
            if store is not None
            else None
        )
        guarded = GuardedStore(store, metrics, unavailable=why, written=answers.invalidate, reader=reader)
        manager = ModelManager(
            settings.mlflow.registered_model, settings.service.model_alias, settings.tracking_uri(), metrics
        )
        if watched is not None:
            manager.set_variant_refs(watched.models())  # the first check loads them with the champion
        exposures = ExposureWriter(
            store.client if store is not None else None, metrics, shards=settings.redis.shards()
        )
        if reader is not None:
            exposures.start_on_loop(reader)  # through the request path's connection (`service.exposures`)
        else:
            exposures.start()
        hash_key = settings.service.log_hash_key
        app.state.learnrec = state = AppState(
            settings=settings,
            keys=keys,
            metrics=metrics,
            models=manager,
            store=guarded,
            hash_student=StudentHasher(hash_key.get_secret_value().encode("utf-8") if hash_key else None),
            experiments=_serving(watched) if watched is not None else ExperimentRegistry.empty(),
            exposures=exposures,
            answers=answers,
        )
        # a registry that hangs must not hold the port closed: after the wait the load goes on in the
        # background and the version is swapped in when it arrives (/readyz says when)
        first_load = asyncio.ensure_future(asyncio.to_thread(manager.check))
        await asyncio.wait({first_load}, timeout=STARTUP_LOAD_WAIT_SECONDS)
        if not first_load.done():
            logger.warning(
                "model still loading after %.0f s; serving 503 until it is in", STARTUP_LOAD_WAIT_SECONDS
            )
        elif manager.current is None:
            logger.warning("starting without a model: %s", manager.unavailable_reason())
        poller = None
        if settings.service.reload_poll_seconds > 0:
            poller = asyncio.create_task(manager.poll(settings.service.reload_poll_seconds))
        watcher = None
        if watched is not None:
            watcher = asyncio.create_task(
                _watch_experiments(watched, manager, state, EXPERIMENTS_CHECK_SECONDS)
            )
        logger.info(
            "service started",
            extra={
                "env": settings.env,
                "keys": keys.source,
                "model_version": manager.current.version if manager.current else None,
                "redis": store is not None,
                "experiments": [e.key for e in state.experiments.experiments],
                "variant_models": {ref: m.version for ref, m in manager.variants.items()},
                "native_threads": settings.service.native_threads or "library default",
            },
        )
        try:
            yield
        finally:
            for task in (poller, watcher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await exposures.aclose()  # last flush before the connection closes
            if reader is not None:
                reader.close()
            if listener is not None:
                await asyncio.to_thread(listener.close)
            if not first_load.done():
                first_load.cancel()  # the worker thread finishes on its own; nobody waits for it
            if supervisor is not None:
                await asyncio.to_thread(supervisor.close)
            if connection is not None:
                await asyncio.to_thread(_close, connection)

    app = FastAPI(
        title="learnrec",
        version="0.1.0",
        summary="Lecture recommendations for Seoul Learn (서울런) and partner regions.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: service.docs serves its own
        redoc_url=None,
    )
    app.add_middleware(RequestContext, metrics=metrics)

    @app.exception_handler(LearnrecError)
    async def learnrec_error(request: Request, exc: LearnrecError) -> JSONResponse:
        """Every domain error that reaches a route, by the status it carries (`models.errors`)."""
        if isinstance(exc, InvalidFieldError):
            detail: Any = [{"type": exc.kind, "loc": list(exc.loc), "msg": exc.detail}]
        elif isinstance(exc, ServiceError):
            detail = exc.detail
        else:
            detail = " ".join(str(exc).split())
        if exc.http_status >= 500:
            logger.error("request failed: %s", detail, extra={"error": type(exc).__name__})
        headers = {"WWW-Authenticate": "APIKey"} if exc.http_status == 401 else None
        return JSONResponse({"detail": detail}, status_code=exc.http_status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:
            # FastAPI answers a body it cannot parse with a bare 400; malformed input is a 422 saying why
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": unreadable_body(exc.__cause__)}]
            return JSONResponse({"detail": detail}, status_code=422)
        if exc.status_code == 405:
            # Starlette names only the methods of the first route matching the path
            allowed = allowed_methods(app.openapi(), request.scope)
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"Allow": ", ".join([*allowed, "OPTIONS"])})
            return JSONResponse(
                {"detail": f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"},
                status_code=405,
                headers={"Allow": ", ".join(allowed)},
            )
        return await http_exception_handler(request, exc)

    # the hot route's router is added to the app's routes, first (`recommendations.DirectRoute`)
    app.router.routes[:0] = recommendations.router.routes
    for module in (events, students, admin, health):
        app.include_router(module.router)
    add_docs(app)

    served: dict[tuple[tuple[str, ...], tuple[str, ...]], dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        """The document, with the subjects and regions the service accepts now as enums (they follow the
        serving models and the configuration, so it is rebuilt when they change)."""
        base = base_openapi()
        state: AppState | None = getattr(app.state, "learnrec", None)
        if state is None:
            return base
        champion = state.models.current
        vocabulary = (tuple(champion.subjects) if champion else (), tuple(known_regions(state)))
        if vocabulary not in served:
            served.clear()
            served[vocabulary] = with_enums(base, *vocabulary)
        return served[vocabulary]

    def base_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            # POST /events reads its body item by item, so FastAPI does not see the model: add it
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (EventsIn, EventItem):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                model_schema.pop("$defs", None)
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def unreadable_body(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body, from the exception it wrapped in its bare 400."""
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not UTF-8 encoded JSON"
    if isinstance(cause, RecursionError):
        return "the body nests JSON too deeply to be read (events and profiles are flat objects)"
    return f"the body could not be read as JSON ({type(cause).__name__ if cause else 'unknown cause'})"


#: Operations an OpenAPI path item may hold (its other keys are parameters, summary, ...).
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def allowed_methods(document: dict[str, Any], scope: Scope) -> list[str]:
    """The methods served at the request's path, sorted: those of the route Starlette matched (it puts
    it in the scope) and of every operation the OpenAPI document has at that route's path."""
    route = scope.get("route")
    methods = {m.upper() for m in getattr(route, "methods", None) or ()}
    item = document.get("paths", {}).get(getattr(route, "path", None), {})
    methods.update(m.upper() for m in item if m in _HTTP_METHODS)
    return sorted(methods)


def with_enums(base: dict[str, Any], subjects: tuple[str, ...], regions: tuple[str, ...]) -> dict[str, Any]:
    """A copy of the OpenAPI document whose `subject` parameter and `StudentIn.region` list the values
    the service accepts now (unknown ones get a 422 naming them)."""
    import copy

    schema = copy.deepcopy(base)
    if subjects:
        for param in schema["paths"]["/recommendations"]["get"]["parameters"]:
            if param["name"] == "subject":
                param["schema"]["enum"] = list(subjects)
    region = schema["components"]["schemas"]["StudentIn"]["properties"]["region"]
    region["enum"] = list(regions)
    return schema
