"""The served list: turns a loaded model and a student's state into the ranked lectures with reasons.

This is the one ranking of learnrec: the service (`GET /recommendations`), the offline evaluation
(`training.evaluate`), the MLflow pyfunc (`models.pyfunc`) and the simulator all call `RankingModel.rank`
or `rank_many`, so what is measured is what students are shown. A student's state comes in through the
small `StudentState` protocol, which the Redis record (`features.store.StudentState`) and its in-memory
twin (`features.online_state.OnlineState`) both satisfy.

Everything that does not depend on the student is computed once per model version in
`RankingModel.prepare` (eligibility per region x grade, feature encoder, titles, series links,
popularity lists as row arrays), so a request only builds its batch row, scores it and picks the top k.

Ranking rules, in order:

1. Eligibility (`models.eligibility`): active, licensed in the student's region (unknown region: only
   lectures licensed everywhere), suited to the grade, never a lecture already in the history.
2. Series continuation: for the series the student touched most recently (and did not drop), the next
   episode not yet taken goes first (at most `SERIES_SLOTS`), reason ``next_in_series``.
3. The rest by the model's score (students the model knows, or never-seen students with profile
   features or history), else by popularity: region x grade, then region, then global.

The model's scores reach a request in two stages (`models.candidates`): the student's candidate list,
built by `learnrec features materialize` and read with the state, or built here from the full scores
when none is stored (the offline evaluation, students the model version was not materialised for); then
the list filtered by the rules above, with the followers of lectures enrolled in since it was built.
A list too short for the request is set aside for the full ranking (`Ranked.candidates` says which).
Series slots carry their candidate score, or the list's best score when they are not among the
candidates (they rank first by rule). The rules that run over rows on every request (the series slots,
the filter and pick from the candidates) are compiled (`models.stage_two`); the whole-catalogue paths (the
full ranking, popularity) read the eligibility mask (`RankingModel._mask`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
import scipy.sparse as sp

from models import candidates as two_stage
from models.base import Catalogue, Recommender, StudentBatch
from models.candidates import Candidates, Followers
from models.common import next_in_series
from models.eligibility import EligibilityIndex, top_k_one
from models.errors import ModelError
from models.interactions import DROPPED_AT_MOST
from models.loading import SEGMENT_SEPARATOR
from models.stage_two import ANY_SUBJECT, beyond_history, pick, series_slots

if TYPE_CHECKING:
    import pyarrow as pa

    from models.loading import LoadedModel

#: Most list slots given to "next episode of a series you are in".
SERIES_SLOTS = 2
#: How many of the most recent lectures are looked at for series to continue.
SERIES_LOOKBACK = 5

_A = TypeVar("_A", bound=np.ndarray)  # type: ignore[type-arg]
#: A model-ranked row's reason by whether it continues a series (`models.stage_two.beyond_history`).
_REASON_OF: tuple[str, str] = ("similar_students", "next_in_series")

REASON_TEXT: dict[str, str] = {
    "next_in_series": "시리즈 다음 강의",
    "similar_students": "나와 비슷한 학생들이 완강한 강의",
    "popular_in_region": "우리 지역 인기 강의",
    "popular_overall": "많은 학생들이 듣는 인기 강의",
}


class Profile(Protocol):
    """What the ranking reads of a student's profile (`features.profile.StudentProfile`)."""

    @property
    def region(self) -> str: ...

    @property
    def grade(self) -> str: ...

    def feature_values(self) -> Iterable[tuple[str, str]]:
        """(attribute, value) pairs: the model's ``attribute=value`` feature columns."""
        ...

    @property
    def feature_key(self) -> Hashable:
        """The feature values as one hashable value, equal for profiles with equal `feature_values`
        (the encoder remembers each distinct profile's columns under it)."""
        ...


class StudentState(Protocol):
    """A student's online state as the ranking reads it (Redis record or in-memory twin).

    Attributes:
        profile: the profile, None when never sent.
        history: lecture_id -> interaction weight (`models.interactions`).
        recent: lectures enrolled most recently, oldest first.
        state: the model version's per-student vector as float32 bytes; None = the model's own.
    """

    @property
    def profile(self) -> Profile | None: ...

    @property
    def history(self) -> Mapping[str, float]: ...

    @property
    def recent(self) -> Sequence[str]: ...

    @property
    def state(self) -> bytes | None: ...


