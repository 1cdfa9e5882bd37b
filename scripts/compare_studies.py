#!/usr/bin/env python
"""Compare the outputs of two studies, file by file: are the results the same?

    python scripts/compare_studies.py STUDY_A STUDY_B

For checking that a change of code, machine, scheduler or block size left the results alone.
Compared byte for byte: every CSV (results, metrics, algorithms, outliers, clusters, comparison),
every saved model array (``models/<set>/*.npy``) and every report figure (``report_files/``).
``models/<set>/model.json`` is compared as JSON without what names the run rather than its result
(``info.run_id``, ``info.store``, the ``source`` files' paths, the software ``versions``).  ``summary.json``
and ``report.html`` carry the run id, folders and timings, and are not compared.

Exit status 0 when everything compared is identical, 1 otherwise, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CSVS = ("results.csv", "metrics.csv", "algorithms.csv", "outliers.csv", "clusters.csv", "comparison.csv")

#: Keys of ``model.json``'s ``info`` that name the run, the store or the source file, not the result.
RUN_KEYS = ("run_id", "store", "source")


def _model_doc(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("versions", None)
    info = doc.get("info", {})
    for part in [info, *info.get("members", {}).values()]:  # a mixture's members have a source each
        for key in RUN_KEYS:
            part.pop(key, None)
    return doc


def compare(a: Path, b: Path) -> list[tuple[str, str]]:
    """``(status, relative path)`` for every file compared; status is ``same``, ``DIFF`` or ``MISSING``."""
    names = [Path(n) for n in CSVS if (a / n).exists() or (b / n).exists()]
    for folder, pattern in (("models", "*.npy"), ("models", "model.json"), ("report_files", "*")):
        names += sorted({p.relative_to(root) for root in (a, b) for p in (root / folder).rglob(pattern)
                         if p.is_file()})
    out = []
    for rel in names:
        pa, pb = a / rel, b / rel
        if not (pa.is_file() and pb.is_file()):
            out.append(("MISSING", str(rel)))
        elif rel.name == "model.json":
            out.append(("same" if _model_doc(pa) == _model_doc(pb) else "DIFF", str(rel)))
        else:
            out.append(("same" if pa.read_bytes() == pb.read_bytes() else "DIFF", str(rel)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    parser.add_argument("study_a", type=Path, help="output folder of one study (`streamclust study -o`)")
    parser.add_argument("study_b", type=Path, help="output folder of the other")
    parser.add_argument("--all", action="store_true", help="list identical files too")
    args = parser.parse_args(argv)
    for folder in (args.study_a, args.study_b):
        if not (folder / "results.csv").is_file():
            print(f"compare_studies: {folder}: not a study output folder (no results.csv)", file=sys.stderr)
            return 2
    rows = compare(args.study_a, args.study_b)
    for status, rel in rows:
        if args.all or status != "same":
            print(f"{status:8} {rel}")
    differ = sum(status != "same" for status, _ in rows)
    print(f"{len(rows) - differ} of {len(rows)} files identical" + (f", {differ} differ" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
