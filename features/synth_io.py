"""File helpers of the synthetic generator: Arrow id columns from bytes, weekly event buckets, atomic swap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from features.synth_calendar import DAY_S, US, Window

#: One simulated event on disk between the two passes: UTC microseconds, student row, lecture row,
#: event-type code (index into EVENT_TYPES) and progress.
RECORD = np.dtype([("t", "<i8"), ("s", "<i4"), ("l", "<i4"), ("k", "i1"), ("p", "<f4")])


def fixed_ids(prefix: str, numbers: npt.NDArray[np.int64], width: int) -> pa.Array:
    """Arrow strings prefix + zero-padded numbers, built straight from bytes (no Python strings).

    Args:
        prefix: ASCII prefix ("s", "lec", "e").
        numbers: non-negative numbers that fit in `width` digits.
        width: digits after the prefix.

    Returns:
        A string array of len(numbers).
    """
    n = numbers.shape[0]
    head = prefix.encode("ascii")
    size = len(head) + width
    data = np.empty((n, size), dtype=np.uint8)
    data[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    rest = numbers.astype(np.int64).copy()
    for k in range(size - 1, len(head) - 1, -1):
        data[:, k] = 48 + rest % 10
        rest //= 10
    offsets = (np.arange(n + 1, dtype=np.int64) * size).astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data.tobytes()))


def take_strings(vocabulary: tuple[str, ...], codes: npt.NDArray[np.int64]) -> pa.Array:
    """Strings of `vocabulary` at `codes`.

    Args:
        vocabulary: the distinct values.
        codes: indices into `vocabulary`; -1 gives null.

    Returns:
        A string array of len(codes).
    """
    indices = pa.array(codes.astype(np.int32), mask=codes < 0)
    return pc.take(pa.array(list(vocabulary), type=pa.string()), indices)


class EventBuckets:
    """Event records spread over weekly temporary files, so they can be written sorted by time.

    The generator simulates students chunk by chunk, so events arrive in student order; sorting them
    by time one week at a time keeps memory at a week of events whatever the dataset size.

    Args:
        directory: a new directory for the bucket files (created here).
        window: the simulated period (at most 256 buckets, a week or more each).
    """

    def __init__(self, directory: Path, window: Window) -> None:
        self.directory = directory
        self.start_us = window.start_us
        n = min(256, max(1, math.ceil(window.days / 7)))
        self.span_us = math.ceil(window.days / n) * DAY_S * US
        self.n = math.ceil(window.days * DAY_S * US / self.span_us)
        self.counts = np.zeros(self.n, dtype=np.int64)
        directory.mkdir()
        self._files = [self._path(b).open("wb") for b in range(self.n)]

    def _path(self, b: int) -> Path:
        return self.directory / f"{b:04d}.bin"

    def add(self, records: npt.NDArray[Any]) -> None:
        """Append records (times inside the window) to their buckets."""
        bucket = (records["t"] - self.start_us) // self.span_us
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=self.n)
        offset = 0
        for b, count in enumerate(counts.tolist()):
            if count:
                self._files[b].write(records[order[offset : offset + count]].tobytes())
                offset += count
        self.counts += counts

    def close(self) -> None:
        """Close the bucket files (call before `pop`)."""
        for fh in self._files:
            fh.close()

    def pop(self, b: int) -> npt.NDArray[Any]:
        """The records of bucket `b` (its file is removed)."""
        records: npt.NDArray[Any] = np.fromfile(self._path(b), dtype=RECORD)
        self._path(b).unlink()
        return records
