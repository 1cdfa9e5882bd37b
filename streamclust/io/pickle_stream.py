"""Pickled numpy arrays, read without unpickling and written without buffering.

Users hand over descriptor sets as one pickled 2-D ``ndarray`` per file (made
with ``pickle.dump(arr, f)`` at protocol 2 to 5, by numpy 1.x or 2.x).  Such a
file can hold gigabytes, and ``pickle.load`` would both load all of it and run
whatever code the file names.  This module does neither.

Format
------
A pickle is a program for a small stack machine.  numpy pickles an array with
one of two recipes:

* protocols 2 to 4, and protocol 5 for arrays that are not contiguous::

      _reconstruct(ndarray, (0,), b'b').__setstate__(
          (1, shape, dtype, is_fortran, data))

  where ``data`` is the raw buffer (``BINBYTES``/``BINBYTES8`` from protocol 3
  on) or, at protocol 2, ``_codecs.encode(text, 'latin1')`` with ``text`` the
  buffer's bytes as latin-1 code points, stored as UTF-8 (so one byte of the
  array takes one or two bytes of the file);
* protocol 5 for contiguous arrays::

      _frombuffer(buffer, dtype, shape, order)

  where ``buffer`` is an in-band ``BYTEARRAY8`` (or ``BINBYTES`` for a
  read-only array).

``dtype`` is itself ``numpy.dtype(name, False, True)`` followed by a ``BUILD``
with the state tuple ``(3, byteorder, None, None, None, -1, -1, 0)``.

Security model
--------------
:func:`open_pickled_array` never executes the pickle.  It walks the opcodes
with a symbolic stack machine that knows only the opcodes and the handful of
callables numpy's recipes use (``_reconstruct``, ``_frombuffer``,
``numpy.ndarray``, ``numpy.dtype``, ``_codecs.encode`` and ``builtins.bytes``
for the empty buffer of protocol 2), evaluates them symbolically, and records
where the array buffer lies in the file; it seeks past the buffer instead of
reading it.  Any other global, container, opcode or dtype raises
:class:`~streamclust.errors.UnsafePickleError`; a malformed or truncated file
raises :class:`~streamclust.errors.InputError`.  No declared size is used to
allocate memory: every length is checked against the file size first, and the
rows are read on demand with :meth:`PickledArray.read_rows`.

``open_pickled_array(path, allow_restricted=True)`` additionally accepts
pickles that are not a plain array (a pandas ``DataFrame`` of numbers, a list
of equal-length 1-D arrays).  Those are loaded, **whole and into memory**, by
pickle's pure-Python unpickler whose ``find_class`` admits only an explicit
list of numpy and pandas constructors (plus pyarrow's, rebuilt and validated,
for pandas' string labels); it refuses ``os``, ``subprocess``,
``builtins.eval`` and every other global.  It also checks the states of numpy
dtypes before numpy sees them (numpy crashes on some malformed ones) and caps
every read at the file size.  It does run the admitted constructors on the
file's data, so it is for files from sources you trust; it is not a sandbox.

:func:`write_pickled_array` writes such a file from row blocks, so that
``pickle.load`` returns the array: its bytes equal those of
``pickle.dumps(arr, protocol)`` under the running numpy, frames included.
"""

from __future__ import annotations

import codecs
import io
import operator
import os
import pathlib
import pickle
import pickletools
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Literal, TypeGuard, cast

import numpy as np
from numpy.typing import DTypeLike

from streamclust.errors import InputError, UnsafePickleError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    # numpy's stubs type ``__reduce__()`` as ``str | tuple[Any, ...]``; for a dtype and an
    # ndarray it is always the tuple of these recipes.
    #: ``numpy.dtype.__reduce__()``: ``(numpy.dtype, (name, False, True), state)``.
    _DtypeReduce = tuple[type, tuple[str, bool, bool], tuple[int | str | bool | None, ...]]
    #: ``ndarray.__reduce__()``: ``(_reconstruct, (ndarray, (0,), b'b'), state)``.
    _ArrayReduce = tuple[Callable[..., Any], tuple[type, tuple[int], bytes], tuple[Any, ...]]

__all__ = [
    "PickledArray",
    "open_pickled_array",
    "write_pickled_array",
]

# Pickle opcodes used by the writer and the reader (see :mod:`pickletools`).
_PROTO = 0x80
_FRAME = 0x95
_STOP = ord(".")
_MARK = ord("(")
_TUPLE = ord("t")
_TUPLE1 = 0x85
_TUPLE2 = 0x86
_TUPLE3 = 0x87
_EMPTY_TUPLE = ord(")")
_NONE = ord("N")
_NEWTRUE = 0x88
_NEWFALSE = 0x89
_BININT = ord("J")
_BININT1 = ord("K")
_BININT2 = ord("M")
_LONG1 = 0x8A
_SHORT_BINUNICODE = 0x8C
_BINUNICODE = ord("X")
_BINUNICODE8 = 0x8D
_SHORT_BINBYTES = ord("C")
_BINBYTES = ord("B")
_BINBYTES8 = 0x8E
_BYTEARRAY8 = 0x96
_NEXT_BUFFER = 0x97
_GLOBAL = ord("c")
_STACK_GLOBAL = 0x93
_REDUCE = ord("R")
_BUILD = ord("b")
_MEMOIZE = 0x94
_BINPUT = ord("q")
_LONG_BINPUT = ord("r")
_BINGET = ord("h")
_LONG_BINGET = ord("j")

#: Pickle's framing constants (``_pickle.c``): a frame is committed once it
#: holds this many bytes, and payloads this large bypass frames.
_FRAME_SIZE_TARGET = 64 * 1024
#: Frames shorter than this are written without a ``FRAME`` header.
_FRAME_SIZE_MIN = 4

#: dtype kinds of numeric arrays: bool, signed and unsigned integers, floats.
_NUMERIC_KINDS = "biuf"
#: Names (as in ``numpy.dtype.__reduce__``) of the dtypes read and written.
_DTYPE_NAMES = frozenset(
    {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}
)


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------


