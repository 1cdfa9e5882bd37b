"""Saving fitted models safely: a folder of ``.npy`` arrays plus one JSON manifest.

Layout of a model folder::

    model.json          {"format": "streamclust-model", "format_version": 1,
                         "kind": ..., "params": {...}, "info": {...},
                         "arrays": {"<name>": {"file": "<name>.npy", "sha256": ...,
                                               "shape": [...], "dtype": "..."}},
                         "versions": {...}}
    <name>.npy          one array each, loaded with ``allow_pickle=False``

Nothing is ever unpickled.  Loading checks the format version and every array's
SHA-256, shape and dtype, so a tampered or truncated file is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from streamclust import __version__
from streamclust.core.files import write_atomic
from streamclust.errors import StoreError

__all__ = ["MODEL_FORMAT_VERSION", "save_model_dir", "load_model_dir"]

MODEL_FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _versions() -> dict[str, str]:
    import dask
    import sklearn
    import zarr

    return {"streamclust": __version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__}


def save_model_dir(
    directory: str | os.PathLike[str], kind: str, params: dict[str, Any],
    arrays: dict[str, np.ndarray], info: dict[str, Any] | None = None,
) -> Path:
    """Save a model as arrays + JSON into ``directory`` (created; files replaced atomically).

    Parameters
    ----------
    directory : path
    kind : str
        What the model is, e.g. ``"descriptor-set-model"``.
    params : dict
        JSON-serialisable parameters.
    arrays : dict of str -> ndarray
        Numeric arrays (no object dtype).
    info : dict, optional
        Extra JSON-serialisable facts (chosen k, training store hash, ...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {}
    for name, value in arrays.items():
        if not _NAME.match(name):
            raise ValueError(f"array name {name!r} should match {_NAME.pattern}.")
        value = np.ascontiguousarray(value)
        if value.dtype.hasobject:
            raise ValueError(f"array {name!r} has object dtype; only numeric arrays are saved.")
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        raw = buf.getvalue()
        write_atomic(directory / f"{name}.npy", raw)
        manifest[name] = {"file": f"{name}.npy", "sha256": hashlib.sha256(raw).hexdigest(),
                          "shape": list(value.shape), "dtype": value.dtype.str}
    doc = {"format": "streamclust-model", "format_version": MODEL_FORMAT_VERSION, "kind": kind,
           "params": params, "info": info or {}, "arrays": manifest, "versions": _versions()}
    write_atomic(directory / "model.json", json.dumps(doc, indent=2, sort_keys=True))
    return directory


def load_model_dir(directory: str | os.PathLike[str],
                   kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load and verify a model folder written by :func:`save_model_dir`.

    Returns
    -------
    doc : dict
        The manifest (``kind``, ``params``, ``info``, ``versions``).
    arrays : dict of str -> ndarray

    Raises
    ------
    StoreError
        Missing files, another format version, another kind, or an array whose
        hash, shape or dtype differs from the manifest (tampered or truncated).
    """
    directory = Path(directory)
    manifest_path = directory / "model.json"
    try:
        doc = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{manifest_path}: missing; not a streamclust model folder.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{manifest_path}: not valid JSON ({exc}); the model file is damaged.") from exc
    if doc.get("format") != "streamclust-model" or doc.get("format_version") != MODEL_FORMAT_VERSION:
        raise StoreError(
            f"{manifest_path}: format {doc.get('format')!r} version {doc.get('format_version')!r}; "
            f"this streamclust reads streamclust-model version {MODEL_FORMAT_VERSION}."
        )
    if kind is not None and doc.get("kind") != kind:
        raise StoreError(f"{manifest_path}: holds a {doc.get('kind')!r}, expected a {kind!r}.")
    arrays = {}
    for name, entry in doc.get("arrays", {}).items():
        if not _NAME.match(name) or entry.get("file") != f"{name}.npy":
            raise StoreError(f"{manifest_path}: array entry {name!r} is malformed.")
        path = directory / entry["file"]
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{path}: missing (listed in model.json).") from None
        if hashlib.sha256(raw).hexdigest() != entry.get("sha256"):
            raise StoreError(f"{path}: content does not match its SHA-256 in model.json; refusing a "
                             "modified or damaged model.")
        value = np.load(io.BytesIO(raw), allow_pickle=False)
        if list(value.shape) != entry.get("shape") or value.dtype.str != entry.get("dtype"):
            raise StoreError(f"{path}: shape/dtype differ from model.json.")
        arrays[name] = value
    return doc, arrays
