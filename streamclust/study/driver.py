"""The study: every descriptor set of a store preprocessed, clustered and summarised.

For each descriptor set, in bounded memory:

1. **Preprocess** -- :class:`~streamclust.estimators.StreamingPCA` (L2-normalise rows,
   centre, project on ``n_components`` principal axes) fitted in ONE pass over the
   raw descriptors; a second pass writes the reduced rows to the run
   (``runs/<id>/<set>/reduced``).  Everything after works on those.
2. **Sweep k** -- :func:`~streamclust.estimators.kmeans_sweep` fits k-means for
   every k of the range (each pass over the reduced rows serves all k).
3. **Score** -- exact full-data inertia, Calinski-Harabasz and Davies-Bouldin for
   every k (:func:`~streamclust.estimators.sweep_metrics`), silhouette on a seeded
   sample.
4. **Choose k** -- the rule in :func:`~streamclust.study.rules.choose_k`.
5. **Label** every row with the chosen model (``runs/<id>/<set>/labels``).
6. **Score outliers** of every row (``runs/<id>/<set>/outlier_score``, ``is_outlier``).
   The default (``outlier_score="combined"``, :data:`~streamclust.study.rules.OUTLIER_SCORES`) combines robust
   z-scores (:class:`~streamclust.estimators.RobustZScreen`: the Euclidean norm of the
   positive ones) of three kinds of evidence: the distance to the ``k``-th (50th) nearest row of a
   bounded reference sample
   of the reduced rows (:class:`~streamclust.estimators.KNNOutlierDetector`,
   ``score="kdist"``), the raw row norm (both sides) and the residual off the
   principal subspace, the last two written by step 1's transform pass
   (``runs/<id>/<set>/row_norm``, ``residual``).  Rows scoring above
   :data:`~streamclust.estimators.screening.DEFAULT_Z_THRESHOLD` are flagged and
   ``outliers.csv`` names the evidence that flagged each.  A mixture's evidence is its
   own k-distance plus every member's norm and residual.  ``"lof"``, ``"kdist"`` and
   ``"mean"`` use the kNN detector's score alone, with its own threshold rule.

7. **Other algorithms** (``algorithms=``, see :data:`~streamclust.study.algorithms.ALGORITHMS`) -- Ward
   agglomeration on micro-clusters, a diagonal Gaussian mixture, sampled HDBSCAN, Nystrom spectral
   clustering (dask-ml affinities) --
   on the same reduced rows, scored with the same exact all-row metrics and the
   same sampled silhouette, k chosen by the same rule; their chosen labels go to
   ``runs/<id>/<set>/labels_<algorithm>`` and ``algorithms.csv`` compares them
   (ARI / AMI) with k-means and each other.  Each algorithm's clusters are then profiled
   against the metadata and one algorithm is recommended per set
   (:mod:`~streamclust.study.algorithm_comparison`, rule
   :data:`~streamclust.study.algorithm_comparison.ALGORITHM_RULE`).

8. **Mixtures** (``mix=``, see :func:`~streamclust.study.rules.parse_mix`) -- a mixture such as
   ``vdc_color+vdc_type`` is built from the members' stored reduced rows
   (step 1), side by side, each member balanced by
   :class:`~streamclust.estimators.VarianceBalancer`: member ``i`` with total
   variance ``T_i`` (sum of its column variances) is multiplied by
   ``sqrt(w_i / T_i)``, ``w`` the weights normalised to sum 1, so it holds
   exactly the share ``w_i`` of the mixture's variance whatever its number of
   dimensions or scale.  The mixed rows are written block by block to
   ``runs/<id>/<mix>/reduced`` and the mixture goes through steps 2-7 like any
   other set (its saved model chains the member PCAs and the balancing, so
   ``streamclust assign`` labels new rows from the members' descriptors).
   Members not listed in ``descriptors`` are studied too.

9. **Projections** (``umap=True``) -- :class:`~streamclust.estimators.SampledUMAP`
   (UMAP of a seeded sample of the stored reduced rows, every row then placed at
   the mean of its nearest sampled rows, block by block) writes every row's 2-D
   position to ``runs/<id>/<set>/umap`` (float32, ``(n, 2)``, chunked like the
   labels), for every set and mixture.  The linear 2-D / 3-D view needs no copy:
   it is ``runs/<id>/<set>/reduced[:, :2]`` / ``[:, :3]`` (the reduced rows are
   PCA scores, largest variance first; :func:`~streamclust.estimators.pca_projection`).

Outputs in ``out_dir``: ``results.csv`` (``path``, ``cluster``, ``cluster_<set>``
per set, ``outlier_score``, ``is_outlier``, then ``outlier_score_<set>``,
``is_outlier_<set>`` per set; one row per image in store order; the unsuffixed
columns are the recommended set's; the same rows, typed, in ``results.parquet``),
``outliers.csv`` (the top outliers of each set with score, rank and flag),
``clusters.csv`` (one row per set x algorithm x cluster: size, share, outlier rate, top
attribute values, sentence, ``set``, ``algorithm``; k-means rows first in each set),
``comparison.csv`` (the best set per attribute),
``metrics.csv`` (one row per set x algorithm x k, with ``bic`` for gmm and
``noise_fraction`` for hdbscan), ``algorithms.csv`` (``set, algorithm_a, algorithm_b, ari, ami``),
``cluster_<set>_<algorithm>`` columns at the end of ``results.csv`` for the algorithms other than k-means,
``models/<set>/`` (arrays + JSON, see :mod:`streamclust.io.persist`),
``report.html`` (:mod:`~streamclust.study.reporting`) and ``summary.json`` (its
``algorithm_comparison`` holds, per set, each algorithm's k, metrics and best attribute, their
agreement, the recommended algorithm and the reason; its ``timings`` the wall and CPU seconds of every
step, e.g. ``"osnet: k-means 2..15"``).  They are written into ``out_dir/.partial-<run id>/`` and moved
into ``out_dir`` (``summary.json`` last) only when everything is written, and the
run in the store is marked complete after that: a study that fails or is killed
leaves the previous study's outputs in ``out_dir`` untouched and never a run that
looks finished (a killed one leaves its ``.partial-*`` folder, safe to delete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from streamclust.analysis import compare_sets
from streamclust.core.blocks import parse_memory, release_memory
from streamclust.core.files import write_atomic, write_csv
from streamclust.core.logs import forward_log
from streamclust.core.progress import progress_step, show_progress, step_times
from streamclust.core.scheduler import local_cores, run_concurrently, runs_on_scheduler
from streamclust.errors import InputError
from streamclust.estimators import SampledUMAP
from streamclust.io.store import CaseStore, RunGroup, disk_full_error
from streamclust.study.algorithm_comparison import ALGORITHM_RULE, clusters_table, compare_algorithms
from streamclust.study.algorithms import agreement, parse_algorithms, study_algorithms
from streamclust.study.arguments import check_study_arguments
from streamclust.study.case_files import CaseFile, CaseFileArg, choose_images, choose_metadata
from streamclust.study.outputs import publish, write_results
from streamclust.study.reporting import build_study_report
from streamclust.study.results import StudyResult
from streamclust.study.rules import (
    BEST_RULE,
    K_RULE,
    MIX_RULE,
    OUTLIER_NEIGHBORS,
    OUTLIER_SCORES,
    MixSpec,
    best_clustering,
    block_budget,
    parse_k_range,
    parse_mix,
    sets_at_once,
)
from streamclust.study.steps import Reduced, SetOutcome, mix_sets, reduce_set, store_umap, study_set, umap_params
from streamclust.study.truth import read_outlier_truth

logger = logging.getLogger(__name__)

__all__ = ["run_study"]


@dataclass(kw_only=True)
class _Plan:
    """What a study runs, checked before any work: the store, the sets and mixtures, k and the budget."""

    store: CaseStore
    #: Descriptor sets in study order (every mixture member included).
    names: list[str]
    mixes: list[MixSpec]
    ks: list[int]
    algorithms: list[str]
    #: Bytes the passes size their blocks from (:func:`~streamclust.study.rules.block_budget`).
    budget: int

    def params(self, *, n_components: int | float, n_init: int, memory: str | int | None,
               silhouette_samples: int, outlier_neighbors: int, outlier_score: str,
               outlier_truth: Any, random_state: int, metadata: Any) -> dict[str, Any]:
        """The run's parameters, as stored with it and reported."""
        return {"descriptors": self.names, "mix": [f"{m.name}:{','.join(map(str, m.weights))}" for m in self.mixes],
                "k": self.ks, "n_components": n_components, "n_init": n_init,
                "memory": parse_memory(memory), "block_memory": self.budget,
                "silhouette_samples": silhouette_samples,
                "outlier_neighbors": outlier_neighbors, "outlier_score": outlier_score,
                "outlier_truth": str(outlier_truth) if outlier_truth else None,
                "random_state": random_state,
                "metadata": str(metadata) if metadata else None, "algorithms": self.algorithms}


