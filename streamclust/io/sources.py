"""Readers for the raw descriptor formats people have, one per file suffix (:data:`READERS`).

========================  ==========================================================
``.pickle``, ``.pkl``     one pickled 2-D ndarray, parsed and streamed without
                          unpickling (:mod:`streamclust.io.pickle_stream`); other
                          pickles only with ``allow_restricted_pickle=True``
``.npy``                  memory-mapped
``.npz``                  one member (``file.npz:key`` picks it), streamed
``.csv``, ``.txt``        one row per image, numbers only (a header line -- text, or
                          pandas' default ``0,1,...,d-1`` -- is skipped)
``.parquet``              numeric columns, or one list column, one row per image
========================  ==========================================================

Every reader exposes ``shape``, ``dtype`` and ``read_rows(start, stop)`` returning
``(stop - start, d)`` arrays; rows are read in increasing order.  To add a format: a reader
class here and its suffix in :data:`READERS`.
"""

from __future__ import annotations

import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from streamclust.errors import InputError
from streamclust.io.pickle_stream import open_pickled_array

__all__ = ["DESCRIPTOR_SUFFIXES", "READERS", "ArraySource", "open_source"]


class ArraySource(Protocol):
    """A raw 2-D array read in row blocks."""

    # Read-only members, so that frozen dataclasses (PickledArray) are sources too.
    @property
    def path(self) -> Path: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def dtype(self) -> np.dtype: ...

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an ndarray of shape ``(stop - start, d)``."""


def _check_2d_numeric(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    if dtype.kind not in "fiu":
        raise InputError(f"{path}: dtype {dtype} is not numeric; descriptors must be numbers.")
    if len(shape) != 2:
        raise InputError(f"{path}: expected a 2-D array (images x features), got shape {shape}.")
    if shape[0] == 0 or shape[1] == 0:
        raise InputError(f"{path}: the array is empty (shape {shape}).")
    return int(shape[0]), int(shape[1])


#: What the numpy, zipfile, zlib, csv and pandas readers raise on a malformed file.
_FORMAT_ERRORS = (OSError, EOFError, ValueError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile,
                  zlib.error, NotImplementedError, UnicodeDecodeError)


def _unreadable(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path}: malformed or truncated {path.suffix or 'file'} "
                      f"({type(exc).__name__}: {exc}); export it again.")


class _NpySource:
    """A ``.npy`` file, memory-mapped (never loaded whole, never unpickled)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._mm = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{path}: not a plain numeric .npy array ({exc}).") from exc
        self.dtype = self._mm.dtype
        self.shape = _check_2d_numeric(path, self._mm.shape, self.dtype)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.array(self._mm[start:stop])


