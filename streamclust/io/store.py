"""The Zarr layout of a case: ids, descriptor sets, metadata and runs.

One Zarr v3 group per case::

    case.zarr/
      ids                      (n,) str      image paths, forward slashes, store order
      descriptors/<name>       (n, d) float32, chunked along rows only, compressed
      meta/<column>            (n,) str      optional per-image metadata
      runs/<run-id>/<set>/...  results of one study (reduced rows, labels, ...)

Every array carries ``dimension_names`` (rows are ``"image"``; the columns of ``descriptors/<name>``
are ``"<name>_feature"``, see :func:`run_dimension_names` for the runs), so xarray opens the store.
``ids`` are fixed-width UTF-32 strings (``<U{longest path}``, Zarr data type ``fixed_length_utf32``,
read with the plain ``bytes`` codec) unless the longest path exceeds :data:`MAX_FIXED_ID_CHARS`;
stores written before keep the variable-length ``string`` type and are read the same way.

The root carries consolidated metadata (every node's ``zarr.json`` in one document) for other
readers, rewritten whenever a write leaves the store finished: ids written, a descriptor set or a
conversion complete, a run complete or failed (:meth:`CaseStore.consolidate`).  streamclust itself
never reads it (groups are opened with ``use_consolidated=False``), so it always sees every node,
e.g. runs created since the last consolidation.

Every array carries provenance attributes (``source``, ``source_size``,
``source_sha256``, ``source_dtype``, ``created``, ``schema_version``,
``streamclust_version``).  Arrays being written carry ``status: "writing"``
and ``rows_written``; only arrays and runs whose status is ``"complete"`` are
listed, so an interrupted conversion or study never looks finished.  An
interrupted descriptor conversion is resumed from ``rows_written``.

Reading checks the store before any work (:class:`StoreError`, one line naming the store, the array
and what is wrong): the real ``zarr.json`` of every array read (never the consolidated copy) has sane
declared shapes, chunks of rows only (at least :data:`MIN_CHUNK_ROWS` rows for ``ids``, descriptor
sets and metadata columns, at most :data:`MAX_CHUNK_BYTES` decoded), a data type of its kind (real
float descriptors), codecs on :data:`READABLE_CODECS`, little-endian bytes, the default chunk keys
and numeric attributes that hold numbers; every descriptor set and metadata column has the rows of
``ids``; every chunk file of ``ids`` and of a descriptor set is present (one listing per array, so a
chunk an interrupted copy or upload left out is never read as zeros); a chunk that does not decode
is refused when read.  Set names are checked (:func:`check_set_name`) when a set is created and
when found in a store.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import itertools
import logging
import math
import os
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync

from streamclust import __version__
from streamclust.core.scheduler import active_client
from streamclust.core.urls import is_url
from streamclust.errors import InputError, StoreError, StreamclustError, one_line

__all__ = [
    "SCHEMA_VERSION",
    "MAX_FIXED_ID_CHARS",
    "MIN_CHUNK_ROWS",
    "MAX_CHUNK_BYTES",
    "READABLE_CODECS",
    "CaseStore",
    "RunGroup",
    "check_set_name",
    "set_name_problem",
    "chunk_rows_for",
    "disk_full_error",
    "now_iso",
    "run_dimension_names",
]

logger = logging.getLogger(__name__)

#: Version of the layout above; stores of another version are refused.
SCHEMA_VERSION = 1

#: Target size of one chunk; ~8 MiB chunks read fastest on the reference machine.
_CHUNK_BYTES = 8 << 20

_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")

#: Longest path (in characters) stored as fixed-width ``<U{n}`` ids: every row takes the width of the
#: longest, so one runaway field (e.g. an unbalanced quote in the CSV) would multiply the memory of every
#: read; longer ids keep zarr-python's variable-length ``string`` type.
MAX_FIXED_ID_CHARS = 1024

#: The dimension of the rows of every array of a store.
ROW_DIM = "image"

#: Fewest rows per chunk of ``ids``, a descriptor set or a metadata column (unless the array has fewer
#: rows): streamclust writes at least this many (:func:`chunk_rows_for`); a store declaring smaller
#: chunks is damaged or hostile, and its chunk grid would be a task graph of millions of tasks.
MIN_CHUNK_ROWS = 1024

#: Most bytes one decoded chunk of a store may take: zarr decodes whole chunks, so a declared chunk
#: shape bounds the memory of every read (streamclust writes chunks of about 8 MiB; a 1024-row chunk
#: of float32 holds up to 262,144 features within this bound).
MAX_CHUNK_BYTES = 1 << 30

#: Codecs of the arrays a store may use: those streamclust and zarr's defaults write (``bytes``,
#: little-endian, or ``vlen-utf8`` for variable-length strings, then ``blosc`` or ``zstd``) and two
#: more that only decode bytes (``gzip``, ``crc32c``).  Others (``transpose``, ``sharding_indexed``,
#: numcodecs filters) are refused: streamclust never writes them, and one added to a ``zarr.json``
#: would change how every value is read.
READABLE_CODECS = frozenset({"bytes", "vlen-utf8", "blosc", "zstd", "gzip", "crc32c"})

#: Most missing chunks a refusal names (it counts them all).
_SHOWN_CHUNKS = 5

#: Names a set (or any node of a store) may not take: zarr's metadata file, the current and parent folders.
_RESERVED_NAMES = frozenset({"zarr.json", ".", ".."})

#: The remedy of every damaged-store refusal.
_DAMAGED_FIX = ("the store is damaged (an interrupted copy or upload, or an edited zarr.json): copy it again "
                "from its source, or convert the case again into a new store")

#: Column dimensions of the 2-D run arrays that have a name of their own (others: ``<array>_dim1``).
_RUN_COLUMN_DIMS = {"reduced": "component", "umap": "umap_axis"}


@contextlib.contextmanager
def _quiet_zarr_format_warnings() -> Iterator[None]:
    """Silence zarr-python 3.1's warnings that the ``fixed_length_utf32`` data type and consolidated
    metadata have no Zarr v3 specification: both are registered zarr-extensions (the data type) or
    read by xarray and zarr-python alike (consolidated metadata), and a store warns on every write."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=zarr.errors.UnstableSpecificationWarning)
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                                category=zarr.errors.ZarrUserWarning)
        yield