def _plan(store_path: Any, *, descriptors: Sequence[str] | None, k: Any, algorithms: Any, mix: Any,
          memory: str | int | None, outlier_score: str, n_top_outliers: int) -> _Plan:
    """Check the arguments of :func:`run_study` against the store; raise :class:`InputError` naming the bad one."""
    ks = parse_k_range(k)
    algs = parse_algorithms(algorithms)
    if outlier_score not in OUTLIER_SCORES:
        raise InputError(f"outlier_score={outlier_score!r} should be one of {', '.join(OUTLIER_SCORES)}.")
    if isinstance(n_top_outliers, bool) or not isinstance(n_top_outliers, (int, np.integer)) or n_top_outliers < 0:
        raise InputError(f"n_top_outliers={n_top_outliers!r} should be an integer >= 0.")
    store = CaseStore(store_path, mode="r+")
    names = list(descriptors) if descriptors else store.descriptor_names()
    available = store.descriptor_names()
    missing = [n for n in names if n not in available]
    if missing or not names:
        raise InputError(f"{store.path}: no descriptor set(s) {missing or names}; it has {available}.")
    mixes = parse_mix(mix, available)
    names = list(dict.fromkeys(names + [m for spec in mixes for m in spec.members]))  # members studied too
    if store.n_rows < max(ks):
        raise InputError(f"n_samples={store.n_rows} should be >= n_clusters={max(ks)}.")
    budget = block_budget(memory, {n: int(store.descriptor(n).shape[1]) for n in names})
    return _Plan(store=store, names=names, mixes=mixes, ks=ks, algorithms=algs, budget=budget)


