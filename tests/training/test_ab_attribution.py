"""Outcome attribution, case by case with hand-computed answers."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from training.ab.attribution import OUTCOME_COLUMNS, STUDENT_COLUMNS, attribute
from training.ab.errors import AnalysisInputError

T0 = pd.Timestamp("2025-09-01 10:00", tz="UTC")


def X(
    rid: str, sid: str, lectures: list[str], at: pd.Timestamp, variant: str = "control", exp: str | None = "e"
):
    return {
        "request_id": rid,
        "student_id": sid,
        "region": "taebaek",
        "experiment": exp,
        "variant": variant,
        "model_version": "3",
        "lecture_ids": lectures,
        "shown_at": at,
    }


_n = iter(range(10**6))


def E(sid: str, lecture: str, kind: str, at: pd.Timestamp, rid: str | None = None) -> dict:
    return {
        "event_id": f"ev{next(_n)}",
        "student_id": sid,
        "lecture_id": lecture,
        "type": kind,
        "progress": 1.0 if kind == "complete" else 0.0,
        "occurred_at": at,
        "request_id": rid,
    }


def run(exposures: list[dict], events: list[dict], **kw):
    return attribute(
        pd.DataFrame(exposures), pd.DataFrame(events, columns=list(E("s", "l", "enrol", T0))), **kw
    )


def outcome(att, sid: str, lecture: str) -> dict:
    outcomes = att.outcomes.to_pandas()  # (Arrow: one row per attributed lecture)
    rows = outcomes[(outcomes["student_id"] == sid) & (outcomes["lecture_id"] == lecture)]
    assert len(rows) == 1, rows
    return rows.iloc[0].to_dict()


def test_enrolment_inside_window_goes_to_the_exposure() -> None:
    att = run([X("r1", "s1", ["L1", "L2"], T0)], [E("s1", "L2", "enrol", T0 + timedelta(days=2))])
    o = outcome(att, "s1", "L2")
    assert o["request_id"] == "r1" and o["via"] == "window" and o["variant"] == "control"
    assert att.exposures.to_pandas().set_index("request_id").loc["r1", "n_enrolled"] == 1


def test_window_bounds_are_inclusive_and_exclude_earlier_enrolments() -> None:
    w = timedelta(days=7)
    att = run(
        [X("r1", "s1", ["A", "B", "C"], T0)],
        [
            E("s1", "A", "enrol", T0 + w),  # exactly at the edge: in
            E("s1", "B", "enrol", T0 + w + timedelta(microseconds=1)),  # just after: out
            E("s1", "C", "enrol", T0 - timedelta(seconds=1)),  # before the exposure: out
        ],
    )
    assert att.outcomes["lecture_id"].to_pylist() == ["A"]


def test_window_is_configurable() -> None:
    ex = [X("r1", "s1", ["A"], T0)]
    ev = [E("s1", "A", "enrol", T0 + timedelta(days=3))]
    assert len(run(ex, ev, window=timedelta(days=2)).outcomes) == 0
    assert len(run(ex, ev, window=timedelta(days=3)).outcomes) == 1


def test_first_matching_exposure_wins() -> None:
    att = run(
        [
            X("r1", "s1", ["A", "B"], T0),
            X("r2", "s1", ["B", "C"], T0 + timedelta(days=1)),
            X("r3", "s1", ["A"], T0 - timedelta(days=10)),  # listed A too, but its window is over
        ],
        [E("s1", "B", "enrol", T0 + timedelta(days=2)), E("s1", "A", "enrol", T0 + timedelta(hours=1))],
    )
    assert outcome(att, "s1", "B")["request_id"] == "r1"
    assert outcome(att, "s1", "A")["request_id"] == "r1"
    n = att.exposures.to_pandas().set_index("request_id")["n_enrolled"]
    assert n.to_dict() == {"r3": 0, "r1": 2, "r2": 0}


def test_tie_on_shown_at_is_broken_by_request_id() -> None:
    att = run(
        [X("r9", "s1", ["A"], T0), X("r2", "s1", ["A"], T0)],
        [E("s1", "A", "enrol", T0 + timedelta(hours=1))],
    )
    assert outcome(att, "s1", "A")["request_id"] == "r2"


def test_request_id_on_the_event_attributes_directly() -> None:
    att = run(
        [X("r1", "s1", ["A"], T0), X("r2", "s1", ["B"], T0 + timedelta(hours=1))],
        [
            # the portal tied it to r2, although r1 listed nothing relevant and r2 did not list Z
            E("s1", "Z", "enrol", T0 + timedelta(days=30), rid="r2"),
            # tied to r2 although r1 would win by the window rule
            E("s1", "A", "enrol", T0 + timedelta(hours=2), rid="r2"),
        ],
    )
    assert outcome(att, "s1", "Z")["request_id"] == "r2" and outcome(att, "s1", "Z")["via"] == "request_id"
    assert outcome(att, "s1", "A")["request_id"] == "r2"


def test_request_id_of_another_student_is_not_direct() -> None:
    att = run(
        [X("r1", "s1", ["A"], T0), X("r2", "s2", ["A"], T0)],
        [E("s1", "A", "enrol", T0 + timedelta(hours=1), rid="r2")],
    )
    o = outcome(att, "s1", "A")
    assert o["request_id"] == "r1" and o["via"] == "window"
    assert (att.students.set_index("student_id")["n_enrolled"]).to_dict() == {"s1": 1, "s2": 0}


def test_enrolment_of_a_lecture_never_shown_is_not_attributed() -> None:
    att = run([X("r1", "s1", ["A"], T0)], [E("s1", "B", "enrol", T0 + timedelta(hours=1))])
    assert att.outcomes.num_rows == 0
    assert not att.students.iloc[0]["enrolled"]


def test_re_enrolment_counts_once_at_the_earliest() -> None:
    att = run(
        [X("r1", "s1", ["A"], T0), X("r2", "s1", ["A"], T0 + timedelta(days=3))],
        [E("s1", "A", "enrol", T0 + timedelta(days=1)), E("s1", "A", "enrol", T0 + timedelta(days=4))],
    )
    o = outcome(att, "s1", "A")
    assert o["request_id"] == "r1" and o["enrolled_at"] == T0 + timedelta(days=1)
    assert att.students.iloc[0]["n_enrolled"] == 1


def test_completion_follows_its_attributed_enrolment() -> None:
    att = run(
        [X("r1", "s1", ["A", "B", "C"], T0)],
        [
            E("s1", "A", "enrol", T0 + timedelta(days=1)),
            E("s1", "A", "complete", T0 + timedelta(days=40)),  # long after the window: still counts
            E("s1", "B", "complete", T0 + timedelta(days=2)),  # no attributed enrolment: not counted
            E("s1", "C", "complete", T0 + timedelta(hours=1)),
            E("s1", "C", "enrol", T0 + timedelta(hours=2)),  # complete before enrol: not counted
        ],
    )
    assert outcome(att, "s1", "A")["completed_at"] == T0 + timedelta(days=40)
    assert pd.isna(outcome(att, "s1", "C")["completed_at"])
    s = att.students.iloc[0]
    assert (s["n_enrolled"], s["n_completed"], bool(s["completed"])) == (2, 1, True)
    assert att.exposures["n_completed"].to_pylist() == [1]


def test_completion_window() -> None:
    ex = [X("r1", "s1", ["A"], T0)]
    ev = [E("s1", "A", "enrol", T0), E("s1", "A", "complete", T0 + timedelta(days=20))]
    assert run(ex, ev, completion_window=timedelta(days=10)).students.iloc[0]["n_completed"] == 0
    assert run(ex, ev, completion_window=timedelta(days=20)).students.iloc[0]["n_completed"] == 1


def test_per_student_table() -> None:
    att = run(
        [
            X("r1", "s1", ["A"], T0, "challenger"),
            X("r2", "s1", ["B"], T0 + timedelta(days=1), "challenger"),
            X("r3", "s2", ["A"], T0 + timedelta(days=2), "control"),
            X("r4", "s2", ["A"], T0 + timedelta(days=3), "challenger"),  # config changed mid-way
        ],
        [E("s1", "B", "enrol", T0 + timedelta(days=1, hours=1))],
    )
    assert list(att.students.columns) == list(STUDENT_COLUMNS)
    assert att.outcomes.column_names == list(OUTCOME_COLUMNS)
    s = att.students.set_index("student_id")
    assert s.loc["s1", "variant"] == "challenger" and s.loc["s1", "n_exposures"] == 2
    assert s.loc["s1", "first_shown_at"] == T0 and s.loc["s1", "first_enrolled_at"] == T0 + timedelta(
        days=1, hours=1
    )
    assert s.loc["s2", "variant"] == "control" and s.loc["s2", "n_variants"] == 2
    assert pd.isna(s.loc["s2", "first_enrolled_at"])


def test_duplicates_and_non_experiment_exposures() -> None:
    att = run(
        [X("r1", "s1", ["A"], T0), X("r1", "s1", ["A"], T0), X("r0", "s9", ["A"], T0, exp=None)],
        [E("s1", "A", "enrol", T0 + timedelta(hours=1)), E("s9", "A", "enrol", T0 + timedelta(hours=1))],
    )
    assert att.notes["duplicate_exposures_dropped"] == 1
    assert att.students["student_id"].tolist() == ["s1"]
    assert att.exposures.num_rows == 1


def test_each_experiment_attributes_separately() -> None:
    att = run(
        [X("r1", "s1", ["A"], T0, exp="old"), X("r2", "s1", ["A"], T0 + timedelta(days=1), exp="new")],
        [E("s1", "A", "enrol", T0 + timedelta(days=2))],
    )
    outcomes = att.outcomes.to_pylist()
    assert sorted((o["experiment"], o["request_id"]) for o in outcomes) == [
        ("new", "r2"),
        ("old", "r1"),
    ]


def test_empty_events_and_missing_columns() -> None:
    att = run([X("r1", "s1", ["A"], T0)], [])
    assert att.outcomes.num_rows == 0 and att.students.iloc[0]["n_enrolled"] == 0
    with pytest.raises(AnalysisInputError, match=r"events: missing column\(s\) \['occurred_at'\]"):
        attribute(
            pd.DataFrame([X("r1", "s1", ["A"], T0)]),
            pd.DataFrame(columns=["student_id", "lecture_id", "type"]),
        )


def test_a_daily_look_equals_attributing_only_what_came_before_it() -> None:
    """`as_of` (one attribution cut per look) = attributing the exposures and events before the cut."""
    import numpy as np

    from training.ab.attribution import as_of

    rng = np.random.default_rng(3)
    day = pd.Timedelta(days=1)
    exposures, events = [], []
    for i in range(60):
        sid = f"s{i}"
        for v in range(int(rng.integers(1, 4))):
            at = T0 + float(rng.uniform(0, 6)) * day
            lectures = [f"l{j}" for j in rng.choice(8, 3, replace=False)]
            exposures.append(X(f"r{i}.{v}", sid, lectures, at, variant="treatment" if i % 2 else "control"))
            for lec in lectures[: int(rng.integers(0, 3))]:
                enrol = at + float(rng.uniform(0, 2)) * day
                rid = f"r{i}.{v}" if rng.random() < 0.5 else None
                events.append(E(sid, lec, "enrol", enrol, rid))
                if rng.random() < 0.5:
                    events.append(E(sid, lec, "complete", enrol + float(rng.uniform(0, 3)) * day))
    full = run(exposures, events)
    for d in (1, 2, 4, 7, 9):
        cut = T0 + d * day
        again = run(
            [x for x in exposures if x["shown_at"] < cut], [e for e in events if e["occurred_at"] < cut]
        ).students
        got = as_of(full, cut)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), again.reset_index(drop=True))
        # each look's row is labelled by the student's row in the whole run's table (covariates join by it)
        assert (full.students.loc[got.index, "student_id"] == got["student_id"]).all()
        assert 0 < len(got) <= len(full.students)


def test_a_look_reads_the_first_exposure_and_the_variants_shown_before_it() -> None:
    """A student whose first exposure carries no region and who is switched to another variant later:
    each look has the region and the number of variants seen before its cut, as attributing only what
    came before gives them."""
    from training.ab.attribution import as_of

    day = pd.Timedelta(days=1)
    exposures = [
        {**X("r1", "s1", ["A"], T0), "region": None},
        X("r2", "s1", ["B"], T0 + 2 * day, variant="treatment"),
        X("r3", "s2", ["A"], T0 + 0.5 * day),
    ]
    events = [E("s1", "B", "enrol", T0 + 2.5 * day), E("s1", "B", "complete", T0 + 4 * day)]
    full = run(exposures, events)
    s1 = full.students.set_index("student_id").loc["s1"]
    assert (s1["region"], s1["variant"], s1["n_variants"], s1["n_completed"]) == ("taebaek", "control", 2, 1)
    for cut, region, n_variants, completed in (
        (T0 + 1 * day, None, 1, 0),
        (T0 + 3 * day, "taebaek", 2, 0),
        (T0 + 4 * day, "taebaek", 2, 0),  # (a completion at the cut itself is after the look)
        (T0 + 5 * day, "taebaek", 2, 1),
    ):
        look = as_of(full, cut)
        row = look.set_index("student_id").loc["s1"]
        assert (None if pd.isna(row["region"]) else row["region"]) == region
        assert (row["n_variants"], row["n_completed"]) == (n_variants, completed)
        again = run(
            [x for x in exposures if x["shown_at"] < cut], [e for e in events if e["occurred_at"] < cut]
        ).students
        pd.testing.assert_frame_equal(look.reset_index(drop=True), again.reset_index(drop=True))


def test_first_at_or_after_finds_what_a_loop_finds() -> None:
    """The merge behind rules 2 and 4: for each query, the first row of its key at or after its time
    (equal times: the row listed first), against a plain loop on random keys with many ties."""
    import numpy as np

    from training.ab.attribution import _first_at_or_after

    for seed in range(30):
        rng = np.random.default_rng(seed)
        n, q = int(rng.integers(0, 40)), int(rng.integers(0, 30))
        keys, times = rng.integers(0, 6, n), rng.integers(-5, 5, n)
        query_keys, query_times = rng.integers(0, 8, q), rng.integers(-6, 6, q)
        expected = []
        for k, t in zip(query_keys, query_times, strict=True):
            found = [(times[i], i) for i in range(n) if keys[i] == k and times[i] >= t]
            expected.append(min(found)[1] if found else -1)
        assert _first_at_or_after(keys, times, query_keys, query_times).tolist() == expected


def _plain_rules(exposures: list[dict], events: list[dict], window: timedelta, completion_window):  # type: ignore[no-untyped-def]
    """The module docstring's rules, one loop each, for (experiment, student, lecture) -> (request, via,
    enrolled_at, completed_at)."""
    kept: dict[str, dict] = {}
    for x in sorted(exposures, key=lambda x: (x["shown_at"], x["request_id"])):
        if x["experiment"] and x["request_id"] not in kept:
            kept[x["request_id"]] = x
    member = {(x["experiment"], x["student_id"]) for x in kept.values()}
    found: dict[tuple, tuple] = {}
    for row, ev in enumerate(events):
        if ev["type"] != "enrol":
            continue
        for exp in sorted({e for e, s in member if s == ev["student_id"]}):
            tied = kept.get(ev["request_id"])
            if tied is not None and tied["experiment"] == exp and tied["student_id"] == ev["student_id"]:
                hit, via = tied, "request_id"
            else:
                fits = [
                    x for x in kept.values()
                    if x["experiment"] == exp and x["student_id"] == ev["student_id"]
                    and ev["lecture_id"] in x["lecture_ids"]
                    and x["shown_at"] <= ev["occurred_at"] <= x["shown_at"] + window
                ]  # fmt: skip
                hit = min(fits, key=lambda x: (x["shown_at"], x["request_id"])) if fits else None
                via = "window"
            key = (exp, ev["student_id"], ev["lecture_id"])
            if hit is not None and (key not in found or (ev["occurred_at"], row) < found[key][3]):
                found[key] = (hit["request_id"], via, ev["occurred_at"], (ev["occurred_at"], row))
    out = {}
    for key, (request, via, enrolled, _) in found.items():
        done = [
            e["occurred_at"] for e in events
            if e["type"] == "complete" and (e["student_id"], e["lecture_id"]) == key[1:]
            and e["occurred_at"] >= enrolled
            and (completion_window is None or e["occurred_at"] <= enrolled + completion_window)
        ]  # fmt: skip
        out[key] = (request, via, enrolled, min(done) if done else None)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_the_rules_hold_on_random_logs_with_ties_redeliveries_and_two_experiments(seed: int) -> None:
    """Rules 1-4 counted by plain loops agree with the columnar attribution, given pandas frames or Arrow
    tables (what the report reads): equal show times, a request id delivered twice, a student in two
    experiments, enrolments tied to another student's request, completions before the enrolment."""
    import numpy as np

    from training.ab.columns import as_table

    rng = np.random.default_rng(seed)
    day = pd.Timedelta(days=1)
    exposures = [
        X(
            f"r{int(rng.integers(0, 12))}" if rng.random() < 0.2 else f"r{i}",
            f"s{int(rng.integers(0, 5))}",
            [f"L{j}" for j in rng.choice(6, int(rng.integers(0, 4)), replace=False)],
            T0 + int(rng.integers(0, 4)) * day,  # whole days: many equal show times
            variant=["control", "treatment"][int(rng.integers(0, 2))],
            exp=[None, "e", "f"][int(rng.choice(3, p=[0.1, 0.6, 0.3]))],
        )
        for i in range(25)
    ]
    events = [
        E(
            f"s{int(rng.integers(0, 6))}", f"L{int(rng.integers(0, 7))}",
            ["enrol", "complete", "progress"][int(rng.choice(3, p=[0.6, 0.3, 0.1]))],
            T0 + int(rng.integers(-24, 24 * 10)) * pd.Timedelta(hours=1),
            exposures[int(rng.integers(0, 25))]["request_id"] if rng.random() < 0.3 else None,
        )
        for _ in range(60)
    ]  # fmt: skip
    window = timedelta(days=int(rng.integers(0, 8)))
    completion_window = None if seed % 2 else timedelta(days=2)
    expected = _plain_rules(exposures, events, window, completion_window)
    frame = pd.DataFrame(events, columns=list(E("s", "l", "enrol", T0)))
    for ex, ev in ((pd.DataFrame(exposures), frame), (as_table(pd.DataFrame(exposures)), as_table(frame))):
        got = attribute(ex, ev, window=window, completion_window=completion_window).outcomes.to_pandas()
        rows = {
            (r.experiment, r.student_id, r.lecture_id): (
                r.request_id, r.via, r.enrolled_at, None if pd.isna(r.completed_at) else r.completed_at
            )
            for r in got.itertuples()
        }  # fmt: skip
        assert rows == expected