class StudentFeatureEncoder:
    """Profile attributes -> a model's student-feature columns, without pandas (request path).

    Args:
        names: the model's `student_feature_names` ("region=seoul", "grade=h1", ...).
    """

    #: Most distinct profiles whose columns are remembered (`of_profile`); past it the memo starts over.
    MEMO_SIZE = 65_536

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        # keyed by the (attribute, value) pair itself: no "attribute=value" string built per request
        self._index: dict[tuple[str, ...], int] = {
            tuple(name.split("=", 1)): i for i, name in enumerate(self.names) if "=" in name
        }
        self._memo: dict[Hashable, npt.NDArray[np.int32]] = {}

    def columns(self, values: Iterable[tuple[str, str]]) -> npt.NDArray[np.int32]:
        """Sorted distinct feature columns of (attribute, value) pairs; unknown values set none."""
        # a handful of values: sorted(set()) beats np.unique's set-up
        cols = sorted({c for c in map(self._index.get, values) if c is not None})
        return _frozen(np.array(cols, dtype=np.int32))

    def of_profile(self, profile: Profile) -> npt.NDArray[np.int32]:
        """`columns` of a profile's feature values, remembered per distinct profile: students share a
        few thousand combinations of region, grade and the rest, and every computed answer asks.
        The array is read-only (shared by every student with that profile)."""
        key = profile.feature_key
        cols = self._memo.get(key)
        if cols is None:
            if len(self._memo) >= self.MEMO_SIZE:
                self._memo.clear()
            cols = self._memo[key] = self.columns(profile.feature_values())
        return cols


@dataclass(frozen=True)
class Ranked:
    """The answer for one student before it becomes JSON."""

    rows: list[int]
    scores: list[float]
    reasons: list[str]
    source: str  # model | profile | history | popular_region_grade | popular_region | popular_global
    fallback: bool  # the model never saw this student
    model_error: str | None = None  # the model failed to score: popularity answered instead
    #: how the model's list was made (`models.candidates`): "stored" (the materialised list), "fused" (it and
    #: the followers of lectures taken since), "built" (built here), "exhausted" (too short: full ranking);
    #: None for a popularity answer
    candidates: str | None = None


@dataclass(eq=False, slots=True)
class _Plan:
    """One student's list before scoring: what the rules decided without the model."""

    student_id: str
    record: StudentState | None
    index: int
    profile: Profile | None
    region_name: str | None
    region: int
    grade: int
    hist_rows: npt.NDArray[np.int32]
    hist_weights: npt.NDArray[np.float32]
    recent_rows: npt.NDArray[np.int32]
    allowed: npt.NDArray[np.bool_]  # the region and grade's static eligibility (a view, not a copy)
    subject: npt.NDArray[np.bool_]  # the requested subject's lectures; empty for any subject
    continuation: npt.NDArray[np.int32]  # the series slots (`models.stage_two.series_slots`)
    feature_cols: npt.NDArray[np.int32]
    scorable: bool
    source: str


