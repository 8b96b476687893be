"""Offline evaluation of a fitted recommender (or the ground-truth oracle) on a split, overall and per group.

The primary figures score the **served list**: each test student's state is what the feature store
would hold at the split's cutoff (`features.online_state.OnlineState` seeded with their training events
and profile; none for new students and new regions), and the list is the one `GET /recommendations`
would return for it (`models.ranking.RankingModel.rank_many`: eligibility, series-continuation slots,
the model's scores, popularity fallbacks). Its top max(ks) lectures are compared with the student's
relevant lectures.

**Equity.** The same figures per support category (`features.schemas.SUPPORT_CATEGORIES`; OULAD: the
deprivation band), per region and per grade, and per group what share of the served top-k slots goes to
each subject and each lecture level (`EvaluationReport.slots`, ``equity.csv`` beside the report): a model
can score well overall and still show the students with the least support fewer, or easier, lectures.

The model's **raw ranking** (its scores, then eligibility and top-k, without the serving rules) is
reported beside them as `EvaluationReport.raw` (``raw/`` metrics in MLflow), labelled as such. The
oracle has no served form: its figures are its raw ranking. `student_values` gives both per student
(model selection weighs leads against their noise with them).

Size: over 600 lines because the served and raw lists, the per-group figures and the report they fill
are one contract (what is measured is what is served); split apart, the report would re-derive the
lists' students and order.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.errors import NumericalError
from training.errors import EvaluationError
from training.metrics import METRICS, ItemStats, grouped, metric_key, per_student, self_information, summarise

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from features.tables import Dataset
    from models.base import Catalogue, Recommender, StudentBatch, TrainingData
    from models.ranking import RankingModel
    from training.splits import Split

#: Students scored per batch (bounds memory: batch x n_lectures float32 scores).
BATCH_SIZE = 1024
#: Name of the ground-truth oracle in reports and MLflow.
ORACLE = "oracle"
#: Directory of a synthetic dataset holding the generator's ground truth.
GROUND_TRUTH_DIR = "ground_truth"

#: `progress(done, total)` callback.
Progress = Callable[[int, int], None]
#: `score(student_ids, batch) -> (b, n_lectures)` scores.
Scorer = Callable[[list[str], "StudentBatch"], npt.NDArray[np.float32]]
BatchBuilder = Callable[["pd.DataFrame", "pa.Table"], "StudentBatch"]


@dataclass
class EvaluationReport:
    """What one model achieved on one split.

    Attributes:
        model: model (registry) name, or "oracle".
        split: split name.
        ks: cut-offs evaluated, the primary one first.
        n_students: test students scored.
        overall: metric key (``ndcg_at_10``) -> value.
        by_region: region -> metric key -> value.
        by_grade: grade -> metric key -> value.
        n_by_region / n_by_grade: test students per group.
        by_support / n_by_support: the same per support category (``unknown`` when not given).
        slots: attribute (``all``, ``support_category``, ``region``, ``grade``) -> group -> ``subject`` or
            ``level`` -> value -> share of the filled top-k slots (primary k) of the served lists.
        split_params: the split's parameters.
        dataset_fingerprint: fingerprint of the dataset evaluated on.
        seconds: wall time of the evaluation.
        raw: the model's raw ranking (scores, eligibility, top-k; no serving rules), overall.
        ranking: what `overall` scores: "served" (the API's list) or "raw" (the oracle).
    """

    model: str
    split: str
    ks: tuple[int, ...]
    n_students: int
    overall: dict[str, float]
    by_region: dict[str, dict[str, float]]
    by_grade: dict[str, dict[str, float]]
    n_by_region: dict[str, int] = field(default_factory=dict)
    n_by_grade: dict[str, int] = field(default_factory=dict)
    split_params: dict[str, Any] = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    seconds: float = 0.0
    raw: dict[str, float] = field(default_factory=dict)
    ranking: str = "served"
    by_support: dict[str, dict[str, float]] = field(default_factory=dict)
    n_by_support: dict[str, int] = field(default_factory=dict)
    slots: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)

    def groups(self) -> dict[str, tuple[dict[str, dict[str, float]], dict[str, int]]]:
        """Attribute -> (group -> metric key -> value, group -> test students)."""
        return {
            "support_category": (self.by_support, self.n_by_support),
            "region": (self.by_region, self.n_by_region),
            "grade": (self.by_grade, self.n_by_grade),
        }

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: ``ndcg_at_10``, ``ndcg_at_10/region/seoul``, ``ndcg_at_10/grade/h1``,
        ``ndcg_at_10/support/basic_livelihood`` (characters MLflow refuses, such as ``%``, spelled out)."""
        out = dict(self.overall)
        for kind, groups in (
            ("region", self.by_region),
            ("grade", self.by_grade),
            ("support", self.by_support),
        ):
            for group, values in groups.items():
                out.update({f"{key}/{kind}/{metric_group(group)}": v for key, v in values.items()})
        out.update({f"raw/{key}": v for key, v in self.raw.items()})
        out["n_test_students"] = float(self.n_students)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        d = asdict(self)
        d["ks"] = list(self.ks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationReport:
        """Inverse of `to_dict` (reports written before `raw` existed read back as served-only)."""
        return cls(**{**d, "ks": tuple(d["ks"])})

    def to_json(self) -> str:
        """UTF-8 JSON text (indented, Korean kept as is)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2, sort_keys=True)

    def equity_rows(self) -> list[dict[str, Any]]:
        """One row per (attribute, group): students, the primary-k metrics and the slot shares.

        Columns: ``attribute``, ``group``, ``students``, the metric keys at the primary k, then
        ``subject:<name>`` and ``level:<n>`` shares of the group's filled top-k slots.
        """
        k = self.ks[0]
        keys = [metric_key(m, k) for m in METRICS if metric_key(m, k) in self.overall]
        subjects = sorted({s for a in self.slots.values() for g in a.values() for s in g.get("subject", {})})
        levels = sorted({s for a in self.slots.values() for g in a.values() for s in g.get("level", {})})
        rows: list[dict[str, Any]] = []
        every = {"all": ({"all": self.overall}, {"all": self.n_students}), **self.groups()}
        for attribute, (values, counts) in every.items():
            for group, metrics in values.items():
                shares = self.slots.get(attribute, {}).get(group, {})
                row: dict[str, Any] = {
                    "attribute": attribute,
                    "group": group,
                    "students": counts.get(group, 0),
                }
                row.update({key: metrics.get(key, float("nan")) for key in keys})
                row.update({f"subject:{s}": shares.get("subject", {}).get(s, 0.0) for s in subjects})
                row.update({f"level:{v}": shares.get("level", {}).get(v, 0.0) for v in levels})
                rows.append(row)
        return rows

    def to_html(self) -> str:
        """A small self-contained HTML page: overall, per support category, region and grade; slot shares."""
        k = self.ks[0]
        keys = [metric_key(m, kk) for kk in self.ks for m in METRICS]
        keys = [key for key in keys if key in self.overall]

        def table(title: str, rows: dict[str, dict[str, float]], counts: dict[str, int]) -> str:
            head = "".join(f"<th>{html.escape(key)}</th>" for key in keys)
            body = "".join(
                f"<tr><th>{html.escape(name)}</th><td>{counts.get(name, '')}</td>"
                + "".join(f"<td>{values.get(key, float('nan')):.4f}</td>" for key in keys)
                + "</tr>"
                for name, values in rows.items()
            )
            return (
                f"<h2>{html.escape(title)}</h2><table><tr><th></th><th>students</th>{head}</tr>{body}</table>"
            )

        ndcg = self.overall.get(metric_key("ndcg", k), 0.0)
        params = ", ".join(
            f"{html.escape(str(a))}={html.escape(str(b))}" for a, b in self.split_params.items()
        )
        return (
            "<!doctype html><html lang='ko'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.model)} / {html.escape(self.split)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(self.model)}: ndcg@{k} = {ndcg:.4f}</h1>"
            f"<p>split <b>{html.escape(self.split)}</b> ({params}); {self.n_students} test students; "
            f"dataset {html.escape((self.dataset_fingerprint or '?')[:12])}; {self.seconds:.1f} s</p>"
            + table(f"Overall ({self.ranking} list)", {"all": self.overall}, {"all": self.n_students})
            + (
                table(
                    "The model's raw ranking (no serving rules)", {"all": self.raw}, {"all": self.n_students}
                )
                if self.raw
                else ""
            )
            + table("Per support category", self.by_support, self.n_by_support)
            + table("Per region", self.by_region, self.n_by_region)
            + table("Per grade", self.by_grade, self.n_by_grade)
            + self._slots_html()
            + "</body></html>"
        )

    def _slots_html(self) -> str:
        rows = self.equity_rows()
        shares = [c for c in (rows[0] if rows else {}) if c.startswith(("subject:", "level:"))]
        if not shares:
            return ""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in shares)
        body = "".join(
            f"<tr><th>{html.escape(r['attribute'])}</th><th>{html.escape(r['group'])}</th><td>{r['students']}</td>"
            + "".join(f"<td>{r[c]:.1%}</td>" for c in shares)
            + "</tr>"
            for r in rows
        )
        return (
            f"<h2>Share of the top-{self.ks[0]} slots per subject and level, per group</h2>"
            f"<table><tr><th></th><th>group</th><th>students</th>{head}</tr>{body}</table>"
        )

    def write(self, directory: Path) -> tuple[Path, Path]:
        """Write `report.json`, `report.html` and `equity.csv` (`equity_rows`) into `directory`.

        Returns:
            The JSON and HTML paths.
        """
        import csv

        directory.mkdir(parents=True, exist_ok=True)
        js, page = directory / "report.json", directory / "report.html"
        js.write_text(self.to_json() + "\n", encoding="utf-8")
        page.write_text(self.to_html(), encoding="utf-8")
        rows = self.equity_rows()
        with (directory / "equity.csv").open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["attribute", "group"])
            writer.writeheader()
            writer.writerows(rows)
        return js, page


def metric_group(group: str) -> str:
    """A group label as MLflow accepts it in a metric name (``0-10%`` -> ``0-10pct``; others -> ``_``)."""
    import re

    return re.sub(r"[^0-9A-Za-z_\-. ]", "_", group.replace("%", "pct"))


def slot_shares(
    recs: npt.NDArray[np.int32],
    labels: Mapping[str, Sequence[str]],
    subject: Sequence[str],
    level: Sequence[str],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per attribute and group, the share of the filled list slots going to each subject and level.

    Args:
        recs: (n, k) lecture rows of the lists scored (-1 = an empty slot, not counted).
        labels: attribute -> (n,) group label per student.
        subject: subject name per lecture row.
        level: level (as text) per lecture row.

    Returns:
        attribute -> group -> ``subject``/``level`` -> value -> share (each sums to 1 over a group's
        filled slots); plus ``all`` -> ``all`` for every student.
    """
    filled = recs >= 0
    rows = recs[filled]
    owner = np.nonzero(filled)[0]
    subj = np.asarray(subject, dtype=object)[rows] if rows.size else np.zeros(0, dtype=object)
    lev = np.asarray(level, dtype=object)[rows] if rows.size else np.zeros(0, dtype=object)

    def shares(mask: npt.NDArray[np.bool_]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, values in (("subject", subj[mask]), ("level", lev[mask])):
            kinds, counts = np.unique(values.astype(str), return_counts=True)
            total = counts.sum()
            out[name] = (
                {str(v): float(c / total) for v, c in zip(kinds, counts, strict=True)} if total else {}
            )
        return out

    result = {"all": {"all": shares(np.ones(owner.size, dtype=bool))}}
    for attribute, group_of in labels.items():
        slot_label = np.asarray(group_of, dtype=object)[owner]
        result[attribute] = {g: shares(slot_label == g) for g in sorted(set(map(str, group_of)))}
    return result


def item_stats(catalogue: Catalogue, train_events: pa.Table) -> ItemStats:
    """Lecture popularity (distinct training students) as self-information, subjects, active count.

    Counted on integer codes: the (lecture, student) pairs of the events as a sparse matrix, whose
    construction drops repeats, so no event's id becomes text.

    Args:
        catalogue: the model's catalogue (row order of the recommendations).
        train_events: the split's training events.

    Returns:
        The statistics for novelty, diversity and coverage.
    """
    from features.ids import positions, text_codes

    student, distinct = text_codes(train_events["student_id"])
    lecture = positions(catalogue.lectures.ids, train_events["lecture_id"])
    known = (student >= 0) & (lecture >= 0)
    pairs = sp.csr_matrix(
        (np.ones(int(known.sum()), dtype=np.bool_), (lecture[known].astype(np.int32), student[known])),
        shape=(len(catalogue.lectures), max(distinct.size, 1)),
    )
    counts = np.diff(pairs.indptr)
    n_users = int(np.count_nonzero(np.bincount(student[student >= 0], minlength=distinct.size)))
    return ItemStats(
        information=self_information(counts, n_users),
        subject=catalogue.subject.astype(np.int32),
        n_candidates=int(catalogue.active.sum()),
    )


def _relevant_matrix(split: Split, students: Sequence[str], catalogue: Catalogue) -> sp.csr_matrix:
    from features.ids import positions

    rel = split.relevant
    rows = positions(students, rel["student_id"])
    cols = positions(catalogue.lectures.ids, rel["lecture_id"])
    keep = (rows >= 0) & (cols >= 0)
    return sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
        shape=(len(students), len(catalogue.lectures)),
    )


def _profiles(dataset: Dataset, ids: Sequence[str]) -> pd.DataFrame:
    """The students table rows of `ids` in that order (a student missing from it gets only an id)."""
    table = dataset.students.assign(student_id=dataset.students["student_id"].astype(str))
    frame = table.set_index("student_id").reindex(list(ids))
    frame.index.name = "student_id"
    return frame.reset_index()


#: `lists(start, stop, profiles, history) -> (stop - start, k) lecture rows` (-1 pads) of a batch.
Lister = Callable[[int, int, "pd.DataFrame", "pa.Table"], npt.NDArray[np.int32]]


def _raw_lister(
    name: str, students: list[str], catalogue: Catalogue, build: BatchBuilder, score: Scorer, k: int
) -> Lister:
    """The raw ranking: scores, then eligibility (`models.eligibility`) and top-k."""
    from models.eligibility import eligible_mask, top_k

    def lists(start: int, stop: int, profiles: pd.DataFrame, history: pa.Table) -> npt.NDArray[np.int32]:
        batch = build(profiles, history)
        scores = np.asarray(score(students[start:stop], batch), dtype=np.float32)
        finite = np.isfinite(scores).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise NumericalError(
                f"{name} scored NaN or infinity for {bad.size} of {scores.shape[0]} students "
                f"(first: {students[start + int(bad[0])]}); nothing was logged - check the model's "
                "hyper-parameters (a lower learning rate, more regularisation)"
            )
        mask = eligible_mask(catalogue, batch.region, batch.grade, batch.history)
        rows, _ = top_k(scores, mask, k)
        return rows

    return lists


def _served_lister(ranker: RankingModel, students: list[str], k: int) -> Lister:
    """The served list: the state the feature store would hold, ranked by `RankingModel.rank_many`."""
    from features.online_state import OnlineState
    from features.profile import from_table

    def lists(start: int, stop: int, profiles: pd.DataFrame, history: pa.Table) -> npt.NDArray[np.int32]:
        state = OnlineState()
        state.seed(history, from_table(profiles[profiles["region"].notna() & profiles["grade"].notna()]))
        ids = students[start:stop]
        ranked = ranker.rank_many(ids, [state.record(s) for s in ids], k)
        failed = [(sid, r.model_error) for sid, r in zip(ids, ranked, strict=True) if r.model_error]
        if failed:
            # served, these students would get popularity lists; evaluated, the model must not pass
            what = (
                "scored NaN or infinity"
                if all("non-finite" in str(e) for _, e in failed)
                else "could not score"
            )
            raise NumericalError(
                f"{ranker.recommender.name} {what} for {len(failed)} of {len(ids)} students "
                f"(first: {failed[0][0]}: {failed[0][1]}); nothing was logged - check the model's "
                "hyper-parameters (a lower learning rate, more regularisation)"
            )
        out = np.full((len(ids), k), -1, dtype=np.int32)
        for i, r in enumerate(ranked):
            out[i, : len(r.rows)] = r.rows
        return out

    return lists


def _inputs(
    split: Split, dataset: Dataset, students: list[str]
) -> tuple[pd.DataFrame, pa.Table, npt.NDArray[np.int64]]:
    """The students' profiles (in order), their training events grouped by student, each event's student."""
    from features.event_table import take_rows
    from features.ids import positions

    profiles = _profiles(dataset, students)
    history = split.train.events
    codes = positions(students, history["student_id"])
    mine = np.flatnonzero(codes >= 0)
    order = mine[np.argsort(codes[mine], kind="stable")]
    return profiles, take_rows(history, order), codes[order]


def served_lists(
    ranker: RankingModel, split: Split, dataset: Dataset, students: Sequence[str], k: int
) -> dict[str, list[str]]:
    """The lecture ids the evaluation scores for `students` (the served lists at the split's cutoff).

    Args:
        ranker: the model as served.
        split: the split.
        dataset: the full dataset.
        students: test students.
        k: list length.

    Returns:
        student_id -> lecture ids, best first.
    """
    ids = [str(s) for s in students]
    profiles, history, _ = _inputs(split, dataset, ids)
    rows = _served_lister(ranker, ids, k)(0, len(ids), profiles, history)
    lectures = ranker.catalogue.lectures.ids
    return {sid: [lectures[r] for r in row if r >= 0] for sid, row in zip(ids, rows.tolist(), strict=True)}


def _lists(
    name: str,
    split: Split,
    dataset: Dataset,
    catalogue: Catalogue,
    listers: Mapping[str, Callable[[list[str], int], Lister]],
    k: int,
    batch_size: int,
    progress: Progress | None,
) -> tuple[list[str], sp.csr_matrix, pd.DataFrame, dict[str, npt.NDArray[np.int32]]]:
    """Each lister's top-k lists of the test students with a relevant lecture in the catalogue.

    Returns:
        (those students, their relevant matrix, their profiles, lister kind -> (students, k) rows).
    """
    students = list(split.test_students)
    relevant = _relevant_matrix(split, students, catalogue)
    has_relevant = np.diff(relevant.indptr) > 0
    if not has_relevant.all():
        # relevant lectures missing from the model's catalogue cannot be found: leave those students out
        students = [s for s, keep in zip(students, has_relevant, strict=True) if keep]
        relevant = relevant[has_relevant]
    if not students:
        raise EvaluationError(
            f"{name} on {split.name}: no test student has a relevant lecture in the catalogue"
        )
    profiles, history, codes = _inputs(split, dataset, students)
    built = {kind: make(students, k) for kind, make in listers.items()}
    recs = {kind: np.full((len(students), k), -1, dtype=np.int32) for kind in built}
    for start in range(0, len(students), batch_size):
        stop = min(start + batch_size, len(students))
        lo, hi = np.searchsorted(codes, [start, stop])
        for kind, lists in built.items():
            recs[kind][start:stop] = lists(start, stop, profiles.iloc[start:stop], history.slice(lo, hi - lo))
        if progress:
            progress(stop, len(students))
    return students, relevant, profiles, recs


def _run(
    name: str,
    split: Split,
    dataset: Dataset,
    catalogue: Catalogue,
    listers: Mapping[str, Callable[[list[str], int], Lister]],
    ks: Sequence[int],
    batch_size: int,
    progress: Progress | None,
    fingerprint: str | None,
) -> EvaluationReport:
    """Score the lists of each lister ("served" or "raw"; the first is the report's primary figures)."""
    started = time.perf_counter()
    ks = tuple(dict.fromkeys(int(k) for k in ks))  # the first stays first: it is the primary cut-off
    if not ks or min(ks) < 1:
        raise EvaluationError(f"cut-offs must be >= 1, got {ks}")
    students, relevant, profiles, recs = _lists(
        name, split, dataset, catalogue, listers, max(ks), batch_size, progress
    )
    items = item_stats(catalogue, split.train.events)
    regions = profiles["region"].astype(str).where(profiles["region"].notna(), "unknown").tolist()
    grades = profiles["grade"].astype(str).where(profiles["grade"].notna(), "unknown").tolist()
    supports = (
        profiles["support_category"]
        .astype(str)
        .where(profiles["support_category"].notna(), "unknown")
        .tolist()
        if "support_category" in profiles.columns
        else ["unknown"] * len(students)
    )
    primary, *others = recs
    overall: dict[str, float] = {}
    by_region: dict[str, dict[str, float]] = {}
    by_grade: dict[str, dict[str, float]] = {}
    by_support: dict[str, dict[str, float]] = {}
    raw: dict[str, float] = {}
    for k in ks:
        values = per_student(recs[primary], relevant, k, items)
        overall.update(summarise(values, recs[primary], k, items.n_candidates))
        for target, labels in ((by_region, regions), (by_grade, grades), (by_support, supports)):
            for group, metrics in grouped(values, recs[primary], k, items.n_candidates, labels).items():
                target.setdefault(group, {}).update(metrics)
        for kind in others:
            raw.update(
                summarise(per_student(recs[kind], relevant, k, items), recs[kind], k, items.n_candidates)
            )
    if fingerprint is None:
        fingerprint = dataset.recorded_fingerprint() or dataset.fingerprint()
    levels = (
        dataset.lectures.set_index(dataset.lectures["lecture_id"].astype(str))["level"]
        .reindex(list(catalogue.lectures.ids))
        .astype("object")
    )
    slots = slot_shares(
        recs[primary][:, : ks[0]],
        {"support_category": supports, "region": regions, "grade": grades},
        [catalogue.subjects[s] for s in catalogue.subject.tolist()],
        ["unknown" if v is None or v != v else str(v) for v in levels.tolist()],
    )
    return EvaluationReport(
        model=name,
        split=split.name,
        ks=ks,
        n_students=len(students),
        overall=overall,
        by_region=by_region,
        by_grade=by_grade,
        n_by_region={r: regions.count(r) for r in by_region},
        n_by_grade={g: grades.count(g) for g in by_grade},
        split_params=dict(split.params),
        dataset_fingerprint=fingerprint,
        seconds=time.perf_counter() - started,
        raw=raw,
        ranking=primary,
        by_support=by_support,
        n_by_support={g: supports.count(g) for g in by_support},
        slots=slots,
    )


def evaluate(
    model: Recommender | RankingModel,
    split: Split,
    dataset: Dataset,
    ks: Sequence[int] = (10,),
    *,
    data: TrainingData | None = None,
    raw: bool = True,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    fingerprint: str | None = None,
) -> EvaluationReport:
    """Evaluate the served lists of a model fitted on `split.train` on the split's test students.

    Training-set lectures are excluded from each list (they are in the student's history), so the
    metrics measure what the model adds.

    Args:
        model: a recommender fitted on the split's training data, or a model prepared for serving
            (`RankingModel`, e.g. a registered version with its own popularity lists).
        split: the split.
        dataset: the full dataset (profiles of the test students, also of held-out ones; its manifest's
            fingerprint is recorded).
        ks: cut-offs.
        data: the split's training data (the popularity fallbacks of a bare recommender are computed
            from it; built from `split.train` when not given).
        raw: also score the model's raw ranking (`EvaluationReport.raw`).
        batch_size: students ranked at once.
        progress: optional `progress(done, total)` callback.
        fingerprint: the dataset's fingerprint when known (else the manifest's, else computed).

    Returns:
        The report.

    Raises:
        NumericalError: the model scored NaN or infinity (before anything is logged).
        EvaluationError: nothing to evaluate.
    """
    ranker, listers = _model_listers(model, split, data, raw)
    rec = ranker.recommender
    return _run(rec.name, split, dataset, rec.catalogue, listers, ks, batch_size, progress, fingerprint)


def student_values(
    model: Recommender | RankingModel,
    split: Split,
    dataset: Dataset,
    k: int,
    metric: str,
    *,
    data: TrainingData | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict[str, npt.NDArray[np.float64]]:
    """Per test student, the metric of the served list and of the raw ranking, as `evaluate` scores them.

    Args:
        model: as for `evaluate`.
        split: the split.
        dataset: the dataset holding the test students' profiles.
        k: the cut-off.
        metric: a per-student metric of `training.metrics` (``ndcg``).
        data: the split's training data when already built.
        batch_size: students ranked at once.

    Returns:
        ``{"served": (n,), "raw": (n,)}`` over the test students with a relevant lecture in the
        catalogue, in `split.test_students` order; their means are `evaluate(...).overall` and `.raw`.
    """
    ranker, listers = _model_listers(model, split, data, True)
    rec = ranker.recommender
    _, relevant, _, recs = _lists(rec.name, split, dataset, rec.catalogue, listers, k, batch_size, None)
    return {kind: per_student(rows, relevant, k)[metric] for kind, rows in recs.items()}


def _model_listers(
    model: Recommender | RankingModel, split: Split, data: TrainingData | None, raw: bool
) -> tuple[RankingModel, dict[str, Callable[[list[str], int], Lister]]]:
    """The model as served (popularity fallbacks from the split's training data) and its listers."""
    from features.matrices import build_batch_for_model, build_training_data
    from models.popularity import popular_lists
    from models.ranking import RankingModel

    if isinstance(model, RankingModel):
        ranker = model
    else:
        if data is None:
            data = build_training_data(
                split.train.students, split.train.lectures, split.train.events, as_of=split.as_of
            )
        ranker = RankingModel.from_parts(model, None, popular_lists(data))
    rec = ranker.recommender
    listers: dict[str, Callable[[list[str], int], Lister]] = {
        "served": lambda students, k: _served_lister(ranker, students, k)
    }
    if raw:
        listers["raw"] = lambda students, k: _raw_lister(
            rec.name,
            students,
            rec.catalogue,
            lambda profiles, events: build_batch_for_model(rec, profiles, events),
            lambda _ids, batch: rec.score(batch),
            k,
        )
    return ranker, listers


def ground_truth_dir(dataset_dir: Path) -> Path | None:
    """The ground-truth directory of a synthetic dataset, None when the dataset has none."""
    path = Path(dataset_dir) / GROUND_TRUTH_DIR
    return path if path.is_dir() else None


def oracle_report(
    split: Split,
    dataset: Dataset,
    dataset_dir: Path,
    ks: Sequence[int] = (10,),
    *,
    data: TrainingData | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    fingerprint: str | None = None,
) -> EvaluationReport:
    """The same evaluation for an oracle that ranks by the generator's true appeal.

    It shows how far the models are from the best a ranking could do on this synthetic data (the
    oracle knows each student's taste but not their sampling noise, so it does not reach 1).

    Args:
        split: the split.
        dataset: the full dataset.
        dataset_dir: the dataset directory (holding `ground_truth/`).
        ks: cut-offs.
        data: the split's training data when already built (its catalogue is used), else built here.
        batch_size: students scored at once.
        progress: optional `progress(done, total)` callback.
        fingerprint: the dataset's fingerprint when known.

    Returns:
        The oracle's report (model name "oracle").

    Raises:
        EvaluationError: the dataset has no ground truth.
    """
    from features.ground_truth import GroundTruth
    from features.matrices import build_batch, build_training_data

    if ground_truth_dir(dataset_dir) is None:
        raise EvaluationError(
            f"{dataset_dir} has no {GROUND_TRUTH_DIR}/ directory: the oracle needs a synthetic dataset"
        )
    truth = GroundTruth.load(Path(dataset_dir))
    if data is None:
        data = build_training_data(
            split.train.students, split.train.lectures, split.train.events, as_of=split.as_of
        )
    training = data
    lecture_ids = list(training.catalogue.lectures.ids)

    def score(ids: list[str], _batch: StudentBatch) -> npt.NDArray[np.float32]:
        return np.asarray(truth.appeal(ids, lecture_ids), dtype=np.float32)

    listers: dict[str, Callable[[list[str], int], Lister]] = {
        "raw": lambda students, k: _raw_lister(
            ORACLE,
            students,
            training.catalogue,
            lambda profiles, events: build_batch(training, profiles, events),
            score,
            k,
        )
    }
    return _run(ORACLE, split, dataset, training.catalogue, listers, ks, batch_size, progress, fingerprint)
