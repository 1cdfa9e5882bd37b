"""Saving fitted models safely: a folder of ``.npy`` arrays plus one signed JSON manifest.

Layout of a model folder::

    model.json          {"format": "streamclust-model", "format_version": 2,
                         "kind": ..., "params": {...}, "info": {...},
                         "arrays": {"<name>": {"file": "<name>.npy", "sha256": ...,
                                               "shape": [...], "dtype": "..."}},
                         "versions": {...},
                         "content_sha256": "<hex>"}
    <name>.npy          one array each

``content_sha256`` is the SHA-256 of the canonical JSON (:func:`model_content_sha256`) of every
other field of ``model.json`` -- which holds every array's SHA-256, so it covers every file of the
folder: an edit of any value (a threshold, a sentence, the drift reference) or of any array is
refused.  What this protects against: careless or accidental edits, damaged or truncated files,
files swapped between models.  What it does not: someone who edits the model on purpose and
recomputes the hashes (they are not keyed; anyone can write a valid model folder).  Values are
checked on load too (:mod:`streamclust.model.checks`), so even such a model cannot make streamclust
misbehave -- only give the labels its values imply.

Nothing is ever unpickled: an array's dtype is read from its ``.npy`` header and refused unless it
is a plain number type, and its data are read into a freshly allocated array.  Before any data are
read, every file's size is checked against the shape and dtype ``model.json`` declares, so a huge
planted file costs nothing; each array is hashed while it is read (one pass, no second copy).

Format version 1 (before ``content_sha256``) is refused with a line saying to re-run the study:
its ``model.json`` could be edited unnoticed, and such models only existed for a few days of
development.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamclust import __version__
from streamclust.core.files import write_atomic
from streamclust.errors import ModelError

__all__ = ["MODEL_FORMAT_VERSION", "MAX_MANIFEST_BYTES", "CONTENT_HASH_FIELD", "save_model_dir",
           "load_model_dir", "read_model_manifest", "read_model_arrays", "model_content_sha256",
           "array_nbytes"]

MODEL_FORMAT_VERSION = 2
#: ``model.json`` larger than this is refused before it is read (a study's is a few kB; 10,000
#: cluster sentences fit easily).
MAX_MANIFEST_BYTES = 8 << 20
#: The field of ``model.json`` holding :func:`model_content_sha256` of the rest.
CONTENT_HASH_FIELD = "content_sha256"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: A plain number dtype as ``numpy.dtype.str`` spells it (parsed by numpy only once it matches).
_DTYPE = re.compile(r"^(\|b1|\|[iu]1|[<>][iu][248]|[<>]f[248])$")
#: Array dtypes a model may hold: booleans, integers and real floats (no complex, object, text).
_ARRAY_KINDS = "biuf"
_MAX_NDIM = 8
_READ_CHUNK = 1 << 20
_RESIGN = "the model was edited or damaged after the study wrote it; re-run the study to write a sound one"


def _versions() -> dict[str, str]:
    import dask
    import sklearn
    import zarr

    return {"streamclust": __version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__}


def model_content_sha256(doc: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a model manifest, without its ``content_sha256`` field.

    Canonical: keys sorted, no spaces, ASCII only -- so the hash depends on the values alone, not
    on the file's layout.

    Parameters
    ----------
    doc : mapping
        A parsed ``model.json``.
    """
    body = {key: value for key, value in doc.items() if key != CONTENT_HASH_FIELD}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def save_model_dir(
    directory: str | os.PathLike[str], kind: str, params: dict[str, Any],
    arrays: dict[str, np.ndarray], info: dict[str, Any] | None = None,
) -> Path:
    """Save a model as arrays + signed JSON into ``directory`` (created; files replaced atomically).

    Parameters
    ----------
    directory : path
    kind : str
        What the model is, e.g. ``"descriptor-set-model"``.
    params : dict
        JSON-serialisable parameters.
    arrays : dict of str -> ndarray
        Arrays of booleans, integers or real floats.
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
        if value.dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"array {name!r} has dtype {value.dtype}; only booleans, integers and real "
                             "floats are saved.")
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        raw = buf.getvalue()
        write_atomic(directory / f"{name}.npy", raw)
        manifest[name] = {"file": f"{name}.npy", "sha256": hashlib.sha256(raw).hexdigest(),
                          "shape": list(value.shape), "dtype": value.dtype.str}
    doc = {"format": "streamclust-model", "format_version": MODEL_FORMAT_VERSION, "kind": kind,
           "params": params, "info": info or {}, "arrays": manifest, "versions": _versions()}
    doc = json.loads(json.dumps(doc))  # the values as a reader parses them (tuples -> lists, int keys -> str)
    doc[CONTENT_HASH_FIELD] = model_content_sha256(doc)
    write_atomic(directory / "model.json", json.dumps(doc, indent=2, sort_keys=True))
    return directory


def _open_regular(path: Path, what: str, if_missing: str) -> tuple[io.BufferedReader, int]:
    """``(binary file, size)`` of a regular file; never blocks on a FIFO or reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; {if_missing}.") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot be opened ({exc.strerror}).") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ModelError(f"{path}: is not a regular file ({what}); refusing it.")
    return os.fdopen(fd, "rb"), int(info.st_size)