class _Emitter:
    """Emit the opcodes pickle's C pickler writes for a known object tree.

    The output is a list of *pieces*: ``bytes`` for opcodes, an ``int`` for the
    (streamed) array payload of that many bytes, and ``None`` for the start of
    a ``save()`` call, where the C pickler commits a frame of at least
    ``_FRAME_SIZE_TARGET`` bytes.
    """

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.pieces: list[bytes | int | None] = []
        self._memo: dict[str, int] = {}
        self._n_memo = 0

    def _op(self, data: bytes) -> None:
        self.pieces.append(data)

    def begin_save(self) -> None:
        self.pieces.append(None)

    def memoize(self) -> None:
        if self.protocol >= 4:
            self._op(bytes([_MEMOIZE]))
        elif self._n_memo < 256:
            self._op(bytes([_BINPUT, self._n_memo]))
        else:
            self._op(bytes([_LONG_BINPUT]) + struct.pack("<I", self._n_memo))
        self._n_memo += 1

    def int_(self, value: int) -> None:
        self.begin_save()
        if 0 <= value < 0x100:
            self._op(bytes([_BININT1, value]))
        elif 0 <= value < 0x10000:
            self._op(bytes([_BININT2]) + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self._op(bytes([_BININT]) + struct.pack("<i", value))
        else:
            raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
            self._op(bytes([_LONG1, len(raw)]) + raw)

    def const(self, value: bool | None) -> None:
        self.begin_save()
        self._op(bytes([_NONE if value is None else _NEWTRUE if value else _NEWFALSE]))

    def str_(self, value: str) -> None:
        self.begin_save()
        if value in self._memo:
            index = self._memo[value]
            if index < 256:
                self._op(bytes([_BINGET, index]))
            else:
                self._op(bytes([_LONG_BINGET]) + struct.pack("<I", index))
        else:
            raw = value.encode("utf-8")
            if self.protocol >= 4 and len(raw) < 256:
                self._op(bytes([_SHORT_BINUNICODE, len(raw)]) + raw)
            else:
                self._op(bytes([_BINUNICODE]) + struct.pack("<I", len(raw)) + raw)
            self._memo[value] = self._n_memo
            self.memoize()

    def small_bytes(self, value: bytes) -> None:
        self.begin_save()
        self._op(bytes([_SHORT_BINBYTES, len(value)]) + value)
        self.memoize()

    def payload(self, nbytes: int) -> None:
        """The array buffer, written as pickle writes a bytes/bytearray."""
        self.begin_save()
        if self.protocol >= 5:
            header = bytes([_BYTEARRAY8]) + struct.pack("<Q", nbytes)
        elif nbytes < 256:
            header = bytes([_SHORT_BINBYTES, nbytes])
        elif nbytes < 2**32:
            header = bytes([_BINBYTES]) + struct.pack("<I", nbytes)
        else:
            header = bytes([_BINBYTES8]) + struct.pack("<Q", nbytes)
        self._op(header)
        self.pieces.append(nbytes)
        self.memoize()

    def global_(self, module: str, name: str) -> None:
        self.begin_save()
        if self.protocol >= 4:
            self.str_(module)
            self.str_(name)
            self._op(bytes([_STACK_GLOBAL]))
        else:
            self._op(bytes([_GLOBAL]) + f"{module}\n{name}\n".encode("ascii"))
        self.memoize()

    def tuple_begin(self, length: int) -> bool:
        """Open a tuple of `length` items; returns whether it uses ``MARK``."""
        self.begin_save()
        marked = length > 3
        if marked:
            self._op(bytes([_MARK]))
        return marked

    def tuple_end(self, length: int, *, marked: bool) -> None:
        """Close a tuple whose items were saved after :meth:`tuple_begin`."""
        if marked:
            self._op(bytes([_TUPLE]))
        else:
            self._op(bytes([(_TUPLE1, _TUPLE2, _TUPLE3)[length - 1]]))
        self.memoize()

    def proto(self) -> None:
        self._op(bytes([_PROTO, self.protocol]))

    def raw(self, opcode: int) -> None:
        self._op(bytes([opcode]))


def _qualified(obj: object) -> tuple[str, str]:
    return obj.__module__, obj.__qualname__  # type: ignore[attr-defined]


def _emit_small_tuple(em: _Emitter, items: tuple[int | str | bool | None, ...]) -> None:
    """Save a tuple of ints, strs, bools and Nones the way pickle does."""
    marked = em.tuple_begin(len(items))
    for item in items:
        if isinstance(item, bool) or item is None:
            em.const(item)
        elif isinstance(item, int):
            em.int_(item)
        else:
            em.str_(item)
    em.tuple_end(len(items), marked=marked)


def _emit_dtype(em: _Emitter, dtype: np.dtype) -> None:
    cls, args, state = cast("_DtypeReduce", dtype.__reduce__())
    em.begin_save()
    em.global_(*_qualified(cls))
    _emit_small_tuple(em, args)
    em.raw(_REDUCE)
    em.memoize()
    _emit_small_tuple(em, state)
    em.raw(_BUILD)


def _array_pieces(
    shape: tuple[int, int], dtype: np.dtype, fortran_order: bool, protocol: int
) -> list[bytes | int | None]:
    """Opcode pieces of ``pickle.dumps(arr, protocol)`` for such an array."""
    nbytes = shape[0] * shape[1] * dtype.itemsize
    em = _Emitter(protocol)
    em.proto()
    em.begin_save()
    if protocol >= 5:
        frombuffer = np.zeros((1, 1), dtype).__reduce_ex__(5)[0]
        em.global_(*_qualified(frombuffer))
        marked = em.tuple_begin(4)
        em.payload(nbytes)
        _emit_dtype(em, dtype)
        _emit_small_tuple(em, shape)
        em.str_("F" if fortran_order else "C")
        em.tuple_end(4, marked=marked)
        em.raw(_REDUCE)
        em.memoize()
    else:
        reconstruct, (subtype, _, placeholder), _ = cast("_ArrayReduce", np.zeros((1, 1), dtype).__reduce__())
        em.global_(*_qualified(reconstruct))
        marked = em.tuple_begin(3)
        em.global_(*_qualified(subtype))
        _emit_small_tuple(em, (0,))
        em.small_bytes(placeholder)
        em.tuple_end(3, marked=marked)
        em.raw(_REDUCE)
        em.memoize()
        marked = em.tuple_begin(5)
        em.int_(1)
        _emit_small_tuple(em, shape)
        _emit_dtype(em, dtype)
        em.const(fortran_order)
        em.payload(nbytes)
        em.tuple_end(5, marked=marked)
        em.raw(_BUILD)
    em.raw(_STOP)
    return em.pieces


def _frame(pieces: list[bytes | int | None], protocol: int) -> list[bytes | int]:
    """Insert ``FRAME`` opcodes where the C pickler puts them (protocol >= 4).

    Returns bytes and payload lengths in file order.
    """
    if protocol < 4:
        return [p for p in pieces if p is not None]
    out: list[bytes | int] = [cast(bytes, pieces[0])]  # PROTO precedes the first frame
    frame: list[bytes | int] = []

    def size(parts: list[bytes | int]) -> int:
        return sum(p if isinstance(p, int) else len(p) for p in parts)

    def commit() -> None:
        n = size(frame)
        if n >= _FRAME_SIZE_MIN:
            out.append(bytes([_FRAME]) + struct.pack("<Q", n))
        out.extend(frame)
        frame.clear()

    for piece in pieces[1:]:
        if piece is None:
            if size(frame) >= _FRAME_SIZE_TARGET:
                commit()
        elif isinstance(piece, int) and piece >= _FRAME_SIZE_TARGET:
            # Large payload: commit, then header and data outside any frame.
            header = frame.pop()
            commit()
            out.append(header)
            out.append(piece)
        else:
            frame.append(piece)
    commit()
    return out


def _check_writable_dtype(dtype: np.dtype) -> None:
    if dtype.str[1:] not in _DTYPE_NAMES:
        raise InputError(
            f"cannot write dtype {dtype.str!r}: only bool, int8-int64, uint8-uint64 "
            "and float16-float64 are written"
        )


def write_pickled_array(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    dtype: DTypeLike,
    blocks: Iterable[np.ndarray],
    *,
    fortran_order: bool = False,
    protocol: int = 4,
) -> None:
    """Write a pickled 2-D array from row blocks, holding one block at a time.

    The file's bytes are those of ``pickle.dumps(arr, protocol)`` where ``arr``
    is the concatenation of `blocks`, so ``pickle.load`` returns ``arr``.  It
    is written to ``path + ".partial"`` and renamed to `path` once complete; on
    any error the partial file is removed.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    shape : tuple of int
        ``(n_rows, n_cols)`` of the whole array.
    dtype : dtype-like
        Bool, integer or float dtype of the array, byte order included.
    blocks : iterable of numpy.ndarray
        Row blocks of shape ``(rows_i, n_cols)`` and dtype `dtype`, in order;
        their ``rows_i`` sum to ``n_rows``.
    fortran_order : bool, default False
        Store the buffer column-major, as numpy pickles a Fortran-ordered
        array.  Each block is then written as ``n_cols`` pieces at their
        column offsets (the file is written out of order).
    protocol : {3, 4, 5}, default 4
        Pickle protocol.  Protocol 3 holds at most 4 GiB of data.

    Raises
    ------
    InputError
        If `shape`, `dtype` or `protocol` is not supported, or the blocks'
        shapes, dtypes or total row count disagree with `shape` and `dtype`.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise InputError(f"cannot write dtype {dtype!r}: {exc}") from None
    _check_writable_dtype(dtype)
    if protocol not in (3, 4, 5):
        raise InputError(f"cannot write pickle protocol {protocol!r}: use 3, 4 or 5")
    try:
        n_rows, n_cols = (operator.index(n) for n in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (n_rows, n_cols), got {shape!r}") from None
    if n_rows < 0 or n_cols < 0:
        raise InputError(f"shape must not be negative, got {shape!r}")
    shape = (n_rows, n_cols)
    nbytes = n_rows * n_cols * dtype.itemsize
    if protocol == 3 and nbytes >= 2**32:
        raise InputError(
            f"pickle protocol 3 cannot hold {nbytes} bytes (at most 4 GiB): use 4 or 5"
        )
    # numpy records an array that is both C- and F-contiguous as C-ordered;
    # its buffer is the same either way.
    fortran_order = bool(fortran_order) and n_rows > 1 and n_cols > 1
    layout = _frame(_array_pieces(shape, dtype, fortran_order, protocol), protocol)
    final = os.fspath(path)
    partial = final + ".partial"
    try:
        with open(partial, "wb") as f:
            for piece in layout:
                if isinstance(piece, bytes):
                    f.write(piece)
                else:
                    _write_payload(f, shape, dtype, blocks, fortran_order, final)
        os.replace(partial, final)
    except BaseException:
        try:
            os.remove(partial)
        except FileNotFoundError:
            pass
        raise


def _write_payload(
    f: BinaryIO,
    shape: tuple[int, int],
    dtype: np.dtype,
    blocks: Iterable[np.ndarray],
    fortran_order: bool,
    name: str,
) -> None:
    """Write the array buffer from `blocks` at the file's current position."""
    n_rows, n_cols = shape
    start = f.tell()
    done = 0
    for i, block in enumerate(blocks):
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != n_cols:
            raise InputError(
                f"{name}: block {i} has shape {block.shape}, expected (rows, {n_cols})"
            )
        if block.dtype != dtype:
            raise InputError(
                f"{name}: block {i} has dtype {block.dtype.str!r}, expected {dtype.str!r}"
            )
        if done + block.shape[0] > n_rows:
            raise InputError(
                f"{name}: blocks hold more than the {n_rows} rows of shape {shape}"
            )
        if fortran_order:
            columns = np.ascontiguousarray(block.T)
            for j in range(n_cols):
                f.seek(start + (j * n_rows + done) * dtype.itemsize)
                f.write(columns[j].data)
        else:
            f.write(np.ascontiguousarray(block).data)
        done += block.shape[0]
    if done != n_rows:
        raise InputError(f"{name}: blocks hold {done} rows, shape {shape} needs {n_rows}")
    f.seek(start + n_rows * n_cols * dtype.itemsize)


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------

#: Bytes read at a time when scanning or decoding protocol-2 text; the
#: protocol-2 row index keeps one checkpoint per chunk.
_CHUNK = 1 << 16
#: Strings and bytes up to this long are read while parsing; longer ones are
#: only located (offset and length) and skipped.
_MAX_INLINE = 256
#: numpy's recipes take about 60 opcodes; a longer program is not one of them.
_MAX_OPCODES = 10_000
#: Largest accepted dimension.
_MAX_DIM = 2**40

#: Globals the symbolic parser evaluates, and the role each plays.
_SAFE_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("builtins", "bytes"): "bytes",
    ("__builtin__", "bytes"): "bytes",
}

