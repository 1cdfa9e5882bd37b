"""Readers for the raw descriptor formats people have, one per file suffix (:data:`READERS`).

========================  ==========================================================
``.pickle``, ``.pkl``     one pickled 2-D ndarray, parsed and streamed without
                          unpickling (:mod:`streamclust.io.pickle_stream`); other
                          pickles only with ``allow_restricted_pickle=True``
``.npy``                  read block by block (not memory-mapped: read pages of a
                          mapping stay in the resident size)
``.npz``                  one member (``file.npz:key`` picks it), streamed through
                          its decompressor, never inflated whole
``.csv``, ``.txt``        one row per image, numbers only (a header line -- text, or
                          pandas' default ``0,1,...,d-1`` -- is skipped); lines
                          longer than the budget admits are refused by number
``.parquet``              numeric columns, or one list column, one row per image;
                          pages streamed, oversized pages refused
========================  ==========================================================

Every reader exposes ``shape``, ``dtype`` and ``read_rows(start, stop)`` returning
``(stop - start, d)`` arrays; rows are read in increasing order.  To add a format: a reader
class here and its suffix in :data:`READERS`.

Memory: :func:`open_source` takes the budget (``memory``, as everywhere).  Opening reads
headers and declared sizes only (a CSV is walked once in 1 MiB reads); a file whose single row
would not fit one read (``budget / 32`` bytes of float64) is refused naming the file, the width
and the budget.  A reader's own buffers hold at most one read beyond the rows asked for.
"""

from __future__ import annotations

import io
import os
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Protocol, cast

import numpy as np

from streamclust.core.blocks import parse_memory
from streamclust.errors import InputError
from streamclust.io.lines import line_limit, read_span, scan_lines
from streamclust.io.pickle_stream import open_pickled_array

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["DESCRIPTOR_SUFFIXES", "READERS", "ArraySource", "check_parquet_footer", "open_source"]


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


#: One read of a reader yields at most ``budget / _READ_SHARE`` bytes of rows as float64 (32 MiB
#: at the 1 GiB default), and at least one row: a row larger than that is refused at open.
_READ_SHARE = 32


def _check_row_fits(source: ArraySource, budget: int) -> None:
    """Refuse a source whose one row, as float64, exceeds one read of the budget."""
    d = source.shape[1]
    if d * 8 > budget // _READ_SHARE:
        raise InputError(
            f"{source.path}: one row of {d:,} values takes {d * 8 / 2**20:,.1f} MiB as float64, more than "
            f"the {budget // _READ_SHARE / 2**20:,.1f} MiB one read may take under a memory budget of "
            f"{budget / 2**20:,.0f} MiB; is it the right file? (--memory {d * 8 * _READ_SHARE / 2**30:,.1f}GiB "
            "would admit it)"
        )


def _read_exactly(f: io.BufferedIOBase, out: np.ndarray, path: Path) -> None:
    """Fill ``out`` (any dtype, C-contiguous) from ``f``'s position; refuse a short file."""
    view = memoryview(cast("Buffer", out)).cast("B")
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise InputError(f"{path}: truncated at byte {f.tell()}: the file is shorter than when it was opened.")
        done += n


def _npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from an npy header (numpy caps its size); ``f`` is left at the data."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise InputError(f"{name} has object dtype (a pickle inside the .npy); only numbers are read.")
    return shape, fortran, dtype


class _NpySource:
    """A ``.npy`` file, read block by block with plain reads: never loaded whole, never unpickled, and
    never memory-mapped (the pages of a mapping stay in the process's resident size once read)."""

    def __init__(self, path: Path, budget: int) -> None:
        self.path = path
        with open(path, "rb") as f:
            shape, self._fortran, self.dtype = _npy_header(f, str(path))
            self._offset = f.tell()
        self.shape = _check_2d_numeric(path, shape, self.dtype)
        needed = self._offset + self.shape[0] * self.shape[1] * self.dtype.itemsize
        size = path.stat().st_size
        if size < needed:
            raise InputError(f"{path}: truncated: its header declares shape {self.shape} ({needed:,} bytes) "
                             f"but the file has {size:,} bytes; export it again.")

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        n, d = self.shape
        itemsize = self.dtype.itemsize
        out = np.empty((stop - start, d), self.dtype)
        with open(self.path, "rb") as f:
            if not self._fortran:
                f.seek(self._offset + start * d * itemsize)
                _read_exactly(f, out, self.path)
                return out
            column = np.empty(stop - start, self.dtype)
            for j in range(d):  # column j is stored at rows j*n .. j*n+n-1 of the flat buffer
                f.seek(self._offset + (j * n + start) * itemsize)
                _read_exactly(f, column, self.path)
                out[:, j] = column
        return out


