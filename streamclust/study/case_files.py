"""Which metadata file and image source a study uses, and how much of the store they cover.

``streamclust convert`` records the case folder's metadata file and image source in the store
(:func:`~streamclust.io.ingest.recorded_case_files`).  A study uses, for each of the two:

* the file it is given (``--metadata FILE`` / ``--images ZIP|DIR``; ``metadata=`` / ``images=``);
* else the one recorded in the store; a recorded file that is gone, or that cannot be read or
  matched, is said (WARNING) and the study goes on without it;
* none when told so (``--no-metadata`` / ``--no-images``; ``metadata=False`` / ``images=False``).

:func:`choose_metadata` and :func:`choose_images` log one INFO line each naming the file used and
the share of the store's image paths it covers (WARNING when some are not covered), e.g.
``images: 19,873 of 20,000 paths found in /x/images.zip (99.4%; ...)``; :class:`CaseFile` carries
the same for ``summary.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from streamclust.analysis import read_metadata
from streamclust.core.blocks import read_rows
from streamclust.errors import InputError
from streamclust.io.ingest import recorded_case_files
from streamclust.io.store import CaseStore
from streamclust.report import ImageSource

logger = logging.getLogger(__name__)

__all__ = ["CaseFile", "choose_images", "choose_metadata"]

#: Ids matched against the image source per block (bounded memory whatever the row count).
_ID_BLOCK = 65536

#: How the log line says where a file used comes from.
_ORIGIN = {"given": "given", "recorded": "recorded by convert"}

#: How a study's metadata or images are chosen: a file, None (the one convert recorded) or False (none).
CaseFileArg = str | os.PathLike[str] | Literal[False] | None


@dataclass
class CaseFile:
    """The metadata file or image source a study uses, where it comes from and what it covers."""

    #: ``"metadata"`` or ``"images"``.
    kind: str
    #: The file or folder used; None when the study runs without.
    path: Path | None
    #: ``"given"``, ``"recorded"`` (by convert, in the store), ``"disabled"``, ``"not recorded"``,
    #: ``"missing"`` (recorded, gone now), ``"unusable"`` (could not be read or matched) or ``"no report"``.
    origin: str
    #: Store paths found in it, of ``n_paths`` (None when not checked).
    found: int | None = None
    n_paths: int | None = None
    #: The line logged about it.
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` entry."""
        share = self.found / self.n_paths if self.found is not None and self.n_paths else None
        return {"path": str(self.path) if self.path else None, "origin": self.origin, "found": self.found,
                "n_paths": self.n_paths, "share": share, "text": self.text}


def _check_arg(kind: str, given: Any) -> None:
    if given is True or (given is not None and given is not False and not isinstance(given, (str, os.PathLike))):
        raise InputError(f"{kind}={given!r}: give a file, None for the one 'streamclust convert' recorded "
                         "in the store, or False for none.")


def _choose(store: CaseStore, kind: str, given: CaseFileArg, flag: str) -> CaseFile:
    """The file of ``kind`` to use before it is opened: given, recorded, or none (said why)."""
    _check_arg(kind, given)
    if given is False:
        return CaseFile(kind, None, "disabled", text=f"{kind}: none ({flag} given)")
    if given is not None:
        return CaseFile(kind, Path(given), "given")
    recorded = recorded_case_files(store)
    path = recorded[kind] if recorded else None
    option = "--metadata FILE" if kind == "metadata" else "--images ZIP|DIR"
    if path is None:
        why = ("the store records no case folder files: it was converted before streamclust recorded them"
               if recorded is None else f"convert found none in {recorded['case_dir']}")
        return CaseFile(kind, None, "not recorded", text=f"{kind}: none ({why}); give {option}")
    if not Path(path).exists():
        return CaseFile(kind, None, "missing",
                        text=f"{kind}: {path}, recorded by convert, is missing now; the study runs without "
                             f"it (give {option}, or {flag})")
    return CaseFile(kind, Path(path), "recorded")


def _say(case_file: CaseFile, *, complete: bool) -> None:
    """Log the line: INFO when the file is used and covers every path (or none is used by choice),
    WARNING otherwise."""
    quiet = case_file.origin in ("disabled", "not recorded", "no report") or (case_file.path is not None and complete)
    logger.log(logging.INFO if quiet else logging.WARNING, case_file.text)


