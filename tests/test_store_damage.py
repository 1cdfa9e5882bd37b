"""Damaged and hostile stores: refused on open in one line naming the store, the array and what is wrong,
never read as zeros or with other rows; set names that would escape their folder are refused.

Every store here is converted by streamclust (:func:`convert_case`), then damaged the way an interrupted copy
or upload, or an edited ``zarr.json``, damages it.  The fuzz at the end mutates the ``zarr.json`` files.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamclust.cli import main
from streamclust.core.blocks import as_dask, block_rows_for, iter_blocks
from streamclust.errors import InputError, StoreError, StreamclustError
from streamclust.io.ingest import convert_case
from streamclust.io.store import MAX_CHUNK_BYTES, CaseStore, check_set_name
from streamclust.study import run_study

N_ROWS, WIDTH = 300, 8
SET = "d"


def _write_case(case: Path, X: np.ndarray, name: str = SET) -> Path:
    (case / "descriptors").mkdir(parents=True)
    np.save(case / "descriptors" / f"{name}.npy", X)
    (case / "images_paths.csv").write_text("paths\n" + "".join(f"img/{i:05d}.jpg\n" for i in range(len(X))))
    return case


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A converted case of 300 images x 8 features (one chunk per array), and its data."""
    root = tmp_path_factory.mktemp("tiny")
    X = np.random.default_rng(0).normal(size=(N_ROWS, WIDTH)).astype(np.float32)
    convert_case(_write_case(root / "case", X), root / "case.zarr")
    return {"root": root, "store": root / "case.zarr", "X": X, "ids": [f"img/{i:05d}.jpg" for i in range(N_ROWS)]}


@pytest.fixture
def store(tiny, tmp_path) -> Path:
    """A fresh copy of the tiny store, to damage."""
    return Path(shutil.copytree(tiny["store"], tmp_path / "case.zarr"))