@dataclass
class _Inputs:
    """What a study reads besides the descriptors: the metadata and image source it uses (and why), the
    per-image attributes (rows in store order) and the known outliers ((n,) int8), when there are some."""

    metadata: CaseFile
    attributes: pd.DataFrame | None
    images: CaseFile
    known: np.ndarray | None


def _study_inputs(store: CaseStore, metadata: CaseFileArg, images: CaseFileArg, outlier_truth: Any, *,
                  report: bool, memory: str | int | None) -> _Inputs:
    """The metadata and images given, else recorded by convert (:mod:`~streamclust.study.case_files`), and the
    known outliers; the metadata is read within ``memory``."""
    metadata_file, attributes = choose_metadata(store, metadata, memory=memory)
    images_file = choose_images(store, images, report=report)
    known = read_outlier_truth(outlier_truth, store.ids[:]) if outlier_truth else None
    release_memory()  # the tables' text (pandas keeps strings in pyarrow's pool) before any block is read
    return _Inputs(metadata_file, attributes, images_file, known)


@dataclass
class _EverySet:
    """What the per-set steps hand to the comparison and the output files, by set name."""

    labels: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    flags: dict[str, Any] = field(default_factory=dict)
    reduced: dict[str, Any] = field(default_factory=dict)
    top_outliers: list[pd.DataFrame] = field(default_factory=list)
    metrics: list[pd.DataFrame] = field(default_factory=list)
    #: Chosen labels of the algorithms other than k-means: set -> algorithm -> zarr (n,).
    extra_labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    agreement: list[pd.DataFrame] = field(default_factory=list)
    #: Columns of metrics.csv in order (those of the k-means rows, then the optional ones).
    columns: list[str] = field(default_factory=list)


