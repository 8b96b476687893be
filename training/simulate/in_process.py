"""The in-process backend: the service's ranking, assignment and exposure format without HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from features.online_state import OnlineState
from features.store import EventIn
from training.errors import SimulationError
from training.simulate.engine import PostSummary, Shown, Visit

if TYPE_CHECKING:
    import pyarrow as pa

    from features.experiments import ExperimentConfig
    from models.ranking import RankingModel


class InProcessBackend:
    """The service's answer computed in process, with an `OnlineState` standing in for Redis.

    Args:
        state: the online state (use `OnlineState.fork` of the population's state).
        models: prepared models by reference: the references experiment variants name (``champion``,
            ``challenger``, a version number, or any alias-like name).
        default: reference served to students in no experiment.
        experiments: the experiments in force (assignment uses the simulated time), or None.
    """

    def __init__(
        self,
        state: OnlineState,
        models: Mapping[str, RankingModel],
        default: str,
        experiments: Sequence[ExperimentConfig] = (),
    ) -> None:
        from features.experiments import ExperimentRegistry, ExperimentsFile

        if default not in models:
            raise SimulationError(f"default model {default!r} is not among the models {sorted(models)}")
        self.state = state
        self.models = dict(models)
        self.default = default
        self.registry = ExperimentRegistry(ExperimentsFile(experiments=tuple(experiments)))
        missing = sorted(self.registry.models() - set(self.models))
        if missing:
            raise SimulationError(f"experiment variants name models {missing} that were not loaded")
        self.exposures: list[dict[str, object]] = []
        self.accepted: list[EventIn] = []

    def recommend(self, visits: Sequence[Visit], k: int) -> list[Shown]:
        """Assign, rank and log an exposure per visit, as the service's route does."""
        from features.experiments import exposure_fields
        from training.ab.exposures import from_stream_fields

        out = []
        for v in visits:
            record = self.state.record(v.student_id)
            region = record.profile.region if record.profile is not None else v.region
            assignment = self.registry.assign(v.student_id, region, now=v.at)
            model = self.models[assignment.model if assignment else self.default]
            ranked = model.rank(v.student_id, record, k)
            ids = model.catalogue.lectures.ids
            lecture_ids = tuple(ids[r] for r in ranked.rows)
            fields = exposure_fields(
                v.request_id, v.student_id, region, assignment, model.version, lecture_ids, v.at
            )
            self.exposures.append(from_stream_fields(fields))
            out.append(
                Shown(
                    request_id=v.request_id,
                    lecture_ids=lecture_ids,
                    experiment=assignment.experiment if assignment else None,
                    variant=assignment.variant if assignment else None,
                    model_version=model.version,
                )
            )
        return out

    def post_events(self, events: Sequence[EventIn]) -> PostSummary:
        """Apply events to the online state (idempotent by event id)."""
        outcomes = self.state.apply(events)
        self.accepted.extend(e for e, o in zip(events, outcomes, strict=True) if o == "accepted")
        return PostSummary(
            accepted=outcomes.count("accepted"),
            duplicates=outcomes.count("duplicate"),
            rejected=outcomes.count("conflict"),
        )

    def exposures_table(self) -> pa.Table:
        """The exposures logged so far (`training.ab.exposures.EXPOSURES`; lists stay Arrow lists)."""
        from training.ab.exposures import records_to_table

        return records_to_table(self.exposures)

    def events_table(self) -> pa.Table:
        """The events applied so far (`features.schemas.EVENTS`)."""
        return events_table(self.accepted)


def events_table(events: Sequence[EventIn]) -> pa.Table:
    """Events as an Arrow table of `features.schemas.EVENTS` (times UTC), one column at a time.

    Args:
        events: the events.

    Returns:
        The table.
    """
    import pyarrow as pa

    from features.schemas import EVENTS

    columns = {
        name: pa.array([getattr(e, name) for e in events], EVENTS.field(name).type) for name in EVENTS.names
    }
    return pa.table(columns, schema=EVENTS)
