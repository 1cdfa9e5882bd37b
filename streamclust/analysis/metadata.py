"""Per-image metadata: reading it aligned to a store's ids, and coding its attributes.

:func:`read_metadata` reads VeRi-Wild ``vehicle_info.txt`` or any CSV / Parquet
with a path column and aligns it to the store's ``(n,)`` image ids;
:func:`attribute_codes` picks the attribute columns to analyse and codes each
as ``(n,)`` integers.  The metadata DataFrame is in memory (it is small: a few
bytes per row and column once categorical).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streamclust.analysis.rows import as_plain
from streamclust.core.blocks import parse_memory, read_rows, release_memory
from streamclust.errors import InputError
from streamclust.io.lines import LineScan, read_span, scan_lines
from streamclust.io.sources import check_parquet_footer

__all__ = ["CONDITION_ATTRIBUTES", "VEHICLE_ATTRIBUTES", "attribute_codes", "read_metadata"]

#: Attributes describing the vehicle itself, in the order sentences mention them.
VEHICLE_ATTRIBUTES: tuple[str, ...] = ("color", "type", "view", "model")

#: Attributes describing acquisition conditions (nuisance for a descriptor set):
#: reported, but never used to recommend a set.
CONDITION_ATTRIBUTES: tuple[str, ...] = ("camera", "time", "date", "hour", "daytime")

_DEFAULT_ORDER = ("color", "type", "view", "model", "camera")
_MAX_VALUES = 10_000  # distinct values of a profiled attribute (count tables are dense)
_MAX_COLUMNS = 1_000  # columns of a metadata file: pandas costs ~10 KB and ~8 ms per column
_PATH_COLUMNS = ("path", "paths", "image", "file", "image_path", "img_path", "filename",
                 "file_name", "image_name", "img", "image_file")
_ALIASES = {
    "colour": "color", "vehicle_color": "color", "vehicle_colour": "color", "car_color": "color",
    "camera_id": "camera", "cam": "camera", "cam_id": "camera", "cameraid": "camera",
    "camera_name": "camera",
    "vehicle_type": "type", "body_type": "type", "car_type": "type",
    "vehicle_model": "model", "model_name": "model", "car_model": "model",
    "timestamp": "time", "datetime": "time", "date_time": "time",
}


def _snake(name: str) -> str:
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name).strip())
    s = re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").lower()
    return s or "column"


def _normalise_columns(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        s = _snake(name)
        s = _ALIASES.get(s, s)
        base, k = s, 2
        while s in out:
            s, k = f"{base}_{k}", k + 1
        out.append(s)
    return out


def _normalise_paths(values: Any) -> pd.Series:
    """Paths as strings with forward slashes, no leading ``./`` or ``/``, stripped.

    Uses pandas' ``str`` dtype (Arrow-backed, vectorised, when pyarrow is installed).
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    # object first: numpy's variable-width StringDType (zarr string arrays) cannot cast to "U"
    s = pd.Series(arr.astype(object), dtype="str")
    s = s.str.strip().str.replace("\\", "/", regex=False)
    return s.str.replace(r"^(\./|/)+", "", regex=True)


def _strip_ext(s: pd.Series) -> pd.Series:
    return s.str.replace(r"\.[^./]*$", "", regex=True)


def _basename(s: pd.Series) -> pd.Series:
    return s.str.replace(r"^.*/", "", regex=True)


def _last_two(s: pd.Series) -> pd.Series:
    """``a/b/00001/000001.jpg`` -> ``00001/000001``."""
    return _strip_ext(s).str.replace(r"^.*/([^/]*/[^/]*)$", r"\1", regex=True)


def _strip_zeros(s: pd.Series) -> pd.Series:
    """``00001/000010`` -> ``1/10`` (no look-ahead: Arrow's RE2 has none)."""
    return s.str.replace(r"(^|/)0+([0-9])", r"\1\2", regex=True)


