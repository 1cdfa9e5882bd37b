"""Label and screen NEW descriptors with a saved model, streamed, and report drift.

``NEW_INPUT`` may be a store (``.zarr`` folder, or an fsspec URL, which is always
read as a store; the set named like the model), a case
folder (``descriptors/<set>.*`` + ``images_paths.csv``), or one descriptor file
in any format :func:`streamclust.io.sources.open_source` reads (paths from
``--paths CSV``, else ``row:<i>``).  A mixture's model (``vdc_color+vdc_type``)
reads its members' descriptors side by side, so it needs a store or a case
folder holding every member set.  Rows are read in blocks; the output CSV
(``path, cluster, cluster_sentence, outlier_score, is_outlier``) is written
block by block and replaced atomically; the drift report needs only counters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamclust.core.blocks import block_rows_for, iter_blocks, parse_memory
from streamclust.core.files import write_csv_frames
from streamclust.core.paths import check_output_path
from streamclust.core.scheduler import map_ordered, runs_on_scheduler
from streamclust.core.urls import is_url
from streamclust.errors import InputError
from streamclust.io.ingest import discover_case, read_paths_csv
from streamclust.io.sources import open_source
from streamclust.io.store import CaseStore
from streamclust.model.descriptor_model import DescriptorSetModel
from streamclust.model.drift import DriftAccumulator, DriftReport

__all__ = ["AssignResult", "assign_new"]


@dataclass
class AssignResult:
    """Outcome of :func:`assign_new`."""

    out_csv: Path
    n_rows: int
    n_outliers: int
    drift: DriftReport
    rows_per_second: float


class _SourceRows:
    """Row slicing over :class:`~streamclust.io.sources.ArraySource` objects or arrays, side by side
    (for ``iter_blocks``; one part for a descriptor set, one per member for a mixture)."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.shape = (parts[0].shape[0], sum(int(p.shape[1]) for p in parts))
        self.ndim = 2

    def __getitem__(self, rows: slice) -> np.ndarray:
        blocks = [p.read_rows(rows.start, rows.stop) if hasattr(p, "read_rows") else p[rows] for p in self.parts]
        return blocks[0] if len(blocks) == 1 else np.hstack([np.asarray(b, np.float32) for b in blocks])


def _open_input(new_input: Path | str, model: DescriptorSetModel, paths_csv: Path | None,
                allow_restricted_pickle: bool, memory: str | int | None) -> tuple[Any, Any]:
    """``(rows, paths)``: a row-sliceable (n, d) array and an (n,)-sliceable path source
    (a URL ``new_input`` is a store)."""
    members = model.members
    if is_url(new_input) or (new_input.is_dir() and (new_input / "zarr.json").exists()):
        store = CaseStore(new_input)
        return _SourceRows([store.descriptor(m) for m in members]), store.ids
    if new_input.is_dir():
        files = discover_case(new_input, paths_csv=paths_csv)
        absent = [m for m in members if m not in files.descriptors]
        if absent:
            raise InputError(f"{new_input}: has no descriptor file for set(s) {', '.join(map(repr, absent))} "
                             f"of model {model.name!r} (found {sorted(files.descriptors)}).")
        sources = [open_source(files.descriptors[m], allow_restricted_pickle=allow_restricted_pickle,
                               memory=memory)
                   for m in members]
        csv = files.paths_csv
    elif len(members) > 1:
        raise InputError(f"{new_input}: model {model.name!r} mixes the sets {', '.join(members)}; give a store "
                         "or a case folder holding all of them, not one descriptor file.")
    else:
        sources = [open_source(new_input, allow_restricted_pickle=allow_restricted_pickle, memory=memory)]
        csv = paths_csv
    short = [s for s in sources if s.shape[0] != sources[0].shape[0]]
    if short:
        raise InputError(f"{short[0].path}: has {short[0].shape[0]} rows but {sources[0].path} has "
                         f"{sources[0].shape[0]}.")
    if csv is None:
        return _SourceRows(sources), None
    n, blocks = read_paths_csv(csv)
    if n != sources[0].shape[0]:
        raise InputError(f"{sources[0].path}: has {sources[0].shape[0]} rows but {csv} lists {n} images.")
    return _SourceRows(sources), np.concatenate(list(blocks))


def _checked(blocks: Iterator[tuple[slice, np.ndarray]], new_input: Any
             ) -> Iterator[tuple[slice, np.ndarray]]:
    """The ``(rows, block)`` pairs as float32, refusing the first row that holds NaN or Inf."""
    for sl, X in blocks:
        if not np.isfinite(X).all():
            bad = sl.start + int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
            raise InputError(f"{new_input}: row {bad} holds NaN or Inf.")
        yield sl, np.asarray(X, np.float32)


@runs_on_scheduler
def assign_new(
    model_dir: str | os.PathLike[str],
    new_input: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    paths_csv: str | os.PathLike[str] | None = None,
    memory: str | int | None = None,
    allow_restricted_pickle: bool = False,
    progress: bool = False,
    scheduler: str | None = None,
    client: Any = None,
) -> AssignResult:
    """Label every row of ``new_input`` with the model in ``model_dir``; see the module docstring.

    Blocks are read in this process, in row order; with ``scheduler``/``client``
    their labelling and outlier scoring run on the Dask workers (the model is
    sent to each worker once), a few blocks ahead of the CSV writer.

    Parameters
    ----------
    scheduler : str, optional
        ``"local:N"`` or a scheduler address; see :mod:`streamclust.core.scheduler`.
    client : distributed.Client, optional
        An existing client instead of ``scheduler``.

    Returns
    -------
    AssignResult
        Output path, row and outlier counts, the drift report and the throughput.
    """
    import time

    check_output_path(out_csv, "file", inputs=[model_dir, new_input, paths_csv])
    model = DescriptorSetModel.load(model_dir, memory=parse_memory(memory))
    source = new_input if is_url(new_input) else Path(new_input)
    rows, paths = _open_input(source, model, Path(paths_csv) if paths_csv else None, allow_restricted_pickle,
                              memory)
    d = model.pca.n_features_in_
    if rows.shape[1] != d:
        raise InputError(f"{new_input}: rows have {rows.shape[1]} values; model {model.name!r} "
                         f"expects {d}.")
    block = block_rows_for(d, memory, copies=16)
    out_csv = Path(out_csv)
    drift = DriftAccumulator(model)
    t0 = time.perf_counter()
    def frames() -> Iterator[pd.DataFrame]:
        blocks = _checked(iter_blocks(rows, block, progress=progress, desc=f"assign {model.name}"), new_input)
        # blocks are read here in row order; labelling and scoring run on the workers
        # when a client is active
        for (sl, _), out in map_ordered(model.assign, blocks):
            path_col = (np.asarray(paths[sl]).astype(object) if paths is not None
                        else np.array([f"row:{i}" for i in range(sl.start, sl.stop)], dtype=object))
            yield pd.DataFrame({"path": path_col, "cluster": out["cluster"],
                                "cluster_sentence": model.sentence(out["cluster"]),
                                "outlier_score": out["outlier_score"], "is_outlier": out["is_outlier"]})
            drift.update(out["cluster"], out["is_outlier"], out["distance"])

    write_csv_frames(out_csv, frames())
    seconds = time.perf_counter() - t0
    report = drift.report()
    return AssignResult(out_csv, drift.n, drift.n_outliers, report, drift.n / max(seconds, 1e-9))
