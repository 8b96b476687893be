"""Quality suite: NDCG@10 and recall@10 of every model on data unlike the generator as well as on it.

Models and generator were tuned together, so the default synthetic data alone proves little. The suite
scores every model the way `learnrec train` does (hyper-parameters, blend fallback and champion chosen
on validation carved from the training side, `training.selection`; the test split is scored once) on:

* ``synthetic``: the default generator's data (at the suite's size);
* ``no_series``: the same events, but every lecture its own series (no series metadata);
* ``heavy_popularity``: each (student, lecture) pair kept with probability sqrt(takers / most takers),
  so the popular lectures dominate the log;
* ``sparse``: each student's first three lectures only;
* ``shuffled_time``: within each student, the pairs' start times permuted (order carries nothing);
* ``oulad``: the Open University Learning Analytics Dataset (`features.oulad`, CC BY 4.0);
* any ``--events FILE``, imported as `learnrec data import` does.

Each dataset is split temporally (the 0.8 quantile of event times, the default 14-day horizon; every
later event when the horizon leaves fewer than `MIN_TEST_STUDENTS` test students; each student's last
lecture when even that leaves too few, as on OULAD). Beside learnrec's
models a reference row, ``lightfm_direct``: `lightfm.LightFM(loss="warp", learning_rate=0.05)` (its other
arguments LightFM's defaults: 10 components, no regularisation) fitted 10 epochs on the binary training
matrix without side features (LightFM's own example settings). Every model, the reference too, is scored
twice: its served list (`models.ranking`, the table's figures) and its raw ranking (scores, eligibility,
top-k). The check "lightfm at or above LightFM used directly" compares the raw rankings (the model
against the library, without the serving rules both share); the served difference is reported beside it.
Each dataset runs in its own process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from models.base import Recommender, StudentBatch, TrainingData
from training.benchmarks.runner import (
    BenchOptions,
    ItemFn,
    Progress,
    SuiteResult,
    checkpoint,
    describe,
    run_item,
    skipped,
)

if TYPE_CHECKING:
    from features.tables import Dataset
    from training.splits import Split

SUITE = "quality"
#: The generator's habits each variant breaks, in the order of the table.
VARIANTS: tuple[str, ...] = ("no_series", "heavy_popularity", "sparse", "shuffled_time")
#: Test students below which the temporal split widens its horizon to every later event (then takes each
#: student's last lecture). The suite's checks claim differences of 0.01 (and 0.005) in NDCG@10 between
#: models; the paired per-student difference of two models has a standard deviation of about 0.15, so a
#: test resolves 0.01 at two standard errors only from (2 x 0.15 / 0.01)^2 = 900 students, about 1,000
#: (at 200, a 20,000-student `sparse` test of 288 students missed by 0.014 with a standard error of 0.008).
MIN_TEST_STUDENTS = 1000
#: Lectures kept per student by the ``sparse`` variant.
SPARSE_LECTURES = 3
#: Default time budget of the search on validation, per dataset (seconds).
QUALITY_BUDGET_SECONDS = 300.0
KS = (10,)
REFERENCE = "lightfm_direct"


class LightFMDirect(Recommender):
    """LightFM used directly: the reference learnrec's `lightfm` must not fall below (DESIGN.md).

    `lightfm.LightFM(loss="warp", learning_rate=0.05)` (its other arguments at LightFM's defaults) fitted
    `epochs` times on the binary student x lecture matrix, no side features, no sample weights. A
    student it never saw gets the lecture biases. Not a served model: it cannot be saved.

    Args:
        seed: random state of LightFM (one thread, reproducible).
        epochs: passes over the interactions.
    """

    name: ClassVar[str] = REFERENCE

    def __init__(self, *, seed: int = 42, epochs: int = 10) -> None:
        self.seed = seed
        self.epochs = epochs
        self._users: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._items: npt.NDArray[np.float32] = np.zeros((0, 0), np.float32)
        self._item_bias: npt.NDArray[np.float32] = np.zeros(0, np.float32)

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed, "epochs": self.epochs}

    def fit(self, data: TrainingData) -> Self:
        import scipy.sparse as sp
        from lightfm import LightFM

        binary = sp.coo_matrix(data.interactions, dtype=np.float32)
        keep = binary.data > 0
        ones = sp.coo_matrix(
            (np.ones(int(keep.sum()), np.float32), (binary.row[keep], binary.col[keep])), shape=binary.shape
        )
        model = LightFM(loss="warp", learning_rate=0.05, random_state=np.random.RandomState(self.seed))
        model.fit(ones, epochs=self.epochs, num_threads=1)
        self._users = np.hstack([model.user_embeddings, model.user_biases[:, None]]).astype(np.float32)
        self._items = np.hstack([model.item_embeddings, np.ones((ones.shape[1], 1))]).astype(np.float32)
        self._item_bias = np.asarray(model.item_biases, dtype=np.float32)
        self._catalogue, self._students = data.catalogue, data.students
        self._student_feature_names = data.student_feature_names
        return self

    def score(self, batch: StudentBatch) -> npt.NDArray[np.float32]:
        _ = self.catalogue
        index = np.asarray(batch.index, dtype=np.int64)
        state = np.zeros((len(batch), self._users.shape[1]), dtype=np.float32)
        known = index >= 0
        state[known] = self._users[index[known]]
        out: npt.NDArray[np.float32] = state @ self._items.T + self._item_bias
        return out

    def save(self, directory: Path) -> None:
        raise NotImplementedError("lightfm_direct is a benchmark reference, not a served model")

    @classmethod
    def load(cls, directory: Path) -> Self:
        raise NotImplementedError("lightfm_direct is a benchmark reference, not a served model")


# ------------------------------------------------------------------------------------------------------
# datasets


def variant(ds: Dataset, name: str, seed: int = 42) -> Dataset:
    """`ds` with one habit of the generator broken (see the module docstring for each `name`).

    Args:
        ds: the dataset.
        name: one of `VARIANTS`.
        seed: seed of the random variants.

    Returns:
        A new dataset (the input is not modified).
    """
    import pandas as pd

    from features.tables import Dataset, sort_events

    rng = np.random.default_rng(seed)
    # (a bench's variant of a 43k-student log, written as pandas groupbys: the frame is made here)
    events, lectures = ds.events.to_pandas(), ds.lectures
    pair = events["student_id"].astype(str) + "\x1f" + events["lecture_id"].astype(str)
    if name == "no_series":
        lectures = lectures.assign(series_id=lectures["lecture_id"].astype(str), series_position=1)
    elif name == "heavy_popularity":
        takers = events.groupby("lecture_id")["student_id"].nunique()
        p = np.sqrt(takers / takers.max())
        pairs = pair.drop_duplicates()
        kept = pairs[rng.random(len(pairs)) < events.loc[pairs.index, "lecture_id"].map(p).to_numpy()]
        events = events[pair.isin(set(kept))]
    elif name == "sparse":
        times = pd.to_datetime(events["occurred_at"], utc=True)
        first = times.groupby(pair).min().sort_values(kind="stable")
        owner = pd.Series(first.index.str.split("\x1f").str[0], index=first.index)
        rank = pd.Series(np.arange(len(first)), index=first.index).groupby(owner).rank(method="first")
        events = events[pair.isin(set(rank[rank <= SPARSE_LECTURES].index))]
    elif name == "shuffled_time":
        times = pd.to_datetime(events["occurred_at"], utc=True)
        first = times.groupby(pair).min()
        student = pd.Series(first.index.str.split("\x1f").str[0], index=first.index)
        shuffled = first.copy()
        for _, idx in student.groupby(student).groups.items():
            shuffled[idx] = first[idx].to_numpy()[rng.permutation(len(idx))]
        shift = (shuffled - first).reindex(pair.to_numpy()).to_numpy()
        events = events.assign(occurred_at=times + shift)
    else:
        raise ValueError(f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}")
    events = sort_events(events.reset_index(drop=True))
    return Dataset(ds.students, lectures, events, {**ds.manifest, "variant": name})


def _load(params: Mapping[str, Any]) -> Dataset:
    from features.tables import read_dataset

    kind, source = params["kind"], Path(params["source"])
    if kind == "synthetic":
        ds = read_dataset(source, validate=False)
        return variant(ds, params["variant"], int(params["seed"])) if params.get("variant") else ds
    if kind == "oulad":
        from features.oulad import load_oulad

        return load_oulad(source)[0]
    from features.event_files import load_event_files

    return load_event_files(source)


def quality_split(ds: Dataset) -> Split:
    """The suite's split: temporal at the 0.8 quantile and a 14-day horizon; with too few test students an
    unbounded horizon, then each student's last lecture (leave_last_n)."""
    from training import splits
    from training.errors import SplitError

    makers: tuple[Callable[[], Split], ...] = (
        lambda: splits.temporal(ds),
        lambda: splits.temporal(ds, horizon_days=None),
        # OULAD: few students start another module after any global cutoff; their last one is the test
        lambda: splits.leave_last_n(ds, 1),
    )
    for make in makers:
        try:
            split = make()
        except SplitError:
            continue
        if len(split.test_students) >= MIN_TEST_STUDENTS:
            return split
    return splits.temporal(ds, horizon_days=None)


def _dataset(params: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
    """Select on validation, fit the chosen models, score them on the test split, and the reference."""
    from features.matrices import build_training_data
    from models import MODELS, get_model_class
    from training.evaluate import evaluate
    from training.selection import select

    seed = int(params.get("seed", 42))
    ds = _load(params)
    split = quality_split(ds)
    data = build_training_data(
        split.train.students, split.train.lectures, split.train.events, as_of=split.as_of
    )
    facts: dict[str, Any] = {
        **ds.sizes,
        "split": dict(split.params),
        "test_students": len(split.test_students),
        "relevant_pairs": len(split.relevant),
    }
    names = list(params.get("models") or MODELS)
    progress("validation", 0, 1)
    budget = float(params.get("budget_seconds", QUALITY_BUDGET_SECONDS))
    selection = select(
        names, split, ks=KS, seed=seed, budget_seconds=budget, on_step=lambda line: progress(line, 0, 0)
    )
    facts.update(
        champion=selection.champion,
        selection=selection.summary(),
        validation=selection.validation,
        notes=[c.note for c in selection.choices.values() if c.note],
    )
    rows: dict[str, dict[str, Any]] = {}
    fingerprint = f"quality-{params['label']}"
    for i, name in enumerate([*names, REFERENCE]):
        progress(f"test: {name}", i, len(names) + 1)
        if name == REFERENCE:
            model: Recommender = LightFMDirect(seed=seed).fit(data)
            chosen: dict[str, Any] = {"epochs": 10}
        else:
            choice = selection.choices.get(name)
            chosen = dict(choice.params) if choice else {}
            model = get_model_class(name)(seed=seed, **chosen).fit(data)  # type: ignore[call-arg]
        report = evaluate(model, split, ds, KS, fingerprint=fingerprint)
        choice = selection.choices.get(name)
        rows[name] = {
            "ndcg": report.overall["ndcg_at_10"],
            "recall": report.overall["recall_at_10"],
            "raw_ndcg": report.raw.get("ndcg_at_10"),
            "raw_recall": report.raw.get("recall_at_10"),
            "validation": None if choice is None else choice.value,
            "params": {k: v for k, v in chosen.items() if k != "component_params"},
        }
        checkpoint({**facts, "models": rows})
    return {**facts, "models": rows}


#: Items the runner can start in a child process.
ITEMS: dict[str, ItemFn] = {"dataset": _dataset}


def _oulad_dir() -> Path | None:
    from training.commands.data import default_oulad_source

    path = default_oulad_source()
    return path if path.is_dir() else None


def run(opts: BenchOptions) -> SuiteResult:
    """Every dataset of the suite, each in its own process; the table of NDCG@10 and recall@10.

    Args:
        opts: size of the synthetic data, extra event files, budget, scratch directory, printer.

    Returns:
        One row per dataset; `summary` holds the checks of issue 12 per dataset.
    """
    from training.benchmarks.data_bench import ensure_dataset

    result = SuiteResult(SUITE, opts.size_label)
    synthetic, prep = ensure_dataset(opts)
    if prep is not None:
        result.items.append(prep)
    jobs: list[tuple[str, dict[str, Any]]] = []
    if prep is None or prep.ok:
        jobs.append(("synthetic", {"kind": "synthetic", "source": str(synthetic)}))
        jobs += [(v, {"kind": "synthetic", "source": str(synthetic), "variant": v}) for v in VARIANTS]
    oulad = _oulad_dir()
    if oulad is not None:
        jobs.append(("oulad", {"kind": "oulad", "source": str(oulad)}))
    else:
        result.items.append(
            skipped(SUITE, "oulad", "the OULAD files were not found (../shared/datasets/oulad)")
        )
    jobs += [(f"events:{Path(f).name}", {"kind": "events", "source": str(f)}) for f in opts.events or ()]
    for label, params in jobs:
        full = {**params, "label": label, "seed": opts.seed, "budget_seconds": opts.select_budget_s}
        if opts.models:
            full["models"] = list(opts.models)
        opts.say(f"  {label} ...")
        row = run_item(
            SUITE, "dataset", full, budget_s=opts.budget_s, memory_budget=opts.memory_budget, label=label
        )
        opts.say(describe(row))
        for line in _row_lines(row.metrics):
            opts.say(f"    {line}")
        result.items.append(row)
        if row.ok:
            result.summary[label] = checks(row.metrics)
    result.notes.append(
        "Per dataset: temporal split (0.8 quantile of event times, 14-day horizon; every later event when "
        f"that leaves fewer than {MIN_TEST_STUDENTS} test students, then leave-last-one); "
        "hyper-parameters, the blend's fallback and the champion chosen on a validation split carved from "
        f"the training side (`training.selection`, search budget {opts.select_budget_s:g} s); each chosen "
        "model fitted on the training side and scored once on the test students, training lectures "
        "excluded; figures of the served list (models.ranking). lightfm_direct: "
        'lightfm.LightFM(loss="warp", learning_rate=0.05) (otherwise LightFM defaults: 10 components, no '
        "regularisation), 10 epochs on the binary matrix, no side features (reference); the lightfm check "
        "compares raw rankings (model against library, no serving rules), the served difference beside it."
    )
    return result


def checks(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Issue 12's checks on one dataset's row: lightfm vs direct, blend vs its best component, champion.

    lightfm against LightFM used directly compares the raw rankings (``raw_ndcg``; the served lists when
    a row has no raw figure), so the serving rules both lists share do not blur the model against the
    library; the served difference is kept as ``lightfm_minus_direct_served``. The blend and champion
    checks read the served figures, what students are shown.

    Returns:
        The figures and booleans (``lightfm_ok``, ``blend_ok``, ``champion_ok``).
    """
    rows: Mapping[str, Mapping[str, Any]] = metrics.get("models", {})
    ndcg = {m: float(r["ndcg"]) for m, r in rows.items()}
    raw = {m: float(r["ndcg"] if r.get("raw_ndcg") is None else r["raw_ndcg"]) for m, r in rows.items()}
    out: dict[str, Any] = {}
    if "lightfm" in ndcg and REFERENCE in ndcg:
        out["lightfm_minus_direct"] = raw["lightfm"] - raw[REFERENCE]
        out["lightfm_minus_direct_served"] = ndcg["lightfm"] - ndcg[REFERENCE]
        out["lightfm_ok"] = out["lightfm_minus_direct"] >= 0
    if "blend" in ndcg:
        from models.blend import DEFAULT_COMPONENTS

        components = [c for c in DEFAULT_COMPONENTS if c in ndcg]
        if components:
            out["blend_minus_best_component"] = ndcg["blend"] - max(ndcg[c] for c in components)
            out["blend_ok"] = out["blend_minus_best_component"] >= -0.005
    champion = metrics.get("champion")
    learnrec = {m: v for m, v in ndcg.items() if m != REFERENCE}
    if champion in learnrec:
        out["champion_gap"] = max(learnrec.values()) - learnrec[champion]
        out["champion_ok"] = out["champion_gap"] <= 0.01
    return out


def _row_lines(metrics: Mapping[str, Any]) -> list[str]:
    rows = metrics.get("models", {})
    if not rows:
        return []
    cells = ", ".join(f"{m} {r['ndcg']:.3f}" for m, r in rows.items())
    return [f"ndcg@10: {cells}; champion {metrics.get('champion')}", *metrics.get("notes", [])]
