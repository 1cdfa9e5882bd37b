"""Which descriptor set clusters best: comparing sets and recommending one.

:func:`compare_sets` compares descriptor sets with one another (label
agreement, outlier-score rank correlation, k-nearest-neighbour overlap in each
set's reduced space), with the metadata (AMI per attribute, and how often kNN
neighbours share an attribute value) and by their clustering metrics
normalised to be comparable, and recommends a set.  Labels are read in row
blocks; outlier scores and reduced rows only through seeded samples (20k rows
by default).

How :func:`compare_sets` computes its tables and recommends a set:

**Tables.**

* **label_agreement** -- ARI and AMI between every pair of sets' labels, from
  contingency tables accumulated in one block-wise pass over all label arrays
  (exact, all rows).
* **attribute_agreement / ami_table** -- purity, NMI, AMI, ARI of each set's
  labels with each metadata attribute (same pass; rows with a missing value
  left out).
* **score_correlation** -- Spearman rank correlation of the outlier scores
  between sets on a seeded sample of ``sample_size`` rows (the same rows for
  every set).  A sample estimate: its standard error is about
  ``1 / sqrt(sample_size)``.
* **knn_overlap** -- a seeded reference sample of ``reference_size`` rows
  (the same rows for every set) is read from every set's reduced rows;
  ``sample_size`` of them are queries.  For each query, the exact
  (brute-force, Euclidean) ``n_neighbors`` nearest rows among the reference
  sample (itself excluded) are found in each set's space, and the table is
  the mean Jaccard overlap of these neighbour sets between two sets (1 on the
  diagonal; chance level is about ``n_neighbors / reference_size``).  Because
  the reference is a sample, the neighbourhoods are those of a
  ``n / reference_size`` times sparser data set: coarser than the true
  nearest neighbours, but comparable between sets.
* **normalized_metrics** -- per set: ``silhouette`` (in [-1, 1], already
  scale free) and ``davies_bouldin`` (a ratio of distances, scale free) as
  given; the Calinski-Harabasz index grows with the number of rows and
  depends on k, so it is replaced by ``between_within_ratio`` =
  ``CH * (k - 1) / (n - k)`` = between-cluster over within-cluster sum of
  squares, and ``variance_explained`` = ``ratio / (1 + ratio)`` (the share
  of the variance the clustering explains, R^2); plus cluster-size shares.
  Without ``metrics`` and with ``reduced_by_set``, a silhouette is estimated
  here on the reference sample (``silhouette_source = "sampled here"``).
* **neighbour_agreement** -- with metadata and reduced rows: for the same
  kNN queries, the chance-corrected share of neighbours with the query's
  attribute value (clustering-free evidence of what each space encodes).

**Recommendation.** Per attribute, the set whose labels have the highest AMI with it
(reason like ``"vdc_color: AMI 0.71 with color vs 0.22 for osnet"``). Sets within
``tie_tolerance`` of the best AMI are a tie (``tie`` column, said in the reason); a tie
goes to the most *specific* set, the one whose clusters have the lowest mean AMI with
the other vehicle attributes (its clusters are about this attribute, not a mix).
Overall, the set with the best mean AMI over the vehicle attributes present
(:data:`~streamclust.analysis.metadata.VEHICLE_ATTRIBUTES` and other non-condition
attributes), ties within ``tie_tolerance`` broken by the higher silhouette; acquisition
conditions (:data:`~streamclust.analysis.metadata.CONDITION_ATTRIBUTES`, e.g. camera)
are reported but never rewarded -- a set that groups images by camera is not better for
it. Without metadata, the set with the best silhouette.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from streamclust.analysis.contingency import Counts, contingency_scores
from streamclust.analysis.metadata import CONDITION_ATTRIBUTES, attribute_codes
from streamclust.analysis.rows import (
    as_plain,
    checked_label_block,
    count_rows,
    gather_rows,
    iter_aligned,
    label_block_rows,
)
from streamclust.core.blocks import block_rows_for
from streamclust.errors import InputError
from streamclust.estimators.neighbors import ExactIndex

__all__ = ["SetComparison", "compare_sets"]


@dataclass
class SetComparison:
    """How descriptor sets compare (see :func:`compare_sets`).

    Attributes
    ----------
    sets : list of str
    label_agreement : pandas.DataFrame, shape (n_sets, 2 * n_sets)
        Columns ``("ari", set)`` and ``("ami", set)``: ``label_agreement["ami"]``
        is the set x set AMI matrix (diagonal 1).
    attribute_agreement : pandas.DataFrame
        Long format: ``set``, ``attribute``, ``n``, ``n_values``, ``purity``,
        ``nmi``, ``ami``, ``ari`` (empty without metadata).
    ami_table : pandas.DataFrame, shape (n_sets, n_attributes)
        AMI of every set's labels with every attribute.
    score_correlation : pandas.DataFrame or None, shape (n_sets, n_sets)
        Spearman rank correlation of the outlier scores on a seeded sample.
    knn_overlap : pandas.DataFrame or None, shape (n_sets, n_sets)
        Mean Jaccard overlap of k-nearest-neighbour sets between sets.
    normalized_metrics : pandas.DataFrame, shape (n_sets, ...)
        Per-set metrics made comparable across dimensionality and size.
    recommendation : pandas.DataFrame
        Index ``attribute`` (or ``silhouette`` without metadata): ``best_set``,
        ``score``, ``runner_up``, ``runner_up_score``, ``metric``, ``tie``, ``reason``.
    recommended_set : str or None
    reason : str
    neighbour_agreement : pandas.DataFrame or None, shape (n_sets, n_attributes)
        Chance-corrected agreement of each attribute between the kNN query rows
        and their neighbours, in each set's reduced space (clustering-free:
        how well the representation itself encodes the attribute).
    notes : dict of str to str
        How each table was computed (sample sizes, seeds).
    """

    sets: list[str]
    label_agreement: pd.DataFrame
    attribute_agreement: pd.DataFrame
    ami_table: pd.DataFrame
    score_correlation: pd.DataFrame | None
    knn_overlap: pd.DataFrame | None
    normalized_metrics: pd.DataFrame
    recommendation: pd.DataFrame
    recommended_set: str | None
    reason: str
    neighbour_agreement: pd.DataFrame | None = None
    notes: dict[str, str] = field(default_factory=dict)


def _knn_indices(R: np.ndarray, q_pos: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest rows of ``R`` (Euclidean) for the queries ``R[q_pos]``, each itself excluded.

    ``R``: ``(r, c)``, ``q_pos``: ``(q,)`` with ``k < r``; returns ``(q, k)`` int64 rows of
    ``R``, nearest first, equal distances by row (:class:`~streamclust.estimators.neighbors.ExactIndex`,
    whose memory is a copy of ``R`` and 32 MiB of blocks).  Each query's ``k + 1`` nearest are
    searched; its own row is dropped, or the farthest when more than ``k`` duplicates of it
    come first.
    """
    R = np.ascontiguousarray(R, dtype=np.float32)
    ind, _ = ExactIndex(R).query(R[q_pos], k=k + 1)
    drop = ind == np.asarray(q_pos)[:, None]
    drop[~drop.any(axis=1), -1] = True
    out: np.ndarray = ind[~drop].reshape(len(ind), k).astype(np.int64)
    return out


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = (a[:, :, None] == b[:, None, :]).sum(axis=(1, 2))
    k = a.shape[1]
    return float(np.mean(inter / (2 * k - inter)))