def run_dimension_names(name: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    """The ``dimension_names`` of run array ``name`` (e.g. ``"osnet/reduced"``) of ``shape``.

    Rows are ``"image"``; the columns of ``reduced`` are ``"component"``, of ``umap``
    ``"umap_axis"``, of any other array ``"<array>_dim1"`` (``"<array>_dim2"``, ... beyond).
    """
    if not shape:
        raise ValueError(f"run array {name!r} has no dimension; run arrays have one row per image.")
    leaf = name.rstrip("/").rpartition("/")[2]
    if len(shape) == 2 and leaf in _RUN_COLUMN_DIMS:
        return ROW_DIM, _RUN_COLUMN_DIMS[leaf]
    return (ROW_DIM,) + tuple(f"{leaf}_dim{i}" for i in range(1, len(shape)))


def _checked_dims(name: str, shape: tuple[int, ...], dims: Iterable[str]) -> tuple[str, ...]:
    dims = tuple(dims)
    if len(dims) != len(shape) or not all(isinstance(d, str) and d for d in dims):
        raise ValueError(f"dimension_names={dims!r} for array {name!r} of shape {shape}: needs one "
                         "non-empty name per dimension.")
    return dims


def now_iso() -> str:
    """Current UTC time as an ISO-8601 string (seconds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def disk_full_error(exc: BaseException, path: str | os.PathLike[str], doing: str) -> StoreError | None:
    """The one-line error for a full disk or quota, or None when ``exc`` is something else.

    Parameters
    ----------
    exc : BaseException
        The error raised while writing.
    path : path
        What was being written (the file named by ``exc`` wins when it has one).
    doing : str
        What was being done, e.g. ``"writing descriptors/osnet rows 0-4096"``.
    """
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = exc.filename or path
    return StoreError(f"{where}: no space left on device while {doing}; free some space and run "
                      "the same command again.")


def _storage_options(path: str) -> dict[str, Any] | None:
    """fsspec options for a store URL: ``file://`` stores create their folders as zarr writes
    (``auto_mkdir``); other protocols take their defaults (credentials from the environment)."""
    if not is_url(path):
        return None
    return {"auto_mkdir": True} if path.startswith("file://") else {}


def chunk_rows_for(n_features: int, itemsize: int = 4) -> int:
    """Rows per chunk so one chunk holds about 8 MiB, a power of two in [1024, 65536]."""
    rows = max(1, _CHUNK_BYTES // max(1, n_features * itemsize))
    power = 1 << int(np.floor(np.log2(rows)))
    return int(min(max(power, 1024), 65536))


def _base_attrs() -> dict[str, Any]:
    return {
        "created": now_iso(),
        "schema_version": SCHEMA_VERSION,
        "streamclust_version": __version__,
    }


def set_name_problem(name: object) -> str | None:
    """What makes ``name`` unfit to name a descriptor set (a node of a store), or None.

    A name is a non-empty string of at most 255 characters without ``/``, ``\\`` or control
    characters (NUL included), that is not ``zarr.json``, ``.`` or ``..`` and does not start with
    ``__`` (reserved by Zarr v3) or ``.`` (hidden, or a Zarr v2 metadata file).
    """
    if not isinstance(name, str) or not name:
        return "is empty" if name == "" else f"is a {type(name).__name__}, not a string"
    if len(name) > 255:
        return f"has {len(name)} characters (at most 255)"
    if name in _RESERVED_NAMES or name.startswith(("__", ".")):
        return "is reserved (zarr.json, '.', '..', or a name starting with '.' or '__')"
    bad = [c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127]
    if bad:
        return f"holds {bad[0]!r} (path separators and control characters are refused)"
    return None


def check_set_name(name: object, what: str = "descriptor set") -> str:
    """``name`` when it may name a descriptor set (or another node, ``what``), else :class:`InputError`
    saying why (see :func:`set_name_problem`): the node would otherwise land in another folder of the
    store (``a/b``, ``..``), hide another node (``zarr.json``) or be invisible to its readers."""
    problem = set_name_problem(name)
    if problem is not None:
        hint = " (e.g. --descriptor NAME=FILE)" if what == "descriptor set" else ""
        raise InputError(f"{what} name {name!r} {problem}; give it another name{hint}.")
    return cast(str, name)


def _codec_name(codec: Any) -> str:
    return str(codec.to_dict().get("name", type(codec).__name__))


def _metadata_problem(arr: zarr.Array, *, ndim: int | None, kinds: str, min_chunk_rows: int) -> str | None:
    """What in the metadata of ``arr`` streamclust cannot read safely, or None.

    Parameters
    ----------
    arr : zarr.Array
        Opened from its own ``zarr.json``.
    ndim : int or None
        The dimensions it must have (None: any, at least one).
    kinds : str
        numpy dtype kinds it may hold (``"f"``: real float; ``"UT"``: strings; ...).
    min_chunk_rows : int
        Fewest rows per chunk unless the array has fewer rows.
    """
    meta = arr.metadata
    if not isinstance(meta, ArrayV3Metadata):
        return f"is a Zarr v{meta.zarr_format} array, expected v3"
    shape = tuple(meta.shape)
    if (ndim is not None and len(shape) != ndim) or not shape:
        return f"has shape {shape}, expected {ndim or 'at least 1'} dimension(s)"
    if not isinstance(meta.chunk_grid, RegularChunkGrid):
        return f"has a chunk grid of type {type(meta.chunk_grid).__name__}, expected 'regular'"
    chunks = tuple(meta.chunk_grid.chunk_shape)
    if len(chunks) != len(shape) or any(c < 1 for c in chunks) or chunks[1:] != shape[1:]:
        return f"declares chunks {chunks} for shape {shape}; streamclust chunks rows only (chunks[1:] == shape[1:])"
    if not min(shape[0], min_chunk_rows) <= chunks[0] <= max(1, shape[0]):
        return (f"declares chunks of {chunks[0]} rows for {shape[0]} rows; streamclust writes "
                f"between {min(shape[0], min_chunk_rows)} and {max(1, shape[0])}")
    dtype = arr.dtype
    if not isinstance(dtype, np.dtype) or dtype.kind not in kinds:
        return f"has data type {meta.data_type.to_json(zarr_format=3)!r}, expected numpy kind(s) {kinds!r}"
    if dtype.kind == "U" and dtype.itemsize // 4 > MAX_FIXED_ID_CHARS:
        return f"declares strings of {dtype.itemsize // 4} characters (at most {MAX_FIXED_ID_CHARS})"
    if dtype.kind not in "OT" and math.prod(chunks) * dtype.itemsize > MAX_CHUNK_BYTES:
        return (f"declares chunks {chunks} of {math.prod(chunks) * dtype.itemsize} bytes "
                f"(at most {MAX_CHUNK_BYTES})")
    encoding = meta.chunk_key_encoding
    if not isinstance(encoding, DefaultChunkKeyEncoding) or encoding.separator != "/":
        return f"has chunk key encoding {encoding.to_dict()}, expected the default with '/'"
    names = [_codec_name(c) for c in meta.codecs]
    refused = [n for n in names if n not in READABLE_CODECS]
    if refused:
        return f"uses codec(s) {refused}; readable: {sorted(READABLE_CODECS)}"
    if any(isinstance(c, BytesCodec) and c.endian is not None and c.endian.value != "little" for c in meta.codecs):
        return "declares big-endian bytes; streamclust writes little-endian"
    if meta.storage_transformers:
        return f"has storage transformers {list(meta.storage_transformers)}"
    return None


def _count_problem(attrs: Any, key: str, *, equal: int | None = None, at_most: int | None = None) -> str | None:
    """What is wrong with the numeric attribute ``attrs[key]`` (absent is fine), or None."""
    if key not in attrs:
        return None
    value = attrs[key]
    whole = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if whole and (equal is None or value == equal) and (at_most is None or value <= at_most):
        return None
    want = (str(equal) if equal is not None else
            f"an integer in [0, {at_most}]" if at_most is not None else "an integer >= 0")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"attribute {key}={shown} should be {want}"


@dataclass(frozen=False, repr=False)  # zarr's repr, which names the store and the array
class _CheckedArray(zarr.Array):
    """A zarr array of a checked store whose reads that fail (a chunk that does not decode to its
    declared shape, type or codecs) raise :class:`StoreError` naming the store and the array."""

    label: str = ""

    def __getitem__(self, selection: Any) -> Any:
        try:
            return super().__getitem__(selection)
        except (StreamclustError, IndexError, MemoryError):
            raise
        except Exception as exc:  # zarr's codecs raise several types for bytes that do not decode
            first = selection[0] if isinstance(selection, tuple) and selection else selection
            rows = (f"rows {first.start or 0}-{self.shape[0] if first.stop is None else first.stop}"
                    if isinstance(first, slice) else f"selection {first!r}")
            raise StoreError(f"{self.label}: {rows} cannot be read ({type(exc).__name__}: {one_line(exc)[:200]}); "
                             f"{_DAMAGED_FIX}.") from exc


def _log_replacing(reason: str) -> None:
    """Log that a conversion replaces a damaged set (``reason``, one line)."""
    logger.warning(f"{reason} Converting it again from the start.")


async def _collect(keys: AsyncIterator[str]) -> list[str]:
    return [key async for key in keys]


def _listing(where: str, keys: AsyncIterator[str]) -> list[str]:
    """The keys an async listing of a zarr store yields (``[]`` for a folder that is not there)."""
    try:
        return sync(_collect(keys))
    except FileNotFoundError:
        return []
    except Exception as exc:  # fsspec and zarr raise several types for a listing that fails
        raise StoreError(f"{where}: cannot list its files ({type(exc).__name__}: {one_line(exc)}).") from exc


def _open_node(group: zarr.Group, path: str, where: str) -> zarr.Array | zarr.Group | None:
    """Node ``path`` of ``group`` read from its own ``zarr.json``, or None when it has none.

    Raises
    ------
    StoreError
        Its ``zarr.json`` is not valid Zarr v3 metadata (zarr raises many types for that).
    """
    try:
        node = group[path]
    except KeyError:
        return None
    except Exception as exc:
        raise StoreError(f"{where}: its zarr.json cannot be read ({type(exc).__name__}: {one_line(exc)[:200]}); "
                         f"{_DAMAGED_FIX}.") from exc
    if not isinstance(node.metadata.attributes, dict):  # zarr leaves an array's unchecked
        raise StoreError(f"{where}: its zarr.json has attributes of type {type(node.metadata.attributes).__name__}, "
                         f"expected an object; {_DAMAGED_FIX}.")
    return node


def _open_array(group: zarr.Group, path: str, where: str) -> zarr.Array | None:
    """Like :func:`_open_node`, refusing a group where an array is expected."""
    node = _open_node(group, path, where)
    if node is not None and not isinstance(node, zarr.Array):
        raise StoreError(f"{where}: is a group, expected an array; {_DAMAGED_FIX}.")
    return node


class RunGroup:
    """One study run inside a store: ``runs/<run_id>``.

    A run starts with ``status="running"`` and is listed by
    :meth:`CaseStore.runs` only after :meth:`complete`.
    """

    def __init__(self, group: zarr.Group, run_id: str, on_finish: Callable[[], object] | None = None, *,
                 n_rows: Callable[[], int] | None = None, where: str | None = None) -> None:
        self.group = group
        self.run_id = run_id
        self._on_finish = on_finish  # the store's consolidation, after complete() and fail()
        self._n_rows = n_rows  # the store's rows, which every run array has (checked by array())
        self._where = where or f"runs/{run_id}"  # how messages name the run

    @property
    def status(self) -> str:
        """``"running"``, ``"complete"`` or ``"failed"``."""
        return str(self.group.attrs.get("status", "running"))

    def create_array(
        self, name: str, shape: tuple[int, ...], dtype: Any, *, chunk_rows: int | None = None,
        attrs: dict[str, Any] | None = None, dimension_names: Iterable[str] | None = None,
    ) -> zarr.Array:
        """Create (or overwrite) ``runs/<run_id>/<name>`` chunked along rows.

        Its ``dimension_names`` are those of :func:`run_dimension_names` unless given.
        """
        shape = tuple(int(n) for n in shape)
        dims = (run_dimension_names(name, shape) if dimension_names is None
                else _checked_dims(name, shape, dimension_names))
        n_features = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        rows = chunk_rows or chunk_rows_for(n_features, np.dtype(dtype).itemsize)
        arr = self.group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=(min(rows, max(1, shape[0])),) + tuple(shape[1:]),
            compressors=_COMPRESSOR,
            overwrite=True,
            dimension_names=dims,
        )
        arr.attrs.update({**_base_attrs(), **(attrs or {})})
        return arr

    def array(self, name: str) -> zarr.Array:
        """An array of this run, e.g. ``"osnet/labels"``, checked like the store's arrays (sane
        metadata, numeric or bool, the store's rows); a chunk that does not decode is refused when read.

        Raises
        ------
        StoreError
            No such array, a group in its place, or metadata streamclust does not write.
        """
        where = f"{self._where}/{name}"
        arr = _open_array(self.group, name, where)
        if arr is None:
            raise StoreError(f"run {self.run_id!r} has no array {name!r}.")
        problem = _metadata_problem(arr, ndim=None, kinds="biuf", min_chunk_rows=1)
        if problem is None and self._n_rows is not None and arr.shape[0] != self._n_rows():
            problem = f"has {arr.shape[0]} rows but the store's ids have {self._n_rows()}"
        if problem is not None:
            raise StoreError(f"{where}: {problem}; {_DAMAGED_FIX}.")
        return _CheckedArray(arr.async_array, where)

    def complete(self, summary: dict[str, Any] | None = None) -> None:
        """Mark the run complete (the last write of a study), then consolidate the store's metadata."""
        self.group.attrs.update({"status": "complete", "finished": now_iso(), **(summary or {})})
        if self._on_finish is not None:
            self._on_finish()

    def fail(self, reason: str) -> None:
        """Mark the run failed with a reason and delete its arrays (a failed run cannot be
        resumed; deleting frees the space a full disk needs).  It stays out of
        :meth:`CaseStore.runs`.  If even the status cannot be written (the disk is full),
        the run keeps ``status="running"``, which is not listed either."""
        for attempt in range(3):  # deleting first frees space for the status
            try:
                for name in [n for n, _ in self.group.members()]:
                    del self.group[name]
                break
            except OSError:  # a task of the failed pass may still be writing: Dask does not wait for them
                time.sleep(0.2 * (attempt + 1))
        try:
            self.group.attrs.update({"status": "failed", "finished": now_iso(), "error": reason})
        except OSError:
            pass
        if self._on_finish is not None:  # the run's arrays leave the consolidated view too
            self._on_finish()


class CaseStore:
    """A case in a Zarr v3 group (see the module docstring for the layout).

    Parameters
    ----------
    path : str or Path
        Directory of the store, or an fsspec URL zarr accepts (``file:///shared/case.zarr``,
        ``s3://bucket/case.zarr`` with s3fs installed, ...): on a Dask cluster, any location
        every worker can read.
    mode : {"r", "r+", "a"}
        Read only, read/write of an existing store, or read/write (created when missing).
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r") -> None:
        self.path = str(path)
        #: (array, shape, chunks) whose every chunk file was found present (one listing per array).
        self._complete_grids: set[tuple[str, tuple[int, ...], tuple[int, ...]]] = set()
        if mode not in ("r", "r+", "a"):
            raise ValueError(f"mode={mode!r} should be 'r', 'r+' or 'a'.")
        if mode != "a" and not self._exists():
            raise StoreError(
                f"{self.path}: no streamclust store here; create one with "
                "'streamclust convert CASE_DIR -o STORE.zarr'."
            )
        if self.path.startswith("memory://") and active_client() is not None:
            raise StoreError(f"{self.path}: a memory:// store lives in this process only; the Dask "
                             "cluster's workers cannot see it. Use a folder or URL they all read.")
        try:
            # never the consolidated view: it lags behind writes (other processes' runs, ...)
            self.root = zarr.open_group(self.path, mode=cast(Literal["r", "r+", "a"], mode), zarr_format=3,
                                        storage_options=_storage_options(self.path), use_consolidated=False)
        except Exception as exc:  # zarr raises several types for a non-store path
            raise StoreError(f"{self.path}: cannot open as a Zarr v3 store ({one_line(exc)}).") from exc
        version = self.root.attrs.get("schema_version")
        if version is None and mode == "a":
            self.root.attrs.update({**_base_attrs(), "kind": "streamclust-case"})
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema_version={version!r}, this streamclust reads "
                f"{SCHEMA_VERSION}; convert the case again."
            )

    def _exists(self) -> bool:
        if not is_url(self.path):
            return (Path(self.path) / "zarr.json").exists()
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(self.path, **(_storage_options(self.path) or {}))
            return bool(fs.exists(f"{root.rstrip('/')}/zarr.json"))
        except Exception as exc:  # an unknown protocol, missing credentials, no network ...
            raise StoreError(f"{self.path}: cannot open the URL ({type(exc).__name__}: {one_line(exc)}).") from exc

    # -------------------------------------------------- consolidated metadata
    def consolidate(self) -> bool:
        """Write the consolidated metadata of the whole store into its root ``zarr.json``.

        For other readers only (xarray, zarr's default ``open_group``: one request for the whole
        hierarchy instead of one per node); streamclust never reads it.  Called after every write
        that leaves the store finished.  Best effort: the arrays are written already, so a failure
        (a full disk, a node another process deletes meanwhile) is logged, not raised, and the
        previous consolidated view stays until the next finished write.

        Returns
        -------
        bool
            Whether the metadata was consolidated.
        """
        path = self.root.store_path.path or None
        for attempt in range(3):  # another process may add or delete a node while it is listed
            try:
                with _quiet_zarr_format_warnings():
                    zarr.consolidate_metadata(self.root.store, path=path, zarr_format=3)
                return True
            except Exception as exc:  # zarr raises several types; none makes the data wrong
                if attempt == 2 or isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    logger.warning(f"{self.path}: consolidated metadata not updated ({type(exc).__name__}: "
                                   f"{one_line(exc)}); streamclust does not read it, other readers may see "
                                   "the store as it was at the last consolidation.")
                    return False
        return False  # not reached

    # ------------------------------------------------------------------ ids
    @property
    def n_rows(self) -> int:
        """Number of images (rows) in the case."""
        return int(self.ids.shape[0])

    @property
    def ids(self) -> zarr.Array:
        """``(n,)`` string array of image paths (forward slashes), checked (see the module docstring).

        Raises
        ------
        StoreError
            No complete ``ids``, metadata streamclust does not write, or a chunk file missing.
        """
        arr = _open_array(self.root, "ids", f"{self.path}: ids")
        if arr is None or arr.attrs.get("status") != "complete":
            raise StoreError(f"{self.path}: has no complete 'ids' array; convert the case again.")
        problem = (_metadata_problem(arr, ndim=1, kinds="UTO", min_chunk_rows=MIN_CHUNK_ROWS)
                   or _count_problem(arr.attrs, "dropped_rows"))
        if problem is not None:
            raise StoreError(f"{self.path}: ids {problem}; {_DAMAGED_FIX}.")
        self._check_chunks_present("ids", arr)
        return _CheckedArray(arr.async_array, f"{self.path}: ids")

    def write_ids(self, blocks: Iterable[np.ndarray], n_rows: int, attrs: dict[str, Any], *,
                  max_len: int | None = None) -> zarr.Array:
        """Write the image paths, streamed in blocks of ``(rows,)`` str arrays, then consolidate.

        Parameters
        ----------
        blocks : iterable of array-like of str, shape (rows,)
        n_rows : int
            Rows in all.
        attrs : dict
            Provenance attributes.
        max_len : int, optional
            Characters of the longest path (e.g. from the scan of the paths CSV).  The ids are
            stored as ``<U{max_len}`` (Zarr ``fixed_length_utf32``), or as the variable-length
            ``string`` type when ``max_len`` exceeds :data:`MAX_FIXED_ID_CHARS`.  Without it the
            blocks are read into memory first to measure them; give it to stream in bounded memory.

        Raises
        ------
        StoreError
            A path is longer than ``max_len`` or ends with a NUL character (fixed-width strings
            cannot hold trailing NULs), or the blocks do not hold ``n_rows`` rows.
        """
        if max_len is None:
            kept = [np.asarray(b, dtype=np.dtypes.StringDType()) for b in blocks]
            max_len = max((len(p) for b in kept for p in b.tolist()), default=0)
            blocks = kept
        fixed = max_len <= MAX_FIXED_ID_CHARS
        width = max(1, int(max_len))
        dtype: Any = f"<U{width}" if fixed else str
        rows = chunk_rows_for(width, 4) if fixed else 65536
        self._complete_grids.clear()
        with _quiet_zarr_format_warnings():
            arr = self.root.create_array(  # every chunk written, so that a missing one is damage
                "ids", shape=(n_rows,), dtype=dtype, chunks=(min(rows, max(1, n_rows)),), overwrite=True,
                dimension_names=(ROW_DIM,), config={"write_empty_chunks": True},
            )
            arr.attrs.update({**_base_attrs(), **attrs, "status": "writing"})
            start = 0
            for block in blocks:
                block = np.asarray(block, dtype=np.dtypes.StringDType())
                if start + len(block) > n_rows:
                    raise StoreError(f"{self.path}: more than {n_rows} ids given, expected {n_rows}.")
                if fixed:
                    self._check_fixed_width(block, start, width)
                arr[start : start + len(block)] = block
                start += len(block)
            if start != n_rows:
                raise StoreError(f"{self.path}: wrote {start} ids, expected {n_rows}.")
            arr.attrs.update({"status": "complete"})
        self.consolidate()
        return arr

    def _check_fixed_width(self, block: np.ndarray, start: int, width: int) -> None:
        """Refuse a path that ``<U{width}`` would change: longer than ``width``, or ending with NUL
        (numpy strips trailing NULs).  numpy's string functions stop at NUL, hence plain Python."""
        for i, path in enumerate(block.tolist()):
            if len(path) > width or path.endswith("\x00"):
                what = "ends with a NUL character" if path.endswith("\x00") else f"is longer than max_len={width}"
                raise StoreError(f"{self.path}: id {start + i} ({path[:80]!r}) {what}; it cannot be "
                                 "stored as a fixed-width string.")

    # ---------------------------------------------------------- descriptors
    def _children(self, group_name: str, kind: type[zarr.Array] | type[zarr.Group]) -> dict[str, Any]:
        """The nodes of group ``group_name`` (``descriptors``, ``meta``, ``runs``) by name, each read from its
        own ``zarr.json``; names are listed from the store (a folder without ``zarr.json`` is no node).

        Raises
        ------
        StoreError
            ``group_name`` is an array, a node has a name no set may take (:func:`set_name_problem`),
            is not of ``kind``, or its metadata cannot be read.
        """
        group = _open_node(self.root, group_name, f"{self.path}: {group_name}")
        if group is None:
            return {}
        if not isinstance(group, zarr.Group):
            raise StoreError(f"{self.path}: {group_name} is an array, expected a group; {_DAMAGED_FIX}.")
        nodes = {}
        where = f"{self.path}: {group_name}"
        for name in sorted(_listing(where, self.root.store.list_dir(group.store_path.path))):
            if name in ("", "zarr.json"):  # a folder marker of an object store; the group's own metadata
                continue
            problem = set_name_problem(name)
            if problem is not None and (name in _RESERVED_NAMES or "\\" in name):  # zarr cannot open these
                raise StoreError(f"{where}: holds a node named {name!r}, which {problem}; {_DAMAGED_FIX}.")
            node = _open_node(group, name, f"{where}/{name}")
            if node is None:  # a file or folder that is no node (.DS_Store, a set being created)
                continue
            if problem is not None:
                raise StoreError(f"{where}: holds a node named {name!r}, which {problem}; {_DAMAGED_FIX}.")
            if not isinstance(node, kind):
                expected = "an array" if kind is zarr.Array else "a group"
                raise StoreError(f"{where}/{name}: is not {expected}; {_DAMAGED_FIX}.")
            nodes[name] = node
        return nodes

    def _complete_arrays(self, group_name: str) -> dict[str, zarr.Array]:
        return {name: arr for name, arr in self._children(group_name, zarr.Array).items()
                if arr.attrs.get("status") == "complete"}

    def _check_rows(self, where: str, arr: zarr.Array, *, ndim: int, kinds: str) -> None:
        """Refuse an array of ``descriptors`` or ``meta`` whose metadata streamclust does not write, or
        whose rows differ from the ids'."""
        problem = _metadata_problem(arr, ndim=ndim, kinds=kinds, min_chunk_rows=MIN_CHUNK_ROWS)
        n_ids = self.n_rows if problem is None else None
        if n_ids is not None and arr.shape[0] != n_ids:
            problem = f"has {arr.shape[0]} rows but {self.path}: ids has {n_ids}"
        if problem is None and ndim == 2 and arr.shape[1] == 0:
            problem = "has no feature (0 columns)"
        if problem is not None:
            raise StoreError(f"{self.path}: {where} {problem}; {_DAMAGED_FIX}.")

    def _check_chunks_present(self, where: str, arr: zarr.Array) -> None:
        """Refuse ``arr`` when a chunk file of its grid is missing (zarr would read it as the fill value)
        or one lies outside its declared shape; one listing of its chunk folder, once per shape.

        ``arr`` is chunked along rows only (see :func:`_metadata_problem`): its chunk keys are
        ``c/<i>`` (1-D) or ``c/<i>/0`` (2-D) for ``i < ceil(rows / chunk rows)``.
        """
        shape, chunks = tuple(arr.shape), tuple(arr.chunks)
        if (where, shape, chunks) in self._complete_grids:
            return
        n_chunks = -(-shape[0] // chunks[0])
        tail = ("0",) * (len(shape) - 1)
        prefix = f"{arr.store_path.path}/c/"
        present: set[int] = set()
        outside: list[str] = []
        for key in _listing(f"{self.path}: {where}", self.root.store.list_prefix(prefix)):
            index = key[len(prefix):].split("/")
            if not key.startswith(prefix) or not all(p.isascii() and p.isdigit() for p in index) \
                    or len(index) != len(shape):
                continue  # not a chunk key: zarr never reads it
            if tuple(index[1:]) == tail and int(index[0]) < n_chunks:
                present.add(int(index[0]))
            else:
                outside.append("c/" + "/".join(index))
        if outside:
            raise StoreError(f"{self.path}: {where} holds {len(outside)} chunk file(s) outside its declared shape "
                             f"{shape} with chunks {chunks} ({', '.join(sorted(outside)[:_SHOWN_CHUNKS])}); "
                             f"{_DAMAGED_FIX}.")
        missing = n_chunks - len(present)
        if missing:
            first = [i for i in itertools.islice((i for i in range(n_chunks) if i not in present), _SHOWN_CHUNKS)]
            names = ", ".join("/".join(("c", str(i)) + tail) for i in first) + (", ..." if missing > len(first) else "")
            fill = np.asarray(arr.metadata.fill_value).item()
            raise StoreError(f"{self.path}: {where} lacks {missing} of its {n_chunks} chunk files ({names}), which "
                             f"zarr would read as {fill!r}; {_DAMAGED_FIX}.")
        self._complete_grids.add((where, shape, chunks))

    def descriptor_names(self) -> list[str]:
        """Names of the complete descriptor sets, sorted.

        Raises
        ------
        StoreError
            A node of ``descriptors`` is unreadable, a group, or badly named (:meth:`_children`).
        """
        return sorted(self._complete_arrays("descriptors"))

    def descriptor(self, name: str) -> zarr.Array:
        """The ``(n, d)`` float array of one complete descriptor set, checked (see the module docstring).

        Raises
        ------
        StoreError
            No complete set ``name``; metadata streamclust does not write (shape, chunks, type, codecs,
            ``rows_written``, ...); rows other than the ids'; a chunk file missing.
        """
        sets = self._complete_arrays("descriptors")
        if name not in sets:
            raise StoreError(
                f"{self.path}: no complete descriptor set {name!r}; the store has {sorted(sets)}."
            )
        arr, where = sets[name], f"descriptors/{name}"
        self._check_rows(where, arr, ndim=2, kinds="f")
        problem = (_count_problem(arr.attrs, "rows_written", equal=arr.shape[0])
                   or _count_problem(arr.attrs, "imputed_rows", at_most=arr.shape[0])
                   or _count_problem(arr.attrs, "imputed_values", at_most=arr.shape[0] * arr.shape[1]))
        if problem is not None:
            raise StoreError(f"{self.path}: {where} {problem}; {_DAMAGED_FIX}.")
        self._check_chunks_present(where, arr)
        return _CheckedArray(arr.async_array, f"{self.path}: {where}")

    def _resumable(self, name: str, n_rows: int, n_features: int, attrs: dict[str, Any]
                   ) -> tuple[zarr.Array, int] | None:
        """``(array, rows written)`` of an existing set ``name`` a conversion keeps or resumes, or None
        to replace it: absent, of other sources or rows, or damaged (logged).

        Raises
        ------
        StoreError
            A complete set ``name`` with another number of features exists.
        """
        where = f"descriptors/{name}"
        try:
            old = _open_array(self.root, where, f"{self.path}: {where}")
        except StoreError as exc:
            _log_replacing(str(exc))
            return None
        if old is None:
            return None
        problem = _metadata_problem(old, ndim=2, kinds="f", min_chunk_rows=MIN_CHUNK_ROWS)
        if problem is not None:
            _log_replacing(f"{self.path}: {where} {problem}.")
            return None
        complete = old.attrs.get("status") == "complete"
        if complete and old.shape[1] != n_features:
            raise StoreError(
                f"{self.path}: descriptor set {name!r} has {old.shape[1]} features, "
                f"{attrs.get('source', 'the new file')} has {n_features}; convert it under "
                "another name or into a new store."
            )
        same = old.shape == (n_rows, n_features) and all(
            old.attrs.get(key) == attrs.get(key) for key in ("source_fingerprint", "row_policy")
        )
        if not same:
            return None
        if complete:
            try:
                self._check_chunks_present(where, old)
            except StoreError as exc:
                _log_replacing(str(exc))
                return None
            return old, n_rows
        problem = (_count_problem(old.attrs, "rows_written", at_most=n_rows)
                   or _count_problem(old.attrs, "imputed_rows", at_most=n_rows)
                   or _count_problem(old.attrs, "imputed_values", at_most=n_rows * n_features))
        if problem is not None:
            _log_replacing(f"{self.path}: {where} {problem}.")
            return None
        return old.with_config({"write_empty_chunks": True}), int(cast(int, old.attrs.get("rows_written", 0)))

    def open_descriptor_for_writing(
        self, name: str, n_rows: int, n_features: int, attrs: dict[str, Any]
    ) -> tuple[zarr.Array, int]:
        """Create ``descriptors/<name>`` or reopen an interrupted one to resume.

        An existing array is resumed when its shape, its ``source_fingerprint`` and
        its ``row_policy`` (which rows are kept, how NaN/Inf are handled) match
        ``attrs``; a complete one with the same keys is returned with all rows
        written; anything else is replaced, except a complete set of another
        width, which is refused.  A damaged one (metadata streamclust does not
        write, a numeric attribute that is not one, a chunk file missing) is
        replaced, with a warning.  Every chunk is written, zeros too, so that a
        missing chunk file is damage (:meth:`descriptor`).

        Returns
        -------
        array : zarr.Array, shape (n_rows, n_features)
        rows_written : int
            Rows already converted (resume from here).

        Raises
        ------
        InputError
            ``name`` cannot name a set (:func:`check_set_name`), or one chunk of ``n_features``
            would exceed :data:`MAX_CHUNK_BYTES`.
        StoreError
            A complete set ``name`` with another number of features exists.
        """
        check_set_name(name)
        rows = min(chunk_rows_for(n_features), max(1, n_rows))
        if rows * n_features * 4 > MAX_CHUNK_BYTES:
            raise InputError(f"{attrs.get('source', name)}: {n_features} features make chunks of "
                             f"{rows * n_features * 4} bytes, more than streamclust reads ({MAX_CHUNK_BYTES}).")
        try:
            group = self.root.require_group("descriptors")
        except zarr.errors.ContainsArrayError:
            raise StoreError(f"{self.path}: descriptors is an array, expected a group; {_DAMAGED_FIX}.") from None
        kept = self._resumable(name, n_rows, n_features, attrs)
        if kept is not None:
            return kept
        arr = group.create_array(
            name,
            shape=(n_rows, n_features),
            dtype="float32",
            chunks=(rows, n_features),
            compressors=_COMPRESSOR,
            overwrite=True,
            dimension_names=(ROW_DIM, f"{name}_feature"),
            config={"write_empty_chunks": True},
        )
        arr.attrs.update({**_base_attrs(), **attrs, "status": "writing", "rows_written": 0})
        return arr, 0

    # ----------------------------------------------------------------- meta
    def write_meta(self, column: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
        """Store one ``(n,)`` metadata column (strings) aligned with the ids, then consolidate.

        Raises
        ------
        InputError
            ``column`` cannot name a node (:func:`check_set_name`).
        """
        check_set_name(column, what="metadata column")
        group = self.root.require_group("meta")
        arr = group.create_array(
            column, shape=values.shape, dtype=str, chunks=(min(65536, max(1, len(values))),),
            overwrite=True, dimension_names=(ROW_DIM,), config={"write_empty_chunks": True},
        )
        arr[:] = values
        arr.attrs.update({**_base_attrs(), **attrs, "status": "complete"})
        self.consolidate()

    def meta_columns(self) -> list[str]:
        """Names of the complete metadata columns, each checked like a descriptor set's rows.

        Raises
        ------
        StoreError
            A column is unreadable, badly named, not 1-D strings, or of other rows than the ids.
        """
        columns = self._complete_arrays("meta")
        for name, arr in columns.items():
            self._check_rows(f"meta/{name}", arr, ndim=1, kinds="UTO")
        return sorted(columns)

    # ----------------------------------------------------------------- runs
    def new_run(self, params: dict[str, Any]) -> RunGroup:
        """Start a run ``runs/<timestamp>-<random>`` with ``status="running"``."""
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
        try:
            runs = self.root.require_group("runs")
        except zarr.errors.ContainsGroupError:  # another study created it a moment ago
            runs = cast(zarr.Group, self.root["runs"])
        group = runs.create_group(run_id)  # exclusive: never reuses another study's id
        group.attrs.update(
            {**_base_attrs(), "status": "running", "params": params,
             "host": socket.gethostname(), "pid": os.getpid()}
        )
        return self._run_group(group, run_id)

    def _run_group(self, group: zarr.Group, run_id: str) -> RunGroup:
        return RunGroup(group, run_id, on_finish=self.consolidate, n_rows=lambda: self.n_rows,
                        where=f"{self.path}: runs/{run_id}")

    def runs(self, *, include_incomplete: bool = False) -> list[RunGroup]:
        """Runs of this store, oldest first; only complete ones unless asked.

        Raises
        ------
        StoreError
            A node of ``runs`` is unreadable, an array, or badly named.
        """
        out = []
        for run_id, group in sorted(self._children("runs", zarr.Group).items()):
            run = self._run_group(group, run_id)
            if include_incomplete or run.status == "complete":
                out.append(run)
        return out

    def run(self, run_id: str) -> RunGroup:
        """A complete run by id."""
        for run in self.runs():
            if run.run_id == run_id:
                return run
        raise StoreError(f"{self.path}: no complete run {run_id!r}.")
