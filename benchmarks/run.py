#!/usr/bin/env python
"""Run the streamclust benchmark suite and print tables next to the baselines.

    python benchmarks/run.py all      [--quick]          # all of the below
    python benchmarks/run.py convert  [--rows 416314]    # pickle -> Zarr, 2560-d float32 and float64
    python benchmarks/run.py study    [--rows 416314]    # demo case, 4 sets: run_study (UMAP views) vs sklearn
    python benchmarks/run.py stages   [--rows 416314]    # convert, preprocess, k sweep, outliers, projection per set
    python benchmarks/run.py scale    [--scale-base 416314]   # peak RSS of the pipeline at 1x, 4x, 10x rows
    python benchmarks/run.py assign   [--rows 416314]    # saved model on new rows vs the study's labelling pass
    python benchmarks/run.py algorithms [--rows 416314]  # 4 sets x kmeans,ward,gmm,hdbscan + report: peak RSS
    python benchmarks/run.py speed [--speed-rows 20000,416314]  # the study per stage vs its limits, and vs sklearn
    python benchmarks/run.py readme                      # "Latest results" of benchmarks/README.md from the tables

Every measured method runs in a fresh process; peak RSS is that process's own maximum
resident set.  Tables (with machine, versions, load and date) are printed and appended
to benchmarks/results/latest.md (--quick: results/quick.md).  Data goes to --data
(default .bench-data/, git-ignored).  --quick runs everything at 20,000 rows (k 2:6, stages
of two sets, scale at 1x/2x/4x of 20,000) to check the suite end to end (~20 min on 2 busy cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
from pathlib import Path

from _measure import format_table, machine_facts, measure
from stages import SETS, _ks

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "latest.md"
README = HERE / "README.md"
STAGES = ("convert", "preprocess", "kmeans", "outliers", "projection")
#: --quick: the widest and the narrowest of the four shapes.
QUICK_SETS = ("efficientnet-b7", "vdc_color")
RATIO_NOTE = ("sc/base time and sc/base rss: streamclust's wall time and peak RSS divided by that "
              "baseline's, from the same run (< 1: streamclust is faster / uses less memory).")


# ------------------------------------------------------------------ helpers
def _report(title: str, rows: list[dict], columns: list[str], notes: str = "") -> None:
    """Print a table with machine facts and append it to the results file."""
    facts = machine_facts()
    text = f"\n## {title}\n\n" + " | ".join(f"{k}: {v}" for k, v in facts.items()) + "\n\n"
    text += format_table(rows, columns) + "\n" + (f"\n{notes}\n" if notes else "")
    print(text, flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(text)


def _row(method: str, r: dict, n_rows: int, **extra) -> dict:
    """A table row from a ``measure`` result: wall time, peak RSS and rows/s."""
    return {"method": method, "rows": n_rows, "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
            "rows/s": n_rows / r["wall_s"], **extra}


def _ratios(rows: list[dict]) -> None:
    """On each baseline row (rows[1:]), streamclust's (rows[0]) time and RSS over the baseline's."""
    for row in rows[1:]:
        if row.get("wall_s"):
            row["sc/base time"] = rows[0]["wall_s"] / row["wall_s"]
            row["sc/base rss"] = rows[0]["peak_rss_mb"] / row["peak_rss_mb"]


def _demo(data: Path, rows: int, convert: bool = True) -> tuple[str, str]:
    """The demo case of ``rows`` rows (generated when missing) and its store (converted unless told)."""
    case, store = data / f"demo-{rows}" / "case", data / f"demo-{rows}" / "case.zarr"
    if not (case / "truth.csv").exists():
        measure("stages:make_demo", out=str(case), n_rows=rows)
    if convert:
        measure("stages:convert_case_streamclust", case=str(case), store=str(store))
    return str(case), str(store)


def _chosen_k(r: dict) -> str:
    return json.dumps({name: v["k"] for name, v in r["result"].items()})


def _cap(n: int | None, rows: int) -> str:
    return "all rows" if n is None or n >= rows else f"first {n:,} rows (capped by the option)"


# ------------------------------------------------------------------ convert
def bench_convert(data: Path, rows: int, d: int = 2560) -> None:
    """streamclust's streamed pickle conversion vs pickle.load + zarr.save, float32 and float64."""
    out = []
    for dtype in ("float32", "float64"):
        folder = data / f"convert-{dtype}"
        folder.mkdir(parents=True, exist_ok=True)
        pkl = folder / f"x_{rows}x{d}.pickle"
        if not pkl.exists():
            measure("stages:make_pickle", path=str(pkl), n_rows=rows, n_features=d, dtype=dtype)
        mb = pkl.stat().st_size / 1e6
        for label, spec in (("streamclust convert", "stages:convert_streamclust"),
                            ("pickle.load + zarr.save", "stages:convert_numpy_baseline")):
            store = folder / ("sc.zarr" if "streamclust" in label else "baseline.zarr")
            shutil.rmtree(store, ignore_errors=True)
            r = measure(spec, path=str(pkl), store=str(store))
            out.append({"source": f"{rows}x{d} {dtype}", "method": label, "wall_s": r["wall_s"],
                        "peak_rss_mb": r["peak_rss_mb"], "MB/s": mb / r["wall_s"]})
        check = measure("stages:verify_bit_for_bit", path=str(pkl), store=str(folder / "sc.zarr"))
        out[-2]["bit_for_bit"] = check["result"]["equal"]
        base, ours = out[-1], out[-2]
        ours["rss_ratio"] = ours["peak_rss_mb"] / base["peak_rss_mb"]
        ours["time_ratio"] = ours["wall_s"] / base["wall_s"]
    _report("convert: one pickled descriptor array -> Zarr", out,
            ["source", "method", "wall_s", "peak_rss_mb", "MB/s", "bit_for_bit", "time_ratio", "rss_ratio"],
            "Ratios are streamclust / baseline from the same run (time_ratio < 1: faster; rss_ratio < 1: less memory).")


