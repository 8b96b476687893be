"""Key builders of the feature store, on exact bytes (the layout is a contract with running Redis data)."""

from __future__ import annotations

import zlib

import pytest
from redis.crc import key_slot

from features import keys


def test_student_keys_exact_bytes():
    assert keys.profile("s001") == b"lr:{s:s001}:profile"
    assert keys.history("s001") == b"lr:{s:s001}:hist"
    assert keys.pairs("s001") == b"lr:{s:s001}:pairs"
    assert keys.recent("s001") == b"lr:{s:s001}:recent"
    assert keys.model_state("s001", "learnrec-lectures", "3") == b"lr:{s:s001}:m:learnrec-lectures:3"
    assert keys.event_marker("s001", "e-42") == b"lr:{s:s001}:evt:e-42"


def test_global_keys_exact_bytes():
    assert keys.active_version("learnrec-lectures") == b"lr:active:learnrec-lectures"
    assert keys.EVENTS_STREAM == b"lr:stream:events"
    assert keys.EXPOSURES_STREAM == b"lr:stream:exposures"
    assert keys.stream("events") == b"lr:stream:events"
    assert keys.stream("exposures") == b"lr:stream:exposures"
    assert keys.model_state_pattern("lightfm") == b"lr:{s:*}:m:lightfm:*"
    assert keys.model_state_suffix("lightfm", "12") == b":m:lightfm:12"


def test_stream_markers_share_the_stream_slot_and_are_no_student_key():
    marker = keys.stream_marker(keys.EVENTS_STREAM, "e-42")
    assert marker == b"lr:{lr:stream:events}:id:e-42"
    assert key_slot(marker) == key_slot(keys.EVENTS_STREAM)  # one script may touch both in a cluster
    assert key_slot(keys.stream_marker(keys.EVENTS_STREAM, "{x}")) == key_slot(keys.EVENTS_STREAM)
    assert keys.student_of(marker) is None  # the answer cache is not told about them


def test_student_of_inverts_every_student_key():
    for key in (
        keys.profile("s001"),
        keys.history("s001"),
        keys.recent("s001"),
        keys.model_state("s001", "lightfm", "3"),
        keys.event_marker("s001", "e-1"),
    ):
        assert keys.student_of(key) == "s001"
    assert keys.student_of(keys.history("학생-7")) == "학생-7"
    assert keys.student_of(keys.history("a:b")) == "a:b"
    assert keys.STUDENT_PREFIX == b"lr:{s:" and keys.ACTIVE_PREFIX == b"lr:active:"
    for other in (keys.active_version("m"), keys.EVENTS_STREAM, b"lr:{s:}:hist", b"lr:{s:\xff}:hist", b"x"):
        assert keys.student_of(other) is None


def test_korean_ids_are_utf8():
    assert keys.history("학생-7") == "lr:{s:학생-7}:hist".encode()
    assert keys.event_marker("학생-7", "이벤트") == "lr:{s:학생-7}:evt:이벤트".encode()


@pytest.mark.parametrize("student_id", ["s001", "학생-7", "x" * 200, "a:b"])
def test_all_keys_of_a_student_share_one_cluster_slot(student_id: str):
    slots = {
        key_slot(k)
        for k in (
            keys.profile(student_id),
            keys.history(student_id),
            keys.pairs(student_id),
            keys.recent(student_id),
            keys.model_state(student_id, "m", "1"),
            keys.model_state(student_id, "other", "9"),
            keys.event_marker(student_id, "e1"),
            keys.event_marker(student_id, "완전히 다른 id"),
        )
    }
    assert slots == {key_slot(keys.student_tag(student_id)[1:-1])}


def test_different_students_spread_over_slots():
    assert len({key_slot(keys.history(f"s{i}")) for i in range(200)}) > 150


@pytest.mark.parametrize("bad", ["", "a:b", "v*", "v 1", "ver{1}", "버전"])
def test_model_and_version_names_that_would_break_patterns_are_refused(bad: str):
    with pytest.raises(ValueError, match="not allowed"):
        keys.model_state("s1", bad, "1")
    with pytest.raises(ValueError, match="not allowed"):
        keys.model_state("s1", "m", bad)
    with pytest.raises(ValueError, match="not allowed"):
        keys.active_version(bad)


def test_empty_ids_are_refused():
    with pytest.raises(ValueError, match="student_id must be a non-empty string"):
        keys.history("")
    with pytest.raises(ValueError, match="event_id must be a non-empty string"):
        keys.event_marker("s1", "")


def test_unknown_stream_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown stream 'clicks': expected one of events, exposures"):
        keys.stream("clicks")


def test_stream_shards_split_the_slot_space_evenly_and_one_shard_is_the_stream():
    assert keys.stream_shards(keys.EVENTS_STREAM, 1) == [keys.EVENTS_STREAM]
    for n in (2, 3, 6, 12):
        shards = keys.stream_shards(keys.EVENTS_STREAM, n)
        assert len(set(shards)) == n and all(s.startswith(keys.EVENTS_STREAM + b":") for s in shards)
        # shard k hashes into the k-th of n equal slot ranges: each of p | n primaries holds n / p shards
        assert [key_slot(s) * n // 16384 for s in shards] == list(range(n))
    assert keys.stream_shards(keys.EXPOSURES_STREAM, 6) != keys.stream_shards(keys.EVENTS_STREAM, 6)
    with pytest.raises(ValueError, match=r"1\.\.1024"):
        keys.stream_shards(keys.EVENTS_STREAM, 0)


def test_a_student_always_goes_to_the_same_shard():
    assert keys.shard_of("학생-1", 6) == keys.shard_of("학생-1", 6)
    assert keys.shard_of("s0", 1) == 0
    spread = {keys.shard_of(f"s{i}", 6) for i in range(200)}
    assert spread == set(range(6))
    # crc32 of the UTF-8 id: fixed across processes and Python versions (no hash randomisation)
    assert keys.shard_of("학생-1", 1_000_000) == zlib.crc32("학생-1".encode()) % 1_000_000
