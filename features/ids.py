"""Id columns matched as text on their distinct values.

Student and lecture ids are compared as text everywhere (an integer id column read from a CSV still
matches). An events column holds tens of millions of ids but only ~1e6 distinct ones, and the stored
events are dictionary-encoded Arrow columns (`features.event_table`): each function here takes the
distinct values first (an Arrow column's dictionary, a pandas categorical's categories, else
`pandas.factorize` of a small pandas column) and turns only those into text, never every event's id
(a few rows of a column coded over many values: only the values they use). This is the one place that
rule lives; the splits, the matrices and the evaluation match event ids through it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.validation import arrow_text


def text_codes(values: Any) -> tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.object_]]:
    """(code per row, distinct values as text): a code indexes the text array, -1 is a null; values with
    the same text share a code.

    On a categorical column the codes are its own (as narrow as the categories allow: no 8-byte copy
    per event) and the text its categories (some may be unused by these rows: a filtered column keeps
    its categories); otherwise, or when the categories outnumber the rows (a batch's slice of a column
    coded over every student), the values are factorised. An Arrow column (a `pyarrow` array or chunked
    array) hands over its dictionary's indices, or is dictionary-encoded by Arrow.
    """
    codes: npt.NDArray[np.integer[Any]]
    uniques: Any
    if isinstance(values, pa.Array | pa.ChunkedArray):
        codes, uniques = arrow_codes(values)
    elif (
        isinstance(values, pd.Series)
        and isinstance(values.dtype, pd.CategoricalDtype)
        and len(values.cat.categories) <= len(values)
    ):
        codes, uniques = values.cat.codes.to_numpy(), values.cat.categories
    else:  # (a few rows of a column coded over many values: only the values they use)
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    text = np.asarray(pd.Index(uniques).astype(str), dtype=object)
    if not pd.Index(text, dtype=object).is_unique:  # 1 and "1" in one column are one id
        canon, distinct = pd.factorize(text)
        codes, text = np.append(canon, -1)[codes], np.asarray(distinct, dtype=object)
    return codes, text


def arrow_codes(values: pa.Array | pa.ChunkedArray) -> tuple[npt.NDArray[np.int32], npt.NDArray[Any]]:
    """(dictionary index per row, -1 for a null; the dictionary's values as numpy) of an Arrow column
    (`arrow_dictionary`)."""
    codes, dictionary = arrow_dictionary(values)
    return codes, dictionary.to_numpy(zero_copy_only=False)


def arrow_dictionary(values: pa.Array | pa.ChunkedArray) -> tuple[npt.NDArray[np.int32], pa.Array]:
    """(dictionary index per row, -1 for a null; the dictionary, still Arrow) of an Arrow column: a
    dictionary-encoded column's own indices (its chunks' dictionaries unified when they differ), any other
    column dictionary-encoded by Arrow. A dictionary larger than the rows (a few rows of a column coded
    over many values) keeps only the values they use."""
    chunked = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
    if not pa.types.is_dictionary(chunked.type):
        chunked = chunked.dictionary_encode()  # one dictionary over every chunk
    elif chunked.num_chunks > 1:
        first = chunked.chunks[0].dictionary
        if not all(c.dictionary.equals(first) for c in chunked.chunks[1:]):  # (as read: one already)
            chunked = chunked.unify_dictionaries()
    if chunked.num_chunks == 0:
        return np.zeros(0, dtype=np.int32), pa.array([], chunked.type.value_type)
    parts = []  # each chunk's indices as a view, copied once by numpy (not into Arrow's pool)
    for chunk in chunked.chunks:
        indices = chunk.indices
        if indices.null_count:
            indices = pc.fill_null(indices.cast(pa.int64()), -1)  # (unsigned indices cannot hold -1)
        parts.append(indices.to_numpy(zero_copy_only=False))
    codes = np.concatenate(parts).astype(np.int32, copy=False)
    dictionary = chunked.chunks[0].dictionary
    if dictionary.null_count:  # a null held in the dictionary is a null row
        codes = np.where(
            np.append(dictionary.is_null().to_numpy(zero_copy_only=False), False)[codes], -1, codes
        )
    if len(dictionary) > codes.size:
        # a few rows of a column coded over many values (a batch of students' events): only the values
        # they use become numpy objects, not the whole dictionary
        present = codes >= 0
        used, inverse = np.unique(codes[present], return_inverse=True)
        codes = np.full(codes.size, -1, dtype=np.int32)
        codes[present] = inverse
        dictionary = dictionary.take(pa.array(used, type=pa.int64()))
    return codes, dictionary


def positions(vocabulary: Iterable[str] | pd.Index | Mapping[str, int], values: Any) -> npt.NDArray[np.int64]:
    """Position of each of `values` in `vocabulary`, compared as text (-1 when absent or null).

    A mapping (id -> position, as `models.base.IdMap.index` holds) is looked up value by distinct value:
    for a few values against a large vocabulary, no index of the vocabulary is built.
    """
    codes, text = text_codes(values)
    if isinstance(vocabulary, Mapping):
        found = np.fromiter((vocabulary.get(t, -1) for t in text.tolist()), dtype=np.int64, count=text.size)
    else:
        index = vocabulary if isinstance(vocabulary, pd.Index) else pd.Index(list(vocabulary))
        found = index.get_indexer(pd.Index(text, dtype=object)).astype(np.int64)
    table = np.append(found, -1)
    out: npt.NDArray[np.int64] = table[codes]  # a null's code -1 takes the appended -1
    return out


def is_in(values: Any, ids: Collection[str]) -> npt.NDArray[np.bool_]:
    """Per row, whether its value as text is one of `ids` (a null is not).

    A text column held by Arrow (an Arrow `large_string` column or pandas `str`; event ids, one per event)
    is scanned against a set of `ids` by Arrow instead of being factorised: no hash table the size of the
    column.
    """
    plain = isinstance(values, pa.Array | pa.ChunkedArray) and (
        pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    )
    if plain or (isinstance(values, pd.Series) and isinstance(values.dtype, pd.StringDtype)):
        column = values if plain else arrow_text(values)
        wanted = pa.array(list(ids), type=column.type)
        found: npt.NDArray[np.bool_] = pc.is_in(column, value_set=wanted).to_numpy(zero_copy_only=False)
        return found
    codes, text = text_codes(values)
    hit = np.append(pd.Index(text, dtype=object).isin(list(ids)), False)
    out: npt.NDArray[np.bool_] = hit[codes]
    return out


def used_text(values: Any) -> npt.NDArray[np.object_]:
    """The distinct non-null values the rows hold, as text, in code order (a categorical's order)."""
    codes, text = text_codes(values)
    used = np.bincount(codes[codes >= 0], minlength=text.size) > 0
    out: npt.NDArray[np.object_] = text[used]
    return out


def distinct_text(values: Any) -> set[str]:
    """The distinct non-null values the rows hold, as text."""
    return set(used_text(values).tolist())


def sorted_distinct(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The distinct integers (codes, keys), sorted: a sort and a comparison of neighbours (numpy's
    `unique` hashes int64 keys, several times slower on tens of millions of them)."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if ordered.size else ordered
