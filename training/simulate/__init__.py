"""Synthetic students who use the recommendation service, to prove the A/B loop end to end.

A simulation runs on a simulated clock of `SimConfig.days` days. Each day `students_per_day` students of
the chosen regions (drawn from a synthetic dataset's students) visit once, at an hour drawn from the
platform's hour-of-day profile, fetch a list of `k` lectures, and react to it with the generator's hidden
truth (`features.ground_truth`). Who visits is an assumption (`Visiting`): by default a student's
propensity to visit persists (weighted by their recent activity in the dataset and an unobserved
heavy-tailed factor), so students active before the experiment come back more often; ``uniform`` draws
every student alike. Then:

* a student looks at position p with probability ``1 / log2(p + 1)`` (the DCG discount) and enrols in a
  lecture looked at with `GroundTruth` enrol probability, so the chance to enrol at position p is
  ``enrol_probability * 1 / log2(p + 1)``;
* an enrolled lecture is completed with the `GroundTruth` completion probability, after a lognormal delay
  (median 2 days); on the way the student reports progress; a student who does not complete often reports
  some progress and sometimes drops the lecture;
* events carry the simulated time as ``occurred_at`` and the ``request_id`` of the list they follow, so
  outcomes are attributed to exposures by request id (exposures are stamped with the service's wall
  time, which a simulated clock cannot match).

Events are sent when the simulated clock reaches them: at the start of each day, everything that happened
before it; events after the last day are never sent (they have not happened yet, ``censored``).

Every random draw comes from a generator seeded by (seed, student, day) or (seed, day), with a fixed
layout of draws per visit: the same seed gives the same visits, times, event ids and, for the same
lists, the same reactions, whatever the concurrency or the experiment arm (common random numbers: two arms
showing the same list get the same outcome, so an A/A experiment differs only by assignment).

The package, along its parts: `config` (the clock, behaviour, settings), `population` (who may
visit), `engine` (`simulate`), `in_process` and `http` (the backends), `export` (the streams of an HTTP
run to Parquet) and `analysis` (a run's report, repeated runs).

Two backends run the same engine:

* `HttpBackend`: the running service over real HTTP (``GET /recommendations``, ``POST /events``,
  ``PUT /students/{id}``); exposures and events flow through the service's Redis streams;
* `InProcessBackend`: no HTTP, for repeated runs (`repeat_experiment`): the service's own ranking
  (`models.ranking.RankingModel`, prepared from registered or fitted recommenders), the service's
  assignment (`features.experiments.ExperimentRegistry`), the exposure wire format
  (`features.experiments.exposure_fields` decoded by `training.ab.exposures.from_stream_fields`), and
  `OnlineState`, an in-process twin of the feature store's per-student state (same weights, drop rule and
  recent list as the Lua script of `features.store`; a test checks it against a real Redis). Attribution
  and statistics are `training.ab.attribution.attribute` and `training.ab.stats.analyse`.
"""

from training.simulate.analysis import (
    REPEAT_COLUMNS,
    RepeatSummary,
    analyse_run,
    experiment_for,
    prepare_models,
    repeat_experiment,
)
from training.simulate.config import POST_BATCH, Behaviour, Progress, SimConfig, Visiting, default_start
from training.simulate.engine import ArmCounts, Backend, PostSummary, Shown, SimResult, Visit, simulate
from training.simulate.export import (
    RunExport,
    export_run,
    mark_streams,
    set_aside_previous_export,
    stream_group,
)
from training.simulate.http import HttpBackend
from training.simulate.in_process import InProcessBackend, events_table
from training.simulate.population import Population, load_population

__all__ = [
    "POST_BATCH",
    "REPEAT_COLUMNS",
    "ArmCounts",
    "Backend",
    "Behaviour",
    "HttpBackend",
    "InProcessBackend",
    "Population",
    "PostSummary",
    "Progress",
    "RepeatSummary",
    "RunExport",
    "Shown",
    "SimConfig",
    "SimResult",
    "Visit",
    "Visiting",
    "analyse_run",
    "default_start",
    "events_table",
    "experiment_for",
    "export_run",
    "load_population",
    "mark_streams",
    "prepare_models",
    "repeat_experiment",
    "set_aside_previous_export",
    "simulate",
    "stream_group",
]