def _read_header(path: Path, budget: int) -> tuple[str, str, LineScan]:
    """The first two non-blank lines (text) and the file's line scan; a line longer than the budget
    admits is refused by number before anything is parsed (:func:`~streamclust.io.lines.scan_lines`)."""
    scan = scan_lines(path, budget, keep=2)
    if not scan.head:
        raise InputError(f"{path}: empty metadata file.")
    try:
        lines = [read_span(path, start, stop) for _, start, stop in scan.head]
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc}).") from exc
    text = [line.decode("utf-8-sig" if i == 0 else "utf-8", errors="replace") for i, line in enumerate(lines)]
    return text[0], (text[1] if len(text) > 1 else ""), scan


def _check_size(path: Path, n_rows: int, n_columns: int, n_bytes: int, budget: int) -> None:
    """Refuse a metadata table that would not fit half the memory budget once read (pandas holds
    it whole: about 8 bytes per byte of text and 16 per cell), or that has absurdly many columns."""
    if n_columns > _MAX_COLUMNS:
        raise InputError(
            f"{path}: has {n_columns:,} columns; a metadata file has one column per attribute (at most "
            f"{_MAX_COLUMNS:,}); is it the right file?"
        )
    need = 8 * n_bytes + 16 * n_rows * n_columns
    if need > budget // 2:
        raise InputError(
            f"{path}: {n_rows:,} lines x {n_columns:,} columns ({n_bytes / 2**20:,.1f} MiB) would take about "
            f"{need / 2**20:,.0f} MiB once read, more than half the memory budget ({budget / 2**20:,.0f} MiB); "
            f"keep only the path and attribute columns of the images studied, or give --memory "
            f"{-(-2 * need // 2**20)}MiB or more."
        )


def _read_table(path: Path, sep: str, header: int | None, names: list[str] | None,
                quoting: int = csv.QUOTE_MINIMAL) -> pd.DataFrame:
    try:  # undecodable bytes become U+FFFD rather than failing a 416k-line file
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, header=header,
                           names=names, encoding="utf-8-sig", encoding_errors="replace",
                           skip_blank_lines=True, quoting=quoting)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path}: empty metadata file.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: cannot parse as {sep!r}-separated metadata ({exc}).") from exc


def _clean_frame(df: pd.DataFrame, key_col: str) -> pd.DataFrame:
    """Strip strings, empty -> NA; numbers stay numeric, ``time`` parsed, other strings categorical."""
    out = {}
    for col in df.columns:
        values = df[col]
        if col == key_col or values.dtype.kind in "iufbM" \
                or isinstance(values.dtype, pd.CategoricalDtype):
            out[col] = values
            continue
        text = values.astype("str").str.strip()
        text = text.mask(text == "")
        known = text.notna().to_numpy()
        if col in ("time", "date") and known.any():
            parsed = pd.to_datetime(text, format="%Y-%m-%d %H:%M:%S", errors="coerce")
            if parsed[known].isna().mean() > 0.1:
                parsed = pd.to_datetime(text, errors="coerce", format="mixed")
            if parsed[known].notna().mean() >= 0.9:
                out[col] = parsed
                continue
        head = text[known][:200]
        if known.any() and col != "camera" and pd.to_numeric(head, errors="coerce").notna().all():
            numeric = pd.to_numeric(text, errors="coerce")
            if numeric[known].notna().all():
                out[col] = numeric
                continue
        out[col] = text.astype("category")
    return pd.DataFrame(out, index=df.index)


