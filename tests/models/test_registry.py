"""Model registry, generic loading and the saved-model format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import MODELS, get_model_class, load_model
from models.errors import ModelFormatError
from models.popularity import PopularityRecommender
from models.serialization import read_json, write_json


def test_registry_names_every_model():
    assert set(MODELS) == {
        "popularity", "segment_popularity", "item_knn", "ease", "lightfm", "sequence", "blend",
    }  # fmt: skip
    for name, cls in MODELS.items():
        assert cls.name == name
        assert get_model_class(name) is cls


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'als'.*popularity.*lightfm.*blend"):
        get_model_class("als")


def test_loading_the_wrong_kind_of_model_is_refused(blocks, fitted, tmp_path: Path):
    fitted("popularity").save(tmp_path)
    with pytest.raises(ModelFormatError, match="holds a 'popularity' model, not 'lightfm'"):
        MODELS["lightfm"].load(tmp_path)


def test_missing_or_incomplete_directories_are_refused(blocks, fitted, tmp_path: Path):
    with pytest.raises(ModelFormatError, match="not a directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelFormatError, match=r"no model\.json"):
        load_model(tmp_path)
    fitted("item_knn").save(tmp_path / "m")
    (tmp_path / "m" / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match=r"arrays\.npz"):
        load_model(tmp_path / "m")
    manifest = read_json(tmp_path / "m" / "model.json")
    write_json(tmp_path / "m" / "model.json", {**manifest, "model": "als"})
    with pytest.raises(ModelFormatError, match="unknown model 'als'"):
        load_model(tmp_path / "m")


def test_saving_again_replaces_the_model(blocks, fitted, tmp_path: Path):
    fitted("lightfm").save(tmp_path)
    fitted("popularity").save(tmp_path)
    assert isinstance(load_model(tmp_path), PopularityRecommender)


def test_saved_files_are_plain_json_and_npz(blocks, fitted, tmp_path: Path):
    fitted("blend").save(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "model.json" in files and "components/lightfm/arrays.npz" in files
    assert all(f.endswith((".json", ".npz")) for f in files)
    for npz in tmp_path.rglob("*.npz"):
        with np.load(npz, allow_pickle=False) as arrays:
            assert all(arrays[k].dtype != object for k in arrays.files)
    catalogue = read_json(tmp_path / "catalogue.json")
    assert "수학" in catalogue["subjects"]  # Korean stays readable UTF-8
    assert "수학" in (tmp_path / "catalogue.json").read_text(encoding="utf-8")


def test_saved_parameters_that_do_not_fit_are_a_format_error(blocks, fitted, tmp_path: Path):
    fitted("sequence").save(tmp_path)
    manifest = read_json(tmp_path / "model.json")
    write_json(tmp_path / "model.json", {**manifest, "params": {**manifest["params"], "warp_speed": 9}})
    with pytest.raises(ModelFormatError, match="warp_speed"):
        load_model(tmp_path)
