"""The conversion of a case's raw files to a store (:func:`convert_case`), and the case's layout.

The descriptor files are read by :mod:`streamclust.io.sources`.  Conversion checks row counts
against ``images_paths.csv``, handles rows with NaN/Inf by ``nan_policy`` (refuse naming the first
bad rows, drop them from every set, or impute column means), stores float32 with provenance
attributes and resumes an interrupted conversion where it stopped.

The case folder's metadata file and image source (:func:`find_case_metadata`,
:func:`find_case_images`) are recorded in the store's attributes (``case_files``, read back by
:func:`recorded_case_files`), so that a study finds them without being told.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from streamclust.core.blocks import parse_memory, rows_not_in
from streamclust.core.files import write_atomic
from streamclust.core.paths import check_output_path
from streamclust.core.scheduler import runs_on_scheduler
from streamclust.core.urls import is_url
from streamclust.errors import InputError, StoreError, one_line
from streamclust.io.sources import DESCRIPTOR_SUFFIXES, ArraySource, open_source
from streamclust.io.store import CaseStore, chunk_rows_for, disk_full_error, now_iso

if TYPE_CHECKING:
    import zarr

__all__ = [
    "discover_case",
    "CaseFiles",
    "CASE_FILES_ATTR",
    "find_case_images",
    "find_case_metadata",
    "recorded_case_files",
    "read_paths_csv",
    "convert_case",
    "convert_descriptor",
    "NAN_POLICIES",
    "dropped_rows_report_path",
]

logger = logging.getLogger(__name__)

_PATHS_CSV = "images_paths.csv"

#: Metadata files looked for in a case folder, in this order (VeRi-Wild's, then a table of attributes).
_METADATA_NAMES = ("vehicle_info.txt", "train_test_split/vehicle_info.txt", "metadata.csv", "metadata.tsv",
                   "metadata.txt", "metadata.parquet", "metadata.pq")

#: The store attribute where :func:`convert_case` records the case folder's files.
CASE_FILES_ATTR = "case_files"


@dataclass
class CaseFiles:
    """The raw files of a case: descriptor sets by name, and the paths CSV."""

    descriptors: dict[str, Path]
    paths_csv: Path


def find_case_metadata(case_dir: str | os.PathLike[str]) -> Path | None:
    """The per-image metadata of a case folder: the first of ``vehicle_info.txt``,
    ``train_test_split/vehicle_info.txt`` (VeRi-Wild's layout), ``metadata.csv|tsv|txt|parquet|pq``
    that is a file, as an absolute path; None when there is none."""
    root = Path(case_dir)
    return next((path.resolve() for path in (root / name for name in _METADATA_NAMES) if path.is_file()), None)


def find_case_images(case_dir: str | os.PathLike[str], first_path: str | None = None) -> Path | None:
    """The image source of a case folder, as an absolute path; None when there is none.

    The first of: ``images.zip``; the only other ``*.zip`` (the real case's ``veriwild.zip``); an
    ``images/`` folder; the case folder itself when ``first_path`` (the first path of
    ``images_paths.csv``, forward slashes) is a file under it.  Several zips and no ``images.zip``
    record none and say so (WARNING): which one holds the images is not guessed.
    """
    root = Path(case_dir)
    if (root / "images.zip").is_file():
        return (root / "images.zip").resolve()
    zips = sorted(p for p in root.glob("*.zip") if p.is_file())
    if len(zips) == 1:
        return zips[0].resolve()
    if zips:
        logger.warning(f"{root}: several zip files ({', '.join(p.name for p in zips)}) and no images.zip; no "
                       "image source recorded: give the study --images ZIP.")
        return None
    if (root / "images").is_dir():
        return (root / "images").resolve()
    relative = first_path is not None and not PurePosixPath(first_path).is_absolute() \
        and ".." not in PurePosixPath(first_path).parts and ":" not in first_path
    if relative and (root / str(first_path)).is_file():
        return root.resolve()
    return None


def recorded_case_files(store: CaseStore) -> dict[str, str | None] | None:
    """What :func:`convert_case` recorded of the case folder: ``{"case_dir", "metadata", "images"}``
    (absolute paths as strings, None for a file not found), or None for a store converted before
    streamclust recorded them."""
    recorded = store.root.attrs.get(CASE_FILES_ATTR)
    if not isinstance(recorded, dict):
        return None
    return {key: (str(recorded[key]) if recorded.get(key) else None) for key in ("case_dir", "metadata", "images")}


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


def _record_case_files(store: CaseStore, case_dir: Path, first_path: str) -> None:
    """Find the case folder's metadata file and image source, record them in the store's attributes
    (:data:`CASE_FILES_ATTR`) and say what was found (one INFO line each)."""
    metadata, images = find_case_metadata(case_dir), find_case_images(case_dir, first_path)
    store.root.attrs.update({CASE_FILES_ATTR: {
        "case_dir": str(case_dir.resolve()),
        "metadata": str(metadata) if metadata else None,
        "images": str(images) if images else None,
        "recorded": now_iso(),
    }})
    logger.info(f"metadata: {metadata} recorded for the study" if metadata else
                f"metadata: none found in {case_dir} (looked for {', '.join(_METADATA_NAMES[:2])}, "
                "metadata.csv|tsv|txt|parquet|pq); give the study --metadata FILE")
    logger.info(f"images: {images} recorded for the study" if images else
                f"images: none found in {case_dir} (looked for images.zip, a single *.zip, images/, the "
                "paths of the paths CSV under the folder); give the study --images ZIP|DIR")


#: Characters of one line of the paths CSV (a path takes at most 4,096 bytes on common file systems).
_MAX_PATHS_LINE = 1 << 20


def _bounded_lines(f: io.TextIOBase, csv: Path) -> Iterator[str]:
    """The lines of ``f``, refusing one longer than :data:`_MAX_PATHS_LINE` before reading it whole."""
    number = 0
    while line := f.readline(_MAX_PATHS_LINE + 1):
        number += 1
        if len(line) > _MAX_PATHS_LINE and not line.endswith(("\n", "\r")):
            raise InputError(f"{csv}: line {number:,} is longer than {_MAX_PATHS_LINE:,} characters; a line "
                             "holds one image path: is it the right file?")
        yield line


def _path_blocks(csv: Path, block_rows: int = 65536) -> Iterator[np.ndarray]:
    """Paths of ``csv``'s ``paths`` column in blocks, backslashes turned into ``/``."""
    import csv as csv_module

    try:
        with open(csv, newline="", encoding="utf-8") as f:
            reader = csv_module.reader(_bounded_lines(f, csv))
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
                if "\x00" in value:  # no file system allows it; fixed-width ids would drop a trailing one
                    raise InputError(f"{csv}: row {row} has a NUL character in its path.")
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

    Paths get forward slashes.  Empty paths, paths holding NUL, duplicates and
    non-UTF-8 text are refused with the row concerned.  Memory: 8 bytes per row
    for duplicate detection (64-bit BLAKE2 digests).

    Returns
    -------
    n_rows : int
    blocks : iterator of ndarray of str, shape (rows,)
        A fresh pass over the paths, in file order.
    """
    n, _, blocks = _scan_paths_csv(csv)
    return n, blocks


def _scan_paths_csv(csv: str | os.PathLike[str]) -> tuple[int, int, Iterator[np.ndarray]]:
    """:func:`read_paths_csv`, also returning the length in characters of the longest path (the
    width of the store's fixed-width ids): ``(n_rows, max_len, blocks)``."""
    csv = Path(csv)
    digests = []
    max_len = 0
    for block in _path_blocks(csv):
        paths = block.tolist()
        max_len = max(max_len, max(map(len, paths), default=0))
        digests.append(np.array([int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(), "little")
                                 for p in paths], dtype=np.uint64))
    n = int(sum(len(d) for d in digests))
    if n == 0:
        raise InputError(f"{csv}: no rows.")
    h = np.concatenate(digests)
    order = np.argsort(h, kind="stable")
    dup = np.flatnonzero(h[order][1:] == h[order][:-1])
    if len(dup):
        a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise InputError(f"{csv}: rows {a} and {b} name the same image; paths must be unique.")
    return n, max_len, _path_blocks(csv)


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


#: How :func:`convert_case` treats rows holding NaN or Inf (see its ``nan_policy``).
NAN_POLICIES = ("fail", "drop", "impute")

#: Bad rows named in a ``nan_policy="fail"`` error.
_N_NAMED_ROWS = 5


def _as_float32(block: np.ndarray) -> np.ndarray:
    """``block`` as float32; values beyond float32's range become Inf (then checked as such)."""
    with np.errstate(over="ignore"):
        return block.astype(np.float32, copy=False)


def _block_rows(memory: str | int | None, source: ArraySource, chunk: int) -> int:
    """Source rows per conversion block: a multiple of the store's ``chunk`` rows taking about 1/8
    of ``memory``.  A value takes its source size (the rows read), then 4 bytes as float32, 1 of
    finite mask and 4 of compressor output.  A source whose one chunk would take more than ``memory``
    is refused (a block never splits a chunk: zarr would rewrite the whole chunk for each part)."""
    budget = parse_memory(memory)
    row_bytes = source.shape[1] * (source.dtype.itemsize + 9)
    if chunk * row_bytes > budget:
        need = -(-chunk * row_bytes // 2**20)
        raise InputError(
            f"{source.path}: rows of {source.shape[1]:,} values: one store chunk ({chunk:,} rows, the smallest "
            f"block conversion writes) takes about {need:,} MiB, more than the memory budget "
            f"({budget / 2**20:,.0f} MiB); give --memory {need}MiB or more, or fewer values per row."
        )
    return max(chunk, budget // 8 // row_bytes // chunk * chunk)


def _check_policy(nan_policy: str) -> None:
    if nan_policy not in NAN_POLICIES:
        raise InputError(f"nan_policy={nan_policy!r} should be one of {', '.join(NAN_POLICIES)}.")


@dataclass
class _FiniteScan:
    """One pass over a source: its rows holding NaN/Inf and the column means of the finite values."""

    bad_rows: np.ndarray  # (n_bad,) int64, sorted source rows
    reasons: list[str]  # (n_bad,) "NaN", "Inf" or "NaN and Inf"
    column_sum: np.ndarray  # (d,) float64 sum of the finite values per column
    column_count: np.ndarray  # (d,) int64 finite values per column

    def column_means(self, path: Path) -> np.ndarray:
        """``(d,)`` float64 means of the finite values; a column without any is refused."""
        empty = np.flatnonzero(self.column_count == 0)
        if len(empty):
            raise InputError(
                f"{path}: column {int(empty[0])} holds no finite value, so nan_policy='impute' has "
                "no mean to fill it with; fix the file or use nan_policy='drop'."
            )
        return cast(np.ndarray, self.column_sum / self.column_count)  # numpy types ndarray / ndarray as Any


def _scan_finite(source: ArraySource, block_rows: int) -> _FiniteScan:
    """Read ``source`` once, block by block (bounded memory), and find its non-finite values."""
    n, d = source.shape
    bad, reasons = [], []
    total, count = np.zeros(d), np.zeros(d, np.int64)
    for start in range(0, n, block_rows):
        block = _as_float32(source.read_rows(start, min(n, start + block_rows)))
        finite = np.isfinite(block)
        total += np.where(finite, block, 0).sum(axis=0, dtype=np.float64)
        count += finite.sum(axis=0)
        rows = np.flatnonzero(~finite.all(axis=1))
        if len(rows):
            has_nan = np.isnan(block[rows]).any(axis=1)
            has_inf = np.isinf(block[rows]).any(axis=1)
            bad.append(start + rows)
            reasons += ["NaN and Inf" if a and b else ("NaN" if a else "Inf") for a, b in zip(has_nan, has_inf)]
    rows = np.concatenate(bad) if bad else np.empty(0, np.int64)
    return _FiniteScan(rows.astype(np.int64), reasons, total, count)


@dataclass
class _DroppedRows:
    """Source rows left out of the store (``nan_policy="drop"``), the same for every set."""

    rows: np.ndarray  # (n_dropped,) int64, sorted, unique
    n_source: int
    listing: str | None = None  # the report's CSV text (``row, path, set, reason``); None when none dropped

    @property
    def n_kept(self) -> int:
        return self.n_source - len(self.rows)

    @property
    def key(self) -> str:
        """Identifies the kept rows, so a resumed conversion never mixes two row selections."""
        return f"drop:{len(self.rows)}:{hashlib.sha256(self.rows.tobytes()).hexdigest()[:16]}"

    def source_row(self, store_row: int) -> int:
        """The source row that becomes ``store_row``."""
        return int(rows_not_in(self.rows, store_row))

    def keep(self, start: int, stop: int) -> np.ndarray:
        """``(stop - start,)`` bool: which source rows of ``start:stop`` are kept."""
        return ~np.isin(np.arange(start, stop), self.rows[(self.rows >= start) & (self.rows < stop)])


def _bad_rows_error(path: Path, rows: np.ndarray, store: CaseStore) -> InputError:
    named = ", ".join(str(int(r)) for r in rows[:_N_NAMED_ROWS])
    more = f" (and {len(rows) - _N_NAMED_ROWS} more in this block)" if len(rows) > _N_NAMED_ROWS else ""
    verb = "holds" if len(rows) == 1 else "hold"
    return InputError(
        f"{path}: row{'s' if len(rows) > 1 else ''} {named}{more} {verb} NaN or Inf; fix or drop "
        f"those images, or convert with nan_policy='drop' or 'impute' (--nan drop|impute) "
        f"(rows before them are kept in {store.path} and the conversion resumes there)."
    )


def convert_descriptor(
    store: CaseStore, name: str, source: ArraySource, *, memory: str | int | None = None,
    progress: bool = False, nan_policy: str = "fail", dropped: _DroppedRows | None = None,
) -> bool:
    """Copy one raw array into ``descriptors/<name>`` as float32, resuming if interrupted; once
    complete, the store's consolidated metadata is rewritten (:meth:`CaseStore.consolidate`).

    Parameters
    ----------
    store : CaseStore
        Holds the ids already (``store.n_rows`` rows).
    name : str
        The descriptor set.
    source : ArraySource, shape (n_source, d)
    memory : str or int, optional
        Memory budget; a block takes 1/32 of it.
    progress : bool
        A progress bar.
    nan_policy : {"fail", "drop", "impute"}
        ``"fail"``: refuse the first block with NaN/Inf, naming its bad rows.
        ``"drop"``: leave out the rows of ``dropped`` (found by :func:`convert_case`
        over every set).  ``"impute"``: replace each NaN/Inf by its column's mean
        over the finite values (one more pass over the source, made only when a
        bad value is met); recorded in the array's attributes.
    dropped : _DroppedRows, optional
        The rows left out with ``nan_policy="drop"``.

    Returns
    -------
    bool
        Whether rows were written (False: the set was complete already).

    Raises
    ------
    InputError
        Row count differs from the store's ids, or (``"fail"``) a row holds NaN/Inf
        (the first bad rows are named).  Rows already written stay, marked
        incomplete, and the next run resumes after them.
    StoreError
        The disk is full (the error names the path; the rows written stay for the
        resume), or a complete set ``name`` of another width exists.
    """
    _check_policy(nan_policy)
    n, d = source.shape
    n_store = dropped.n_kept if dropped is not None else n
    if n_store != store.n_rows:
        raise InputError(
            f"{source.path}: has {n} rows but the image paths list {store.n_rows}; "
            "row i of every descriptor file must be image i of images_paths.csv."
        )
    row_policy = dropped.key if dropped is not None else ("impute" if nan_policy == "impute" else "all")
    attrs = {
        "source": str(source.path),
        "source_size": source.path.stat().st_size,
        "source_dtype": str(source.dtype),
        "source_fingerprint": _fingerprint(source.path),
        "converted": now_iso(),
        "nan_policy": nan_policy,
        "row_policy": row_policy,
    }
    if dropped is not None:
        attrs["dropped_rows"] = len(dropped.rows)
    arr, done = store.open_descriptor_for_writing(name, n_store, d, attrs)
    if arr.attrs.get("status") == "complete":
        return False
    per_block = _block_rows(memory, source, arr.chunks[0])
    means = None
    imputed = {"imputed_rows": int(cast(int, arr.attrs.get("imputed_rows", 0))),
               "imputed_values": int(cast(int, arr.attrs.get("imputed_values", 0)))}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_store, initial=done, desc=f"convert {name}", unit="rows", unit_scale=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(_sha256, source.path)
        out = done
        first = dropped.source_row(done) if dropped is not None else done
        for start in range(first, n, per_block):
            stop = min(n, start + per_block)
            block = _as_float32(source.read_rows(start, stop))
            rows = np.arange(start, stop)
            if dropped is not None:
                keep = dropped.keep(start, stop)
                block, rows = block[keep], rows[keep]
            finite = np.isfinite(block)
            if not finite.all():
                bad = np.flatnonzero(~finite.all(axis=1))
                if nan_policy != "impute":  # "drop" left out every bad row already
                    raise _bad_rows_error(source.path, rows[bad], store)
                if means is None:
                    scan = _scan_finite(source, per_block)
                    means = scan.column_means(source.path).astype(np.float32)
                    arr.attrs["impute_column_means"] = {  # the columns that had NaN/Inf
                        str(j): float(means[j]) for j in np.flatnonzero(scan.column_count < n)
                    }
                block = np.where(finite, block, means)
                imputed["imputed_rows"] += len(bad)
                imputed["imputed_values"] += int((~finite).sum())
            try:
                arr[out : out + len(block)] = block
                arr.attrs.update({"rows_written": out + len(block), **imputed})
            except OSError as exc:
                full = disk_full_error(exc, store.path, f"writing descriptors/{name} rows "
                                       f"{out}-{out + len(block)} (rows before {out} are kept; the "
                                       "conversion resumes there)")
                if full is None:
                    raise
                raise full from exc
            out += len(block)
            if bar is not None:
                bar.update(len(block))
        arr.attrs.update({"source_sha256": digest.result(), "status": "complete"})
    if bar is not None:
        bar.close()
    store.consolidate()
    return True


def dropped_rows_report_path(store_path: str | os.PathLike[str]) -> Path | str:
    """Where ``nan_policy="drop"`` lists the dropped rows: ``<store stem>.dropped_rows.csv``
    next to the store (``case.zarr`` -> ``case.dropped_rows.csv``); a URL beside it for a URL store."""
    if is_url(store_path):
        scheme, _, rest = str(store_path).partition("://")
        head, _, tail = rest.rstrip("/").rpartition("/")
        if not head or not tail:
            raise InputError(f"{store_path}: a store at the root of a bucket has no folder for its "
                             f"dropped-rows report; put it in one ({scheme}://BUCKET/case.zarr).")
        return f"{scheme}://{head}/{Path(tail).stem}.dropped_rows.csv"
    p = Path(store_path)
    return p.with_name(f"{p.stem}.dropped_rows.csv")


def _replace_report(report: Path | str, text: str | None) -> None:
    """Write ``text`` to ``report`` (atomically when local), or delete ``report`` when ``text`` is None."""
    if not is_url(report):
        if text is None:
            Path(report).unlink(missing_ok=True)
        else:
            write_atomic(report, text)
        return
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(str(report))
        if text is None:
            if fs.exists(path):
                fs.rm(path)
            return
        if "file" in fs.protocol:  # object stores have no folders to create
            fs.makedirs(path.rpartition("/")[0], exist_ok=True)
        with fs.open(path, "w") as f:  # object stores publish a whole put; a local file:// is rewritten
            f.write(text)
    except Exception as exc:  # an unknown protocol, missing credentials, no network ...
        raise StoreError(f"{report}: cannot write the dropped-rows report "
                         f"({type(exc).__name__}: {one_line(exc)}).") from exc


def _find_dropped_rows(sources: dict[str, ArraySource], paths_csv: Path, n: int,
                       memory: str | int | None) -> _DroppedRows:
    """Scan every set once; rows with NaN/Inf in ANY set are dropped from all of them.

    The returned ``listing`` is the CSV text of the report (``row, path, set, reason``: one
    line per bad row and set, rows numbered as in the source files), None when no row is
    dropped; :func:`convert_case` writes it (or removes a stale one) once the store accepts the rows.
    """
    import csv as csv_module

    found = {name: _scan_finite(src, _block_rows(memory, src, min(1024, n))) for name, src in sources.items()}
    rows = np.unique(np.concatenate([f.bad_rows for f in found.values()] + [np.empty(0, np.int64)]))
    dropped = _DroppedRows(rows.astype(np.int64), n)
    if not len(rows):
        return dropped
    paths: dict[int, str] = {}
    start = 0
    for block in _path_blocks(paths_csv):
        wanted = rows[(rows >= start) & (rows < start + len(block))]
        paths.update({int(r): str(block[r - start]) for r in wanted})
        start += len(block)
    lines = io.StringIO()
    writer = csv_module.writer(lines)
    writer.writerow(["row", "path", "set", "reason"])
    entries = sorted((int(r), name, reason) for name, f in found.items()
                     for r, reason in zip(f.bad_rows, f.reasons))
    writer.writerows([r, paths[r], name, reason] for r, name, reason in entries)
    dropped.listing = lines.getvalue()
    return dropped


def _kept_paths(blocks: Iterator[np.ndarray], dropped: _DroppedRows | None) -> Iterator[np.ndarray]:
    """The path blocks without the dropped rows."""
    start = 0
    for block in blocks:
        yield block if dropped is None else block[dropped.keep(start, start + len(block))]
        start += len(block)


def _ids_written(store: CaseStore, paths_csv: Path, row_policy: str, n: int, n_kept: int) -> bool:
    """Whether the store already holds the complete ids of these images (same paths CSV, same rows
    kept); raises :class:`StoreError` when it holds descriptor sets of another number of images."""
    complete = "ids" in store.root and store.root["ids"].attrs.get("status") == "complete"
    ids_ok = complete and store.root["ids"].attrs.get("source_fingerprint") == _fingerprint(paths_csv) and \
        store.root["ids"].attrs.get("row_policy", "all") == row_policy
    if not ids_ok and complete and cast("zarr.Array", store.root["ids"]).shape[0] != n_kept \
            and store.descriptor_names():
        raise StoreError(
            f"{store.path}: already holds {cast('zarr.Array', store.root['ids']).shape[0]} images, "
            f"{paths_csv} lists {n_kept}"
            + (f" after dropping {n - n_kept} rows with NaN/Inf" if n_kept != n else "")
            + "; convert into a new store."
        )
    return ids_ok


def _check_sources(sources: dict[str, ArraySource], paths_csv: Path, n: int, memory: str | int | None) -> None:
    """Refuse, before anything is written, a source whose rows are not the ``n`` images of ``paths_csv``
    or whose one store chunk would not fit ``memory`` (:func:`_block_rows`)."""
    for src in sources.values():
        if src.shape[0] != n:
            raise InputError(
                f"{src.path}: has {src.shape[0]} rows but {paths_csv} lists {n} images; "
                "row i of every descriptor file must be image i of the paths CSV."
            )
        _block_rows(memory, src, min(chunk_rows_for(src.shape[1]), n))


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
    nan_policy: str = "fail",
    scheduler: str | None = None,
    client: Any = None,
) -> CaseStore:
    """Convert a case folder into a store (see :mod:`streamclust.io.store`).

    Parameters
    ----------
    case_dir : path
        Folder with ``descriptors/*`` and ``images_paths.csv``.
    out : path or str
        The ``.zarr`` store to create or resume: a folder, or an fsspec URL
        (``file:///shared/case.zarr``, ``s3://bucket/case.zarr``) a Dask cluster's workers read.
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
    nan_policy : {"fail", "drop", "impute"}
        Rows holding NaN or Inf (also float64 values beyond float32's range).
        ``"fail"`` (default): refuse, naming the file and its first bad rows.
        ``"drop"``: one more pass over every set finds them; a row bad in ANY set
        is left out of EVERY set and of the ids, so rows stay aligned; the ids'
        attributes count them and ``<store stem>.dropped_rows.csv`` next to the
        store lists ``row, path, set, reason`` (see :func:`dropped_rows_report_path`).
        ``"impute"``: each NaN/Inf becomes its column's mean over the finite values
        (one more pass over a set, only when it has a bad value); the array's
        attributes record the means and the counts.
    scheduler : str, optional
        ``"local:N"`` or a scheduler address (:mod:`streamclust.core.scheduler`),
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
        Its ids carry ``dropped_rows`` (count) and ``dropped_rows_report`` (path or None); its
        attributes record the case folder's metadata file and image source, found by
        :func:`find_case_metadata` and :func:`find_case_images` (:func:`recorded_case_files`), which
        :func:`~streamclust.study.run_study` uses unless told otherwise.

    Raises
    ------
    InputError
        A file is malformed, row counts differ, a path is bad, or (``"fail"``) a row
        holds NaN/Inf.
    StoreError
        The store holds another case, a set of another width, or the disk is full.
    """
    _check_policy(nan_policy)
    files = discover_case(case_dir, descriptors, paths_csv)
    check_output_path(out, "store", inputs=[files.paths_csv, *files.descriptors.values()])  # not CASE/case.zarr
    sources = {
        name: open_source(path, allow_restricted_pickle=allow_restricted_pickle, memory=memory)
        for name, path in files.descriptors.items()
    }
    n, max_len, blocks = _scan_paths_csv(files.paths_csv)
    _check_sources(sources, files.paths_csv, n, memory)
    report = dropped_rows_report_path(out) if nan_policy == "drop" else None
    dropped = _find_dropped_rows(sources, files.paths_csv, n, memory) if nan_policy == "drop" else None
    n_kept = dropped.n_kept if dropped is not None else n
    if n_kept == 0:  # no report written: it would replace the report of a store already at ``out``
        import csv

        assert dropped is not None  # n > 0 (read_paths_csv refuses no rows): n_kept == 0 only after dropping
        row, _, name, reason = list(csv.reader(io.StringIO(dropped.listing)))[1]
        raise InputError(f"{files.paths_csv}: every one of its {n} rows holds NaN or Inf in some set "
                         f"(row {row}: {reason} in {name}); nothing is left to convert.")
    row_policy = dropped.key if dropped is not None else "all"
    store = CaseStore(out, mode="a")
    ids_ok = _ids_written(store, files.paths_csv, row_policy, n, n_kept)
    first_path = str(next(_path_blocks(files.paths_csv, block_rows=1))[0])
    _record_case_files(store, Path(case_dir), first_path)  # before the writes below: each consolidates
    if dropped is not None:  # only once the store accepts these rows: a refused run keeps its report
        assert report is not None  # dropped is set only for nan_policy == "drop", as is report
        _replace_report(report, dropped.listing)
    if not ids_ok:
        try:
            store.write_ids(_kept_paths(blocks, dropped), n_kept, {
                "source": str(files.paths_csv),
                "source_size": files.paths_csv.stat().st_size,
                "source_fingerprint": _fingerprint(files.paths_csv),
                "row_policy": row_policy,
                "dropped_rows": n - n_kept,
                "dropped_rows_report": str(report) if n_kept != n else None,
            }, max_len=max_len)  # the longest of all rows, dropped ones too: at most a little wider
        except OSError as exc:
            full = disk_full_error(exc, store.path, "writing the image paths (ids)")
            if full is None:
                raise
            raise full from exc
    wrote = [convert_descriptor(store, name, src, memory=memory, progress=progress, nan_policy=nan_policy,
                                dropped=dropped) for name, src in sources.items()]
    if ids_ok and not any(wrote):  # nothing written (each write consolidated): a store of an older streamclust
        store.consolidate()       # gets its consolidated metadata
    return store
