"""Save and load fitted models as plain files: arrays in .npz, everything else in UTF-8 JSON, no pickle.

A saved model directory holds:

* ``model.json``: ``{"model": name, "format": 1, "params": {...}, "extra": {...}}``, written last, so a
  directory without it is an incomplete save;
* ``catalogue.json`` + ``catalogue.npz``: the lecture catalogue the model was fitted against;
* ``students.json``: the student id map and the student-feature column names;
* ``arrays.npz``: the model's own arrays (sparse matrices as ``<name>.data/.indices/.indptr/.shape``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from models.base import Catalogue, IdMap
from models.errors import ModelFormatError

FORMAT_VERSION = 1
MANIFEST = "model.json"
_SPARSE_PARTS = ("data", "indices", "indptr", "shape")
T = TypeVar("T")


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename (no torn files)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as UTF-8 JSON (Korean text kept readable).

    Args:
        path: target file.
        obj: JSON-serialisable value.
    """
    data = json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8")
    _atomic_write(path, lambda fh: fh.write(data))


def read_json(path: Path) -> Any:
    """Read a JSON file written by `write_json`.

    Args:
        path: the file.

    Returns:
        The decoded value.

    Raises:
        ModelFormatError: the file is missing or not valid JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{path} is missing: the model directory is incomplete") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid UTF-8 JSON: {exc}") from exc


def save_arrays(path: Path, arrays: Mapping[str, npt.NDArray[Any]], sparse: Mapping[str, Any] = {}) -> None:
    """Write dense arrays and CSR matrices into one .npz file (no pickle).

    Args:
        path: target .npz file.
        arrays: name -> dense array (numeric or bool).
        sparse: name -> scipy CSR matrix, stored as its parts.
    """
    out: dict[str, npt.NDArray[Any]] = {}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise TypeError(f"array '{name}' has dtype object; only numeric arrays are saved (no pickle)")
        out[name] = arr
    for name, mat in sparse.items():
        csr = sp.csr_matrix(mat)
        out[f"{name}.data"] = csr.data
        out[f"{name}.indices"] = csr.indices
        out[f"{name}.indptr"] = csr.indptr
        out[f"{name}.shape"] = np.asarray(csr.shape, dtype=np.int64)
    _atomic_write(path, lambda fh: np.savez(fh, **out))  # type: ignore[arg-type]


def load_arrays(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Read an .npz written by `save_arrays` (dense arrays only; see `get_sparse`).

    Args:
        path: the .npz file.

    Returns:
        name -> array.

    Raises:
        ModelFormatError: the file is missing or unreadable.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{path} is missing: the model directory is incomplete") from exc
    except (ValueError, OSError) as exc:
        raise ModelFormatError(f"{path} cannot be read as a numpy .npz archive: {exc}") from exc


def get_array(arrays: Mapping[str, npt.NDArray[Any]], name: str, where: Path) -> npt.NDArray[Any]:
    """`arrays[name]`, or a ModelFormatError naming the file when it is absent."""
    try:
        return arrays[name]
    except KeyError as exc:
        raise ModelFormatError(f"{where}: array '{name}' is missing") from exc


def get_sparse(arrays: Mapping[str, npt.NDArray[Any]], name: str, where: Path) -> sp.csr_matrix:
    """The CSR matrix `name` stored by `save_arrays`."""
    data, indices, indptr, shape = (get_array(arrays, f"{name}.{part}", where) for part in _SPARSE_PARTS)
    try:
        return sp.csr_matrix((data, indices, indptr), shape=tuple(int(x) for x in shape))
    except ValueError as exc:
        raise ModelFormatError(f"{where}: sparse matrix '{name}' is malformed: {exc}") from exc


def save_catalogue(directory: Path, catalogue: Catalogue) -> None:
    """Write `catalogue` as catalogue.json + catalogue.npz into `directory`.

    Args:
        directory: an existing directory.
        catalogue: the catalogue.
    """
    write_json(
        directory / "catalogue.json",
        {
            "lectures": list(catalogue.lectures.ids),
            "regions": list(catalogue.regions.ids),
            "grades": list(catalogue.grades.ids),
            "subjects": list(catalogue.subjects),
            "feature_names": list(catalogue.feature_names),
        },
    )
    save_arrays(
        directory / "catalogue.npz",
        {
            "licensed": catalogue.licensed,
            "suits": catalogue.suits,
            "active": catalogue.active,
            "series": catalogue.series,
            "series_position": catalogue.series_position,
            "subject": catalogue.subject,
        },
        {"features": catalogue.features},
    )


def load_catalogue(directory: Path) -> Catalogue:
    """Read a catalogue written by `save_catalogue`.

    Args:
        directory: the model directory.

    Returns:
        The catalogue.

    Raises:
        ModelFormatError: files missing or inconsistent.
    """
    meta = read_json(directory / "catalogue.json")
    where = directory / "catalogue.npz"
    arrays = load_arrays(where)
    try:
        catalogue = Catalogue(
            lectures=IdMap(tuple(meta["lectures"])),
            regions=IdMap(tuple(meta["regions"])),
            grades=IdMap(tuple(meta["grades"])),
            licensed=get_array(arrays, "licensed", where).astype(np.bool_),
            suits=get_array(arrays, "suits", where).astype(np.bool_),
            active=get_array(arrays, "active", where).astype(np.bool_),
            series=get_array(arrays, "series", where).astype(np.int32),
            series_position=get_array(arrays, "series_position", where).astype(np.int32),
            subject=get_array(arrays, "subject", where).astype(np.int32),
            subjects=tuple(meta["subjects"]),
            features=get_sparse(arrays, "features", where),
            feature_names=tuple(meta["feature_names"]),
        )
    except (KeyError, TypeError) as exc:
        raise ModelFormatError(f"{directory / 'catalogue.json'}: missing or malformed field {exc}") from exc
    n = len(catalogue.lectures)
    expected = {
        "licensed": (len(catalogue.regions), n),
        "suits": (len(catalogue.grades), n),
        "active": (n,),
        "series": (n,),
        "features": (n, len(catalogue.feature_names)),
    }
    for name, shape in expected.items():
        if getattr(catalogue, name).shape != shape:
            raise ModelFormatError(
                f"{where}: '{name}' has shape {getattr(catalogue, name).shape}, expected {shape}"
            )
    return catalogue


@dataclass
class SavedModel:
    """What `read_model` returns: the common parts plus the model's own arrays and JSON."""

    params: dict[str, Any]
    catalogue: Catalogue
    students: IdMap
    student_feature_names: tuple[str, ...]
    arrays: dict[str, npt.NDArray[Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    directory: Path = Path()

    def array(self, name: str) -> npt.NDArray[Any]:
        """A dense array of the model, or ModelFormatError."""
        return get_array(self.arrays, name, self.directory / "arrays.npz")

    def sparse(self, name: str) -> sp.csr_matrix:
        """A CSR matrix of the model, or ModelFormatError."""
        return get_sparse(self.arrays, name, self.directory / "arrays.npz")


def write_model(
    directory: Path,
    *,
    model: str,
    params: Mapping[str, Any],
    catalogue: Catalogue,
    students: IdMap,
    student_feature_names: tuple[str, ...],
    arrays: Mapping[str, npt.NDArray[Any]],
    sparse: Mapping[str, Any] = {},
    extra: Mapping[str, Any] = {},
) -> None:
    """Write a fitted model into `directory` (created if needed; an older model there is replaced).

    Args:
        directory: target directory.
        model: the model's registry name.
        params: hyper-parameters (JSON values).
        catalogue: the catalogue it was fitted on.
        students: its student id map.
        student_feature_names: the student-feature columns it expects.
        arrays: its dense arrays.
        sparse: its sparse matrices.
        extra: any other JSON state.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # the manifest goes first and comes back last: a crash in between leaves a directory that
    # `read_model` rejects instead of a mix of old and new files that loads
    (directory / MANIFEST).unlink(missing_ok=True)
    save_catalogue(directory, catalogue)
    write_json(
        directory / "students.json",
        {"ids": list(students.ids), "feature_names": list(student_feature_names)},
    )
    save_arrays(directory / "arrays.npz", arrays, sparse)
    write_json(
        directory / MANIFEST,
        {"model": model, "format": FORMAT_VERSION, "params": dict(params), "extra": dict(extra)},
    )


def instantiate(cls: type[T], params: Mapping[str, Any], directory: Path) -> T:
    """`cls(**params)` for saved hyper-parameters; a mismatch is a format error, not a TypeError.

    Args:
        cls: the model class.
        params: the saved constructor keyword arguments.
        directory: the model directory (for the message).

    Returns:
        The unfitted model.
    """
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(
            f"{directory / MANIFEST}: saved parameters do not fit {cls.__name__}: {exc}"
        ) from exc


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a saved model directory.

    Args:
        directory: the model directory.

    Returns:
        The manifest (`model`, `format`, `params`, `extra`).

    Raises:
        ModelFormatError: no manifest, or one from another format version.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFormatError(f"{directory} is not a directory: expected a saved model directory")
    if not (directory / MANIFEST).is_file():
        raise ModelFormatError(f"{directory} holds no {MANIFEST}: not a saved model, or an interrupted save")
    manifest = read_json(directory / MANIFEST)
    if not isinstance(manifest, dict) or "model" not in manifest:
        raise ModelFormatError(f"{directory / MANIFEST} does not name a model")
    if manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format")
        raise ModelFormatError(
            f"{directory / MANIFEST} has format {found!r}; this code reads {FORMAT_VERSION}"
        )
    return manifest


def read_model(directory: Path, model: str) -> SavedModel:
    """Read a directory written by `write_model`, checking it holds a `model` model.

    Args:
        directory: the model directory.
        model: the expected registry name.

    Returns:
        The saved parts.

    Raises:
        ModelFormatError: missing files, another model's directory, or inconsistent arrays.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest["model"] != model:
        raise ModelFormatError(
            f"{directory} holds a '{manifest['model']}' model, not '{model}': load it with that model class"
        )
    students = read_json(directory / "students.json")
    try:
        ids, names = tuple(students["ids"]), tuple(students["feature_names"])
    except (KeyError, TypeError) as exc:
        raise ModelFormatError(f"{directory / 'students.json'}: missing field {exc}") from exc
    return SavedModel(
        params=dict(manifest.get("params", {})),
        catalogue=load_catalogue(directory),
        students=IdMap(ids),
        student_feature_names=names,
        arrays=load_arrays(directory / "arrays.npz"),
        extra=dict(manifest.get("extra", {})),
        directory=directory,
    )
