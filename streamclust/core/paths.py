"""Where a command may write, checked before any work (pure path logic).

An output never is, nor lies inside, one of the command's inputs, a Zarr store or a model folder
(symlinks resolved), and it stands where a thing of its kind can: a CSV is not a folder, a study's
output folder is not a file, a store is a new, empty or store folder.  fsspec URLs are not checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from streamclust.core.urls import is_url
from streamclust.errors import InputError

__all__ = ["check_output_path"]

#: Files that make a folder a Zarr node (v3; v2 group or array) or a saved model.
_STORE_FILES = ("zarr.json", ".zgroup", ".zarray")
_MODEL_FILE = "model.json"


def check_output_path(out: str | os.PathLike[str], kind: Literal["file", "folder", "store"], *,
                      inputs: Iterable[object] = ()) -> None:
    """Refuse an output path that writing would damage something through, before any work.

    Parameters
    ----------
    out : path or str
        The output: a URL is not checked.
    kind : {"file", "folder", "store"}
        What is written there: one file (assign's CSV), a folder of outputs (a study), or a store
        (``convert``: the store itself may exist, to be resumed).
    inputs : iterable, optional
        What the command reads, files or folders; what is not a local path (None, False, a URL) is skipped.

    Raises
    ------
    InputError
        One line naming ``out`` and why: it is or lies inside an input, a Zarr store or a model
        folder; or it exists as something of another kind.
    """
    if is_url(out):
        return
    target = Path(out).resolve()
    where = f"{os.fspath(out)}: the output"
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)) or not os.fspath(item) or is_url(item):
            continue
        source = Path(item).resolve()
        if target == source:
            raise InputError(f"{where} is the input {os.fspath(item)}, which it would overwrite. "
                             "Write the output elsewhere.")
        if source in target.parents:
            raise InputError(f"{where} lies inside the input {os.fspath(item)}; streamclust never writes into "
                             "its inputs. Write the output elsewhere.")
    # a store may be resumed in place, but never nested in another; a file or folder never goes into one
    for folder in target.parents if kind == "store" else (target, *target.parents):
        how = "is" if folder == target else "lies inside"
        if any((folder / name).is_file() for name in _STORE_FILES):
            raise InputError(f"{where} {how} the Zarr store {folder}; writing there would damage the store. "
                             "Write the output outside every store.")
        if (folder / _MODEL_FILE).is_file():
            raise InputError(f"{where} {how} the model folder {folder}; writing there would damage the model. "
                             "Write the output outside every model folder.")
    _check_kind(target, where, kind)


def _check_kind(target: Path, where: str, kind: str) -> None:
    """Refuse ``target`` when it, or the nearest folder above it that exists, is of the wrong kind."""
    existing = next(p for p in (target, *target.parents) if p.exists())
    if existing != target and not existing.is_dir():
        raise InputError(f"{where} lies under {existing}, which is a file, not a folder.")
    if existing != target:
        return
    if kind == "file" and target.is_dir():
        raise InputError(f"{where} is a folder; give the path of the file to write.")
    if kind != "file" and not target.is_dir():
        raise InputError(f"{where} is an existing file; give the path of a folder to write "
                         f"{'the store' if kind == 'store' else 'the outputs'} into.")
    if kind == "store" and not (target / "zarr.json").is_file() and next(target.iterdir(), None) is not None:
        raise InputError(f"{where} is a folder holding other files, not a Zarr store; give a new or empty "
                         "folder, or the store to resume.")

