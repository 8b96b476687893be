"""Turns a feature-store record and the loaded model into a ranked list of lectures with reasons.

Everything that does not depend on the student is computed once per model version in
`RankingModel.prepare` (eligibility per region x grade, feature encoder, titles, series links,
popularity lists as row arrays), so a request only builds its 1-row batch, scores it and picks the top k.

Ranking rules, in order:

1. Eligibility (`models.eligibility`): active, licensed in the student's region (unknown region: only
   lectures licensed everywhere), suited to the grade, never a lecture already in the history.
2. Series continuation: for the series the student touched most recently (and did not drop), the next
   episode not yet taken goes first (at most `SERIES_SLOTS`), reason ``next_in_series``.
3. The rest by the model's score (students the model knows, or never-seen students with profile
   features or history), else by popularity: region x grade, then region, then global.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from features.matrices import DROP_WEIGHT, StudentFeatureEncoder
from models.base import Catalogue, Recommender, StudentBatch
from models.common import next_in_series
from models.eligibility import EligibilityIndex, top_k_one
from models.errors import ModelError

if TYPE_CHECKING:
    from features.store import StudentProfile, StudentRecord
    from models.loading import LoadedModel

#: Most list slots given to "next episode of a series you are in".
SERIES_SLOTS = 2
#: How many of the most recent lectures are looked at for series to continue.
SERIES_LOOKBACK = 5
#: Weights at or below this are dropped lectures: no continuation of their series.
_DROPPED = DROP_WEIGHT + 1e-6

REASON_TEXT: dict[str, str] = {
    "next_in_series": "시리즈 다음 강의",
    "similar_students": "나와 비슷한 학생들이 완강한 강의",
    "popular_in_region": "우리 지역 인기 강의",
    "popular_overall": "많은 학생들이 듣는 인기 강의",
}


@dataclass(frozen=True)
class Ranked:
    """The answer for one student before it becomes JSON."""

    rows: list[int]
    scores: list[float]
    reasons: list[str]
    source: str  # model | profile | history | popular_region_grade | popular_region | popular_global
    fallback: bool  # the model never saw this student
    model_error: str | None = None  # the model failed to score: popularity answered instead


@dataclass(frozen=True, eq=False)
class RankingModel:
    """A loaded model version with everything the request path needs precomputed."""

    model_name: str
    version: str
    alias: str | None
    run_id: str | None
    recommender: Recommender
    catalogue: Catalogue
    eligibility: EligibilityIndex
    encoder: StudentFeatureEncoder
    titles: tuple[str, ...]
    providers: tuple[str, ...]
    subject_of: tuple[str, ...]  # per lecture row
    subject_index: dict[str, int]
    subject_masks: npt.NDArray[np.bool_]  # (n_subjects, n_lectures)
    next_row: npt.NDArray[np.int32]  # next episode of the same series, -1 = last
    popular_global: npt.NDArray[np.int32]
    popular_region: dict[str, npt.NDArray[np.int32]]
    popular_region_grade: dict[str, npt.NDArray[np.int32]]
    state_width: int
    all_regions_row: int  # row of "*" in the region vocabulary (never a student's region), -1 when absent
    _empty_features: sp.csr_matrix = field(repr=False)
    #: When this version was put in service (under this alias).
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def n_lectures(self) -> int:
        return len(self.catalogue.lectures)

    @property
    def subjects(self) -> tuple[str, ...]:
        return self.catalogue.subjects

    # ------------------------------------------------------------------------------------------------
    # once per model version

    @classmethod
    def prepare(cls, loaded: LoadedModel, alias: str | None = None) -> RankingModel:
        """Precompute the request-path arrays of a loaded model version."""
        rec = loaded.recommender
        cat = rec.catalogue
        n = len(cat.lectures)
        titles, providers = _lecture_text(loaded.lectures, cat)
        subject_of = tuple(cat.subjects[int(s)] for s in cat.subject)
        subject_masks = np.zeros((len(cat.subjects), n), dtype=np.bool_)
        subject_masks[cat.subject, np.arange(n)] = True
        fallback: Mapping[str, Any] = loaded.fallback or {}
        names = rec.student_feature_names
        return cls(
            model_name=loaded.model_name,
            version=str(loaded.version),
            alias=loaded.alias if loaded.alias is not None else alias,
            run_id=loaded.run_id,
            recommender=rec,
            catalogue=cat,
            eligibility=EligibilityIndex(cat),
            encoder=StudentFeatureEncoder(names),
            titles=titles,
            providers=providers,
            subject_of=subject_of,
            subject_index={s: i for i, s in enumerate(cat.subjects)},
            subject_masks=subject_masks,
            next_row=_frozen(next_in_series(cat)),
            popular_global=_rows(cat, fallback.get("global", ())),
            popular_region={
                str(r): _rows(cat, ids) for r, ids in dict(fallback.get("by_region", {})).items()
            },
            popular_region_grade={
                str(rg): _rows(cat, ids) for rg, ids in dict(fallback.get("by_region_grade", {})).items()
            },
            state_width=int(rec.state_width()),
            all_regions_row=cat.regions.get("*"),
            _empty_features=sp.csr_matrix((1, len(names)), dtype=np.float32),
        )

    # ------------------------------------------------------------------------------------------------
    # per request

    def region_code(self, region: str | None) -> int:
        """Row of a region in the catalogue, -1 if unknown (new region: only lectures licensed everywhere)."""
        # "*" is a licence row, never a student region
        if region is None:
            return -1
        row = self.catalogue.regions.get(region)
        return -1 if row == self.all_regions_row else row

    def rank(
        self,
        student_id: str,
        record: StudentRecord | None,
        k: int,
        *,
        subject: str | None = None,
        region_hint: str | None = None,
        degraded: bool = False,
    ) -> Ranked:
        """The top-k eligible lectures for one student.

        Args:
            student_id: the student.
            record: what the feature store holds for the student; None when it could not be read
                (degraded: popularity lists, filtered by what is known).
            k: list length.
            subject: keep only lectures of this subject (must be in `subjects`).
            region_hint: the student's region when the record is missing (a key scoped to one region).
            degraded: the feature store did not answer and `record` (if any) is the last one seen in
                this process: answer from the popularity lists, filtered by what that record says.
        """
        cat = self.catalogue
        index = self.recommender.students.get(student_id)
        profile = record.profile if record is not None else None
        region_name = profile.region if profile is not None else region_hint
        region = self.region_code(region_name)
        grade = cat.grades.get(profile.grade) if profile is not None else -1

        hist_rows, hist_weights = self._history(record)
        mask = self.eligibility.mask_one(region, grade, hist_rows)
        if subject is not None:
            mask &= self.subject_masks[self.subject_index[subject]]

        continuation = self._continuations(record, hist_rows, hist_weights, mask, min(SERIES_SLOTS, k))
        if continuation:
            mask[continuation] = False
        rest = k - len(continuation)

        scores: npt.NDArray[np.float32] | None = None
        model_error = None
        features = self._empty_features
        if profile is not None:
            cols = self.encoder.columns(_profile_mapping(profile))
            if cols.size:
                features = sp.csr_matrix(
                    (np.ones(cols.size, dtype=np.float32), cols, np.array([0, cols.size], dtype=np.int32)),
                    shape=(1, len(self.encoder.names)),
                )
        if not degraded and record is not None and (index >= 0 or features.nnz or hist_rows.size):
            source = "model" if index >= 0 else ("profile" if features.nnz else "history")
            try:
                scores = self._score(index, record, hist_rows, hist_weights, features, region, grade)
            except (ModelError, ValueError, IndexError) as exc:
                # a model that cannot score this student must not fail the request
                model_error = repr(exc)

        if scores is not None:
            rows, best = top_k_one(scores, mask, rest) if rest > 0 else (_NO_ROWS, _NO_SCORES)
            chosen = [int(r) for r in rows if r >= 0]
            out_rows = continuation + chosen
            out_scores = [float(scores[r]) for r in continuation] + [float(s) for s in best[: len(chosen)]]
            taken_series = self._series_max_position(hist_rows)
            reasons = ["next_in_series"] * len(continuation) + [
                "next_in_series" if self._continues(r, taken_series) else "similar_students" for r in chosen
            ]
            return Ranked(out_rows, out_scores, reasons, source, fallback=index < 0)

        pop_rows, pop_reasons, source = self._popular(region_name, profile, mask, rest)
        out_rows = continuation + pop_rows
        # popularity answers carry their rank as a score in (0, 1]: comparable within the answer only
        total = max(len(out_rows), 1)
        out_scores = [round(1.0 - i / total, 6) for i in range(len(out_rows))]
        reasons = ["next_in_series"] * len(continuation) + pop_reasons
        return Ranked(out_rows, out_scores, reasons, source, fallback=index < 0, model_error=model_error)

    def _history(self, record: StudentRecord | None) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        if record is None or not record.history:
            return _NO_ROWS, _NO_SCORES
        get = self.catalogue.lectures.get
        pairs = [(get(lid), w) for lid, w in record.history.items()]
        rows = np.fromiter((r for r, _ in pairs), dtype=np.int32, count=len(pairs))
        weights = np.fromiter((w for _, w in pairs), dtype=np.float32, count=len(pairs))
        known = rows >= 0
        return rows[known], weights[known]

    def _recent_rows(self, record: StudentRecord) -> npt.NDArray[np.int32]:
        get = self.catalogue.lectures.get
        rows = np.fromiter((get(lid) for lid in record.recent), dtype=np.int32, count=len(record.recent))
        return rows[rows >= 0]

    def _score(
        self,
        index: int,
        record: StudentRecord,
        hist_rows: npt.NDArray[np.int32],
        hist_weights: npt.NDArray[np.float32],
        features: sp.csr_matrix,
        region: int,
        grade: int,
    ) -> npt.NDArray[np.float32]:
        order = np.argsort(hist_rows, kind="stable")
        history = sp.csr_matrix(
            (hist_weights[order], hist_rows[order], np.array([0, hist_rows.size], dtype=np.int32)),
            shape=(1, self.n_lectures),
        )
        state = None
        if record.state and self.state_width and len(record.state) == 4 * self.state_width:
            state = np.frombuffer(record.state, dtype=np.float32).reshape(1, self.state_width)
        batch = StudentBatch(
            index=np.array([index], dtype=np.int32),
            history=history,
            recent=(self._recent_rows(record),),
            features=features,
            region=np.array([region], dtype=np.int32),
            grade=np.array([grade], dtype=np.int32),
            state=state,
        )
        scores: npt.NDArray[np.float32] = np.asarray(self.recommender.score(batch), dtype=np.float32)[0]
        if not np.isfinite(scores).all():
            raise ModelError(f"version {self.version} returned non-finite scores")
        return scores

    def _continuations(
        self,
        record: StudentRecord | None,
        hist_rows: npt.NDArray[np.int32],
        hist_weights: npt.NDArray[np.float32],
        mask: npt.NDArray[np.bool_],
        limit: int,
    ) -> list[int]:
        if record is None or not record.recent or limit <= 0:
            return []
        weight = dict(zip(hist_rows.tolist(), hist_weights.tolist(), strict=True))
        recent = self._recent_rows(record)[::-1][:SERIES_LOOKBACK]
        series = self.catalogue.series
        seen_series: set[int] = set()
        out: list[int] = []
        for r in recent.tolist():
            s = int(series[r])
            if s in seen_series:
                continue
            seen_series.add(s)
            if weight.get(r, 1.0) <= _DROPPED:
                continue
            nxt = int(self.next_row[r])
            # skip episodes already taken or retired; the loop is bounded by the series length
            while nxt >= 0 and (nxt in weight or not self.catalogue.active[nxt]):
                nxt = int(self.next_row[nxt])
            if nxt >= 0 and mask[nxt] and nxt not in out:
                out.append(nxt)
                if len(out) >= limit:
                    break
        return out

    def _series_max_position(self, hist_rows: npt.NDArray[np.int32]) -> dict[int, int]:
        out: dict[int, int] = {}
        series, position = self.catalogue.series, self.catalogue.series_position
        for r in hist_rows.tolist():
            s, p = int(series[r]), int(position[r])
            if p > out.get(s, 0):
                out[s] = p
        return out

    def _continues(self, row: int, taken_series: dict[int, int]) -> bool:
        best = taken_series.get(int(self.catalogue.series[row]))
        return best is not None and int(self.catalogue.series_position[row]) > best

    def _popular(
        self, region: str | None, profile: StudentProfile | None, mask: npt.NDArray[np.bool_], k: int
    ) -> tuple[list[int], list[str], str]:
        candidates: list[tuple[npt.NDArray[np.int32] | None, str, str]] = []
        if region is not None:
            if profile is not None:
                candidates.append(
                    (
                        self.popular_region_grade.get(f"{region}|{profile.grade}"),
                        "popular_region_grade",
                        "popular_in_region",
                    )
                )
            candidates.append((self.popular_region.get(region), "popular_region", "popular_in_region"))
        candidates.append((self.popular_global, "popular_global", "popular_overall"))
        rows: list[int] = []
        reasons: list[str] = []
        source = "popular_global"
        picked: set[int] = set()
        for lst, name, reason in candidates:
            if lst is None or k <= 0:
                continue
            before = len(rows)
            for r in lst.tolist():
                if mask[r] and r not in picked:
                    picked.add(r)
                    rows.append(r)
                    reasons.append(reason)
                    if len(rows) >= k:
                        break
            if len(rows) > before and before == 0:
                source = name
            if len(rows) >= k:
                break
        return rows, reasons, source


_NO_ROWS: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
_NO_SCORES: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)
_NO_ROWS.setflags(write=False)
_NO_SCORES.setflags(write=False)


def _profile_mapping(profile: StudentProfile) -> dict[str, Any]:
    return {
        "region": profile.region,
        "grade": profile.grade,
        "school_level": profile.school_level,
        "target_exam": profile.target_exam,
        "interest_subjects": list(profile.interest_subjects or ()),
    }


def _rows(cat: Catalogue, ids: Sequence[str]) -> npt.NDArray[np.int32]:
    """Catalogue rows of lecture ids, in order; ids the catalogue does not hold are dropped."""
    rows = np.fromiter((cat.lectures.get(str(i)) for i in ids), dtype=np.int32)
    out: npt.NDArray[np.int32] = rows[rows >= 0]
    out.setflags(write=False)
    return out


def _frozen(a: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    a.setflags(write=False)
    return a


def _lecture_text(lectures: Any, cat: Catalogue) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Titles and providers per catalogue row from the lectures Arrow table (the id when missing)."""
    ids = list(cat.lectures.ids)
    titles = list(ids)
    providers = [""] * len(ids)
    if lectures is not None and lectures.num_rows:
        names = set(lectures.column_names)
        table_ids = [str(x) for x in lectures.column("lecture_id").to_pylist()]
        tt = lectures.column("title").to_pylist() if "title" in names else [None] * len(table_ids)
        pp = lectures.column("provider").to_pylist() if "provider" in names else [None] * len(table_ids)
        for lid, title, provider in zip(table_ids, tt, pp, strict=True):
            r = cat.lectures.get(lid)
            if r >= 0:
                titles[r] = str(title) if title is not None else lid
                providers[r] = str(provider) if provider is not None else ""
    return tuple(titles), tuple(providers)
