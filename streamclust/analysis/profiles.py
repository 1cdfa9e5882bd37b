"""What is in each cluster of one labelling, said in one sentence per cluster.

:func:`profile_clusters` builds, for one ``(n,)`` labelling, contingency tables
of cluster x attribute value (accumulated block by block, so the labels may be
Zarr or Dask arrays of any length), the over-represented values of every
cluster, agreement scores between clusters and attributes (purity, NMI, AMI,
ARI -- equal to scikit-learn's label-based functions) and ONE sentence per
cluster that says only what the counts support.  :func:`cluster_spread` gives
the mean distance to the centroid per cluster (two block-wise passes), which the
sentences use to call clusters compact or diffuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from streamclust.analysis.contingency import Counts, contingency_scores
from streamclust.analysis.metadata import attribute_codes
from streamclust.analysis.rows import (
    as_plain,
    checked_label_block,
    count_rows,
    iter_aligned,
    label_block_rows,
)
from streamclust.core.blocks import block_rows_for
from streamclust.errors import InputError

__all__ = ["ClusterProfiles", "cluster_spread", "profile_clusters"]

_ACRONYMS = {"suv": "SUV", "mpv": "MPV", "suvs": "SUVs", "mpvs": "MPVs"}
_PLURAL_EXCEPTIONS = {"bus": "buses", "minibus": "minibuses", "suv": "SUVs", "mpv": "MPVs",
                      "coach": "coaches", "taxi": "taxis", "lorry": "lorries"}


@dataclass
class ClusterProfiles:
    """What is in each cluster of one labelling (see :func:`profile_clusters`).

    Attributes
    ----------
    n_rows : int
        Rows labelled.
    sizes : pandas.Series, shape (n_groups,)
        Rows per cluster, indexed by label (noise ``-1`` is a group of its own).
    shares : pandas.Series, shape (n_groups,)
        ``sizes / n_rows``.
    table : pandas.DataFrame, shape (n_entries, 8)
        Long format, the ``top`` most frequent values of every cluster x
        attribute: ``cluster``, ``attribute``, ``value``, ``count``,
        ``share_in_cluster`` (among the cluster's rows with a known value),
        ``share_overall`` (of the value among all rows with a known value),
        ``lift`` (= share_in_cluster / share_overall) and ``rank`` (1 = most
        frequent in the cluster).
    agreement : pandas.DataFrame, shape (n_attributes, 7)
        One row per attribute: ``attribute``, ``n`` (rows with a known value),
        ``n_values``, ``purity``, ``nmi``, ``ami``, ``ari`` (see
        :func:`contingency_scores`).
    sentences : dict of int to str
        One sentence per cluster.
    contingency : dict of str to pandas.DataFrame
        Full count table per attribute, shape (n_groups, n_values).
    outlier_rate : pandas.Series or None, shape (n_groups,)
        Fraction of flagged rows per cluster (when flags were given).
    overall_outlier_rate : float or None
    spread_ratio : pandas.Series or None
        Mean distance to centroid relative to the median over clusters (when
        ``spread`` was given).
    clusters : pandas.DataFrame, shape (n_groups, ...)
        One row per cluster: size, share, outlier rate, spread ratio, top value
        and its share for every attribute, and the sentence.
    attributes : list of str
        Attributes profiled.
    """

    n_rows: int
    sizes: pd.Series
    shares: pd.Series
    table: pd.DataFrame
    agreement: pd.DataFrame
    sentences: dict[int, str]
    contingency: dict[str, pd.DataFrame] = field(default_factory=dict)
    outlier_rate: pd.Series | None = None
    overall_outlier_rate: float | None = None
    spread_ratio: pd.Series | None = None
    clusters: pd.DataFrame | None = None
    attributes: list[str] = field(default_factory=list)


def _pct(x: float) -> str:
    if x >= 0.995:
        return "100%" if x >= 1 else "99%"
    if x < 0.01:
        return "<1%" if x > 0 else "0%"
    return f"{x * 100:.0f}%"


def _display(value: Any) -> str:
    s = str(value).strip()
    return _ACRONYMS.get(s.lower(), s)


def _plural(word: str) -> str:
    """``sedan`` -> ``sedans``, ``suv`` -> ``SUVs``, ``bus`` -> ``buses``; the last word of a phrase."""
    s = str(word).strip()
    head, _, last = s.rpartition(" ")
    low = last.lower()
    if low in _PLURAL_EXCEPTIONS:
        new = _PLURAL_EXCEPTIONS[low]
    elif last.isupper() and len(last) <= 4:
        new = last + "s"
    elif low.endswith(("s", "x", "z", "ch", "sh")):
        new = last + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        new = last[:-1] + "ies"
    else:
        new = last + "s"
    return f"{head} {new}" if head else new


def _top_values(counts: pd.Series, overall: pd.Series, top: int) -> list[tuple[Any, int, float, float]]:
    """``[(value, count, share, lift)]`` of a cluster's top values, most frequent first."""
    known = int(counts.sum())
    if known == 0:
        return []
    order = counts[counts > 0].sort_values(ascending=False, kind="stable").head(top)
    out = []
    for value, cnt in order.items():
        share = cnt / known
        lift = share / overall[value] if overall[value] > 0 else float("nan")
        out.append((value, int(cnt), float(share), float(lift)))
    return out


def _plural_display(value: Any) -> str:
    return _plural(_display(value))


def _dominant(tops: list, name: Any, second: float = 0.2) -> str:
    """``"trucks (50%)"``, or ``"trucks (50%) and buses (45%)"`` when the runner-up is common."""
    text = f"{name(tops[0][0])} ({_pct(tops[0][2])})"
    if len(tops) > 1 and tops[1][2] >= second:
        text += f" and {name(tops[1][0])} ({_pct(tops[1][2])})"
    return text


def _mixed(label: str, tops: list, top: int) -> str:
    items = []
    for i, (v, _, s, lift) in enumerate(tops[:max(2, min(top, 3))]):
        if i > 0 and s < 0.1:
            break
        text = f"{_display(v)} {_pct(s)}"
        if i == 0 and lift >= 1.5:
            text += f" ({lift:.1f}x overall)"
        items.append(text)
    return f"mixed {label}: " + ", ".join(items)


def _sentence(
    cluster: int, size: int, share: float, tops: dict[str, list], *, dominant: float, top: int,
    outlier_rate: float | None, overall_rate: float | None, spread_ratio: float | None,
    has_metadata: bool, set_name: str | None,
) -> str:
    head = "Noise (label -1" if cluster == -1 else f"Cluster {cluster} ("
    head += ("; " if cluster == -1 else "") + f"{size:,} images, {share:.1%} of all)"
    if set_name:
        head = f"{set_name}: {head}"
    clauses: list[str] = []
    if cluster == -1:
        clauses.append("rows the clustering left unassigned")
    if has_metadata and not any(tops.values()):
        clauses.append("none of its images has metadata: see the montage")
    elif has_metadata:
        color, vtype = tops.get("color"), tops.get("type")
        col_dom = bool(color) and color[0][2] >= dominant
        typ_dom = bool(vtype) and vtype[0][2] >= dominant
        subject = ""
        if col_dom:
            subject = f"mostly {_dominant(color, lambda v: _display(v))}"
            subject += f" {_dominant(vtype, _plural_display)}" if typ_dom else " vehicles"
        elif typ_dom:
            subject = f"mostly {_dominant(vtype, _plural_display)}"
        if subject:
            clauses.append(subject)
        if color and not col_dom:
            clauses.append(_mixed("colours", color, top))
        if vtype and not typ_dom:
            clauses.append(_mixed("types", vtype, top))
        for attr, tv in tops.items():
            if attr in ("color", "type") or not tv:
                continue
            value, _, s, lift = tv[0]
            if s >= dominant:
                if attr == "view":
                    clauses.append(_dominant(tv, lambda v: f"{_display(v)} view"))
                elif attr == "model":
                    clauses.append("model " + _dominant(tv, lambda v: _display(v)))
                elif attr == "camera":
                    clauses.append("mostly from camera " + _dominant(tv, lambda v: _display(v)))
                else:
                    clauses.append(f"{attr.replace('_', ' ')} " + _dominant(tv, lambda v: _display(v)))
            elif s >= 0.2 and lift >= 2.0:
                clauses.append(f"over-represented {attr.replace('_', ' ')} {_display(value)} "
                               f"({_pct(s)}, {lift:.1f}x overall)")
        if size < 30:
            clauses.append("few images, so the shares are rough")
    if spread_ratio is not None and np.isfinite(spread_ratio):
        if spread_ratio < 0.8:
            clauses.append(f"compact (spread {spread_ratio:.2f}x the median cluster's)")
        elif spread_ratio > 1.25:
            clauses.append(f"diffuse (spread {spread_ratio:.2f}x the median cluster's)")
        elif not has_metadata:
            clauses.append(f"typical spread ({spread_ratio:.2f}x the median cluster's)")
    if outlier_rate is not None:
        notable = overall_rate is not None and outlier_rate >= 2 * overall_rate \
            and outlier_rate >= overall_rate + 0.02
        if notable or not has_metadata:
            text = f"{_pct(outlier_rate)} flagged as outliers"
            if overall_rate is not None:
                text += f" ({_pct(overall_rate)} overall)"
            clauses.append(text)
    if not has_metadata:
        clauses.append("no metadata: see the montage")
    if not clauses:
        clauses.append("no attribute value stands out")
    return f"{head}: {'; '.join(clauses)}."


def _contingencies(
    labels: Any, codes: dict[str, tuple[np.ndarray, np.ndarray]], outlier_flags: Any,
    block_rows: int, name: str,
) -> tuple[pd.Series, dict[str, Counts], Counts | None]:
    """One pass: label sizes, cluster x attribute counts, cluster x flag counts."""
    sizes = Counts()
    tables = {a: Counts() for a in codes}
    flags_t = Counts() if outlier_flags is not None else None
    arrays = [labels] + ([outlier_flags] if outlier_flags is not None else [])
    for rows, blocks in iter_aligned(arrays, block_rows):
        lab = checked_label_block(blocks[0], name, rows.start)
        sizes.add(lab, np.zeros(1, np.int64).repeat(len(lab)))
        for attr, (c, _) in codes.items():
            cb = c[rows]
            known = cb >= 0
            tables[attr].add(lab[known], cb[known])
        if flags_t is not None:
            fl = np.asarray(blocks[1]).reshape(-1)
            if fl.dtype.kind == "f":
                fl = np.where(np.isnan(fl), 0, fl)
            flags_t.add(lab, (fl != 0).astype(np.int64))
    size_series = pd.Series(sizes.table[:, 0] if sizes.table.size else np.empty(0, np.int64),
                            index=pd.Index(sizes.rows, name="cluster"), name="size")
    return size_series, tables, flags_t


def _attribute_tables(
    tables: dict[str, Counts], codes: dict[str, tuple[np.ndarray, np.ndarray]], clusters: pd.Index, top: int,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame, dict[int, dict[str, list]]]:
    """Per attribute: the full count table, its agreement scores and every cluster's top values.

    Returns
    -------
    contingency : dict of str to pandas.DataFrame, shape (n_groups, n_values)
    table : pandas.DataFrame, shape (n_entries, 8)
        As :attr:`ClusterProfiles.table`.
    agreement : pandas.DataFrame, shape (n_attributes, 7)
        As :attr:`ClusterProfiles.agreement`.
    tops_by_cluster : dict of int to dict of str to list
        ``{cluster: {attribute: [(value, count, share, lift)]}}``.
    """
    contingency: dict[str, pd.DataFrame] = {}
    table_parts = []
    agreement_rows = []
    tops_by_cluster: dict[int, dict[str, list]] = {int(c): {} for c in clusters}
    for attr, counts in tables.items():
        values = codes[attr][1]
        frame = pd.DataFrame(counts.table, index=pd.Index(counts.rows, name="cluster"),
                             columns=pd.Index(values[counts.cols], name=attr))
        frame = frame.reindex(clusters, fill_value=0)
        contingency[attr] = frame
        scores = contingency_scores(frame.to_numpy())
        agreement_rows.append({"attribute": attr, "n": scores["n"], "n_values": frame.shape[1],
                               "purity": scores["purity"], "nmi": scores["nmi"],
                               "ami": scores["ami"], "ari": scores["ari"]})
        overall = frame.sum(axis=0)
        overall_share = overall / max(1, int(overall.sum()))
        for c in clusters:
            tv = _top_values(frame.loc[c], overall_share, top)
            tops_by_cluster[int(c)][attr] = tv
            for rank, (v, cnt, s, lift) in enumerate(tv, start=1):
                table_parts.append((int(c), attr, v, cnt, s, float(overall_share[v]), lift, rank))
    table = pd.DataFrame(table_parts, columns=["cluster", "attribute", "value", "count",
                                               "share_in_cluster", "share_overall", "lift", "rank"])
    agreement = pd.DataFrame(agreement_rows, columns=["attribute", "n", "n_values", "purity",
                                                      "nmi", "ami", "ari"])
    return contingency, table, agreement, tops_by_cluster


def _outlier_rates(
    flags_t: Counts | None, clusters: pd.Index, sizes: pd.Series, n: int,
) -> tuple[pd.Series | None, float | None]:
    """Fraction of flagged rows per cluster, shape (n_groups,), and overall (``None`` without flags)."""
    outlier_rate = overall_rate = None
    if flags_t is not None:
        flagged = pd.Series(0, index=clusters, dtype=np.int64)
        if 1 in flags_t.cols:
            j = int(np.searchsorted(flags_t.cols, 1))
            flagged = pd.Series(flags_t.table[:, j], index=pd.Index(flags_t.rows, name="cluster"))
            flagged = flagged.reindex(clusters, fill_value=0)
        outlier_rate = (flagged / sizes).rename("outlier_rate")
        overall_rate = float(flagged.sum() / n)
    return outlier_rate, overall_rate


def _spread_ratio(spread: Mapping[int, float] | None, clusters: pd.Index) -> pd.Series | None:
    """Spread of every cluster over the median spread (noise excluded), shape (n_groups,)."""
    spread_ratio = None
    if spread is not None:
        sp = pd.Series({int(k): float(v) for k, v in dict(spread).items()}, dtype=np.float64)
        sp = sp.reindex(clusters)
        base = sp.drop(index=-1, errors="ignore").median()
        spread_ratio = (sp / base if base and np.isfinite(base) and base > 0 else sp * np.nan)
        spread_ratio = spread_ratio.rename("spread_ratio")
    return spread_ratio


def _cluster_sentences(
    sizes: pd.Series, shares: pd.Series, tops_by_cluster: dict[int, dict[str, list]], *,
    dominant: float, top: int, outlier_rate: pd.Series | None, overall_rate: float | None,
    spread_ratio: pd.Series | None, has_meta: bool, set_name: str | None,
) -> dict[int, str]:
    """One sentence per cluster (see :func:`_sentence`), in the order of ``sizes``."""
    sentences = {}
    for c in sizes.index:
        ci = int(c)
        sentences[ci] = _sentence(
            ci, int(sizes[c]), float(shares[c]), tops_by_cluster[ci], dominant=dominant, top=top,
            outlier_rate=None if outlier_rate is None else float(outlier_rate[c]),
            overall_rate=overall_rate,
            spread_ratio=None if spread_ratio is None else float(spread_ratio[c]),
            has_metadata=has_meta, set_name=set_name,
        )
    return sentences


def _summary(
    sizes: pd.Series, shares: pd.Series, outlier_rate: pd.Series | None, spread_ratio: pd.Series | None,
    attributes: list[str], tops_by_cluster: dict[int, dict[str, list]], sentences: dict[int, str],
) -> pd.DataFrame:
    """One row per cluster, shape (n_groups, ...): as :attr:`ClusterProfiles.clusters`."""
    clusters = sizes.index
    summary = pd.DataFrame({"size": sizes, "share": shares})
    if outlier_rate is not None:
        summary["outlier_rate"] = outlier_rate
    if spread_ratio is not None:
        summary["spread_ratio"] = spread_ratio
    for attr in attributes:
        summary[f"top_{attr}"] = [tops_by_cluster[int(c)][attr][0][0] if tops_by_cluster[int(c)][attr]
                                  else None for c in clusters]
        summary[f"top_{attr}_share"] = [tops_by_cluster[int(c)][attr][0][2]
                                        if tops_by_cluster[int(c)][attr] else np.nan for c in clusters]
    summary["sentence"] = [sentences[int(c)] for c in clusters]
    return summary


def profile_clusters(
    labels: Any,
    attributes: pd.DataFrame | None = None,
    *,
    outlier_flags: Any = None,
    attribute_columns: Sequence[str] | None = None,
    top: int = 3,
    spread: Mapping[int, float] | None = None,
    dominant: float = 0.5,
    set_name: str | None = None,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> ClusterProfiles:
    """Profile every cluster of one labelling against per-image attributes.

    Counts are accumulated block by block over the rows (labels and flags may be
    numpy, Zarr or Dask arrays; the attribute DataFrame is sliced to the same
    rows), so memory is one block plus the count tables.

    Parameters
    ----------
    labels : array-like of int, shape (n,)
        Cluster of every row; ``-1`` (noise) is profiled as a group of its own.
    attributes : pandas.DataFrame, shape (n, n_columns), optional
        Per-image metadata aligned to the rows by position (see
        :func:`~streamclust.analysis.metadata.read_metadata`).  Without it the sentences say only what the
        statistics support.
    outlier_flags : array-like of bool, shape (n,), optional
        Rows flagged as outliers; gives each cluster's outlier rate.
    attribute_columns : sequence of str, optional
        Attributes to profile.  Default: ``color``, ``type``, ``view``,
        ``model``, ``camera`` when present, then every other non-numeric column
        with 2 to 1000 distinct values (acquisition time excluded).  A column
        with more than 10,000 distinct values is refused (bin it first).
    top : int, default 3
        Values per cluster x attribute kept in ``table`` and named in mixed
        sentences.
    spread : mapping of int to float, optional
        Mean distance to the centroid per cluster (e.g. :func:`cluster_spread`);
        sentences call a cluster compact below 0.8x and diffuse above 1.25x the
        median over clusters (noise excluded from the median).
    dominant : float, default 0.5
        A value whose share in the cluster reaches this is said to dominate
        ("mostly white (81%)"); below it the top values are listed as mixed.
    set_name : str, optional
        Prefix of the sentences.
    memory : str or int, optional
        Memory budget of the pass (default 1 GiB); sets the block size.
    block_rows : int, optional
        Rows per block (overrides ``memory``).

    Returns
    -------
    ClusterProfiles

    Raises
    ------
    InputError
        If the lengths differ, labels are not integers, or a requested
        attribute column is missing.
    """
    labels = as_plain(labels)
    n = count_rows(labels)
    if n == 0:
        raise InputError("labels: no rows to profile.")
    if outlier_flags is not None:
        outlier_flags = as_plain(outlier_flags)
        if count_rows(outlier_flags) != n:
            raise InputError(f"outlier_flags has {count_rows(outlier_flags):,} rows, labels {n:,}.")
    if top < 1:
        raise InputError(f"top={top} should be >= 1.")
    codes = attribute_codes(attributes, attribute_columns, n)
    rows_per_block = label_block_rows(memory, block_rows, 2 + len(codes))
    sizes, tables, flags_t = _contingencies(labels, codes, outlier_flags, rows_per_block,
                                            set_name or "labels")
    clusters = sizes.index
    shares = (sizes / n).rename("share")

    contingency, table, agreement, tops_by_cluster = _attribute_tables(tables, codes, clusters, top)
    outlier_rate, overall_rate = _outlier_rates(flags_t, clusters, sizes, n)
    spread_ratio = _spread_ratio(spread, clusters)
    sentences = _cluster_sentences(
        sizes, shares, tops_by_cluster, dominant=dominant, top=top, outlier_rate=outlier_rate,
        overall_rate=overall_rate, spread_ratio=spread_ratio, has_meta=bool(codes), set_name=set_name)
    summary = _summary(sizes, shares, outlier_rate, spread_ratio, list(codes), tops_by_cluster, sentences)

    return ClusterProfiles(
        n_rows=n, sizes=sizes, shares=shares, table=table, agreement=agreement,
        sentences=sentences, contingency=contingency, outlier_rate=outlier_rate,
        overall_outlier_rate=overall_rate, spread_ratio=spread_ratio, clusters=summary,
        attributes=list(codes),
    )


def cluster_spread(
    X: Any, labels: Any, *, memory: str | int | None = None, block_rows: int | None = None,
) -> dict[int, float]:
    """Mean Euclidean distance of each cluster's rows to the cluster's centroid.

    Two passes over ``X`` (centroids, then distances), block by block.

    Parameters
    ----------
    X : array-like, shape (n, c)
        Rows in the space the clustering was made in (e.g. the reduced rows).
    labels : array-like of int, shape (n,)
    memory : str or int, optional
    block_rows : int, optional

    Returns
    -------
    dict of int to float
        ``{cluster: mean distance}`` (noise ``-1`` included when present).
    """
    X, labels = as_plain(X), as_plain(labels)
    n = count_rows(X)
    if count_rows(labels) != n:
        raise InputError(f"X has {n:,} rows but labels {count_rows(labels):,}.")
    d = int(X.shape[1])
    rows_per_block = block_rows or block_rows_for(d + 1, memory)
    keys: np.ndarray = np.empty(0, np.int64)
    sums = np.zeros((0, d))
    counts = np.zeros(0, np.int64)
    for rows, (xb, lb) in iter_aligned([X, labels], rows_per_block):
        lab = checked_label_block(lb, "labels", rows.start)
        u, inv = np.unique(lab, return_inverse=True)
        new = np.union1d(keys, u)
        if len(new) != len(keys):
            s2, c2 = np.zeros((len(new), d)), np.zeros(len(new), np.int64)
            at = np.searchsorted(new, keys)
            s2[at], c2[at] = sums, counts
            keys, sums, counts = new, s2, c2
        at = np.searchsorted(keys, u)
        bs = np.zeros((len(u), d))
        np.add.at(bs, inv, np.asarray(xb, dtype=np.float64))
        sums[at] += bs
        counts[at] += np.bincount(inv, minlength=len(u))
    centroids = sums / np.maximum(counts, 1)[:, None]
    dist = np.zeros(len(keys))
    for rows, (xb, lb) in iter_aligned([X, labels], rows_per_block):
        lab = checked_label_block(lb, "labels", rows.start)
        at = np.searchsorted(keys, lab)
        dd = np.linalg.norm(np.asarray(xb, dtype=np.float64) - centroids[at], axis=1)
        dist += np.bincount(at, weights=dd, minlength=len(keys))
    return {int(k): float(dist[i] / counts[i]) for i, k in enumerate(keys)}