#: Globals the opt-in restricted loader admits (``allow_restricted=True``).
_RESTRICTED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        *_SAFE_GLOBALS,
        ("builtins", "slice"),
        ("__builtin__", "slice"),
        ("builtins", "bytearray"),
        ("__builtin__", "bytearray"),
        ("pandas", "DataFrame"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas", "Index"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas", "RangeIndex"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas", "StringDtype"),
        ("pandas.core.arrays.string_", "StringDtype"),
        ("pandas.arrays", "ArrowStringArray"),
        ("pandas.core.arrays.string_arrow", "ArrowStringArray"),
        # pandas >= 3 stores string labels in pyarrow arrays.
        ("pyarrow.lib", "_restore_array"),
        ("pyarrow.lib", "type_for_alias"),
        ("pyarrow.lib", "py_buffer"),
    }
)

_RESTRICTED_HINT = (
    "if the file comes from a source you trust, pass allow_restricted=True / "
    "--allow-restricted-pickle to load it with a loader restricted to numpy and "
    "pandas classes (it loads the whole file into memory)"
)

_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}

#: Opcodes that build containers or objects the restricted loader may handle.
_CONTAINER_OPCODES = frozenset(
    {"EMPTY_LIST", "LIST", "EMPTY_DICT", "DICT", "NEWOBJ", "NEWOBJ_EX"}
)