def _study_every_set(plan: _Plan, run: RunGroup, result: StudyResult, stage: Path, projector: SampledUMAP | None,
                     *, n_components: int | float, **set_options: Any) -> _EverySet:
    """Steps 1-9 of the module docstring for every set, then every mixture; ``set_options`` are
    :func:`~streamclust.study.steps.study_set`'s keyword arguments.

    Step 1 (and a mixture's building) runs one set at a time with the whole budget; steps 2-9, on
    the reduced rows, run for :func:`~streamclust.study.rules.sets_at_once` sets at a time, each
    within that share of the budget.  The outcomes are gathered in plan order whatever order they
    finish in."""
    sets = _EverySet()
    prepared: dict[str, Reduced] = {}
    mix_by_name = {m.name: m for m in plan.mixes}
    at_once = sets_at_once(plan.store.n_rows, max(len(plan.names), len(plan.mixes)), plan.budget, local_cores())
    budget = plan.budget // at_once
    result.sets_at_once = at_once
    if projector is not None and at_once > 1:
        projector = clone(projector).set_params(memory=budget)

    def steps_2_to_9(name: str) -> tuple[SetOutcome, dict[str, Any]]:
        outcome = study_set(plan.store, run, name, plan.ks, prepared[name], out=stage, budget=budget,
                            **set_options)
        if projector is not None:
            outcome.result.umap = store_umap(projector, outcome.reduced, run, name)
        extra: dict[str, Any] = {}
        if len(plan.algorithms) > 1:
            first = outcome.result.metrics.iloc[0]
            base = {c: first[c] for c in ("set", "n_rows", "n_features", "n_components")}
            extra["metrics"], extra["labels"] = study_algorithms(
                run, name, outcome.reduced, plan.ks, plan.algorithms, base=base, budget=budget,
                sample=outcome.silhouette_rows, random_state=set_options["random_state"])
        return outcome, extra

    for group in (plan.names, list(mix_by_name)):  # mixtures are built from their members' reduced rows
        for name in group:
            prepared[name] = (mix_sets(run, mix_by_name[name], prepared, budget=plan.budget)
                              if name in mix_by_name else
                              reduce_set(plan.store, run, name, n_components=n_components, budget=plan.budget))
        for name, (outcome, extra) in zip(group, run_concurrently(steps_2_to_9, group, at_once)):
            result.sets[name] = outcome.result
            result.profiles[name] = outcome.profile
            sets.reduced[name] = outcome.reduced
            sets.labels[name], sets.scores[name], sets.flags[name] = outcome.labels, outcome.scores, outcome.flags
            sets.top_outliers.append(outcome.top_outliers)
            sets.metrics.append(outcome.result.metrics)
            sets.columns = list(outcome.result.metrics.columns)
            if extra:
                sets.extra_labels[name] = extra["labels"]
                sets.metrics.append(extra["metrics"])
                sets.agreement.append(agreement(name, {"kmeans": outcome.labels, **extra["labels"]}))
    return sets


