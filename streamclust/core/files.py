"""Files that readers see either whole or not at all: written to a temporary file beside the
target, flushed to disk, then renamed over it (``os.replace`` is atomic on one file system).

The temporary file has an unpredictable name, is created exclusively (``O_EXCL``, never through a
link planted at its name) and written through the descriptor that created it.  Every CSV written
here has its formula-leading text cells neutralised (:func:`neutralise_formulas`)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from streamclust.errors import StoreError

__all__ = ["FORMULA_STARTS", "atomic_output", "neutralise_formulas", "write_atomic", "write_csv", "write_csv_frames"]

#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    On an exception (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` keeps
    its old content.  The parent folder is created if needed; the file gets the permissions
    :func:`open` would give it (``0o666`` less the umask), not the temporary file's ``0o600``.
    The temporary file (``.NAME.<random>.tmp``) is created by :func:`tempfile.mkstemp` and written
    through that descriptor, never reopened by name; if another process swaps it for something
    else meanwhile, :class:`~streamclust.errors.StoreError` is raised and ``path`` is untouched.

    Parameters
    ----------
    path : path
    mode : {"wb", "w"}
        Binary or text.
    **open_kwargs
        Passed to :func:`open` (e.g. ``newline=""`` for CSV text).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # the descriptor mkstemp created, under the temporary name (``f.name`` names it in errors)
        with open(tmp, mode, opener=lambda _name, _flags: fd, **open_kwargs) as f:
            yield f
            f.flush()
            os.fchmod(fd, 0o666 & ~_umask())
            os.fsync(fd)
            if not _names_descriptor(tmp, fd):
                raise StoreError(f"{tmp}: was replaced by another file while streamclust wrote it; "
                                 f"{path} is left as it was. Write into a folder only you can change.")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _names_descriptor(name: str, fd: int) -> bool:
    """Whether ``name`` is still the file open as ``fd`` (not deleted, not swapped for a link)."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(name))
    except FileNotFoundError:
        return False


def _umask() -> int:
    """The process's umask: read from ``/proc/self/status`` (Linux), else by setting it and setting it
    back (a moment in which a file another thread creates would get ``0o022``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write a file so that readers see either the old or the whole new content."""
    with atomic_output(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def neutralise_formulas(frame: Any) -> Any:
    """``frame`` with every text cell that starts like a formula (:data:`FORMULA_STARTS`) prefixed
    by ``'``, so that a spreadsheet opening the CSV shows it as text instead of running it.

    Only ``str`` values change (cells, column labels, index labels): numbers -- a negative float
    too --, flags and missing values never do.  ``frame`` itself is never modified.

    Parameters
    ----------
    frame : pandas.DataFrame

    Returns
    -------
    pandas.DataFrame
        ``frame`` itself when no cell needs a change, else a changed copy.
    """
    import numpy as np
    import pandas as pd

    out = frame
    for i in range(frame.shape[1]):
        column = frame.iloc[:, i]
        if pd.api.types.is_numeric_dtype(column.dtype):  # numbers and flags: nothing to check
            continue
        values = column.to_numpy(dtype=object)
        hit = np.fromiter((_formula_like(v) for v in values), dtype=bool, count=len(values))
        if hit.any():
            values = values.copy()
            values[hit] = [_neutral(v) for v in values[hit]]
            out = frame.copy() if out is frame else out
            out.isetitem(i, values)
    for axis in ("columns", "index"):
        labels = getattr(frame, axis)
        if not pd.api.types.is_numeric_dtype(labels.dtype) and any(_formula_like(v) for v in labels):
            out = frame.copy() if out is frame else out
            setattr(out, axis, labels.map(_neutral))
    if any(_formula_like(name) for name in frame.index.names):  # the index column's header
        out = frame.copy() if out is frame else out
        out.index = out.index.set_names([_neutral(name) for name in frame.index.names])
    return out


def _formula_like(value: object) -> bool:
    return isinstance(value, str) and value.startswith(FORMULA_STARTS)


def _neutral(value: Any) -> Any:
    return "'" + value if _formula_like(value) else value


def _csv_quotes_cr() -> bool:
    """Whether this Python's csv writer quotes a field holding a bare CR (CPython >= 3.11.9, gh-67044)."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(["\r"])
    return text.getvalue().startswith('"')


_QUOTES_CR = _csv_quotes_cr()


def _safe_csv(frame: Any, buf: IO[str] | None = None, **to_csv: Any) -> Any:
    """``frame.to_csv(buf, **to_csv)``, its formula-like cells neutralised (:func:`neutralise_formulas`),
    every field quoted when a text cell holds a CR that this Python's csv writer would leave bare:
    readers would take it for the end of the row, and what follows it for a new cell."""
    import pandas as pd

    safe = neutralise_formulas(frame)
    if not _QUOTES_CR:
        texts = [values for values in (safe.columns, safe.index, *(c for _, c in safe.items()))
                 if not pd.api.types.is_numeric_dtype(values.dtype)]
        if any(isinstance(v, str) and "\r" in v for values in texts for v in values):
            to_csv["quoting"] = csv.QUOTE_ALL
    return safe.to_csv(buf, **to_csv)


def write_csv(path: str | os.PathLike[str], frame: Any, *, index: bool = False) -> None:
    """Write one DataFrame as a CSV file, atomically, its formula-like text cells neutralised
    (:func:`neutralise_formulas`); floats in full precision (pandas' default).

    Parameters
    ----------
    path : path
    frame : pandas.DataFrame
    index : bool
        Write the index as the first column.
    """
    write_atomic(path, _safe_csv(frame, index=index))


def write_csv_frames(path: str | os.PathLike[str], frames: Iterable[Any]) -> None:
    """Stream DataFrames into one CSV file, atomically (:func:`atomic_output`).

    The first frame writes the header; no index; floats with 6 significant digits (``%.6g``);
    formula-like text cells neutralised (:func:`neutralise_formulas`, on a copy: the caller's
    frames keep their values).  No frame at all gives an empty file.

    Parameters
    ----------
    path : path
    frames : iterable of pandas.DataFrame
        Blocks of rows with the same columns, in file order; consumed one at a time.
    """
    with atomic_output(path, "w", newline="") as f:
        for i, frame in enumerate(frames):
            _safe_csv(frame, f, header=i == 0, index=False, float_format="%.6g")
