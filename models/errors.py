"""Domain errors of the models.

ModelError
├── NotFittedError       used before fit/load
├── NumericalError       NaN/inf in learned parameters or scores
├── ModelFormatError     a saved model directory is missing or malformed
└── RegisteredModelNotFoundError  no such registered model, alias or version (models.loading)
"""


class ModelError(Exception):
    """Base of every model error."""


class NotFittedError(ModelError):
    """The model was used before `fit` or `load`."""


class NumericalError(ModelError):
    """Learned parameters or scores hold NaN or infinity; nothing is logged or registered."""


class ModelFormatError(ModelError):
    """A saved model directory is missing files or was written by another model."""


class RegisteredModelNotFoundError(ModelError):
    """The MLflow registry has no such registered model, alias or version."""
