"""The query of GET /recommendations as `_query` reads it: the same values whether escaped or not."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from starlette.requests import Request

from service.errors import InvalidFieldError
from service.routes.recommendations import K_DEFAULT, _query


def _read(query: str) -> tuple[str, int, str | None]:
    return _query(Request({"type": "http", "query_string": query.encode("latin-1"), "headers": []}))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("student_id=s1", ("s1", K_DEFAULT, None)),
        ("student_id=s1&k=5", ("s1", 5, None)),
        ("k=3&student_id=s0&k=7", ("s0", 7, None)),  # the last of repeated values wins
        ("&&student_id=s2&flag&k=4", ("s2", 4, None)),  # empty and bare parameters are ignored
        (f"student_id=s3&subject={quote('수학')}", ("s3", K_DEFAULT, "수학")),  # escaped: decoded
        ("student_id=s%34&k=%32", ("s4", 2, None)),
        ("subject=a+b&student_id=s5", ("s5", K_DEFAULT, "a b")),  # '+' is a space, as in forms
    ],
)
def test_escaped_and_plain_queries_read_the_same(query: str, expected: tuple[str, int, str | None]) -> None:
    assert _read(query) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("k=5", "student_id"),
        ("student_id=s1&k=x", "k"),
        ("student_id=s1&k=0", "k"),
        ("student_id=a%20b", "student_id"),
    ],
)
def test_a_bad_query_names_the_parameter(query: str, field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        _read(query)
    assert caught.value.loc == ("query", field)
