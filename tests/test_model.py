"""Saved models label and screen new data: exact reproduction, fresh process, tampering, drift."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from streamclust.datasets.synthetic import load_truth, make_demo_case
from streamclust.errors import StoreError
from streamclust.io.ingest import convert_case
from streamclust.io.persist import model_content_sha256
from streamclust.io.sources import open_source
from streamclust.model import DescriptorSetModel, drift_report
from streamclust.model.assign import assign_new
from streamclust.study import run_study

SET = "osnet"


@pytest.fixture(scope="module")
def trained(demo_case):
    root = demo_case(2500)
    run_study(root / "case.zarr", root / "study", k="4:8", n_components=32, descriptors=[SET], random_state=0)
    return root


def test_assign_in_a_fresh_process_reproduces_the_study(trained):
    out = trained / "assigned.csv"
    proc = subprocess.run([sys.executable, "-m", "streamclust.cli", "assign", str(trained / "study" / "models" / SET),
                           str(trained / "case.zarr"), "-o", str(out), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "no drift" in proc.stdout
    got = pd.read_csv(out)
    study = pd.read_csv(trained / "study" / "results.csv")
    assert list(got.columns) == ["path", "cluster", "cluster_sentence", "outlier_score", "is_outlier"]
    assert (got["path"] == study["path"]).all()
    assert (got["cluster"] == study[f"cluster_{SET}"]).all()
    np.testing.assert_allclose(got["outlier_score"], study[f"outlier_score_{SET}"], rtol=1e-5)
    assert (got["is_outlier"] == study[f"is_outlier_{SET}"]).mean() > 0.999


def test_assign_a_raw_case_folder_and_a_single_file(trained, tmp_path):
    result = assign_new(trained / "study" / "models" / SET, trained / "case", tmp_path / "a.csv")
    assert result.n_rows == 2500 and not result.drift.drifted
    assign_new(trained / "study" / "models" / SET, trained / "case" / "descriptors" / f"{SET}.pickle",
                        tmp_path / "b.csv")
    b = pd.read_csv(tmp_path / "b.csv")
    assert b["path"].iloc[0] == "row:0" and (b["cluster"] == pd.read_csv(tmp_path / "a.csv")["cluster"]).all()


def test_numpy_api_and_drift_verdicts(trained):
    model = DescriptorSetModel.load(trained / "study" / "models" / SET)
    X = open_source(trained / "case" / "descriptors" / f"{SET}.pickle").read_rows(0, 2500)
    truth = load_truth(trained / "case")
    out = model.assign(X)
    assert out["cluster"].shape == (2500,) and out["cluster"].dtype == np.int32
    inliers = ~truth["is_outlier"].to_numpy()
    normal = drift_report(model, out["cluster"][inliers][:1500], out["is_outlier"][inliers][:1500],
                          out["distance"][inliers][:1500])
    assert not normal.drifted, normal.to_text()
    only_outliers = truth["is_outlier"].to_numpy()
    shifted = drift_report(model, out["cluster"][only_outliers], out["is_outlier"][only_outliers],
                           out["distance"][only_outliers])
    assert shifted.drifted and "outlier rate" in shifted.verdict, shifted.to_text()
    one_colour = (truth["color"] == "red").to_numpy() & inliers
    colour_batch = drift_report(model, out["cluster"][one_colour], out["is_outlier"][one_colour],
                                out["distance"][one_colour])
    assert colour_batch.drifted and "cluster shares" in colour_batch.verdict


def test_held_out_images_are_not_flagged_as_drift(tmp_path):
    """Train on 80% of the images, assign the other 20%: same distribution, no drift."""
    make_demo_case(tmp_path / "full", n_rows=3000, seed=3, images=False)
    rng = np.random.default_rng(0)
    held_out = np.zeros(3000, bool)
    held_out[rng.choice(3000, 600, replace=False)] = True
    paths = pd.read_csv(tmp_path / "full" / "images_paths.csv")
    for part, rows in (("train", ~held_out), ("new", held_out)):
        (tmp_path / part / "descriptors").mkdir(parents=True)
        X = open_source(tmp_path / "full" / "descriptors" / f"{SET}.pickle").read_rows(0, 3000)
        np.save(tmp_path / part / "descriptors" / f"{SET}.npy", X[rows])
        paths[rows].to_csv(tmp_path / part / "images_paths.csv", index=False)
    convert_case(tmp_path / "train", tmp_path / "train.zarr")
    run_study(tmp_path / "train.zarr", tmp_path / "study", k="4:8", n_components=32, random_state=0)
    result = assign_new(tmp_path / "study" / "models" / SET, tmp_path / "new", tmp_path / "new.csv")
    print(result.drift.to_text())
    assert not result.drift.drifted, result.drift.to_text()


@pytest.mark.parametrize("tamper", ["array", "threshold", "deleted-field-re-signed"])
def test_tampered_model_is_refused(trained, tmp_path, tamper):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(trained / "study" / "models" / SET, copy)
    if tamper == "array":
        raw = bytearray((copy / "kmeans_cluster_centers.npy").read_bytes())
        raw[-3] ^= 0xFF
        (copy / "kmeans_cluster_centers.npy").write_bytes(bytes(raw))
        with pytest.raises(StoreError, match="SHA-256"):
            DescriptorSetModel.load(copy)
    elif tamper == "threshold":
        doc = json.loads((copy / "model.json").read_text())
        doc["params"]["screen"]["threshold"] = 99.0
        (copy / "model.json").write_text(json.dumps(doc))
        with pytest.raises(StoreError, match="model.json: its content does not match its content_sha256"):
            DescriptorSetModel.load(copy)
    else:
        doc = json.loads((copy / "model.json").read_text())
        del doc["params"]["detector"]["threshold_"]
        doc["content_sha256"] = model_content_sha256(doc)
        (copy / "model.json").write_text(json.dumps(doc))
        with pytest.raises(StoreError, match=r"params\.detector lacks the fields \['threshold_'\]"):
            DescriptorSetModel.load(copy)


def test_wrong_dimension_is_refused(trained, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 7), np.float32))
    with pytest.raises(Exception, match="expects 512"):
        assign_new(trained / "study" / "models" / SET, tmp_path / "x.npy", tmp_path / "x.csv")


def test_cli_assign_json_carries_the_drift_report(trained, tmp_path, capsys):
    from streamclust.cli import main

    model = trained / "study" / "models" / SET
    assert main(["assign", str(model), str(trained / "case.zarr"), "-o", str(tmp_path / "a.csv"), "--json",
                 "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_rows"] == 2500 and out["out_csv"] == str(tmp_path / "a.csv")
    drift = out["drift"]
    assert drift["drifted"] is False and drift["verdict"].startswith("no drift")
    assert set(drift) >= {"share_shift", "share_shift_limit", "outlier_rate", "distance_ks", "cluster_shares"}