def test_two_enrolments_at_one_instant_go_to_the_one_logged_first() -> None:
    at = T0 + timedelta(hours=5)
    exposures = [X("r1", "s1", ["A"], T0), X("r2", "s1", ["B"], T0 + timedelta(hours=1))]
    for first, second, request in (("r2", None, "r2"), (None, "r2", "r1")):
        att = run(exposures, [E("s1", "A", "enrol", at, first), E("s1", "A", "enrol", at, second)])
        assert outcome(att, "s1", "A")["request_id"] == request


def test_events_and_exposures_without_an_id_or_a_time_are_left_out() -> None:
    """A null lecture, student or time cannot be placed: it attributes nothing and takes nothing (a null
    must not stand for another student's or lecture's code)."""
    exposures = [
        X("r0", "s1", ["Z"], T0 - timedelta(hours=1)),
        X("r1", "s1", ["A"], T0 + timedelta(hours=1)),
        {**X("r2", "s1", ["A"], T0, exp="f"), "student_id": None},  # earlier, in another experiment
        X("r3", "s1", ["A"], T0 + timedelta(days=3)),
    ]
    events = [
        E("s1", "A", "enrol", T0 + timedelta(hours=2)),
        {**E("s2", "A", "complete", T0 + timedelta(hours=3)), "lecture_id": None},
        {**E("s1", "A", "enrol", T0, "r3"), "occurred_at": pd.NaT},
        {**E("s1", "B", "enrol", T0 + timedelta(hours=3)), "lecture_id": None},
    ]
    att = run(exposures, events)
    assert att.outcomes.select(["student_id", "lecture_id", "request_id"]).to_pylist() == [
        {"student_id": "s1", "lecture_id": "A", "request_id": "r1"}
    ]
    assert att.outcomes["enrolled_at"].to_pylist() == [T0 + timedelta(hours=2)]
    assert att.outcomes["completed_at"].null_count == 1


