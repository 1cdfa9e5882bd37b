"""How the clustering algorithms of one set compare, and which one the study recommends.

For every set (or mixture), :func:`compare_algorithms` gathers what the study already has about each
algorithm run (``--algorithms``: k-means and the :data:`~streamclust.study.algorithms.REGISTRY`
entries): its chosen k and metrics (``metrics.csv``), the agreement between every two algorithms
(``algorithms.csv``), and -- one block-wise pass over each algorithm's stored labels
(``runs/<id>/<set>/labels_<algorithm>``) -- its :func:`~streamclust.analysis.profile_clusters`
profile: purity / AMI against every metadata attribute and one sentence per cluster (k-means reuses
the set's own profile).  It then recommends one algorithm by :data:`ALGORITHM_RULE`
(:func:`recommend_algorithm`).  The report's "Algorithm comparison" and ``summary.json``'s
``algorithm_comparison`` show the result; ``clusters.csv`` holds every algorithm's clusters
(:func:`clusters_table`).

Memory: each profile reads its labels in row blocks and keeps only the cluster x value count
tables; the rest are tables with one row per algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from streamclust.analysis import CONDITION_ATTRIBUTES, ClusterProfiles, profile_clusters
from streamclust.analysis.contingency import Counts
from streamclust.analysis.rows import checked_label_block, iter_aligned, label_block_rows
from streamclust.study.rules import K_TIE_MARGIN, k_edge_note

__all__ = ["ALGORITHM_RULE", "MAX_NOISE_SHARE", "AlgorithmComparison", "compare_algorithms", "recommend_algorithm",
           "clusters_table"]

#: An algorithm leaving at least this share of rows as noise (-1) is not recommended.
MAX_NOISE_SHARE = 0.5

#: How :func:`recommend_algorithm` picks the recommended algorithm of a set, as the report and
#: ``summary.json`` state it.
ALGORITHM_RULE = (
    f"among the algorithms that leave less than {MAX_NOISE_SHARE:.0%} of the rows as noise and whose chosen k "
    "is not the smallest or largest of the k range (an algorithm that finds its own k, like hdbscan, has no "
    f"edge), the highest sampled silhouette; silhouettes within {K_TIE_MARGIN} of the best are ties, won by "
    "the highest mean AMI with the vehicle attributes of the metadata (when given), then by the lowest "
    "Davies-Bouldin index; when no algorithm passes both conditions, the same rule among all of them"
)

#: Columns of :attr:`AlgorithmComparison.table` taken from the chosen rows of ``metrics.csv``.
_METRIC_COLUMNS = ("k", "silhouette", "calinski_harabasz", "davies_bouldin", "noise_fraction", "bic")


@dataclass(kw_only=True)
class AlgorithmComparison:
    """How the algorithms run on one set compare (see :func:`compare_algorithms`).

    Attributes
    ----------
    name : str
        The set (or mixture).
    table : pandas.DataFrame, shape (n_algorithms, 12)
        One row per algorithm, in run order: ``algorithm``, ``k``, ``silhouette``,
        ``calinski_harabasz``, ``davies_bouldin``, ``noise_fraction`` (NaN for algorithms without
        noise), ``bic`` (NaN but for gmm), ``k_at_range_edge`` (bool), ``best_attribute``,
        ``best_attribute_ami`` (None / NaN without metadata), ``eligible`` (passes the conditions of
        :data:`ALGORITHM_RULE`) and ``recommended`` (bool).
    ari, ami : pandas.DataFrame, shape (n_algorithms, n_algorithms)
        Agreement of the chosen labellings of every two algorithms (diagonal 1).
    attribute_ami, attribute_purity : pandas.DataFrame, shape (n_algorithms, n_attributes)
        AMI and purity of each algorithm's clusters with each metadata attribute (no columns
        without metadata).
    profiles : dict of str to ClusterProfiles
        Each algorithm's cluster profile (sizes, tables, one sentence per cluster).
    best_attribute_lines : dict of str to str
        Per algorithm, one line saying which attribute its clusters separate best (empty
        without metadata).
    overlap : dict of str to pandas.DataFrame, shape (n_groups, k)
        Per algorithm, the rows each of its clusters (index, noise ``-1`` included) shares with
        each k-means cluster (columns): how its clusters map onto k-means' (the report colours
        them alike).
    recommended : str
        The recommended algorithm.
    reason : str
        Why, in words (:func:`recommend_algorithm`).
    """

    name: str
    table: pd.DataFrame
    ari: pd.DataFrame
    ami: pd.DataFrame
    attribute_ami: pd.DataFrame
    attribute_purity: pd.DataFrame
    profiles: dict[str, ClusterProfiles]
    best_attribute_lines: dict[str, str]
    overlap: dict[str, pd.DataFrame]
    recommended: str
    reason: str

    @property
    def algorithms(self) -> list[str]:
        """The algorithms compared, in run order (k-means first)."""
        return self.table["algorithm"].tolist()

    def summary(self) -> dict[str, Any]:
        """The comparison as ``summary.json`` carries it (NaN as null)."""
        algorithms = {}
        for row in self.table.to_dict(orient="records"):
            alg = row.pop("algorithm")
            row["attributes"] = {attr: {"ami": _plain(self.attribute_ami.loc[alg, attr]),
                                        "purity": _plain(self.attribute_purity.loc[alg, attr])}
                                 for attr in self.attribute_ami.columns}
            row["best_attribute_line"] = self.best_attribute_lines.get(alg)
            algorithms[alg] = {key: _plain(value) for key, value in row.items()}
        return {"algorithms": algorithms,
                "agreement": {"ari": _matrix(self.ari), "ami": _matrix(self.ami)},
                "recommended": self.recommended, "reason": self.reason}


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy scalars to Python, NaN to None."""
    if isinstance(value, dict):
        return value
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    return value


