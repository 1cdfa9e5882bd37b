"""The study's rules: what it accepts (k ranges, mixtures, outlier scores) and how it chooses
(k per algorithm, the best clustering), with the texts ``summary.json`` reports them by."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from streamclust.core.blocks import block_nbytes, parse_memory
from streamclust.errors import InputError, MemoryBudgetError

__all__ = ["OUTLIER_SCORES", "OUTLIER_NEIGHBORS", "outlier_index_neighbors", "BEST_RULE", "K_TIE_MARGIN",
           "MIX_RULE", "K_RULE", "LIBRARY_BASELINE", "parse_k_range", "MixSpec", "parse_mix", "choose_k",
           "best_clustering", "block_budget", "SMALL_STUDY_ROWS", "MIN_SHARED_BUDGET", "sets_at_once", "k_edge_note"]


#: Outlier scores the study can write (module docstring, step 6); the first is the default.
OUTLIER_SCORES = ("combined", "kdist", "lof", "mean")


#: Default ``k`` of the outlier scores (``run_study(outlier_neighbors=)``); see its docstring.
OUTLIER_NEIGHBORS = 50


def outlier_index_neighbors(k: int) -> int:
    """Degree of the kNN index graph the study builds for ``k`` outlier neighbours."""
    return max(40, int(k) + 10)


#: How ``summary.json``'s ``best`` is picked.
BEST_RULE = ("the (set, algorithm, k) with the highest sampled silhouette among the chosen "
             "rows of metrics.csv (one per set x algorithm)")


#: Silhouette values within this margin of the best count as a tie.
K_TIE_MARGIN = 0.01


#: How a mixture is balanced, as reported in ``summary.json``.
MIX_RULE = ("each member's reduced rows times sqrt(w_i / T_i), T_i the member's total variance and w the "
            "weights normalised to sum 1, then side by side: member i holds the share w_i of the variance")


#: The rule of :func:`choose_k`, as reported in ``summary.json``.
K_RULE = (f"highest sampled silhouette; values within {K_TIE_MARGIN} of the best are ties, "
          "won by the lowest (exact, all-row) Davies-Bouldin index")


def parse_k_range(spec: str | int | Sequence[int]) -> list[int]:
    """``"2:15"`` -> [2, ..., 15] (inclusive), ``"8"`` -> [8], ``"4,8,12"`` -> [4, 8, 12]."""
    if isinstance(spec, int):
        ks = [spec]
    elif isinstance(spec, str):
        try:
            if ":" in spec:
                lo, hi = (int(p) for p in spec.split(":"))
                ks = list(range(lo, hi + 1))
            else:
                ks = [int(p) for p in spec.split(",")]
        except ValueError:
            raise InputError(f"k={spec!r} is not a k range; write it like '8', '2:15' or '4,8,12'.") from None
    else:
        ks = [int(k) for k in spec]
    if not ks or min(ks) < 2:
        raise InputError(f"k={spec!r} should name one or more k >= 2.")
    return sorted(set(ks))


@dataclass(frozen=True)
class MixSpec:
    """One mixture of descriptor sets (see :func:`parse_mix`)."""

    members: tuple[str, ...]
    weights: tuple[float, ...]

    @property
    def name(self) -> str:
        """``"a+b"``: the set name of the mixture in every output."""
        return "+".join(self.members)


def parse_mix(specs: str | Sequence[str] | None, available: Sequence[str]) -> list[MixSpec]:
    """``["vdc_color+vdc_type", "osnet+vdc_color:2,1"]`` -> validated :class:`MixSpec` list.

    A spec joins two or more descriptor sets with ``+``; optional relative
    weights follow a ``:`` (one positive number per member, default equal).
    The mixture is named by its members (``osnet+vdc_color``); the same members
    may be mixed only once per study.

    Parameters
    ----------
    specs : str or list of str, optional
        One spec or several (the CLI's repeatable ``--mix``).
    available : list of str
        Descriptor sets of the store.
    """
    if specs is None:
        return []
    out: list[MixSpec] = []
    for spec in [specs] if isinstance(specs, str) else specs:
        where = f"mix={spec!r} (--mix)"
        sets, _, weight_text = str(spec).partition(":")
        members = tuple(m.strip() for m in sets.split("+"))
        if len(members) < 2 or not all(members):
            raise InputError(f"{where} should join two or more descriptor sets with '+', e.g. "
                             f"'vdc_color+vdc_type' or 'osnet+vdc_color:2,1'; available sets: {', '.join(available)}.")
        unknown = [m for m in members if m not in available]
        if unknown:
            raise InputError(f"{where}: unknown descriptor set(s) {', '.join(map(repr, unknown))}; "
                             f"available sets: {', '.join(available)}.")
        if len(set(members)) != len(members):
            raise InputError(f"{where} names a descriptor set twice; give it a larger weight instead, "
                             "e.g. 'osnet+vdc_color:2,1'.")
        try:
            weights = tuple(float(w) for w in weight_text.split(",")) if weight_text else (1.0,) * len(members)
        except ValueError:
            weights = ()
        if len(weights) != len(members) or not all(np.isfinite(w) and w > 0 for w in weights):
            raise InputError(f"{where}: the weights after ':' should be {len(members)} positive numbers, "
                             f"one per set, e.g. '{sets}:{','.join(['1'] * len(members))}'.")
        mix = MixSpec(members, weights)
        if any(m.name == mix.name for m in out):
            raise InputError(f"{where}: the sets {mix.name} are mixed twice; keep one weighting per study.")
        out.append(mix)
    return out


def choose_k(metrics: pd.DataFrame) -> int:
    """The documented rule for choosing k from a sweep.

    The k with the highest sampled silhouette; values within
    ``K_TIE_MARGIN`` (0.01) of the best count as ties, and among ties the one
    with the lowest Davies-Bouldin index wins (both metrics prefer compact,
    separated clusters; DB is exact over all rows, so it breaks sampling noise).

    Parameters
    ----------
    metrics : DataFrame
        Columns ``k``, ``silhouette``, ``davies_bouldin``.
    """
    if metrics["silhouette"].isna().all():  # e.g. a single cluster: no silhouette
        return int(metrics.sort_values("k").iloc[0]["k"])
    best = metrics["silhouette"].max()
    ties = metrics[metrics["silhouette"] >= best - K_TIE_MARGIN]
    return int(ties.sort_values(["davies_bouldin", "k"]).iloc[0]["k"])


def best_clustering(metrics: pd.DataFrame) -> dict[str, Any] | None:
    """The chosen row with the highest sampled silhouette (see ``BEST_RULE``)."""
    chosen = metrics[metrics["chosen"] & metrics["silhouette"].notna()]
    if chosen.empty:
        return None
    row = chosen.loc[chosen["silhouette"].idxmax()]
    return {"set": row["set"], "algorithm": row["algorithm"], "k": int(row["k"]),
            "silhouette": float(row["silhouette"]), "calinski_harabasz": float(row["calinski_harabasz"]),
            "davies_bouldin": float(row["davies_bouldin"])}


#: Resident memory a study holds besides its blocks, subtracted from ``memory`` before sizing them.
#: Measured on the 416,314-row demo case (with :func:`~streamclust.core.blocks.bound_heaps`): 267 MiB
#: after import, ~530 MiB once numba has compiled the kNN index's kernels and between sets.
LIBRARY_BASELINE = 600 << 20


def block_budget(memory: str | int | None, n_features: dict[str, int]) -> int:
    """Bytes left for blocks, statistics and caches once the libraries are loaded.

    The budget covers the whole process: Python, numpy/scikit-learn/numba/pynndescent
    and their compiled kernels take ``LIBRARY_BASELINE`` before any block is read.
    Checked before any work: the widest set's PCA holds ~5 ``d x d`` float64
    matrices (the accumulated scatter, one block's, the covariance and ``eigh``'s
    copies) next to blocks of at least 64 rows.

    Parameters
    ----------
    memory : str or int or None
        The ``memory=`` of :func:`~streamclust.study.run_study`.
    n_features : dict of str -> int
        Columns of every descriptor set studied.

    Returns
    -------
    int
        ``memory`` minus ``LIBRARY_BASELINE``: what the passes size their blocks from.

    Raises
    ------
    MemoryBudgetError
        If the budget cannot hold that, naming the set and the smallest budget that does.
    """
    total = parse_memory(memory)
    name = max(n_features, key=n_features.get)
    d = n_features[name]
    need = LIBRARY_BASELINE + 5 * 8 * d * d + block_nbytes(d, 64)
    if total < need:
        raise MemoryBudgetError(
            f"memory={total / 2**20:.0f} MiB cannot hold this study: the libraries take "
            f"~{LIBRARY_BASELINE >> 20} MiB and the PCA of {name!r} ({d} features) needs "
            f"{(need - LIBRARY_BASELINE) / 2**20:.0f} MiB more; give at least "
            f"memory='{math.ceil(need / 2**20)}MiB' (--memory), or leave {name!r} out (--descriptors)."
        )
    return total - LIBRARY_BASELINE


#: Up to this many rows the steps after the PCA are mostly fixed costs (eigen-free but per-k
#: bookkeeping, sample-sized passes, small GEMMs) that keep one core busy while the other waits,
#: so :func:`sets_at_once` studies two sets at a time (benchmarks/README.md, "speed").
SMALL_STUDY_ROWS = 100_000

#: The least share of the budget a set studied beside another one may get.
MIN_SHARED_BUDGET = 128 << 20


def sets_at_once(n_rows: int, n_sets: int, budget: int, cores: int) -> int:
    """How many sets (or mixtures) a study takes through the steps after the PCA at the same time:
    2 when they are small (``n_rows <= SMALL_STUDY_ROWS``), there are 2 or more of them, 2 cores
    and half the budget is at least :data:`MIN_SHARED_BUDGET`; otherwise 1.  Each then works
    within ``budget // sets_at_once(...)``, so the process stays within the budget.

    Parameters
    ----------
    n_rows : int
    n_sets : int
        Sets studied side by side: the descriptor sets, or (after them) the mixtures, whichever are more.
    budget : int
        :func:`block_budget`'s bytes.
    cores : int
        :func:`~streamclust.core.scheduler.local_cores`.

    Returns
    -------
    int, 1 or 2
    """
    small = n_rows <= SMALL_STUDY_ROWS and n_sets >= 2 and cores >= 2
    return 2 if small and budget // 2 >= MIN_SHARED_BUDGET else 1


def k_edge_note(k: int, ks: Sequence[int]) -> str | None:
    """What to say when the chosen ``k`` is the smallest or the largest of the range ``ks``.

    The rule may then prefer a k outside the range: the user should widen it.  ``None`` when ``k``
    lies inside, when the range holds one k, or when ``k`` is the smallest and equals 2 (the
    smallest k there is).

    Parameters
    ----------
    k : int
        The chosen k.
    ks : sequence of int
        The k range, sorted.
    """
    lo, hi = int(ks[0]), int(ks[-1])
    if lo == hi:
        return None
    if k == hi:
        return (f"k={k} is the largest of the range {lo}..{hi}: a larger k may score better; "
                f"widen the range, e.g. --k {lo}:{2 * hi}")
    if k == lo and lo > 2:
        return (f"k={k} is the smallest of the range {lo}..{hi}: a smaller k may score better; "
                f"widen the range, e.g. --k 2:{hi}")
    return None