# ------------------------------------------------------------------ study
def bench_study(data: Path, rows: int, k: str, memory: str, lof_rows: int | None, umap: bool = True) -> None:
    """Convert + the whole study (report=True; ``umap``: with UMAP views of every row) vs the issue's
    in-memory scikit-learn baseline; ``memory`` may list several budgets (``1GB,900MB``), one
    streamclust row each, all against the same baseline run."""
    case, store = _demo(data, rows, convert=False)
    shutil.rmtree(store, ignore_errors=True)  # measure a real conversion, not a resumed one
    conv = measure("stages:convert_case_streamclust", case=case, store=store)
    budgets = memory.split(",")
    ours = [measure("stages:study_streamclust", store=store, out=str(data / f"demo-{rows}" / "study"),
                    k=k, memory=budget, umap=umap) for budget in budgets]
    base = measure("stages:study_sklearn_baseline", case=case, k=k, lof_rows=lof_rows)
    out = [{"stage": "convert (4 sets)", "method": "streamclust", "wall_s": conv["wall_s"],
            "peak_rss_mb": conv["peak_rss_mb"]}]
    verdicts = []
    for budget, r in zip(budgets, ours):
        t, m = r["wall_s"] / base["wall_s"], r["peak_rss_mb"] / base["peak_rss_mb"]
        out.append({"stage": f"study k={k} (4 sets)",
                    "method": "streamclust run_study (PCA, k sweep, outliers, profiles, "
                              + ("UMAP of every row, " if umap else "") + f"CSVs, report.html; --memory {budget})",
                    "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "chosen_k": _chosen_k(r),
                    "time_ratio": t, "rss_ratio": m})
        verdicts.append(f"--memory {budget}: time_ratio <= 1.0 {'PASS' if t <= 1.0 else 'FAIL'} ({t:.2f}), "
                        f"rss_ratio <= 0.1 {'PASS' if m <= 0.1 else 'FAIL'} ({m:.3f})")
    out.append({"stage": f"study k={k} (4 sets)",
                "method": "in-memory scikit-learn (pickle.load, PCA, MiniBatchKMeans, exact LOF on "
                          f"{_cap(lof_rows, rows)})",
                "wall_s": base["wall_s"], "peak_rss_mb": base["peak_rss_mb"], "chosen_k": _chosen_k(base)})
    _report(f"study: demo case, {rows:,} rows, 4 descriptor sets", out,
            ["stage", "method", "wall_s", "peak_rss_mb", "time_ratio", "rss_ratio", "chosen_k"],
            "Ratios are streamclust / in-memory scikit-learn from the same run.  Promise: "
            + "; ".join(verdicts) + ".")