def _parse_manifest(path: Path) -> dict[str, Any]:
    """The parsed ``model.json`` (size-checked before it is read)."""
    fh, size = _open_regular(path, "the model's manifest", "not a streamclust model folder")
    with fh:
        if size > MAX_MANIFEST_BYTES:
            raise ModelError(f"{path}: {size} bytes, more than a model manifest holds "
                             f"({MAX_MANIFEST_BYTES} at most); not a streamclust model file.")
        raw = fh.read(size + 1)  # (a larger count would be allocated up front)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); the model file is "
                         "damaged.") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too many digits, too deep
        raise ModelError(f"{path}: not valid JSON ({' '.join(str(exc).split())}); the model file is "
                         "damaged.") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: holds a JSON {type(doc).__name__}, not a model manifest (an object).")
    return doc


def _check_entry(path: Path, name: Any, entry: Any) -> None:
    """Refuse a malformed ``arrays`` entry of ``model.json``."""
    where = f"{path}: arrays.{name}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelError(f"{path}: array name {name!r} is malformed; {_RESIGN}.")
    if not isinstance(entry, dict) or set(entry) != {"file", "sha256", "shape", "dtype"}:
        raise ModelError(f"{where} should be an object of file, sha256, shape and dtype; {_RESIGN}.")
    if entry["file"] != f"{name}.npy":
        raise ModelError(f"{where}.file={entry['file']!r} should be {name + '.npy'!r}; {_RESIGN}.")
    if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
        raise ModelError(f"{where}.sha256 is not a SHA-256 in hex; {_RESIGN}.")
    shape = entry["shape"]
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ModelError(f"{where}.shape={str(shape)[:80]} should be a list of at most {_MAX_NDIM} "
                         f"non-negative integers; {_RESIGN}.")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or not _DTYPE.match(dtype) or np.dtype(dtype).str != dtype:
        raise ModelError(f"{where}.dtype={str(dtype)[:40]!r} is not a boolean, integer or real float dtype "
                         f"(like '<f4'); {_RESIGN}.")


