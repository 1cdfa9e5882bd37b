"""Readers for the raw descriptor formats people have, and the conversion to a store.

Formats (chosen by extension):

========================  ==========================================================
``.pickle``, ``.pkl``     one pickled 2-D ndarray, parsed and streamed without
                          unpickling (:mod:`streamclust._pickle_stream`); other
                          pickles only with ``allow_restricted_pickle=True``
``.npy``                  memory-mapped
``.npz``                  one member (``file.npz:key`` picks it), streamed
``.csv``, ``.txt``        one row per image, numbers only (a header line -- text, or
                          pandas' default ``0,1,...,d-1`` -- is skipped)
``.parquet``              numeric columns, or one list column, one row per image
========================  ==========================================================

Every reader exposes ``shape``, ``dtype`` and ``read_rows(start, stop)`` returning
``(stop - start, d)`` arrays; rows are read in increasing order.  Conversion
checks row counts against ``images_paths.csv``, refuses non-finite values naming
the first bad row, stores float32 with provenance attributes and resumes an
interrupted conversion where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._blocks import parse_memory
from ._pickle_stream import open_pickled_array
from ._scheduler import runs_on_scheduler
from .errors import InputError, StoreError
from .store import CaseStore, now_iso

__all__ = [
    "DESCRIPTOR_SUFFIXES",
    "ArraySource",
    "open_source",
    "discover_case",
    "CaseFiles",
    "read_paths_csv",
    "convert_case",
    "convert_descriptor",
]

DESCRIPTOR_SUFFIXES = (".pickle", ".pkl", ".npy", ".npz", ".csv", ".txt", ".parquet")
_PATHS_CSV = "images_paths.csv"


class ArraySource(Protocol):
    """A raw 2-D array read in row blocks."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype

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

    def _chunks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read_rows(self, start: int, stop: int) -> np.ndarray:
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

    def _open(self) -> io.BufferedIOBase:
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
    if suffix in (".pickle", ".pkl"):
        return open_pickled_array(path, allow_restricted=allow_restricted_pickle)
    if suffix == ".npy":
        return _NpySource(path)
    if suffix == ".npz":
        return _NpzSource(path, key)
    if suffix in (".csv", ".txt"):
        return _CsvSource(path)
    if suffix == ".parquet":
        return _ParquetSource(path)
    raise InputError(
        f"{path}: unknown descriptor format {suffix!r}; use one of {', '.join(DESCRIPTOR_SUFFIXES)}."
    )


@dataclass
class CaseFiles:
    """The raw files of a case: descriptor sets by name, and the paths CSV."""

    descriptors: dict[str, Path]
    paths_csv: Path