def _rows_per_read(budget: int, row_bytes: int) -> int:
    """Rows one read of a reader yields: ``budget / _READ_SHARE`` bytes of them, at least one row."""
    return max(1, budget // _READ_SHARE // max(1, row_bytes))


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
        """Rows ``start:stop`` copied into one array as the reads come (never a list of parts and
        their concatenation: the rows asked for are held once, plus the read in progress)."""
        if not hasattr(self, "_it") or start < self._pos:
            self._it, self._pos, self._buf = self._chunks(), 0, np.empty((0, self.shape[1]), self.dtype)
        out = np.empty((max(0, stop - max(start, self._pos)), self.shape[1]), self.dtype)
        filled = 0
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
                out[filled : filled + take - take_from] = self._buf[take_from:take]
                filled += take - take_from
            self._buf = self._buf[take:]
            self._pos += take
        return out[:filled]


class _NpzSource(_SequentialSource):
    """One member of a ``.npz`` archive, streamed through its (de)compressor: its npy header first,
    then blocks of rows; the member is never inflated whole."""

    def __init__(self, path: Path, key: str | None, budget: int) -> None:
        self.path = path
        self._budget = budget
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
            declared = zf.getinfo(key + ".npy").file_size
            with zf.open(key + ".npy") as f:
                shape, fortran, dtype = _npy_header(f, f"{path}:{key}")
                header_bytes = f.tell()
        if fortran:
            raise InputError(
                f"{path}:{key} is stored in Fortran order, which cannot be streamed from an .npz; "
                "save it with np.save (.npy) instead."
            )
        self.dtype = dtype
        self.shape = _check_2d_numeric(path, shape, dtype)
        needed = header_bytes + self.shape[0] * self.shape[1] * dtype.itemsize
        if declared < needed:
            raise InputError(f"{path}:{key} is truncated: its header declares shape {self.shape} "
                             f"({needed:,} bytes) but the member holds {declared:,}; export it again.")

    def _chunks(self) -> Iterator[np.ndarray]:
        row_bytes = self.shape[1] * self.dtype.itemsize
        rows = _rows_per_read(self._budget, self.shape[1] * 8)
        with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as f:
            _npy_header(f, f"{self.path}:{self.key}")
            remaining = self.shape[0]
            while remaining:
                n = min(rows, remaining)
                raw = f.read(n * row_bytes)
                if len(raw) != n * row_bytes:
                    raise InputError(f"{self.path}:{self.key} is truncated.")
                yield np.frombuffer(raw, self.dtype).reshape(n, self.shape[1])
                remaining -= n


_BOM = b"\xef\xbb\xbf"


def _parse_numbers(text: bytes, delimiter: str | None) -> np.ndarray:
    """``(lines, values)`` float64 of CSV lines of numbers (numpy's C parser: one array, no per-column
    objects); blank lines are skipped.  Raises ValueError on a cell that is not a number or a line of
    another length."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
        return np.loadtxt(io.BytesIO(text), dtype=np.float64, delimiter=delimiter, comments=None,
                          quotechar='"', ndmin=2)


def _count_fields(line: bytes, delimiter: str | None) -> int:
    """Fields of one header line: separators outside double quotes plus one, or runs of non-blanks."""
    buf = np.frombuffer(line, np.uint8)
    if delimiter is None:
        word = ~np.isin(buf, np.frombuffer(b" \t\r\f\v", np.uint8))
        return int(np.count_nonzero(word[1:] & ~word[:-1]) + bool(word[:1].any()))
    quoted = np.cumsum(buf == ord('"'), dtype=np.uint8) % 2 == 1  # parity survives the uint8 wrap-around
    return int(np.count_nonzero((buf == ord(delimiter)) & ~quoted)) + 1


class _CsvSource(_SequentialSource):
    """A CSV/TXT of numbers, one row per image (an optional header line is skipped).

    The file is walked once in 1 MiB reads at open (:func:`~streamclust.io.lines.scan_lines`:
    rows counted, a line longer than the budget admits refused by number), then parsed in blocks of
    whole lines of about ``budget / 128`` bytes by numpy's C parser, which builds one array per block
    (pandas builds an object per column: 600 MB for one line of 250,000 values).
    """

    def __init__(self, path: Path, budget: int) -> None:
        self.path = path
        scan = scan_lines(path, budget)
        self._block_bytes = line_limit(budget) + 1
        if not scan.head:
            raise InputError(f"{path}: the file holds no rows.")
        line_no, start, stop = scan.head[0]
        first = read_span(path, start, stop)
        if start == 0 and first.startswith(_BOM):
            first, start = first[len(_BOM):], len(_BOM)
        self._delimiter = "," if b"," in first else (";" if b";" in first else None)
        try:
            values = _parse_numbers(first, self._delimiter)[0]
            # pandas' to_csv writes column names 0..d-1 as a header line
            header = len(values) > 1 and np.array_equal(values, np.arange(len(values)))
            d = len(values)
        except (ValueError, IndexError):
            header, d = True, _count_fields(first, self._delimiter)
        # the data starts after the header line, or at the first line (after a byte-order mark)
        self._start, self._start_line = (stop + 1, line_no + 1) if header else (start, line_no)
        self.dtype = np.dtype("float64")
        self.shape = _check_2d_numeric(path, (scan.n_data_lines - int(header), d), self.dtype)

    def _chunks(self) -> Iterator[np.ndarray]:
        with open(self.path, "rb") as f:
            f.seek(self._start)
            line_no, rest = self._start_line, b""
            while True:
                chunk = f.read(self._block_bytes)
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                if chunk and cut == 0 and len(data) >= self._block_bytes:
                    raise InputError(f"{self.path}: line {line_no:,} grew longer than {self._block_bytes - 1:,} "
                                     "bytes since the file was opened.")
                block, rest = data[:cut], data[cut:]  # no newline yet: the last line, read on
                if block:
                    yield self._parse(block, line_no)
                    line_no += block.count(b"\n")
                if not chunk:
                    return

    def _parse(self, block: bytes, line_no: int) -> np.ndarray:
        """The rows of ``block`` (whole lines, the first numbered ``line_no``)."""
        try:
            rows = _parse_numbers(block, self._delimiter)
        except ValueError:
            raise self._bad_line(block, line_no) from None
        if rows.shape[1] != self.shape[1] and len(rows):
            raise self._bad_line(block, line_no)
        return rows.reshape(len(rows), self.shape[1])

    def _fails(self, text: bytes) -> bool:
        """Whether ``text`` (whole lines) is not rows of ``d`` numbers."""
        try:
            rows = _parse_numbers(text, self._delimiter)
        except ValueError:
            return True
        return bool(len(rows)) and rows.shape[1] != self.shape[1]

    def _bad_line(self, block: bytes, line_no: int) -> InputError:
        """The error naming the first line of ``block`` that is not a row of ``d`` numbers, found by
        halving the block (about 2 log2(lines) parses, never one per line)."""
        d = self.shape[1]
        while block.count(b"\n") > (0 if block.endswith(b"\n") else -1) + 1:  # more than one line
            cut = block.rfind(b"\n", 0, len(block) // 2) + 1 or block.find(b"\n") + 1  # a line end near the middle
            if self._fails(block[:cut]):
                block = block[:cut]
            else:
                line_no += block.count(b"\n", 0, cut)
                block = block[cut:]
        try:
            values = _parse_numbers(block, self._delimiter)
        except ValueError as exc:
            return InputError(f"{self.path}: line {line_no:,} is not a row of {d} numbers "
                              f"({str(exc).replace('at row 0, ', 'at ')}).")
        return InputError(f"{self.path}: line {line_no:,} has {values.shape[1] if len(values) else 0} values, "
                          f"expected {d}.")


def check_parquet_footer(path: Path, budget: int) -> None:
    """Refuse a Parquet file whose footer (its metadata, which pyarrow reads and decodes whole) declares
    more than ``budget / 128`` bytes (8 MiB at the 1 GiB default; a real footer takes kilobytes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 8))
        tail = f.read(8)
    declared, limit = int.from_bytes(tail[:4], "little"), budget // 128
    if len(tail) == 8 and tail[4:] == b"PAR1" and declared > limit:
        raise InputError(f"{path}: its Parquet metadata declares {declared:,} bytes, more than the {limit:,} a "
                         f"memory budget of {budget / 2**20:,.0f} MiB admits; is it the right file?")


