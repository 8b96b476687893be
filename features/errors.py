"""Domain errors of the data layer (under `models.errors.LearnrecError`, the root of every learnrec error).

LearnrecDataError
├── SchemaError          a table breaks its schema (names file, rows, column)
├── DatasetNotFoundError a dataset directory or file is missing
├── FeatureStoreError    the Redis feature store cannot answer
│   └── ReplicaAckError  a write reached its primary, but not enough replicas acknowledged it in time
└── GroundTruthError     a synthetic dataset's ground truth was asked about an unknown student/lecture
"""

from __future__ import annotations

from collections.abc import Sequence

from models.errors import LearnrecError


class LearnrecDataError(LearnrecError):
    """Base of every data-layer error."""

    http_status = 422


class SchemaError(LearnrecDataError):
    """A table breaks its schema.

    Args:
        file: the file (or table name) the rows came from.
        column: the offending column.
        rows: 1-based data-row numbers as a person counts them in the file (row 1 = first data row,
            header not counted; first few shown); empty when the whole column is wrong.
        problem: what is wrong, with the bad value and what to do.
    """

    def __init__(self, file: str, column: str, rows: Sequence[int], problem: str) -> None:
        self.file = file
        self.column = column
        self.rows = list(rows)
        self.problem = problem
        shown = ", ".join(str(r) for r in self.rows[:5])
        more = f" (and {len(self.rows) - 5} more)" if len(self.rows) > 5 else ""
        where = (
            f"row {shown}{more}"
            if len(self.rows) == 1
            else f"rows {shown}{more}"
            if self.rows
            else "all rows"
        )
        super().__init__(f"{file}: {where}, column '{column}': {problem}")


class DatasetNotFoundError(LearnrecDataError):
    """A dataset directory or one of its files does not exist."""

    http_status = 404


class FeatureStoreError(LearnrecDataError):
    """The Redis feature store could not be read or written."""

    http_status = 503


class ReplicaAckError(FeatureStoreError):
    """A write reached its primary but fewer replicas than required acknowledged it in time (Redis WAIT):
    it might not survive a failover, so it is not reported as stored; sending it again is safe."""


class GroundTruthError(LearnrecDataError):
    """A synthetic dataset's ground truth was asked about a student or lecture it does not know."""
