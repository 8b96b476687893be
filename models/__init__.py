"""learnrec recommenders behind one interface (`models.base.Recommender`), and their registry.

Importing this package is light: LightFM and scikit-learn are imported only when a model is fitted.
"""

from __future__ import annotations

from pathlib import Path

from models.base import Recommender
from models.blend import BlendRecommender
from models.ease import EASERecommender
from models.item_knn import ItemKNNRecommender
from models.lightfm_hybrid import LightFMRecommender
from models.popularity import PopularityRecommender, SegmentPopularityRecommender
from models.sequence import SequenceRecommender
from models.serialization import read_manifest

#: Every recommender by registry name (the CLI's `--model NAME`).
MODELS: dict[str, type[Recommender]] = {
    cls.name: cls
    for cls in (
        PopularityRecommender,
        SegmentPopularityRecommender,
        ItemKNNRecommender,
        EASERecommender,
        LightFMRecommender,
        SequenceRecommender,
        BlendRecommender,
    )
}


def get_model_class(name: str) -> type[Recommender]:
    """The recommender class registered as `name`.

    Args:
        name: registry name, e.g. "lightfm".

    Returns:
        The class (construct it with keyword hyper-parameters).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}': choose one of {', '.join(MODELS)}") from None


def load_model(directory: Path) -> Recommender:
    """Load whichever model was saved in `directory` (its manifest names the class).

    Args:
        directory: a directory written by `Recommender.save`.

    Returns:
        The loaded model.

    Raises:
        ModelFormatError: not a saved model directory, or an unknown model name in it.
    """
    from models.errors import ModelFormatError

    name = read_manifest(Path(directory))["model"]
    if name not in MODELS:
        raise ModelFormatError(f"{directory} holds an unknown model '{name}': known are {', '.join(MODELS)}")
    return MODELS[name].load(Path(directory))


__all__ = [
    "MODELS",
    "BlendRecommender",
    "EASERecommender",
    "ItemKNNRecommender",
    "LightFMRecommender",
    "PopularityRecommender",
    "Recommender",
    "SegmentPopularityRecommender",
    "SequenceRecommender",
    "get_model_class",
    "load_model",
]
