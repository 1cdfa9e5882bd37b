"""Outlier screening on REAL images with real anomalies: every candidate score vs in-memory scikit-learn.

Run (needs Debian's ``dataset-fashion-mnist`` package; the ``cnn`` set needs PyTorch,
``pip install torch`` -- it is left out, with a message, without it)::

    .venv/bin/python benchmarks/bench_real_outliers.py --shots 1     # 70,700 rows
    .venv/bin/python benchmarks/bench_real_outliers.py --shots 6     # 424,200 rows, 6 shots per item

The case (:func:`streamclust.datasets.real.make_real_case`): the 70,000 Fashion-MNIST photos
plus 1 % real anomalies from other sources (handwritten digits, font glyphs, photo crops)
and real failures (dark and glare frames); with ``--shots 6`` every item appears 6 times
(shifted, contrast and noise changed), as VeRi-Wild shows each vehicle ~10 times.

Stages, each in a fresh process (peak RSS its own):

1. ``study``: ``streamclust convert`` + ``run_study(algorithms="kmeans", report=False)``
   with the default outlier score, at ``--memory``;
2. ``candidates``: from the study's stored reduced rows, row norms and residuals, every
   candidate score: the kNN detector's LOF ratio, k-distance and mean kNN distance
   (``KNNOutlierDetector`` with the study's seed and k = 50, so the same reference sample
   and neighbours),
   IsolationForest fitted on the reference sample and scored block by block, the
   distance to the own k-means centre over the cluster's median distance, the row norm
   and the residual alone, rank-averaged ensembles, and the study's ``combined`` score
   (read from the run);
3. ``baseline``: what a user would write in memory: ``pickle.load``, ``PCA(64)`` of the raw
   rows, scikit-learn ``LocalOutlierFactor(20)`` and ``IsolationForest`` on all rows.

Printed (and appended to ``benchmarks/results/real_outliers.md``): ROC AUC and average
precision of the OOD rows per set and candidate, per OOD kind, the study's score next to
the best baseline (PASS when >=), and the flagging rule's flagged share, precision and
recall at several thresholds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import format_table, machine_facts, measure  # noqa: E402

THRESHOLDS = (3.0, 3.5, 4.0, 4.5, 5.0, 6.0)


# --------------------------------------------------------------------- stages (child processes)
def study(case: str, store: str, out: str, memory: str) -> dict:
    """Convert the case and run the default study on it (k-means only, no report)."""
    import shutil

    from streamclust import convert_case, run_study
    from streamclust.core.blocks import bound_heaps

    shutil.rmtree(store, ignore_errors=True)
    bound_heaps()  # as the command line does
    convert_case(case, store)
    res = run_study(store, out, algorithms="kmeans", report=False, memory=memory)
    return {"run_id": res.run_id, "rules": {n: s.outlier_rule for n, s in res.sets.items()}}


def _rank(s: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(s) / len(s)


def candidates(store: str, study_dir: str, name: str, out_npz: str) -> dict:
    """Every candidate score of set ``name`` from the study's stored arrays, saved to ``out_npz``."""
    from sklearn.ensemble import IsolationForest

    from streamclust import CaseStore, DescriptorSetModel
    from streamclust.estimators import KNNOutlierDetector
    from streamclust.study import OUTLIER_NEIGHBORS, outlier_index_neighbors

    st = CaseStore(store)
    run = st.runs()[-1]
    reduced = run.array(f"{name}/reduced")
    n = reduced.shape[0]
    # the study's neighbours and index graph (k = 50, graph 60), so kdist is the study's evidence
    lof = KNNOutlierDetector(OUTLIER_NEIGHBORS, score="lof", index_neighbors=outlier_index_neighbors(OUTLIER_NEIGHBORS),
                             random_state=0).fit(reduced)
    ind, dist = lof.kneighbors(reduced, row_ids=np.arange(n))
    dist = np.asarray(dist.compute() if hasattr(dist, "compute") else dist)
    ref = lof.reference_indices_
    iso = IsolationForest(random_state=0).fit(lof.reference_)
    iforest = np.concatenate([-iso.score_samples(reduced[s:s + 65536]) for s in range(0, n, 65536)])
    model = DescriptorSetModel.load(Path(study_dir) / "models" / name)
    labels = np.asarray(run.array(f"{name}/labels")[:])
    centre = np.concatenate([
        model.kmeans.transform(reduced[s:s + 65536])[np.arange(min(65536, n - s)), labels[s:s + 65536]]
        for s in range(0, n, 65536)])
    spread = np.array([np.median(centre[ref][labels[ref] == c]) if np.any(labels[ref] == c) else 1.0
                       for c in range(model.k)])
    norm = np.asarray(run.array(f"{name}/row_norm")[:], np.float64)
    med = np.median(np.log(norm[ref]))
    scores = {
        "lof (kNN ratio, k=50)": lof.outlier_scores_, "kdist (k=50)": dist[:, -1],
        "mean kNN distance (k=50)": dist.mean(axis=1),
        "iforest (sample)": iforest, "centre distance / cluster spread": centre / spread[labels],
        "row norm (both sides)": np.abs(np.log(norm) - med),
        "residual": np.asarray(run.array(f"{name}/residual")[:]),
        "combined (study default)": np.asarray(run.array(f"{name}/outlier_score")[:]),
    }
    kdist = scores["kdist (k=50)"]
    scores["rank avg: kdist + iforest"] = _rank(kdist) + _rank(iforest)
    scores["rank avg: kdist + norm + residual"] = (_rank(kdist) + _rank(scores["row norm (both sides)"])
                                                   + _rank(scores["residual"]))
    np.savez(out_npz, **{k: np.asarray(v, np.float64) for k, v in scores.items()})
    return {"recall": lof.recall_, "reference": int(len(ref))}