def _metrics_by_set(metrics: Any, sets: Sequence[str]) -> pd.DataFrame | None:
    """One row of metrics per set, indexed by set name."""
    if metrics is None:
        return None
    if isinstance(metrics, Mapping):
        rows = {}
        for name, m in metrics.items():
            if isinstance(m, pd.DataFrame):
                m = m[m["chosen"].astype(bool)] if "chosen" in m.columns else m
                if len(m) != 1:
                    raise InputError(f"metrics[{name!r}] has {len(m)} rows; give one (or a 'chosen' column).")
                m = m.iloc[0]
            rows[name] = dict(m)
        frame = pd.DataFrame.from_dict(rows, orient="index")
    elif isinstance(metrics, pd.DataFrame):
        frame = metrics
        if "chosen" in frame.columns:
            frame = frame[frame["chosen"].astype(bool)]
        if "set" in frame.columns:
            if frame["set"].duplicated().any():
                dup = frame.loc[frame["set"].duplicated(), "set"].iloc[0]
                raise InputError(f"metrics: several rows for set {dup!r}; keep one per set "
                                 "(or give the 'chosen' column of the study's metrics).")
            frame = frame.set_index("set")
    else:
        raise InputError(f"metrics must be a DataFrame or a dict per set, got {type(metrics).__name__}.")
    missing = [s for s in sets if s not in frame.index]
    if missing:
        raise InputError(f"metrics: no row for set(s) {missing}; it has {list(frame.index)}.")
    return frame.loc[list(sets)]


