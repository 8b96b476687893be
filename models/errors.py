"""The root of every learnrec error, and the domain errors of the models.

Every package's errors descend from `LearnrecError` (it lives here because `models` uses nothing of
ours, so every other package may import it). Each class knows the HTTP status it means, so the web
layer maps every domain error in one handler (`service.main`), and the CLI catches this one type
(`training.cli`):

    LearnrecError                          http_status
    ├── ModelError (below)                 500, 404 for a missing registered model
    ├── features.errors.LearnrecDataError  422; 404 DatasetNotFoundError, 503 FeatureStoreError
    ├── features.experiments.ExperimentConfigError   422
    ├── training.errors.TrainingError      500
    ├── training.ab.errors.ABError         422
    └── service.errors.ServiceError        401/403/422/503 (and ServiceConfigError, a refused start-up)

ModelError
├── NotFittedError       used before fit/load
├── NumericalError       NaN/inf in learned parameters or scores
├── ModelFormatError     a saved model directory is missing or malformed
└── RegisteredModelNotFoundError  no such registered model, alias or version (models.loading)
"""


class LearnrecError(Exception):
    """Root of every learnrec error.

    Attributes:
        http_status: the HTTP status this error means when it reaches the web layer.
    """

    http_status: int = 500


class ModelError(LearnrecError):
    """Base of every model error."""


class NotFittedError(ModelError):
    """The model was used before `fit` or `load`."""


class NumericalError(ModelError):
    """Learned parameters or scores hold NaN or infinity; nothing is logged or registered."""


class ModelFormatError(ModelError):
    """A saved model directory is missing files or was written by another model."""


class RegisteredModelNotFoundError(ModelError):
    """The MLflow registry has no such registered model, alias or version."""

    http_status = 404