def read_model_manifest(directory: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read and verify ``model.json`` of a model folder, without reading any array.

    Checks its size (at most :data:`MAX_MANIFEST_BYTES`), that it is a JSON object of this format
    version, its ``content_sha256`` (:func:`model_content_sha256`), its ``kind``, and that every
    ``arrays`` entry names ``<name>.npy`` with a SHA-256, a shape and a plain number dtype.

    Parameters
    ----------
    directory : path
    kind : str, optional
        Refuse a model of another kind.

    Returns
    -------
    dict
        The manifest: ``kind``, ``params``, ``info``, ``arrays``, ``versions``.

    Raises
    ------
    ModelError
        One line naming ``model.json`` and what is wrong.
    """
    path = Path(directory) / "model.json"
    doc = _parse_manifest(path)
    fmt, version = doc.get("format"), doc.get("format_version")
    if fmt == "streamclust-model" and version == 1:
        raise ModelError(f"{path}: format version 1 was written before streamclust signed model.json (an edit of "
                         f"it cannot be detected); re-run the study to write a version {MODEL_FORMAT_VERSION} model.")
    if fmt != "streamclust-model" or version != MODEL_FORMAT_VERSION:
        raise ModelError(f"{path}: format {str(fmt)[:40]!r} version {str(version)[:20]!r}; this streamclust "
                         f"reads streamclust-model version {MODEL_FORMAT_VERSION}.")
    signed = doc.get(CONTENT_HASH_FIELD)
    if not isinstance(signed, str):
        raise ModelError(f"{path}: has no {CONTENT_HASH_FIELD}; {_RESIGN}.")
    try:
        actual = model_content_sha256(doc)
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: cannot be hashed ({' '.join(str(exc).split())}); {_RESIGN}.") from None
    if actual != signed:
        raise ModelError(f"{path}: its content does not match its {CONTENT_HASH_FIELD} (a value or an array "
                         f"hash in it was changed); {_RESIGN}.")
    if kind is not None and doc.get("kind") != kind:
        raise ModelError(f"{path}: holds a {str(doc.get('kind'))[:40]!r}, expected a {kind!r}.")
    arrays = doc.get("arrays")
    if not isinstance(arrays, dict):
        raise ModelError(f"{path}: arrays should be an object of array entries; {_RESIGN}.")
    for name, entry in arrays.items():
        _check_entry(path, name, entry)
    return doc


def array_nbytes(entry: Mapping[str, Any]) -> int:
    """Bytes of the data of an array declared by a verified ``arrays`` entry of ``model.json``."""
    return int(math.prod(entry["shape"])) * int(np.dtype(entry["dtype"]).itemsize)


def _read_header(fh: io.BufferedReader, path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from an ``.npy`` header (parsed, never unpickled)."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(fh)
    except (ValueError, SyntaxError, TypeError, OverflowError) as exc:
        raise ModelError(f"{path}: not a valid .npy file ({' '.join(str(exc).split())[:120]}); "
                         f"{_RESIGN}.") from None
    raise ModelError(f"{path}: .npy format version {version}, not one streamclust writes; {_RESIGN}.")


def _open_array(directory: Path, name: str, entry: Mapping[str, Any]) -> tuple[io.BufferedReader, int]:
    """The open ``.npy`` file of one array, positioned at its data, and the data's offset; refused
    unless its header and size match ``entry`` exactly (so its data are read only when sound)."""
    path = directory / entry["file"]
    fh, size = _open_regular(path, "listed in model.json", f"model.json lists it; {_RESIGN}")
    try:
        shape, fortran, dtype = _read_header(fh, path)
        if dtype.hasobject or dtype.kind not in _ARRAY_KINDS:
            raise ModelError(f"{path}: holds dtype {dtype} (objects, text or complex numbers), not the "
                             f"{entry['dtype']} model.json declares; refused without reading it.")
        if list(shape) != entry["shape"] or dtype.str != entry["dtype"] or fortran:
            raise ModelError(f"{path}: holds a {list(shape)} {dtype.str}{' Fortran-ordered' if fortran else ''} "
                             f"array; model.json declares {entry['shape']} {entry['dtype']}; {_RESIGN}.")
        offset = fh.tell()
        expected = offset + array_nbytes(entry)
        if size != expected:
            raise ModelError(f"{path}: {size} bytes; its declared {entry['shape']} {entry['dtype']} array takes "
                             f"{expected}; {_RESIGN}.")
    except BaseException:
        fh.close()
        raise
    return fh, offset


def _read_hashed(fh: io.BufferedReader, offset: int, path: Path, entry: Mapping[str, Any]) -> np.ndarray:
    """The array of a checked ``.npy`` file, hashed as it is read into one fresh allocation."""
    hasher = hashlib.sha256()
    fh.seek(0)
    hasher.update(fh.read(offset))
    value = np.empty(tuple(entry["shape"]), np.dtype(entry["dtype"]))
    data = value.reshape(-1).view(np.uint8).data
    pos, total = 0, data.nbytes
    while pos < total:
        n = fh.readinto(data[pos : pos + _READ_CHUNK])
        if not n:
            raise ModelError(f"{path}: ended after {pos} of its {total} data bytes (truncated while read); "
                             f"{_RESIGN}.")
        hasher.update(data[pos : pos + n])
        pos += n
    if fh.read(1):
        raise ModelError(f"{path}: grew while it was read; {_RESIGN}.")
    if hasher.hexdigest() != entry["sha256"]:
        raise ModelError(f"{path}: content does not match its SHA-256 in model.json; {_RESIGN}.")
    return value


def read_model_arrays(directory: str | os.PathLike[str], doc: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a model folder whose manifest :func:`read_model_manifest` verified.

    First every file's ``.npy`` header and size are checked against its declared shape and dtype
    (nothing is allocated, no data are read); then each array is read into one allocation of its
    declared size, hashed on the way, and refused if its SHA-256 differs.

    Returns
    -------
    dict of str -> ndarray

    Raises
    ------
    ModelError
        A missing, non-regular, malformed, resized or modified array file (named).
    """
    directory = Path(directory)
    entries = doc["arrays"]
    opened: dict[str, tuple[io.BufferedReader, int]] = {}
    try:
        for name, entry in entries.items():
            opened[name] = _open_array(directory, name, entry)
        return {name: _read_hashed(fh, offset, directory / entries[name]["file"], entries[name])
                for name, (fh, offset) in opened.items()}
    finally:
        for fh, _ in opened.values():
            fh.close()


def load_model_dir(directory: str | os.PathLike[str],
                   kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load and verify a model folder written by :func:`save_model_dir`.

    :func:`read_model_manifest`, then :func:`read_model_arrays`.

    Returns
    -------
    doc : dict
        The manifest (``kind``, ``params``, ``info``, ``versions``).
    arrays : dict of str -> ndarray

    Raises
    ------
    ModelError
        (a :class:`~streamclust.errors.StoreError`) Missing files, another format version, another
        kind, an edited ``model.json``, or an array whose hash, shape, dtype or size differs from
        the manifest (tampered, truncated or planted).
    """
    doc = read_model_manifest(directory, kind)
    return doc, read_model_arrays(directory, doc)
