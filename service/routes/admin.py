"""Admin routes: model status and reload (admin keys only)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from models.ranking import RankingModel
from service.deps import AdminDep, StateDep
from service.model_manager import ModelManager
from service.schemas import ErrorOut, ModelRef, ModelStatusOut, ReloadOut, VariantModelOut

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    responses={
        401: {"model": ErrorOut, "description": "Missing or unknown API key."},
        403: {"model": ErrorOut, "description": "Not an admin key."},
    },
)


def model_ref(model: RankingModel | None) -> ModelRef | None:
    """The API's reference to a loaded version (None for none)."""
    if model is None:
        return None
    return ModelRef(name=model.model_name, version=model.version, alias=model.alias, run_id=model.run_id)


def variant_models(manager: ModelManager) -> list[VariantModelOut]:
    """The models of A/B experiment variants, by the reference the experiments name."""
    out = []
    for v in manager.variant_status():
        m = v.model
        out.append(
            VariantModelOut(
                ref=v.ref,
                name=manager.model_name,
                version=m.version if m else None,
                alias=m.alias if m else None,
                run_id=m.run_id if m else None,
                loaded_at=m.loaded_at if m else None,
                status=v.status,
                error=v.error,
            )
        )
    return out


@router.post("/reload", response_model=ReloadOut)
async def reload_model(state: StateDep, admin: AdminDep) -> ReloadOut:
    """Resolve the alias now; load and swap in its version if it moved (a failure keeps the old one)."""
    result = await asyncio.to_thread(state.models.check, force=True)
    return ReloadOut(
        changed=result.changed,
        serving=model_ref(result.serving),
        previous=model_ref(result.previous),
        error=result.error,
    )


@router.get("/model", response_model=ModelStatusOut)
async def model_status(state: StateDep, admin: AdminDep) -> ModelStatusOut:
    """What is serving, the alias followed, and the last load failure if any."""
    m = state.models
    current = m.current
    return ModelStatusOut(
        serving=model_ref(current),
        alias=m.alias,
        loaded_at=current.loaded_at if current else None,
        last_check=m.last_check,
        last_error=m.last_error,
        failed_version=m.failed_version,
        variants=variant_models(m),
    )