def _normalized_metrics(
    metrics: pd.DataFrame | None, sizes: dict[str, pd.Series], n: int,
    sampled_silhouette: dict[str, float] | None,
) -> pd.DataFrame:
    rows = []
    for name, sz in sizes.items():
        k_found = int((sz.index >= 0).sum())
        row: dict[str, Any] = {"set": name, "k": k_found, "n_rows": n,
                               "largest_cluster_share": float(sz.max() / n),
                               "smallest_cluster_share": float(sz[sz.index >= 0].min() / n) if k_found else np.nan,
                               "noise_share": float(sz.get(-1, 0) / n)}
        if metrics is not None:
            m = metrics.loc[name]
            k = int(m["k"]) if "k" in m and pd.notna(m["k"]) else k_found
            nn = int(m["n_rows"]) if "n_rows" in m and pd.notna(m["n_rows"]) else n
            row["k"] = k
            for col in ("n_features", "n_components"):
                if col in m:
                    row[col] = m[col]
            row["silhouette"] = float(m["silhouette"]) if "silhouette" in m else np.nan
            row["davies_bouldin"] = float(m["davies_bouldin"]) if "davies_bouldin" in m else np.nan
            if "calinski_harabasz" in m and k > 1 and nn > k:
                ratio = float(m["calinski_harabasz"]) * (k - 1) / (nn - k)
                row["between_within_ratio"] = ratio
                row["variance_explained"] = ratio / (1.0 + ratio)
        if sampled_silhouette is not None and (metrics is None or not np.isfinite(row.get("silhouette", np.nan))):
            row["silhouette"] = sampled_silhouette.get(name, np.nan)
            row["silhouette_source"] = "sampled here"
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


def _neighbour_kappa(ref_codes: np.ndarray, q_pos: np.ndarray, neigh: np.ndarray) -> float:
    """Chance-corrected agreement of an attribute between queries and their neighbours."""
    qv = ref_codes[q_pos][:, None]
    nv = ref_codes[neigh]
    known = (qv >= 0) & (nv >= 0)
    if not known.any():
        return float("nan")
    observed = float((qv == nv)[known].mean())
    counts = np.bincount(ref_codes[ref_codes >= 0])
    p = counts / counts.sum()
    chance = float((p ** 2).sum())
    return (observed - chance) / (1.0 - chance) if chance < 1 else float("nan")


def _specificity(ami_table: pd.DataFrame, attr: str, vehicle_attrs: Sequence[str]) -> pd.Series:
    """Mean AMI of every set with the vehicle attributes other than ``attr`` (lower = more specific)."""
    others = [a for a in vehicle_attrs if a != attr]
    if not others:
        return pd.Series(0.0, index=ami_table.index)
    return ami_table[others].mean(axis=1)