@dataclass(frozen=True)
class _Span:
    """A string (`text`) or bytes value located in the file; `value` if short."""

    offset: int
    length: int
    text: bool
    value: str | bytes | None


@dataclass(frozen=True)
class _Latin1:
    """``_codecs.encode(text, 'latin1')``: array bytes stored as UTF-8 text."""

    text: _Span


@dataclass(frozen=True)
class _Global:
    role: str
    label: str


@dataclass
class _Pending:
    """Result of ``numpy.dtype(...)`` or ``_reconstruct(...)`` awaiting BUILD."""

    kind: str  # "dtype" or "array"
    name: str = ""
    built: np.dtype | _ArrayInfo | None = None


@dataclass(frozen=True)
class _ArrayInfo:
    shape: tuple[int, int]
    dtype: np.dtype
    fortran_order: bool
    data: _Span | _Latin1


class _Mark:
    """The MARK sentinel on the symbolic stack."""


_MARK_OBJ = _Mark()


@dataclass(frozen=True)
class _RawSource:
    """The array buffer stored as is at ``offset`` in the file."""

    offset: int

    def read(self, f: io.BufferedIOBase, start: int, out: np.ndarray, name: str) -> None:
        """Fill `out` (uint8) with the buffer's bytes from `start` on."""
        f.seek(self.offset + start)
        view = memoryview(cast("Buffer", out))  # numpy's stubs declare ndarray.__buffer__ from Python 3.12
        done = 0
        while done < out.size:
            n = f.readinto(view[done:])
            if not n:
                raise InputError(
                    f"{name}: truncated at byte {self.offset + start + done}: the file "
                    "is shorter than when it was opened"
                )
            done += n


@dataclass(frozen=True, eq=False)
class _Latin1Source:
    """The array buffer stored as UTF-8 text of latin-1 code points (protocol 2).

    ``byte_marks[i]`` (relative to ``offset``) starts a character whose index
    in the text, i.e. array byte, is ``char_marks[i]``.
    """

    offset: int
    length: int
    byte_marks: np.ndarray
    char_marks: np.ndarray

    def read(self, f: BinaryIO, start: int, out: np.ndarray, name: str) -> None:
        """Fill `out` (uint8) with the buffer's bytes from `start` on."""
        i = int(np.searchsorted(self.char_marks, start, side="right")) - 1
        pos = int(self.byte_marks[i])
        char = int(self.char_marks[i])
        f.seek(self.offset + pos)
        decoder = codecs.getincrementaldecoder("utf-8")()
        done = 0
        try:
            while done < out.size:
                raw = f.read(min(_CHUNK, self.length - pos))
                if not raw:
                    raise InputError(
                        f"{name}: truncated at byte {self.offset + pos}: the file is "
                        "shorter than when it was opened"
                    )
                pos += len(raw)
                data = decoder.decode(raw, final=pos == self.length).encode("latin-1")
                skip = max(0, start + done - char)
                take = data[skip : skip + out.size - done]
                out[done : done + len(take)] = np.frombuffer(take, np.uint8)
                done += len(take)
                char += len(data)
        except UnicodeError as exc:
            raise InputError(
                f"{name}: protocol-2 array text changed since the file was opened: {exc}"
            ) from None


@dataclass(frozen=True, eq=False)
class _MemorySource:
    """An array loaded whole by the restricted loader."""

    array: np.ndarray


