"""The simulation engine: in-process state vs the real feature store, reproducibility, A/A and A/B runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.ground_truth import GroundTruth
from features.online_state import OnlineState
from features.profile import StudentProfile
from features.schemas import EVENTS
from features.store import EventIn, FeatureStore
from features.synth import SynthConfig, generate
from models.base import Recommender, StudentBatch, TrainingData
from models.loading import LoadedModel
from training.errors import SimulationError
from training.simulate import (
    InProcessBackend,
    Population,
    SimConfig,
    Visiting,
    default_start,
    events_table,
    experiment_for,
    load_population,
    prepare_models,
    repeat_experiment,
    set_aside_previous_export,
    simulate,
)
from training.simulate.engine import visit_weights

REGIONS = ("gimpo", "taebaek")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset with its ground truth (330 students, 150 lectures; < 1 s)."""
    out = tmp_path_factory.mktemp("sim") / "synthetic"
    generate(SynthConfig(region_sizes={"seoul": 100, "gimpo": 150, "taebaek": 80}, lectures=150, seed=3), out)
    return out


@pytest.fixture(scope="module")
def population(dataset_dir: Path) -> Population:
    return load_population(dataset_dir, REGIONS)


@pytest.fixture(scope="module")
def training(dataset_dir: Path) -> tuple[TrainingData, Any]:
    from features.matrices import build_training_data
    from features.tables import read_dataset

    ds = read_dataset(dataset_dir)
    return build_training_data(ds.students, ds.lectures, ds.events), ds


def _loaded(model: Recommender, data: TrainingData, ds: Any, version: str) -> LoadedModel:
    from models.popularity import popular_lists
    from training.tracking import lectures_table

    return LoadedModel(
        model_name="sim-test", version=version, alias=None, run_id=None, recommender=model,
        lectures=lectures_table(ds.lectures), fallback=popular_lists(data),
    )  # fmt: skip


class TruthRecommender(Recommender):
    """Scores by the hidden truth (sign +1, an oracle) or against it (sign -1): a planted difference."""

    name = "truth"

    def __init__(self, truth: GroundTruth, data: TrainingData, sign: float) -> None:
        self.truth, self.sign = truth, sign
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names

    def fit(self, data: TrainingData) -> TruthRecommender:
        return self

    def score(self, batch: StudentBatch) -> Any:
        out = np.zeros((len(batch), len(self.catalogue.lectures)), dtype=np.float32)
        known = batch.index >= 0
        if known.any():
            ids = [self.students.ids[i] for i in batch.index[known]]
            out[known] = self.sign * self.truth.appeal(ids, list(self.catalogue.lectures.ids))
        return out

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path) -> TruthRecommender:
        raise NotImplementedError


@pytest.fixture(scope="module")
def models(training: tuple[TrainingData, Any], dataset_dir: Path) -> dict[str, Any]:
    from models import PopularityRecommender, SequenceRecommender

    data, ds = training
    truth = GroundTruth.load(dataset_dir)
    return prepare_models(
        {
            "sequence": _loaded(SequenceRecommender(seed=1).fit(data), data, ds, "1"),
            "popularity": _loaded(PopularityRecommender(seed=1).fit(data), data, ds, "2"),
            "oracle": _loaded(TruthRecommender(truth, data, 1.0), data, ds, "3"),
            "anti": _loaded(TruthRecommender(truth, data, -1.0), data, ds, "4"),
        }
    )


def _config(**kw: Any) -> SimConfig:
    base = {"regions": REGIONS, "days": 5, "students_per_day": 60, "seed": 11}
    return SimConfig(**{**base, **kw})


def _key(events: list[EventIn]) -> list[tuple[Any, ...]]:
    return [
        (e.event_id, e.student_id, e.lecture_id, e.type, e.progress, e.occurred_at, e.request_id)
        for e in events
    ]


# ----------------------------------------------------------------------------------------------------------
# the online state twin


