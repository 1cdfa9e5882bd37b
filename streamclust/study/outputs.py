"""The study's files: the streamed ``results.csv``, the top outliers of ``outliers.csv``, and the
move of a finished study from its hidden staging folder into the output folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamclust.core.files import atomic_output, write_csv_frames
from streamclust.estimators.blockwise import top_outlier_rows

__all__ = ["write_results", "top_outliers", "publish"]


def write_results(csv_path: Path, parquet_path: Path, ids: Any, columns: dict[str, Any]) -> None:
    """Stream ``path`` then ``columns`` for every row into ``results.csv`` and, typed (``path``
    string, labels int32, scores float32, flags bool; ~3x smaller), into ``results.parquet``.

    One read of each block of 65,536 rows serves both files (one Parquet row group per block);
    each file is written atomically, and neither is left behind when the other fails.

    Parameters
    ----------
    csv_path, parquet_path : path
    ids : array of str, shape (n,)
        The store's image paths.
    columns : dict of str -> array, shape (n,)
        Name -> values, in column order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_output(parquet_path, "wb") as parquet:
        writer = None

        def frames() -> Iterator[pd.DataFrame]:
            nonlocal writer
            block = 1 << 16
            for start in range(0, ids.shape[0], block):
                stop = min(ids.shape[0], start + block)
                frame = pd.DataFrame({"path": np.asarray(ids[start:stop]).astype(object)})
                for name, arr in columns.items():
                    frame[name] = np.asarray(arr[start:stop])
                yield frame
                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(parquet, table.schema)
                writer.write_table(table)

        write_csv_frames(csv_path, frames())
        if writer is not None:
            writer.close()


def top_outliers(name: str, scores: np.ndarray, flags: np.ndarray, labels: Any, ids: Any,
                 n_top: int, reasons: Callable[[np.ndarray], np.ndarray] | None = None,
                 known: np.ndarray | None = None) -> pd.DataFrame:
    """The ``n_top`` highest-scoring rows of one set, ranked, as ``outliers.csv`` lists them.

    ``scores`` and ``flags`` are (n,) numpy; ``labels`` and ``ids`` are the run's zarr arrays (only
    the chosen rows are read); ``reasons(rows)`` names the evidence that flagged each (empty when
    the score has a single kind of evidence); with
    ``known`` (:func:`~streamclust.study.truth.read_outlier_truth`) a ``known_outlier`` column."""
    top = top_outlier_rows(scores, n_top)["row"].to_numpy()  # highest first, ties: lower row first
    order = np.sort(top)  # read ids and labels in store order
    paths = np.asarray(ids.get_orthogonal_selection(order)).astype(object)
    frame = pd.DataFrame({"set": name, "row": order, "path": paths,
                          "outlier_score": scores[order], "is_outlier": flags[order],
                          "reason": reasons(order) if reasons is not None else "",
                          **({"known_outlier": np.array(["", "False", "True"])[known[order] + 1]}
                             if known is not None else {}),
                          "cluster": np.asarray(labels.get_orthogonal_selection(order))})
    frame = frame.sort_values("outlier_score", ascending=False, kind="stable")
    frame.insert(1, "rank", np.arange(1, len(frame) + 1))
    return frame


def publish(stage: Path, out: Path) -> None:
    """Move a finished study's outputs from ``stage`` into ``out``, ``summary.json`` last.

    Each output replaces the one of the same name (``models/<set>`` one set at a time);
    anything else in ``out`` stays.  Until this runs, ``out`` holds only the previous
    study's outputs, so a study that fails or is killed never touches them.
    """
    def replace(src: Path, dst: Path) -> None:
        if dst.is_dir() and not dst.is_symlink():
            old = dst.with_name(f".{dst.name}.replaced-{stage.name}")
            os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old)
        else:
            os.replace(src, dst)

    for src in sorted(stage.iterdir(), key=lambda p: p.name == "summary.json"):
        if src.name == "models":
            (out / "models").mkdir(exist_ok=True)
            for model in src.iterdir():
                replace(model, out / "models" / model.name)
            src.rmdir()
        else:
            replace(src, out / src.name)
    stage.rmdir()