@dataclass(frozen=True, eq=False)
class PickledArray:
    """A pickled 2-D ndarray parsed without executing it; rows read on demand.

    Instances are made by :func:`open_pickled_array`.  They hold no open file
    (each :meth:`read_rows` opens the file), so they can be pickled and sent
    to Dask workers.

    Attributes
    ----------
    path : pathlib.Path
        The pickle file.
    shape : tuple of int
        ``(n_rows, n_cols)``.
    dtype : numpy.dtype
        The array's dtype, byte order included.
    fortran_order : bool
        Whether the buffer is stored column-major.
    data_offset : int or None
        Byte offset of the raw array buffer in the file; None when the buffer
        is not stored raw (protocol-2 text, or loaded by the restricted loader).
    protocol : int
        Pickle protocol of the file (0 if it has no ``PROTO`` opcode).
    storage : {"raw", "latin1-text", "memory"}
        How the rows are read: from the raw buffer, by decoding protocol 2's
        UTF-8 text, or from memory (restricted loader).
    """

    path: pathlib.Path
    shape: tuple[int, int]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int | None
    protocol: int
    _source: _RawSource | _Latin1Source | _MemorySource = field(repr=False)

    @property
    def storage(self) -> str:
        return {
            _RawSource: "raw",
            _Latin1Source: "latin1-text",
            _MemorySource: "memory",
        }[type(self._source)]

    def __len__(self) -> int:
        return self.shape[0]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Read rows ``start:stop``.

        Memory use is bounded by the result (plus one column of it for a
        Fortran-ordered file, and 64 KiB of text for protocol 2).

        Parameters
        ----------
        start, stop : int
            Row range, ``0 <= start <= stop <= len(self)``.

        Returns
        -------
        numpy.ndarray
            Shape ``(stop - start, n_cols)``, dtype :attr:`dtype`, a
            C-contiguous copy.

        Raises
        ------
        InputError
            If the range is outside the array, or the file was truncated or
            changed since it was opened.
        """
        start, stop = operator.index(start), operator.index(stop)
        n_rows, n_cols = self.shape
        if not 0 <= start <= stop <= n_rows:
            raise InputError(
                f"{self.path}: rows [{start}, {stop}) are outside its {n_rows} rows"
            )
        count = stop - start
        source = self._source
        if isinstance(source, _MemorySource):
            return np.array(source.array[start:stop], order="C", copy=True)
        itemsize = self.dtype.itemsize
        if count * n_cols == 0:
            return np.empty((count, n_cols), self.dtype)
        name = str(self.path)
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
        with f:
            if not self.fortran_order:
                out = np.empty(count * n_cols * itemsize, np.uint8)
                source.read(f, start * n_cols * itemsize, out, name)
                return out.view(self.dtype).reshape(count, n_cols)
            result = np.empty((count, n_cols), self.dtype)
            column = np.empty(count * itemsize, np.uint8)
            for j in range(n_cols):
                source.read(f, (j * n_rows + start) * itemsize, column, name)
                result[:, j] = column.view(self.dtype)
            return result


class _Parser:
    """Symbolic evaluation of a pickle that should hold a plain 2-D ndarray."""

    def __init__(self, f: BinaryIO, name: str, size: int) -> None:
        self.f = f
        self.name = name
        self.size = size
        self.pos = 0
        self.protocol = 0
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}

    # -- errors --------------------------------------------------------------

    def malformed(self, pos: int, reason: str) -> InputError:
        return InputError(f"{self.name}: not a valid pickle: {reason} at byte {pos}")

    def refuse(
        self, pos: int, what: str, *, hint: bool, why: str = "only plain numpy arrays are read"
    ) -> UnsafePickleError:
        msg = f"{self.name}: refuses {what} at byte {pos}: {why}"
        return UnsafePickleError(msg + (f"; {_RESTRICTED_HINT}" if hint else ""))

    # -- reading -------------------------------------------------------------

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise self.malformed(
                self.pos + len(data), f"file ends after {self.size} bytes (truncated)"
            )
        self.pos += n
        return data

    def read_uint(self, n: int) -> int:
        return int.from_bytes(self.read(n), "little")

    def span(self, length: int, text: bool) -> _Span:
        """Locate a string/bytes argument of `length` bytes; read it if short."""
        offset = self.pos
        if length > self.size - offset:
            raise self.malformed(
                offset,
                f"declares {length} bytes of data but only {self.size - offset} remain",
            )
        if length > _MAX_INLINE:
            self.f.seek(length, os.SEEK_CUR)
            self.pos += length
            return _Span(offset, length, text, None)
        raw = self.read(length)
        if not text:
            return _Span(offset, length, text, raw)
        try:
            return _Span(offset, length, text, raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise self.malformed(offset, "invalid UTF-8 in a string") from None

    def line(self) -> str:
        start = self.pos
        raw = self.f.readline(_MAX_INLINE)
        self.pos += len(raw)
        if not raw.endswith(b"\n"):
            raise self.malformed(start, "unterminated or overlong GLOBAL name")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.malformed(start, "invalid UTF-8 in a GLOBAL name") from None

    # -- stack ---------------------------------------------------------------

    def pop(self, pos: int) -> object:
        if not self.stack or self.stack[-1] is _MARK_OBJ:
            raise self.malformed(pos, "stack underflow")
        return self.stack.pop()

    def pop_mark(self, pos: int) -> tuple[object, ...]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK_OBJ:
                items = tuple(self.stack[i + 1 :])
                del self.stack[i:]
                return items
        raise self.malformed(pos, "TUPLE without MARK")

    def top(self, pos: int) -> object:
        if not self.stack or self.stack[-1] is _MARK_OBJ:
            raise self.malformed(pos, "stack underflow")
        return self.stack[-1]

    # -- main loop -----------------------------------------------------------

    def run(self) -> _ArrayInfo:
        if self.size == 0:
            raise InputError(f"{self.name}: empty file, not a pickle")
        for _ in range(_MAX_OPCODES):
            pos = self.pos
            code = self.read(1)[0]
            if code == _STOP:
                return self.result(pos)
            self.step(code, pos)
        raise self.refuse(
            self.pos, f"a program of more than {_MAX_OPCODES} opcodes", hint=True
        )

    def step(self, code: int, pos: int) -> None:
        push = self.stack.append
        if code == _PROTO:
            version = self.read(1)[0]
            if version > 5:
                raise self.malformed(pos, f"unsupported pickle protocol {version}")
            self.protocol = self.protocol or version
        elif code == _FRAME:
            length = self.read_uint(8)
            if length > self.size - self.pos:
                raise self.malformed(
                    pos, f"FRAME of {length} bytes with {self.size - self.pos} remaining"
                )
        elif code == _MARK:
            push(_MARK_OBJ)
        elif code == _TUPLE:
            push(self.pop_mark(pos))
        elif code == _EMPTY_TUPLE:
            push(())
        elif code in (_TUPLE1, _TUPLE2, _TUPLE3):
            n = code - _TUPLE1 + 1
            items = [self.pop(pos) for _ in range(n)]
            push(tuple(reversed(items)))
        elif code == _NONE:
            push(None)
        elif code == _NEWTRUE:
            push(True)
        elif code == _NEWFALSE:
            push(False)
        elif code == _BININT1:
            push(self.read_uint(1))
        elif code == _BININT2:
            push(self.read_uint(2))
        elif code == _BININT:
            push(int.from_bytes(self.read(4), "little", signed=True))
        elif code == _LONG1:
            n = self.read(1)[0]
            if n > 8:
                raise self.malformed(pos, f"LONG1 integer of {n} bytes is too large")
            push(int.from_bytes(self.read(n), "little", signed=True))
        elif code == _SHORT_BINUNICODE:
            push(self.span(self.read_uint(1), text=True))
        elif code == _BINUNICODE:
            push(self.span(self.read_uint(4), text=True))
        elif code == _BINUNICODE8:
            push(self.span(self.read_uint(8), text=True))
        elif code == _SHORT_BINBYTES:
            push(self.span(self.read_uint(1), text=False))
        elif code == _BINBYTES:
            push(self.span(self.read_uint(4), text=False))
        elif code in (_BINBYTES8, _BYTEARRAY8):
            push(self.span(self.read_uint(8), text=False))
        elif code == _NEXT_BUFFER:
            raise InputError(
                f"{self.name}: the array data is not in the file (pickle protocol 5 "
                f"out-of-band buffer, NEXT_BUFFER at byte {pos}); pickle it without "
                "buffer_callback"
            )
        elif code == _GLOBAL:
            module = self.line()
            push(self.resolve(module, self.line(), pos))
        elif code == _STACK_GLOBAL:
            name = self.short_str(self.pop(pos), pos, "STACK_GLOBAL name")
            module = self.short_str(self.pop(pos), pos, "STACK_GLOBAL module")
            push(self.resolve(module, name, pos))
        elif code == _REDUCE:
            args = self.pop(pos)
            push(self.call(self.pop(pos), args, pos))
        elif code == _BUILD:
            state = self.pop(pos)
            self.build(self.top(pos), state, pos)
        elif code == _MEMOIZE:
            self.memo[len(self.memo)] = self.top(pos)
        elif code in (_BINPUT, _LONG_BINPUT):
            self.memo[self.read_uint(1 if code == _BINPUT else 4)] = self.top(pos)
        elif code in (_BINGET, _LONG_BINGET):
            index = self.read_uint(1 if code == _BINGET else 4)
            if index not in self.memo:
                raise self.malformed(pos, f"memo entry {index} read before it is written")
            push(self.memo[index])
        elif code in _OPCODE_NAMES:
            name = _OPCODE_NAMES[code]
            raise self.refuse(pos, f"opcode {name}", hint=name in _CONTAINER_OPCODES)
        else:
            raise self.malformed(pos, f"unknown opcode byte 0x{code:02x}")

    # -- evaluation ----------------------------------------------------------

    def short_str(self, value: object, pos: int, what: str) -> str:
        if isinstance(value, _Span) and value.text and value.value is not None:
            return str(value.value)
        raise self.malformed(pos, f"{what} is {_describe(value)}, not a short string")

    def resolve(self, module: str, name: str, pos: int) -> _Global:
        label = f"{module} {name}"
        role = _SAFE_GLOBALS.get((module, name))
        if role is not None:
            return _Global(role, label)
        if (module, name) in _RESTRICTED_GLOBALS:
            raise self.refuse(pos, f"global {label!r}", hint=True)
        raise self.refuse(
            pos,
            f"global {label!r}",
            hint=False,
            why="only plain numpy arrays are read, and unpickling this file would "
            "import and call that global",
        )

    def call(self, func: object, args: object, pos: int) -> object:
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise self.malformed(pos, f"REDUCE of {_describe(func)} with {_describe(args)}")
        role = func.role
        if role == "reconstruct":
            if (
                len(args) == 3
                and isinstance(args[0], _Global)
                and args[0].role == "ndarray"
                and args[1] == (0,)
                and _is_placeholder(args[2])
            ):
                return _Pending("array")
        elif role == "frombuffer":
            if len(args) == 4 and _is_bytes(args[0]):
                order = args[3].value if _is_text(args[3]) else None
                if order in ("C", "F"):
                    dtype = self.built_dtype(args[1], pos)
                    return self.array(args[2], dtype, order == "F", args[0], pos)
        elif role == "dtype":
            if (
                len(args) == 3
                and _is_text(args[0])
                and args[0].value is not None
                and all(isinstance(a, bool) for a in args[1:])
            ):
                name = str(args[0].value)
                if name not in _DTYPE_NAMES:
                    kind = " (Python objects)" if name.startswith("O") else ""
                    raise self.refuse(
                        pos,
                        f"dtype {name!r}{kind}",
                        hint=False,
                        why="only arrays of bool, int8-int64, uint8-uint64 or "
                        "float16-float64 are read",
                    )
                return _Pending("dtype", name)
        elif role == "encode":
            if (
                len(args) == 2
                and _is_text(args[0])
                and _is_text(args[1])
                and args[1].value == "latin1"
            ):
                return _Latin1(args[0])
        elif role == "bytes" and args == ():
            return _Span(pos, 0, False, b"")
        raise self.refuse(
            pos, f"call of {func.label!r} with {_describe(args)} arguments", hint=False
        )

    def built_dtype(self, value: object, pos: int) -> np.dtype:
        if isinstance(value, _Pending) and isinstance(value.built, np.dtype):
            return value.built
        raise self.malformed(pos, f"expected a numpy dtype, got {_describe(value)}")

    def build(self, obj: object, state: object, pos: int) -> None:
        if not isinstance(obj, _Pending) or obj.built is not None:
            raise self.refuse(pos, f"BUILD of {_describe(obj)}", hint=False)
        if not isinstance(state, tuple):
            raise self.malformed(pos, f"BUILD state is {_describe(state)}, not a tuple")
        if obj.kind == "dtype":
            obj.built = self.dtype_state(obj.name, state, pos)
            return
        if len(state) != 5 or state[0] != 1 or not isinstance(state[3], bool):
            raise self.malformed(
                pos,
                f"ndarray state {_describe(state)} is not (1, shape, dtype, fortran, data)",
            )
        _, shape, dtype, fortran, data = state
        if isinstance(data, _Latin1) or _is_bytes(data):
            obj.built = self.array(shape, self.built_dtype(dtype, pos), fortran, data, pos)
            return
        raise self.refuse(pos, f"array data of {_describe(data)}", hint=True)

    def dtype_state(self, name: str, state: tuple[object, ...], pos: int) -> np.dtype:
        if len(state) != 8 or state[0] != 3 or state[2:] != (None, None, None, -1, -1, 0):
            raise self.refuse(
                pos,
                f"dtype {name!r} with state {_describe(state)}",
                hint=False,
                why="only plain numeric dtypes are read (no fields, subarray, "
                "metadata or flags)",
            )
        order = state[1].value if _is_text(state[1]) else None
        dtype = np.dtype(name)
        if order == "|" and dtype.itemsize == 1:
            return dtype
        if order in ("<", ">", "="):
            return dtype.newbyteorder(cast(Literal["<", ">", "="], order))
        raise self.malformed(pos, f"byte order {order!r} for dtype {name!r}")

    def array(
        self, shape: object, dtype: np.dtype, fortran: bool, data: _Span | _Latin1, pos: int
    ) -> _ArrayInfo:
        if not isinstance(shape, tuple) or not all(type(n) is int for n in shape):
            raise self.malformed(pos, f"array shape {_describe(shape)} is not a tuple of ints")
        if len(shape) != 2:
            raise InputError(
                f"{self.name}: expected a 2-D array, got shape {shape} at byte {pos}"
            )
        if not all(0 <= n <= _MAX_DIM for n in shape):
            raise self.malformed(pos, f"array shape {shape} has a negative or absurd dimension")
        nbytes = shape[0] * shape[1] * dtype.itemsize
        length = data.text.length if isinstance(data, _Latin1) else data.length
        # Protocol 2 text takes 1 or 2 bytes per array byte.
        low, high = (nbytes, 2 * nbytes) if isinstance(data, _Latin1) else (nbytes, nbytes)
        if not low <= length <= high:
            raise InputError(
                f"{self.name}: shape {shape} of dtype {dtype.str!r} needs {nbytes} bytes "
                f"but the pickled buffer holds {length} bytes (byte {pos})"
            )
        return _ArrayInfo(shape, dtype, fortran, data)

    def result(self, pos: int) -> _ArrayInfo:
        if len(self.stack) != 1 or self.stack[0] is _MARK_OBJ:
            raise self.malformed(pos, f"STOP with {len(self.stack)} items on the stack")
        value = self.stack[0]
        if isinstance(value, _Pending) and isinstance(value.built, _ArrayInfo):
            return value.built
        if isinstance(value, _ArrayInfo):
            return value
        raise self.refuse(
            pos, f"a top-level {_describe(value)} (not a numpy array)", hint=True
        )


def _is_text(value: object) -> TypeGuard[_Span]:
    return isinstance(value, _Span) and value.text


def _is_bytes(value: object) -> TypeGuard[_Span]:
    return isinstance(value, _Span) and not value.text


def _is_placeholder(value: object) -> bool:
    """Whether `value` is ``b'b'``, the dtype code numpy passes to _reconstruct."""
    if isinstance(value, _Latin1):
        return value.text.value == "b"
    return _is_bytes(value) and value.value == b"b"


def _describe(value: object) -> str:
    """Short description of a symbolic value for error messages."""
    if isinstance(value, tuple):
        items = ", ".join(_describe(v) for v in value[:8])
        return f"({items}, ...)" if len(value) > 8 else f"({items})"
    if isinstance(value, _Span):
        return repr(value.value) if value.value is not None else f"<{value.length} bytes>"
    if isinstance(value, _Global):
        return f"global {value.label!r}"
    if isinstance(value, _Pending):
        unfinished = " without its state" if value.built is None else ""
        return f"numpy {value.kind}{unfinished}"
    if isinstance(value, _Latin1):
        return f"<{value.text.length} bytes of latin-1 text>"
    if isinstance(value, _ArrayInfo):
        return "numpy array"
    return repr(value)


def _scan_latin1(
    f: BinaryIO, name: str, text: _Span, nbytes: int
) -> _Latin1Source:
    """Check protocol-2 array text and index it for random access."""
    f.seek(text.offset)
    decoder = codecs.getincrementaldecoder("utf-8")()
    byte_marks, char_marks = [0], [0]
    pos = chars = 0
    while pos < text.length:
        raw = f.read(min(_CHUNK, text.length - pos))
        if not raw:
            raise InputError(f"{name}: truncated at byte {text.offset + pos}")
        final = pos + len(raw) == text.length
        try:
            chars += len(decoder.decode(raw, final=final).encode("latin-1"))
        except UnicodeError:
            raise InputError(
                f"{name}: protocol-2 array text near byte {text.offset + pos} is not "
                "UTF-8 of latin-1 characters"
            ) from None
        pos += len(raw)
        if chars > nbytes:
            break
        byte_marks.append(pos - len(decoder.getstate()[0]))
        char_marks.append(chars)
    if chars != nbytes:
        raise InputError(
            f"{name}: the array needs {nbytes} bytes but its protocol-2 text at byte "
            f"{text.offset} decodes to {'more' if chars > nbytes else chars}"
        )
    return _Latin1Source(
        text.offset, text.length, np.array(byte_marks, np.int64), np.array(char_marks, np.int64)
    )


def _open_strict(path: pathlib.Path, name: str) -> PickledArray:
    with open(path, "rb") as f:
        parser = _Parser(f, name, os.fstat(f.fileno()).st_size)
        info = parser.run()
        data = info.data
        if isinstance(data, _Latin1):
            nbytes = info.shape[0] * info.shape[1] * info.dtype.itemsize
            source: _RawSource | _Latin1Source = _scan_latin1(f, name, data.text, nbytes)
            offset = None
        else:
            source = _RawSource(data.offset)
            offset = data.offset
    return PickledArray(
        path, info.shape, info.dtype, info.fortran_order, offset, parser.protocol, source
    )


class _BoundedReader:
    """File reads capped at the bytes left, so that a declared length cannot
    make :mod:`pickle` read more than the file holds."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.size = os.fstat(f.fileno()).st_size
        self._left = self.size

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self._f.readline(self._left if limit < 0 else min(limit, self._left))
        self._left -= len(data)
        return data