def _events() -> Iterator[EventIn]:
    t = datetime(2025, 5, 1, 9, tzinfo=UTC)
    spec = [
        ("a", "L1", "enrol", 0.0, 0), ("a", "L1", "progress", 0.4, 10), ("a", "L2", "enrol", 0.0, 20),
        ("a", "L2", "drop", 0.0, 30),  # dropped before completion: 0.1
        ("a", "L3", "enrol", 0.0, 40), ("a", "L3", "complete", 1.0, 50), ("a", "L3", "drop", 0.0, 60),
        ("a", "L4", "enrol", 0.0, 70), ("a", "L1", "enrol", 0.0, 80),  # re-enrolment moves L1 to the end
        ("b", "L1", "progress", 0.7, 5), ("b", "L1", "drop", 0.0, 3),  # a late drop that is older: ignored
        ("b", "L5", "drop", 0.0, 7),  # a drop alone
    ]  # fmt: skip
    for i, (s, lec, kind, p, minutes) in enumerate(spec):
        yield EventIn(f"x{i}", s, lec, kind, p, t + timedelta(minutes=minutes))


def test_online_state_is_the_feature_store(redis_client: Any) -> None:
    """The in-process twin gives exactly the records the real Redis store gives, seed and events alike."""
    base = datetime(2025, 4, 1, tzinfo=UTC)
    seed_events = pd.DataFrame(
        {
            "event_id": ["s1", "s2", "s3", "s4", "s5"],
            "student_id": ["a", "a", "a", "b", "c"],
            "lecture_id": ["L9", "L9", "L8", "L9", "L7"],
            "type": ["enrol", "complete", "enrol", "progress", "drop"],
            "progress": [0.0, 1.0, 0.0, 0.35, 0.0],
            "occurred_at": [base + timedelta(hours=h) for h in (1, 2, 3, 4, 5)],
        }
    )
    profiles = [
        StudentProfile("a", "gimpo", "h1", "high", "수능", ("수학",)),
        StudentProfile("b", "taebaek", "m2"),
    ]
    store = FeatureStore(redis_client, recent_len=3)
    state = OnlineState(recent_len=3)
    store.seed_history(seed_events, profiles)
    state.seed(seed_events, profiles)
    events = list(_events())
    events.append(events[0])  # a retry: a duplicate
    assert state.apply(events) == store.apply_events(events)
    for sid in ("a", "b", "c", "nobody"):
        expected = store.read_student(sid)
        got = state.record(sid)
        assert got.history == expected.history, sid
        assert got.recent == expected.recent, sid
        assert got.profile == expected.profile, sid
    assert state.record("a").recent == ("L3", "L4", "L1")


def test_fork_is_independent(population: Population) -> None:
    sid = population.student_ids[0]
    before = population.state.record(sid)
    fork = population.state.fork()
    fork.apply([EventIn("f1", sid, "lec-new", "enrol", 0.0, datetime(2026, 3, 2, tzinfo=UTC))])
    assert "lec-new" in fork.record(sid).history
    assert population.state.record(sid) == before


