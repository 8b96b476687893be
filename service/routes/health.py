"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.deps import StateDep
from service.routes.admin import model_ref, variant_models
from service.schemas import HealthOut, ReadyOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The process is alive (says nothing about Redis or the model)."""
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: no model loaded or Redis unreachable."}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """Ready to answer normally: a model version is loaded and Redis answers PING."""
    model = state.models.current
    redis_ok = await asyncio.to_thread(state.store.ping)
    missing = []
    if model is None:
        missing.append(state.models.unavailable_reason())
    if not redis_ok:
        missing.append("feature store (Redis) unreachable: recommendations are degraded, events refused")
    body = ReadyOut(
        ready=not missing,
        model_loaded=model is not None,
        redis=redis_ok,
        model=model_ref(model),
        detail="; ".join(missing) or None,
        variants=variant_models(state.models),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text."}
    },
)
async def metrics(state: StateDep) -> Response:
    """Prometheus metrics: latency per route, fallback/degraded counts, events, model version and reloads."""
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