def _read_raw(p: Path, budget: int) -> tuple[pd.DataFrame, str]:
    """The metadata file as read, column names normalised, and its format; a file that would not
    fit the budget ``budget`` (bytes) once read is refused first (:func:`_check_size`).

    Returns
    -------
    raw : pandas.DataFrame, shape (n_metadata_rows, n_columns)
        Strings as read (Parquet: its dtypes).  A VeRi-Wild file's key column is
        named ``__key__``.
    fmt : str
        ``"parquet"``, ``"veriwild"`` or ``"csv"``.
    """
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            check_parquet_footer(p, budget)
            meta = pq.ParquetFile(p).metadata
            _check_size(p, meta.num_rows, meta.num_columns,
                        sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)), budget)
            raw = pd.read_parquet(p)
        except InputError:
            raise
        except Exception as exc:  # pyarrow raises many types
            raise InputError(f"{p}: cannot read as Parquet ({exc}).") from exc
        raw.columns = _normalise_columns([str(c) for c in raw.columns])
        fmt = "parquet"
    else:
        header, first, scan = _read_header(p, budget)
        counts = {s: header.count(s) for s in (",", ";", "\t", "|")}
        _check_size(p, scan.n_data_lines, 1 + max(counts.values()), scan.n_bytes, budget)
        head_fields = [f.strip() for f in header.split(";")]
        key_like = re.compile(r"^\s*\d+/\d+\s*$")
        if ";" in header and (head_fields[0].lower().replace(" ", "") in ("id/image", "id/img")
                              or key_like.match(head_fields[0])):
            has_header = not key_like.match(head_fields[0])
            names = None
            if not has_header:
                default = ["id/image", "Camera ID", "Time", "Model", "Type", "Color"]
                n_fields = len(head_fields)
                names = (default + [f"column_{i}" for i in range(6, n_fields)])[:n_fields]
            raw = _read_table(p, ";", 0 if has_header else None, names, csv.QUOTE_NONE)
            cols = _normalise_columns([str(c) for c in raw.columns])
            cols[0] = "__key__"
            raw.columns = cols
            fmt = "veriwild"
        else:
            sep = max(counts, key=counts.get)
            if counts[sep] == 0:
                sep = ","
            raw = _read_table(p, sep, 0, None)
            raw.columns = _normalise_columns([str(c) for c in raw.columns])
            fmt = "csv"
    if len(raw) == 0:
        raise InputError(f"{p}: the metadata file has a header but no rows.")
    return raw, fmt


def _match_keys(
    p: Path, raw: pd.DataFrame, fmt: str, ids_norm: pd.Series,
) -> tuple[str, pd.Series, pd.Series, list[tuple[str, Any, Any]]]:
    """The key column of ``raw``, the keys of both sides and the matching strategies.

    Returns
    -------
    key_col : str
    meta_base : pandas.Series, shape (n_metadata_rows,)
        Key of every metadata row.
    id_base : pandas.Series, shape (n,)
        Key of every image id.
    strategies : list of (method, id key function, metadata key function)
        Tried in order by :func:`_match_rows`.
    """
    if fmt == "veriwild":
        key_col = "__key__"
        meta_base = _strip_ext(_normalise_paths(raw[key_col].to_numpy()))
        id_base = _last_two(ids_norm)
        # (method, key of the ids, key of the metadata rows): tried in order, built lazily
        strategies = [("key", lambda s: s, lambda s: s),
                      ("key_without_zeros", _strip_zeros, _strip_zeros)]
    else:
        found = [c for c in _PATH_COLUMNS if c in raw.columns]
        if not found:
            raise InputError(
                f"{p}: no path column; name one of {list(_PATH_COLUMNS[:4])} "
                f"(the file has columns {list(raw.columns)})."
            )
        key_col = found[0]
        meta_base = _normalise_paths(raw[key_col].to_numpy())
        id_base = ids_norm
        strategies = [("path", lambda s: s, lambda s: s),
                      ("basename", _basename, _basename),
                      ("stem", lambda s: _strip_ext(_basename(s)), lambda s: _strip_ext(_basename(s)))]
    return key_col, meta_base, id_base, strategies


