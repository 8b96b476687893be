"""Domain errors of the A/B analysis (under `models.errors.LearnrecError`).

    ABError
    ├── ExperimentNotFoundError  the experiment key is not in the config or has no exposures
    └── AnalysisInputError       exposures/events cannot be analysed (wrong columns, mixed experiments)

File-level problems (a missing directory, a column with the wrong type) raise `features.errors`
`DatasetNotFoundError` / `SchemaError`, which name the file, column and rows.
"""

from __future__ import annotations

from models.errors import LearnrecError


class ABError(LearnrecError):
    """Base of every A/B analysis error."""

    http_status = 422


class ExperimentNotFoundError(ABError):
    """The experiment key is unknown to the config, or no exposure carries it."""


class AnalysisInputError(ABError):
    """The exposures or events handed to the analysis cannot be used as they are."""