class _ThriftCompact:
    """Just enough of Thrift's compact protocol to read the sizes in a Parquet page header."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _byte(self) -> int:
        value = self.data[self.pos]  # IndexError past the end: the header is malformed
        self.pos += 1
        return value

    def _varint(self) -> int:
        value = shift = 0
        while True:
            b = self._byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("varint longer than 64 bits")

    def _zigzag(self) -> int:
        v = self._varint()
        return (v >> 1) ^ -(v & 1)

    def _skip(self, kind: int, depth: int, in_collection: bool = False) -> None:
        if kind in (1, 2):  # a boolean: in the field header, or one byte in a collection
            self.pos += int(in_collection)
        elif kind == 3:
            self.pos += 1
        elif kind in (4, 5, 6):
            self._varint()
        elif kind == 7:
            self.pos += 8
        elif kind == 8:
            length = self._varint()  # read before the increment: ``pos += _varint()`` would add to the old pos
            self.pos += length
        elif kind in (9, 10):  # list, set
            head = self._byte()
            count = head >> 4 if head >> 4 != 15 else self._varint()
            for _ in range(count):
                self._skip(head & 0x0F, depth + 1, True)
        elif kind == 11:  # map
            count = self._varint()
            types = self._byte() if count else 0
            for _ in range(count):
                self._skip(types >> 4, depth + 1, True)
                self._skip(types & 0x0F, depth + 1, True)
        elif kind == 12:
            self.struct(depth=depth + 1)
        else:
            raise ValueError(f"unknown Thrift type {kind}")
        if self.pos > len(self.data):
            raise IndexError("past the end of the header")

    def struct(self, keep: tuple[int, ...] = (), depth: int = 0) -> dict[int, int]:
        """Read a struct; return its i32 fields whose ids are in ``keep``."""
        if depth > 32:
            raise ValueError("structs nested too deep")
        out: dict[int, int] = {}
        field_id = 0
        while True:
            head = self._byte()
            if head == 0:
                return out
            kind = head & 0x0F
            field_id = field_id + (head >> 4) if head >> 4 else self._zigzag()
            if kind == 5 and field_id in keep:
                out[field_id] = self._zigzag()
            else:
                self._skip(kind, depth)


#: Bytes read for one Parquet page header (statistics of a float column are a few dozen bytes).
_PAGE_HEADER_BYTES = 64 << 10


def _largest_page(f: BinaryIO, start: int, length: int) -> int:
    """The largest ``uncompressed_page_size`` of the pages of the column chunk at ``start`` (``length``
    bytes): what the Parquet reader allocates to decompress one page."""
    largest, pos, end = 0, start, start + length
    while pos < end:
        f.seek(pos)
        header = _ThriftCompact(f.read(_PAGE_HEADER_BYTES))
        sizes = header.struct(keep=(2, 3))  # PageHeader: 2 uncompressed_page_size, 3 compressed_page_size
        if 2 not in sizes or sizes.get(3, -1) < 0 or sizes[2] < 0:
            raise ValueError(f"page header at byte {pos} has no valid sizes")
        largest = max(largest, sizes[2])
        pos += header.pos + sizes[3]
    return largest


class _ParquetSource(_SequentialSource):
    """A Parquet file: its numeric columns (or one list column) form the rows.

    Read in batches of about ``budget / 32`` bytes with pages streamed (``buffer_size``, no
    ``pre_buffer``: otherwise pyarrow holds a whole row group).  At open, the footer's size and every
    page header of the columns read are checked: a page larger than a read may hold (a decompression
    bomb) is refused before pyarrow allocates it.
    """

    def __init__(self, path: Path, budget: int) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise InputError(
                f"{path}: reading Parquet needs pyarrow; pip install 'streamclust[parquet]'."
            ) from exc
        self.path = path
        self._budget = budget
        check_parquet_footer(path, budget)
        self._file = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        schema = self._file.schema_arrow
        numeric = [f.name for f in schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
        lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
        if numeric:
            self._columns, self._list = numeric, False
        elif len(lists) == 1:
            self._columns, self._list = lists, True
        else:
            raise InputError(f"{path}: no numeric columns and not exactly one list column ({schema.names}).")
        self._check_pages()
        n = self._file.metadata.num_rows
        if self._list:
            first = next(self._file.iter_batches(batch_size=1, columns=lists, use_threads=False), None)
            d = len(first.column(0)[0]) if first is not None and first.num_rows else 0
        else:
            d = len(numeric)
        self.dtype = np.dtype("float64")
        self.shape = _check_2d_numeric(path, (n, d), self.dtype)

    def _check_pages(self) -> None:
        """Refuse a page of the columns read whose decompressed size exceeds ``budget / 32``."""
        meta = self._file.metadata
        limit = self._budget // _READ_SHARE
        wanted = self._columns
        with open(self.path, "rb") as f:
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                for j in range(group.num_columns):
                    chunk = group.column(j)
                    if not any(chunk.path_in_schema == name or chunk.path_in_schema.startswith(name + ".")
                               for name in wanted):
                        continue
                    starts = [o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o]
                    try:
                        largest = _largest_page(f, min(starts), chunk.total_compressed_size)
                    except (ValueError, IndexError) as exc:
                        raise InputError(f"{self.path}: row group {g}, column {chunk.path_in_schema!r}: "
                                         f"malformed page header ({exc}); export it again.") from None
                    if largest > limit:
                        raise InputError(
                            f"{self.path}: row group {g}, column {chunk.path_in_schema!r} has a page of "
                            f"{largest:,} bytes once decompressed, more than the {limit:,} a memory budget "
                            f"of {self._budget / 2**20:,.0f} MiB admits for one read; write it with smaller "
                            "pages (pyarrow: data_page_size) or give a larger --memory.")

    def _chunks(self) -> Iterator[np.ndarray]:
        rows = _rows_per_read(self._budget, self.shape[1] * 8)
        for batch in self._file.iter_batches(batch_size=rows, columns=self._columns, use_threads=False):
            if self._list:
                flat = batch.column(0).flatten().to_numpy(zero_copy_only=False)
                if flat.size != batch.num_rows * self.shape[1]:
                    raise InputError(f"{self.path}: list column rows have different lengths.")
                yield flat.reshape(batch.num_rows, self.shape[1]).astype(np.float64)
            else:
                yield np.column_stack(
                    [batch.column(i).to_numpy(zero_copy_only=False) for i in range(batch.num_columns)]
                ).astype(np.float64)


def open_source(spec: str | os.PathLike[str], *, allow_restricted_pickle: bool = False,
                memory: str | int | None = None) -> ArraySource:
    """Open a raw descriptor file by extension.

    Parameters
    ----------
    spec : path
        The file; ``archive.npz:key`` names one member of an ``.npz``.
    allow_restricted_pickle : bool
        Admit pickles that are not a plain ndarray (a DataFrame, a list of
        arrays) through a loader restricted to numpy and pandas classes.  Such
        pickles are loaded into memory whole.
    memory : str or int, optional
        Memory budget (default 1 GiB, see :func:`~streamclust.core.blocks.parse_memory`): it bounds
        the reader's own buffers, the longest CSV line and the widest row admitted.

    Returns
    -------
    ArraySource
        ``shape`` (n, d), ``dtype`` and ``read_rows(start, stop)``.

    Raises
    ------
    InputError
        The file is missing, malformed or of an unknown format, or one of its rows (a CSV line, a
        Parquet page) is larger than the budget admits.
    """
    budget = parse_memory(memory)
    text = os.fspath(spec)
    key = None
    if ".npz:" in text:
        text, key = text.split(".npz:", 1)
        text += ".npz"
    path = Path(text)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    source: ArraySource
    if suffix in _PICKLE_SUFFIXES:  # its own errors name the offending opcode or byte
        source = open_pickled_array(path, allow_restricted=allow_restricted_pickle)
    elif suffix in READERS:
        try:
            source = READERS[suffix](path, key, budget)
        except InputError:
            raise
        except _FORMAT_ERRORS as exc:
            raise _unreadable(path, exc) from exc
    else:
        raise InputError(
            f"{path}: unknown descriptor format {suffix!r}; use one of {', '.join(DESCRIPTOR_SUFFIXES)}."
        )
    _check_row_fits(source, budget)
    return source


_PICKLE_SUFFIXES = (".pickle", ".pkl")

#: Reader per file suffix: ``reader(path, key, budget) -> ArraySource``, ``key`` the member an
#: ``archive.npz:key`` names (None otherwise), ``budget`` the memory budget in bytes.  Pickles are
#: read by :mod:`streamclust.io.pickle_stream`.
READERS: dict[str, Callable[[Path, str | None, int], ArraySource]] = {
    ".npy": lambda path, key, budget: _NpySource(path, budget),
    ".npz": lambda path, key, budget: _NpzSource(path, key, budget),
    ".csv": lambda path, key, budget: _CsvSource(path, budget),
    ".txt": lambda path, key, budget: _CsvSource(path, budget),
    ".parquet": lambda path, key, budget: _ParquetSource(path, budget),
}

#: Every suffix :func:`open_source` reads.
DESCRIPTOR_SUFFIXES = (*_PICKLE_SUFFIXES, *READERS)
