"""Benchmark of KNNOutlierDetector: all rows of a 416k x 64 Zarr array in bounded memory.

Run::

    .venv/bin/python benchmarks/bench_outliers.py --rows 416314 --dims 64

Every stage runs in a fresh Python process (so its peak RSS, ``ru_maxrss``, is its
own and numba's compile cost lands where a user pays it) and prints one table:

* ``ours 1x`` / ``ours 4x``: ``warm_up()`` then ``fit`` (reference sample, index,
  epsilon tuning, reference lrd, scores of every row, threshold) on the Zarr array,
  and on a 4x copy (the rows tiled with small noise): peak RSS must stay within 10%
  (the reference size is capped, so memory does not grow with rows) and under 1 GiB;
* ``sklearn LOF``: exact ``LocalOutlierFactor`` on 100k rows (all rows do not fit);
* ``faiss flat``: exact kNN (``IndexFlatL2``) of every row against a 100k reference,
  the same kNN job as ours, if ``faiss`` is importable (optional);
* the recall/time trade-off of the index (graph degree x query epsilon) on a 100k
  reference, querying all rows;
* numba compile cost: ``warm_up()`` in a fresh process with the on-disk cache warm,
  and with an empty ``NUMBA_CACHE_DIR`` (a new machine).

The data is a 50-cluster Gaussian mixture with a PCA-like decaying spectrum (like
PCA-reduced CNN descriptors) and 1% scattered outliers, written block-wise.
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

# --------------------------------------------------------------------- stages
# Each stage is a top-level function run in a child process by _run_child.

_BLOCK = 65_536


def make_data(path: str, rows: int, dims: int, seed: int = 0, n_clusters: int = 50) -> dict:
    """Write the mixture to ``path`` (Zarr, chunks of 8192 rows) and ``path + '.y.npy'``."""
    import zarr

    rng = np.random.default_rng(seed)
    scales = (1.0 / np.sqrt(1.0 + np.arange(dims))).astype(np.float32)
    centres = rng.normal(size=(n_clusters, dims)).astype(np.float32) * scales * 4
    spread = rng.uniform(0.5, 1.5, n_clusters).astype(np.float32)
    y = np.zeros(rows, bool)
    y[rng.choice(rows, int(0.01 * rows), replace=False)] = True
    z = zarr.create_array(path, shape=(rows, dims), dtype="float32", chunks=(8192, dims), overwrite=True)
    for s in range(0, rows, _BLOCK):
        e = min(rows, s + _BLOCK)
        r = np.random.default_rng([seed, s])
        lab = r.integers(0, n_clusters, e - s)
        X = centres[lab] + r.normal(size=(e - s, dims)).astype(np.float32) * scales * spread[lab, None]
        out = y[s:e]
        X[out] = r.uniform(-1, 1, size=(int(out.sum()), dims)).astype(np.float32) * scales * 10
        z[s:e] = X
    np.save(path + ".y.npy", y)
    return {"rows": rows, "dims": dims}


def tile_data(src: str, dst: str, factor: int) -> dict:
    """``factor`` copies of ``src`` one after the other, each with N(0, 0.01 * scale) noise."""
    import zarr

    a = zarr.open_array(src, mode="r")
    n, d = a.shape
    scales = (1.0 / np.sqrt(1.0 + np.arange(d))).astype(np.float32)
    z = zarr.create_array(dst, shape=(n * factor, d), dtype="float32", chunks=(8192, d), overwrite=True)
    for c in range(factor):
        for s in range(0, n, _BLOCK):
            e = min(n, s + _BLOCK)
            r = np.random.default_rng([7, c, s])
            z[c * n + s:c * n + e] = a[s:e] + r.normal(size=(e - s, d)).astype(np.float32) * scales * 0.01
    np.save(dst + ".y.npy", np.tile(np.load(src + ".y.npy"), factor))
    return {"rows": n * factor}


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_ours(path: str, memory: str = "1GB", n_neighbors: int = 20) -> dict:
    """warm_up, then fit on the Zarr array (scores every row); AUC vs the planted outliers."""
    import zarr
    from sklearn.metrics import roc_auc_score

    from streamclust.estimators import KNNOutlierDetector, warm_up

    base = _peak_mb()
    warm = warm_up()
    after_warm = _peak_mb()
    X = zarr.open_array(path, mode="r")
    t = time.perf_counter()
    det = KNNOutlierDetector(n_neighbors=n_neighbors, memory=memory, random_state=0).fit(X)
    fit_s = time.perf_counter() - t
    y = np.load(path + ".y.npy")
    flagged = det.outlier_scores_ > det.threshold_
    return {
        "rows": int(X.shape[0]), "import_peak_mb": base, "warm_up_s": warm, "after_warm_up_peak_mb": after_warm,
        "fit_s": fit_s, "fit_time": det.fit_time_, "reference": int(len(det.reference_indices_)),
        "index_neighbors": det.index_neighbors_, "search_epsilon": det.search_epsilon_, "recall": det.recall_,
        "auc": float(roc_auc_score(y, det.outlier_scores_)), "flagged": float(flagged.mean()),
        "caught": float(flagged[y].mean()), "rule": det.threshold_rule_,
    }


def stage_lof(path: str, rows: int = 100_000, n_neighbors: int = 20) -> dict:
    """Exact sklearn LocalOutlierFactor on the first ``rows`` rows."""
    import zarr
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import LocalOutlierFactor

    X = zarr.open_array(path, mode="r")[:rows]
    y = np.load(path + ".y.npy")[:rows]
    t = time.perf_counter()
    lof = LocalOutlierFactor(n_neighbors=n_neighbors).fit(X)
    return {"rows": rows, "fit_s": time.perf_counter() - t,
            "auc": float(roc_auc_score(y, -lof.negative_outlier_factor_))}


def stage_faiss(path: str, reference: int = 100_000, k: int = 21) -> dict:
    """Exact kNN of every row against a seeded ``reference``-row sample with faiss IndexFlatL2."""
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss not importable"}
    import zarr

    X = zarr.open_array(path, mode="r")
    n = X.shape[0]
    ids = np.sort(np.random.default_rng(0).choice(n, min(reference, n), replace=False))
    t = time.perf_counter()
    ref = np.ascontiguousarray(X.get_orthogonal_selection((ids, slice(None))), dtype=np.float32)
    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(ref)
    for s in range(0, n, _BLOCK):
        index.search(np.ascontiguousarray(X[s:s + _BLOCK]), k)
    return {"rows": int(n), "reference": int(len(ids)), "knn_s": time.perf_counter() - t,
            "threads": faiss.omp_get_max_threads()}


def stage_tradeoff(path: str, reference: int = 100_000, k: int = 20,
                   degrees: tuple = (30, 40, 60), epsilons: tuple = (0.1, 0.2, 0.3),
                   n_probe: int = 1000) -> list:
    """Recall@k and time of pynndescent over a ``reference`` sample: build time, recall of
    the NN-descent graph itself, and for each epsilon the time to query every row (k+1,
    as the detector does) and the recall of rows in (self dropped) and out of the sample."""
    import pynndescent
    import zarr

    from streamclust.estimators import warm_up

    warm_up()
    X = zarr.open_array(path, mode="r")
    n = X.shape[0]
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(n, min(reference, n), replace=False))
    ref = np.ascontiguousarray(X.get_orthogonal_selection((ids, slice(None))), dtype=np.float32)
    m = len(ref)
    in_pos = np.sort(rng.choice(m, min(n_probe, m), replace=False))
    others = np.setdiff1d(np.arange(n), ids)
    out_ids = np.sort(rng.choice(others, min(n_probe, len(others)), replace=False))
    out_rows = X.get_orthogonal_selection((out_ids, slice(None)))

    def exact(q, kk):
        r64 = ref.astype(np.float64)
        rsq = (r64 ** 2).sum(1)
        res = []
        for s in range(0, len(q), 100):
            qq = q[s:s + 100].astype(np.float64)
            d2 = rsq[None] - 2 * qq @ r64.T
            res.append(np.argsort(d2, axis=1)[:, :kk])
        return np.vstack(res)

    ex_in = exact(ref[in_pos], k + 1)
    ex_in = np.array([row[row != p][:k] for row, p in zip(ex_in, in_pos)])
    ex_out = exact(out_rows, k) if len(out_ids) else None

    def recall(a, b):
        return float(np.mean([len(np.intersect1d(x, z)) / k for x, z in zip(a, b)]))

    rows = []
    for deg in degrees:
        t = time.perf_counter()
        index = pynndescent.NNDescent(ref, n_neighbors=deg, random_state=0, n_jobs=1,
                                      parallel_batch_queries=True)
        build = time.perf_counter() - t
        graph = index.neighbor_graph[0]
        g_rec = recall(graph[in_pos, 1:k + 1], ex_in) if deg > k else float("nan")
        t = time.perf_counter()
        index.prepare()
        prep = time.perf_counter() - t
        index.search_rng_state = np.zeros_like(index.search_rng_state)
        for eps in epsilons:
            t = time.perf_counter()
            for s in range(0, n, _BLOCK):
                index.query(np.ascontiguousarray(X[s:s + _BLOCK]), k=k + 1, epsilon=eps)
            q_all = time.perf_counter() - t
            qi = index.query(ref[in_pos], k=k + 1, epsilon=eps)[0]
            qi = np.array([row[row != p][:k] for row, p in zip(qi, in_pos)])
            r_out = float("nan")
            if ex_out is not None:
                r_out = recall(index.query(out_rows, k=k + 1, epsilon=eps)[0][:, :k], ex_out)
            rows.append({"degree": deg, "epsilon": eps, "build_s": build, "prepare_s": prep,
                         "graph_recall": g_rec, "query_all_s": q_all, "rows": int(n),
                         "recall_in": recall(qi, ex_in), "recall_out": r_out})
    return rows


def stage_warm_up() -> dict:
    """Import time and warm_up() time in a fresh process (compile or load from cache)."""
    t = time.perf_counter()
    import pynndescent  # noqa: F401

    import streamclust.estimators.neighbors as neighbors

    imp = time.perf_counter() - t
    first = neighbors.warm_up()
    second = neighbors.warm_up()
    return {"import_s": imp, "warm_up_s": first, "second_warm_up_s": second,
            "NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR", "")}


# ---------------------------------------------------------------------- runner
_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {here!r}); sys.path.insert(0, {root!r})
import bench_outliers as b
kw = json.loads(sys.argv[2])
t0 = time.perf_counter()
out = getattr(b, sys.argv[1])(**kw)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("@@RESULT@@" + json.dumps({{"wall_s": wall, "peak_rss_mb": peak, "result": out}}, default=str))
"""