@dataclass(frozen=True, eq=False)
class SeriesLinks:
    """Per lecture row, what the series rules read (`models.stage_two`), in the types its compiled code
    is built for (int32 and bool, read-only)."""

    series: npt.NDArray[np.int32]
    position: npt.NDArray[np.int32]  # 1-based episode
    next: npt.NDArray[np.int32]  # next episode of the same series, -1 = last
    active: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, cat: Catalogue, next_row: npt.NDArray[np.int32]) -> SeriesLinks:
        return cls(
            _frozen(np.array(cat.series, dtype=np.int32)),
            _frozen(np.array(cat.series_position, dtype=np.int32)),
            _frozen(np.array(next_row, dtype=np.int32)),
            _frozen(np.array(cat.active, dtype=np.bool_)),
        )


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
    #: per lecture row, its ``lecture_id``, ``title``, ``subject`` and ``provider`` as the members of a JSON
    #: object (UTF-8), in the order an answer lists them (`service.schemas.RecommendationItem`): an
    #: answer's body is assembled from them (`service.routes.recommendations.answer_tail`)
    lecture_json: tuple[bytes, ...]
    subject_index: dict[str, int]
    subject_masks: npt.NDArray[np.bool_]  # (n_subjects, n_lectures)
    popular_global: npt.NDArray[np.int32]
    popular_region: dict[str, npt.NDArray[np.int32]]
    popular_region_grade: dict[str, npt.NDArray[np.int32]]
    state_width: int
    all_regions_row: int  # row of "*" in the region vocabulary (never a student's region), -1 when absent
    links: SeriesLinks
    #: When this version was put in service (under this alias).
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: stage 1's list length (`models.candidates.CANDIDATES`)
    candidate_count: int = two_stage.CANDIDATES

    @property
    def n_lectures(self) -> int:
        return len(self.catalogue.lectures)

    def with_alias(self, alias: str | None) -> RankingModel:
        """This version put in service now under another alias: the same arrays, and the followers if they
        were computed (`dataclasses.replace` alone makes an instance without them, and its first fused
        answer would compute them again on the request path)."""
        out = replace(self, alias=alias, loaded_at=datetime.now(UTC))
        if "followers" in self.__dict__:  # the cached_property's value
            out.__dict__["followers"] = self.__dict__["followers"]
        return out

    @property
    def subjects(self) -> tuple[str, ...]:
        return self.catalogue.subjects

    # ------------------------------------------------------------------------------------------------
    # once per model version

    @classmethod
    def prepare(cls, loaded: LoadedModel, alias: str | None = None) -> RankingModel:
        """Precompute the request-path arrays of a registered model version."""
        return cls.from_parts(
            loaded.recommender,
            loaded.lectures,
            loaded.fallback,
            model_name=loaded.model_name,
            version=str(loaded.version),
            alias=loaded.alias if loaded.alias is not None else alias,
            run_id=loaded.run_id,
        )

    @classmethod
    def from_parts(
        cls,
        recommender: Recommender,
        lectures: pa.Table | None,
        fallback: Mapping[str, Any] | None,
        *,
        model_name: str | None = None,
        version: str = "unregistered",
        alias: str | None = None,
        run_id: str | None = None,
    ) -> RankingModel:
        """Precompute the request-path arrays of any recommender (fitted here or loaded).

        Args:
            recommender: the fitted recommender.
            lectures: the lectures table (titles, providers); None: ids stand in for titles.
            fallback: the popularity lists (`models.popularity.popular_lists`); None: no popularity fallback.
            model_name: the name shown in answers (default the recommender's).
            version: the registered version, or a label for a model not registered.
            alias: the alias it serves under.
            run_id: its training run.

        Returns:
            The ranking model.
        """
        rec = recommender
        cat = rec.catalogue
        n = len(cat.lectures)
        titles, providers = _lecture_text(lectures, cat)
        subject_of = tuple(cat.subjects[int(s)] for s in cat.subject)
        subject_masks = np.zeros((len(cat.subjects), n), dtype=np.bool_)
        subject_masks[cat.subject, np.arange(n)] = True
        lists: Mapping[str, Any] = fallback or {}
        return cls(
            model_name=model_name or rec.name,
            version=version,
            alias=alias,
            run_id=run_id,
            recommender=rec,
            catalogue=cat,
            eligibility=EligibilityIndex(cat),
            encoder=StudentFeatureEncoder(rec.student_feature_names),
            titles=titles,
            providers=providers,
            subject_of=subject_of,
            lecture_json=_lecture_json(cat.lectures.ids, titles, subject_of, providers),
            subject_index={s: i for i, s in enumerate(cat.subjects)},
            subject_masks=subject_masks,
            popular_global=_rows(cat, lists.get("global", ())),
            popular_region={str(r): _rows(cat, ids) for r, ids in dict(lists.get("by_region", {})).items()},
            popular_region_grade={
                str(rg): _rows(cat, ids) for rg, ids in dict(lists.get("by_region_grade", {})).items()
            },
            state_width=int(rec.state_width()),
            all_regions_row=cat.regions.get("*"),
            links=SeriesLinks.of(cat, next_in_series(cat)),
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
        record: StudentState | None,
        k: int,
        *,
        subject: str | None = None,
        region_hint: str | None = None,
        degraded: bool = False,
    ) -> Ranked:
        """The top-k eligible lectures for one student: the rules' plan, then its candidates (`_two_stage`)
        or popularity. `rank_many` ranks each of its students with it.

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
        plan = self._plan(student_id, record, k, subject, region_hint, degraded)
        return self._two_stage(plan, k) if plan.scorable else self._finish(plan, None, k)

    def rank_many(
        self,
        student_ids: Sequence[str],
        records: Sequence[StudentState | None],
        k: int,
        *,
        subject: str | None = None,
        region_hints: Sequence[str | None] | None = None,
        degraded: bool = False,
    ) -> list[Ranked]:
        """The served list of each student: the one code path of the service, evaluation and simulator.

        Each student is planned, scored (the model's one-student path) and listed alone (eligibility,
        series slots, top-k of the scores, else popularity): the offline evaluation runs exactly the
        arithmetic of a request, and a student's list never depends on who else is in the call.

        Args:
            student_ids: the students.
            records: per student, their state (None: unknown to the store, or it could not be read).
            k: list length.
            subject: keep only lectures of this subject (must be in `subjects`).
            region_hints: per student, the region to assume when the record has no profile.
            degraded: the records are stale copies (store down): popularity only.

        Returns:
            One `Ranked` per student, in order.
        """
        hints = region_hints if region_hints is not None else [None] * len(student_ids)
        # one student at a time, served or evaluated alike: a list never depends on the batch it is in,
        # and the evaluation runs the very arithmetic of a request (`rank`)
        return [
            self.rank(sid, record, k, subject=subject, region_hint=hint, degraded=degraded)
            for sid, record, hint in zip(student_ids, records, hints, strict=True)
        ]

    def candidates(self, student_id: str, record: StudentState | None) -> Candidates | None:
        """Stage 1 of one student (`models.candidates`): what `learnrec features materialize` stores.

        Args:
            student_id: the student.
            record: the student's state now (its stored list, if any, is ignored).

        Returns:
            The list; None when the model cannot score the student (popularity answers them).
        """
        plan = self._plan(student_id, record, 1, None, None, False)
        if not plan.scorable:
            return None
        scored = self._score_plan(plan)
        return None if isinstance(scored, str) else self._stage_one(plan, scored)

    @cached_property
    def followers(self) -> Followers:
        """What follows each lecture under this model (`models.candidates.build_followers`), computed on
        first use; the service computes it when it loads the version, off the request path."""
        return two_stage.build_followers(self.recommender)

    def _stage_one(self, plan: _Plan, scores: npt.NDArray[np.float32]) -> Candidates:
        mask = self.eligibility.mask_one(plan.region, plan.grade, plan.hist_rows)
        return two_stage.build(scores, mask, plan.region, plan.grade, plan.recent_rows, self.candidate_count)

    def _stored(self, plan: _Plan) -> Candidates | None:
        """The plan's stored list, when it was built for the student's region and grade."""
        _, section = two_stage.split(plan.record.state if plan.record is not None else None, self.state_width)
        if section is None:
            return None
        stored = Candidates.from_bytes(section, self.n_lectures)
        if stored is None or stored.region != plan.region or stored.grade != plan.grade:
            return None
        return stored

    def _two_stage(self, plan: _Plan, k: int) -> Ranked:
        """A scorable student's list from their candidates (stored, else built from the full scores)."""
        full: npt.NDArray[np.float32] | str | None = None
        stored = self._stored(plan)
        if stored is None:
            full = self._score_plan(plan)
            if isinstance(full, str):
                return self._finish(plan, full, k)
            cands, outcome = self._stage_one(plan, full), "built"
        else:
            cands, outcome = stored, "stored"
        rows, scores = cands.rows, cands.scores
        if stored is not None and plan.recent_rows.size:
            basis = set(cands.basis.tolist())
            taken = [r for r in plan.recent_rows[::-1].tolist() if r not in basis][
                : two_stage.FOLLOW_LOOKBACK
            ]
            if taken:
                rows, scores = two_stage.fuse(cands, self.followers, taken)
                outcome = "fused"
        links = self.links
        out_rows, out_scores, follows, exhausted = pick(
            rows, scores, cands.complete, plan.allowed, plan.subject, plan.hist_rows, plan.continuation, k,
            links.series, links.position,
        )  # fmt: skip
        if exhausted:
            # too few candidates left for this request: the full ranking answers it
            if full is None:
                full = self._score_plan(plan)
            return replace(self._finish(plan, full, k), candidates="exhausted")
        return Ranked(
            out_rows.tolist(),
            out_scores.tolist(),
            [_REASON_OF[f] for f in follows.tolist()],
            plan.source,
            fallback=plan.index < 0,
            candidates=outcome,
        )

    def _plan(
        self,
        student_id: str,
        record: StudentState | None,
        k: int,
        subject: str | None,
        region_hint: str | None,
        degraded: bool,
    ) -> _Plan:
        cat = self.catalogue
        index = self.recommender.students.get(student_id)
        profile = record.profile if record is not None else None
        region_name = profile.region if profile is not None else region_hint
        region = self.region_code(region_name)
        grade = cat.grades.get(profile.grade) if profile is not None else -1

        hist_rows, hist_weights = self._history(record)
        recent_rows = self._recent_rows(record)
        allowed = self.eligibility.static[region, grade]  # -1 (unknown) is the last row and column
        lectures = self.subject_masks[self.subject_index[subject]] if subject is not None else ANY_SUBJECT
        links = self.links
        continuation = series_slots(
            recent_rows, hist_rows, hist_weights, allowed, lectures, links.series, links.next, links.active,
            min(SERIES_SLOTS, k), SERIES_LOOKBACK, DROPPED_AT_MOST,
        )  # fmt: skip
        cols = self.encoder.of_profile(profile) if profile is not None else _NO_ROWS
        scorable = not degraded and record is not None and (index >= 0 or cols.size > 0 or hist_rows.size > 0)
        source = "model" if index >= 0 else ("profile" if cols.size else "history")
        return _Plan(
            student_id, record, index, profile, region_name, region, grade, hist_rows, hist_weights,
            recent_rows, allowed, lectures, continuation, cols, scorable, source,
        )  # fmt: skip

    def _score_plan(self, plan: _Plan) -> npt.NDArray[np.float32] | str:
        """The plan's scores, or the repr of the error that kept the model from scoring the student (a
        model that cannot score one student must not fail the request)."""
        try:
            return self._score_one(plan)
        except (ModelError, ValueError, IndexError) as exc:
            return repr(exc)

    def _mask(self, plan: _Plan) -> npt.NDArray[np.bool_]:
        """Every lecture the plan may still list: eligibility, subject, series slots taken out (the full
        ranking and popularity read it; a candidate list is filtered row by row by `pick`)."""
        mask = self.eligibility.mask_one(plan.region, plan.grade, plan.hist_rows)
        if plan.subject.size:
            mask &= plan.subject
        mask[plan.continuation] = False
        return mask

    def _finish(self, plan: _Plan, scored: npt.NDArray[np.float32] | str | None, k: int) -> Ranked:
        continuation = plan.continuation.tolist()
        rest = k - len(continuation)
        fallback = plan.index < 0
        mask = self._mask(plan)
        if scored is not None and not isinstance(scored, str):
            scores = scored
            rows, best = top_k_one(scores, mask, rest) if rest > 0 else (_NO_ROWS, _NO_SCORES)
            n = int((rows >= 0).sum())
            chosen = rows[:n]
            follows = beyond_history(chosen, plan.hist_rows, self.links.series, self.links.position)
            return Ranked(
                continuation + chosen.tolist(),
                [float(scores[r]) for r in continuation] + best[:n].tolist(),
                ["next_in_series"] * len(continuation) + [_REASON_OF[f] for f in follows.tolist()],
                plan.source,
                fallback=fallback,
            )

        pop_rows, pop_reasons, source = self._popular(plan.region_name, plan.profile, mask, rest)
        out_rows = continuation + pop_rows
        # popularity answers carry their rank as a score in (0, 1]: comparable within the answer only
        total = max(len(out_rows), 1)
        out_scores = [round(1.0 - i / total, 6) for i in range(len(out_rows))]
        reasons = ["next_in_series"] * len(continuation) + pop_reasons
        return Ranked(out_rows, out_scores, reasons, source, fallback=fallback, model_error=scored)

    def _history(self, record: StudentState | None) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        if record is None or not record.history:
            return _NO_ROWS, _NO_SCORES
        history = record.history
        rows, known = _lecture_rows(self.catalogue.lectures.index, history)
        weights = np.fromiter(history.values(), np.float32, len(history))
        return (rows, weights) if known is None else (rows[known], weights[known])

    def _recent_rows(self, record: StudentState | None) -> npt.NDArray[np.int32]:
        if record is None or not record.recent:
            return _NO_ROWS
        rows, known = _lecture_rows(self.catalogue.lectures.index, record.recent)
        return rows if known is None else rows[known]

    def _score_one(self, plan: _Plan) -> npt.NDArray[np.float32]:
        """Scores of one student over the catalogue (the model's own single-student path)."""
        state = self._state(plan.record)
        batch = StudentBatch(
            index=np.array([plan.index], dtype=np.int32),
            history=_one_row(plan.hist_rows, plan.hist_weights, self.n_lectures, sort=True),
            recent=(plan.recent_rows,),
            features=_one_row(plan.feature_cols, None, len(self.encoder.names), sort=False),
            region=np.array([plan.region], dtype=np.int32),
            grade=np.array([plan.grade], dtype=np.int32),
            state=state[None, :] if state is not None else None,
        )
        scores: npt.NDArray[np.float32] = np.asarray(self.recommender.score(batch), dtype=np.float32)[0]
        if not np.isfinite(scores).all():
            raise ModelError(f"version {self.version} returned non-finite scores")
        return scores

    def _state(self, record: StudentState | None) -> npt.NDArray[np.float32] | None:
        """The record's model state: its first `state_width` floats (a candidate list may follow)."""
        state, _ = two_stage.split(record.state if record is not None else None, self.state_width)
        return np.frombuffer(state, dtype=np.float32) if state is not None else None

    def _popular(
        self, region: str | None, profile: Profile | None, mask: npt.NDArray[np.bool_], k: int
    ) -> tuple[list[int], list[str], str]:
        candidates: list[tuple[npt.NDArray[np.int32] | None, str, str]] = []
        if region is not None:
            if profile is not None:
                candidates.append(
                    (
                        self.popular_region_grade.get(f"{region}{SEGMENT_SEPARATOR}{profile.grade}"),
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


def _lecture_rows(
    index: Mapping[str, int], ids: Iterable[str]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_] | None]:
    """Catalogue rows of a request's lecture ids, and which are known (None: all of them; unknown ids
    are -1). Mapped into a list, then one array: cheaper than numpy's fromiter and a comparison over
    the array."""
    listed = list(map(index.get, ids, repeat(-1)))
    rows = np.array(listed, dtype=np.int32)
    return rows, (rows >= 0 if -1 in listed else None)


def _rows(cat: Catalogue, ids: Sequence[str]) -> npt.NDArray[np.int32]:
    """Catalogue rows of lecture ids, in order; ids the catalogue does not hold are dropped."""
    rows = np.fromiter((cat.lectures.get(str(i)) for i in ids), dtype=np.int32)
    out: npt.NDArray[np.int32] = rows[rows >= 0]
    out.setflags(write=False)
    return out


def _frozen(a: _A) -> _A:
    a.setflags(write=False)
    return a


def _lecture_json(
    ids: Sequence[str], titles: Sequence[str], subjects: Sequence[str], providers: Sequence[str]
) -> tuple[bytes, ...]:
    """Each lecture's answer fields as JSON object members (see `RankingModel.lecture_json`)."""
    return tuple(
        orjson.dumps({"lecture_id": i, "title": t, "subject": s, "provider": p})[1:-1]
        for i, t, s, p in zip(ids, titles, subjects, providers, strict=True)
    )


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


def _one_row(
    cols: npt.NDArray[np.int32], values: npt.NDArray[np.float32] | None, n_columns: int, *, sort: bool
) -> sp.csr_matrix:
    """A (1, n_columns) float32 CSR of one student's columns (values 1 when not given).

    Built without scipy's format check, which costs more than scoring a student: the arrays are valid
    by construction (int32 columns in range, sorted when `sort`, one row). `tests/models/test_ranking.py`
    holds the result equal to the checked constructor's.
    """
    if sort and cols.size > 1:
        order = np.argsort(cols, kind="stable")
        cols = cols[order]
        values = values[order] if values is not None else None
    m = _CSR_NEW(sp.csr_matrix)
    m._shape = (1, n_columns)
    m.maxprint = _MAXPRINT
    m.data = values.astype(np.float32, copy=False) if values is not None else np.ones(cols.size, np.float32)
    m.indices = cols.astype(np.int32, copy=False)
    m.indptr = np.array([0, cols.size], dtype=np.int32)
    return m


_CSR_NEW = sp.csr_matrix.__new__
_MAXPRINT = sp.csr_matrix((1, 1), dtype=np.float32).maxprint