def _checked_dtype_state(dtype: np.dtype, state: object) -> bool:
    """Whether `state` is the BUILD state numpy writes for plain `dtype`."""
    byte_orders = ("|",) if dtype.itemsize == 1 or dtype.kind == "O" else ("<", ">", "=")
    return (
        dtype.str[1:] in _DTYPE_NAMES | {"O"}
        and isinstance(state, tuple)
        and len(state) == 8
        and state[0] == 3
        and state[1] in byte_orders
        and state[2:7] == (None, None, None, -1, -1)
        and state[7] == dtype.flags
    )


def _restore_string_array(data: tuple[object, ...]) -> object:
    """``pyarrow.lib._restore_array`` for the string arrays of pandas labels,
    rebuilt with :meth:`pyarrow.Array.from_buffers` and fully validated."""
    import pyarrow

    type_, length, null_count, offset, buffers, children, dictionary = data
    if type_ not in (pyarrow.string(), pyarrow.large_string()) or children or dictionary:
        raise ValueError(f"pyarrow array of type {type_} is not a string array")
    array = pyarrow.Array.from_buffers(type_, length, buffers, null_count, offset)
    array.validate(full=True)
    return array


class _RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that imports only the globals in ``_RESTRICTED_GLOBALS``.

    It is pickle's pure-Python unpickler, so that the states of numpy dtypes
    (which numpy does not fully check) and the lengths of ``BYTEARRAY8``
    buffers can be checked before they are used.
    """

    # Typed with Any: the entries below take this subclass, typeshed's take pickle.Unpickler.
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)

    # Attributes pickle._Unpickler.load() sets, which typeshed does not declare.
    stack: list[Any]
    read: Callable[[int], bytes]
    readinto: Callable[[bytearray], int]
    append: Callable[[Any], None]

    def __init__(self, file: _BoundedReader, name: str) -> None:
        super().__init__(file)
        self._name = name
        self._size = file.size

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _RESTRICTED_GLOBALS:
            raise UnsafePickleError(
                f"{self._name}: the restricted loader refuses global '{module} {name}': "
                "it admits only numpy and pandas array and DataFrame classes"
            )
        if (module, name) == ("pyarrow.lib", "_restore_array"):
            return _restore_string_array
        if module.startswith("numpy.core."):  # numpy 1.x names, without the warning
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)

    def persistent_load(self, pid: object) -> object:
        raise UnsafePickleError(
            f"{self._name}: the restricted loader refuses persistent id {pid!r}"
        )

    def load_build(self) -> None:
        if len(self.stack) >= 2 and isinstance(self.stack[-2], np.dtype):
            dtype, state = self.stack[-2], self.stack[-1]
            if not _checked_dtype_state(dtype, state):
                raise UnsafePickleError(
                    f"{self._name}: the restricted loader refuses dtype {dtype.str!r} "
                    f"with state {state!r}: not a plain numeric or object dtype"
                )
        super().load_build()  # type: ignore[misc]  # CPython's pickle._Unpickler method, not in typeshed

    dispatch[pickle.BUILD[0]] = load_build

    def load_bytearray8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._size:
            raise InputError(
                f"{self._name}: declares a buffer of {length} bytes in a file of "
                f"{self._size} bytes"
            )
        buffer = bytearray(length)
        self.readinto(buffer)
        self.append(buffer)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _restricted_to_array(obj: object, name: str) -> np.ndarray:
    """The 2-D numeric array held by a DataFrame, ndarray or list of rows."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(obj, pandas.DataFrame):
        array: np.ndarray = obj.to_numpy()
    elif isinstance(obj, np.ndarray):
        array = obj
    elif isinstance(obj, (list, tuple)):
        try:
            array = np.asarray(obj)
        except ValueError as exc:
            raise InputError(f"{name}: its list of arrays is not a 2-D array: {exc}") from None
    else:
        raise InputError(
            f"{name}: holds a {type(obj).__module__}.{type(obj).__qualname__}, not a 2-D "
            "array, DataFrame or list of 1-D arrays"
        )
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise InputError(f"{name}: holds {array.dtype} values, not numbers")
    if array.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array, got shape {array.shape}")
    return array


