"""The Zarr layout of a case: ids, descriptor sets, metadata and runs.

One Zarr v3 group per case::

    case.zarr/
      ids                      (n,) str      image paths, forward slashes, store order
      descriptors/<name>       (n, d) float32, chunked along rows only, compressed
      meta/<column>            (n,) str      optional per-image metadata
      runs/<run-id>/<set>/...  results of one study (reduced rows, labels, ...)

Every array carries provenance attributes (``source``, ``source_size``,
``source_sha256``, ``source_dtype``, ``created``, ``schema_version``,
``streamclust_version``).  Arrays being written carry ``status: "writing"``
and ``rows_written``; only arrays and runs whose status is ``"complete"`` are
listed, so an interrupted conversion or study never looks finished.  An
interrupted descriptor conversion is resumed from ``rows_written``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import socket
import uuid
from collections.abc import Iterator
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
    "CaseStore",
    "RunGroup",
    "chunk_rows_for",
    "disk_full_error",
    "now_iso",
]

#: Version of the layout above; stores of another version are refused.
SCHEMA_VERSION = 1

#: Target size of one chunk; ~8 MiB chunks read fastest on the reference machine.
_CHUNK_BYTES = 8 << 20

_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


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

    def __init__(self, group: zarr.Group, run_id: str) -> None:
        self.group = group
        self.run_id = run_id

    @property
    def status(self) -> str:
        """``"running"``, ``"complete"`` or ``"failed"``."""
        return str(self.group.attrs.get("status", "running"))

    def create_array(
        self, name: str, shape: tuple[int, ...], dtype: Any, *, chunk_rows: int | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> zarr.Array:
        """Create (or overwrite) ``runs/<run_id>/<name>`` chunked along rows."""
        n_features = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        rows = chunk_rows or chunk_rows_for(n_features, np.dtype(dtype).itemsize)
        arr = self.group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=(min(rows, max(1, shape[0])),) + tuple(shape[1:]),
            compressors=_COMPRESSOR,
            overwrite=True,
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
        """Mark the run complete (the last write of a study)."""
        self.group.attrs.update({"status": "complete", "finished": now_iso(), **(summary or {})})

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
            self.root = zarr.open_group(self.path, mode=cast(Literal["r", "r+", "a"], mode), zarr_format=3,
                                        storage_options=_storage_options(self.path))
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

    def write_ids(self, blocks: Iterator[np.ndarray], n_rows: int, attrs: dict[str, Any]) -> zarr.Array:
        """Write the image paths, streamed in blocks of ``(rows,)`` str arrays."""
        arr = self.root.create_array(
            "ids", shape=(n_rows,), dtype=str, chunks=(min(65536, max(1, n_rows)),), overwrite=True
        )
        arr.attrs.update({**_base_attrs(), **attrs, "status": "writing"})
        start = 0
        for block in blocks:
            arr[start : start + len(block)] = block
            start += len(block)
        if start != n_rows:
            raise StoreError(f"{self.path}: wrote {start} ids, expected {n_rows}.")
        arr.attrs.update({"status": "complete"})
        return arr

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
        )
        arr.attrs.update({**_base_attrs(), **attrs, "status": "writing", "rows_written": 0})
        return arr, 0

    # ----------------------------------------------------------------- meta
    def write_meta(self, column: str, values: np.ndarray, attrs: dict[str, Any]) -> None:
        """Store one ``(n,)`` metadata column (strings) aligned with the ids."""
        group = self.root.require_group("meta")
        arr = group.create_array(
            column, shape=values.shape, dtype=str, chunks=(min(65536, max(1, len(values))),),
            overwrite=True,
        )
        arr[:] = values
        arr.attrs.update({**_base_attrs(), **attrs, "status": "complete"})

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
        return RunGroup(group, run_id)

    def runs(self, *, include_incomplete: bool = False) -> list[RunGroup]:
        """Runs of this store, oldest first; only complete ones unless asked."""
        if "runs" not in self.root:
            return []
        out = []
        for run_id, group in sorted(cast(zarr.Group, self.root["runs"]).groups()):
            run = RunGroup(group, run_id)
            if include_incomplete or run.status == "complete":
                out.append(run)
        return out

    def run(self, run_id: str) -> RunGroup:
        """A complete run by id."""
        for run in self.runs():
            if run.run_id == run_id:
                return run
        raise StoreError(f"{self.path}: no complete run {run_id!r}.")