def _match_rows(
    meta_base: pd.Series, id_base: pd.Series, strategies: list[tuple[str, Any, Any]], n: int,
) -> tuple[np.ndarray, dict[str, int]]:
    """Metadata row of every id, trying the strategies in order on the ids still unmatched.

    Returns
    -------
    pos : ndarray of int64, shape (n,)
        Row of ``meta_base`` matched by each id, ``-1`` when none.
    methods : dict of str to int
        Ids matched by each strategy.
    """
    pos = np.full(n, -1, dtype=np.int64)
    methods: dict[str, int] = {}
    for i, (method, id_fn, meta_fn) in enumerate(strategies):
        todo = pos < 0
        if not todo.any():
            break
        mk, ik = meta_fn(meta_base), id_fn(id_base)
        if i == 0:
            found_pos = pd.Index(mk).get_indexer(ik[todo])
        else:  # fallback keys count only where unique on both sides
            unique_meta = ~mk.duplicated(keep=False).to_numpy()
            unique_ids = ~ik.duplicated(keep=False).to_numpy()
            found_pos = pd.Index(mk[unique_meta]).get_indexer(ik[todo])
            found_pos = np.where((found_pos >= 0) & unique_ids[todo],
                                 np.flatnonzero(unique_meta)[np.maximum(found_pos, 0)], -1)
        new = found_pos >= 0
        if new.any():
            idx = np.flatnonzero(todo)
            pos[idx[new]] = found_pos[new]
            methods[method] = int(new.sum())
    return pos, methods


def read_metadata(path: str | os.PathLike[str], ids: Any, *, min_match: float = 0.5,
                  memory: str | int | None = None) -> pd.DataFrame:
    """Read per-image metadata and align it to the image ids of a store.

    Formats (detected from the content, not the name):

    * **VeRi-Wild** ``vehicle_info.txt``: ``;``-separated, header
      ``id/image;Camera ID;Time;Model;Type;Color`` (a file without the header is
      accepted when its first field looks like ``00001/000001``), lines like
      ``00001/000001;c004;2018-03-04 09:33:10; Audi A4; sedan; white``; values
      are stripped.  The key ``<vehicle id>/<image id>`` is matched against the
      last two path components of each id without extension (then, for the ids
      left, with leading zeros removed from both).
    * **CSV** (``,``, ``;``, tab or ``|`` separated) or **Parquet** with a path
      column (``path``, ``paths``, ``image``, ``file``, ``filename``, ...) and any
      attribute columns.  Paths are normalised (backslashes -> ``/``, leading
      ``./`` removed) and matched on the full path; ids left unmatched are then
      matched on the basename, then on the basename without extension, where that
      is unique on both sides.

    Parameters
    ----------
    path : str or os.PathLike
        The metadata file.
    ids : array-like of str, shape (n,)
        Image paths in store order (e.g. ``CaseStore.ids``, a Zarr array; read
        whole: a few tens of MB for 416k ids).
    min_match : float, default 0.5
        Smallest fraction of ids that must match a metadata row.
    memory : str or int, optional
        Memory budget (default 1 GiB).  The file is walked once in 1 MiB reads first: a line longer
        than the budget admits (8 MiB at 1 GiB), more than 1,000 columns, or a table that would take
        more than half the budget once read (about 8 bytes per byte of text and 16 per cell: a
        416,314-row ``vehicle_info.txt``, 25 MB, takes about 240 MB) is refused before parsing.

    Returns
    -------
    pandas.DataFrame, shape (n, n_attributes)
        Row ``i`` describes ``ids[i]`` (RangeIndex).  Column names are
        snake_case with the usual aliases (``Camera ID`` -> ``camera``,
        ``colour`` -> ``color``); strings are categorical, numbers numeric,
        ``time`` is datetime64 when it parses; unmatched rows are NA.
        ``.attrs`` holds ``source``, ``format``, ``n_rows``, ``n_matched``,
        ``match_rate``, ``match_methods`` (rows matched by each method),
        ``duplicate_keys`` (metadata rows dropped because their key was already
        seen: the first wins) and ``n_metadata_rows``.

    Raises
    ------
    InputError
        If the file is missing, empty, unparsable or too large for the budget, has
        no path column, or fewer than ``min_match`` of the ids match (the message
        shows three example keys from each side).
    """
    df = _read_aligned(Path(path), ids, min_match, memory)
    release_memory()  # the parse's text and frames (much of it in pyarrow's pool) go back to the system
    return df


