"""examples/study.ipynb runs top to bottom in a fresh kernel of this interpreter and shows its outputs;
the report.html of the study it ran (images, metadata and a mixture) renders in headless Chromium."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest
from test_report import _check_page, _run_chromium  # the Chromium harness of the report tests

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "study.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in a tmp folder: ``(notebook, folder, seconds)``."""
    root = tmp_path_factory.mktemp("notebook")
    # a kernel spec for the interpreter running the tests (not whatever "python3" is on the PATH)
    spec = root / "jupyter" / "kernels" / "streamclust-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "streamclust tests", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root / "jupyter"))
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=600, kernel_name="streamclust-test",
                                         resources={"metadata": {"path": str(root)}})
        t0 = time.perf_counter()
        client.execute()  # raises CellExecutionError on the first failing cell
    return nb, root, time.perf_counter() - t0


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_study_notebook_runs(executed):
    nb, root, seconds = executed
    print(f"\nexamples/study.ipynb ran in {seconds:.0f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    plots = [o for o in outputs if "image/png" in o.get("data", {})]
    montages = [o for o in outputs if "image/jpeg" in o.get("data", {})]
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    # metrics plot per set (4 sets + the mixture) and the density overview (PNG); 3 cluster cards and the
    # outlier montage (JPEG)
    assert (len(plots), len(montages)) == (5 + 1, 3 + 1)
    assert "recommended set:" in text and "same labels as the study: True" in text
    assert "vdc_color+vdc_type" in text and "Cluster 0" in text
    study = root / "study-demo" / "study"
    for name in ("report.html", "results.csv", "clusters.csv", "comparison.csv", "summary.json"):
        assert (study / name).is_file(), name
    assert (root / "study-demo" / "new.csv").is_file()


def test_study_report_renders_in_chromium(executed, tmp_path):
    _, root, _ = executed
    page = root / "study-demo" / "study" / "report.html"
    result = _check_page(page, tmp_path)
    print(f"\nstudy report.html in Chromium: {result['images']} images, broken {result['broken']}, "
          f"errors {result['errors']}")
    assert result["errors"] == [] and result["broken"] == []
    assert result["images"] >= 5 * 4  # per set: metrics, density, small multiples, outliers, cluster montages
    shot = tmp_path / "study-report.png"
    proc = _run_chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000",
                         "--hide-scrollbars")
    assert shot.is_file(), proc.stderr[-3000:]
    print(f"screenshot of the study report: {shot}")