def _edit(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _refused(store: Path, *keywords: str, read=lambda s: s.descriptor(SET)) -> str:
    with pytest.raises(StoreError) as info:
        read(CaseStore(store))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{store}: ")
    for word in keywords:
        assert word in message, (word, message)
    return message


# -- missing chunks -------------------------------------------------------------------------------------------


def _no_run(store: Path) -> bool:
    runs = store / "runs"
    return not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


@pytest.mark.parametrize("chunk, array", [("descriptors/d/c/0/0", "descriptors/d"), ("ids/c/0", "ids")])
def test_cli_study_refuses_a_missing_chunk_before_any_run(store, tmp_path, capsys, chunk, array):
    """Before: zarr read the deleted chunk as zeros and the study exited 0."""
    (store / chunk).unlink()
    assert main(["study", str(store), "-o", str(tmp_path / "out"), "--k", "2", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "internal error" not in err
    chunk_key = chunk.rpartition(f"{array}/")[2]
    assert f"{store}: {array} lacks 1 of its 1 chunk files ({chunk_key})" in err
    assert "interrupted copy or upload" in err and "copy it again" in err
    assert _no_run(store) and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def model(tiny, tmp_path_factory) -> Path:
    """A model of set ``d`` from the smallest study (on a copy of the tiny store)."""
    root = tmp_path_factory.mktemp("model")
    shutil.copytree(tiny["store"], root / "case.zarr")
    run_study(root / "case.zarr", root / "study", k="2", n_components=4, n_init=1, report=False, random_state=0)
    return root / "study" / "models" / SET


@pytest.mark.parametrize("chunk", ["descriptors/d/c/0/0", "ids/c/0"])
def test_cli_assign_refuses_a_store_with_a_missing_chunk(store, tiny, model, tmp_path, capsys, chunk):
    (store / chunk).unlink()
    out = tmp_path / "assigned.csv"
    assert main(["assign", str(model), str(store), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lacks 1 of its 1 chunk files" in err and "internal error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.zarr"]  # no CSV, no temporary
    shutil.copy(tiny["store"] / chunk, store / chunk)  # the same store, whole again
    assert main(["assign", str(model), str(store), "-o", str(out)]) == 0 and out.exists()


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """A converted case of 2,100 images x 2,048 features: chunks of 1,024 rows, three per array."""
    root = tmp_path_factory.mktemp("wide")
    X = np.tile(np.arange(2048, dtype=np.float32) / 2048, (2100, 1))
    convert_case(_write_case(root / "case", X), root / "case.zarr")
    assert len(list((root / "case.zarr" / "descriptors" / SET / "c").iterdir())) == 3
    return root / "case.zarr"


def test_a_missing_middle_chunk_is_named_with_the_count(wide, tmp_path):
    store = Path(shutil.copytree(wide, tmp_path / "case.zarr"))
    (store / "descriptors" / SET / "c" / "1" / "0").unlink()
    _refused(store, "descriptors/d lacks 1 of its 3 chunk files (c/1/0), which zarr would read as 0.0")


def test_a_chunk_outside_the_declared_shape_is_refused(wide, tmp_path):
    """Rows cut off in zarr.json (and in rows_written): the third chunk file lies outside the grid."""
    store = Path(shutil.copytree(wide, tmp_path / "case.zarr"))
    _edit(store / "ids" / "zarr.json", lambda d: (
        d.update(shape=[2048]), d["chunk_grid"]["configuration"].update(chunk_shape=[2048])))
    _edit(store / "descriptors" / SET / "zarr.json", lambda d: (
        d.update(shape=[2048, 2048]), d["attributes"].update(rows_written=2048)))
    _refused(store, "descriptors/d holds 1 chunk file(s) outside its declared shape (2048, 2048) with chunks "
             "(1024, 2048) (c/2/0)")


def test_a_store_declaring_a_trillion_rows_is_refused_at_once_in_little_memory(store):
    """Before: dask built a chunk tuple of 10^12 / chunk rows entries (2 GB in 3 s) or zarr allocated ids."""
    for node in ("ids", f"descriptors/{SET}"):
        _edit(store / node / "zarr.json", lambda d: (d.update(shape=[10**12] + d["shape"][1:]),
                                                     d["chunk_grid"]["configuration"].update(
                                                         chunk_shape=[65536] + d["shape"][1:])))
    _edit(store / "descriptors" / SET / "zarr.json", lambda d: d["attributes"].update(rows_written=10**12))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        message = _refused(store, "ids lacks 15258789 of its 15258790 chunk files (c/1, c/2, c/3, c/4, c/5, ...)")
        seconds, (_, peak) = time.perf_counter() - t0, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "zarr would read as ''" in message
    assert seconds < 2.0 and peak < 8 << 20, (seconds, peak)


# -- rows and declared shapes ---------------------------------------------------------------------------------


def test_ids_and_a_set_of_different_rows_are_refused_naming_both(store):
    _edit(store / "descriptors" / SET / "zarr.json", lambda d: (
        d.update(shape=[299, WIDTH]), d["chunk_grid"]["configuration"].update(chunk_shape=[299, WIDTH]),
        d["attributes"].update(rows_written=299)))
    _refused(store, "descriptors/d has 299 rows but", "ids has 300")


def test_rows_written_that_disagrees_with_the_shape_is_refused(store):
    _edit(store / "descriptors" / SET / "zarr.json", lambda d: d["attributes"].update(rows_written="300"))
    _refused(store, "descriptors/d attribute rows_written='300' should be 300")


@pytest.mark.parametrize("edit, keywords", [
    (lambda d: d.update(data_type="int32"), ["data type 'int32'", "'f'"]),
    (lambda d: d.update(data_type="complex64", fill_value=[0.0, 0.0]), ["data type 'complex64'"]),
    (lambda d: d.update(shape=[N_ROWS, WIDTH, 1], dimension_names=None,
                        chunk_grid={"name": "regular", "configuration": {"chunk_shape": [N_ROWS, WIDTH, 1]}}),
     ["has shape (300, 8, 1), expected 2 dimension(s)"]),
    (lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[1, WIDTH]), ["chunks of 1 rows for 300 rows"]),
    (lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[N_ROWS, 4]), ["chunks rows only"]),
    (lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[0, WIDTH]), ["declares chunks (0, 8)"]),
    (lambda d: d.update(shape=[N_ROWS, 2**28], dimension_names=None,
                        chunk_grid={"name": "regular", "configuration": {"chunk_shape": [N_ROWS, 2**28]}}),
     [f"(at most {MAX_CHUNK_BYTES})"]),
    (lambda d: d["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [1, 0]}}),
     ["codec(s) ['transpose']"]),
    (lambda d: d["codecs"][0]["configuration"].update(endian="big"), ["big-endian"]),
    (lambda d: d.update(chunk_key_encoding={"name": "v2", "configuration": {"separator": "."}}),
     ["chunk key encoding"]),
    (lambda d: d.update(shape=[-1, WIDTH]), ["zarr.json cannot be read", "non-negative"]),
    (lambda d: d.update(node_type="group"), ["zarr.json cannot be read"]),
    (lambda d: d.update(attributes=["status"]), ["attributes of type list, expected an object"]),
])
def test_descriptor_metadata_streamclust_does_not_write_is_refused(store, edit, keywords):
    """Before: each was read (the transpose, big-endian and v2-key cases silently as other values or zeros),
    or ended in an internal error (ValueError, ZeroDivisionError, TypeError) when read."""
    _edit(store / "descriptors" / SET / "zarr.json", edit)
    _refused(store, "descriptors/d", *keywords)


def test_ids_wider_than_any_streamclust_writes_are_refused(store):
    _edit(store / "ids" / "zarr.json", lambda d: d["data_type"]["configuration"].update(length_bytes=4 * 10**8))
    _refused(store, "ids declares strings of 100000000 characters", read=lambda s: s.ids)


def test_a_chunk_that_does_not_decode_is_refused_when_read(store):
    chunk = store / "descriptors" / SET / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:50])
    X = CaseStore(store).descriptor(SET)
    with pytest.raises(StoreError, match=r"descriptors/d: rows 0-300 cannot be read \(RuntimeError: .*blosc"):
        as_dask(X).compute()


def test_a_group_where_an_array_is_expected_is_refused(store):
    """Before: ``cast(zarr.Array, group)`` went on, to an AttributeError in the study."""
    shutil.rmtree(store / "descriptors" / SET)
    (store / "descriptors" / SET).mkdir()
    (store / "descriptors" / SET / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"status": "complete"}}))
    _refused(store, "descriptors/d: is not an array")
    cases = CaseStore(store, mode="r+")
    run = cases.new_run({})
    run.group.create_group("d/labels")
    with pytest.raises(StoreError, match=r"runs/.*/d/labels: is a group, expected an array"):
        run.array("d/labels")


