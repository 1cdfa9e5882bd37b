"""Label and screen NEW descriptors with a saved model, streamed, and report drift.

``NEW_INPUT`` may be a store (``.zarr``, the set named like the model), a case
folder (``descriptors/<set>.*`` + ``images_paths.csv``), or one descriptor file
in any format :func:`streamclust.ingest.open_source` reads (paths from
``--paths CSV``, else ``row:<i>``).  Rows are read in blocks; the output CSV
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

from ._blocks import block_rows_for, iter_blocks
from ._scheduler import map_ordered, runs_on_scheduler
from .errors import InputError
from .ingest import discover_case, open_source, read_paths_csv
from .model import DescriptorSetModel, DriftAccumulator, DriftReport
from .store import CaseStore

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
    """Row slicing over an :class:`~streamclust.ingest.ArraySource` (for ``iter_blocks``)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.shape = source.shape
        self.ndim = 2

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.source.read_rows(rows.start, rows.stop)


def _open_input(new_input: Path, set_name: str, paths_csv: Path | None,
                allow_restricted_pickle: bool) -> tuple[Any, Any]:
    """``(rows, paths)``: a row-sliceable (n, d) array and an (n,)-sliceable path source."""
    if new_input.is_dir() and (new_input / "zarr.json").exists():
        store = CaseStore(new_input)
        return store.descriptor(set_name), store.ids
    if new_input.is_dir():
        files = discover_case(new_input, paths_csv=paths_csv)
        if set_name not in files.descriptors:
            raise InputError(f"{new_input}: has no descriptor file for set {set_name!r} "
                             f"(found {sorted(files.descriptors)}).")
        source = open_source(files.descriptors[set_name], allow_restricted_pickle=allow_restricted_pickle)
        csv = files.paths_csv
    else:
        source = open_source(new_input, allow_restricted_pickle=allow_restricted_pickle)
        csv = paths_csv
    if csv is None:
        return _SourceRows(source), None
    n, blocks = read_paths_csv(csv)
    if n != source.shape[0]:
        raise InputError(f"{source.path}: has {source.shape[0]} rows but {csv} lists {n} images.")
    return _SourceRows(source), np.concatenate(list(blocks))


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
        ``"local:N"`` or a scheduler address; see :mod:`streamclust._scheduler`.
    client : distributed.Client, optional
        An existing client instead of ``scheduler``.

    Returns
    -------
    AssignResult
        Output path, row and outlier counts, the drift report and the throughput.
    """
    import time

    model = DescriptorSetModel.load(model_dir)
    rows, paths = _open_input(Path(new_input), model.name, Path(paths_csv) if paths_csv else None,
                              allow_restricted_pickle)
    d = model.pca.n_features_in_
    if rows.shape[1] != d:
        raise InputError(f"{new_input}: rows have {rows.shape[1]} values; model {model.name!r} "
                         f"expects {d}.")
    block = block_rows_for(d, memory, copies=16)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp")
    drift = DriftAccumulator(model)
    t0 = time.perf_counter()
    try:
        with open(tmp, "w", newline="") as f:
            blocks = _checked(iter_blocks(rows, block, progress=progress, desc=f"assign {model.name}"),
                              new_input)
            # blocks are read here in row order; labelling and scoring run on the workers
            # when a client is active
            for (sl, _), out in map_ordered(model.assign, blocks):
                path_col = (np.asarray(paths[sl]).astype(object) if paths is not None
                            else np.array([f"row:{i}" for i in range(sl.start, sl.stop)], dtype=object))
                frame = pd.DataFrame({"path": path_col, "cluster": out["cluster"],
                                      "cluster_sentence": model.sentence(out["cluster"]),
                                      "outlier_score": out["outlier_score"], "is_outlier": out["is_outlier"]})
                frame.to_csv(f, header=sl.start == 0, index=False, float_format="%.6g")
                drift.update(out["cluster"], out["is_outlier"], out["distance"])
        os.replace(tmp, out_csv)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    report = drift.report()
    return AssignResult(out_csv, drift.n, drift.n_outliers, report, drift.n / max(seconds, 1e-9))
