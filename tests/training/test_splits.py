"""Splits: deterministic, train and test disjoint where they must be, relevant lectures never in training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from features.errors import SchemaError
from features.event_table import as_event_table
from features.tables import Dataset, sort_events
from tests.training import modelling_data
from training.errors import SplitError
from training.splits import (
    DEFAULT_HORIZON_DAYS,
    PairTimes,
    Split,
    explicit,
    first_times,
    held_out_pairs,
    leave_last_n,
    make_split,
    new_region,
    new_students,
    pair_codes,
    temporal,
)


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return modelling_data.dataset()


def _frame(events: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """Events (an Arrow table, as a dataset and a split hold them) as a pandas frame, for reading."""
    return events.to_pandas() if isinstance(events, pa.Table) else events


def _text(column: pa.ChunkedArray) -> list[str]:
    """An Arrow column's values as Python text (dictionary-encoded ids decoded)."""
    return [str(v) for v in column.to_pylist()]


def _pairs(events: pd.DataFrame | pa.Table) -> set[tuple[str, str]]:
    events = _frame(events)
    return set(zip(events["student_id"].astype(str), events["lecture_id"].astype(str), strict=True))


def _shares_memory(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Whether a chunk of `a` and a chunk of `b` view the same memory (numpy views of the Arrow buffers,
    taken without a copy)."""
    views = [[chunk.to_numpy(zero_copy_only=True) for chunk in column.chunks] for column in (a, b)]
    return any(np.shares_memory(x, y) for x in views[0] for y in views[1])


def _same_table(a: pa.Table, b: pa.Table) -> None:
    assert a.schema == b.schema
    pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas())


def _check_relevant(split: Split) -> None:
    train_pairs = _pairs(split.train.events)
    relevant = _pairs(split.relevant)
    assert relevant, "a split must have something to find"
    assert not relevant & train_pairs, "a relevant lecture is in the student's training history"
    assert relevant <= _pairs(split.test)
    assert set(split.test_students) == {s for s, _ in relevant}
    assert list(split.test_students) == sorted(split.test_students)


def _same(a: Split, b: Split) -> None:
    _same_table(a.train.events, b.train.events)
    _same_table(a.test, b.test)
    pd.testing.assert_frame_equal(a.relevant, b.relevant)
    assert a.test_students == b.test_students and a.params == b.params


def test_temporal_cutoff_default_quantile(ds: Dataset) -> None:
    split = temporal(ds)
    cut = pd.Timestamp(split.params["cutoff"])
    assert split.as_of is not None and pd.Timestamp(split.as_of) == cut
    train, test = split.train.events.to_pandas(), split.test.to_pandas()
    assert (train["occurred_at"] <= cut).all()
    assert (test["occurred_at"] > cut).all()
    share = len(split.train.events) / len(ds.events)
    assert 0.75 <= share <= 0.85  # quantile 0.8 of the event times
    # every test student was seen before the cutoff
    assert set(split.test_students) <= set(train["student_id"].astype(str))
    assert not split.cold_start
    _check_relevant(split)
    _same(split, temporal(ds))


def test_temporal_explicit_cutoff_and_empty_side(ds: Dataset) -> None:
    split = temporal(ds, cutoff="2025-03-20")
    assert split.params == {"cutoff": "2025-03-20T00:00:00+00:00", "horizon_days": 14}
    with pytest.raises(SplitError, match="no test student"):
        temporal(ds, cutoff="2030-01-01")
    with pytest.raises(SplitError, match="no training events"):
        temporal(ds, cutoff="2000-01-01")
    with pytest.raises(SplitError, match="quantile"):
        temporal(ds, quantile=1.5)


def test_temporal_horizon_limits_the_test_window(ds: Dataset) -> None:
    assert DEFAULT_HORIZON_DAYS == 14
    default = temporal(ds)
    assert default.params["horizon_days"] == 14
    unbounded = temporal(ds, horizon_days=None)
    assert unbounded.params["horizon_days"] is None
    cut = pd.Timestamp(default.params["cutoff"])
    for days in (7, 14, 2.5):
        split = temporal(ds, horizon_days=days)
        assert split.params["horizon_days"] == days and split.params["cutoff"] == default.params["cutoff"]
        end = cut + pd.Timedelta(days=days)
        test = split.test.to_pandas()
        assert (test["occurred_at"] > cut).all() and (test["occurred_at"] <= end).all()
        # the same training side; the test side is the unbounded one cut at the horizon
        _same_table(split.train.events, unbounded.train.events)
        unbounded_test = unbounded.test.to_pandas()
        later = unbounded_test[unbounded_test["occurred_at"] <= end]
        assert _pairs(split.test) == _pairs(later[later["student_id"].isin(split.test_students)])
        assert _pairs(split.relevant) <= _pairs(unbounded.relevant)
        _check_relevant(split)
        _same(split, temporal(ds, horizon_days=days))
    short, full = temporal(ds, horizon_days=7), unbounded
    assert len(short.relevant) < len(full.relevant)
    # 0 is unbounded too; make_split passes the horizon on
    _same(temporal(ds, horizon_days=0), unbounded)
    _same(make_split("temporal", ds, horizon_days=7), short)


def test_temporal_horizon_boundaries(ds: Dataset) -> None:
    cut = pd.Timestamp("2025-03-20T00:00:00Z")
    events = pd.DataFrame(
        {
            "event_id": ["a", "b", "c", "d", "e"],
            "student_id": ["s000"] * 5,
            "lecture_id": ["MATH-1", "MATH-2", "MATH-3", "MATH-4", "MATH-5"],
            "type": ["enrol"] * 5,
            "progress": [0.0] * 5,
            "occurred_at": [
                cut - pd.Timedelta(days=1),
                cut,  # at the cutoff: training
                cut + pd.Timedelta(seconds=1),
                cut + pd.Timedelta(days=3),  # exactly at the end of a 3-day horizon: tested
                cut + pd.Timedelta(days=3, seconds=1),  # just after it: not tested
            ],
            "request_id": [None] * 5,
        }
    )
    small = Dataset(students=ds.students, lectures=ds.lectures, events=events, manifest=ds.manifest)
    split = temporal(small, cutoff=cut.isoformat(), horizon_days=3)
    assert set(_text(split.train.events["lecture_id"])) == {"MATH-1", "MATH-2"}
    assert split.relevant["lecture_id"].tolist() == ["MATH-3", "MATH-4"]
    assert split.params == {"cutoff": "2025-03-20T00:00:00+00:00", "horizon_days": 3}
    assert temporal(small, cutoff=cut.isoformat(), horizon_days=None).relevant["lecture_id"].tolist() == [
        "MATH-3",
        "MATH-4",
        "MATH-5",
    ]
    # a horizon that ends before the student's next lecture leaves nothing to test
    with pytest.raises(SplitError, match="--horizon-days"):
        temporal(small, cutoff=(cut + pd.Timedelta(seconds=1)).isoformat(), horizon_days=1)


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf"), "14", True])
def test_temporal_refuses_a_bad_horizon(ds: Dataset, bad: object) -> None:
    with pytest.raises(SplitError, match="horizon_days"):
        temporal(ds, horizon_days=bad)  # type: ignore[arg-type]


def test_leave_last_n_holds_out_latest_lectures(ds: Dataset) -> None:
    split = leave_last_n(ds, n=2)
    # a partition of the events
    assert len(split.train.events) + len(split.test) == len(ds.events)
    relevant = split.relevant_by_student()
    events = ds.events.to_pandas()
    first_seen = events.groupby(["student_id", "lecture_id"], observed=True)["occurred_at"].min()
    for sid, lectures in relevant.items():
        assert len(lectures) == 2
        mine = first_seen.loc[sid].sort_values()
        assert sorted(lectures) == sorted(mine.index[-2:].tolist())
    counts = events.groupby("student_id", observed=True)["lecture_id"].nunique()
    assert set(split.test_students) == set(counts[counts > 2].index)
    _check_relevant(split)
    _same(split, leave_last_n(ds, n=2))
    with pytest.raises(SplitError, match="n must be"):
        leave_last_n(ds, n=0)


def test_first_times_are_each_pairs_earliest_event_in_any_row_order() -> None:
    """The numpy rule against its definition (a groupby minimum), on rows out of time order with
    coded and plain ids; the pairs come sorted by (student_id, lecture_id) text."""
    rng = np.random.default_rng(3)
    n = 2_000
    events = pd.DataFrame(
        {
            "student_id": rng.choice(["s1", "s10", "s2", "학생-3"], n),
            "lecture_id": rng.choice([f"L{i}" for i in range(12)], n),
            "occurred_at": pd.Timestamp("2026-03-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 10**6, n), "s"),
        }
    )
    expected = events.groupby(["student_id", "lecture_id"])["occurred_at"].min()  # sorted by text
    coded = events.astype({"student_id": "category", "lecture_id": "category"})
    in_order = coded.sort_values("occurred_at", kind="stable").reset_index(drop=True)  # as read: one sort
    for frame in (events, coded, in_order):
        table = as_event_table(frame)  # (categories become dictionary codes)
        pairs, position = first_times(table)
        pair, students, lectures = pair_codes(table)
        assert len(pairs) == len(expected)
        got = list(zip(students[pairs.student], lectures[pairs.lecture], strict=True))
        assert got == list(expected.index)
        micros = expected.to_numpy(dtype="datetime64[us]").view(np.int64)
        assert pairs.first.tolist() == micros.tolist()
        assert (pairs.pair[position] == pair).all()  # each event's position names its pair


def test_held_out_pairs_orders_each_student_newest_first_ties_by_later_lecture() -> None:
    """One rule for every per-student hold-out (leave_last_n, the validation carve): newest first,
    ties by lecture id descending; `held` says how many per student from their count; any order key."""
    t, hour = 1_772_323_200_000_000, 3_600_000_000  # 2026-03-01 UTC, in microseconds
    pairs = PairTimes(
        student=np.array([0, 0, 0, 1, 1, 2]), lecture=np.array([0, 1, 2, 0, 3, 1]),
        pair=np.array([10, 11, 12, 20, 23, 31]), first=np.array([t, t + hour, t + hour, t, t - hour, t]),
    )  # fmt: skip
    # student 0: lectures 1 and 2 started at the same instant, the later id counts as newer

    def codes(mask: np.ndarray) -> list[int]:
        return sorted(pairs.pair[mask].tolist())

    assert codes(held_out_pairs(pairs, lambda c: np.where(c > 1, 1, 0))) == [12, 20]
    assert codes(held_out_pairs(pairs, lambda c: np.where(c > 1, 2, 0))) == [11, 12, 20, 23]
    assert codes(held_out_pairs(pairs, lambda c: c - 1)) == [11, 12, 20]
    # another order key (ascending): the lowest keys go first
    key = np.array([3.0, 1.0, 2.0, 0.5, 0.1, 0.0])
    assert codes(held_out_pairs(pairs, lambda c: np.where(c > 1, 1, 0), key)) == [11, 23]


def test_temporal_training_side_shares_the_events_in_time_order(ds: Dataset) -> None:
    in_order = dataclasses.replace(ds, events=sort_events(ds.events))
    split = temporal(in_order)
    train = split.train.events
    # a leading run of events in time order: a slice of them, not a copy
    assert _shares_memory(train["progress"], in_order.events["progress"])
    starts = {c.buffers()[1].address for c in in_order.events["progress"].chunks}
    assert {c.buffers()[1].address for c in train["progress"].chunks} <= starts  # zero-copy slices
    times = in_order.events["occurred_at"].to_pandas()
    assert pd.Timestamp(pc.max(train["occurred_at"]).as_py()) <= split.as_of < times.iloc[len(train)]
    # out of time order the same rows are picked (copied)
    reversed_ds = dataclasses.replace(
        ds, events=in_order.events.to_pandas().iloc[::-1].reset_index(drop=True)
    )
    other = temporal(reversed_ds)
    assert not _shares_memory(other.train.events["progress"], reversed_ds.events["progress"])
    assert sorted(_text(other.train.events["event_id"])) == sorted(_text(train["event_id"]))
    assert other.test_students == split.test_students


def test_pair_codes_follow_the_text_order_of_the_ids() -> None:
    # categories out of text order, ids repeated: codes must still sort as (student_id, lecture_id) text
    events = pd.DataFrame(
        {
            "student_id": pd.Categorical(["s10", "s2", "s10", "s2", "s1"], categories=["s2", "s10", "s1"]),
            "lecture_id": ["l9", "l10", "l10", "l10", "l9"],
        }
    )
    codes, students, lectures = pair_codes(events)
    assert students.tolist() == ["s1", "s10", "s2"] and lectures.tolist() == ["l10", "l9"]
    decoded = [(students[c // 2], lectures[c % 2]) for c in codes]
    assert decoded == list(zip(events["student_id"].astype(str), events["lecture_id"], strict=True))
    assert codes[1] == codes[3] and len(set(codes.tolist())) == 4
    assert [decoded[i] for i in sorted(range(5), key=lambda i: codes[i])] == sorted(decoded)
    with pytest.raises(SplitError, match="lecture_id has a null"):
        pair_codes(events.assign(lecture_id=pd.Series(["l9", None, "l10", "l10", "l9"], dtype=object)))


@pytest.mark.parametrize("name", ["temporal", "leave_last_n", "new_students", "new_region"])
def test_relevant_pairs_are_every_new_test_pair_alike_for_coded_ids(ds: Dataset, name: str) -> None:
    """Relevant = the test events' pairs of catalogue lectures minus the training pairs, sorted as text;
    the same split whether the ids are Python strings or dictionary codes (as a stored dataset is read)."""
    coded = dataclasses.replace(
        ds, events=ds.events.to_pandas().astype({"student_id": "category", "lecture_id": "category"})
    )
    assert all(pa.types.is_dictionary(coded.events[c].type) for c in ("student_id", "lecture_id"))
    known = set(ds.lectures["lecture_id"].astype(str))
    made = [make_split(name, d) for d in (ds, coded)]
    for split in made:
        expected = {p for p in _pairs(split.test) if p[1] in known} - _pairs(split.train.events)
        assert list(split.relevant.itertuples(index=False, name=None)) == sorted(expected)
    plain, from_codes = made
    pd.testing.assert_frame_equal(plain.relevant, from_codes.relevant)
    assert plain.test_students == from_codes.test_students
    assert _text(plain.test["event_id"]) == _text(from_codes.test["event_id"])
    assert _text(plain.train.events["event_id"]) == _text(from_codes.train.events["event_id"])


def test_new_students_are_absent_from_training(ds: Dataset) -> None:
    split = new_students(ds, fraction=0.25, seed=3)
    held = set(split.test_students)
    assert len(held) == 15  # 25 % of 60 students
    assert split.cold_start
    assert not held & set(_text(split.train.events["student_id"]))
    assert not held & set(split.train.students["student_id"])
    assert len(split.train.students) == 45
    _check_relevant(split)
    _same(split, new_students(ds, fraction=0.25, seed=3))
    assert new_students(ds, fraction=0.25, seed=4).test_students != split.test_students


def test_new_region_holds_out_taebaek(ds: Dataset) -> None:
    split = new_region(ds)
    taebaek = set(ds.students.loc[ds.students["region"] == "taebaek", "student_id"])
    assert set(split.test_students) == taebaek
    assert not set(split.train.students["region"]) & {"taebaek"}
    assert split.params == {"region": "taebaek"}
    _check_relevant(split)
    with pytest.raises(
        SplitError, match=r"no student of region 'jeju'.*gimpo \(14\), seoul \(36\), taebaek \(10\)"
    ):
        new_region(ds, "jeju")


def test_explicit_from_files(ds: Dataset, tmp_path: Path) -> None:
    reference = temporal(ds)
    train_file = tmp_path / "train.parquet"
    test_file = tmp_path / "test.csv"
    reference.train.events.to_pandas().to_parquet(train_file)
    reference.test.to_pandas().to_csv(test_file, index=False)
    split = explicit(ds, train_file, test_file)
    assert split.name == "explicit"
    assert split.test_students == reference.test_students
    assert _pairs(split.relevant) == _pairs(reference.relevant)
    assert split.params == {"train_events": str(train_file), "test_events": str(test_file)}


def test_explicit_files_are_read_on_arrow_as_the_import_reads_them(
    ds: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test-events file never becomes a pandas frame: a CSV without event ids or progress and with
    zone-less times gives the rows the dataset holds (ids generated as the import generates them)."""
    import features.validation
    from features.event_files import load_event_files

    reference = temporal(ds)
    test = reference.test.to_pandas()
    plain = test[["student_id", "lecture_id", "type", "occurred_at"]].copy()
    plain["occurred_at"] = plain["occurred_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f")  # no zone: UTC
    test_file = tmp_path / "test.csv"
    plain.to_csv(test_file, index=False)
    expected = load_event_files(test_file).events  # (the import's reading of the same file)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the events went through pandas")

    monkeypatch.setattr(features.validation, "validate_events", refuse)
    monkeypatch.setattr(pd, "read_csv", refuse)
    split = explicit(ds, reference.train.events, test_file)
    assert split.test_students == reference.test_students
    assert _pairs(split.relevant) == _pairs(reference.relevant)
    assert sorted(split.test["event_id"].to_pylist()) == sorted(expected["event_id"].to_pylist())


def test_explicit_file_with_unknown_lecture_names_row(ds: Dataset, tmp_path: Path) -> None:
    bad = ds.events.slice(0, 5).to_pandas()
    bad.loc[bad.index[3], "lecture_id"] = "NO-SUCH"
    path = tmp_path / "test.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(SchemaError, match="lecture_id"):
        explicit(ds, ds.events, path)


def test_make_split_dispatch_and_unknown_params(ds: Dataset) -> None:
    _same(make_split("leave_last_n", ds, n=1), leave_last_n(ds, 1))
    with pytest.raises(SplitError, match="does not take fraction"):
        make_split("temporal", ds, fraction=0.2)
    with pytest.raises(SplitError, match="unknown split 'random'"):
        make_split("random", ds)


def test_temporal_compares_times_in_their_own_unit(ds: Dataset) -> None:
    """Times are compared as integers of the column's unit: nanoseconds of an in-memory frame are kept
    (an event 300 ns after the cut is a test event), and dates far from 1970 (a year-1600 log, a horizon of
    100,000 days) split as the pandas comparison did, with no overflow."""
    original = ds.events.to_pandas()
    events = original.copy()
    ns = events["occurred_at"].astype("datetime64[ns, UTC]")
    cut = ns.iloc[len(ns) // 2]
    events["occurred_at"] = ns.where(ns != cut, cut + pd.Timedelta(nanoseconds=300))
    split = temporal(dataclasses.replace(ds, events=events), cutoff=cut, horizon_days=None)
    moved = events["occurred_at"] == cut + pd.Timedelta(nanoseconds=300)
    assert moved.any() and not set(events.loc[moved, "event_id"]) & set(_text(split.train.events["event_id"]))
    assert (split.train.events["occurred_at"].to_pandas() <= cut).all()

    shift = pd.Timestamp("1600-01-01", tz="UTC").as_unit("us") - pd.Timestamp("2025-01-01", tz="UTC")
    old = events.assign(occurred_at=original["occurred_at"] + shift)
    early = temporal(dataclasses.replace(ds, events=old))
    assert early.as_of is not None and early.as_of.year < 1700
    expected = (old["occurred_at"] <= pd.Timestamp(early.as_of)).sum()
    assert len(early.train.events) == expected
    far = temporal(ds, horizon_days=100_000)  # the test window ends past 2262 (beyond nanoseconds)
    assert len(far.test) == len(temporal(ds, horizon_days=None).test)
