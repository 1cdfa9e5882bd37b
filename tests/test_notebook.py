"""examples/study.ipynb runs top to bottom in a fresh kernel of this interpreter and shows its outputs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "study.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_study_notebook_runs(tmp_path, monkeypatch):
    # a kernel spec for the interpreter running the tests (not whatever "python3" is on the PATH)
    spec = tmp_path / "jupyter" / "kernels" / "streamclust-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "streamclust tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="streamclust-test",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - t0
    print(f"\nexamples/study.ipynb ran in {seconds:.0f} s")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    # metrics plot per set (4 sets + the mixture), density overview, 3 cluster cards, outlier montage
    assert len(images) == 5 + 1 + 3 + 1
    assert "recommended set:" in text and "same labels as the study: True" in text
    assert "vdc_color+vdc_type" in text and "Cluster 0" in text
    study = tmp_path / "study-demo" / "study"
    for name in ("report.html", "results.csv", "clusters.csv", "comparison.csv", "summary.json"):
        assert (study / name).is_file(), name
    assert (tmp_path / "study-demo" / "new.csv").is_file()