def test_a_run_array_of_other_rows_is_refused(store):
    run = CaseStore(store, mode="r+").new_run({})
    run.create_array("d/labels", (N_ROWS - 1,), "int32")
    with pytest.raises(StoreError, match=r"d/labels: has 299 rows but the store's ids have 300"):
        run.array("d/labels")


# -- set names --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "zarr.json", "a/b", "", "x\x00y", "a\\b", "__x", ".zarray", "é\n"])
def test_set_names_that_escape_or_hide_are_refused_when_a_set_is_created(store, name):
    with pytest.raises(InputError, match="descriptor set name"):
        check_set_name(name)
    with pytest.raises(InputError, match="descriptor set name"):
        CaseStore(store, mode="r+").open_descriptor_for_writing(name, N_ROWS, WIDTH, {})
    assert sorted(p.name for p in (store / "descriptors").iterdir()) == [SET, "zarr.json"]


def test_convert_case_refuses_a_nested_set_name(tiny, tmp_path):
    """Before: ``descriptors={"sub/dir": FILE}`` stored ``descriptors/sub/dir``, which no reader lists (the CLI's
    ``--descriptor`` refuses it in argparse: ``test_output_safety.py``)."""
    source = tiny["root"] / "case" / "descriptors" / f"{SET}.npy"
    with pytest.raises(InputError, match="descriptor set name 'sub/dir' holds '/'"):
        convert_case(tiny["root"] / "case", tmp_path / "s.zarr", descriptors={"sub/dir": str(source)})
    assert not (tmp_path / "s.zarr" / "descriptors" / "sub").exists()