def test_pair_probabilities_are_the_ground_truth(population: Population) -> None:
    truth = population.truth
    students = list(population.student_ids[:7])
    lectures = list(population.lecture_rows)[:5]
    enrol = truth.enrol_probability(students, lectures)
    complete = truth.complete_probability(students, lectures)
    s_rows = np.repeat(truth.student_rows(students), len(lectures))
    l_rows = np.tile(truth.lecture_rows(lectures), len(students))
    pe, pc = truth.pair_probabilities(s_rows, l_rows)
    np.testing.assert_allclose(pe.reshape(enrol.shape), enrol, rtol=1e-6)
    np.testing.assert_allclose(pc.reshape(complete.shape), complete, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# configuration


def test_default_start_follows_the_data_and_stays_in_the_past() -> None:
    now = datetime(2026, 11, 25, 8, tzinfo=UTC)
    start = default_start(datetime(2026, 2, 28, 14, 59, tzinfo=UTC), 14, now)
    assert start == datetime(2026, 2, 28, 15, tzinfo=UTC)  # 2026-03-01 00:00 KST
    late = default_start(datetime(2026, 11, 24, tzinfo=UTC), 14, now)
    assert late + timedelta(days=14) <= now
    assert (late + timedelta(hours=9)).hour == 0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"regions": ()}, "regions is empty"),
        ({"regions": ("Gimpo",)}, "lower-case"),
        ({"days": 0}, "days"),
        ({"k": 101}, "k must be"),
        ({"run": "bad name"}, "run name"),
        ({"start": datetime(2026, 1, 1)}, "timezone"),
        ({"visiting": "x"}, "visit mode"),
        ({"visiting": {"sigma": -1.0}}, "sigma"),
    ],
)
def test_config_refuses_bad_values(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        visiting = kw.pop("visiting", None)
        if isinstance(visiting, str):
            kw["visiting"] = Visiting(mode=visiting)
        elif visiting is not None:
            kw["visiting"] = Visiting(**visiting)
        _config(**kw)


def test_population_needs_students_of_the_regions(dataset_dir: Path) -> None:
    with pytest.raises(SimulationError, match=r"no student of region.*incheon"):
        load_population(dataset_dir, ["incheon"])


# ----------------------------------------------------------------------------------------------------------
# runs


def test_students_active_before_the_experiment_visit_more(
    population: Population, models: dict[str, Any]
) -> None:
    """The default visiting assumption: propensity persists, so pre-experiment activity predicts visits."""
    history = population.history
    assert history is not None
    counts = {}
    for mode in ("activity", "uniform"):
        config = _config(days=8, visiting=Visiting(mode=mode))
        backend = InProcessBackend(population.state.fork(), models, "sequence")
        simulate(config, population, backend)
        counts[mode] = pd.Series([x["student_id"] for x in backend.exposures]).value_counts()
    start = default_start(population.last_event, 8)
    frame = history.to_pandas()
    recent = frame.loc[frame["occurred_at"] >= pd.Timestamp(start) - pd.Timedelta(days=28), "student_id"]
    active = pd.Index(population.student_ids).isin(recent.unique())
    assert 5 <= active.sum() < len(population) - 5  # both kinds of student exist

    def visits_per_student(mode: str, mask: Any) -> float:
        return float(counts[mode].reindex(np.asarray(population.student_ids)[mask]).fillna(0).mean())

    ratio = {m: visits_per_student(m, active) / visits_per_student(m, ~active) for m in counts}
    assert ratio["activity"] > 1.5 * ratio["uniform"], ratio
    assert 0.6 < ratio["uniform"] < 1.6, ratio  # uniform: activity says nothing about visits
    assert visit_weights(_config(visiting=Visiting(mode="uniform")), population, start) is None
    weights = visit_weights(_config(), population, start)
    assert weights is not None and (weights > 0).all()
    assert np.array_equal(weights, visit_weights(_config(), population, start))  # seeded


def test_fast_path_is_reproducible(population: Population, models: dict[str, Any]) -> None:
    def run(seed: int) -> tuple[Any, InProcessBackend]:
        backend = InProcessBackend(population.state.fork(), models, "sequence")
        return simulate(_config(seed=seed), population, backend), backend

    first, b1 = run(11)
    again, b2 = run(11)
    other, _ = run(12)
    assert first.enrolments > 20 and first.completions > 0
    assert _key(first.events) == _key(again.events)
    assert b1.exposures == b2.exposures
    assert _key(first.events) != _key(other.events)
    # time order, the simulated clock, the request id of the list on every event
    times = [e.occurred_at for e in first.events]
    assert times == sorted(times)
    assert first.start <= times[0] and times[-1] < first.end
    shown = {x["request_id"] for x in b1.exposures}
    assert {e.request_id for e in first.events} <= shown
    assert len({e.event_id for e in first.events}) == len(first.events)
    assert first.posted.accepted == len(first.events) and first.posted.duplicates == 0
    # the events the analysis reads: the accepted ones as an Arrow table of the events schema
    table = b1.events_table()
    assert table.schema == EVENTS
    text_and_times = [n for n in EVENTS.names if n != "progress"]
    assert table.select(text_and_times).to_pylist() == [
        {name: getattr(e, name) for name in text_and_times} for e in first.events
    ]  # (times compared as instants)
    assert (
        table.column("progress").to_numpy().tolist()
        == np.float32([e.progress for e in first.events]).tolist()
    )


def test_events_table_keeps_korean_text_and_reads_times_as_utc() -> None:
    seoul = timezone(timedelta(hours=9))
    events = [
        EventIn("e1", "학생-1", "강의-국어", "enrol", 0.0, datetime(2025, 9, 1, 9, tzinfo=seoul), "r1"),
        EventIn("e2", "학생-1", "강의-국어", "complete", 1.0, datetime(2025, 9, 2, tzinfo=UTC)),
    ]
    table = events_table(events)
    assert table.column("student_id").to_pylist() == ["학생-1", "학생-1"]
    assert table.column("occurred_at").cast(pa.int64()).to_pylist() == [
        int(datetime(2025, 9, 1, tzinfo=UTC).timestamp() * 10**6),
        int(datetime(2025, 9, 2, tzinfo=UTC).timestamp() * 10**6),
    ]
    assert table.column("request_id").to_pylist() == ["r1", None]
    assert events_table([]).schema == EVENTS


def test_aa_arms_differ_only_by_assignment(population: Population, models: dict[str, Any]) -> None:
    """Identical variants give the outcomes the model gives alone: assignment itself changes nothing."""
    config = _config()
    start = default_start(population.last_event, config.days)
    config = replace(config, start=start)
    exp = experiment_for("aa", REGIONS, {"a1": 1.0, "a2": 1.0}, start, start + timedelta(days=config.days))
    same = {"sequence": models["sequence"], "a1": models["sequence"], "a2": models["sequence"]}
    with_experiment = InProcessBackend(population.state.fork(), same, "sequence", [exp])
    alone = InProcessBackend(population.state.fork(), same, "sequence")
    a = simulate(config, population, with_experiment)
    b = simulate(config, population, alone)
    assert _key(a.events) == _key(b.events)
    assert set(a.arms) == {"aa/a1", "aa/a2"} and set(b.arms) == {"-"}
    assert [x["lecture_ids"] for x in with_experiment.exposures] == [
        x["lecture_ids"] for x in alone.exposures
    ]


def test_aa_repetitions_show_no_systematic_difference(population: Population, models: dict[str, Any]) -> None:
    same = {"control": models["sequence"], "treatment": models["sequence"]}
    summary = repeat_experiment(population, same, {"control": 0.5, "treatment": 0.5}, _config(), 5)
    again = repeat_experiment(population, same, {"control": 0.5, "treatment": 0.5}, _config(), 2)
    assert again.rows == [r for r in summary.rows if r["rep"] < 2]  # deterministic given the seed
    pooled = summary.p_values("enrolment_rate", "pooled")
    assert len(pooled) == 5 and all(0 < p <= 1 for p in pooled)
    assert np.median(pooled) > 0.1  # not systematically small
    # each repetition re-randomises: the arms hold different students each time
    assert len({(r["control_students"], r["treatment_students"]) for r in summary.rows}) > 1
    assert all(not r["srm_mismatch"] for r in summary.rows)


def test_ab_detects_a_planted_difference(population: Population, models: dict[str, Any]) -> None:
    arms = {"control": models["anti"], "treatment": models["oracle"]}
    summary = repeat_experiment(population, arms, {"control": 0.5, "treatment": 0.5}, _config(), 2)
    pooled = [r for r in summary.rows if r["metric"] == "enrolment_rate" and r["region"] == "pooled"]
    assert len(pooled) == 4  # plain and CUPED per repetition
    for row in pooled:
        assert row["significant"] and row["abs_lift"] > 0.1, row
    rates = {(r["metric"], r["region"], r["method"]): r for r in summary.rates()}
    for method in ("plain", "cuped"):
        assert rates[("enrolment_rate", "pooled", method)]["significant_up"] == 1.0
        assert rates[("enrolment_rate", "gimpo", method)]["significant_up"] == 1.0  # the larger region alone
    assert rates[("enrolment_rate", "pooled", "plain")]["variance_reduction"] == 0.0


def test_daily_looks_read_the_primary_metric_every_simulated_day(
    population: Population, models: dict[str, Any]
) -> None:
    arms = {"control": models["anti"], "treatment": models["oracle"]}
    config = _config()
    summary = repeat_experiment(population, arms, {"control": 0.5, "treatment": 0.5}, config, 1, looks=True)
    days = sorted({r["day"] for r in summary.looks})
    assert days == list(range(1, config.days + 1))
    pooled = [r for r in summary.looks if r["region"] == "pooled" and r["method"] == "cuped"]
    students = [
        r["control_students"] + r["treatment_students"] for r in sorted(pooled, key=lambda r: r["day"])
    ]
    assert students == sorted(students) and students[0] < students[-1]  # the sample grows day by day
    looks = {(r["method"], r["region"]): r for r in summary.look_rates()}
    assert looks[("cuped", "pooled")]["sequential_ever"] == 1.0  # a planted difference is found
    assert looks[("cuped", "pooled")]["fixed_ever"] >= looks[("cuped", "pooled")]["sequential_ever"]


def test_backend_refuses_unknown_models(population: Population, models: dict[str, Any]) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    exp = experiment_for("x", REGIONS, {"a1": 1.0, "a2": 1.0}, start, start + timedelta(days=2))
    with pytest.raises(SimulationError, match=r"\['a1', 'a2'\]"):
        InProcessBackend(population.state.fork(), {"sequence": models["sequence"]}, "sequence", [exp])
    with pytest.raises(SimulationError, match="default model"):
        InProcessBackend(population.state.fork(), {"sequence": models["sequence"]}, "champion")


# ----------------------------------------------------------------------------------------------------------
# over real HTTP, against the real app


@dataclass
class HttpRun:
    """One `learnrec simulate --url` run against the live app, set up as `learnrec demo` sets it up."""

    settings: Any
    experiments: Path
    key: str
    export: Path
    report_path: Path
    report: dict[str, Any]
    output: str
    now: datetime
    groups_left: list[Any]


@pytest.fixture(scope="module")
def http_run(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[HttpRun]:
    """Train and register two models, set up the demo's challenger and experiment, serve, simulate 3 days."""
    import json

    from typer.testing import CliRunner

    from features.redis_server import connect
    from features.settings import Settings
    from service.main import create_app
    from tests.service.live import LiveServer
    from tests.training.modelling_data import mlflow_store
    from training.cli import app as cli
    from training.commands.demo import register_challenger, write_experiment
    from training.commands.feature_store import seed_dataset
    from training.commands.modelling import _client

    tmp_path = tmp_path_factory.mktemp("http")
    redis_client = redis_server.client()
    redis_client.flushall()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNREC_REDIS__URL", redis_server.url)  # before the settings are read (and cached)
        with mlflow_store(tmp_path) as settings:
            dataset = settings.datasets_dir / "synthetic"
            generate(
                SynthConfig(region_sizes={"seoul": 60, "gimpo": 90, "taebaek": 40}, lectures=120, seed=5),
                dataset,
            )
            runner = CliRunner()
            trained = runner.invoke(
                cli, ["train", "-m", "sequence", "-m", "popularity", "--register", "--no-oracle"]
            )
            assert trained.exit_code == 0, trained.output
            mlflow = _client(settings)
            name = settings.mlflow.registered_model
            champion = str(mlflow.get_registered_model(name).aliases["champion"])
            challenger, model, moved = register_challenger(settings, mlflow, champion)
            assert moved and challenger != champion
            assert register_challenger(settings, mlflow, champion) == (challenger, model, False)  # kept
            seed_dataset(dataset, redis_client)
            now = datetime.now(UTC)
            experiment = write_experiment(
                settings.data_dir / "experiments.yaml",
                champion,
                challenger,
                "popularity",
                now - timedelta(hours=1),
            )
            service = Settings(
                data_dir=settings.data_dir, redis={"url": redis_server.url},
                mlflow={"tracking_uri": settings.tracking_uri(), "registered_model": name},
                service={"experiments_file": experiment.path, "reload_poll_seconds": 0},
            )  # fmt: skip
            with LiveServer(create_app(service)) as live:
                args = ["simulate", "--url", live.url, "--api-key", "dev-portal-key", "--days", "3",
                        "--students-per-day", "40", "--run", "httptest", "--seed", "3",
                        "--experiments", str(experiment.path)]  # fmt: skip
                result = runner.invoke(cli, args)
            assert result.exit_code == 0, result.output
            assert "A/B report" in result.output, result.output
            groups = connect(settings, bulk=True).xinfo_groups(b"lr:stream:events")
            report = settings.data_dir / "reports" / f"ab-{experiment.key}-httptest.json"
            yield HttpRun(
                settings, experiment.path, experiment.key, settings.data_dir / "exports" / "httptest",
                report, json.loads(report.read_text("utf-8")), result.output, now, groups,
            )  # fmt: skip
    redis_client.close()


@pytest.mark.slow
def test_http_run_flows_through_the_service_and_its_streams(http_run: HttpRun) -> None:
    """The CLI drives the live app: profiles, lists, events; the streams' export holds the run; a report."""
    from features.experiments import load_experiments
    from models.loading import load_registered

    settings, key, now = http_run.settings, http_run.key, http_run.now
    assert f"{key}/champion" in http_run.output and f"{key}/challenger" in http_run.output
    events = pd.read_parquet(http_run.export / "events")
    exposures = pd.read_parquet(http_run.export / "exposures")
    assert len(exposures) == 3 * 40
    assert set(exposures["experiment"]) == {key}
    assert set(events["event_id"].str.split(".").str[1]) == {"httptest"}
    assert events["request_id"].isin(set(exposures["request_id"])).all()
    # one clock: every exposure at its visit's simulated time, before the events it led to (not wall time)
    shown = exposures.set_index("request_id")["shown_at"]
    enrols = events[events["type"] == "enrol"]
    assert (shown.loc[enrols["request_id"]].to_numpy() <= enrols["occurred_at"].to_numpy()).all()
    assert shown.max() - shown.min() > pd.Timedelta(days=1)  # 3 simulated days, not seconds of wall time
    assert (events["occurred_at"] < pd.Timestamp(now) - timedelta(days=1)).all()  # simulated time
    assert http_run.report["inputs"]["exposures"] == 3 * 40
    # the report reads the run on its simulated clock: its window is the simulated three days (the
    # configured window is wall-clock, and it says so), and each daily look ends a simulated day
    sim_start = default_start(load_population(settings.datasets_dir / "synthetic", REGIONS).last_event, 3)
    window = http_run.report["experiment"]
    assert (window["start"], window["end"]) == (
        sim_start.isoformat(),
        (sim_start + timedelta(days=3)).isoformat(),
    )
    assert http_run.report["inputs"]["clock"].startswith("simulated; the service's configured window")
    looks = sorted({row["at"] for row in http_run.report["looks"]})
    assert [pd.Timestamp(at) for at in looks] == [
        pd.Timestamp(sim_start + timedelta(days=d)) for d in (1, 2, 3)
    ]
    # the in-process fast path is the same service: same seed, same lists, same events
    dataset = settings.datasets_dir / "synthetic"
    pop = load_population(dataset, REGIONS)
    start = default_start(pop.last_event, 3)
    exp = load_experiments(http_run.experiments).experiments[0]
    exp = exp.model_copy(update={"start": start, "end": start + timedelta(days=3)})
    uri, name = settings.tracking_uri(), settings.mlflow.registered_model
    loaded = {ref: load_registered(name, ref, uri) for ref in ("champion", "challenger")}
    backend = InProcessBackend(pop.state.fork(), prepare_models(loaded), "champion", [exp])
    fast = simulate(SimConfig(REGIONS, days=3, students_per_day=40, seed=3, run="httptest"), pop, backend)
    assert {(e.event_id, e.occurred_at) for e in fast.events} == set(
        zip(events["event_id"], events["occurred_at"].dt.to_pydatetime(), strict=True)
    )
    shown = {r["request_id"]: list(r["lecture_ids"]) for r in backend.exposures}
    assert shown == {r.request_id: list(r.lecture_ids) for r in exposures.itertuples()}
    # the run's consumer groups are gone: they must not hold back stream trimming
    assert all(g["name"] != b"simulate-httptest" for g in http_run.groups_left)


def _readme_recipe() -> str:
    """The README's "Recomputing a report" code block (the one that reads the Parquet files)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text("utf-8")
    section = readme.split("## Recomputing a report", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n", 1)[1] for b in section.split("```")[1::2] if b.startswith("python")]
    return next(b for b in blocks if "read_parquet" in b)


@pytest.mark.slow
def test_report_is_recomputable_from_the_parquet_exports(
    http_run: HttpRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's pandas recipe, run on the exported Parquet, gives every count and value of the report."""
    report = http_run.report
    space: dict[str, Any] = {"EXPORT": http_run.export, "KEY": http_run.key, "REPORT": http_run.report_path}
    exec(compile(_readme_recipe(), "README.md", "exec"), space)  # the documented recipe, as documented
    arms, students = space["arms"], space["students"]
    assert "pooled: lift" in capsys.readouterr().out
    assert report["inputs"]["exposures"] == len(space["ex"]) == 3 * 40
    assert report["inputs"]["students"] == space["ex"]["student_id"].nunique()
    assert report["inputs"]["attributed_enrolments"] == len(space["enrolled"]) > 0
    assert report["inputs"]["attributed_completions"] == len(space["completed"]) > 0
    assert report["data_quality"]["mixed_variant_students"] == 0
    columns = {  # metric -> (numerator column, denominator column) of the recomputed arms
        "enrolment_rate": ("enrolled", "students"),
        "completion_rate": ("completed", "students"),
        "enrolments_per_student": ("enrolments", "students"),
        "completions_per_student": ("completions", "students"),
        "completion_per_enrolment": ("completions", "enrolments"),
    }
    checked = 0
    for c in report["comparisons"]:
        num, den = columns[c["metric"]]
        if c["region"] == "pooled":
            both = arms.groupby("variant").sum()  # pooled rows: crude sums over the regions
            for side in ("control", "treatment"):
                row = both.loc[c[side]["variant"]]
                assert (c[side]["students"], c[side]["exposures"]) == (row["students"], row["exposures"])
                assert (c[side]["numerator"], c[side]["denominator"]) == (row[num], row[den])
            if den == "students":  # the pooled value: Mantel-Haenszel-weighted over the regions
                per = arms[num] / arms[den]
                n = arms["students"].unstack("variant")
                t, k = c["treatment"]["variant"], c["control"]["variant"]
                w = n[t] * n[k] / (n[t] + n[k])
                for side, v in (("treatment", t), ("control", k)):
                    value = (w * per.xs(v, level="variant")).sum() / w.sum()
                    assert c[side]["value"] == pytest.approx(value, rel=1e-12)
                assert c["estimate"]["abs_lift"] == pytest.approx(
                    c["treatment"]["value"] - c["control"]["value"], rel=1e-12, abs=1e-15
                )
            checked += 1
            continue
        for side in ("control", "treatment"):
            key = (c["region"], c[side]["variant"])
            row = arms.loc[key] if key in arms.index else None
            got = (0, 0, 0.0, 0.0) if row is None else (row["students"], row["exposures"], row[num], row[den])
            assert (
                c[side]["students"],
                c[side]["exposures"],
                c[side]["numerator"],
                c[side]["denominator"],
            ) == got
            if row is not None and row[den]:
                assert c[side]["value"] == pytest.approx(row[num] / row[den], rel=1e-12)
        checked += 1
    assert checked == len(columns) * (len(REGIONS) + 1)
    # the per-region tests of the primary metric and of the rate, recomputed with SciPy alone
    from scipy import stats as sps

    for c in report["comparisons"]:
        if c["region"] == "pooled" or c["metric"] not in ("enrolments_per_student", "enrolment_rate"):
            continue
        g = students.loc[students["region"] == c["region"]]
        t = g.loc[g["variant"] == c["treatment"]["variant"], "enrolments"]
        k = g.loc[g["variant"] == c["control"]["variant"], "enrolments"]
        if c["metric"] == "enrolments_per_student":
            p = sps.ttest_ind(t, k, equal_var=False).pvalue
        elif c["estimate"]["test"] == "fisher":
            p = sps.fisher_exact([[(t > 0).sum(), (t == 0).sum()], [(k > 0).sum(), (k == 0).sum()]]).pvalue
        else:  # pooled two-proportion z-test
            x, n = (t > 0).sum() + (k > 0).sum(), len(t) + len(k)
            se = np.sqrt(x / n * (1 - x / n) * (1 / len(t) + 1 / len(k)))
            p = 2 * sps.norm.sf(abs((t > 0).mean() - (k > 0).mean()) / se)
        assert c["estimate"]["p_value"] == pytest.approx(p, rel=1e-9)


@pytest.mark.slow
def test_ab_report_on_the_export_reads_the_run_clock(
    http_run: HttpRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`learnrec ab report` on a simulated run's export (computed again later, from the files alone) gives the
    simulated window and daily looks, as the report the run wrote did: the export records its clock."""
    import json

    from typer.testing import CliRunner

    from features.settings import get_settings
    from training.cli import app as cli

    assert json.loads((http_run.export / "clock.json").read_text("utf-8"))["clock"] == "simulated"
    monkeypatch.setenv("LEARNREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    out = tmp_path / "again.html"
    args = ["ab", "report", "--exposures", str(http_run.export / "exposures"),
            "--events", str(http_run.export / "events"), "--experiment", http_run.key,
            "--experiments", str(http_run.experiments), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    again = json.loads(out.with_suffix(".json").read_text("utf-8"))
    assert again["experiment"]["start"] == http_run.report["experiment"]["start"]
    assert again["experiment"]["end"] == http_run.report["experiment"]["end"]
    assert again["inputs"]["clock"] == http_run.report["inputs"]["clock"]
    assert [r["at"] for r in again["looks"]] == [r["at"] for r in http_run.report["looks"]]


def test_a_rerun_sets_the_earlier_export_aside(tmp_path: Path) -> None:
    out = tmp_path / "exports" / "demo"
    assert set_aside_previous_export(out) is None  # nothing there yet
    (out / "events").mkdir(parents=True)
    (out / "events" / "part-1.parquet").write_bytes(b"first run")
    when = datetime(2026, 11, 25, 11, 30, tzinfo=UTC)
    aside = set_aside_previous_export(out, now=when)
    assert aside == tmp_path / "exports" / "demo.before-20261125T113000"
    assert (aside / "events" / "part-1.parquet").read_bytes() == b"first run"  # kept, not deleted
    assert not out.exists()  # the new run starts from an empty directory
    (out / "events").mkdir(parents=True)
    (out / "events" / "part-1.parquet").write_bytes(b"second run")
    second = set_aside_previous_export(out, now=when)  # same second: a distinct name
    assert second == tmp_path / "exports" / "demo.before-20261125T113000-2"
    assert (second / "events" / "part-1.parquet").read_bytes() == b"second run"
