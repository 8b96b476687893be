"""Domain errors of training, evaluation and the registry (under `models.errors.LearnrecError`).

    TrainingError
    ├── SplitError           a split cannot be made from this data (names the split and what is missing)
    ├── EvaluationError      a model or oracle cannot be evaluated on a split
    ├── TrackingError        the MLflow store holds something unexpected (missing run, tag, artifact)
    ├── PromotionRefused     an alias move was refused (worse candidate, different evaluation)
    ├── SimulationError      a simulation cannot run (no ground truth, no students, the service refused)
    └── RetrainError         a retraining step cannot go on (no new events, a changed state file)

Numeric garbage from a model raises `models.errors.NumericalError` before anything is logged.
"""

from __future__ import annotations

from models.errors import LearnrecError


class TrainingError(LearnrecError):
    """Base of every training-side error."""


class SplitError(TrainingError):
    """The requested split cannot be made from the dataset (too few events, unknown region ...)."""


class EvaluationError(TrainingError):
    """A model cannot be evaluated on a split (nothing to score, catalogue mismatch ...)."""


class TrackingError(TrainingError):
    """A run, registered model version or artifact the command needs is missing or malformed."""


class PromotionRefused(TrainingError):
    """Moving an alias was refused; the message gives both numbers and how to override (--force)."""


class SimulationError(TrainingError):
    """A simulation cannot run: no ground truth, no students in the regions, the service refused it."""


class RetrainError(TrainingError):
    """A step of `learnrec retrain` cannot go on; the message says which step and what to do."""
