"""Honest model selection: hyper-parameters, blend fallback and the champion chosen on validation.

The test split is only ever scored once, by the models chosen here. Everything chosen is chosen on a
validation split carved from the training side alone, of the same kind as the test split and one step
earlier (`validation_split`):

* temporal: the same horizon ending at the test cutoff (cutoff - horizon), or the same quantile of the
  training events when the horizon is unbounded;
* leave_last_n: each training student's last n lectures;
* new_students / new_region: a random share of the training students held out whole (the share of
  students the test holds out; a region of its own would leave too few at most sizes);
* explicit: a given split's kind is read from its shape, never from which lectures it holds: the
  median share of a test student's lectures it holds out, and whether test events come after the
  student's training events (then each training student's latest lectures are held out, else a random
  share of them).

Every candidate is fitted and scored on the folds of `validation_folds`, their students pooled: a
per-student validation (leave-last-n, an explicit per-student split) is split into folds of the students,
each holding out only its own students' lectures, so the training side keeps most students' whole
histories as the test's does; a temporal validation with few test students (a sparse log) is pooled with
the same split stepped back further.

`select` fits every model on the validation training data and scores, per validation student, its
served list and its raw ranking: first the wrapped library's own configuration where there is one
(`library_candidates`: LightFM used directly), then the model's defaults, then the other candidates of
its small grid (`GRIDS`), round by round across models, while the time budget lasts. The library's
configuration and the defaults always run, so a budget of 0 still picks the champion and the blend's
fallback on validation. The first candidate is the incumbent, and every other choice must be earned
beyond the noise of validation, by more than `MARGIN_SE` standard errors of the paired per-student
difference:

* a model's hyper-parameters (the defaults or a grid candidate replacing the incumbent) on the model's
  own raw ranking (scores, eligibility, top-k): what it contributes, what the blend combines and what
  "never below the library it wraps" compares. The serving rules around it (series slots, fallbacks)
  are the same for every candidate and blur the difference: on `sparse` a LightFM 0.13 raw NDCG@10
  above LightFM's own configuration on validation was 0.001 above it served;
* what is served, on the served lists: the blend keeps blending over its best component only with such
  a lead (and at least `BLEND_MARGIN`), else it falls back to that component
  (`BlendRecommender(fallback=...)`) and the run says so; the champion is the model with the best
  served validation metric.

The library's configuration is the incumbent because it is the floor (DESIGN.md: a model must never do
worse than the library it wraps, used directly), and a tie on validation proves nothing about the test:
on the `sparse` suite dataset at 20,000 x 2,000 (at most three lectures per student) the series and
eligibility rules of the served list carry most of its quality, so LightFM with learnrec's defaults led
LightFM used directly by 0.011 on 460 validation students (inside the noise) while the defaults' own
ranking (raw NDCG 0.128 on test) was not much better than popularity's and the library's was 0.192.

Size: over 600 lines because the validation split of each kind, its folds and the search with its
noise margins are one contract (what is chosen is chosen on data the test never sees); split apart,
each half would re-derive the other's rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from features.event_table import concat_events, event_microseconds, rows_where, take_ascending
from features.ids import is_in, positions, text_codes, used_text
from training.errors import SplitError

if TYPE_CHECKING:
    from features.tables import Dataset
    from models.base import Recommender, TrainingData
    from training.splits import Split

#: Default time budget of the search in `learnrec train` (seconds; the defaults always run).
DEFAULT_BUDGET_SECONDS = 600.0
#: Validation splits with fewer test students than this are too noisy to choose on: the step back
#: widens (unbounded temporal horizon) when it can.
MIN_VALIDATION_STUDENTS = 50
#: A temporal validation of fewer test students than this is pooled with the same split stepped back
#: further (`validation_folds`), at most `MAX_FOLDS` folds: with 460 students the paired standard error
#: of two models was 0.007, too wide to tell models 0.01 apart on test.
POOLED_VALIDATION_STUDENTS = 1000
#: Most validation folds pooled (each fits every candidate once more).
MAX_FOLDS = 3
#: A per-student validation (leave-last-n; an explicit split holding out a share of each student's
#: lectures) is this many folds of the training students: fold j holds out the lectures of the j-th
#: seeded group only, the other students keep their whole histories, and the folds' students are scored
#: together (each once). Held out from everyone at once, a short log loses what the models learn from:
#: on `sparse` (three lectures per student) the validation's training side kept one lecture per student,
#: no student with two, so no lecture co-occurred with another; there LightFM with learnrec's defaults
#: (side features) led LightFM's own configuration by 0.014 raw NDCG@10 (SE 0.001) and trailed it on
#: test by 0.067. With half the students whole, validation ranks the candidates as the test does
#: (library over defaults by 0.21 raw on validation, 0.07 on test). Two folds: the fewest that score
#: every student, at twice the fits.
STUDENT_FOLDS = 2
#: Per model, the candidates tried after the default (each a partial override of the defaults), in the
#: order tried. Keys the user fixes with --param are not searched.
GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "ease": tuple({"regularisation": lam} for lam in (100.0, 1000.0, 30.0, 3000.0, 10000.0)),
    "lightfm": (
        {"feature_weight": 0.0},
        {"feature_weight": 0.25},
        {"epochs": 30},
        {"feature_weight": 0.0, "epochs": 30},
        {"feature_weight": 0.25, "epochs": 30},
    ),
    "item_knn": ({"neighbours": 25}, {"neighbours": 400}),
}
#: A grid candidate replaces the choice, and the blend keeps blending over its best component, only with a
#: validation lead of more than this many standard errors of the paired per-student difference. The best
#: of many noisy candidates is optimistic (on `no_series` a 30-epoch LightFM led the defaults by 0.017 on
#: validation and trailed by 0.023 on test), a blend adds variance (a learned layer on the components'
#: ranks), and a small validation split (OULAD's leave-last-one keeps 245 students) proves little: a lead
#: inside the noise is a tie, and a tie goes to the simpler choice.
MARGIN_SE = 2.0
#: The least lead the blend must show, however many validation students.
BLEND_MARGIN = 0.005
#: `on_step(description)`: what the search does now (a progress line).
OnStep = Callable[[str], None]


@dataclass
class Trial:
    """One candidate scored on validation.

    Attributes:
        params: the candidate's parameters.
        value: the validation metric of the served lists (mean over `per_student`).
        seconds: fit and scoring time.
        per_student: the served metric per validation student (`training.evaluate.student_values`
            order, the folds one after the other), or None.
        raw_value: the validation metric of the model's raw ranking (scores, eligibility, top-k), or
            None when not scored.
        raw_per_student: the raw metric per validation student, or None.
        models: the fitted models, one per validation fold, while the blend may take them as its
            components (`select` drops them before it returns), else None.
    """

    params: dict[str, Any]
    value: float
    seconds: float
    per_student: npt.NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    raw_value: float | None = None
    raw_per_student: npt.NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    models: list[Recommender] | None = field(default=None, repr=False, compare=False)

    def own(self) -> tuple[float, npt.NDArray[np.float64] | None]:
        """The model's own ranking on validation, what its hyper-parameters are chosen on: (mean, per
        student) of the raw ranking, or of the served lists when the raw one was not scored."""
        if self.raw_value is None:
            return self.value, self.per_student
        return self.raw_value, self.raw_per_student


@dataclass
class ModelChoice:
    """What validation chose for one model.

    Attributes:
        model: registry name.
        params: constructor keyword arguments to fit the final model with (the seed aside).
        value: validation metric of the served lists of those parameters (the fallback component's
            for a fallen-back blend): what the champion is chosen by.
        trials: every candidate scored, in order.
        note: what the run should say (e.g. the blend's fallback), "" when nothing.
    """

    model: str
    params: dict[str, Any]
    value: float
    trials: list[Trial] = field(default_factory=list)
    note: str = ""


@dataclass
class SelectionReport:
    """Outcome of `select`.

    Attributes:
        metric: the metric key chosen on (``ndcg_at_10``).
        validation: sizes and parameters of the validation split.
        choices: per model, its choice.
        champion: the model with the best validation metric (None when none was scored).
        seconds: wall time of the search.
        budget_seconds: the budget it had.
        complete: every candidate of every grid was tried (False: the budget ran out first).
        errors: per model, why it could not be scored on validation.
    """

    metric: str
    validation: dict[str, Any]
    choices: dict[str, ModelChoice]
    champion: str | None
    seconds: float
    budget_seconds: float
    complete: bool
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the champion, what was tried, and the budget."""
        if "validation" in self.errors:
            return f"{self.errors['validation']}: every model keeps its default parameters"
        tried = sum(len(c.trials) for c in self.choices.values())
        best = (
            f"champion on validation: {self.champion} ({self.metric} {self.choices[self.champion].value:.4f})"
            if self.champion
            else "no model scored on validation"
        )
        budget = "every candidate tried" if self.complete else "budget reached before the end of the grids"
        return (
            f"{best}; {tried} candidates on {self.validation.get('test_students', 0):,} validation students "
            f"in {self.seconds:.0f} s ({budget}, budget {self.budget_seconds:g} s)"
        )


# ------------------------------------------------------------------------------------------------------
# the validation split


def explicit_shape(split: Split) -> tuple[float, bool]:
    """The kind of a given (explicit) split: (share of a test student's lectures held out, time-ordered).

    Time-ordered: for most test students (80 %) every test event is at or after their last training
    event. Only counts and times are read, never which lectures are relevant; per test student, on
    integer codes (`features.ids`) and numpy reductions.
    """
    import pandas as pd

    students = pd.Index(split.test_students, dtype=object)  # sorted, distinct
    train = split.train.events
    student = positions(students, train["student_id"])
    known = np.flatnonzero(student >= 0)  # the test students' training rows
    lecture, lectures = text_codes(train["lecture_id"].take(known))
    with_lecture = lecture >= 0  # (a null lecture id counts for no pair)
    pairs = np.unique(student[known[with_lecture]] * max(lectures.size, 1) + lecture[with_lecture])
    n_train = np.bincount(pairs // max(lectures.size, 1), minlength=len(students))
    relevant = positions(students, split.relevant["student_id"])
    n_test = np.bincount(relevant[relevant >= 0], minlength=len(students))
    both = (n_train > 0) & (n_test > 0)
    if not both.any():
        return 0.2, False
    share = float(np.median(n_test[both] / (n_train[both] + n_test[both])))

    last_train = np.full(len(students), np.iinfo(np.int64).min)
    np.maximum.at(last_train, student[known], event_microseconds(take_ascending(train, known)))
    test_student = positions(students, split.test["student_id"])
    tested = np.flatnonzero(test_student >= 0)
    first_test = np.full(len(students), np.iinfo(np.int64).max)
    np.minimum.at(first_test, test_student[tested], event_microseconds(take_ascending(split.test, tested)))
    timed = (n_train > 0) & (np.bincount(test_student[tested], minlength=len(students)) > 0)
    ordered = bool(timed.any() and float((first_test[timed] >= last_train[timed]).mean()) >= 0.8)
    return min(max(share, 0.05), 0.5), ordered


def _per_student_holdout(ds: Dataset, share: float, ordered: bool, seed: int) -> Split:
    """Hold out `share` of each training student's lectures: the latest ones or random ones."""
    from training.splits import explicit, first_times, held_out_pairs

    pairs, position = first_times(ds.events)
    # the order within a student: newest first when time-ordered, a seeded shuffle otherwise
    key = None if ordered else np.random.default_rng(seed).random(len(pairs))
    held = held_out_pairs(
        pairs, lambda count: np.minimum(np.maximum(1, np.round(share * count)), count - 1), key
    )
    is_test = held[position]
    del pairs, position, held  # before the two sides are copied out
    return explicit(ds, rows_where(ds.events, ~is_test), rows_where(ds.events, is_test))


def validation_split(split: Split, *, seed: int = 42) -> Split:
    """The split of the same kind as `split`, one step earlier, carved from `split.train` alone.

    Args:
        split: the evaluation split.
        seed: seed of the random hold-outs.

    Returns:
        The validation split (its `params["validation_of"]` names the kind it copies).

    Raises:
        SplitError: the training side is too small to hold anything out.
    """
    from training import splits

    ds = split.train
    params = split.params
    if split.name == "temporal":
        horizon = params.get("horizon_days")
        val: Split | None = None
        if horizon and split.as_of is not None:
            try:
                val = splits.temporal(
                    ds, cutoff=split.as_of - timedelta(days=float(horizon)), horizon_days=horizon
                )
            except SplitError:
                val = None
        if val is None or len(val.test_students) < MIN_VALIDATION_STUDENTS:
            quantile = float(params.get("quantile") or splits.DEFAULT_QUANTILE)
            val = splits.temporal(ds, quantile=quantile, horizon_days=horizon)
            if len(val.test_students) < MIN_VALIDATION_STUDENTS and horizon:
                val = splits.temporal(ds, quantile=quantile, horizon_days=None)
    elif split.name == "leave_last_n":
        val = splits.leave_last_n(ds, int(params.get("n", 1)))
    elif split.name in ("new_students", "new_region"):
        with_events = len(used_text(ds.events["student_id"]))
        share = len(split.test_students) / max(with_events + len(split.test_students), 1)
        val = splits.new_students(ds, fraction=min(max(share, 0.05), 0.5), seed=seed)
    elif split.name == "explicit":
        if split.cold_start:
            val = splits.new_students(ds, fraction=0.2, seed=seed)
        else:
            share, ordered = explicit_shape(split)
            val = _per_student_holdout(ds, share, ordered, seed)
    else:
        raise SplitError(f"no validation split for the {split.name} split")
    return _tagged(val, split.name)


def validation_folds(split: Split, *, seed: int = 42) -> list[Split]:
    """`validation_split` as the folds every candidate is fitted and scored on (their students pooled).

    * A per-student validation (leave-last-n; an explicit split not of new students) is split into
      `STUDENT_FOLDS` folds of the training students (`student_folds`): each holds out its own
      students' lectures and trains on everyone else's whole history.
    * A temporal split with a horizon whose validation steps back one horizon (cutoff - horizon) and
      holds fewer than `POOLED_VALIDATION_STUDENTS` test students gets the next folds one horizon
      earlier each (cutoff - 2 horizons, ...), up to `MAX_FOLDS` folds, while each keeps
      `MIN_VALIDATION_STUDENTS`. A sparse log (a few events per student) leaves few students active on
      both sides of one cutoff, and a choice on them is mostly noise.
    * Every other kind: one fold.

    Raises:
        SplitError: the training side is too small to hold anything out.
    """
    from training import splits

    first = validation_split(split, seed=seed)
    if split.name == "leave_last_n" or (split.name == "explicit" and not split.cold_start):
        return student_folds(first, STUDENT_FOLDS, seed=seed)
    folds = [first]
    horizon = split.params.get("horizon_days")
    if split.name != "temporal" or not horizon or split.as_of is None or first.as_of is None:
        return folds
    step = timedelta(days=float(horizon))
    if first.as_of != split.as_of - step:
        return folds  # the validation widened: no step of the split's own kind to repeat
    total = len(first.test_students)
    while total < POOLED_VALIDATION_STUDENTS and len(folds) < MAX_FOLDS:
        try:
            fold = splits.temporal(
                split.train, cutoff=split.as_of - (len(folds) + 1) * step, horizon_days=horizon
            )
        except SplitError:
            break
        if len(fold.test_students) < MIN_VALIDATION_STUDENTS:
            break
        folds.append(_tagged(fold, split.name))
        total += len(fold.test_students)
    return folds


def student_folds(val: Split, n_folds: int, *, seed: int = 42) -> list[Split]:
    """`val` as `n_folds` folds of its test students: fold j holds out only the j-th seeded group's
    test events; the other test students' held-out events go back to its training side.

    Args:
        val: a split whose test students keep training events of their own (not a cold-start split).
        n_folds: groups of students (>= 1).
        seed: seed of the grouping.

    Returns:
        The folds, each of `val`'s kind (its params name the fold: ``students_fold`` "j/n"); together
        they test each of `val`'s test students once.
    """
    import dataclasses

    from features.tables import sort_events

    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    ids = np.asarray(val.test_students, dtype=object)
    group = np.random.default_rng(seed).permutation(len(ids)) % n_folds
    folds = []
    for j in range(n_folds):
        mine = set(ids[group == j].tolist())
        if not mine:
            continue
        held = is_in(val.test["student_id"], mine)
        events = sort_events(concat_events([val.train.events, rows_where(val.test, ~held)]))
        relevant = val.relevant[is_in(val.relevant["student_id"], mine)]
        folds.append(
            dataclasses.replace(
                val,
                train=dataclasses.replace(val.train, events=events),
                test=rows_where(val.test, held),
                test_students=tuple(s for s in val.test_students if s in mine),
                relevant=relevant.reset_index(drop=True),
                params={**val.params, "students_fold": f"{j + 1}/{n_folds}"},
            )
        )
    return folds


def _tagged(val: Split, kind: str) -> Split:
    import dataclasses

    return dataclasses.replace(val, params={**val.params, "validation_of": kind})


def blend_holdout_params(split: Split) -> dict[str, Any]:
    """The blend's own weight hold-out for `split`: the same kind of split again, inside its training data.

    Temporal: the split's horizon (`holdout_days`); leave-last-n: each student's last n; an explicit
    split read as time-ordered: each student's latest share, as a random one: a random share.
    """
    if split.name == "temporal":
        return {"holdout_days": split.params.get("horizon_days")}
    if split.name == "leave_last_n":
        return {"holdout_days": 0, "holdout_share": 0.0, "holdout": int(split.params.get("n", 1))}
    if split.name == "explicit" and not split.cold_start:
        share, ordered = explicit_shape(split)
        if ordered:
            median_new = float(split.relevant.groupby("student_id").size().median())
            return {"holdout_days": 0, "holdout_share": 0.0, "holdout": max(1, round(median_new))}
        return {"holdout_kind": "random", "holdout_share": share}
    return {}


# ------------------------------------------------------------------------------------------------------
# the search


def library_candidates() -> dict[str, dict[str, Any]]:
    """Per model, the parameters that make it the library it wraps, used directly (LightFM's own model).

    Always tried first, whatever the budget, and the incumbent: the model's own choices replace it only
    with a lead beyond the noise of validation (DESIGN.md: a model must never do worse than the library
    it wraps, used directly).
    """
    from models.lightfm_hybrid import LIBRARY_PARAMS

    return {"lightfm": dict(LIBRARY_PARAMS)}


def candidates(name: str, fixed: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The candidates of one model, and how many of them come first and always run.

    Returns:
        (the library's own configuration with `fixed` (the user's --param values) when it does not
        override them, then `fixed` alone (the defaults), then each grid candidate that does not override
        them; the number of leading candidates tried whatever the budget). The first is the incumbent.
    """
    out = [dict(fixed)]
    library = library_candidates().get(name)
    if library is not None and not set(library) & set(fixed):
        out.insert(0, {**fixed, **library})
    always = len(out)
    for extra in GRIDS.get(name, ()):
        if set(extra) & set(fixed):
            continue
        out.append({**fixed, **extra})
    return out, always


def _score(
    name: str,
    params: Mapping[str, Any],
    folds: Sequence[Split],
    data: Sequence[TrainingData],
    profiles: Dataset,
    ks: tuple[int, ...],
    metric: str,
    seed: int,
    *,
    keep: bool = False,
    fitted: Sequence[Mapping[str, Recommender]] | None = None,
) -> Trial:
    """Fit the candidate on each validation fold and score its served lists and its raw ranking, as the
    test is scored; per student (the folds' students pooled), so a lead can be weighed against the noise
    of validation. `profiles`: the dataset holding every validation student's profile. `keep`: the trial
    keeps its fitted models; `fitted`: per fold, models fitted on that fold a blend takes as components."""
    from training.evaluate import student_values
    from training.pipeline import fit

    started = time.perf_counter()
    parts: dict[str, list[npt.NDArray[np.float64]]] = {"served": [], "raw": []}
    models: list[Recommender] = []
    for i, (val, fold_data) in enumerate(zip(folds, data, strict=True)):
        model, _ = fit(name, params, fold_data, seed, None if fitted is None else fitted[i])
        for kind, values in student_values(model, val, profiles, ks[0], metric, data=fold_data).items():
            parts[kind].append(values)
        if keep:
            models.append(model)
    served, raw = np.concatenate(parts["served"]), np.concatenate(parts["raw"])
    seconds = time.perf_counter() - started
    return Trial(dict(params), _mean(served), seconds, served, _mean(raw), raw, models=models or None)


def _mean(values: npt.NDArray[np.float64]) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else 0.0


def paired_standard_error(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Standard error of the mean of a - b over the same students (0 with fewer than two).

    Args:
        a: per-student values of one model.
        b: the other model's, same students, same order.

    Returns:
        std(a - b) / sqrt(n).
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    diff = diff[np.isfinite(diff)]
    if diff.size < 2:
        return 0.0
    return float(np.std(diff, ddof=1) / np.sqrt(diff.size))


def select(
    models: Sequence[str],
    split: Split,
    *,
    ks: tuple[int, ...] = (10,),
    metric: str = "ndcg",
    params: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 42,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    on_step: OnStep | None = None,
) -> SelectionReport:
    """Choose each model's hyper-parameters, the blend's fallback and the champion on validation.

    Args:
        models: registry names.
        split: the evaluation split; only its training side is used (and, for an explicit split, its
            shape: see `explicit_shape`).
        ks: cut-offs; the first is the one chosen on.
        metric: metric chosen on (``ndcg``).
        params: per model, parameters the user fixed (never searched over).
        seed: seed of the models and of the random hold-outs.
        budget_seconds: time for the candidates beyond the defaults (the defaults always run).
        on_step: progress callback.

    Returns:
        The choices; `choices[name].params` are the final model's keyword arguments (the blend's
        include its components' chosen parameters and its hold-out of the split's kind).
    """
    from features.matrices import build_training_data
    from models.errors import ModelError
    from training.metrics import metric_key

    started = time.perf_counter()
    say = on_step or (lambda _line: None)
    key = metric_key(metric, ks[0])
    fixed = {m: dict((params or {}).get(m, {})) for m in models}
    say("validation split")
    try:
        folds = validation_folds(split, seed=seed)
    except SplitError as exc:
        # too little training data to carve a validation split: defaults, and no champion by metric
        return SelectionReport(key, {}, {}, None, time.perf_counter() - started, budget_seconds, False,
                               {"validation": f"no validation split: {exc}"})  # fmt: skip
    data = [
        build_training_data(v.train.students, v.train.lectures, v.train.events, as_of=v.as_of) for v in folds
    ]
    choices: dict[str, ModelChoice] = {}
    errors: dict[str, str] = {}
    plain = [m for m in models if m != "blend"]
    grids: dict[str, list[dict[str, Any]]] = {}
    always: dict[str, int] = {}
    for m in plain:
        grids[m], always[m] = candidates(m, fixed[m])
    rounds = max((len(g) for g in grids.values()), default=0)
    complete = True
    # the blend takes its components' chosen fits on each fold instead of fitting them again
    blend_components = _blend_components(fixed["blend"]) if "blend" in models else ()
    for r in range(rounds):
        for name in plain:
            if r >= len(grids[name]) or name in errors:
                continue
            if r >= always[name] and time.perf_counter() - started > budget_seconds:
                complete = False
                continue
            say(f"validation: {name} candidate {r + 1}/{len(grids[name])}")
            try:
                trial = _score(
                    name, grids[name][r], folds, data, split.train, ks, metric, seed,
                    keep=name in blend_components,
                )  # fmt: skip
            except (ModelError, ValueError) as exc:
                if r == 0:
                    errors[name] = str(exc)
                continue
            choice = choices.setdefault(name, ModelChoice(name, trial.params, trial.value))
            choice.trials.append(trial)
            # the first candidate (the library's configuration, else the defaults) is the incumbent;
            # any other replaces it only with a lead of the model's own ranking beyond the noise
            (value, values), (kept, kept_values) = trial.own(), _chosen_trial(choice).own()
            if value - kept > MARGIN_SE * _standard_error(values, kept_values):
                choice.params, choice.value = trial.params, trial.value
            chosen = _chosen_trial(choice)
            for other in choice.trials:
                if other is not chosen:
                    other.models = None
    if "blend" in models:
        _select_blend(choices, errors, fixed["blend"], split, folds, data, ks, metric, seed, say)
    for choice in choices.values():
        for trial in choice.trials:
            trial.models = None
    champion = max(choices, key=lambda m: choices[m].value, default=None)
    return SelectionReport(
        metric=key,
        validation={
            **folds[0].summary(),
            **{f"param.{k}": v for k, v in folds[0].params.items()},
            "folds": len(folds),
            "test_students": sum(len(v.test_students) for v in folds),
        },
        choices=choices,
        champion=champion,
        seconds=time.perf_counter() - started,
        budget_seconds=budget_seconds,
        complete=complete,
        errors=errors,
    )


def _select_blend(
    choices: dict[str, ModelChoice],
    errors: dict[str, str],
    fixed: dict[str, Any],
    split: Split,
    folds: Sequence[Split],
    data: Sequence[TrainingData],
    ks: tuple[int, ...],
    metric: str,
    seed: int,
    say: OnStep,
) -> None:
    """Score the blend of the chosen components on validation; fall back when it does not beat the best."""
    from models.errors import ModelError
    from training.metrics import metric_key

    components = _blend_components(fixed)
    component_params = {
        c: {**choices[c].params, **dict(fixed.get("component_params", {}).get(c, {}))}
        for c in components
        if c in choices
    }
    base = {**fixed, "component_params": component_params}
    base.pop("fallback", None)
    say("validation: blend")
    kept = {c: _chosen_trial(choices[c]).models for c in components if c in choices}
    fitted = [{c: models[i] for c, models in kept.items() if models} for i in range(len(folds))]
    try:
        # inside validation the blend's hold-out copies the validation split, as it copies the test one
        trial = _score(
            "blend", {**blend_holdout_params(folds[0]), **base}, folds, data, split.train, ks, metric, seed,
            fitted=fitted,
        )  # fmt: skip
    except (ModelError, ValueError) as exc:
        errors["blend"] = str(exc)
        return
    final = {**blend_holdout_params(split), **base}
    scored = [c for c in components if c in choices]
    best = max(scored, key=lambda c: choices[c].value, default=None)
    choice = ModelChoice("blend", final, trial.value, [trial])
    if best is not None:
        key = metric_key(metric, ks[0])
        lead = trial.value - choices[best].value
        se = _standard_error(trial.per_student, _chosen_trial(choices[best]).per_student)
        margin = max(BLEND_MARGIN, MARGIN_SE * se)
        versus = (
            f"{key} {trial.value:.4f} vs {choices[best].value:.4f}: lead {lead:+.4f}, "
            f"needed > {margin:.4f} (max of {BLEND_MARGIN:g} and {MARGIN_SE:g} x SE {se:.4f})"
        )
        if lead <= margin:
            choice.params = {**final, "fallback": best}
            choice.value = choices[best].value
            choice.note = (
                f"blend falls back to {best}: no lead over it beyond the noise of validation ({versus})"
            )
        else:
            choice.note = f"blend keeps blending: it beats {best} on validation ({versus})"
    choices["blend"] = choice


def _blend_components(fixed: Mapping[str, Any]) -> tuple[str, ...]:
    """The components of the blend with the user's fixed parameters `fixed`."""
    from models.blend import DEFAULT_COMPONENTS

    return tuple(fixed.get("components", DEFAULT_COMPONENTS))


def _standard_error(a: npt.NDArray[np.float64] | None, b: npt.NDArray[np.float64] | None) -> float:
    """Paired standard error of two trials' per-student values (0 when either has none)."""
    if a is None or b is None or a.shape != b.shape:
        return 0.0
    return paired_standard_error(a, b)


def _chosen_trial(choice: ModelChoice) -> Trial:
    """The trial whose parameters the choice kept (the first of equal ones)."""
    for trial in choice.trials:
        if trial.params == choice.params and trial.value == choice.value:
            return trial
    return choice.trials[0]
