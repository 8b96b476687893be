"""Admin routes: model status and reload (admin keys only)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from service.deps import AdminDep, StateDep
from service.ranking import RankingModel
from service.schemas import ErrorOut, ModelRef, ModelStatusOut, ReloadOut

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses={
        401: {"model": ErrorOut, "description": "Missing or unknown API key."},
        403: {"model": ErrorOut, "description": "Not an admin key."},
    },
)


def _ref(model: RankingModel | None) -> ModelRef | None:
    if model is None:
        return None
    return ModelRef(name=model.model_name, version=model.version, alias=model.alias, run_id=model.run_id)


@router.post("/reload", response_model=ReloadOut)
async def reload_model(state: StateDep, admin: AdminDep) -> ReloadOut:
    """Resolve the alias now; load and swap in its version if it moved (a failure keeps the old one)."""
    result = await asyncio.to_thread(state.models.check, force=True)
    return ReloadOut(
        changed=result.changed,
        serving=_ref(result.serving),
        previous=_ref(result.previous),
        error=result.error,
    )


@router.get("/model", response_model=ModelStatusOut)
async def model_status(state: StateDep, admin: AdminDep) -> ModelStatusOut:
    """What is serving, the alias followed, and the last load failure if any."""
    m = state.models
    return ModelStatusOut(
        serving=_ref(m.current),
        alias=m.alias,
        last_check=m.last_check,
        last_error=m.last_error,
        failed_version=m.failed_version,
    )
