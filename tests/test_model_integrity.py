"""Saved models that were edited, damaged, forged or planted: refused in one line, before any work.

Two small models are fitted here on synthetic rows (no study; seconds once numba's kernels are
compiled): a descriptor set and a mixture of two.  Edits of ``model.json`` are refused by its own
hash; edits that are re-signed (``content_sha256`` recomputed, as a forger would) are refused by
the value checks; planted files by their size before they are read.  A fuzz mutates every field of
``model.json`` and asserts: a refusal is a StreamclustError (never another exception), memory stays
bounded, and a model that loads gives the original labels, scores and drift report unless the
mutated field is one that legitimately changes them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from streamclust.cli import main
from streamclust.errors import InputError, ModelError, StoreError, StreamclustError
from streamclust.estimators import KNNOutlierDetector, RobustZScreen, StreamingKMeans, StreamingPCA, VarianceBalancer
from streamclust.io.persist import MAX_MANIFEST_BYTES, model_content_sha256
from streamclust.model import DescriptorSetModel, MixPreprocessing, distance_quantiles, drift_report
from streamclust.model.checks import check_budget, check_layout

N_ROWS = 200


def _fit_and_save(name: str, pre: StreamingPCA | MixPreprocessing, X: np.ndarray, path: Path) -> Path:
    """A model of ``pre`` + 3-means + kNN detector + combined screen, fitted on ``X`` and saved."""
    reduced, stats = pre.transform_with_row_stats(X)
    kmeans = StreamingKMeans(3, random_state=0).fit(reduced)
    det = KNNOutlierDetector(n_neighbors=8, score="kdist", random_state=0).fit(reduced)
    evidence = np.column_stack([det.outlier_scores_, stats])
    n_members = stats.shape[1] // 2
    screen = RobustZScreen(["upper"] + ["both", "upper"] * n_members,
                           names=["neighbours"] + [f"{s}{j}" for j in range(n_members) for s in ("norm", "residual")]
                           ).fit(evidence)
    labels = kmeans.predict(reduced)
    dist = kmeans.transform(reduced)[np.arange(len(X)), labels]
    model = DescriptorSetModel(
        name, pre, kmeans, det, index_seed=det.index_seed_, screen=screen,
        sentences={c: f"{name}: cluster {c}" for c in range(3)},
        training={"cluster_shares": np.bincount(labels, minlength=3) / len(X),
                  "outlier_rate": float((screen.score(evidence) > screen.threshold_).mean()),
                  "distance_quantiles": distance_quantiles(dist), "n_rows": len(X)})
    return model.save(path)


def _rows(rng: np.random.Generator, d: int) -> np.ndarray:
    centres = rng.normal(size=(3, d)) * 4
    return (centres[rng.integers(0, 3, N_ROWS)] + rng.normal(size=(N_ROWS, d))).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """``{"one": (model folder, batch), "mix": (...)}``: the batch is 40 training rows and 10 new ones."""
    root = tmp_path_factory.mktemp("integrity")
    rng = np.random.default_rng(0)
    X = _rows(rng, 24)
    one = _fit_and_save("osnet", StreamingPCA(n_components=4).fit(X), X, root / "one")
    A, B = _rows(rng, 24), _rows(rng, 16)
    pcas = [StreamingPCA(n_components=4).fit(A), StreamingPCA(n_components=3).fit(B)]
    balancer = VarianceBalancer([4, 3]).fit(np.hstack([pcas[0].transform(A), pcas[1].transform(B)]))
    AB = np.hstack([A, B])
    mix = _fit_and_save("a+b", MixPreprocessing(["a", "b"], pcas, balancer), AB, root / "mix")
    new = np.random.default_rng(1)
    return {"one": (one, np.vstack([X[:40], _rows(new, 24)[:10]])),
            "mix": (mix, np.vstack([AB[:40], np.hstack([_rows(new, 24), _rows(new, 16)])[:10]]))}


def _copy(models, tmp_path: Path, which: str = "one") -> tuple[Path, dict]:
    """A copy of a model folder and its parsed model.json."""
    dst = tmp_path / which
    shutil.copytree(models[which][0], dst)
    return dst, json.loads((dst / "model.json").read_text())


def _write(model: Path, doc: dict, *, sign: bool = True) -> None:
    if sign:
        doc["content_sha256"] = model_content_sha256(doc)
    (model / "model.json").write_text(json.dumps(doc))


def _put_array(model: Path, doc: dict, name: str, value: np.ndarray, *, allow_pickle: bool = False) -> None:
    """Replace (or add) an array file and its entry in ``doc`` (hash, shape, dtype), as a forger would."""
    np.save(model / f"{name}.npy", value, allow_pickle=allow_pickle)
    raw = (model / f"{name}.npy").read_bytes()
    doc["arrays"][name] = {"file": f"{name}.npy", "sha256": hashlib.sha256(raw).hexdigest(),
                           "shape": list(value.shape), "dtype": value.dtype.str}


def _outputs(model: DescriptorSetModel, X: np.ndarray) -> dict:
    out = model.assign(X)
    report = drift_report(model, out["cluster"], out["is_outlier"], out["distance"])
    return {"cluster": out["cluster"].tolist(), "outlier_score": out["outlier_score"].tolist(),
            "is_outlier": out["is_outlier"].tolist(), "sentence": model.sentence(out["cluster"]).tolist(),
            "drift": report.to_dict()}


def _refused(model: Path, match: str, **load) -> ModelError:
    with pytest.raises(ModelError, match=match) as info:
        DescriptorSetModel.load(model, **load)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(model))
    assert isinstance(info.value, InputError) and isinstance(info.value, StoreError)
    return info.value


# -- model.json is signed -----------------------------------------------------------------------


def _set(*keys, value):
    def edit(doc, model):
        node = doc
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def _nan_centres_with_their_array_hash(doc, model):
    centres = np.load(model / "kmeans_cluster_centers.npy")
    centres[0, 0] = np.nan
    _put_array(model, doc, "kmeans_cluster_centers", centres)


UNSIGNED_EDITS = {
    "screen threshold": _set("params", "screen", "threshold", value=1e9),
    "detector threshold": _set("params", "detector", "threshold_", value=0.0),
    "a sentence": _set("info", "sentences", "1", value="=HYPERLINK(\"http://x\")"),
    "drift reference outlier rate": _set("info", "training", "outlier_rate", value=0.9),
    "an array and its hash": _nan_centres_with_their_array_hash,
    "k-means seed (no effect on labels)": _set("params", "kmeans", "random_state", value=7),
}


@pytest.mark.parametrize("edit", list(UNSIGNED_EDITS))
def test_an_edit_of_any_value_of_model_json_is_refused(models, tmp_path, edit):
    model, doc = _copy(models, tmp_path)
    UNSIGNED_EDITS[edit](doc, model)
    _write(model, doc, sign=False)
    _refused(model, r"model\.json: its content does not match its content_sha256 .* re-run the study")


def test_the_hash_is_of_the_values_not_of_the_file_layout(models, tmp_path):
    """Re-indented with its keys in another order, model.json still loads; a value edited in that
    layout is still refused."""
    model, doc = _copy(models, tmp_path)
    (model / "model.json").write_text(json.dumps(dict(reversed(list(doc.items()))), indent=7))
    assert DescriptorSetModel.load(model).k == 3
    doc["info"]["sentences"]["0"] = "edited"
    (model / "model.json").write_text(json.dumps(dict(reversed(list(doc.items()))), indent=7))
    _refused(model, r"model\.json: its content does not match its content_sha256")


def test_models_of_format_1_and_unsigned_ones_are_refused(models, tmp_path):
    model, doc = _copy(models, tmp_path)
    del doc["content_sha256"]
    _write(model, doc, sign=False)
    _refused(model, r"model\.json: has no content_sha256")
    doc["format_version"] = 1
    _write(model, doc, sign=False)
    _refused(model, r"format version 1 was written before streamclust signed model\.json .* re-run the study")


# -- re-signed values no fitted model holds ------------------------------------------------------


def _put(name, make):
    def edit(doc, model):
        _put_array(model, doc, name, make(np.load(model / f"{name}.npy")))
    return edit


def _delete(*keys):
    def edit(doc, model):
        node = doc
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return edit


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


RESIGNED = {
    "index_neighbors_ huge": (_set("params", "detector", "index_neighbors_", value=1_000_000),
                              r"params\.detector\.index_neighbors_=1000000 should be an integer in \[2, 199\] "
                              r"\(the reference sample has 200 rows\)"),
    "n_neighbors_ 0": (_set("params", "detector", "n_neighbors_", value=0),
                       r"params\.detector\.n_neighbors_=0 should be an integer in \[1, 199\]"),
    "threshold NaN": (_set("params", "detector", "threshold_", value=math.nan),
                      r"params\.detector\.threshold_=nan should be a finite number"),
    "screen threshold a string": (_set("params", "screen", "threshold", value="high"),
                                  r"params\.screen\.threshold='high' should be a finite number"),
    "a sentence missing": (_delete("info", "sentences", "2"),
                           r"info\.sentences has the keys \['0', '1'\]; one sentence per cluster"),
    "a sentence not a string": (_set("info", "sentences", "0", value=["x"]),
                                r"info\.sentences\.0=\['x'\] should be a non-empty string"),
    "k differs": (_set("info", "k", value=5), r"info\.k=5 should be 3 \(the rows of kmeans_cluster_centers\)"),
    "n_clusters differs": (_set("params", "kmeans", "n_clusters", value=10**12),
                           r"params\.kmeans\.n_clusters=1000000000000 should be 3"),
    "n_components_ differs": (_set("params", "pca", "n_components_", value=10**9),
                              r"params\.pca\.n_components_=1000000000 should be 4 \(the rows of pca_components\)"),
    "pca memory not a size": (_set("params", "pca", "memory", value="lots"),
                              r"params\.pca\.memory='lots' is not a memory budget"),
    "index seed negative": (_set("params", "index_seed", value=-1),
                            r"params\.index_seed=-1 should be an integer in \[0, 4294967295\]"),
    "unknown parameter": (_set("params", "kmeans", "evil", value=1), r"params\.kmeans has unknown fields \['evil'\]"),
    "drift reference overridden": (_set("info", "training", "cluster_shares", value=[1, 0, 0]),
                                   r"info\.training has unknown fields \['cluster_shares'\]"),
    "n_init 0": (_set("params", "kmeans", "n_init", value=0),
                 r"params\.kmeans is refused by its estimator: n_init=0 should be an integer >= 1"),
    "score unknown": (_set("params", "detector", "score", value="magic"),
                      r"params\.detector\.score='magic' should be one of \['lof', 'kdist', 'mean'\]"),
    "whiten a string": (_set("params", "pca", "whiten", value="yes"),
                        r"params\.pca\.whiten='yes' should be true or false"),
    "set name missing": (_delete("info", "descriptor_set"), r"info\.descriptor_set is missing"),
    "params a list": (_set("params", value=[]), r"params=\[\] should be an object"),
    "NaN centre": (_put("kmeans_cluster_centers", lambda a: _with(a, (0, 0), np.nan)),
                   r"kmeans_cluster_centers\.npy: holds NaN or Inf"),
    "Inf in the components": (_put("pca_components", lambda a: _with(a, (1, 2), np.inf)),
                              r"pca_components\.npy: holds NaN or Inf"),
    "complex centres": (_put("kmeans_cluster_centers", lambda a: a.astype(np.complex128)),
                        r"arrays\.kmeans_cluster_centers\.dtype='<c16' is not a boolean, integer or real float dtype"),
    "integer centres": (_put("kmeans_cluster_centers", lambda a: a.astype(np.int64)),
                        r"arrays\.kmeans_cluster_centers\.dtype='<i8' should be float32 or float64"),
    "big-endian centres": (_put("kmeans_cluster_centers", lambda a: a.astype(">f8")),
                           r"kmeans_cluster_centers\.dtype='>f8' should be float32 or float64 in this machine's"),
    "centres k x d wrong": (_put("kmeans_cluster_centers", lambda a: np.zeros((3, 5))),
                            r"arrays\.kmeans_cluster_centers has shape \[3, 5\]; \(k, 4\) centres"),
    "reference rows unsorted": (_put("det_reference_indices", lambda a: a[::-1].copy()),
                                r"det_reference_indices\.npy: is not a strictly increasing list of row numbers"),
    "shares not summing to 1": (_put("train_cluster_shares", lambda a: a * 2),
                                r"train_cluster_shares\.npy: sums to 2, not 1"),
    "extra array": (lambda doc, model: _put_array(model, doc, "evil", np.zeros(3)),
                    r"arrays\.evil is not an array of this model"),
    "missing array": (_delete("arrays", "kmeans_shift"), r"arrays lacks the array 'kmeans_shift'"),
}


@pytest.mark.parametrize("case", list(RESIGNED))
def test_resigned_values_no_fitted_model_holds_are_refused(models, tmp_path, case):
    model, doc = _copy(models, tmp_path)
    edit, match = RESIGNED[case]
    edit(doc, model)
    _write(model, doc)
    _refused(model, match)


MIXTURE_RESIGNED = {
    "balancer widths": (_set("params", "mixture", "balancer", "widths", value=[4, 4]),
                        r"params\.mixture\.balancer\.widths=\[4, 4\] should be the members' components \[4, 3\]"),
    "members twice": (_set("params", "mixture", "members", value=["a", "a"]),
                      r"params\.mixture\.members=\['a', 'a'\] should name distinct descriptor sets"),
    "a member's PCA features": (_set("params", "mixture", "pca", 1, "n_features_in_", value=24),
                                r"params\.mixture\.pca\[1\]\.n_features_in_=24 should be 16"),
    "scale 0": (_put("mix_scale", lambda a: _with(a, 0, 0.0)), r"mix_scale\.npy: holds a value <= 0"),
    "screen of one member": (_set("params", "screen", "sides", value=["upper", "both", "upper"]),
                             r"params\.screen\.sides=\['upper', 'both', 'upper'\] should be a list of 5 items"),
}


@pytest.mark.parametrize("case", list(MIXTURE_RESIGNED))
def test_resigned_mixture_values_that_do_not_add_up_are_refused(models, tmp_path, case):
    model, doc = _copy(models, tmp_path, "mix")
    edit, match = MIXTURE_RESIGNED[case]
    edit(doc, model)
    _write(model, doc)
    _refused(model, match)


class _Call:
    """Pickles as ``func(*args)``: what unpickling the array would run."""

    def __init__(self, func, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("declared", ["|O", "<f8"])
def test_an_object_dtype_array_is_refused_without_unpickling(models, tmp_path, declared):
    model, doc = _copy(models, tmp_path)
    pwned = tmp_path / "pwned"
    payload = np.array([_Call(exec, (f"open({str(pwned)!r}, 'w').close()",))], dtype=object)
    _put_array(model, doc, "kmeans_shift", payload, allow_pickle=True)
    doc["arrays"]["kmeans_shift"].update(dtype=declared, shape=[4])  # what model.json declared before
    _write(model, doc)
    match = (r"arrays\.kmeans_shift\.dtype='\|O' is not a boolean" if declared == "|O"
             else r"kmeans_shift\.npy: holds dtype object .* refused without reading it")
    _refused(model, match)
    assert not pwned.exists()


# -- files that are too big, or not files -----------------------------------------------------


@pytest.mark.parametrize("planted", ["npy declaring 1 GiB", "original padded to 1 GiB"])
def test_a_planted_1gib_array_is_refused_before_it_is_read(models, tmp_path, planted):
    model, _ = _copy(models, tmp_path)
    path = model / "det_reference.npy"
    if planted.startswith("npy"):
        header = np.lib.format.header_data_from_array_1_0(np.empty((0, 4), np.float32))
        header["shape"] = (1 << 26, 4)
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.truncate(fh.tell() + (1 << 30))  # sparse: no disk used
        match = r"det_reference\.npy: holds a \[67108864, 4\] <f4 array; model\.json declares \[200, 4\] <f4"
    else:
        with open(path, "r+b") as fh:
            fh.truncate(1 << 30)
        match = r"det_reference\.npy: 1073741824 bytes; its declared \[200, 4\] <f4 array takes 3328"
    tracemalloc.start()
    try:
        _refused(model, match)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@pytest.mark.parametrize("kind", ["fifo", "directory", "missing"])
def test_an_array_that_is_not_a_regular_file_is_refused_without_blocking(models, tmp_path, kind):
    model, _ = _copy(models, tmp_path)
    path = model / "kmeans_shift.npy"
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 10.0)
    try:
        _refused(model, r"kmeans_shift\.npy: " + ("missing; model.json lists it" if kind == "missing"
                                                  else "is not a regular file"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("content, match", [
    (b" " * (MAX_MANIFEST_BYTES + 1), r"model\.json: 8388609 bytes, more than a model manifest holds"),
    (b"[" * 100_000 + b"]" * 100_000, r"model\.json: not valid JSON"),
    (b'{"format": ' + b"9" * 5000 + b"}", r"model\.json: not valid JSON \(Exceeds the limit"),
    (b"[1, 2]", r"model\.json: holds a JSON list, not a model manifest"),
    (b'{"format": "\xff"}', r"model\.json: not UTF-8 text"),
    (b'{"format": "streamclust-model", "format_version": NaN}', r"model\.json: format 'streamclust-model' "
                                                                r"version 'nan'; this streamclust reads"),
])
def test_a_model_json_that_is_no_manifest_is_refused_in_one_line(tmp_path, content, match):
    (tmp_path / "model.json").write_bytes(content)
    _refused(tmp_path, match)


# -- memory budget -----------------------------------------------------------------------------


def _big_reference(models, tmp_path: Path, rows: int) -> Path:
    """The model re-signed with a consistent reference sample of ``rows`` rows."""
    model, doc = _copy(models, tmp_path)
    rng = np.random.default_rng(0)
    _put_array(model, doc, "det_reference", rng.normal(size=(rows, 4)).astype(np.float32))
    _put_array(model, doc, "det_reference_indices", np.arange(rows, dtype=np.int64))
    _put_array(model, doc, "det_reference_kdist", np.ones(rows, np.float32))
    _put_array(model, doc, "det_reference_lrd", np.ones(rows, np.float32))
    _write(model, doc)
    return model


def test_a_model_larger_than_half_the_memory_budget_is_refused_before_reading(models, tmp_path, capsys):
    small = models["one"][0]
    assert DescriptorSetModel.load(small, memory="8MiB").k == 3
    big = _big_reference(models, tmp_path, 40_000)  # its index: 40,000 x (12 x 4 + 40 x 30) bytes = 48 MiB
    tracemalloc.start()
    try:
        _refused(big, r"the model needs 4\d\.\d MiB in memory .* more than half of the 8 MiB memory budget; "
                      r"give --memory 9\dMiB or more", memory="8MiB")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    np.save(tmp_path / "x.npy", models["one"][1])
    assert main(["assign", str(big), str(tmp_path / "x.npy"), "-o", str(tmp_path / "x.csv"), "--memory", "8MiB",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --memory" in err[0] and not (tmp_path / "x.csv").exists()


def test_check_budget_counts_the_rebuilt_index(models):
    model = models["one"][0]
    doc = json.loads((model / "model.json").read_text())
    layout = check_layout(model, doc)
    check_budget(model, doc, layout, "8MiB")
    layout.n_reference = 10**6
    with pytest.raises(ModelError, match="give --memory"):
        check_budget(model, doc, layout, "1GB")


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_assign_refuses_a_tampered_model_in_one_line_exit_2(models, tmp_path, capsys):
    model, doc = _copy(models, tmp_path)
    doc["params"]["screen"]["threshold"] = 1e9  # "0 outliers" before model.json was signed
    _write(model, doc, sign=False)
    np.save(tmp_path / "x.npy", models["one"][1])
    assert main(["assign", str(model), str(tmp_path / "x.npy"), "-o", str(tmp_path / "x.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamclust assign: error: ")
    assert "model.json: its content does not match its content_sha256" in err[0]
    assert not (tmp_path / "x.csv").exists()


def test_a_standardising_pca_round_trips(models, tmp_path):
    """``scale_`` of a PCA with ``standardize=True`` is saved (it was dropped: other labels on load)."""
    rng = np.random.default_rng(0)
    X = _rows(rng, 24) * np.linspace(0.1, 10, 24, dtype=np.float32)
    pca = StreamingPCA(n_components=4, standardize=True).fit(X)
    _fit_and_save("std", pca, X, tmp_path / "std")
    loaded = DescriptorSetModel.load(tmp_path / "std")
    np.testing.assert_array_equal(loaded.pca.scale_, pca.scale_)
    np.testing.assert_array_equal(loaded.pca.transform(X), pca.transform(X))


# -- fuzz: every field of model.json ------------------------------------------------------------


#: Fields whose (re-signed) change may change labels, scores, sentences or the drift report: the
#: model's own decisions.  A change of any other field must leave all of them as they were, or be refused.
OUTPUT_FIELDS = {
    ("params", "screen", "threshold"), ("params", "screen", "combine"), ("params", "screen", "sides"),
    ("params", "pca", "whiten"), ("params", "pca", "l2_normalize"),
    ("params", "detector", "score"), ("params", "detector", "search_epsilon_"),
    ("params", "detector", "n_neighbors_"), ("params", "detector", "index_neighbors_"), ("params", "index_seed"),
    ("params", "detector", "search"),
    ("info", "sentences"), ("info", "training", "outlier_rate"),
}


def _affects_output(path: tuple) -> bool:
    flat = tuple(k for k in path if not isinstance(k, int))  # a mixture member's pca[i] as the set's pca
    flat = tuple(k for k in flat if k != "mixture")
    return any(flat[: len(f)] == f for f in OUTPUT_FIELDS)


def _paths(node, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


_HOSTILE = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2, 3, 199, 200, 10**6, 2**63, -(2**63), 10**30, 0.5, 1.5, -1.5,
                     1e300, math.nan, math.inf, -math.inf, "", "x", "auto", "upper", "both", "..", "=cmd()",
                     [], [1, 2], ["x"], {}, {"a": 1}, "<f8", "<c16", "|O", [10**9, 4]]),
    st.integers(), st.floats(), st.text(max_size=8),
)


def _value_at(doc: dict, path: tuple):
    for key in path:
        doc = doc[key]
    return doc


def _like(draw, current):
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return current + draw(st.integers(-3, 3))
    if isinstance(current, float):
        return current * draw(st.sampled_from([0.5, 0.99, 1.01, 2.0, -1.0]))
    if isinstance(current, str):
        return draw(st.sampled_from(["", current + "x", current[:-1], "upper", "both", "kdist", "lof", "rms"]))
    if isinstance(current, list) and current:
        return draw(st.permutations(current)) if draw(st.booleans()) else current[:-1]
    return current


@st.composite
def _mutation(draw, docs: dict) -> tuple[str, list[tuple[str, tuple, object]], bool]:
    """``(model, [(op, path, (value, key))], re-sign)``: each op drawn with a path it applies to."""
    which = draw(st.sampled_from(sorted(docs)))
    paths = _paths(docs[which])
    numbers = [p for p in paths if type(_value_at(docs[which], p)) in (int, float)]
    containers = [p for p in paths if isinstance(_value_at(docs[which], p), (dict, list))]
    steps = []
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["set", "set", "like", "like", "scale", "delete", "add"]))
        path = draw(st.sampled_from({"scale": numbers, "add": containers}.get(op, paths)))
        if op == "like":  # a value of the same type: what a plausible edit would write
            op, arg = "set", _like(draw, _value_at(docs[which], path))
        elif op == "scale":
            arg = draw(st.sampled_from([-1, 0, 2, 1000, 1e-9, 1]))
        else:
            arg = draw(_HOSTILE)
        key = draw(st.sampled_from(["extra", "0", "3", "threshold_", "k"])) if op == "add" else None
        steps.append((op, path, (arg, key)))
    return which, steps, draw(st.sampled_from([True, True, True, False]))  # mostly re-signed: the checks


def _apply(doc: dict, op: str, path: tuple, arg) -> tuple | None:
    """Apply one mutation; returns the path it touched, or None when it no longer applies."""
    value, key = copy.deepcopy(arg)  # never the strategy's own object: a later step may edit inside it
    try:
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        current = parent[path[-1]]
    except (KeyError, IndexError, TypeError):
        return None
    if op == "set":
        parent[path[-1]] = value
    elif op == "scale":
        if not isinstance(current, (int, float)) or isinstance(current, bool):
            return None
        parent[path[-1]] = current * value if value != 1 else current + 1
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(current, dict):
        current[key] = value
        return path + (key,)
    elif isinstance(current, list):
        current.append(value)
    else:
        return None
    return path


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("one example ran for more than 10 s")


@pytest.fixture(scope="module")
def fuzz_base(models, tmp_path_factory):
    """Per model: a working copy (only its model.json is rewritten), the original doc, its outputs."""
    root = tmp_path_factory.mktemp("fuzz-model")
    base = {}
    for which, (model, X) in models.items():
        work = root / which
        shutil.copytree(model, work)
        doc = json.loads((model / "model.json").read_text())
        base[which] = (work, doc, X, _outputs(DescriptorSetModel.load(model), X))
    return base


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_model_json_refused_or_same_result(fuzz_base, data):
    which, steps, resign = data.draw(_mutation({k: v[1] for k, v in fuzz_base.items()}))
    work, original, X, expected = fuzz_base[which]
    doc = copy.deepcopy(original)
    touched = [p for p in (_apply(doc, op, path, arg) for op, path, arg in steps) if p is not None]
    _write(work, doc, sign=resign)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 10.0)  # a hard bound: hypothesis' deadline only reports afterwards
    try:
        model = DescriptorSetModel.load(work, memory="256MiB")
        got = _outputs(model, X)
    except StreamclustError:
        got = None  # refused: the only other outcome allowed (anything else fails the test)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 256 << 10  # KiB
    if not resign and model_content_sha256(doc) != model_content_sha256(original):
        assert got is None, f"an unsigned edit of {touched} was accepted"
    event(("re-signed" if resign else "unsigned") + (": refused" if got is None else ": loaded"))
    if got is None:
        return
    k = model.k
    assert all(0 <= c < k for c in got["cluster"]) and np.isfinite(got["outlier_score"]).all()
    assert got["is_outlier"] == [s > model.threshold for s in np.float32(got["outlier_score"])]
    event("same result" if got == expected else "another result")
    if got != expected:
        assert any(_affects_output(p) for p in touched), f"{touched} changed the result"
