"""Benchmark of the clustering families on every row of a 416k x 64 Zarr array, in bounded memory.

Run::

    .venv/bin/python benchmarks/bench_families.py --rows 416314 --dims 64

Writes a planted Gaussian mixture (10 components of unequal sizes and spreads, a
PCA-like decaying spectrum, 0.5% scattered outliers) block-wise to a temporary Zarr
array, then runs each family in a fresh Python process (so its peak RSS,
``ru_maxrss``, is its own and numba's compile cost lands where a user pays it):

* ``kmeans``: :class:`StreamingKMeans` (3 starts) fit, then ``predict`` of all rows;
* ``ward``: :class:`MicroClusterAgglomerative` (1000 micro-clusters, weighted Ward),
  plus re-cutting the tree for k = 2..15 without a data pass;
* ``gmm``: :class:`StreamingGaussianMixture` (diagonal) fit, then ``predict`` of all rows;
* ``hdbscan``: :class:`SampledHDBSCAN` (20,000-row sample) fit (labels every row);
* ``spectral``: the study's spectral step: :func:`spectral_sweep` (Nystrom, 300 landmarks, one
  embedding for k = 2..15), then per k the labels of every row + exact CH/DB + sampled silhouette
  (``score_labels``, as the study scores every algorithm); ARI at ``--k``;
* ``birch``: :class:`StreamingBirch` at two thresholds around the blobs' radius
  (shows the threshold's phase transition in 64-d);
* in-memory scikit-learn baselines, where they fit: ``KMeans`` and ``GaussianMixture``
  on all rows loaded in memory, ``AgglomerativeClustering(ward)`` and ``HDBSCAN`` on a
  sample (all rows need O(n^2) memory / do not finish), scored on the sample.

ARI is against the planted labels over the planted (non-outlier) rows; for HDBSCAN
also over the rows it did not call noise, with the noise fraction and the precision
and recall of noise against the planted outliers.  Target: peak RSS < 1 GiB for each
streamed family.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

_BLOCK = 65_536


# --------------------------------------------------------------------- stages
def make_data(path: str, rows: int, dims: int, k: int = 10, sep: float = 1.2, seed: int = 0,
              outliers: float = 0.005) -> dict:
    """Write the mixture to ``path`` (Zarr, chunks of 8192 rows) and the labels to
    ``path + '.y.npy'`` (-1 for the scattered outliers), one block at a time."""
    import zarr

    rng = np.random.default_rng(seed)
    scales = (1.0 / np.sqrt(1.0 + np.arange(dims))).astype(np.float32)
    centres = rng.normal(size=(k, dims)).astype(np.float32) * scales * sep
    weights = rng.dirichlet(np.full(k, 2.0))
    spread = rng.uniform(0.6, 1.4, k).astype(np.float32)
    z = zarr.create_array(path, shape=(rows, dims), dtype="float32", chunks=(8192, dims), overwrite=True)
    y = np.empty(rows, dtype=np.int32)
    for s in range(0, rows, _BLOCK):
        e = min(rows, s + _BLOCK)
        r = np.random.default_rng([seed, s])
        lab = r.choice(k, e - s, p=weights).astype(np.int32)
        X = centres[lab] + r.normal(size=(e - s, dims)).astype(np.float32) * scales * spread[lab, None]
        out = r.random(e - s) < outliers
        X[out] = r.uniform(-1, 1, size=(int(out.sum()), dims)).astype(np.float32) * scales * sep * 3
        lab[out] = -1
        z[s:e] = X
        y[s:e] = lab
    np.save(path + ".y.npy", y)
    radius = float(np.median(spread) * np.sqrt(np.sum(scales.astype(np.float64) ** 2)))
    return {"rows": rows, "dims": dims, "sizes": np.bincount(y[y >= 0]).tolist(),
            "outliers": int((y < 0).sum()), "median_blob_radius": radius}


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _open(path: str):
    import zarr

    return zarr.open_array(path, mode="r"), np.load(path + ".y.npy")


def _ari(y: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    inl = y >= 0
    return float(adjusted_rand_score(y[inl], np.asarray(labels)[inl]))


def stage_kmeans(path: str, k: int, memory: str) -> dict:
    from streamclust.estimators import StreamingKMeans

    X, y = _open(path)
    t = time.perf_counter()
    km = StreamingKMeans(k, memory=memory, random_state=0).fit(X)
    fit_s = time.perf_counter() - t
    labels = km.predict(X).compute()
    return {"rows": int(X.shape[0]), "fit_s": fit_s, "label_s": time.perf_counter() - t - fit_s,
            "ari": _ari(y, labels), "n_iter": km.n_iter_}


def stage_ward(path: str, k: int, memory: str, n_micro: int = 1000) -> dict:
    from streamclust.estimators.hierarchy import MicroClusterAgglomerative

    X, y = _open(path)
    t = time.perf_counter()
    est = MicroClusterAgglomerative(k, n_micro=n_micro, memory=memory, random_state=0).fit(X)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    sweep = {kk: est.labels_for(kk) for kk in range(2, 16)}
    recut_s = time.perf_counter() - t
    return {"rows": int(X.shape[0]), "fit_s": fit_s, "ari": _ari(y, est.labels_),
            "recut_2_15_s": recut_s, "ari_by_k": {kk: round(_ari(y, v), 4) for kk, v in sweep.items()},
            "micro_iter": est.n_iter_, "n_leaves": est.n_leaves_}


def stage_gmm(path: str, k: int, memory: str, covariance_type: str = "diag") -> dict:
    from streamclust.estimators.mixture import StreamingGaussianMixture

    X, y = _open(path)
    t = time.perf_counter()
    g = StreamingGaussianMixture(k, covariance_type=covariance_type, memory=memory, random_state=0).fit(X)
    fit_s = time.perf_counter() - t
    labels = g.predict(X).compute()
    return {"rows": int(X.shape[0]), "fit_s": fit_s, "label_s": time.perf_counter() - t - fit_s,
            "ari": _ari(y, labels), "n_iter": g.n_iter_, "converged": g.converged_,
            "mean_loglik": g.lower_bound_}


def stage_hdbscan(path: str, memory: str, sample_size: int = 20_000, min_cluster_size: int = 50,
                  min_samples: int = 10) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from streamclust.estimators.density import SampledHDBSCAN

    X, y = _open(path)
    t = time.perf_counter()
    est = SampledHDBSCAN(min_cluster_size, min_samples=min_samples, sample_size=sample_size,
                         memory=memory, random_state=0).fit(X)
    fit_s = time.perf_counter() - t
    lab = est.labels_
    noise, out = lab < 0, y < 0
    keep = ~noise & ~out
    return {"rows": int(X.shape[0]), "fit_s": fit_s, "fit_time": est.fit_time_, "ari": _ari(y, lab),
            "ari_non_noise": float(adjusted_rand_score(y[keep], lab[keep])),
            "n_clusters": est.n_clusters_, "noise": float(noise.mean()),
            "sample_noise": est.sample_noise_fraction_, "recall_knn": est.recall_,
            "noise_precision": float((noise & out).sum() / max(1, noise.sum())),
            "noise_recall": float((noise & out).sum() / max(1, out.sum())), "outlier_rate": float(out.mean())}


def stage_spectral(path: str, k: int, memory: str, k_max: int = 15) -> dict:
    from streamclust.estimators import silhouette_sample, spectral_sweep
    from streamclust.study.algorithms import score_labels

    X, y = _open(path)
    t = time.perf_counter()
    models = spectral_sweep(X, range(2, k_max + 1), memory=memory, random_state=0)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    sample = silhouette_sample(X, random_state=0, memory=memory)
    sil = {kk: score_labels(X, m.predict(X), sample, budget=memory)["silhouette"] for kk, m in models.items()}
    score_s = time.perf_counter() - t
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        labels = models[k].predict(X).compute()
    return {"rows": int(X.shape[0]), "sweep_fit_s": fit_s, "score_2_k_max_s": score_s, "ari": _ari(y, labels),
            "silhouette_by_k": {kk: round(v, 4) for kk, v in sil.items()}, "gamma": models[k].gamma_,
            "eigenvalues": [round(float(v), 3) for v in models[k_max].eigenvalues_]}


def stage_birch(path: str, k: int, memory: str, threshold: float, max_subclusters: int = 5000) -> dict:
    from streamclust.errors import MemoryBudgetError
    from streamclust.estimators.hierarchy import StreamingBirch

    X, y = _open(path)
    t = time.perf_counter()
    try:
        est = StreamingBirch(k, threshold=threshold, max_subclusters=max_subclusters, memory=memory).fit(X)
    except MemoryBudgetError as exc:
        return {"rows": int(X.shape[0]), "failed_after_s": time.perf_counter() - t, "error": str(exc)[:160]}
    return {"rows": int(X.shape[0]), "fit_s": time.perf_counter() - t, "ari": _ari(y, est.labels_),
            "subclusters": int(est.subcluster_centers_.shape[0]), "k_found": int(est.labels_.max()) + 1}


def stage_sk_full(path: str, k: int, which: str) -> dict:
    """scikit-learn on all rows loaded in memory (KMeans n_init=3, GaussianMixture diag)."""
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    z, y = _open(path)
    X = z[:]
    t = time.perf_counter()
    if which == "kmeans":
        labels = KMeans(k, n_init=3, random_state=0).fit(X).labels_
    else:
        labels = GaussianMixture(k, covariance_type="diag", random_state=0).fit(X).predict(X)
    return {"rows": int(X.shape[0]), "fit_s": time.perf_counter() - t, "ari": _ari(y, labels)}


def stage_sk_sample(path: str, k: int, which: str, sample: int) -> dict:
    """scikit-learn Ward / HDBSCAN on a seeded sample (what fits), scored on the sample."""
    import warnings

    from sklearn.cluster import HDBSCAN, AgglomerativeClustering
    from sklearn.metrics import adjusted_rand_score

    z, y = _open(path)
    idx = np.sort(np.random.default_rng(0).choice(z.shape[0], sample, replace=False))
    X = z.get_orthogonal_selection((idx, slice(None)))
    ys = y[idx]
    t = time.perf_counter()
    if which == "ward":
        labels = AgglomerativeClustering(k, linkage="ward").fit(X).labels_
        return {"rows": sample, "fit_s": time.perf_counter() - t, "ari": _ari(ys, labels)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        labels = HDBSCAN(min_cluster_size=50, min_samples=10).fit(X).labels_
    noise = labels < 0
    keep = ~noise & (ys >= 0)
    return {"rows": sample, "fit_s": time.perf_counter() - t, "ari": _ari(ys, labels),
            "ari_non_noise": float(adjusted_rand_score(ys[keep], labels[keep])), "noise": float(noise.mean()),
            "n_clusters": int(labels.max()) + 1}


# --------------------------------------------------------------------- driver
_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {here!r}); sys.path.insert(0, {root!r})
import bench_families as b
func, kwargs = sys.argv[1], json.loads(sys.argv[2])
t0 = time.perf_counter()
out = getattr(b, func)(**kwargs)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("@@RESULT@@" + json.dumps({{"wall_s": wall, "peak_rss_mb": peak, "result": out}}, default=str))
"""