def _run_child(func: str, env: dict | None = None, **kwargs) -> dict:
    code = _CHILD.format(here=str(HERE), root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, func, json.dumps(kwargs)], capture_output=True,
                          text=True, env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        raise RuntimeError(f"stage {func} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    return json.loads(line[len("@@RESULT@@"):])


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
    ap.add_argument("--memory", default="1GB")
    ap.add_argument("--lof-rows", type=int, default=100_000)
    ap.add_argument("--factor", type=int, default=4, help="rows multiplier of the scaling run")
    ap.add_argument("--skip", default="", help="comma list of: scale,lof,faiss,tradeoff,compile")
    ap.add_argument("--workdir", default=None, help="where to write the Zarr arrays (temp dir)")
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_outliers_"))
    work.mkdir(parents=True, exist_ok=True)
    x1, xk = str(work / "x1.zarr"), str(work / f"x{args.factor}.zarr")
    results: dict = {"args": vars(args), "load_avg_start": os.getloadavg()}
    try:
        print(f"data: {args.rows} x {args.dims} float32 mixture -> {x1}", flush=True)
        _run_child("make_data", path=x1, rows=args.rows, dims=args.dims)
        if "scale" not in skip:
            _run_child("tile_data", src=x1, dst=xk, factor=args.factor)

        main_rows = []
        r = _run_child("stage_ours", path=x1, memory=args.memory)
        results["ours_1x"] = r
        o = r["result"]
        main_rows.append({"method": f"ours (fit + score all, k=20, ref={o['reference']})", "rows": o["rows"],
                          "wall_s": r["wall_s"], "of which warm_up_s": o["warm_up_s"],
                          "peak_rss_mb": r["peak_rss_mb"], "recall@20": o["recall"], "auc": o["auc"]})
        print(json.dumps(o, indent=1), flush=True)
        if "scale" not in skip:
            r4 = _run_child("stage_ours", path=xk, memory=args.memory)
            results["ours_kx"] = r4
            o4 = r4["result"]
            main_rows.append({"method": f"ours at {args.factor}x rows", "rows": o4["rows"], "wall_s": r4["wall_s"],
                              "of which warm_up_s": o4["warm_up_s"], "peak_rss_mb": r4["peak_rss_mb"],
                              "recall@20": o4["recall"], "auc": o4["auc"]})
        if "lof" not in skip:
            rl = _run_child("stage_lof", path=x1, rows=min(args.lof_rows, args.rows))
            results["lof"] = rl
            main_rows.append({"method": "sklearn LocalOutlierFactor (exact)", "rows": rl["result"]["rows"],
                              "wall_s": rl["wall_s"], "peak_rss_mb": rl["peak_rss_mb"], "recall@20": 1.0,
                              "auc": rl["result"]["auc"]})
        if "faiss" not in skip:
            rf = _run_child("stage_faiss", path=x1, reference=o["reference"])
            results["faiss"] = rf
            if "skipped" in rf["result"]:
                main_rows.append({"method": "faiss flat: " + rf["result"]["skipped"]})
            else:
                main_rows.append({"method": f"faiss IndexFlatL2 exact kNN vs ref={rf['result']['reference']}",
                                  "rows": rf["result"]["rows"], "wall_s": rf["wall_s"],
                                  "peak_rss_mb": rf["peak_rss_mb"], "recall@20": 1.0})
        base = main_rows[0]
        for row in main_rows:
            if row.get("wall_s"):
                row["wall / ours"] = row["wall_s"] / base["wall_s"]
                row["rss / ours"] = row["peak_rss_mb"] / base["peak_rss_mb"]
        print("\n## Fit + score every row (each in a fresh process)\n")
        print(_table(main_rows, ["method", "rows", "wall_s", "of which warm_up_s", "peak_rss_mb",
                                 "wall / ours", "rss / ours", "recall@20", "auc"]))
        ft = o["fit_time"]
        print(f"\nours 1x: fit stages (s) {json.dumps({k: round(v, 1) for k, v in ft.items()})}; "
              f"epsilon {o['search_epsilon']}, index degree {o['index_neighbors']}; "
              f"threshold {o['rule']}: flags {100 * o['flagged']:.2f}% of rows, "
              f"catches {100 * o['caught']:.1f}% of the planted 1%; peak RSS after imports "
              f"{o['import_peak_mb']:.0f} MB, after warm_up {o['after_warm_up_peak_mb']:.0f} MB")
        if "scale" not in skip:
            ratio = r4["peak_rss_mb"] / r["peak_rss_mb"]
            print(f"peak RSS {args.factor}x / 1x = {ratio:.3f} ({'OK' if abs(ratio - 1) <= 0.10 else 'FAIL'}: "
                  f"within 10%); under 1 GiB: {'OK' if max(r['peak_rss_mb'], r4['peak_rss_mb']) < 1024 else 'FAIL'}")

        if "tradeoff" not in skip:
            rt = _run_child("stage_tradeoff", path=x1, reference=o["reference"])
            results["tradeoff"] = rt
            print(f"\n## Recall/time of the index: reference {o['reference']} x {args.dims}, k=20, "
                  f"query all {args.rows} rows (k+1), 2 numba threads\n")
            print(_table(rt["result"], ["degree", "epsilon", "build_s", "prepare_s", "graph_recall",
                                        "query_all_s", "recall_in", "recall_out"]))

        if "compile" not in skip:
            empty = tempfile.mkdtemp(prefix="numba_cache_")
            warm = _run_child("stage_warm_up")
            cold = _run_child("stage_warm_up", env={"NUMBA_CACHE_DIR": empty})
            again = _run_child("stage_warm_up", env={"NUMBA_CACHE_DIR": empty})
            shutil.rmtree(empty, ignore_errors=True)
            results["compile"] = [cold, again, warm]
            print("\n## numba compile cost: warm_up() in a fresh process\n")
            print(_table([
                {"case": "empty NUMBA_CACHE_DIR (new machine)", **cold["result"], "peak_rss_mb": cold["peak_rss_mb"]},
                {"case": "same NUMBA_CACHE_DIR again (cache filled)", **again["result"],
                 "peak_rss_mb": again["peak_rss_mb"]},
                {"case": "default cache (site-packages __pycache__)", **warm["result"],
                 "peak_rss_mb": warm["peak_rss_mb"]},
            ], ["case", "import_s", "warm_up_s", "second_warm_up_s", "peak_rss_mb"]))
        results["load_avg_end"] = os.getloadavg()
        print(f"\nload average start {results['load_avg_start']}, end {results['load_avg_end']} "
              f"({os.cpu_count()} cores)")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