def _matrix(frame: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    return {str(a): {str(b): _plain(frame.loc[a, b]) for b in frame.columns} for a in frame.index}


def _agreement_matrices(algorithms: list[str], agreement: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(ari, ami)``: square matrices (algorithm x algorithm, diagonal 1) from the pair rows of one set
    of ``algorithms.csv`` (columns ``algorithm_a``, ``algorithm_b``, ``ari``, ``ami``)."""
    out = []
    for score in ("ari", "ami"):
        matrix = pd.DataFrame(np.eye(len(algorithms)), index=pd.Index(algorithms, name="algorithm"),
                              columns=algorithms)
        for row in agreement.itertuples(index=False):
            if row.algorithm_a in algorithms and row.algorithm_b in algorithms:
                matrix.loc[row.algorithm_a, row.algorithm_b] = matrix.loc[row.algorithm_b, row.algorithm_a] = \
                    float(getattr(row, score))
        out.append(matrix)
    return out[0], out[1]


def _overlap(reference: Any, labels: Any, memory: Any, name: str) -> pd.DataFrame:
    """Rows shared by every cluster of ``labels`` (index) and of ``reference`` (columns), two ``(n,)``
    label arrays read block by block; shape (n_groups, n_reference_groups)."""
    counts = Counts()
    for rows, (ref, lab) in iter_aligned([reference, labels], label_block_rows(memory, None, 2)):
        counts.add(checked_label_block(lab, name, rows.start), checked_label_block(ref, name, rows.start))
    return pd.DataFrame(counts.table, index=pd.Index(counts.rows, name="cluster"),
                        columns=pd.Index(counts.cols, name="kmeans"))


def _best_attribute(algorithm: str, profile: ClusterProfiles) -> tuple[str | None, float, str]:
    """``(attribute, its AMI, a line)``: the attribute the algorithm's clusters separate best (highest
    AMI); ``(None, nan, "")`` without metadata."""
    scores = profile.agreement.dropna(subset=["ami"]) if len(profile.agreement) else profile.agreement
    if not len(scores):
        return None, float("nan"), ""
    ranked = scores.sort_values("ami", ascending=False, kind="stable")
    best = ranked.iloc[0]
    attr = str(best["attribute"])
    line = (f"{algorithm} separates {attr} best: AMI {best['ami']:.2f}, purity {best['purity']:.2f}"
            + (f" ({attr} is an acquisition condition, not a property of the vehicle)"
               if attr in CONDITION_ATTRIBUTES else ""))
    if len(ranked) > 1:
        nxt = ranked.iloc[1]
        line += f"; next {nxt['attribute']} (AMI {nxt['ami']:.2f})"
    return attr, float(best["ami"]), line


def recommend_algorithm(table: pd.DataFrame, vehicle_ami: pd.Series | None = None) -> tuple[str, str, pd.Series]:
    """The recommended algorithm of one set by :data:`ALGORITHM_RULE`, and why.

    1. Eligible: ``noise_fraction`` below :data:`MAX_NOISE_SHARE` (NaN counts as no noise) and
       ``k_at_range_edge`` false.  When none is eligible, every algorithm is.
    2. Among the eligible ones with a silhouette, the highest sampled silhouette; those within
       :data:`~streamclust.study.rules.K_TIE_MARGIN` of it are ties.
    3. Ties are won by the highest ``vehicle_ami`` (mean AMI with the vehicle attributes), then the
       lowest Davies-Bouldin index, then the run order.

    Parameters
    ----------
    table : pandas.DataFrame, shape (n_algorithms, >= 6)
        Columns ``algorithm``, ``k``, ``silhouette``, ``davies_bouldin``, ``noise_fraction``,
        ``k_at_range_edge``; rows in run order.
    vehicle_ami : pandas.Series, shape (n_algorithms,), optional
        Mean AMI of each algorithm's clusters with the vehicle attributes, indexed by algorithm.

    Returns
    -------
    algorithm : str
    reason : str
    eligible : pandas.Series of bool, shape (n_algorithms,)
        Indexed like ``table``.
    """
    noise = table["noise_fraction"].astype(float)
    eligible = (noise.isna() | (noise < MAX_NOISE_SHARE)) & ~table["k_at_range_edge"].astype(bool)
    pool = table[eligible] if eligible.any() else table
    scored = pool[pool["silhouette"].notna()]
    if scored.empty:
        best = pool.iloc[0]
        return str(best["algorithm"]), f"{best['algorithm']}: no algorithm has a silhouette; the first run", eligible
    top = float(scored["silhouette"].max())
    ties = scored[scored["silhouette"] >= top - K_TIE_MARGIN].copy()
    ties["order"] = np.arange(len(ties))
    ties["vehicle_ami"] = (ties["algorithm"].map(vehicle_ami).astype(float) if vehicle_ami is not None
                           else np.nan)
    ranked = ties.sort_values(["vehicle_ami", "davies_bouldin", "order"], ascending=[False, True, True],
                              na_position="last", kind="stable")
    best = ranked.iloc[0]
    name = str(best["algorithm"])
    others = ranked.iloc[1:]
    if others.empty:
        reason = f"{name}: the highest silhouette, {best['silhouette']:.3f} at k={int(best['k'])}"
        rest = scored[scored["algorithm"] != name].sort_values("silhouette", ascending=False, kind="stable")
        if len(rest):
            reason += " vs " + ", ".join(f"{r.silhouette:.3f} for {r.algorithm}" for r in rest.itertuples())
    else:
        leader = ties.loc[ties["silhouette"].idxmax()]
        reason = (f"{name}: silhouette {best['silhouette']:.3f} at k={int(best['k'])}"
                  + (", the highest" if leader["algorithm"] == name else
                     f", within {K_TIE_MARGIN} of the highest ({leader['silhouette']:.3f}, {leader['algorithm']})")
                  + f"; of the tied {', '.join(map(str, ties['algorithm']))}, ")
        if pd.notna(best["vehicle_ami"]):
            reason += (f"the highest mean AMI with the vehicle attributes ({best['vehicle_ami']:.3f} vs "
                       + ", ".join(f"{r.vehicle_ami:.3f} for {r.algorithm}" for r in others.itertuples()) + ")")
        else:
            reason += (f"the lowest Davies-Bouldin index ({best['davies_bouldin']:.3f} vs "
                       + ", ".join(f"{r.davies_bouldin:.3f} for {r.algorithm}" for r in others.itertuples()) + ")")
    left_out = []
    for row in table[~eligible].itertuples():
        why = []
        if pd.notna(row.noise_fraction) and row.noise_fraction >= MAX_NOISE_SHARE:
            why.append(f"{row.noise_fraction:.0%} of the rows left as noise")
        if row.k_at_range_edge:
            why.append(f"k={int(row.k)} at the edge of the k range")
        left_out.append(f"{row.algorithm} ({', '.join(why)})")
    if left_out and eligible.any():
        reason += "; not considered: " + "; ".join(left_out)
    elif left_out:
        reason += ("; every algorithm fails a condition of the rule (" + "; ".join(left_out)
                   + "), so all were compared: widen the k range")
    return name, reason, eligible


def compare_algorithms(name: str, labels: Mapping[str, Any], metrics: pd.DataFrame, agreement: pd.DataFrame, *,
                       ks: Sequence[int], kmeans_profile: ClusterProfiles, attributes: pd.DataFrame | None,
                       outlier_flags: Any, memory: Any) -> AlgorithmComparison:
    """Compare the algorithms run on one set (module docstring).

    Parameters
    ----------
    name : str
        The set.
    labels : mapping of str to array-like of int, shape (n,)
        Each algorithm's chosen labels (the run's zarr arrays), k-means first.
    metrics : pandas.DataFrame
        ``metrics.csv``'s rows (any sets; this set's are used): columns ``set``, ``algorithm``, ``k``,
        ``chosen``, the metric columns.
    agreement : pandas.DataFrame
        ``algorithms.csv``'s rows (any sets; this set's are used).
    ks : sequence of int
        The study's k range, sorted.
    kmeans_profile : ClusterProfiles
        The set's k-means profile (reused, not recomputed).
    attributes : pandas.DataFrame, shape (n, n_columns), optional
        The metadata, rows in store order.
    outlier_flags : array-like of bool, shape (n,)
        The set's outlier flags (each cluster's outlier rate in the sentences).
    memory : str or int
        Memory budget of the profiles' passes.
    """
    mine = metrics[metrics["set"] == name]
    rows, profiles, lines, overlap = [], {}, {}, {}
    for alg, alg_labels in labels.items():
        sweep = mine[mine["algorithm"] == alg]
        chosen = sweep[sweep["chosen"].astype(bool)].iloc[0]
        row = {"algorithm": alg, **{c: chosen.get(c, np.nan) for c in _METRIC_COLUMNS}}
        row["k"] = int(row["k"])
        row["k_at_range_edge"] = len(sweep) > 1 and k_edge_note(row["k"], ks) is not None
        profiles[alg] = kmeans_profile if alg == "kmeans" else profile_clusters(
            alg_labels, attributes, outlier_flags=outlier_flags, set_name=f"{name} ({alg})", memory=memory)
        row["best_attribute"], row["best_attribute_ami"], lines[alg] = _best_attribute(alg, profiles[alg])
        overlap[alg] = _overlap(labels["kmeans"], alg_labels, memory, f"{name}/labels_{alg}")
        rows.append(row)
    table = pd.DataFrame(rows)
    algs = table["algorithm"].tolist()
    attr_scores = {alg: p.agreement.set_index("attribute") if len(p.agreement) else pd.DataFrame(
        columns=["ami", "purity"]) for alg, p in profiles.items()}
    attribute_ami = pd.DataFrame({alg: s["ami"] for alg, s in attr_scores.items()}).T.reindex(algs)
    attribute_purity = pd.DataFrame({alg: s["purity"] for alg, s in attr_scores.items()}).T.reindex(algs)
    attribute_ami.index.name = attribute_purity.index.name = "algorithm"
    vehicle = [a for a in attribute_ami.columns if a not in CONDITION_ATTRIBUTES]
    vehicle_ami = attribute_ami[vehicle].astype(float).mean(axis=1) if vehicle else None
    recommended, reason, eligible = recommend_algorithm(table, vehicle_ami)
    table["eligible"] = eligible.to_numpy()
    table["recommended"] = table["algorithm"] == recommended
    ari, ami = _agreement_matrices(algs, agreement[agreement["set"] == name])
    return AlgorithmComparison(name=name, table=table, ari=ari, ami=ami, attribute_ami=attribute_ami,
                               attribute_purity=attribute_purity, profiles=profiles,
                               best_attribute_lines={a: line for a, line in lines.items() if line},
                               overlap=overlap,
                               recommended=recommended, reason=reason)


def clusters_table(comparisons: Mapping[str, AlgorithmComparison]) -> pd.DataFrame:
    """``clusters.csv``: one row per set x algorithm x cluster -- the columns of
    :attr:`~streamclust.analysis.ClusterProfiles.clusters` (size, share, outlier rate, top values,
    sentence), then ``set`` and ``algorithm``; per set, k-means rows first, then the other
    algorithms in run order."""
    parts = [profile.clusters.rename_axis("cluster").reset_index().assign(set=name, algorithm=alg)
             for name, comparison in comparisons.items() for alg, profile in comparison.profiles.items()]
    return pd.concat(parts, ignore_index=True)