@pytest.mark.parametrize("name", ["a\\b", "__x", ".zgroup"])
def test_a_badly_named_node_found_in_a_store_is_refused_and_files_that_are_no_nodes_left_alone(store, tiny, name):
    """A Finder's .DS_Store, an editor's backup, an empty folder are no nodes: neither listed nor refused."""
    (store / "descriptors" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (store / "descriptors" / "zarr.json~").write_text("{")
    (store / "descriptors" / "__empty").mkdir()
    assert CaseStore(store).descriptor_names() == [SET]
    np.testing.assert_array_equal(CaseStore(store).descriptor(SET)[:], tiny["X"])
    shutil.copytree(store / "descriptors" / SET, store / "descriptors" / name)
    _refused(store, f"descriptors: holds a node named {name!r}", read=lambda s: s.descriptor_names())


# -- consolidated metadata ------------------------------------------------------------------------------------


def _consolidated(store: Path, edit) -> None:
    _edit(store / "zarr.json", lambda d: edit(d["consolidated_metadata"]["metadata"][f"descriptors/{SET}"]))


def test_consolidated_metadata_never_decides_what_is_read(store, tiny):
    """The consolidated copy says 150 rows (xarray would believe it): streamclust reads the real zarr.json, and
    the next finished write (a run complete) rewrites the copy; an edited real zarr.json is refused though the
    consolidated copy is intact."""
    _consolidated(store, lambda d: d.update(shape=[150, WIDTH]))
    np.testing.assert_array_equal(CaseStore(store).descriptor(SET)[:], tiny["X"])
    CaseStore(store, mode="r+").new_run({}).complete()
    doc = json.loads((store / "zarr.json").read_text())
    assert doc["consolidated_metadata"]["metadata"][f"descriptors/{SET}"]["shape"] == [N_ROWS, WIDTH]
    _edit(store / "descriptors" / SET / "zarr.json", lambda d: d.update(data_type="int32"))
    _refused(store, "descriptors/d has data type 'int32'")


# -- conversion into a damaged store -----------------------------------------------------------------------------


def test_converting_again_replaces_a_damaged_set(store, tiny, caplog):
    """A complete set with a missing chunk, then one being written with a rows_written that is no number:
    converting the case again writes the set anew (a warning says why), and the store reads whole."""
    (store / "descriptors" / SET / "c" / "0" / "0").unlink()
    with caplog.at_level(logging.WARNING, logger="streamclust.io.store"):
        convert_case(tiny["root"] / "case", store)
    assert "lacks 1 of its 1 chunk files" in caplog.text and "Converting it again" in caplog.text
    np.testing.assert_array_equal(CaseStore(store).descriptor(SET)[:], tiny["X"])
    _edit(store / "descriptors" / SET / "zarr.json",
          lambda d: d["attributes"].update(status="writing", rows_written="abc"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamclust.io.store"):
        convert_case(tiny["root"] / "case", store)
    assert "rows_written='abc'" in caplog.text
    np.testing.assert_array_equal(CaseStore(store).descriptor(SET)[:], tiny["X"])


def test_a_chunk_of_zeros_is_written_so_a_missing_one_is_damage(tmp_path):
    """zarr skips chunks equal to the fill value by default: a set of zeros would have no chunk file."""
    convert_case(_write_case(tmp_path / "case", np.zeros((N_ROWS, WIDTH), np.float32)), tmp_path / "z.zarr")
    assert (tmp_path / "z.zarr" / "descriptors" / SET / "c" / "0" / "0").exists()
    np.testing.assert_array_equal(CaseStore(tmp_path / "z.zarr").descriptor(SET)[:], 0)


# -- fuzz of the zarr.json files --------------------------------------------------------------------------------

_NODES = ["zarr.json", "ids/zarr.json", "descriptors/zarr.json", f"descriptors/{SET}/zarr.json"]
_SCALARS = st.one_of(
    st.sampled_from([None, True, False, 0, 1, -1, 2, 8, 7, 299, 300, 301, 1024, 65536, 2**31, 2**63, 10**12, 10**30,
                     0.5, 300.0, 1e300, "", "float32", "float64", "float16", "int32", "uint8", "bool", "complex64",
                     "string", "fixed_length_utf32", "little", "big", "bytes", "blosc", "zstd", "gzip", "crc32c",
                     "transpose", "sharding_indexed", "vlen-utf8", "regular", "rectilinear", "default", "v2", ".",
                     "/", "complete", "writing", "array", "group", "NaN", "Infinity", "image"]),
    st.integers(-2**40, 2**40), st.text(max_size=4))
_KEYS = ["name", "configuration", "chunk_shape", "endian", "length_bytes", "separator", "level", "cname",
         "typesize", "shuffle", "order", "checksum", "status", "rows_written"]
_HOT = {"shape", "chunk_shape", "data_type", "length_bytes", "endian", "codecs", "fill_value", "dimension_names",
        "chunk_key_encoding", "node_type", "rows_written", "status", "imputed_rows", "dropped_rows"}
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=3), max_leaves=6)


def _paths(doc, prefix=()):
    """Every (container path, key) in a JSON document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _tweaks(old) -> st.SearchStrategy:
    """Values near ``old`` (of its type, mostly), which zarr's parser accepts more often than arbitrary ones."""
    if isinstance(old, bool) or old is None:
        return _SCALARS
    if isinstance(old, int):
        return st.sampled_from([old + 1, old - 1, old * 2, old // 2, -old, 0, 1, old * 10**9, 2**31, 10**12])
    if isinstance(old, float):
        return st.sampled_from([old * 2, -old, 0.0, 1e30, "NaN", "-Infinity"])
    if isinstance(old, str):
        return _SCALARS.filter(lambda v: isinstance(v, str))
    if isinstance(old, list):
        return st.sampled_from([old[:-1], old + old[-1:], old[::-1], old[:1] * 3, [], [old]])
    return st.sampled_from([{k: v for k, v in old.items() if k != key} for key in old] + [{**old, "extra": 1}, {}])


def _mutate(doc, data) -> str:
    """Change (mostly tweak, sometimes replace or delete) one value anywhere in ``doc``; returns what was done."""
    paths = sorted(_paths(doc), key=repr)
    if not paths:
        return "nothing"
    hot = [p for p in paths if p[-1] in _HOT or p[-2:] == ("codecs", 0)]  # what decides how values are read
    path = data.draw(st.sampled_from(hot if hot and data.draw(st.booleans()) else paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    how = data.draw(st.sampled_from(["tweak"] * 6 + ["replace"] * 2 + ["delete"]))
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_tweaks(parent[path[-1]]) if how == "tweak" else _VALUES)
    return f"{how} {path}"


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("one example ran for more than 5 s")


def _read_as_a_study_does(store: Path) -> tuple[np.ndarray, list[str]]:
    cases = CaseStore(store)
    X = cases.descriptor(SET)
    rows = block_rows_for(int(X.shape[1]), None, chunk_rows=int(X.chunks[0]))
    blocks = [block for _, block in iter_blocks(as_dask(X), rows, progress=False)]
    return np.concatenate(blocks), cases.ids[:].tolist()


@pytest.fixture(scope="module")
def fuzz_store(tiny, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    store = Path(shutil.copytree(tiny["store"], root / "case.zarr"))
    return {"store": store, "docs": {node: (store / node).read_text() for node in _NODES}}


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_store_metadata_only_streamclust_errors_bounded_memory_and_never_other_rows(fuzz_store, tiny, data):
    """1-3 mutations of the store's zarr.json files (root with its consolidated copy, ids, the descriptors
    group, the set): reading as a study does either raises a StreamclustError, or returns the original rows
    and ids; never another exception, never more than 64 MiB traced, never more than 5 s."""
    store = fuzz_store["store"]
    for node, text in fuzz_store["docs"].items():
        (store / node).write_text(text)
    for _ in range(data.draw(st.integers(1, 3))):
        node = data.draw(st.sampled_from(_NODES + ["ids/zarr.json"] + [f"descriptors/{SET}/zarr.json"] * 3))
        doc = json.loads((store / node).read_text())
        _mutate(doc, data)
        (store / node).write_text(json.dumps(doc))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 5.0)  # a hard bound: hypothesis' deadline only reports afterwards
    tracemalloc.start()
    try:
        X, ids = _read_as_a_study_does(store)
    except StreamclustError as exc:
        assert "\n" not in str(exc)
        return
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 64 << 20, peak
    np.testing.assert_array_equal(X, tiny["X"])
    assert ids == tiny["ids"]
