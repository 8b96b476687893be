"""The interaction-weight rule: how a student's events on one lecture become one implicit-feedback weight.

This is the meaning of every interaction matrix the models are fitted on (`TrainingData.interactions`)
and of every history the ranking reads (`models.ranking.StudentState.history`), so it is declared once,
here, and used by the batch matrices (`features.matrices`), the Redis online state (`features.store`,
whose Lua script receives these constants) and its in-memory twin (`features.online_state`).

A pair weighs the furthest funnel stage reached (enrol 0.25 < progress 0.3 + 0.5 p < complete 1.0).
When the pair's latest event is a drop before completion, or it has only drops, it weighs `DROP_WEIGHT`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Event types in code order (``features.schemas.EVENT_TYPES`` is this tuple).
EVENT_TYPES: tuple[str, ...] = ("enrol", "progress", "complete", "drop")
#: Interaction weight of each funnel stage (progress adds `PROGRESS_SLOPE` * progress to its base).
STAGE_WEIGHT: dict[str, float] = {"enrol": 0.25, "progress": 0.3, "complete": 1.0}
PROGRESS_SLOPE = 0.5
#: Weight of a pair whose latest event is a drop before completion (still a weak interaction).
DROP_WEIGHT = 0.1
#: Weights at or below this mark a dropped lecture (the ranking continues no series from it).
DROPPED_AT_MOST = DROP_WEIGHT + 1e-6

#: Lectures kept in a student's recent list (latest enrolment last): the feature store's and every twin's.
RECENT_LEN = 20

ENROL, PROGRESS, COMPLETE, DROP = range(len(EVENT_TYPES))
_CODE = {t: i for i, t in enumerate(EVENT_TYPES)}


def stage_weights(
    type_codes: npt.NDArray[np.integer], progress: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Stage weight of each event (0 for a drop).

    Args:
        type_codes: index of each event's type in `EVENT_TYPES`.
        progress: each event's progress (read only for progress events; clipped to [0, 1]).

    Returns:
        float64 weights, one per event.
    """
    codes = np.asarray(type_codes)
    stage = np.zeros(codes.shape, dtype=np.float64)
    stage[codes == ENROL] = STAGE_WEIGHT["enrol"]
    is_progress = codes == PROGRESS
    stage[is_progress] = STAGE_WEIGHT["progress"] + PROGRESS_SLOPE * np.clip(
        np.asarray(progress, dtype=np.float64)[is_progress], 0.0, 1.0
    )
    stage[codes == COMPLETE] = STAGE_WEIGHT["complete"]
    return stage


def pair_weights(
    max_stage: npt.NDArray[np.floating], dropped: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Weight of each pair from its furthest stage and whether its latest event is a drop.

    Args:
        max_stage: the largest stage weight of the pair's events.
        dropped: the pair's latest event is a drop.

    Returns:
        float64 weights, one per pair.
    """
    weight = np.array(max_stage, dtype=np.float64, copy=True)
    weight[(weight <= 0) | (np.asarray(dropped, dtype=bool) & (weight < STAGE_WEIGHT["complete"]))] = (
        DROP_WEIGHT
    )
    return weight


def type_code(event_type: str) -> int:
    """Code of one event type (-1 when unknown)."""
    return _CODE.get(event_type, -1)


def stage_weight(event_type: str, progress: float) -> float:
    """`stage_weights` for one event."""
    return float(stage_weights(np.array([type_code(event_type)]), np.array([progress]))[0])


def pair_weight(max_stage: float, dropped: bool) -> float:
    """`pair_weights` for one pair."""
    return float(pair_weights(np.array([max_stage]), np.array([dropped]))[0])
