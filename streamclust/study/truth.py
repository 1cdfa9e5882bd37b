"""Known outliers (a CSV of paths and flags) and how the study's flags and scores agree with them."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from streamclust.errors import InputError

__all__ = ["read_outlier_truth", "outlier_quality"]


def read_outlier_truth(path: str | os.PathLike[str], ids: np.ndarray) -> np.ndarray:
    """Known outliers for judging the flags: ``(n,)`` int8, 1 outlier, 0 normal, -1 not listed.

    Parameters
    ----------
    path : path
        A CSV with a ``path`` column (as in ``images_paths.csv``; backslashes are read as
        ``/``) and an ``is_outlier`` column (``True``/``False`` or ``1``/``0``), e.g. a demo
        case's ``truth.csv`` or a hand-labelled sample of the images.
    ids : ndarray of str, shape (n,)
        The store's image paths.

    Raises
    ------
    InputError
        Missing file or columns, unreadable flags, or no listed path in the store.
    """
    try:
        table = pd.read_csv(path, usecols=["path", "is_outlier"], dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such outlier truth file.") from exc
    except ValueError as exc:
        raise InputError(f"{path}: an outlier truth file needs columns path and is_outlier ({exc}).") from exc
    flags = table["is_outlier"].str.strip().str.lower()
    bad = ~flags.isin(["true", "false", "1", "0"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: row {row + 2}: is_outlier={table['is_outlier'].iloc[row]!r} should be "
                         "True/False or 1/0.")
    where = pd.Index(np.asarray(ids).astype(object)).get_indexer(table["path"].str.replace("\\", "/", regex=False))
    if not (where >= 0).any():
        raise InputError(f"{path}: none of its {len(table):,} paths is an image of the store.")
    known = np.full(len(ids), -1, np.int8)
    known[where[where >= 0]] = flags.isin(["true", "1"]).to_numpy()[where >= 0]
    return known


def outlier_quality(scores: np.ndarray, flags: np.ndarray, known: np.ndarray) -> dict[str, Any]:
    """How flags and scores agree with known outliers, over the rows whose truth is known.

    Parameters
    ----------
    scores : ndarray, shape (n,)
    flags : ndarray of bool, shape (n,)
    known : ndarray of int8, shape (n,)
        From :func:`read_outlier_truth` (-1: unknown).

    Returns
    -------
    dict
        ``rows`` (with truth), ``outliers`` (known), ``flagged``, ``precision`` (flagged rows that
        are known outliers), ``recall`` (known outliers flagged), ``roc_auc`` of the scores (None
        when only one class is known).
    """
    from sklearn.metrics import roc_auc_score

    m = known >= 0
    y, f = known[m] == 1, np.asarray(flags)[m]
    tp = int((f & y).sum())
    both = 0 < int(y.sum()) < len(y)
    return {"rows": int(m.sum()), "outliers": int(y.sum()), "flagged": int(f.sum()),
            "precision": round(tp / int(f.sum()), 4) if f.any() else None,
            "recall": round(tp / int(y.sum()), 4) if y.any() else None,
            "roc_auc": round(float(roc_auc_score(y, np.asarray(scores)[m])), 4) if both else None}