def _compare_and_write(plan: _Plan, result: StudyResult, sets: _EverySet, stage: Path, *,
                       attributes: pd.DataFrame | None, random_state: int) -> None:
    """Gather the metrics, compare the sets (recommendation) and write the CSV outputs into ``stage``."""
    metrics_all = pd.concat(sets.metrics, ignore_index=True)
    for col in ("bic", "noise_fraction"):
        if col not in metrics_all:
            metrics_all[col] = np.nan
    metrics_all = metrics_all[sets.columns + ["bic", "noise_fraction"]]
    agreement_all = (pd.concat(sets.agreement, ignore_index=True) if sets.agreement else
                     pd.DataFrame(columns=["set", "algorithm_a", "algorithm_b", "ari", "ami"]))
    result.algorithm_metrics = metrics_all
    result.agreement = agreement_all
    result.best = best_clustering(metrics_all)
    kmeans_chosen = metrics_all[metrics_all["chosen"] & (metrics_all["algorithm"] == "kmeans")]
    with progress_step("comparison of the sets"):
        comparison = compare_sets(sets.labels, attributes=attributes, outlier_scores_by_set=sets.scores,
                                  reduced_by_set=sets.reduced, metrics=kmeans_chosen,
                                  random_state=random_state, memory=plan.budget)
    result.comparison = comparison
    result.recommended = comparison.recommended_set or plan.names[0]
    logger.info(f"recommended set: {result.recommended} ({comparison.reason})")
    write_csv(stage / "metrics.csv", metrics_all)
    write_csv(stage / "algorithms.csv", agreement_all)
    write_csv(stage / "comparison.csv", comparison.recommendation, index=True)
    with progress_step("comparison of the algorithms"):
        result.algorithm_comparison = {
            n: compare_algorithms(n, {"kmeans": sets.labels[n], **sets.extra_labels.get(n, {})}, metrics_all,
                                  agreement_all, ks=plan.ks, kmeans_profile=result.profiles[n],
                                  attributes=attributes, outlier_flags=sets.flags[n], memory=plan.budget)
            for n in result.sets}
    for n, c in result.algorithm_comparison.items():
        if len(c.algorithms) > 1:
            logger.info(f"{n}: recommended algorithm {c.reason}")
    write_csv(stage / "clusters.csv", clusters_table(result.algorithm_comparison))
    rec = result.recommended
    columns = {"cluster": sets.labels[rec], **{f"cluster_{n}": a for n, a in sets.labels.items()},
               "outlier_score": sets.scores[rec], "is_outlier": sets.flags[rec]}
    for n in result.sets:
        columns[f"outlier_score_{n}"] = sets.scores[n]
        columns[f"is_outlier_{n}"] = sets.flags[n]
    for n in result.sets:
        for alg, arr in sets.extra_labels.get(n, {}).items():
            columns[f"cluster_{n}_{alg}"] = arr
    with progress_step("results"):
        write_results(stage / "results.csv", stage / "results.parquet", plan.store.ids, columns)
    write_csv(stage / "outliers.csv", pd.concat(sets.top_outliers, ignore_index=True))


def _write_summary(plan: _Plan, run: RunGroup, result: StudyResult, stage: Path, params: dict[str, Any],
                   case_files: list[CaseFile]) -> None:
    """``summary.json``: the run, the metadata and images used, the recommendation, one row per set, the best
    clustering and the rules."""
    summary = {"run_id": run.run_id, "store": plan.store.path,
               **{f.kind: f.to_dict() for f in case_files},
               "recommended": result.recommended,
               "recommended_reason": result.comparison.reason,
               "k_rule": K_RULE,
               "sets": result.summary_table().to_dict(orient="records"),
               "algorithms": plan.algorithms, "best": result.best, "best_rule": BEST_RULE,
               "mixtures": {n: r.mixture for n, r in result.sets.items() if r.mixture},
               "mix_rule": MIX_RULE,
               "k_at_range_edge": {n: r.k_note for n, r in result.sets.items() if r.k_note},
               "agreement": result.agreement.to_dict(orient="records"),
               "algorithm_rule": ALGORITHM_RULE,
               "algorithm_comparison": {n: c.summary() for n, c in result.algorithm_comparison.items()},
               "timings": result.timings, "sets_at_once": result.sets_at_once}
    if "umap" in params:
        summary["umap"] = {"params": params["umap"],
                           "sets": {n: {k: v for k, v in r.umap.items() if k != "params"}
                                    for n, r in result.sets.items()}}
    write_atomic(stage / "summary.json", json.dumps(summary, indent=2, default=str))