def _recommend_attribute(
    attr: str, ami_table: pd.DataFrame, vehicle_attrs: Sequence[str], tol: float,
) -> dict[str, Any] | None:
    col = ami_table[attr].dropna().sort_values(ascending=False, kind="stable")
    if col.empty:
        return None
    top_score = float(col.iloc[0])
    tied = col[col >= top_score - tol]
    tie = len(tied) > 1
    if tie and attr not in CONDITION_ATTRIBUTES:
        # equally aligned: the set whose clusters are about this attribute only wins
        spec = _specificity(ami_table, attr, vehicle_attrs)[tied.index]
        best = str(spec.sort_values(kind="stable").index[0])
    else:
        best = str(col.index[0])
    score = float(col[best])
    rest = col.drop(index=best)
    runner = str(rest.index[0]) if len(rest) else None
    r_score = float(rest.iloc[0]) if len(rest) else float("nan")
    reason = f"{best}: AMI {score:.2f} with {attr}"
    if runner is not None:
        reason += f" vs {r_score:.2f} for {runner}"
    if tie and attr in CONDITION_ATTRIBUTES:
        reason += f" (a tie within {tol:g})"
    elif tie:
        spec = _specificity(ami_table, attr, vehicle_attrs)
        others = [s for s in tied.index if s != best]
        reason += (f"; a tie within {tol:g} with {', '.join(others)}, broken by specificity: "
                   f"{best}'s clusters follow the other vehicle attributes least (mean AMI "
                   f"{spec[best]:.2f} vs " + ", ".join(f"{spec[o]:.2f} for {o}" for o in others) + ")")
    if attr in CONDITION_ATTRIBUTES:
        reason += (f"; {attr} is an acquisition condition: a high value means the set groups "
                   f"images by {attr}, not by vehicle, and is not rewarded")
    return {"attribute": attr, "best_set": best, "score": score, "runner_up": runner,
            "runner_up_score": r_score, "metric": "ami", "tie": tie, "reason": reason}


def _recommend_overall(
    ami_table: pd.DataFrame, vehicle_attrs: Sequence[str], rec_rows: list[dict[str, Any]],
    sil: pd.Series | None, tol: float,
) -> tuple[str | None, str, dict[str, Any] | None]:
    has_sil = sil is not None and bool(sil.notna().any())
    if vehicle_attrs:
        mean_ami = ami_table[list(vehicle_attrs)].mean(axis=1).sort_values(ascending=False, kind="stable")
        tied = mean_ami[mean_ami >= mean_ami.iloc[0] - tol]
        tie = len(tied) > 1 and has_sil and bool(sil[tied.index].notna().any())
        best = str(sil[tied.index].idxmax()) if tie else str(mean_ami.index[0])
        reason = (f"{best}: mean AMI {mean_ami[best]:.2f} with the vehicle attributes "
                  f"({', '.join(vehicle_attrs)})")
        rest = mean_ami.drop(index=best)
        if len(rest):
            reason += f" vs {rest.iloc[0]:.2f} for {rest.index[0]}"
        if tie:
            reason += (f"; a tie within {tol:g}, broken by the higher silhouette "
                       f"({sil[best]:.3f})")
        best_for = [r["attribute"] for r in rec_rows if r["best_set"] == best]
        if best_for:
            reason += f"; best set for {', '.join(best_for)}"
        for other in dict.fromkeys(r["best_set"] for r in rec_rows if r["best_set"] != best
                                   and r["attribute"] in vehicle_attrs):
            attrs = [r["attribute"] for r in rec_rows if r["best_set"] == other
                     and r["attribute"] in vehicle_attrs]
            reason += f"; {other} is better for {', '.join(attrs)}"
        return best, reason, None
    if has_sil:
        order = sil.dropna().sort_values(ascending=False, kind="stable")
        best = str(order.index[0])
        runner = str(order.index[1]) if len(order) > 1 else None
        vs = f" vs {order.iloc[1]:.3f} for {runner}" if runner is not None else ""
        row = {"attribute": "silhouette", "best_set": best, "score": float(order.iloc[0]),
               "runner_up": runner,
               "runner_up_score": float(order.iloc[1]) if runner is not None else float("nan"),
               "metric": "silhouette", "tie": False,
               "reason": f"{best}: silhouette {order.iloc[0]:.3f}{vs}"}
        reason = (f"{best}: highest silhouette ({order.iloc[0]:.3f}{vs}); no vehicle metadata, "
                  "so the choice rests on cluster geometry only -- check the montages")
        return best, reason, row
    return None, "nothing to recommend on: give vehicle metadata, metrics or reduced rows", None


