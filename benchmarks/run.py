#!/usr/bin/env python
"""Run the streamclust benchmark suite and print tables next to the baselines.

    python benchmarks/run.py convert [--rows 416314]   # pickle -> Zarr, 2560-d float32 and float64
    python benchmarks/run.py study   [--rows 416314]   # demo case, 4 sets, k 2..15, vs in-memory sklearn
    python benchmarks/run.py assign  [--rows 416314]   # saved model on new rows vs the study's labelling pass
    python benchmarks/run.py all

Every stage runs in a fresh process; peak RSS is that process's own maximum
resident set.  Tables (with machine, versions and date) are printed and appended
to benchmarks/results/latest.md.  Data goes to --data (default .bench-data/, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from _measure import format_table, machine_facts, measure

RESULTS = Path(__file__).parent / "results" / "latest.md"


def _report(title: str, rows: list[dict], columns: list[str], notes: str = "") -> None:
    facts = machine_facts()
    text = f"\n## {title}\n\n" + " | ".join(f"{k}: {v}" for k, v in facts.items()) + "\n\n"
    text += format_table(rows, columns) + "\n" + (f"\n{notes}\n" if notes else "")
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(text)


def bench_convert(data: Path, rows: int, d: int = 2560) -> None:
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


def bench_study(data: Path, rows: int, k: str = "2:15") -> None:
    case = data / f"demo-{rows}" / "case"
    store = data / f"demo-{rows}" / "case.zarr"
    if not (case / "truth.csv").exists():
        measure("stages:make_demo", out=str(case), n_rows=rows)
    conv = measure("stages:convert_case_streamclust", case=str(case), store=str(store))
    ours = measure("stages:study_streamclust", store=str(store), out=str(data / f"demo-{rows}" / "study"), k=k)
    base = measure("stages:study_sklearn_baseline", case=str(case), k=k)
    rows_out = [
        {"stage": "convert (4 sets)", "method": "streamclust", "wall_s": conv["wall_s"],
         "peak_rss_mb": conv["peak_rss_mb"]},
        {"stage": f"study k={k} (4 sets)", "method": "streamclust (Zarr + Dask, streamed)",
         "wall_s": ours["wall_s"], "peak_rss_mb": ours["peak_rss_mb"],
         "chosen_k": json.dumps({n: v["k"] for n, v in ours["result"].items()})},
        {"stage": f"study k={k} (4 sets)", "method": "in-memory scikit-learn (PCA + MiniBatchKMeans)",
         "wall_s": base["wall_s"], "peak_rss_mb": base["peak_rss_mb"],
         "chosen_k": json.dumps({n: v["k"] for n, v in base["result"].items()})},
    ]
    rows_out[1]["time_ratio"] = ours["wall_s"] / base["wall_s"]
    rows_out[1]["rss_ratio"] = ours["peak_rss_mb"] / base["peak_rss_mb"]
    _report(f"study: demo case, {rows:,} rows, 4 descriptor sets", rows_out,
            ["stage", "method", "wall_s", "peak_rss_mb", "time_ratio", "rss_ratio", "chosen_k"],
            "Ratios are streamclust / in-memory scikit-learn from the same run.")


def bench_assign(data: Path, rows: int, name: str = "osnet") -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["convert", "study", "assign", "all"])
    parser.add_argument("--rows", type=int, default=416_314)
    parser.add_argument("--data", type=Path, default=Path(".bench-data"))
    args = parser.parse_args()
    if args.which in ("convert", "all"):
        bench_convert(args.data, args.rows)
    if args.which in ("study", "all"):
        bench_study(args.data, args.rows)
    if args.which in ("assign", "all"):
        bench_assign(args.data, args.rows)


if __name__ == "__main__":
    main()
