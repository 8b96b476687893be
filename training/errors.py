"""Domain errors of training, evaluation and the model registry.

    TrainingError
    ├── SplitError           a split cannot be made from this data (names the split and what is missing)
    ├── EvaluationError      a model or oracle cannot be evaluated on a split
    ├── TrackingError        the MLflow store holds something unexpected (missing run, tag, artifact)
    └── PromotionRefused     an alias move was refused (worse candidate, different evaluation)

Numeric garbage from a model raises `models.errors.NumericalError` before anything is logged.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base of every training-side error."""


class SplitError(TrainingError):
    """The requested split cannot be made from the dataset (too few events, unknown region ...)."""


class EvaluationError(TrainingError):
    """A model cannot be evaluated on a split (nothing to score, catalogue mismatch ...)."""


class TrackingError(TrainingError):
    """A run, registered model version or artifact the command needs is missing or malformed."""


class PromotionRefused(TrainingError):
    """Moving an alias was refused; the message gives both numbers and how to override (--force)."""