def _check_inputs(
    labels_by_set: Mapping[str, Any], outlier_scores_by_set: Mapping[str, Any] | None,
    reduced_by_set: Mapping[str, Any] | None,
) -> tuple[list[str], dict[str, Any], int]:
    """The set names, every set's ``(n,)`` labels as plain arrays, and ``n``.

    Raises
    ------
    InputError
        If no set is given, lengths differ, or a mapping names a set without labels.
    """
    sets = list(labels_by_set)
    if not sets:
        raise InputError("labels_by_set is empty; give the labels of at least one set.")
    labels = {s: as_plain(labels_by_set[s]) for s in sets}
    n = count_rows(labels[sets[0]])
    for s in sets:
        if count_rows(labels[s]) != n:
            raise InputError(f"labels of {s!r} have {count_rows(labels[s]):,} rows, those of "
                             f"{sets[0]!r} {n:,}; all sets must label the same rows.")
    for what, mapping in (("outlier_scores_by_set", outlier_scores_by_set),
                          ("reduced_by_set", reduced_by_set)):
        for s in (mapping or {}):
            if s not in labels:
                raise InputError(f"{what} names set {s!r} that has no labels; sets: {sets}.")
            if count_rows(mapping[s]) != n:
                raise InputError(f"{what}[{s!r}] has {count_rows(mapping[s]):,} rows, the labels {n:,}.")
    return sets, labels, n


def _count_tables(
    sets: list[str], labels: dict[str, Any], codes: dict[str, tuple[np.ndarray, np.ndarray]],
    rows_per_block: int,
) -> tuple[dict[str, pd.Series], dict[tuple[str, str], Counts], dict[tuple[str, str], Counts]]:
    """One pass: sizes, set x set and set x attribute contingency tables.

    Returns
    -------
    sizes : dict of str to pandas.Series, shape (n_groups,)
        Rows per cluster of every set, indexed by label.
    pair_t : dict of (set, set) to Counts
        Every pair of sets (in ``sets`` order, each pair once).
    attr_t : dict of (set, attribute) to Counts
    """
    sizes_t = {s: Counts() for s in sets}
    pair_t = {(a, b): Counts() for i, a in enumerate(sets) for b in sets[i + 1:]}
    attr_t = {(s, a): Counts() for s in sets for a in codes}
    for rows, blocks in iter_aligned([labels[s] for s in sets], rows_per_block):
        labs = {s: checked_label_block(b, f"labels of {s!r}", rows.start) for s, b in zip(sets, blocks)}
        zeros = np.zeros(rows.stop - rows.start, np.int64)
        for s in sets:
            sizes_t[s].add(labs[s], zeros)
        for (a, b), t in pair_t.items():
            t.add(labs[a], labs[b])
        for attr, (c, _) in codes.items():
            cb = c[rows]
            known = cb >= 0
            for s in sets:
                attr_t[s, attr].add(labs[s][known], cb[known])
    sizes = {s: pd.Series(sizes_t[s].table[:, 0], index=sizes_t[s].rows) for s in sets}
    return sizes, pair_t, attr_t


def _label_agreement(sets: list[str], pair_t: dict[tuple[str, str], Counts]) -> pd.DataFrame:
    """ARI and AMI between every pair of sets: shape (n_sets, 2 * n_sets), as
    :attr:`SetComparison.label_agreement`."""
    ari = pd.DataFrame(np.eye(len(sets)), index=sets, columns=sets)
    ami = ari.copy()
    for (a, b), t in pair_t.items():
        sc = contingency_scores(t.table)
        ari.loc[a, b] = ari.loc[b, a] = sc["ari"]
        ami.loc[a, b] = ami.loc[b, a] = sc["ami"]
    label_agreement = pd.concat({"ari": ari, "ami": ami}, axis=1)
    label_agreement.index.name = "set"
    return label_agreement