def _run_child(func: str, **kwargs) -> dict:
    code = _CHILD.format(here=str(HERE), root=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, func, json.dumps(kwargs)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {func} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    res = json.loads(line[len("@@RESULT@@"):])
    res["process_s"] = time.perf_counter() - t
    return res


def _table(rows: list[dict], cols: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=416_314)
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sep", type=float, default=1.2, help="centre scale (overlap: lower = more)")
    ap.add_argument("--memory", default="1GB")
    ap.add_argument("--n-micro", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=20_000, help="HDBSCAN sample / sklearn baselines' sample")
    ap.add_argument("--birch-factors", default="1.0,1.25",
                    help="StreamingBirch thresholds as multiples of the median planted blob radius")
    ap.add_argument("--skip", default="", help="comma list of: kmeans,ward,gmm,hdbscan,spectral,birch,baselines")
    ap.add_argument("--workdir", default=None, help="where to write the Zarr array (temp dir)")
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_families_"))
    work.mkdir(parents=True, exist_ok=True)
    path = str(work / "x.zarr")
    results: dict = {"args": vars(args), "load_avg_start": os.getloadavg()}
    rows: list[dict] = []

    def add(name: str, r: dict, *, streamed: bool = True, **extra) -> None:
        o = r["result"]
        row = {"method": name, "rows labelled": o.get("rows"), "wall_s": r["wall_s"],
               "peak_rss_mb": r["peak_rss_mb"], "ari": o.get("ari"), **extra}
        if streamed:
            row["< 1 GiB"] = "yes" if r["peak_rss_mb"] < 1024 else "NO"
        rows.append(row)
        print(f"{name}: {json.dumps(o, default=str)} wall {r['wall_s']:.1f}s peak {r['peak_rss_mb']:.0f} MB",
              flush=True)

    try:
        print(f"data: {args.rows} x {args.dims} float32, {args.k}-component mixture -> {path}", flush=True)
        data = _run_child("make_data", path=path, rows=args.rows, dims=args.dims, k=args.k, sep=args.sep)
        results["data"] = data
        print(json.dumps(data["result"]), flush=True)
        common = {"path": path, "memory": args.memory}
        if "kmeans" not in skip:
            r = results["kmeans"] = _run_child("stage_kmeans", k=args.k, **common)
            add("StreamingKMeans (3 starts) + predict", r, notes=f"{r['result']['n_iter']} Lloyd passes")
        if "ward" not in skip:
            r = results["ward"] = _run_child("stage_ward", k=args.k, n_micro=args.n_micro, **common)
            add(f"MicroClusterAgglomerative ward ({args.n_micro} micro)", r,
                notes=f"re-cut k=2..15 in {r['result']['recut_2_15_s']:.2f} s")
        if "gmm" not in skip:
            r = results["gmm"] = _run_child("stage_gmm", k=args.k, **common)
            add("StreamingGaussianMixture diag + predict", r,
                notes=f"{r['result']['n_iter']} EM passes, converged={r['result']['converged']}")
        if "hdbscan" not in skip:
            r = results["hdbscan"] = _run_child("stage_hdbscan", sample_size=args.sample, **common)
            o = r["result"]
            add(f"SampledHDBSCAN (sample {args.sample}, mcs 50, ms 10)", r,
                notes=(f"{o['n_clusters']} clusters, noise {100 * o['noise']:.1f}% (sample "
                       f"{100 * o['sample_noise']:.1f}%), ARI non-noise {o['ari_non_noise']:.3f}, noise "
                       f"precision/recall vs planted {100 * o['outlier_rate']:.1f}% outliers "
                       f"{o['noise_precision']:.2f}/{o['noise_recall']:.2f}"))
        if "spectral" not in skip:
            r = results["spectral"] = _run_child("stage_spectral", k=args.k, **common)
            o = r["result"]
            add("Nystrom spectral (300 landmarks) k=2..15 + all-row scores", r,
                notes=f"sweep fit {o['sweep_fit_s']:.1f} s, labels + CH/DB/silhouette for 14 k "
                      f"{o['score_2_k_max_s']:.1f} s")
        if "birch" not in skip:
            radius = data["result"]["median_blob_radius"]
            for f in map(float, filter(None, args.birch_factors.split(","))):
                thr = round(f * radius, 4)
                r = results[f"birch_{f}"] = _run_child("stage_birch", k=args.k, threshold=thr, **common)
                o = r["result"]
                note = (f"threshold {thr} ({f} x blob radius): "
                        + (f"{o['subclusters']} subclusters, {o['k_found']} clusters" if "error" not in o
                           else f"stopped after {o['failed_after_s']:.0f} s: >5000 subclusters"))
                add("StreamingBirch", r, notes=note)
        if "baselines" not in skip:
            for which in ("kmeans", "gmm"):
                r = results[f"sk_{which}"] = _run_child("stage_sk_full", path=path, k=args.k, which=which)
                name = "sklearn KMeans(n_init=3), all rows in memory" if which == "kmeans" else \
                    "sklearn GaussianMixture diag, all rows in memory"
                add(name, r, streamed=False)
            r = results["sk_ward"] = _run_child("stage_sk_sample", path=path, k=args.k, which="ward",
                                                sample=args.sample)
            add(f"sklearn Ward on a {args.sample} sample (scored on it)", r, streamed=False)
            r = results["sk_hdbscan"] = _run_child("stage_sk_sample", path=path, k=args.k, which="hdbscan",
                                                   sample=args.sample)
            o = r["result"]
            add(f"sklearn HDBSCAN on a {args.sample} sample (scored on it)", r, streamed=False,
                notes=f"{o['n_clusters']} clusters, noise {100 * o['noise']:.1f}%, "
                      f"ARI non-noise {o['ari_non_noise']:.3f}")
        results["load_avg_end"] = os.getloadavg()
        print(f"\n## Clustering families: fit + label every row of {args.rows} x {args.dims} float32 (Zarr), "
              f"memory={args.memory}, each in a fresh process\n")
        print(_table(rows, ["method", "rows labelled", "wall_s", "peak_rss_mb", "< 1 GiB", "ari", "notes"]))
        print(f"\nARI vs planted labels over the {args.rows - data['result']['outliers']} planted rows "
              f"(sizes {data['result']['sizes']}); load average start {results['load_avg_start']}, "
              f"end {results['load_avg_end']} ({os.cpu_count()} cores)")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