def _load_restricted(path: pathlib.Path, name: str) -> PickledArray:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        try:
            obj = _RestrictedUnpickler(_BoundedReader(f), name).load()
            array = _restricted_to_array(obj, name)
        except InputError:
            raise
        except Exception as exc:  # any failure of pickle, numpy or pandas on a bad file
            raise InputError(
                f"{name}: the restricted loader could not read it: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    return PickledArray(
        path,
        (array.shape[0], array.shape[1]),
        array.dtype,
        bool(array.flags.f_contiguous and not array.flags.c_contiguous),
        None,
        head[1] if len(head) == 2 and head[0] == _PROTO else 0,
        _MemorySource(array),
    )


def open_pickled_array(
    path: str | os.PathLike[str], *, allow_restricted: bool = False
) -> PickledArray:
    """Open a pickled 2-D numpy array without unpickling it.

    The opcodes are evaluated symbolically (see the module docstring); nothing
    is imported or called, and the array buffer is only located.  Rows are
    read later with :meth:`PickledArray.read_rows`.  Protocol-2 files store
    the buffer as text: it is checked and indexed here in one streaming pass.

    Parameters
    ----------
    path : str or os.PathLike
        Pickle file holding one array of shape ``(n_rows, n_cols)``.
    allow_restricted : bool, default False
        If the file is not a plain array pickle (a pandas DataFrame of numbers,
        a list of equal-length 1-D arrays, ...), load it with an unpickler that
        admits only numpy and pandas classes.  This loads the whole file into
        memory and runs those classes' constructors on its data: use it for
        files from sources you trust.

    Returns
    -------
    PickledArray
        Shape, dtype and layout of the array, and a row reader.

    Raises
    ------
    UnsafePickleError
        If the pickle names any other global, builds other objects or has a
        non-numeric dtype (an :class:`InputError`).
    InputError
        If the file is missing, empty, truncated or malformed, or the array is
        not 2-D or its buffer does not match its shape.
    """
    name = os.fspath(path)
    path = pathlib.Path(path)
    try:
        try:
            return _open_strict(path, name)
        except UnsafePickleError:
            if not allow_restricted:
                raise
        return _load_restricted(path, name)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
