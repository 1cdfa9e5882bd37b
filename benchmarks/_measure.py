"""Run one benchmark stage in a fresh Python process and measure it.

Each stage is a function ``module:function`` called with JSON keyword arguments in
a child process, so its peak RSS (``ru_maxrss`` of that process alone) is the
stage's own and numba/BLAS warm-up is counted where a user would pay it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["measure", "machine_facts", "format_table"]

_CHILD = r"""
import importlib, json, resource, sys, time
spec, kwargs = sys.argv[1], json.loads(sys.argv[2])
mod, fn = spec.split(":")
sys.path.insert(0, {bench_dir!r})
if "streamclust" in fn:  # streamclust's own stages run as the command line runs them
    from streamclust.core.blocks import bound_heaps
    bound_heaps()
t0 = time.perf_counter()
out = getattr(importlib.import_module(mod), fn)(**kwargs)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("@@RESULT@@" + json.dumps({{"wall_s": wall, "peak_rss_mb": peak, "result": out}}, default=str))
"""


def measure(spec: str, **kwargs) -> dict:
    """Run ``spec`` (``"module:function"`` in benchmarks/) in a child; return wall_s, peak_rss_mb, result."""
    code = _CHILD.format(bench_dir=str(Path(__file__).parent))
    shown = ", ".join(f"{k}={Path(v).name if isinstance(v, str) and '/' in v else v}" for k, v in kwargs.items())
    print(f"  running {spec}({shown}) ...", end="", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, spec, json.dumps(kwargs)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(" FAILED", flush=True)
        raise RuntimeError(f"benchmark stage {spec} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")][-1]
    res = json.loads(line[len("@@RESULT@@"):])
    res["process_s"] = time.perf_counter() - t0
    print(f" {res['wall_s']:.1f} s, {res['peak_rss_mb']:.0f} MB", flush=True)
    return res


def machine_facts() -> dict:
    """Machine, versions and date recorded with every table."""
    import dask
    import numpy
    import sklearn
    import zarr

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores {mem:.0f} GiB",
        "python": platform.python_version(),
        "numpy": numpy.__version__, "scikit-learn": sklearn.__version__,
        "dask": dask.__version__, "zarr": zarr.__version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
        "load avg (1 min)": f"{os.getloadavg()[0]:.1f}",
    }


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table (markdown pipe syntax) of ``rows``."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
