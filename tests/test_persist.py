"""Model folders: arrays + JSON round trip, tampering refused, nothing unpickled."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamclust.errors import ModelError, StoreError
from streamclust.io.persist import load_model_dir, model_content_sha256, save_model_dir


@pytest.fixture
def model(tmp_path):
    arrays = {"centers": np.arange(12, dtype=np.float32).reshape(3, 4), "mean": np.ones(4)}
    save_model_dir(tmp_path / "m", "descriptor-set-model", {"k": 3}, arrays, {"set": "osnet"})
    return tmp_path / "m", arrays


def test_round_trip(model):
    path, arrays = model
    doc, loaded = load_model_dir(path, kind="descriptor-set-model")
    assert doc["params"] == {"k": 3} and doc["info"]["set"] == "osnet"
    for name, value in arrays.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype


def test_tampered_array_is_refused(model):
    path, _ = model
    raw = bytearray((path / "centers.npy").read_bytes())
    raw[-1] ^= 0x01
    (path / "centers.npy").write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="does not match its SHA-256"):
        load_model_dir(path)


def test_pickled_array_substituted_is_refused(model, tmp_path):
    path, _ = model
    np.save(path / "centers.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    doc = json.loads((path / "model.json").read_text())
    import hashlib

    doc["arrays"]["centers"]["sha256"] = hashlib.sha256((path / "centers.npy").read_bytes()).hexdigest()
    doc["content_sha256"] = model_content_sha256(doc)  # re-signed: the .npy header itself is refused
    (path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="centers.npy: holds dtype object .* refused without reading it"):
        load_model_dir(path)


@pytest.mark.parametrize("edit", [
    lambda d: d.update(format_version=99),
    lambda d: d.update(kind="other"),
    lambda d: d["arrays"]["centers"].update(file="../../etc/passwd"),
    lambda d: d["arrays"]["centers"].update(shape=[4, 3]),
])
def test_manifest_edits_are_refused(model, edit):
    path, _ = model
    doc = json.loads((path / "model.json").read_text())
    edit(doc)
    (path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError):
        load_model_dir(path, kind="descriptor-set-model")


def test_missing_or_broken_manifest(tmp_path):
    with pytest.raises(StoreError, match="not a streamclust model folder"):
        load_model_dir(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        load_model_dir(tmp_path)
