"""JSON log lines, request ids and keyed student hashes."""

from __future__ import annotations

import json
import logging

from service.logs import JsonFormatter, StudentHasher, accept_request_id, request_id_var


def test_request_id_accepted_only_when_sane() -> None:
    assert accept_request_id("abc-123.x:y_z") == "abc-123.x:y_z"
    for bad in (None, "", "a b", "x" * 129, "이름", "a\nb"):
        fresh = accept_request_id(bad)
        assert fresh != bad and len(fresh) == 32


def test_json_line_carries_request_id_and_extra_fields() -> None:
    record = logging.LogRecord("learnrec.service.x", logging.INFO, __file__, 1, "hello %s", ("서울",), None)
    record.student = "s_abc"
    token = request_id_var.set("rid-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    payload = json.loads(line)
    assert payload["msg"] == "hello 서울"
    assert payload["request_id"] == "rid-1"
    assert payload["student"] == "s_abc"
    assert payload["level"] == "info" and payload["logger"] == "learnrec.service.x"


def test_student_hash_is_keyed_and_stable() -> None:
    a, b = StudentHasher(b"key-1"), StudentHasher(b"key-2")
    assert a("s000123") == a("s000123")
    assert a("s000123") != b("s000123")
    assert "s000123" not in a("s000123")
    assert StudentHasher()("s1") != StudentHasher()("s1")  # random key per process when none is set
    long_a, long_b = StudentHasher(b"k" * 100), StudentHasher(b"k" * 99 + b"j")  # beyond BLAKE2b's 64 bytes
    assert long_a("s1") == long_a("s1") != long_b("s1")
    assert len(a("s1")) == len("s_") + 16