def baseline(case: str, name: str, out_npz: str, lof_rows: int) -> dict:
    """In-memory scikit-learn on PCA(64) of the raw rows: LOF(20) and IsolationForest on all rows."""
    import pickle
    import time

    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor

    with open(Path(case) / "descriptors" / f"{name}.pickle", "rb") as f:
        X = pickle.load(f)
    P = PCA(64, random_state=0).fit_transform(X)
    del X
    t0 = time.perf_counter()
    iforest = -IsolationForest(random_state=0).fit(P).score_samples(P)
    t_if = time.perf_counter() - t0
    out = {"sk IsolationForest, PCA(64) raw": iforest}
    t0 = time.perf_counter()
    if lof_rows <= 0 or len(P) <= lof_rows:
        out["sk LOF(20), PCA(64) raw"] = -LocalOutlierFactor(20).fit(P).negative_outlier_factor_
    t_lof = time.perf_counter() - t0
    np.savez(out_npz, **out)
    return {"iforest_s": t_if, "lof_s": t_lof}


# --------------------------------------------------------------------- the report
def _quality(y: np.ndarray, kinds: np.ndarray, s: np.ndarray) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    row = {"auc": roc_auc_score(y, s), "ap": average_precision_score(y, s)}
    for k in sorted(set(kinds[y])):
        m = (~y) | (kinds == k)
        row[k] = roc_auc_score(y[m], s[m])
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shots", type=int, default=1, help="rows per item (1: 70,700 rows; 6: 424,200)")
    ap.add_argument("--case", type=Path, default=None,
                    help="an existing case from make_real_case (default: built in --data)")
    ap.add_argument("--data", type=Path, default=Path(".bench-data"), help="work folder (default .bench-data/)")
    ap.add_argument("--memory", default="1GB", help="streamclust's memory budget (default 1GB)")
    ap.add_argument("--sets", default=None, help="descriptor sets (default: all the case has)")
    ap.add_argument("--lof-rows", type=int, default=0,
                    help="skip the exact-LOF baseline above this many rows (default 0: never skip)")
    ap.add_argument("--reuse-baselines", action="store_true",
                    help="reuse the in-memory baselines' scores of an earlier run on the same case (they do "
                         "not depend on streamclust; exact LOF of 424k rows takes ~5-10 min a set)")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "real_outliers.md")
    args = ap.parse_args(argv)

    import pandas as pd

    from streamclust.datasets.real import load_real_truth, make_real_case

    case = args.case or args.data / f"real-case-{args.shots}shots"
    if not (case / "truth.csv").is_file():
        print(f"building {case} ...", flush=True)
        make_real_case(case, shots=args.shots)
    truth = load_real_truth(case)
    y, kinds = truth["is_ood"].to_numpy(), truth["ood_kind"].to_numpy()
    sets = args.sets.split(",") if args.sets else sorted(p.stem for p in (case / "descriptors").glob("*.pickle"))
    store, study_dir = str(args.data / f"real-{args.shots}shots.zarr"), str(args.data / f"real-{args.shots}shots-study")
    print(f"real case: {len(y):,} rows, {int(y.sum())} OOD ({', '.join(sorted(set(kinds[y])))}); sets {sets}")
    st = measure("bench_real_outliers:study", case=str(case), store=store, out=study_dir, memory=args.memory)

    lines = [f"\n## Real-image outlier benchmark, {len(y):,} rows ({args.shots} shot(s) per item), "
             f"{int(y.sum())} OOD rows", "", "```", json.dumps(machine_facts()), "```", "",
             f"study (convert + run_study, kmeans only, 3 sets, --memory {args.memory}): "
             f"{st['wall_s']:.0f} s, peak RSS {st['peak_rss_mb']:.0f} MB; rule: "
             f"{next(iter(st['result']['rules'].values()))}", ""]
    verdicts, thresholds = [], []
    for name in sets:
        cand_npz = args.data / f"real-{args.shots}-{name}-candidates.npz"
        base_npz = args.data / f"real-{args.shots}-{name}-baseline.npz"
        cm = measure("bench_real_outliers:candidates", store=store, study_dir=study_dir, name=name,
                     out_npz=str(cand_npz))
        if args.reuse_baselines and base_npz.is_file():
            sidecar = base_npz.with_suffix(".json")
            bm = (json.loads(sidecar.read_text()) if sidecar.is_file() else
                  {"measured": "an earlier run", "peak_rss_mb": float("nan"),
                   "result": {"lof_s": float("nan"), "iforest_s": float("nan")}})
            print(f"  baseline of {name}: reusing {base_npz.name} (measured {bm['measured']})")
        else:
            bm = measure("bench_real_outliers:baseline", case=str(case), name=name, out_npz=str(base_npz),
                         lof_rows=args.lof_rows)
            bm["measured"] = machine_facts()["date"]
            base_npz.with_suffix(".json").write_text(json.dumps(bm))
        rows = []
        for source, npz in (("streamclust", cand_npz), ("in-memory baseline", base_npz)):
            with np.load(npz) as z:
                for cand in z.files:
                    rows.append({"set": name, "score": cand, "source": source, **_quality(y, kinds, z[cand])})
        frame = pd.DataFrame(rows)
        ours = frame.loc[frame["score"] == "combined (study default)", "auc"].iloc[0]
        base = frame[frame["source"] == "in-memory baseline"]
        best = base.loc[base["auc"].idxmax()]
        verdicts.append({"set": name, "combined AUC": ours, "best baseline": best["score"],
                         "baseline AUC": best["auc"], "ratio": ours / best["auc"],
                         "verdict": "PASS" if ours >= best["auc"] else "FAIL"})
        kind_cols = sorted(set(kinds[y]))
        lines += [f"### {name} (kNN recall {cm['result']['recall']:.3f}, reference {cm['result']['reference']:,} "
                  f"rows; baseline LOF {bm['result']['lof_s']:.0f} s, IsolationForest "
                  f"{bm['result']['iforest_s']:.0f} s, peak RSS {bm['peak_rss_mb']:.0f} MB)", "",
                  format_table(frame.round(3).to_dict("records"), ["score", "source", "auc", "ap", *kind_cols]), ""]
        with np.load(cand_npz) as z:
            s = z["combined (study default)"]
        for t in THRESHOLDS:
            f = s > t
            tp = int((f & y).sum())
            thresholds.append({"set": name, "threshold": t, "flagged": f"{f.mean():.2%}",
                               "precision": tp / max(int(f.sum()), 1), "recall": tp / int(y.sum())})
    lines += ["### The default score against the best in-memory baseline (ROC AUC)", "",
              format_table(verdicts, ["set", "combined AUC", "best baseline", "baseline AUC", "ratio", "verdict"]),
              "", "### Flagging rule of the combined score: flagged share, precision and recall per threshold", "",
              format_table(thresholds, ["set", "threshold", "flagged", "precision", "recall"]), ""]
    text = "\n".join(lines)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(text + "\n")
    return 0 if all(v["verdict"] == "PASS" for v in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
