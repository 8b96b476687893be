"""Experiments config: validation, sticky balanced independent assignment, time windows, reload on change."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from features.experiments import (
    N_BUCKETS,
    Assignment,
    ExperimentConfigError,
    ExperimentRegistry,
    bucket,
    load_experiments,
    parse_experiments,
)

START = datetime(2025, 9, 1, tzinfo=UTC)
END = datetime(2025, 10, 1, tzinfo=UTC)
DURING = datetime(2025, 9, 15, 12, tzinfo=UTC)
IDS = [f"stu-{i:06d}" for i in range(100_000)]


def exp(key: str = "lfm-v2", **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "key": key,
        "salt": f"{key}-salt",
        "regions": ["seoul", "taebaek"],
        "start": START,
        "end": END,
        "variants": [
            {"name": "control", "weight": 50, "model": "champion"},
            {"name": "challenger", "weight": 50, "model": "challenger"},
        ],
    }
    base.update(kw)
    return base


def registry(*experiments: dict[str, object]) -> ExperimentRegistry:
    return ExperimentRegistry(parse_experiments({"experiments": list(experiments)}))


def write(path: Path, *experiments: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({"experiments": list(experiments)}, allow_unicode=True), encoding="utf-8")
    return path


# ---------------------------------------------------------------- hashing and assignment


def test_bucket_is_sha256_of_salt_and_id() -> None:
    """Regression guard: the bucket formula is part of the contract (analyses recompute it)."""
    digest = hashlib.sha256(b"lfm-v2-salt:stu-000001").digest()
    assert bucket("lfm-v2-salt", "stu-000001") == int.from_bytes(digest[:8], "big") % N_BUCKETS
    assert bucket("x", "a") == 5199  # pinned: changing the hash would reshuffle running experiments


def test_assignment_is_sticky_across_calls_and_reloads(tmp_path: Path) -> None:
    path = write(tmp_path / "experiments.yaml", exp())
    first = ExperimentRegistry.load(path)
    second = ExperimentRegistry.load(path)
    for sid in IDS[:2000]:
        a = first.assign(sid, "seoul", DURING)
        assert a is not None
        assert a == first.assign(sid, "seoul", DURING + timedelta(days=3))
        assert a == second.assign(sid, "seoul", DURING)
        # the arm does not depend on the region the student is seen in
        assert a == first.assign(sid, "taebaek", DURING)


def test_balanced_within_tolerance_over_100k_ids() -> None:
    reg = registry(
        exp(
            variants=[
                {"name": "control", "weight": 5, "model": "champion"},
                {"name": "a", "weight": 3, "model": "challenger"},
                {"name": "b", "weight": 2, "model": 12},
            ]
        )
    )
    counts = Counter(a.variant for sid in IDS if (a := reg.assign(sid, "seoul", DURING)) is not None)
    observed = np.array([counts["control"], counts["a"], counts["b"]])
    assert observed.sum() == len(IDS)
    expected = np.array([0.5, 0.3, 0.2]) * len(IDS)
    _, p = stats.chisquare(observed, expected)
    assert p > 0.001, (observed, p)
    assert np.all(np.abs(observed / len(IDS) - [0.5, 0.3, 0.2]) < 0.01)


def test_independent_across_salts() -> None:
    """Two experiments (different salts) split the same students independently (chi-square contingency)."""
    reg = registry(exp("first", regions=["seoul"]), exp("second", regions=["gimpo"]))
    table = Counter()
    for sid in IDS:
        a, b = reg.assign(sid, "seoul", DURING), reg.assign(sid, "gimpo", DURING)
        assert a is not None and b is not None
        table[(a.variant, b.variant)] += 1
    cells = np.array([[table[(x, y)] for y in ("control", "challenger")] for x in ("control", "challenger")])
    _, p, _, _ = stats.chi2_contingency(cells)
    assert p > 0.001, cells


def test_correlated_split_would_be_detected() -> None:
    """The contingency test above can fail: the same salt gives a perfectly correlated split."""
    a = np.array([bucket("s", sid) < N_BUCKETS // 2 for sid in IDS[:20_000]])
    b = np.array([bucket("s", sid) < N_BUCKETS // 2 for sid in IDS[:20_000]])
    cells = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    assert stats.chi2_contingency(cells)[1] < 1e-10


def test_time_window_is_start_inclusive_end_exclusive() -> None:
    reg = registry(exp())
    assert reg.assign("s1", "seoul", START - timedelta(microseconds=1)) is None
    assert reg.assign("s1", "seoul", START) is not None
    assert reg.assign("s1", "seoul", END - timedelta(microseconds=1)) is not None
    assert reg.assign("s1", "seoul", END) is None


def test_region_outside_experiment_gets_champion() -> None:
    reg = registry(exp(regions=["taebaek"]))
    assert reg.assign("s1", "seoul", DURING) is None
    assert reg.assign("s1", "taebaek", DURING) is not None
    assert reg.active("taebaek", DURING) is not None and reg.active("seoul", DURING) is None


def test_sequential_experiments_in_one_region_by_time() -> None:
    later = exp("next", start=END, end=END + timedelta(days=30))
    reg = registry(exp(), later)
    a = reg.assign("s1", "seoul", DURING)
    b = reg.assign("s1", "seoul", END + timedelta(days=1))
    assert a is not None and a.experiment == "lfm-v2"
    assert b is not None and b.experiment == "next"


def test_assignment_carries_model_reference() -> None:
    reg = registry(
        exp(
            variants=[
                {"name": "control", "weight": 1, "model": "champion"},
                {"name": "v7", "weight": 1, "model": 7},
            ]
        )
    )
    seen = {a.variant: a for sid in IDS[:200] if (a := reg.assign(sid, "seoul", DURING))}
    assert seen["v7"].model == "7" and seen["v7"].model_version == 7
    assert seen["control"].model == "champion" and seen["control"].model_version is None
    assert reg.models() == {"champion", "7"}
    assert isinstance(seen["v7"], Assignment) and 0 <= seen["v7"].bucket < N_BUCKETS


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        registry(exp()).assign("s1", "seoul", datetime(2025, 9, 2))


def test_empty_registry_and_empty_file(tmp_path: Path) -> None:
    assert ExperimentRegistry.empty().assign("s1", "seoul", DURING) is None
    (tmp_path / "e.yaml").write_text("", encoding="utf-8")
    assert load_experiments(tmp_path / "e.yaml").experiments == ()


def test_dates_and_naive_timestamps_are_utc() -> None:
    cfg = parse_experiments(
        yaml.safe_load(
            "experiments:\n- key: k\n  regions: [seoul]\n  start: 2025-09-01\n  end: 2025-09-02 12:00:00\n"
            "  variants: [{name: a, weight: 1, model: champion}, {name: b, weight: 1, model: challenger}]\n"
        )
    )
    e = cfg.experiments[0]
    assert e.start == datetime(2025, 9, 1, tzinfo=UTC)
    assert e.end == datetime(2025, 9, 2, 12, tzinfo=UTC)
    assert e.salt == "k"  # defaults to the key
    assert e.control == "a" and e.shares() == {"a": 0.5, "b": 0.5}


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {
                "variants": [
                    {"name": "a", "weight": 0, "model": "champion"},
                    {"name": "b", "weight": 1, "model": "x"},
                ]
            },
            "variants[0].weight: Input should be greater than 0",
        ),
        (
            {
                "variants": [
                    {"name": "a", "weight": 1, "model": "champion"},
                    {"name": "a", "weight": 1, "model": "x"},
                ]
            },
            "variant names must be unique",
        ),
        ({"variants": [{"name": "a", "weight": 1, "model": "champion"}]}, "at least 2 items"),
        ({"regions": ["Seoul"]}, "region codes must match"),
        ({"regions": []}, "regions: Tuple should have at least 1 item"),
        ({"end": START}, "end (2025-09-01T00:00:00+00:00) must be after start"),
        (
            {
                "variants": [
                    {"name": "a", "weight": 1, "model": "champ ion"},
                    {"name": "b", "weight": 1, "model": "x"},
                ]
            },
            "neither an alias",
        ),
        (
            {
                "variants": [
                    {"name": "a", "weight": 1e-9, "model": "champion"},
                    {"name": "b", "weight": 1, "model": "x"},
                ]
            },
            "below 1/10000",
        ),
        ({"start": "not a date"}, "start"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_invalid_experiment_is_refused_with_the_field_named(change: dict[str, object], needle: str) -> None:
    with pytest.raises(ExperimentConfigError) as err:
        parse_experiments({"experiments": [exp(**change)]}, "exp.yaml")
    msg = str(err.value)
    assert msg.startswith("exp.yaml: experiments[0] (key 'lfm-v2')"), msg
    assert needle in msg, msg


def test_duplicate_keys_and_salts_are_refused() -> None:
    with pytest.raises(ExperimentConfigError, match=r"experiment keys must be unique, repeated: \['a'\]"):
        parse_experiments([exp("a", regions=["seoul"]), exp("a", regions=["gimpo"])])
    with pytest.raises(ExperimentConfigError, match="salts must be unique"):
        parse_experiments([exp("a", regions=["seoul"], salt="s"), exp("b", regions=["gimpo"], salt="s")])


def test_overlapping_experiments_in_one_region_are_refused() -> None:
    other = exp("other", regions=["taebaek", "gimpo"], start=DURING, end=END + timedelta(days=5))
    with pytest.raises(ExperimentConfigError) as err:
        parse_experiments([exp(), other], "exp.yaml")
    assert "'lfm-v2' and 'other' overlap in time in region(s) ['taebaek']" in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ExperimentConfigError, match="not found"):
        ExperimentRegistry.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments: [unclosed", encoding="utf-8")
    with pytest.raises(ExperimentConfigError, match="not valid YAML"):
        load_experiments(bad)
    bad.write_text("42", encoding="utf-8")
    with pytest.raises(ExperimentConfigError, match="top level must be a mapping"):
        load_experiments(bad)


# ---------------------------------------------------------------- reload


def _touch_later(path: Path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_reload_when_mtime_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "experiments.yaml", exp(regions=["seoul"]))
    reg = ExperimentRegistry.load(path, check_interval=0)
    assert reg.assign("s1", "gimpo", DURING) is None
    write(path, exp(regions=["gimpo"]))
    _touch_later(path, 2)
    assert reg.assign("s1", "gimpo", DURING) is not None
    assert reg.assign("s1", "seoul", DURING) is None
    assert reg.last_error is None


def test_reload_when_size_changes_within_one_mtime_tick(tmp_path: Path) -> None:
    """A file rewritten twice within the clock's resolution is still picked up (size differs)."""
    path = write(tmp_path / "experiments.yaml", exp(regions=["seoul"]))
    reg = ExperimentRegistry.load(path, check_interval=0)
    st = path.stat()
    write(path, exp(regions=["gimpo", "incheon"]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert reg.assign("s1", "incheon", DURING) is not None


def test_reload_checks_at_most_every_interval(tmp_path: Path) -> None:
    path = write(tmp_path / "experiments.yaml", exp(regions=["seoul"]))
    reg = ExperimentRegistry.load(path, check_interval=3600)
    write(path, exp(regions=["gimpo"]))
    _touch_later(path, 2)
    assert reg.assign("s1", "gimpo", DURING) is None  # not checked yet: no stat per request
    assert reg.reload_if_changed() is True
    assert reg.assign("s1", "gimpo", DURING) is not None


def test_bad_new_file_keeps_the_previous_config(tmp_path: Path) -> None:
    path = write(tmp_path / "experiments.yaml", exp())
    reg = ExperimentRegistry.load(path, check_interval=0)
    before = reg.assign("s1", "seoul", DURING)
    write(path, exp(end=START))  # invalid: end == start
    _touch_later(path, 2)
    assert reg.assign("s1", "seoul", DURING) == before
    assert reg.last_error is not None and "must be after start" in reg.last_error
    path.unlink()
    assert reg.assign("s1", "seoul", DURING) == before
    assert "cannot stat" in (reg.last_error or "")
    write(path, exp(regions=["gimpo"]))
    _touch_later(path, 4)
    assert reg.assign("s1", "seoul", DURING) is None
    assert reg.last_error is None


def test_variant_status_of_the_model_manager() -> None:
    """Serving, serving the previous version after a failed load, or unavailable (champion answers)."""
    from types import SimpleNamespace

    from service.metrics import Metrics
    from service.model_manager import ModelManager

    manager = ModelManager("learnrec-lectures", "champion", "sqlite:///unused.db", Metrics())
    manager.set_variant_refs({"champion", "challenger", "7", "nope"})  # the followed alias is not a variant
    old = SimpleNamespace(version="3")
    manager._variants = {"challenger": old, "7": SimpleNamespace(version="7")}  # type: ignore[dict-item]
    manager.variant_errors = {"challenger": "version 5 failed to load: boom"}
    status = {v.ref: (v.model, v.status, v.error) for v in manager.variant_status()}
    assert status == {
        "7": (manager.variants["7"], "serving", None),
        "challenger": (old, "serving_previous", "version 5 failed to load: boom"),
        "nope": (None, "unavailable", "not loaded yet"),
    }