def test_each_daily_look_carries_the_covariates_of_its_own_students() -> None:
    """`daily_looks` joins the covariates to a look's students by their row label in the attribution: the
    same as joining by student id, whatever the order of the rows handed in."""
    import numpy as np

    from training.ab.attribution import as_of
    from training.ab.covariates import COVARIATES, add_pre_activity
    from training.ab.looks import daily_looks
    from training.ab.stats import analyse, metric

    rng = np.random.default_rng(5)
    day = pd.Timedelta(days=1)
    exposures, events = [], []
    for i in range(120):
        sid, variant = f"s{i}", "treatment" if i % 2 else "control"
        for _ in range(int(rng.integers(0, 4))):  # activity before the experiment: the covariates
            events.append(E(sid, "P", "enrol", T0 - float(rng.uniform(1, 20)) * day))
        at = T0 + float(rng.uniform(0, 5)) * day
        exposures.append(X(f"r{i}", sid, ["A", "B"], at, variant=variant))
        if rng.random() < 0.3 + 0.1 * (i % 2) + 0.1 * min(i % 7, 3):
            events.append(E(sid, "A", "enrol", at + float(rng.uniform(0, 2)) * day))
    att = run(exposures, events)
    students = add_pre_activity(att.students, pd.DataFrame(events))
    assert students[list(COVARIATES)].to_numpy().sum() > 0
    shares = {"control": 0.5, "treatment": 0.5}
    looks = daily_looks(
        att, students.sample(frac=1.0, random_state=1), shares, ["taebaek"], T0, T0 + 6 * day,
        covariates=COVARIATES,
    )  # fmt: skip
    pooled = looks.loc[looks["region"] == "pooled"].set_index("day")
    assert len(pooled) >= 5
    by_id = students.set_index("student_id")[list(COVARIATES)]
    for d, row in pooled.iterrows():
        look = as_of(att, min(T0 + int(d) * day, T0 + 6 * day + pd.Timedelta(microseconds=1)))
        look = look.join(by_id, on="student_id")
        expected = analyse(look, shares, metrics=[metric("enrolments_per_student")], regions=["taebaek"],
                           covariates=COVARIATES).comparisons  # fmt: skip
        est = next(c for c in expected if c.region == "pooled").decision
        assert (row["lift"], row["ci_low"], row["ci_high"]) == pytest.approx((est.abs_lift, *est.abs_ci))