def choose_metadata(store: CaseStore, given: CaseFileArg, *,
                    memory: str | int | None = None) -> tuple[CaseFile, pd.DataFrame | None]:
    """The study's metadata (see the module docstring) and its attributes aligned to the store's ids.

    Parameters
    ----------
    store : CaseStore
    given : path, None or False
        A file; None: the one convert recorded; False: none.
    memory : str or int, optional
        The study's memory budget, which bounds the reading (:func:`~streamclust.analysis.read_metadata`).

    Returns
    -------
    case_file : CaseFile
    attributes : pandas.DataFrame, shape (n, n_attributes), or None
        :func:`~streamclust.analysis.read_metadata`'s frame.

    Raises
    ------
    InputError
        A given file cannot be read or matches too few paths (a recorded one is said and left out).
    """
    case_file = _choose(store, "metadata", given, "--no-metadata")
    attributes = None
    if case_file.path is not None:
        try:
            attributes = read_metadata(case_file.path, store.ids[:], memory=memory)
        except InputError as exc:
            if case_file.origin == "given":
                raise
            case_file = CaseFile("metadata", None, "unusable",
                                 text=f"metadata: {case_file.path}, recorded by convert, is not usable ({exc}); "
                                      "the study runs without it (give --metadata FILE, or --no-metadata)")
    if attributes is not None:
        found, n = int(attributes.attrs["n_matched"]), int(attributes.attrs["n_rows"])
        case_file.found, case_file.n_paths = found, n
        case_file.text = (f"metadata: {found:,} of {n:,} paths found in {case_file.path} ({found / n:.1%})"
                          f"{'' if found == n else '; the others have no attributes'}; {_ORIGIN[case_file.origin]}")
    _say(case_file, complete=case_file.found == case_file.n_paths)
    return case_file, attributes


def _store_paths(store: CaseStore) -> Iterator[str]:
    """The store's ids, block by block, as str."""
    ids = store.ids
    for start in range(0, int(ids.shape[0]), _ID_BLOCK):
        yield from np.asarray(read_rows(ids, slice(start, start + _ID_BLOCK))).astype(str).tolist()


def choose_images(store: CaseStore, given: CaseFileArg, *, report: bool = True) -> CaseFile:
    """The study's image source (see the module docstring), its share of the store's paths checked.

    The source is opened once to count the store paths it holds, exactly or by their longest
    common path suffix (:meth:`~streamclust.report.ImageSource.match_paths`; no image is read), then
    closed: the report opens it again.  A source holding none of the paths is left out (WARNING).

    Parameters
    ----------
    store : CaseStore
    given : path, None or False
        A zip file or folder; None: the one convert recorded; False: none.
    report : bool
        Whether the study writes a report; without one no image is used (nothing is opened).

    Raises
    ------
    InputError
        A given source is neither a zip file nor a folder (a recorded one is said and left out).
    """
    case_file = _choose(store, "images", given, "--no-images")
    if case_file.path is not None and not report:
        case_file = CaseFile("images", None, "no report", text=f"images: none used ({case_file.path}: no report)")
    if case_file.path is None:
        _say(case_file, complete=False)
        return case_file
    try:
        with ImageSource.open(case_file.path) as source:
            match = source.match_paths(_store_paths(store), source=str(case_file.path))
    except InputError as exc:
        if case_file.origin == "given":
            raise
        case_file = CaseFile("images", None, "unusable",
                             text=f"images: {case_file.path}, recorded by convert, is not usable ({exc}); the "
                                  "report has no montages (give --images ZIP|DIR, or --no-images)")
        _say(case_file, complete=False)
        return case_file
    case_file.found, case_file.n_paths = match.found, match.n_paths
    case_file.text = f"images: {match.text()}; {_ORIGIN[case_file.origin]}"
    if match.found == 0:
        case_file.text += "; none of the store's paths is there, so the report has no montages"
        case_file.path, case_file.origin = None, "unusable"
    _say(case_file, complete=match.found == match.n_paths)
    return case_file
