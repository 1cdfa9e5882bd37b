"""The ``streamclust`` command line: thin wrappers around the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamclust import __version__
from streamclust.core.arguments import pca_components, positive_int, random_seed
from streamclust.core.blocks import bound_heaps, parse_memory
from streamclust.core.logs import PACKAGE_LOGGER
from streamclust.core.paths import check_output_path
from streamclust.core.scheduler import SCHEDULER_HELP, use_scheduler
from streamclust.core.urls import is_url
from streamclust.errors import InputError, StreamclustError

__all__ = ["main", "build_parser"]

_EPILOG = """\
typical use:
  streamclust convert CASE_DIR -o case.zarr          raw files -> chunked Zarr store (resumable)
  streamclust study case.zarr -o study/ --k 2:15     preprocess, sweep k, label every image
  streamclust study case.zarr -o study/ --mix vdc_color+vdc_type   ... and a balanced mixture of two sets
  streamclust study case.zarr -o study/ --umap       ... and a 2-D UMAP of every image (store + report)
  streamclust assign study/models/osnet NEW -o new.csv  label + screen new descriptors, report drift
  streamclust demo --rows 20000 --out demo-out       all of the above on generated demo data

Every command runs in bounded memory (--memory, default 1GB) and streams the data
block by block; errors print one line (add --debug for the traceback).

on several processes or machines (--scheduler, every command):
  streamclust study case.zarr -o study/ --scheduler local:2
      start 2 worker processes (1 thread each) for this run, stop them after
  dask scheduler &  dask worker tcp://HOST:8786 --nthreads 1   (on each machine)
  streamclust study /shared/case.zarr -o study/ --scheduler tcp://HOST:8786
      use a running cluster; the store path must be readable by every worker