def _read_aligned(p: Path, ids: Any, min_match: float, memory: str | int | None) -> pd.DataFrame:
    """:func:`read_metadata`'s work, its temporaries freed when it returns."""
    if not p.is_file():
        raise InputError(f"{p}: no such metadata file.")
    ids = as_plain(ids)
    ids_norm = _normalise_paths(ids if isinstance(ids, np.ndarray) else read_rows(ids, slice(None)))
    n = len(ids_norm)
    if n == 0:
        raise InputError(f"{p}: no image ids to align the metadata to.")

    raw, fmt = _read_raw(p, parse_memory(memory))
    key_col, meta_base, id_base, strategies = _match_keys(p, raw, fmt, ids_norm)

    # duplicates: the first row of a key wins
    dup = meta_base.duplicated(keep="first").to_numpy()
    n_dup = int(dup.sum())
    raw = raw.loc[~dup].reset_index(drop=True)
    meta_base = meta_base[~dup].reset_index(drop=True)

    pos, methods = _match_rows(meta_base, id_base, strategies, n)
    matched = int((pos >= 0).sum())
    rate = matched / n
    if rate < min_match:
        ex_meta = list(meta_base.head(3))
        ex_ids = list(id_base.head(3))
        raise InputError(
            f"{p}: only {matched:,} of {n:,} image ids ({rate:.1%}) match a row of this "
            f"metadata file (at least {min_match:.0%} needed); example keys in the file: "
            f"{ex_meta}; example keys from the image ids: {ex_ids}.  Is it the metadata "
            "of this case?"
        )

    raw = _clean_frame(raw, key_col).drop(columns=[key_col])
    # unmatched ids (pos -1) are not in the RangeIndex of raw: reindex leaves them NA
    df = raw.reindex(pos).reset_index(drop=True)
    df.attrs.update({
        "source": str(p), "format": fmt, "n_rows": n, "n_matched": matched, "match_rate": rate,
        "match_methods": methods, "duplicate_keys": n_dup, "n_metadata_rows": int(len(raw) + n_dup),
    })
    return df


def attribute_codes(
    attributes: pd.DataFrame | None, columns: Sequence[str] | None, n: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (codes (n,) int, -1 = missing; values (m,))}`` of the attributes profiled."""
    if attributes is None:
        if columns:
            raise InputError(f"attribute_columns={list(columns)} given without attributes.")
        return {}
    if not isinstance(attributes, pd.DataFrame):
        raise InputError(f"attributes must be a pandas DataFrame aligned to the rows, got {type(attributes).__name__}.")
    if len(attributes) != n:
        source = attributes.attrs.get("source", "attributes")
        raise InputError(f"{source}: has {len(attributes):,} rows but the labels have {n:,}; "
                         "align the metadata to the store ids with read_metadata.")
    if columns is None:
        chosen = [c for c in _DEFAULT_ORDER if c in attributes.columns]
        for c in attributes.columns:
            if c in chosen or c in CONDITION_ATTRIBUTES or c in _PATH_COLUMNS:
                continue
            col = attributes[c]
            if col.dtype.kind in "iufcM" or col.dtype.kind == "m":
                continue
            if 2 <= col.nunique(dropna=True) <= 1000:
                chosen.append(c)
    else:
        missing = [c for c in columns if c not in attributes.columns]
        if missing:
            raise InputError(f"attribute column(s) {missing} not in the metadata; it has "
                             f"{list(attributes.columns)}.")
        chosen = list(columns)
    out = {}
    for c in chosen:
        col = attributes[c]
        n_values = col.nunique(dropna=True)
        if n_values > _MAX_VALUES:
            raise InputError(
                f"attribute column {c!r} has {n_values:,} distinct values (at most {_MAX_VALUES:,}); "
                "bin it first (e.g. hour of the day from the time) or leave it out.")
        if isinstance(col.dtype, pd.CategoricalDtype):
            codes = col.cat.codes.to_numpy().astype(np.int64)
            values = np.asarray(col.cat.categories.astype(object))
        else:
            codes, uniques = pd.factorize(col, sort=True)
            codes = codes.astype(np.int64)
            values = np.asarray(uniques.astype(object))
        out[c] = (codes, values)
    return out