def _attribute_agreement(
    sets: list[str], codes: dict[str, tuple[np.ndarray, np.ndarray]],
    attr_t: dict[tuple[str, str], Counts],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scores of every set's labels with every attribute: the long table and the
    ``(n_sets, n_attributes)`` AMI table (see :class:`SetComparison`)."""
    agree_rows = []
    for (s, attr), t in attr_t.items():
        sc = contingency_scores(t.table)
        agree_rows.append({"set": s, "attribute": attr, "n": sc["n"], "n_values": len(t.cols),
                           "purity": sc["purity"], "nmi": sc["nmi"], "ami": sc["ami"], "ari": sc["ari"]})
    attribute_agreement = pd.DataFrame(agree_rows, columns=["set", "attribute", "n", "n_values",
                                                            "purity", "nmi", "ami", "ari"])
    if agree_rows:
        ami_table = attribute_agreement.pivot(index="set", columns="attribute", values="ami")
        ami_table = ami_table.loc[sets, list(codes)]
    else:
        ami_table = pd.DataFrame(index=pd.Index(sets, name="set"))
    return attribute_agreement, ami_table


def _score_correlation(
    outlier_scores_by_set: Mapping[str, Any] | None, n: int, sample_size: int,
    rng: np.random.Generator, random_state: int, memory: str | int | None, block_rows: int | None,
    notes: dict[str, str],
) -> pd.DataFrame | None:
    """Spearman correlation of the ``(n,)`` outlier scores on a sample drawn from ``rng``,
    shape (n_sets, n_sets); ``None`` without scores.  Adds its note to ``notes``."""
    # ---- outlier score correlation on a sample
    score_correlation = None
    if outlier_scores_by_set:
        m = min(int(sample_size), n)
        idx = np.sort(rng.choice(n, size=m, replace=False))
        sample = {}
        for s, arr in outlier_scores_by_set.items():
            br = label_block_rows(memory, block_rows, 1)
            sample[s] = gather_rows(arr, idx, br).astype(np.float64).reshape(-1)
        score_correlation = pd.DataFrame(sample).corr(method="spearman")
        score_correlation.index.name = "set"
        notes["score_correlation"] = (f"Spearman rank correlation on {m:,} rows sampled with "
                                      f"seed {random_state} (same rows for every set).")
    else:
        rng.random()  # keep the kNN sample independent of whether scores were given
    return score_correlation


def _reference_rows(
    reduced_by_set: Mapping[str, Any], ref: np.ndarray, q_pos: np.ndarray, k: int,
    memory: str | int | None, block_rows: int | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every set's reduced rows at ``ref``, shape (r, c_set) float32, and the ``k`` nearest
    of them, shape (q, k), for the queries ``q_pos`` (none when ``r == 1``)."""
    r = len(ref)
    neigh = {}
    ref_rows = {}
    for s, arr in reduced_by_set.items():
        arr = as_plain(arr)
        br = block_rows or block_rows_for(int(arr.shape[1]), memory)
        R = gather_rows(arr, ref, br).astype(np.float32)
        ref_rows[s] = R
        if r > 1:
            neigh[s] = _knn_indices(R, q_pos, k)
    return ref_rows, neigh


def _knn_tables(
    sets: list[str], codes: dict[str, tuple[np.ndarray, np.ndarray]], ref: np.ndarray,
    q_pos: np.ndarray, k: int, neigh: dict[str, np.ndarray], random_state: int, notes: dict[str, str],
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """kNN overlap between sets, shape (n_sets, n_sets), and neighbour agreement with every
    attribute, shape (n_sets, n_attributes) (``None`` without neighbours / metadata).
    Adds their notes to ``notes``."""
    r, q = len(ref), len(q_pos)
    knn_overlap = None
    neighbour_agreement = None
    have = [s for s in sets if s in neigh]
    if have:
        knn_overlap = pd.DataFrame(np.eye(len(have)), index=have, columns=have)
        for i, a in enumerate(have):
            for b in have[i + 1:]:
                knn_overlap.loc[a, b] = knn_overlap.loc[b, a] = _jaccard(neigh[a], neigh[b])
        knn_overlap.index.name = "set"
        notes["knn_overlap"] = (
            f"mean Jaccard overlap of the {k} nearest neighbours (exact, Euclidean, in each "
            f"set's reduced space) of {q:,} query rows among a reference sample of {r:,} rows "
            f"(seed {random_state}); chance level ~{k / max(1, r - 1):.4f}.")
        if codes:
            neighbour_agreement = pd.DataFrame(
                {attr: [_neighbour_kappa(c[ref], q_pos, neigh[s]) for s in have]
                 for attr, (c, _) in codes.items()},
                index=pd.Index(have, name="set"))
            notes["neighbour_agreement"] = (
                "chance-corrected share of the same kNN neighbours (as knn_overlap) having the "
                "query's attribute value: (observed - chance) / (1 - chance), chance = sum of "
                "squared value shares in the reference sample; 1 = neighbours always agree, "
                "0 = no better than chance.  Independent of any clustering.")
    return knn_overlap, neighbour_agreement


def _sampled_silhouette(
    ref_rows: dict[str, np.ndarray], labels: dict[str, Any], ref: np.ndarray, sub: np.ndarray,
    rows_per_block: int,
) -> dict[str, float]:
    """Silhouette of every set's labels on the reference rows ``sub`` (noise left out;
    ``nan`` with fewer than two clusters)."""
    from sklearn.metrics import silhouette_score

    sampled_sil = {}
    for s, R in ref_rows.items():
        lab = checked_label_block(gather_rows(labels[s], ref[sub], rows_per_block), s, 0)
        keep = lab >= 0
        if len(np.unique(lab[keep])) >= 2 and keep.sum() > len(np.unique(lab[keep])):
            sampled_sil[s] = float(silhouette_score(R[sub][keep].astype(np.float64), lab[keep]))
        else:
            sampled_sil[s] = float("nan")
    return sampled_sil


def _neighbourhood_tables(
    reduced_by_set: Mapping[str, Any], sets: list[str], labels: dict[str, Any],
    codes: dict[str, tuple[np.ndarray, np.ndarray]], n: int, *, sample_silhouette: bool,
    sample_size: int, reference_size: int, n_neighbors: int, random_state: int,
    memory: str | int | None, block_rows: int | None, rows_per_block: int, notes: dict[str, str],
) -> tuple[pd.DataFrame | None, pd.DataFrame | None, dict[str, float] | None]:
    """kNN overlap, neighbour agreement and (when ``sample_silhouette``) a sampled silhouette
    per set, all on one seeded reference sample of the reduced rows."""
    sampled_sil: dict[str, float] | None = None
    knn_rng = np.random.default_rng([random_state, 1])
    r = min(int(reference_size), n)
    ref = np.sort(knn_rng.choice(n, size=r, replace=False))
    q = min(int(sample_size), r)
    q_pos = np.sort(knn_rng.choice(r, size=q, replace=False))
    k = max(1, min(int(n_neighbors), r - 1))
    ref_rows, neigh = _reference_rows(reduced_by_set, ref, q_pos, k, memory, block_rows)
    knn_overlap, neighbour_agreement = _knn_tables(sets, codes, ref, q_pos, k, neigh, random_state, notes)
    if sample_silhouette:
        m = min(int(sample_size), r)
        sub = np.sort(knn_rng.choice(r, size=m, replace=False))
        sampled_sil = _sampled_silhouette(ref_rows, labels, ref, sub, rows_per_block)
        notes["silhouette"] = (f"silhouette estimated here on {m:,} sampled rows of the "
                               "reduced space (noise left out).")
    return knn_overlap, neighbour_agreement, sampled_sil


def _recommendation(
    codes: dict[str, tuple[np.ndarray, np.ndarray]], ami_table: pd.DataFrame,
    normalized: pd.DataFrame, tie_tolerance: float,
) -> tuple[pd.DataFrame, str | None, str]:
    """The recommendation table (index ``attribute``), the recommended set and the reason."""
    # ---- recommendation
    vehicle_attrs = [a for a in codes if a not in CONDITION_ATTRIBUTES]
    sil = normalized["silhouette"] if "silhouette" in normalized.columns else None
    rec_rows = [_recommend_attribute(attr, ami_table, vehicle_attrs, tie_tolerance) for attr in codes]
    rec_rows = [r for r in rec_rows if r is not None]
    recommended, reason, overall_row = _recommend_overall(
        ami_table, vehicle_attrs, rec_rows, sil, tie_tolerance)
    if overall_row is not None:
        rec_rows.append(overall_row)
    recommendation = pd.DataFrame(rec_rows, columns=["attribute", "best_set", "score", "runner_up",
                                                     "runner_up_score", "metric", "tie", "reason"])
    recommendation = recommendation.set_index("attribute")
    return recommendation, recommended, reason


def compare_sets(
    labels_by_set: Mapping[str, Any],
    *,
    attributes: pd.DataFrame | None = None,
    attribute_columns: Sequence[str] | None = None,
    outlier_scores_by_set: Mapping[str, Any] | None = None,
    reduced_by_set: Mapping[str, Any] | None = None,
    metrics: Any = None,
    sample_size: int = 5000,
    reference_size: int = 20_000,
    n_neighbors: int = 10,
    random_state: int = 0,
    tie_tolerance: float = 0.02,
    memory: str | int | None = None,
    block_rows: int | None = None,
) -> SetComparison:
    """Compare descriptor sets by their clusterings, outliers, neighbourhoods and metrics.

    One block-wise pass over all label arrays gives exact (all rows) label and
    attribute agreement; outlier scores and reduced rows are only read through
    seeded samples.  How every table is computed and how the set is recommended:
    the :mod:`~streamclust.analysis.comparison` module docstring.

    Parameters
    ----------
    labels_by_set : mapping of str to array-like of int, shape (n,)
        Labels of every set (numpy, Zarr or Dask), all of the same length.
    attributes : pandas.DataFrame, shape (n, n_columns), optional
        Metadata aligned to the rows.
    attribute_columns : sequence of str, optional
        As in :func:`~streamclust.analysis.profiles.profile_clusters`.
    outlier_scores_by_set : mapping of str to array-like of float, shape (n,), optional
    reduced_by_set : mapping of str to array-like, shape (n, c_set), optional
        Reduced rows of every set (c may differ between sets).
    metrics : DataFrame or mapping, optional
        The study's metrics: a DataFrame with a ``set`` column (rows with
        ``chosen`` True are used when that column exists) or ``{set: row}``;
        columns used: ``k``, ``n_rows``, ``silhouette``, ``davies_bouldin``,
        ``calinski_harabasz``, ``n_features``, ``n_components``.
    sample_size : int, default 5000
        Rows sampled for score correlation and kNN queries.
    reference_size : int, default 20000
        Reference rows for the kNN search.
    n_neighbors : int, default 10
    random_state : int, default 0
        Seed of the samples (scores, kNN reference and queries).
    tie_tolerance : float, default 0.02
        AMI differences up to this count as ties in the recommendation.
    memory : str or int, optional
        Memory budget of the block-wise passes (default 1 GiB).
    block_rows : int, optional
        Rows per block (overrides ``memory``).

    Returns
    -------
    SetComparison

    Raises
    ------
    InputError
        If fewer than one set is given, lengths differ, or a mapping names a set
        without labels.

    """
    sets, labels, n = _check_inputs(labels_by_set, outlier_scores_by_set, reduced_by_set)
    codes = attribute_codes(attributes, attribute_columns, n)
    rows_per_block = label_block_rows(memory, block_rows, len(sets) + len(codes) + 1)
    notes: dict[str, str] = {}

    sizes, pair_t, attr_t = _count_tables(sets, labels, codes, rows_per_block)
    label_agreement = _label_agreement(sets, pair_t)
    attribute_agreement, ami_table = _attribute_agreement(sets, codes, attr_t)

    rng = np.random.default_rng(random_state)
    score_correlation = _score_correlation(outlier_scores_by_set, n, sample_size, rng, random_state,
                                           memory, block_rows, notes)

    # ---- kNN overlap on a reference sample
    knn_overlap = None
    neighbour_agreement = None
    sampled_sil: dict[str, float] | None = None
    if reduced_by_set:
        knn_overlap, neighbour_agreement, sampled_sil = _neighbourhood_tables(
            reduced_by_set, sets, labels, codes, n, sample_silhouette=metrics is None,
            sample_size=sample_size, reference_size=reference_size, n_neighbors=n_neighbors,
            random_state=random_state, memory=memory, block_rows=block_rows,
            rows_per_block=rows_per_block, notes=notes)

    normalized = _normalized_metrics(_metrics_by_set(metrics, sets), sizes, n, sampled_sil)
    for key, frame in (("score_correlation", score_correlation), ("knn_overlap", knn_overlap),
                       ("neighbour_agreement", neighbour_agreement),
                       ("silhouette", normalized)):
        if frame is not None and key in notes:
            frame.attrs["note"] = notes[key]

    recommendation, recommended, reason = _recommendation(codes, ami_table, normalized, tie_tolerance)

    return SetComparison(
        sets=sets, label_agreement=label_agreement, attribute_agreement=attribute_agreement,
        ami_table=ami_table, score_correlation=score_correlation, knn_overlap=knn_overlap,
        normalized_metrics=normalized, recommendation=recommendation,
        recommended_set=recommended, reason=reason, neighbour_agreement=neighbour_agreement,
        notes=notes,
    )
