"""The study's projections (``--umap``): a 2-D UMAP position of every row in the run, its density
overview in the report, the numba disk cache of UMAP's kernels."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from test_report import _check_page

from streamclust.cli import main
from streamclust.estimators import warm_up_umap
from streamclust.estimators.projection import _UNCACHED_UMAP_KERNELS, _cache_umap_kernels
from streamclust.io.store import CaseStore
from streamclust.study import run_study

N_ROWS = 2000
SETS = ["vdc_color", "vdc_type", "vdc_color+vdc_type"]
ARGS = {"descriptors": ["vdc_color", "vdc_type"], "mix": ["vdc_color+vdc_type"], "k": "4:6",
        "n_components": 16, "random_state": 0}


def _run(store: CaseStore, run_id: str):
    return next(r for r in store.runs() if r.run_id == run_id)


@pytest.fixture(scope="module")
def studies(demo_case):
    """The same study three times: ``--umap`` from the CLI (with the report), ``umap=True`` from
    the API (no report) and without UMAP."""
    root = demo_case(N_ROWS)
    assert main(["study", str(root / "case.zarr"), "-o", str(root / "cli"), "--umap", "--quiet",
                 "--descriptors", "vdc_color,vdc_type", "--mix", "vdc_color+vdc_type", "--k", "4:6",
                 "--components", "16", "--algorithms", "kmeans"]) == 0
    again = run_study(root / "case.zarr", root / "api", umap=True, report=False, **ARGS)
    plain = run_study(root / "case.zarr", root / "plain", **ARGS)
    return root, CaseStore(root / "case.zarr"), again, plain


def test_umap_of_every_row_is_stored_finite_and_deterministic(studies):
    root, store, again, _ = studies
    summary = json.loads((root / "cli" / "summary.json").read_text())
    first, second = _run(store, summary["run_id"]), _run(store, again.run_id)
    reduced_chunks = first.array("vdc_color/reduced").chunks[0]
    for name in SETS:
        arr = first.array(f"{name}/umap")
        assert arr.shape == (N_ROWS, 2) and arr.dtype == np.float32 and arr.chunks[0] == reduced_chunks
        values = arr[:]
        assert np.isfinite(values).all() and values.std(axis=0).min() > 0
        np.testing.assert_array_equal(values, second.array(f"{name}/umap")[:])
        assert summary["umap"]["sets"][name]["sample_rows"] == N_ROWS
        assert again.sets[name].umap["sample_rows"] == N_ROWS
    params = summary["umap"]["params"]
    assert params["random_state"] == 0 and params["sample_size"] == 20_000 and params["n_components"] == 2
    assert first.group.attrs["params"]["umap"] == params


def test_umap_overview_is_in_the_report_and_it_renders(studies, tmp_path):
    root, _, _, _ = studies
    page = root / "cli" / "report.html"
    text = page.read_text(encoding="utf-8")
    for name in SETS:
        assert f'src="report_files/{name}-umap.png"' in text
        assert (root / "cli" / "report_files" / f"{name}-umap.png").stat().st_size > 10_000
        assert f'href="report_files/{name}-3d.html"' in text
    assert text.count('<div class="pair">') == len(SETS)
    result = _check_page(page, tmp_path)
    assert result["errors"] == [] and result["broken"] == []
    assert result["images"] == len(re.findall(r"<img ", text)) >= 4 * len(SETS)
    viewer = _check_page(root / "cli" / "report_files" / "vdc_color-3d.html", tmp_path)
    assert viewer["errors"] == []
    points = re.search(r'id="scatter-data">(.*?)</script>',
                       (root / "cli" / "report_files" / "vdc_color-3d.html").read_text(), re.S).group(1)
    assert len(json.loads(points)["labels"]) == 2000


def test_without_umap_nothing_changes(studies):
    root, store, again, plain = studies
    run = _run(store, plain.run_id)
    assert not any(name.endswith("umap") for name, _ in run.group.members(max_depth=None))
    assert "umap" not in run.group.attrs["params"]
    assert "umap" not in json.loads((root / "plain" / "summary.json").read_text())
    assert all(r.umap is None for r in plain.sets.values())
    text = (root / "plain" / "report.html").read_text(encoding="utf-8")
    assert "umap.png" not in text and "-3d.html" not in text and '<div class="pair">' not in text
    # the clustering and outlier results are those of the run with UMAP
    pd.testing.assert_frame_equal(pd.read_csv(root / "plain" / "results.csv"),
                                  pd.read_csv(root / "api" / "results.csv"))


def test_umap_kernels_use_the_numba_disk_cache():
    from numba.core.caching import FunctionCache

    _cache_umap_kernels()
    import importlib

    for module, names in _UNCACHED_UMAP_KERNELS.items():
        for name in names:
            assert isinstance(getattr(importlib.import_module(module), name)._cache, FunctionCache)
    assert warm_up_umap() > 0
