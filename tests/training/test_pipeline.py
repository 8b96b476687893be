"""The training pipeline: each model is fitted once per data set, the blend taking its components' fits."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from models import ItemKNNRecommender, PopularityRecommender
from tests.training import modelling_data
from training.pipeline import run_training


def test_train_fits_each_component_once_per_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1M students `learnrec train -m all` fitted LightFM 6-7 times: the blend refitted, on validation
    and on the training data, the components the run had fitted there with the same parameters. Now
    per component: its own candidate on each validation fold, the blend's hold-out cut of each fold, its
    final fit, and the blend's final hold-out cut when it keeps blending (a fallen-back one fits none)."""
    fits: dict[str, int] = {}
    for cls in (PopularityRecommender, ItemKNNRecommender):

        def counted(self, data, _fit=cls.fit):  # type: ignore[no-untyped-def]
            fits[self.name] = fits.get(self.name, 0) + 1
            return _fit(self, data)

        monkeypatch.setattr(cls, "fit", counted)
    with modelling_data.mlflow_store(tmp_path) as settings:
        dataset_dir = modelling_data.write(settings.datasets_dir / "synthetic")
        run = run_training(
            ["blend", "popularity", "item_knn"], "leave_last_n", {"n": 1}, dataset_dir=dataset_dir, ks=(5,),
            params={"blend": {"components": ["popularity", "item_knn"], "negatives": 5}}, experiment="fits",
            seed=3, register_models=False, oracle=False, metric="ndcg", settings=settings,
            client=MlflowClient(settings.tracking_uri()), budget_seconds=0,
        )  # fmt: skip
    assert [r.model for r in run.results] == ["popularity", "item_knn", "blend"]
    assert all(r.error is None for r in run.results)
    # the single models took the blend's fits on all the data, and report how long those took
    assert all(r.fit_seconds > 0 for r in run.results)
    folds = 2  # leave-last-n validation: STUDENT_FOLDS folds of the students
    blending = any("keeps blending" in line for line in run.messages)
    assert fits == dict.fromkeys(("popularity", "item_knn"), folds + folds + 1 + blending)