# ------------------------------------------------------------------ algorithms
def bench_algorithms(data: Path, rows: int, k: str, memory: str, algorithms: str) -> None:
    """The 4-set study with every clustering algorithm and the report comparing them (report=True,
    no UMAP), against the promise of a peak RSS under 1 GiB.  In memory, scikit-learn would hold the
    raw descriptors at least, and its Ward (AgglomerativeClustering) a condensed distance matrix of
    ``n (n - 1) / 2`` float64: both sizes are printed, computed, not run."""
    case, store = _demo(data, rows, convert=not Path(data, f"demo-{rows}", "case.zarr", "zarr.json").exists())
    r = measure("stages:study_streamclust", store=store, out=str(data / f"demo-{rows}" / "study-algorithms"),
                k=k, memory=memory, umap=False, algorithms=algorithms)
    raw = sum(p.stat().st_size for p in Path(case, "descriptors").glob("*.pickle")) / 2**20
    ward = rows * (rows - 1) / 2 * 8 / 2**20
    ok = r["peak_rss_mb"] < 1024
    out = [{"method": f"streamclust run_study(algorithms={algorithms}, report=True; --memory {memory})",
            "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "chosen_k": _chosen_k(r)},
           {"method": "in memory: the raw descriptors alone (computed)", "peak_rss_mb": raw},
           {"method": "in memory: scikit-learn Ward's condensed distances of one set (computed)",
            "peak_rss_mb": ward}]
    _report(f"algorithms: demo case, {rows:,} rows, 4 descriptor sets, {algorithms}, with the report", out,
            ["method", "wall_s", "peak_rss_mb", "chosen_k"],
            f"Promise: peak RSS under 1 GiB {'PASS' if ok else 'FAIL'} ({r['peak_rss_mb']:.0f} MB).")


# ------------------------------------------------------------------ stages
def _stage_plan(stage: str, name: str, *, case: str, store: str, work: str, k: str, memory: str,
                lof_rows: int | None, umap_rows: int | None, rows: int) -> tuple[list[list[tuple]], tuple]:
    """Groups of methods ``(key, label, spec, kwargs)`` of one stage for one set (in each group the
    first is streamclust, the others its baselines) and the quality comparison ``(spec, kwargs)``."""
    w = {"work": work, "name": name}
    if stage == "convert":
        pickle = str(Path(case) / "descriptors" / f"{name}.pickle")
        ours, theirs = str(Path(work) / "convert" / f"{name}.zarr"), str(Path(work) / "convert" / f"{name}-base.zarr")
        group = [("streamclust", "streamclust convert (streamed pickle -> Zarr, checks, provenance)",
                  "stages:convert_streamclust", {"path": pickle, "store": ours, "memory": memory, "name": name,
                                                 "paths_csv": str(Path(case) / "images_paths.csv")}),
                 ("numpy", "pickle.load + zarr.save", "stages:convert_numpy_baseline",
                  {"path": pickle, "store": theirs})]
        return [group], ("stages:convert_quality", {"path": pickle, "store": ours, "baseline_store": theirs,
                                                    "name": name})
    if stage == "preprocess":
        group = [("streamclust", "streamclust StreamingPCA(64, l2) from Zarr + reduced rows to Zarr",
                  "stages:pca_streamclust", {**w, "store": store, "memory": memory}),
                 ("sklearn", "scikit-learn PCA in memory (pickle.load, normalize)", "stages:pca_sklearn",
                  {**w, "case": case}),
                 ("daskml-incremental", "dask-ml IncrementalPCA (dask array from Zarr)", "stages:pca_daskml",
                  {**w, "store": store, "kind": "incremental"}),
                 ("daskml-pca", "dask-ml PCA (dask array from Zarr)", "stages:pca_daskml",
                  {**w, "store": store, "kind": "pca"})]
        return [group], ("stages:pca_quality", {**w, "store": store, "methods": [g[0] for g in group]})
    if stage == "kmeans":
        kw = {**w, "k": k}
        group = [("streamclust", "streamclust kmeans_sweep + sweep_metrics + silhouette + labels",
                  "stages:kmeans_streamclust", {**kw, "memory": memory}),
                 ("sklearn", "scikit-learn MiniBatchKMeans in memory (+ CH, DB, silhouette)",
                  "stages:kmeans_sklearn", kw),
                 ("daskml", "dask-ml KMeans (k-means||, dask array from Zarr)", "stages:kmeans_daskml", kw),
                 ("faiss", "faiss Kmeans in memory (nredo=3, all rows)", "stages:kmeans_faiss", kw)]
        return [group], ("stages:kmeans_quality", {**w, "methods": [g[0] for g in group]})
    if stage == "outliers":
        group = [("streamclust",
                  "streamclust combined score: kNN k-distance + row norm + residual (fit + score all rows)",
                  "stages:outliers_streamclust", {**w, "memory": memory}),
                 ("lof", f"scikit-learn LocalOutlierFactor exact, {_cap(lof_rows, rows)}", "stages:outliers_lof",
                  {**w, "rows": lof_rows}),
                 ("faiss", "faiss IndexFlatL2 exact kNN of all rows + LOF formula", "stages:outliers_faiss", w)]
        return [group], ("stages:outliers_quality", {**w, "methods": [g[0] for g in group], "case": case})
    if stage == "projection":
        pca = [("pca", "streamclust pca_projection + density histograms of all rows",
                "stages:projection_pca_streamclust", {**w, "memory": memory}),
               ("pca", "scikit-learn PCA(2) in memory + histogram2d per cluster", "stages:projection_pca_sklearn", w)]
        umap = [("umap-sampled", "streamclust SampledUMAP (20k sample) + placement of all rows",
                 "stages:projection_umap_streamclust", {**w, "memory": memory}),
                ("umap-full", f"umap-learn UMAP in memory, {_cap(umap_rows, rows)}", "stages:projection_umap_full",
                 {**w, "rows": umap_rows})]
        return [pca, umap], ("stages:projection_quality", w)
    raise ValueError(f"unknown stage {stage!r}; one of {STAGES}")


STAGE_TABLES = {
    "convert": ("convert: one pickled descriptor set -> Zarr",
                ["set", "method", "rows", "wall_s", "peak_rss_mb", "rows/s", "sc/base time", "sc/base rss",
                 "bit_for_bit"],
                "bit_for_bit: every value streamclust stored equals the pickle's after the float32 cast.  Each "
                "method writes a new store (an old one is deleted first: streamclust would resume it)."),
    "preprocess": ("preprocess: L2 + PCA to 64 of every row",
                   ["set", "method", "rows", "wall_s", "peak_rss_mb", "rows/s", "sc/base time", "sc/base rss",
                    "evr_reported", "evr_true", "variance_kept", "cos2", "note"],
                   "evr_reported: the method's own explained-variance ratio (64 components); evr_true: the "
                   "variance its components really capture (exact covariance of the L2-normalised rows, float64, "
                   "numpy); variance_kept: evr_true / the exact top-64's (1 = optimal); cos2: mean cos^2 of the "
                   "principal angles to the exact top-64 subspace."),
    "kmeans": ("k sweep: k-means for every k on the 64-d reduced rows",
               ["set", "method", "rows", "wall_s", "peak_rss_mb", "rows/s", "sc/base time", "sc/base rss",
                "inertia/best mean", "inertia/best worst", "inertia/best at sc k", "chosen_k"],
               "inertia/best: full-data inertia of the method's centres (recomputed the same way for all, "
               "float64) over the lowest any method reached at that k; mean and worst over the k range, and "
               "at the k streamclust's rule chose.  dask-ml and faiss fit only (no CH/DB/silhouette)."),
    "outliers": ("outliers: the study's outlier score of every row (64-d reduced rows, stored norms and residuals)",
                 ["set", "method", "rows", "wall_s", "peak_rss_mb", "rows/s", "sc/base time", "sc/base rss",
                  "recall", "auc_planted", "spearman_vs_exact", "top1%_overlap", "exact_reference", "note"],
                 "streamclust: the study's default (robust z-scores of the k-distance in the reduced rows, "
                 "the raw row norm and the residual off the principal subspace); recall: its recall@20 against "
                 "exact neighbours in its reference sample (measured at fit); auc_planted: ROC AUC of the scores "
                 "against the demo case's planted outliers (glare, blur, no vehicle, ...), over the rows scored; "
                 "spearman_vs_exact / top1%_overlap: agreement of the scores with the exact LOF (k=20) of "
                 "the most rows (exact_reference: scikit-learn's LOF, or faiss' exact kNN of all rows with "
                 "the same LOF formula when the LOF baseline is capped), over the rows both scored."),
    "projection": ("projection: 2-D views of every row",
                   ["set", "method", "rows", "wall_s", "peak_rss_mb", "rows/s", "sc/base time", "sc/base rss",
                    "trustworthiness"],
                   "Ratios compare streamclust's PCA view with scikit-learn's PCA and SampledUMAP with UMAP of all "
                   "rows.  trustworthiness: sklearn.manifold.trustworthiness (10 neighbours) of the 2-D view vs "
                   "the 64-d rows on a seeded 5,000-row sample."),
}


def _finish_kmeans(rows: list[dict], inertia: dict) -> None:
    """Inertia relative to the best method at each k, from ``kmeans_quality``'s figures."""
    ks = sorted({kk for per_k in inertia.values() for kk in per_k}, key=int)
    best = {kk: min(per_k[kk] for per_k in inertia.values() if kk in per_k) for kk in ks}
    sc_k = str(rows[0]["result"].get("k"))
    for row in rows:
        rel = {kk: v / best[kk] for kk, v in inertia.get(row["key"], {}).items()}
        if rel:
            row.update({"inertia/best mean": sum(rel.values()) / len(rel), "inertia/best worst": max(rel.values()),
                        "inertia/best at sc k": rel.get(sc_k, "")})
        row["chosen_k"] = row["result"].get("k", "")


def bench_stages(data: Path, rows: int, sets: list[str], k: str, memory: str, lof_rows: int | None,
                 umap_rows: int | None, only: list[str], skip: set[str]) -> None:
    """Each stage of the study for each set: streamclust and its baselines, in fresh processes."""
    case, store = _demo(data, rows)
    work = str(data / f"demo-{rows}" / "stages")
    if importlib.util.find_spec("faiss") is None:
        print("faiss is not importable: its baselines are skipped (pip install faiss-cpu)")
        skip = skip | {"faiss"}
    for stage in only:
        table = []
        for name in sets:
            groups, (qspec, qkw) = _stage_plan(stage, name, case=case, store=store, work=work, k=k, memory=memory,
                                               lof_rows=lof_rows, umap_rows=umap_rows, rows=rows)
            stage_rows = []
            for group in groups:
                done = []
                for key, label, spec, kw in group:
                    if key in skip and done:  # streamclust (first) always runs: later stages read its output
                        continue
                    if stage == "convert":  # a fresh conversion, not a resumed one
                        shutil.rmtree(kw["store"], ignore_errors=True)
                    r = measure(spec, **kw)
                    res = r["result"]
                    note = "; ".join(res.get("warnings", [])) or (f"solver {res['solver']}" if "solver" in res else "")
                    done.append(_row(label, r, res.get("rows", rows), set=name, key=key, result=res,
                                     recall=res.get("recall", ""), note=note))
                _ratios(done)
                stage_rows += done
            quality = measure(qspec, **qkw)["result"]
            if stage == "kmeans":
                _finish_kmeans(stage_rows, quality)
            else:
                for row in stage_rows:
                    row.update(quality.get(row["key"], {}))
            table += stage_rows
        title, columns, notes = STAGE_TABLES[stage]
        _report(f"stages/{stage}: {title}, demo case, {rows:,} rows, k={k}", table, columns,
                notes + "  " + RATIO_NOTE)


# ------------------------------------------------------------------ scale
def bench_scale(data: Path, rows: int, base: int, factors: list[int], k: str, memory: str,
                lof_rows: int | None, name: str = "vdc_color") -> None:
    """Peak RSS of run_study(report=False) on a one-set 128-d store at base x each factor rows, and the
    in-memory scikit-learn baseline's at 1x (extrapolated beyond)."""
    _, src = _demo(data, rows)
    out, stores = [], []
    for f in factors:
        n = base * f
        dst = data / f"scale-{name}-{n}.zarr"
        measure("stages:make_scale_store", src_store=src, name=name, dst=str(dst), n_rows=n)
        stores.append(str(dst))
        r = measure("stages:scale_streamclust", store=str(dst), out=str(data / f"scale-{name}-{n}-study"),
                    k=k, memory=memory)
        out.append(_row("streamclust run_study(report=False), streamed", r, n, factor=f"{f}x"))
    for row in out:
        row["rss vs 1x"] = row["peak_rss_mb"] / out[0]["peak_rss_mb"]
        row["time vs 1x"] = row["wall_s"] / out[0]["wall_s"]
    floor = measure("stages:imports_only")["peak_rss_mb"]
    b = measure("stages:scale_sklearn", store=stores[0], name=name, k=k, lof_rows=lof_rows)
    base_row = _row(f"in-memory scikit-learn (PCA, MiniBatchKMeans sweep, exact LOF on {_cap(lof_rows, base)})",
                    b, base, factor=f"{factors[0]}x")
    _ratios([out[0], base_row])
    top, worst = factors[-1], max(out, key=lambda r: r["peak_rss_mb"])
    need_gb = (floor + (b["peak_rss_mb"] - floor) * top / factors[0]) / 1024
    ok = abs(out[-1]["rss vs 1x"] - 1) <= 0.15 and worst["peak_rss_mb"] < 1024
    notes = (f"{name} rows of the demo case tiled with 5% noise; 1x = {base:,} rows.  "
             f"Promise: peak RSS at {top}x within 15% of 1x and under 1 GiB: "
             f"{'PASS' if ok else 'FAIL'} ({top}x/1x = {out[-1]['rss vs 1x']:.2f}, "
             f"max {worst['peak_rss_mb']:,.0f} MB).  "
             f"The in-memory baseline at {top}x would need about {need_gb:.1f} GB (its 1x peak above the "
             f"{floor:.0f} MB of its imports, times {top // factors[0]}), and exact LOF time grows with rows^2.  "
             + RATIO_NOTE)
    times = ", ".join(f"{f}x" for f in factors)
    _report(f"scale: streaming pipeline at {times} of {base:,} rows ({name}, 128-d), k={k}",
            out + [base_row], ["factor", "method", "rows", "wall_s", "peak_rss_mb", "rows/s", "rss vs 1x",
                               "time vs 1x", "sc/base time", "sc/base rss"], notes)


# ------------------------------------------------------------------ assign
def bench_assign(data: Path, rows: int, name: str = "osnet") -> None:
    """streamclust assign of every row with a saved model vs the study's own labelling pass."""
    store = data / f"demo-{rows}" / "case.zarr"
    model = data / f"demo-{rows}" / "study" / "models" / name
    if not model.exists():
        raise SystemExit(f"run 'benchmarks/run.py study --rows {rows}' first: {model} is missing")
    lab = measure("stages:labelling_pass", store=str(store), model_dir=str(model), name=name)
    ours = measure("stages:assign_streamclust", store=str(store), model_dir=str(model),
                   out=str(data / f"demo-{rows}" / "assigned.csv"))
    out = [{"method": "study labelling pass (PCA + nearest centre, Dask)", "rows_per_s": lab["result"]["rows_per_s"],
            "wall_s": lab["wall_s"], "peak_rss_mb": lab["peak_rss_mb"]},
           {"method": "streamclust assign (+ sentences, kNN outlier scores, CSV, drift)",
            "rows_per_s": ours["result"]["rows_per_s"], "wall_s": ours["wall_s"],
            "peak_rss_mb": ours["peak_rss_mb"], "model_load_s": ours["result"]["load_s"],
            "ratio": ours["result"]["rows_per_s"] / lab["result"]["rows_per_s"]}]
    _report(f"assign: {rows:,} rows of {name} with the saved model", out,
            ["method", "rows_per_s", "wall_s", "peak_rss_mb", "model_load_s", "ratio"],
            "ratio = assign rows/s / labelling-pass rows/s from the same run; model_load_s is the "
            "pynndescent index rebuild (incl. numba compilation), paid once per process.")


# ------------------------------------------------------------------ README
def update_readme(results: Path, readme: Path = README) -> None:
    """Replace the "Latest results" block of the README with the newest table of each kind in ``results``."""
    text = results.read_text() if results.exists() else ""
    newest: dict[str, str] = {}
    for section in re.split(r"\n(?=## )", text):
        if section.startswith("## "):
            newest[section[3:].split(":")[0].strip()] = section.strip()
    body = "\n\n".join("#" + s for s in newest.values()) or "(no results yet: run `python benchmarks/run.py all`)"
    begin, end = "<!-- latest-results:begin -->", "<!-- latest-results:end -->"
    page = readme.read_text()
    if begin not in page:
        raise SystemExit(f"{readme} has no {begin} ... {end} block")
    head, rest = page.split(begin, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{begin}\nFrom `benchmarks/results/{results.name}`:\n\n{body}\n{end}{tail}")
    print(f"{readme}: 'Latest results' rewritten from {results} ({len(newest)} tables)")


# ------------------------------------------------------------------ speed
#: Constants of the per-stage limits: run_study's defaults (PCA 64, 3 starts x 3 seedings per k,
#: k-means init sample 20,000 rows, silhouette sample 10,000 rows, kNN reference 100,000 rows).
_PCS, _STARTS, _CANDIDATES, _INIT_ROWS, _SIL_ROWS, _REFERENCE = 64, 3, 3, 20_000, 10_000, 100_000


def _stage_limits(n: int, dims: dict, ks: list[int], machine: dict) -> dict:
    """Per stage: ``(seconds, basis)`` of the work that stage cannot avoid, at the measured read and
    GEMM speeds (see the notes of :func:`bench_speed`); stages without a limit are left out."""
    g32, g64 = machine["gemm_flops_per_s"]["float32"], machine["gemm_flops_per_s"]["float64"]
    read = machine["read_bytes_per_s"]
    c, sk = _PCS, sum(ks)
    m_init, m_sil, ref = min(n, _INIT_ROWS), min(n, _SIL_ROWS), min(n, _REFERENCE)
    pca = sum(max(2 * n * d * 4 / read[s], (2 * n * d * d + 2 * n * d * c) / g32) for s, d in dims.items())
    kmeans = len(dims) * 4 * c * _STARTS * sk * (n + _CANDIDATES * m_init) / g32
    metrics = len(dims) * ((2 * m_sil**2 * (c + sk)) / g64 + 4 * n * c * sk / g32)
    outliers = len(dims) * 2 * n * ref * c / g32
    return {"PCA": (pca, "2 reads of the raw rows, or the covariance + transform GEMMs"),
            "k-means": (kmeans, "1 Lloyd iteration of every start on all rows + of every seeding on the sample"),
            "metrics": (metrics, "silhouette distances + one-hot sums (float64), 1 pass of CH/DB"),
            "outlier scores": (outliers, f"brute-force kNN of every row vs the {ref:,}-row reference")}


def _stage_of(step: str, sets: set) -> str:
    """``"osnet: k-means 2..15"`` -> ``"k-means"``; steps not of a set keep their name."""
    head, _, rest = step.partition(": ")
    if head not in sets or not rest:
        return step
    return "k-means" if rest.startswith("k-means") else rest


def bench_speed(data: Path, sizes: list[int], k: str, memory: str) -> None:
    """The study at each size (k-means, report; UMAP views from 100,000 rows up) against the issue's
    in-memory scikit-learn pipeline with IsolationForest, then its seconds per stage next to each
    stage's limit on this machine."""
    summary, stages = [], []
    for rows in sizes:
        case, store = _demo(data, rows)
        umap = rows >= 100_000
        ours = measure("stages:study_streamclust_timed", store=store, out=str(data / f"demo-{rows}" / "study-speed"),
                       k=k, memory=memory, umap=umap)
        base = measure("stages:study_sklearn_baseline", case=case, k=k, outliers="iforest")
        machine = measure("stages:machine_limits", store=store)["result"]
        t, m = ours["wall_s"] / base["wall_s"], ours["peak_rss_mb"] / base["peak_rss_mb"]
        summary.append({"rows": rows, "method": "streamclust run_study (PCA, k-means sweep, outliers, profiles, "
                        + ("UMAP of every row, " if umap else "") + f"CSVs, report.html; --memory {memory})",
                        "wall_s": ours["wall_s"], "peak_rss_mb": ours["peak_rss_mb"], "time_ratio": t,
                        "rss_ratio": m, "chosen_k": json.dumps(ours["result"]["k"])})
        summary.append({"rows": rows, "method": "in-memory scikit-learn (pickle.load, normalize, PCA(64), "
                        "MiniBatchKMeans(n_init=3) + CH/DB/silhouette per k, IsolationForest of every row)",
                        "wall_s": base["wall_s"], "peak_rss_mb": base["peak_rss_mb"],
                        "chosen_k": json.dumps({n: v["k"] for n, v in base["result"].items()})})
        res = ours["result"]
        by_stage: dict[str, list[float]] = {}
        for step, v in res["timings"].items():
            acc = by_stage.setdefault(_stage_of(step, set(res["dims"])), [0.0, 0.0])
            acc[0] += v["wall_s"]
            acc[1] += v["cpu_s"]
        limits = _stage_limits(res["n_rows"], res["dims"], _ks(k), machine)
        other = ours["wall_s"] - sum(w for w, _ in by_stage.values())
        rest = ("(imports, rest)" if res.get("sets_at_once", 1) == 1 else
                f"(imports, rest, minus the overlap of {res['sets_at_once']} sets studied at a time)")
        for stage, (wall, cpu) in sorted(by_stage.items(), key=lambda kv: -kv[1][0]) + [(rest, (other, float("nan")))]:
            limit, basis = limits.get(stage, (None, ""))
            stages.append({"rows": rows, "stage": stage, "wall_s": wall, "cpu_s": cpu,
                           "share": wall / ours["wall_s"], "limit_s": limit if limit is not None else "",
                           "wall/limit": wall / limit if limit else "", "limit basis": basis})
        stages.append({"rows": rows, "stage": "machine", "limit basis":
                       f"read {min(machine['read_bytes_per_s'].values()) / 1e6:,.0f}-"
                       f"{max(machine['read_bytes_per_s'].values()) / 1e6:,.0f} MB/s, GEMM "
                       f"{machine['gemm_flops_per_s']['float32'] / 1e9:,.0f} GFLOP/s float32, "
                       f"{machine['gemm_flops_per_s']['float64'] / 1e9:,.0f} float64"})
    _report("speed: the study at every size vs the in-memory scikit-learn pipeline", summary,
            ["rows", "method", "wall_s", "peak_rss_mb", "time_ratio", "rss_ratio", "chosen_k"],
            "Ratios are streamclust / in-memory scikit-learn from the same run (time_ratio < 1: faster).")
    _report("speed per stage: seconds of each study step (summed over the 4 sets) and the stage's limit", stages,
            ["rows", "stage", "wall_s", "cpu_s", "share", "limit_s", "wall/limit", "limit basis"],
            "wall_s / cpu_s: from the study's own step timings (summary.json `timings`; cpu_s counts every "
            "thread); limit_s: the work the stage cannot avoid at this machine's speeds measured in the same "
            "run (row 'machine'); the k-means limit is a lower bound (one iteration), the outlier limit is "
            "the exact search the approximate index should beat.  Up to 100,000 rows the study takes two sets "
            "at a time after the PCA (summary.json `sets_at_once`): their steps overlap, so the stage walls "
            "add up to more than the run's and each step's cpu_s also counts the other set's work.")


# ------------------------------------------------------------------ main
def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["convert", "study", "stages", "scale", "assign", "algorithms", "speed",
                                          "all", "readme"])
    parser.add_argument("--rows", type=int, default=None, help="rows of the demo case (default 416,314)")
    parser.add_argument("--data", type=Path, default=Path(".bench-data"), help="generated data (default .bench-data/)")
    parser.add_argument("--quick", action="store_true",
                        help="20,000 rows, k 2:6, stages of 2 sets, scale at 1x/2x/4x of 20,000, "
                             "tables to results/quick.md")
    parser.add_argument("--k", default=None, help="k range of the sweeps (default 2:15; --quick 2:6)")
    parser.add_argument("--memory", default="1GB",
                        help="streamclust's memory budget (default 1GB); 'study' takes a list, e.g. 1GB,900MB "
                             "(one row per budget against one baseline run)")
    parser.add_argument("--sets", default=None,
                        help=f"descriptor sets of 'stages' (default: all four; --quick {','.join(QUICK_SETS)})")
    parser.add_argument("--only", default=",".join(STAGES),
                        help=f"stages of 'stages', in order (default {','.join(STAGES)})")
    parser.add_argument("--skip", default="", help="baselines to skip, e.g. daskml,daskml-incremental,umap-full")
    parser.add_argument("--lof-rows", type=int, default=None, help="cap of the exact LOF baselines (default: all rows)")
    parser.add_argument("--umap-rows", type=int, default=None,
                        help="cap of the UMAP-of-all-rows baseline (default: all)")
    parser.add_argument("--no-umap", action="store_true",
                        help="'study' without the UMAP view of every row (its report keeps the PCA density views)")
    parser.add_argument("--scale-base", type=int, default=None, help="1x rows of 'scale' (default 416,314)")
    parser.add_argument("--scale-factors", default=None, help="row multiples of 'scale' (default 1,4,10)")
    parser.add_argument("--algorithms", default="kmeans,ward,gmm,hdbscan",
                        help="algorithms of 'algorithms' (default kmeans,ward,gmm,hdbscan)")
    parser.add_argument("--speed-rows", default="20000,416314", help="case sizes of 'speed' (default 20000,416314)")
    parser.add_argument("--results", type=Path, default=None, help="results file (default results/latest.md)")
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.quick else 416_314)
    k = args.k or ("2:6" if args.quick else "2:15")
    sets = (args.sets or (",".join(QUICK_SETS) if args.quick else ",".join(SETS))).split(",")
    base = args.scale_base or (20_000 if args.quick else 416_314)
    factors = [int(f) for f in (args.scale_factors or ("1,2,4" if args.quick else "1,4,10")).split(",")]
    RESULTS = args.results or HERE / "results" / ("quick.md" if args.quick else "latest.md")
    if args.which == "readme":
        update_readme(RESULTS)
        return
    everything = ["convert", "study", "stages", "scale", "assign", "algorithms", "speed"]
    todo = everything if args.which == "all" else [args.which]
    if "convert" in todo:
        bench_convert(args.data, rows)
    if "study" in todo:
        bench_study(args.data, rows, k, args.memory, args.lof_rows, umap=not args.no_umap)
    if "stages" in todo:
        bench_stages(args.data, rows, sets, k, args.memory, args.lof_rows, args.umap_rows,
                     args.only.split(","), set(filter(None, args.skip.split(","))))
    if "scale" in todo:
        bench_scale(args.data, rows, base, factors, k, args.memory, args.lof_rows)
    if "assign" in todo:
        bench_assign(args.data, rows)
    if "algorithms" in todo:
        bench_algorithms(args.data, rows, k, args.memory, args.algorithms)
    if "speed" in todo:
        bench_speed(args.data, [int(r) for r in args.speed_rows.split(",")], k, args.memory)


if __name__ == "__main__":
    main()