class _SequentialSource:
    """Base of formats read front to back: rows must be requested in order."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype
    # Set by the first _read_rows (which tests hasattr(self, "_it")).
    _it: Iterator[np.ndarray]
    _pos: int
    _buf: np.ndarray

    def _chunks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        try:
            return self._read_rows(start, stop)
        except InputError:
            raise
        except _FORMAT_ERRORS as exc:
            raise _unreadable(self.path, exc) from exc

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        if not hasattr(self, "_it") or start < self._pos:
            self._it, self._pos, self._buf = self._chunks(), 0, np.empty((0, self.shape[1]), self.dtype)
        parts = []
        while self._pos < stop:
            if len(self._buf) == 0:
                try:
                    self._buf = next(self._it)
                except StopIteration:
                    raise InputError(
                        f"{self.path}: ended after {self._pos} rows, expected {self.shape[0]}."
                    ) from None
            take_from = max(0, start - self._pos)
            take = min(len(self._buf), stop - self._pos)
            if take_from < take:
                parts.append(self._buf[take_from:take])
            self._buf = self._buf[take:]
            self._pos += take
        if not parts:
            return np.empty((0, self.shape[1]), self.dtype)
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])


class _NpzSource(_SequentialSource):
    """One member of a ``.npz`` archive, streamed through its (de)compressor."""

    def __init__(self, path: Path, key: str | None) -> None:
        self.path = path
        with zipfile.ZipFile(path) as zf:
            members = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if key is None:
            if len(members) != 1:
                raise InputError(
                    f"{path}: holds arrays {members}; name one as '{path.name}:KEY'."
                )
            key = members[0]
        if key not in members:
            raise InputError(f"{path}: has no array {key!r}; it holds {members}.")
        self.key = key
        with self._open() as f:
            shape, fortran, dtype = self._header(f)
        if fortran:
            raise InputError(
                f"{path}:{key} is stored in Fortran order, which cannot be streamed from an .npz; "
                "save it with np.save (.npy) instead."
            )
        self.dtype = dtype
        self.shape = _check_2d_numeric(path, shape, dtype)

    def _open(self) -> IO[bytes]:
        zf = zipfile.ZipFile(self.path)
        return zf.open(self.key + ".npy")

    def _header(self, f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise InputError(f"{self.path}:{self.key} has object dtype; only numbers are read.")
        return shape, fortran, dtype

    def _chunks(self) -> Iterator[np.ndarray]:
        row_bytes = self.shape[1] * self.dtype.itemsize
        rows = max(1, (8 << 20) // row_bytes)
        with self._open() as f:
            self._header(f)
            remaining = self.shape[0]
            while remaining:
                n = min(rows, remaining)
                raw = f.read(n * row_bytes)
                if len(raw) != n * row_bytes:
                    raise InputError(f"{self.path}:{self.key} is truncated.")
                yield np.frombuffer(raw, self.dtype).reshape(n, self.shape[1])
                remaining -= n


class _CsvSource(_SequentialSource):
    """A CSV/TXT of numbers, one row per image (an optional header line is skipped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace")
            n_lines = 1 + sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n" and f.tell() > len(first.encode()):
                pass  # every line ends with a newline: the count is exact
            elif f.tell() > len(first.encode()):
                n_lines += 1  # the last line has no newline
        self._sep = "," if "," in first else (";" if ";" in first else r"\s+")
        cells = first.strip().split(self._sep) if self._sep != r"\s+" else first.split()
        try:
            values = [float(c) for c in cells]
            # pandas' to_csv writes column names 0..d-1 as a header line
            self._header = values == list(range(len(values))) and len(values) > 1
        except ValueError:
            self._header = True
        n_lines -= int(self._header)
        self.dtype = np.dtype("float64")
        self.shape = _check_2d_numeric(path, (n_lines, len(cells)), self.dtype)

    def _chunks(self) -> Iterator[np.ndarray]:
        import pandas as pd

        reader = pd.read_csv(
            self.path, sep=self._sep, header=0 if self._header else None, chunksize=65536,
            dtype=np.float64, engine="c" if self._sep != r"\s+" else "python",
        )
        row = 0
        try:
            for frame in reader:
                if frame.shape[1] != self.shape[1]:
                    raise InputError(
                        f"{self.path}: row {row} has {frame.shape[1]} values, expected {self.shape[1]}."
                    )
                row += len(frame)
                yield frame.to_numpy()
        except (ValueError, pd.errors.ParserError) as exc:  # ParserError is a ValueError too
            raise InputError(f"{self.path}: unreadable near row {row}: {exc}") from exc


class _ParquetSource(_SequentialSource):
    """A Parquet file: its numeric columns (or one list column) form the rows."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InputError(
                f"{path}: reading Parquet needs pyarrow; pip install 'streamclust[parquet]'."
            ) from exc
        self.path = path
        self._file = pq.ParquetFile(path)
        schema = self._file.schema_arrow
        import pyarrow as pa

        numeric = [f.name for f in schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
        lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
        n = self._file.metadata.num_rows
        if numeric:
            self._columns, self._list = numeric, False
            d = len(numeric)
        elif len(lists) == 1:
            self._columns, self._list = lists, True
            first = next(self._file.iter_batches(batch_size=1, columns=lists))
            d = len(first.column(0)[0])
        else:
            raise InputError(f"{path}: no numeric columns and not exactly one list column ({schema.names}).")
        self.dtype = np.dtype("float64")
        self.shape = _check_2d_numeric(path, (n, d), self.dtype)

    def _chunks(self) -> Iterator[np.ndarray]:
        for batch in self._file.iter_batches(batch_size=65536, columns=self._columns):
            if self._list:
                flat = batch.column(0).flatten().to_numpy(zero_copy_only=False)
                if flat.size != batch.num_rows * self.shape[1]:
                    raise InputError(f"{self.path}: list column rows have different lengths.")
                yield flat.reshape(batch.num_rows, self.shape[1]).astype(np.float64)
            else:
                yield np.column_stack(
                    [batch.column(i).to_numpy(zero_copy_only=False) for i in range(batch.num_columns)]
                ).astype(np.float64)


def open_source(spec: str | os.PathLike[str], *, allow_restricted_pickle: bool = False) -> ArraySource:
    """Open a raw descriptor file by extension.

    Parameters
    ----------
    spec : path
        The file; ``archive.npz:key`` names one member of an ``.npz``.
    allow_restricted_pickle : bool
        Admit pickles that are not a plain ndarray (a DataFrame, a list of
        arrays) through a loader restricted to numpy and pandas classes.  Such
        pickles are loaded into memory whole.

    Returns
    -------
    ArraySource
        ``shape`` (n, d), ``dtype`` and ``read_rows(start, stop)``.
    """
    text = os.fspath(spec)
    key = None
    if ".npz:" in text:
        text, key = text.split(".npz:", 1)
        text += ".npz"
    path = Path(text)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:  # its own errors name the offending opcode or byte
        return open_pickled_array(path, allow_restricted=allow_restricted_pickle)
    if suffix in READERS:
        try:
            return READERS[suffix](path, key)
        except InputError:
            raise
        except _FORMAT_ERRORS as exc:
            raise _unreadable(path, exc) from exc
    raise InputError(
        f"{path}: unknown descriptor format {suffix!r}; use one of {', '.join(DESCRIPTOR_SUFFIXES)}."
    )


_PICKLE_SUFFIXES = (".pickle", ".pkl")

#: Reader per file suffix: ``reader(path, key) -> ArraySource``, ``key`` the member an
#: ``archive.npz:key`` names (None otherwise).  Pickles are read by :mod:`streamclust.io.pickle_stream`.
READERS: dict[str, Callable[[Path, str | None], ArraySource]] = {
    ".npy": lambda path, key: _NpySource(path),
    ".npz": lambda path, key: _NpzSource(path, key),
    ".csv": lambda path, key: _CsvSource(path),
    ".txt": lambda path, key: _CsvSource(path),
    ".parquet": lambda path, key: _ParquetSource(path),
}

#: Every suffix :func:`open_source` reads.
DESCRIPTOR_SUFFIXES = (*_PICKLE_SUFFIXES, *READERS)