def _complete(run: RunGroup, result: StudyResult, out: Path) -> None:
    """Point every set at its published model and mark the run complete in the store."""
    for res in result.sets.values():
        res.model_dir = out / "models" / res.name
    chosen_rows = result.algorithm_metrics[result.algorithm_metrics["chosen"]]
    run.complete({"recommended": result.recommended,
                  "chosen_k": {n: r.k for n, r in result.sets.items()},
                  "chosen_k_by_algorithm": {f"{r.set}/{r.algorithm}": int(r.k)
                                            for r in chosen_rows.itertuples()}})


@runs_on_scheduler
def run_study(
    store_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
    descriptors: Sequence[str] | None = None, k: str | int | Sequence[int] = "2:15",
    n_components: int | float = 64, n_init: int = 3, memory: str | int | None = None,
    silhouette_samples: int = 10_000, metadata: CaseFileArg = None, images: CaseFileArg = None, report: bool = True,
    outlier_neighbors: int = OUTLIER_NEIGHBORS, outlier_score: str = "combined",
    outlier_truth: str | os.PathLike[str] | None = None, n_top_outliers: int = 100, random_state: int = 0,
    progress: bool = False, log: Callable[[str], None] | None = None,
    algorithms: str | Sequence[str] = ("kmeans",), mix: str | Sequence[str] | None = None,
    scheduler: str | None = None, client: Any = None, umap: bool = False,
) -> StudyResult:
    """Run the study on a store; the steps and outputs are those of the module docstring.

    Parameters
    ----------
    store_path : path or str
        A store written by :func:`streamclust.io.ingest.convert_case`: its folder or fsspec URL.
    out_dir : path
        Folder for the outputs (module docstring); the previous study's stay until this one is complete.
    descriptors : list of str, optional
        Descriptor sets to study (default: all in the store).
    k : str, int or list of int
        k values to sweep, e.g. ``"2:15"`` (:func:`~streamclust.study.rules.parse_k_range`).
    n_components : int or float
        PCA components, or the fraction of variance to keep.
    n_init : int
        k-means starts per k; the lowest full-data inertia wins.
    memory : str or int, optional
        Memory budget of the whole process, e.g. ``"1GB"`` (default 1 GiB; on a cluster, of each worker).
    silhouette_samples : int
        Rows sampled for the silhouette estimate (one sample per set serves every algorithm and k).
    metadata, images : path, None or False
        Per-image attributes (``vehicle_info.txt``, a CSV/Parquet with a path column) for the profiles, sentences
        and set recommendation; ``images.zip`` or an image folder for the montages.  None (default): what convert
        recorded in the store; False: none.  Logged, with their share of the paths (:mod:`.case_files`).
    report : bool
        Write ``report.html`` (:mod:`streamclust.study.reporting`).
    outlier_neighbors : int
        ``k`` of the kNN outlier scores (default 50: at 416k rows groups of look-alike anomalies of a
        few hundred rows hid from k = 20); the index graph has ``max(40, k + 10)`` neighbours.
    outlier_score : {"combined", "kdist", "lof", "mean"}
        Step 6: ``"combined"`` (default) or one of the kNN detector's scores alone with its own
        rule (``"lof"`` hides look-alike anomalies: ROC AUC 0.51-0.69 on real images, vs 0.90-0.97).
    outlier_truth : path, optional
        Known outliers to judge the flags by (:func:`~streamclust.study.truth.read_outlier_truth`):
        precision, recall and ROC AUC per set go to the log, ``summary.json``, the report and
        :attr:`SetResult.outlier_truth`; ``outliers.csv`` gains a ``known_outlier`` column.
    n_top_outliers : int
        Rows per set listed in ``outliers.csv``.
    random_state : int
        Seed; the same seed gives the same result.
    progress : bool
        A bar on stderr per long pass, named by set and step (``osnet: PCA``; :mod:`streamclust.core.progress`).
    log : callable, optional
        Receives one line per finished step (the INFO records of the ``streamclust`` loggers).
    algorithms : str or list of str
        Step 7: the algorithms compared on every set's reduced rows, among
        :data:`~streamclust.study.algorithms.ALGORITHMS` (``"kmeans,ward"`` or a list).  ``kmeans``
        always runs and alone defines ``cluster_<set>`` and the saved model; the default runs it
        alone (the CLI's ``--algorithms`` default is ``kmeans,ward``).
    mix : str or list of str, optional
        Step 8: mixtures studied as sets of their own, e.g. ``["vdc_color+vdc_type", "osnet+vdc_color:2,1"]``
        (:func:`~streamclust.study.rules.parse_mix`); members missing from ``descriptors`` are studied too.
    scheduler : str, optional
        Where the parallel passes run: ``"local:N"`` worker processes for the call,
        ``"tcp://host:port"`` a running scheduler whose workers can read ``store_path``; default
        Dask's threads (:mod:`streamclust.core.scheduler`).  Results equal the threaded run's.
    client : distributed.Client, optional
        An existing client instead of ``scheduler`` (left open).
    umap : bool
        Step 9: also store every row's 2-D UMAP position
        (:class:`~streamclust.estimators.SampledUMAP`); the report then shows it.

    Returns
    -------
    StudyResult
    """
    with forward_log(log), show_progress(progress), step_times() as timings:  # steps log, and time themselves
        check_study_arguments(store_path, out_dir, n_components, n_init, random_state, outlier_neighbors,
                              metadata=metadata, images=images, outlier_truth=outlier_truth)
        plan = _plan(store_path, descriptors=descriptors, k=k, algorithms=algorithms, mix=mix, memory=memory,
                     outlier_score=outlier_score, n_top_outliers=n_top_outliers)
        inputs = _study_inputs(plan.store, metadata, images, outlier_truth, report=report, memory=memory)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        params = plan.params(n_components=n_components, n_init=n_init, memory=memory,
                             silhouette_samples=silhouette_samples, outlier_neighbors=outlier_neighbors,
                             outlier_score=outlier_score, outlier_truth=outlier_truth, random_state=random_state,
                             metadata=inputs.metadata.path)
        params["images"] = str(inputs.images.path) if inputs.images.path else None
        projector = SampledUMAP(n_components=2, memory=plan.budget, random_state=random_state) if umap else None
        if projector is not None:
            params["umap"] = umap_params(projector)
        run = plan.store.new_run(params)
        result = StudyResult(out_dir=out, run_id=run.run_id, timings=timings)
        stage = out / f".partial-{run.run_id}"  # outputs go here, then into `out` once all are written
        stage.mkdir()
        try:
            sets = _study_every_set(plan, run, result, stage, projector, n_components=n_components,
                                    n_init=n_init, silhouette_samples=silhouette_samples,
                                    outlier_neighbors=outlier_neighbors, outlier_score=outlier_score,
                                    n_top_outliers=n_top_outliers, random_state=random_state,
                                    attributes=inputs.attributes, known=inputs.known)
            _compare_and_write(plan, result, sets, stage, attributes=inputs.attributes, random_state=random_state)
            if report:
                with progress_step("report"):
                    page = build_study_report(result, plan.store, images=inputs.images.path, memory=plan.budget,
                                              out_dir=stage)
                logger.info(f"report: {out / page.name}")
            _write_summary(plan, run, result, stage, params, [inputs.metadata, inputs.images])
            publish(stage, out)
            _complete(run, result, out)
        except BaseException as exc:
            run.fail(f"{type(exc).__name__}: {exc}")
            shutil.rmtree(stage, ignore_errors=True)
            full = disk_full_error(exc, out, f"writing study run {run.run_id} (its partial outputs were removed)")
            if full is not None:
                raise full from exc
            raise
        return result
