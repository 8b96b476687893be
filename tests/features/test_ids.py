"""Id columns matched as text on their distinct values (`features.ids`): the same answers as the per-row
text (`values.astype(str)`) they replace, on coded and plain columns, with nulls and unused categories."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.ids import distinct_text, is_in, positions, text_codes, used_text

IDS = st.sampled_from(["s1", "s2", "s10", "서울-7", "", "3"])
CELLS = st.one_of(IDS, st.none(), st.just(3))


def _columns(cells: list[Any]) -> list[Any]:
    """The same cells as a plain object column, a categorical one (with an unused category), text held
    by Arrow in pandas, and Arrow columns: plain text and dictionary-encoded, in two chunks whose
    dictionaries differ (as a file's row groups can)."""
    plain = pd.Series(cells, dtype=object)
    texts = pd.Series([None if c is None else str(c) for c in cells], dtype=object)
    coded = texts.astype(pd.CategoricalDtype([*sorted(set(texts.dropna())), "unused"]))
    half = len(cells) // 2
    chunks = [
        pa.array(_text(cells)[:half], pa.large_string()),
        pa.array(_text(cells)[half:], pa.large_string()),
    ]
    arrow_plain = pa.chunked_array(chunks, type=pa.large_string())
    arrow_coded = pa.chunked_array([c.dictionary_encode() for c in chunks])
    return [plain, coded, texts.astype("str"), arrow_plain, arrow_coded, arrow_plain.combine_chunks()]


def _text(cells: list[Any]) -> list[str | None]:
    return [None if c is None else str(c) for c in cells]


@settings(max_examples=150, deadline=None)
@given(cells=st.lists(CELLS, max_size=30), vocabulary=st.lists(IDS, unique=True, max_size=6))
def test_positions_and_membership_are_the_per_row_texts(cells: list[Any], vocabulary: list[str]) -> None:
    expected_pos = [vocabulary.index(t) if t in vocabulary else -1 for t in _text(cells)]
    expected_in = [t is not None and t in vocabulary for t in _text(cells)]
    for column in _columns(cells):
        assert positions(vocabulary, column).tolist() == expected_pos
        assert positions(pd.Index(vocabulary, dtype=object), column).tolist() == expected_pos
        assert positions({v: i for i, v in enumerate(vocabulary)}, column).tolist() == expected_pos
        assert is_in(column, set(vocabulary)).tolist() == expected_in
        assert distinct_text(column) == {t for t in _text(cells) if t is not None}
        assert sorted(used_text(column).tolist()) == sorted(distinct_text(column))


@settings(max_examples=100, deadline=None)
@given(cells=st.lists(CELLS, max_size=30))
def test_codes_name_each_text_once(cells: list[Any]) -> None:
    for column in _columns(cells):
        codes, text = text_codes(column)
        assert len(set(text.tolist())) == text.size  # 3 and "3" are one id
        decoded = [None if c < 0 else text[c] for c in codes.tolist()]
        assert decoded == _text(cells)


def test_a_coded_column_keeps_its_narrow_codes() -> None:
    column = pd.Series(["a", "b", "a"] * 1000, dtype="category")
    codes, text = text_codes(column)
    assert codes.dtype == np.int8 and text.tolist() == ["a", "b"]


def test_integer_ids_match_their_text() -> None:
    assert positions(["7", "8"], pd.Series([8, 7, 9])).tolist() == [1, 0, -1]
    assert is_in(np.array([8, 7, 9]), {"9"}).tolist() == [False, False, True]
    arrow = pa.chunked_array([pa.array([8, 7]), pa.array([9])])
    assert positions(["7", "8"], arrow).tolist() == [1, 0, -1]
    assert positions(["7", "8"], arrow.dictionary_encode()).tolist() == [1, 0, -1]


def test_empty_columns() -> None:
    empty_arrow = pa.chunked_array([], type=pa.large_string())
    for column in (
        pd.Series([], dtype=object),
        pd.Series([], dtype="category"),
        empty_arrow,
        empty_arrow.dictionary_encode(),
    ):
        assert positions(["a"], column).tolist() == []
        assert is_in(column, {"a"}).tolist() == []
        assert distinct_text(column) == set()


def test_a_vocabulary_with_repeats_is_refused() -> None:
    with pytest.raises(pd.errors.InvalidIndexError):
        positions(["a", "a"], pd.Series(["a"]))


def test_a_few_rows_of_a_column_coded_over_many_values_turn_only_their_values_into_text() -> None:
    column = pd.Series(pd.Categorical([f"s{i}" for i in range(1000)]))
    batch = column.iloc[[5, 7, 5]]  # a batch's slice: three rows, a thousand categories
    codes, text = text_codes(batch)
    assert sorted(text.tolist()) == ["s5", "s7"]
    assert [text[c] for c in codes] == ["s5", "s7", "s5"]
    assert positions({"s7": 0, "s5": 1}, batch).tolist() == [1, 0, 1]


def test_a_slice_of_an_arrow_column_coded_over_many_values_turns_only_its_values_into_text() -> None:
    """The Arrow form of the rule above: a batch of students' events sliced out of the whole table keeps
    the table's dictionary (every student); only the values its rows use are taken, nulls stay -1."""
    ids = pa.array([f"s{i}" for i in range(1000)] + [None]).dictionary_encode()
    table = pa.chunked_array([ids.slice(0, 600), ids.slice(600)])
    batch = table.take(pa.array([7, 1000, 5, 700, 7]))  # five rows; the dictionary holds a thousand values
    codes, text = text_codes(batch)
    assert sorted(text.tolist()) == ["s5", "s7", "s700"]
    assert [None if c < 0 else text[c] for c in codes.tolist()] == ["s7", None, "s5", "s700", "s7"]
    assert positions({"s7": 0, "s5": 1}, batch).tolist() == [0, -1, 1, -1, 0]
    assert used_text(table.slice(998, 3)).tolist() == ["s998", "s999"]


def test_arrow_nulls_in_unsigned_indices_and_in_the_dictionary() -> None:
    unsigned = pa.DictionaryArray.from_arrays(pa.array([0, None, 1], pa.uint8()), pa.array(["a", "b"]))
    assert positions(["b", "a"], unsigned).tolist() == [1, -1, 0]
    held = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2], pa.int32()), pa.array(["a", None, "c"]))
    codes, text = text_codes(held)
    assert [None if c < 0 else text[c] for c in codes.tolist()] == ["a", None, "c"]
    assert is_in(held, {"a", "None", "nan"}).tolist() == [True, False, False]