Without --scheduler, Dask's threads in this process do the work (nothing to start).
"""


def _descriptor_arg(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} should look like NAME=FILE, e.g. osnet=osnet.pickle")
    from streamclust.io.store import set_name_problem  # zarr's import only when a set is named

    name, path = text.split("=", 1)
    problem = set_name_problem(name)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: the set name {name!r} {problem}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``streamclust`` (all sub-commands)."""
    parser = argparse.ArgumentParser(
        prog="streamclust",
        description="Cluster and screen very large sets of image descriptors out of core.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamclust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--memory", default=None, metavar="SIZE",
                        help="memory budget of the whole process, e.g. 512MB, 2GiB (default: 1GiB, "
                             "the API's default)")
    common.add_argument("--debug", action="store_true",
                        help="show tracebacks on errors, and the library's DEBUG log records")
    common.add_argument("--quiet", action="store_true",
                        help="no progress bars or step lines (the library's log records at WARNING and above "
                             "only)")
    common.add_argument("--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP)

    conv = sub.add_parser(
        "convert", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="convert raw descriptor files into a Zarr store",
        description="Convert a case folder (descriptors/*.pickle|npy|npz|csv|parquet and images_paths.csv)\n"
                    "into a chunked, compressed Zarr store. Pickles are parsed and streamed, never\n"
                    "unpickled. An interrupted conversion resumes when run again.",
    )
    conv.add_argument("case_dir", type=Path, help="folder with descriptors/ and images_paths.csv")
    conv.add_argument("-o", "--out", type=_store_arg, required=True,
                      help="the .zarr store to write: a folder, or an fsspec URL every Dask worker can "
                           "reach (file:///shared/case.zarr; s3://bucket/case.zarr with s3fs installed)")
    conv.add_argument("--descriptor", action="append", type=_descriptor_arg, metavar="NAME=FILE",
                      help="an explicit descriptor file (repeatable); replaces discovery of descriptors/*")
    conv.add_argument("--paths", type=Path, metavar="CSV",
                      help="the image paths CSV (default: CASE_DIR/images_paths.csv)")
    conv.add_argument("--allow-restricted-pickle", action="store_true",
                      help="load pickles that are not a plain ndarray (e.g. a DataFrame) with a loader "
                           "restricted to numpy/pandas classes; loads such files whole into memory")
    conv.add_argument("--nan", choices=("fail", "drop", "impute"), default="fail",
                      help="rows holding NaN/Inf: fail naming them (default); drop them from every set "
                           "and the ids (listed in STORE_STEM.dropped_rows.csv); or impute column means")

    study = sub.add_parser(
        "study", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="preprocess, cluster and summarise every descriptor set of a store",
        description="For each descriptor set: L2-normalise + PCA (one pass), k-means for every k of\n"
                    "the range, exact full-data metrics (inertia, Calinski-Harabasz, Davies-Bouldin)\n"
                    "and a sampled silhouette, k chosen by the highest silhouette (ties within 0.01\n"
                    "go to the lowest Davies-Bouldin), every image labelled.\n\n"
                    "Writes OUT_DIR/results.csv, metrics.csv, summary.json and models/<set>/.",
    )
    study.add_argument("store", type=_store_arg,
                       help="a store written by 'streamclust convert' (folder or fsspec URL)")
    study.add_argument("--json", action="store_true",
                       help="print summary.json on stdout instead of the table (step lines go to stderr)")
    study.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    study.add_argument("--descriptors", metavar="NAME[,NAME...]",
                       help="descriptor sets to study (default: all)")
    study.add_argument("--mix", action="append", metavar="SET+SET[:W,W]",
                       help="also study a mixture of sets, e.g. vdc_color+vdc_type or osnet+vdc_color:2,1 "
                            "(repeatable): the members' PCA outputs side by side, each scaled so that it "
                            "holds the share W/sum(W) of the variance (default equal); members not in "
                            "--descriptors are studied too")
    study.add_argument("--k", default="2:15", metavar="K|A:B",
                       help="k to try: one value, an inclusive range A:B, or a list 4,8,12 (default 2:15)")
    study.add_argument("--components", default="64", metavar="N|FRACTION",
                       type=_number_arg(pca_components, "n_components", _int_or_float),
                       help="PCA components, or a variance fraction like 0.9 (default 64)")
    study.add_argument("--n-init", type=_number_arg(positive_int, "n_init", int), default=3,
                       help="k-means starts per k (default 3)")
    metadata = study.add_mutually_exclusive_group()
    metadata.add_argument("--metadata", type=Path, metavar="FILE",
                          help="per-image attributes for cluster profiles and sentences: VeRi-Wild "
                               "vehicle_info.txt, or a CSV/Parquet with a path column (default: the file "
                               "'convert' found in the case folder and recorded in the store)")
    metadata.add_argument("--no-metadata", action="store_true", help="use no metadata, not even the recorded file")
    images = study.add_mutually_exclusive_group()
    images.add_argument("--images", type=Path, metavar="ZIP|DIR",
                        help="images.zip or the image folder, for montages in report.html (default: the "
                             "source 'convert' found in the case folder and recorded in the store); paths are "
                             "also found under another top folder (longest common path suffix)")
    images.add_argument("--no-images", action="store_true", help="use no images, not even the recorded source")
    study.add_argument("--no-report", action="store_true", help="skip report.html")
    study.add_argument("--seed", type=_number_arg(random_seed, "seed", int), default=0, help="random seed (default 0)")
    study.add_argument("--algorithms", default="kmeans,ward", metavar="NAME[,NAME...]",
                       help="clustering algorithms compared on every set: kmeans, ward, gmm, hdbscan, spectral "
                            "(default kmeans,ward; kmeans always runs and defines the saved model)")
    study.add_argument("--outlier-score", choices=("combined", "kdist", "lof", "mean"), default="combined",
                       help="outlier score of every image (default combined: robust z-scores of the "
                            "distance to the 50th nearest sampled image, of the raw descriptor norm -- too "
                            "small or too large -- and of what the PCA components cannot explain, added up "
                            "as sqrt(sum z^2) over the positive ones; flagged above 4; outliers.csv names the "
                            "largest. kdist/mean: the kNN distance alone; lof: the local density ratio, "
                            "which misses groups of look-alike anomalies)")
    study.add_argument("--outlier-truth", type=Path, metavar="CSV",
                       help="known outliers to judge the flags by: a CSV with path and is_outlier columns "
                            "(a demo case's truth.csv, or images you labelled); precision, recall and ROC AUC "
                            "per set go to the log, summary.json and report.html")
    study.add_argument("--umap", action="store_true",
                       help="also store every image's position in a 2-D UMAP of each set (runs/<id>/<set>/umap; "
                            "UMAP of a 20,000-row sample, every row placed by its nearest sampled rows) and "
                            "show its density overview in report.html")

    assign = sub.add_parser(
        "assign", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="label and screen new descriptors with a saved model (no refitting)",
        description="Apply a model saved by 'study' (OUT_DIR/models/<set>/) to new descriptors:\n"
                    "same preprocessing, nearest centre, kNN outlier score against the training\n"
                    "reference sample. NEW_INPUT is a store (.zarr), a case folder, or one\n"
                    "descriptor file (.pickle/.npy/.npz/.csv/.parquet). Writes OUT.csv with\n"
                    "path, cluster, cluster_sentence, outlier_score, is_outlier, and prints a\n"
                    "drift report comparing the batch with the training data.",
    )
    assign.add_argument("model", type=Path, help="a model folder, e.g. study/models/osnet")
    assign.add_argument("new_input", type=_store_arg,
                        help="store (folder or fsspec URL), case folder or descriptor file")
    assign.add_argument("-o", "--out", type=Path, required=True, help="the CSV to write")
    assign.add_argument("--paths", type=Path, metavar="CSV",
                        help="image paths for a single descriptor file (default: row:<i>)")
    assign.add_argument("--allow-restricted-pickle", action="store_true",
                        help="see 'convert --help'")
    assign.add_argument("--fail-on-drift", action="store_true",
                        help="exit with status 3 when the drift report says DRIFT")
    assign.add_argument("--json", action="store_true",
                        help="print the outcome and the drift report as JSON on stdout (other lines go to stderr)")

    demo = sub.add_parser(
        "demo", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="generate a demo case with planted truth, convert it and study it",
        description="Writes OUT/case/ (raw files in the real case's format, with truth.csv),\n"
                    "OUT/case.zarr and OUT/study/.",
    )
    demo.add_argument("--rows", type=_number_arg(positive_int, "rows", int), default=20_000,
                      help="images to generate (default 20000)")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    demo.add_argument("--k", default="2:15", metavar="K|A:B", help="k range of the study (default 2:15)")
    demo.add_argument("--seed", type=_number_arg(random_seed, "seed", int), default=0, help="random seed (default 0)")
    demo.add_argument("--no-images", action="store_true", help="skip rendering images.zip")

    completion = sub.add_parser(
        "completion", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="print a shell completion script",
        description="Print a completion script for the commands and options of streamclust.\n\n"
                    "  bash: eval \"$(streamclust completion bash)\"   (e.g. in ~/.bashrc)\n"
                    "  zsh:  eval \"$(streamclust completion zsh)\"    (e.g. in ~/.zshrc)",
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")
    return parser


def _store_arg(text: str) -> Path | str:
    """A local path, or an fsspec URL kept as text (``Path`` would fold its ``//``)."""
    return text if is_url(text) else Path(text)


def _number_arg(check: Callable[[str, object], Any], name: str, parse: Callable[[str], Any]
                ) -> Callable[[str], Any]:
    """An argparse ``type``: ``check(name, parse(text))``, whose refusal (also of text ``parse``
    cannot read) becomes argparse's one-line error naming the option and ``name=value``."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = text  # refused by the check, which names the parameter
        try:
            return check(name, value)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _int_or_float(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _run_convert(args: argparse.Namespace, say) -> None:
    from streamclust.io.ingest import convert_case

    t0 = time.perf_counter()
    store = convert_case(args.case_dir, args.out, descriptors=dict(args.descriptor or []) or None,
                         paths_csv=args.paths, memory=args.memory,
                         allow_restricted_pickle=args.allow_restricted_pickle, progress=not args.quiet,
                         nan_policy=args.nan)
    dropped = store.ids.attrs.get("dropped_rows", 0)
    if dropped:
        print(f"dropped {dropped} rows holding NaN/Inf, listed in {store.ids.attrs['dropped_rows_report']}",
              flush=True)
    say(f"wrote {store.path}: {store.n_rows} images, sets {', '.join(store.descriptor_names())} "
        f"in {time.perf_counter() - t0:.1f} s")


def _run_study(args: argparse.Namespace, say, store=None, out=None, outlier_truth=None) -> None:
    from streamclust.study import run_study

    result = run_study(
        store or args.store, out or args.out,
        descriptors=args.descriptors.split(",") if getattr(args, "descriptors", None) else None,
        k=args.k, n_components=getattr(args, "components", 64),
        n_init=getattr(args, "n_init", 3), memory=args.memory, random_state=args.seed,
        metadata=False if getattr(args, "no_metadata", False) else getattr(args, "metadata", None),
        images=False if getattr(args, "no_images", False) else getattr(args, "images", None),
        report=not getattr(args, "no_report", False),
        progress=not args.quiet,
        algorithms=getattr(args, "algorithms", "kmeans,ward"),
        mix=getattr(args, "mix", None),
        umap=getattr(args, "umap", False),
        outlier_score=getattr(args, "outlier_score", "combined"),
        outlier_truth=outlier_truth if outlier_truth is not None else getattr(args, "outlier_truth", None),
    )
    if getattr(args, "json", False):
        print((result.out_dir / "summary.json").read_text(), end="")
        return
    say("")
    say(result.summary_table().to_string(index=False))
    say(f"\nrecommended set: {result.recommended}; wrote {result.results_csv} and {result.metrics_csv}")


def _run_assign(args: argparse.Namespace, say) -> int:
    from streamclust.model.assign import assign_new

    result = assign_new(args.model, args.new_input, args.out, paths_csv=args.paths, memory=args.memory,
                        allow_restricted_pickle=args.allow_restricted_pickle, progress=not args.quiet)
    say(f"wrote {result.out_csv}: {result.n_rows} rows, {result.n_outliers} flagged as outliers "
        f"({result.rows_per_second:,.0f} rows/s)")
    if args.json:
        print(json.dumps({"out_csv": str(result.out_csv), "n_rows": result.n_rows, "n_outliers": result.n_outliers,
                          "drift": result.drift.to_dict()}, indent=2))
    else:
        print(result.drift.to_text())
    return 3 if args.fail_on_drift and result.drift.drifted else 0


def _run_demo(args: argparse.Namespace, say) -> None:
    from streamclust.datasets.synthetic import make_demo_case
    from streamclust.io.ingest import convert_case
    from streamclust.study.rules import parse_k_range

    parse_k_range(args.k)  # refused before the demo case is generated
    parse_memory(args.memory)
    check_output_path(args.out, "folder")
    case = args.out / "case"
    t0 = time.perf_counter()
    make_demo_case(case, n_rows=args.rows, seed=args.seed, images=not args.no_images, progress=not args.quiet)
    say(f"demo case with {args.rows} images in {case} ({time.perf_counter() - t0:.1f} s)")
    store = convert_case(case, args.out / "case.zarr", memory=args.memory, progress=not args.quiet)
    say(f"converted to {store.path}")
    # the study uses the metadata and images convert recorded, as for any case folder
    _run_study(args, say, store=store.path, out=args.out / "study", outlier_truth=case / "truth.csv")


def _completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash (or zsh, through bashcompinit) completion script for the commands and their options."""
    # argparse has no public accessor for a parser's actions; argcomplete reads them the same way
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    cases = "\n".join(
        f"        {name}) opts=\"{' '.join(s for a in sub._actions for s in a.option_strings)}\";;"
        for name, sub in commands.items())
    script = f"""_streamclust() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" opts=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{' '.join(commands)} --help --version" -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _streamclust streamclust
"""
    return ("autoload -U +X bashcompinit && bashcompinit\n" + script) if shell == "zsh" else script


def _library_log_handler(args: argparse.Namespace) -> logging.Handler:
    """Print the library's log records like the command's own lines: INFO and up (DEBUG with --debug,
    WARNING with --quiet), on stdout, or on stderr when stdout carries --json."""
    handler = logging.StreamHandler(sys.stderr if getattr(args, "json", False) else sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``streamclust``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(_completion_script(parser, args.shell), end="")
        return 0
    out = sys.stderr if getattr(args, "json", False) else sys.stdout

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=out, flush=True)

    runners = {"convert": _run_convert, "study": _run_study, "assign": _run_assign, "demo": _run_demo}
    bound_heaps()  # the process is ours: freed blocks go back to the OS (opt-in from the API)
    package = logging.getLogger(PACKAGE_LOGGER)
    handler, level = _library_log_handler(args), package.level
    package.addHandler(handler)
    package.setLevel(handler.level)
    try:
        # one scheduler for the whole command (demo: conversion and study share it)
        with use_scheduler(args.scheduler):
            status = runners[args.command](args, say) or 0
    except KeyboardInterrupt:
        print("streamclust: interrupted; completed work is kept and the next run resumes it", file=sys.stderr)
        return 130
    except StreamclustError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"streamclust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"streamclust {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