def discover_case(case_dir: str | os.PathLike[str], descriptors: dict[str, str] | None = None,
                  paths_csv: str | os.PathLike[str] | None = None) -> CaseFiles:
    """Find ``descriptors/*`` and ``images_paths.csv`` in a case folder.

    Explicit ``descriptors`` (name -> file) replace the discovery.
    """
    root = Path(case_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory.")
    csv = Path(paths_csv) if paths_csv else root / _PATHS_CSV
    if not csv.is_file():
        raise InputError(f"{csv}: missing; a case needs the image paths, one per descriptor row.")
    if descriptors:
        found = {name: Path(p) if Path(p).is_absolute() or Path(p).exists() else root / p
                 for name, p in descriptors.items()}
    else:
        folder = root / "descriptors" if (root / "descriptors").is_dir() else root
        found = {
            p.stem: p for p in sorted(folder.iterdir())
            if p.suffix.lower() in DESCRIPTOR_SUFFIXES and p.name != csv.name and p.is_file()
        }
        if not found:
            raise InputError(
                f"{folder}: no descriptor files ({', '.join(DESCRIPTOR_SUFFIXES)}); "
                "name them with --descriptor NAME=FILE."
            )
    return CaseFiles(found, csv)


def _path_blocks(csv: Path, block_rows: int = 65536) -> Iterator[np.ndarray]:
    """Paths of ``csv``'s ``paths`` column in blocks, backslashes turned into ``/``."""
    import csv as csv_module

    try:
        with open(csv, newline="", encoding="utf-8") as f:
            reader = csv_module.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{csv}: empty file; it needs a header 'paths' and one row per image.")
            if "paths" not in header:
                raise InputError(f"{csv}: needs a column 'paths'; it has {header}.")
            col = header.index("paths")
            block: list[str] = []
            row = 0
            for fields in reader:
                value = fields[col] if col < len(fields) else ""
                if not value:
                    raise InputError(f"{csv}: row {row} has an empty path.")
                block.append(value.replace("\\", "/"))
                row += 1
                if len(block) == block_rows:
                    yield np.array(block, dtype=np.dtypes.StringDType())
                    block = []
            if block:
                yield np.array(block, dtype=np.dtypes.StringDType())
    except UnicodeDecodeError as exc:
        raise InputError(f"{csv}: not UTF-8 text (byte {exc.start}: {exc.reason}).") from exc
    except csv_module.Error as exc:
        raise InputError(f"{csv}: malformed CSV ({exc}).") from exc


def read_paths_csv(csv: str | os.PathLike[str]) -> tuple[int, Iterator[np.ndarray]]:
    """Validate ``images_paths.csv`` in one pass; return its row count and a block reader.

    Paths get forward slashes.  Empty paths, duplicates and non-UTF-8 text are
    refused with the row concerned.  Memory: 8 bytes per row for duplicate
    detection (64-bit BLAKE2 digests).

    Returns
    -------
    n_rows : int
    blocks : iterator of ndarray of str, shape (rows,)
        A fresh pass over the paths, in file order.
    """
    csv = Path(csv)
    digests = []
    for block in _path_blocks(csv):
        digests.append(np.array([int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little")
                                 for p in block.tolist()], dtype=np.uint64))
    n = int(sum(len(d) for d in digests))
    if n == 0:
        raise InputError(f"{csv}: no rows.")
    h = np.concatenate(digests)
    order = np.argsort(h, kind="stable")
    dup = np.flatnonzero(h[order][1:] == h[order][:-1])
    if len(dup):
        a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise InputError(f"{csv}: rows {a} and {b} name the same image; paths must be unique.")
    return n, _path_blocks(csv)


def _fingerprint(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (1 << 20):
            f.seek(max(0, st.st_size - (1 << 20)))
            h.update(f.read(1 << 20))
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:32]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_descriptor(
    store: CaseStore, name: str, source: ArraySource, *, memory: str | int | None = None,
    progress: bool = False,
) -> None:
    """Copy one raw array into ``descriptors/<name>`` as float32, resuming if interrupted.

    Raises
    ------
    InputError
        Row count differs from the store's ids, or a row holds NaN/Inf (the
        first bad row is named).  Rows already written stay, marked incomplete.
    """
    n, d = source.shape
    if n != store.n_rows:
        raise InputError(
            f"{source.path}: has {n} rows but the image paths list {store.n_rows}; "
            "row i of every descriptor file must be image i of images_paths.csv."
        )
    attrs = {
        "source": str(source.path),
        "source_size": source.path.stat().st_size,
        "source_dtype": str(source.dtype),
        "source_fingerprint": _fingerprint(source.path),
        "converted": now_iso(),
    }
    arr, done = store.open_descriptor_for_writing(name, n, d, attrs)
    if arr.attrs.get("status") == "complete":
        return
    chunk = arr.chunks[0]
    # one block: the source rows, a float32 copy and compression buffers
    per_block = max(chunk, (parse_memory(memory) // 32) // (d * 8) // chunk * chunk)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=done, desc=f"convert {name}", unit="rows", unit_scale=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(_sha256, source.path)
        for start in range(done, n, per_block):
            stop = min(n, start + per_block)
            block = source.read_rows(start, stop)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                bad = start + int(np.flatnonzero(~finite)[0])
                raise InputError(
                    f"{source.path}: row {bad} holds NaN or Inf; fix or drop that image "
                    f"(rows before it are kept in {store.path} and the conversion resumes there)."
                )
            arr[start:stop] = block.astype(np.float32, copy=False)
            arr.attrs["rows_written"] = stop
            if bar is not None:
                bar.update(stop - start)
        arr.attrs.update({"source_sha256": digest.result(), "status": "complete"})
    if bar is not None:
        bar.close()


@runs_on_scheduler
def convert_case(
    case_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    descriptors: dict[str, str] | None = None,
    paths_csv: str | os.PathLike[str] | None = None,
    memory: str | int | None = None,
    allow_restricted_pickle: bool = False,
    progress: bool = False,
    scheduler: str | None = None,
    client: Any = None,
) -> CaseStore:
    """Convert a case folder into a store (see :mod:`streamclust.store`).

    Parameters
    ----------
    case_dir : path
        Folder with ``descriptors/*`` and ``images_paths.csv``.
    out : path
        The ``.zarr`` store to create or resume.
    descriptors : dict of name -> file, optional
        Explicit descriptor files instead of discovery.
    paths_csv : path, optional
        Another paths CSV than ``CASE_DIR/images_paths.csv``.
    memory : str or int, optional
        Memory budget (default 1 GiB); conversion uses a small part of it.
    allow_restricted_pickle : bool
        See :func:`open_source`.
    progress : bool
        Progress bars.
    scheduler : str, optional
        ``"local:N"`` or a scheduler address (:mod:`streamclust._scheduler`),
        accepted so one setting serves every step of a pipeline.  Conversion
        itself runs in this process whatever the scheduler: the raw formats are
        read as sequential streams (pickle opcodes, CSV lines) and the store is
        written in row order so that an interrupted conversion resumes; shipping
        raw blocks to workers would cost more than compressing them here.
    client : distributed.Client, optional
        An existing client instead of ``scheduler``.

    Returns
    -------
    CaseStore
    """
    files = discover_case(case_dir, descriptors, paths_csv)
    sources = {
        name: open_source(path, allow_restricted_pickle=allow_restricted_pickle)
        for name, path in files.descriptors.items()
    }
    n, blocks = read_paths_csv(files.paths_csv)
    for name, src in sources.items():
        if src.shape[0] != n:
            raise InputError(
                f"{src.path}: has {src.shape[0]} rows but {files.paths_csv} lists {n} images; "
                "row i of every descriptor file must be image i of the paths CSV."
            )
    store = CaseStore(out, mode="a")
    ids_ok = "ids" in store.root and store.root["ids"].attrs.get("status") == "complete" and \
        store.root["ids"].attrs.get("source_fingerprint") == _fingerprint(files.paths_csv)
    if not ids_ok:
        if "ids" in store.root and store.root["ids"].attrs.get("status") == "complete" \
                and store.root["ids"].shape[0] != n and store.descriptor_names():
            raise StoreError(
                f"{store.path}: already holds {store.root['ids'].shape[0]} images, "
                f"{files.paths_csv} lists {n}; convert into a new store."
            )
        store.write_ids(blocks, n, {
            "source": str(files.paths_csv),
            "source_size": files.paths_csv.stat().st_size,
            "source_fingerprint": _fingerprint(files.paths_csv),
        })
    for name, src in sources.items():
        convert_descriptor(store, name, src, memory=memory, progress=progress)
    return store
