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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import logging
import os
import socket
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from streamclust import __version__
from streamclust.core.scheduler import active_client
from streamclust.core.urls import is_url
from streamclust.errors import StoreError, one_line

__all__ = [
    "SCHEMA_VERSION",
    "MAX_FIXED_ID_CHARS",
    "CaseStore",
    "RunGroup",
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


class RunGroup:
    """One study run inside a store: ``runs/<run_id>``.

    A run starts with ``status="running"`` and is listed by
    :meth:`CaseStore.runs` only after :meth:`complete`.
    """

    def __init__(self, group: zarr.Group, run_id: str, on_finish: Callable[[], object] | None = None) -> None:
        self.group = group
        self.run_id = run_id
        self._on_finish = on_finish  # the store's consolidation, after complete() and fail()

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
        """An array of this run, e.g. ``"osnet/labels"``."""
        try:
            return cast(zarr.Array, self.group[name])
        except KeyError:
            raise StoreError(f"run {self.run_id!r} has no array {name!r}.") from None

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
        try:  # deleting first frees space for the status
            for name in [n for n, _ in self.group.members()]:
                del self.group[name]
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
        """``(n,)`` string array of image paths (forward slashes)."""
        if "ids" not in self.root or self.root["ids"].attrs.get("status") != "complete":
            raise StoreError(f"{self.path}: has no complete 'ids' array; convert the case again.")
        return cast(zarr.Array, self.root["ids"])

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
        with _quiet_zarr_format_warnings():
            arr = self.root.create_array(
                "ids", shape=(n_rows,), dtype=dtype, chunks=(min(rows, max(1, n_rows)),), overwrite=True,
                dimension_names=(ROW_DIM,),
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
    def descriptor_names(self) -> list[str]:
        """Names of the complete descriptor sets, sorted."""
        if "descriptors" not in self.root:
            return []
        group = cast(zarr.Group, self.root["descriptors"])
        return sorted(
            name for name, arr in group.arrays() if arr.attrs.get("status") == "complete"
        )

    def descriptor(self, name: str) -> zarr.Array:
        """The ``(n, d)`` float32 array of one complete descriptor set."""
        names = self.descriptor_names()
        if name not in names:
            raise StoreError(
                f"{self.path}: no complete descriptor set {name!r}; the store has {names}."
            )
        return cast(zarr.Array, cast(zarr.Group, self.root["descriptors"])[name])

    def open_descriptor_for_writing(
        self, name: str, n_rows: int, n_features: int, attrs: dict[str, Any]
    ) -> tuple[zarr.Array, int]:
        """Create ``descriptors/<name>`` or reopen an interrupted one to resume.

        An existing array is resumed when its shape, its ``source_fingerprint`` and
        its ``row_policy`` (which rows are kept, how NaN/Inf are handled) match
        ``attrs``; a complete one with the same keys is returned with all rows
        written; anything else is replaced, except a complete set of another
        width, which is refused.

        Returns
        -------
        array : zarr.Array, shape (n_rows, n_features)
        rows_written : int
            Rows already converted (resume from here).

        Raises
        ------
        StoreError
            A complete set ``name`` with another number of features exists.
        """
        group = self.root.require_group("descriptors")
        if name in group:
            old = cast(zarr.Array, group[name])
            if old.attrs.get("status") == "complete" and old.shape[1] != n_features:
                raise StoreError(
                    f"{self.path}: descriptor set {name!r} has {old.shape[1]} features, "
                    f"{attrs.get('source', 'the new file')} has {n_features}; convert it under "
                    "another name or into a new store."
                )
            same = old.shape == (n_rows, n_features) and all(
                old.attrs.get(key) == attrs.get(key) for key in ("source_fingerprint", "row_policy")
            )
            if same and old.attrs.get("status") == "complete":
                return old, n_rows
            if same:
                return old, int(cast(int, old.attrs.get("rows_written", 0)))
        rows = chunk_rows_for(n_features)
        arr = group.create_array(
            name,
            shape=(n_rows, n_features),
            dtype="float32",
            chunks=(min(rows, max(1, n_rows)), n_features),
            compressors=_COMPRESSOR,
            overwrite=True,
            dimension_names=(ROW_DIM, f"{name}_feature"),
        )
        arr.attrs.update({**_base_attrs(), **attrs, "status": "writing", "rows_written": 0})
        return arr, 0

    # ----------------------------------------------------------------- meta
    def write_meta(self, column: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
        """Store one ``(n,)`` metadata column (strings) aligned with the ids, then consolidate."""
        group = self.root.require_group("meta")
        arr = group.create_array(
            column, shape=values.shape, dtype=str, chunks=(min(65536, max(1, len(values))),),
            overwrite=True, dimension_names=(ROW_DIM,),
        )
        arr[:] = values
        arr.attrs.update({**_base_attrs(), **attrs, "status": "complete"})
        self.consolidate()

    def meta_columns(self) -> list[str]:
        """Names of the stored metadata columns."""
        if "meta" not in self.root:
            return []
        return sorted(n for n, a in cast(zarr.Group, self.root["meta"]).arrays() if a.attrs.get("status") == "complete")

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
        return RunGroup(group, run_id, on_finish=self.consolidate)

    def runs(self, *, include_incomplete: bool = False) -> list[RunGroup]:
        """Runs of this store, oldest first; only complete ones unless asked."""
        if "runs" not in self.root:
            return []
        out = []
        for run_id, group in sorted(cast(zarr.Group, self.root["runs"]).groups()):
            run = RunGroup(group, run_id, on_finish=self.consolidate)
            if include_incomplete or run.status == "complete":
                out.append(run)
        return out

    def run(self, run_id: str) -> RunGroup:
        """A complete run by id."""
        for run in self.runs():
            if run.run_id == run_id:
                return run
        raise StoreError(f"{self.path}: no complete run {run_id!r}.")
