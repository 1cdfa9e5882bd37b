"""Injected faults: processes killed mid-write, a full disk, two writers on one store.

Kills are real (``SIGKILL`` of a child process at a seeded random moment); a full disk is
simulated by making zarr's or the CSV writer's file writes raise ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
import zarr.storage._local as zarr_local

import streamclust
from streamclust.cli import main
from streamclust.errors import StoreError
from streamclust.io.ingest import convert_case
from streamclust.io.sources import open_source
from streamclust.io.store import CaseStore
from streamclust.study import driver as study_driver
from streamclust.study import run_study
from streamclust.study import steps as study_steps

_ENV = {**os.environ, "PYTHONPATH": str(Path(streamclust.__file__).resolve().parents[1])}


def _child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _attrs(array_dir: Path) -> dict:
    """An array's attributes read straight from its zarr.json (None while it does not exist)."""
    try:
        return json.loads((array_dir / "zarr.json").read_text()).get("attributes", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended first: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("the child never reached the point to kill it at")
        time.sleep(0.01)


def _case(root: Path, n: int = 4096) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"wide": rng.normal(size=(n, 2048)).astype(np.float32),  # 1024-row chunks: 4 blocks
              "narrow": rng.normal(size=(n, 16))}
    (root / "descriptors").mkdir(parents=True)
    pd.DataFrame({"paths": [f"img\\{i:06d}.jpg" for i in range(n)]}).to_csv(root / "images_paths.csv",
                                                                            index=False)
    for name, arr in arrays.items():
        np.save(root / "descriptors" / f"{name}.npy", arr)
    return arrays


# -- a conversion killed at a random moment -------------------------------------------------

_SLOW_CONVERT = """
import sys, time
from streamclust.io import ingest, sources
read = sources._NpySource.read_rows
sources._NpySource.read_rows = lambda self, a, b: (time.sleep(0.05), read(self, a, b))[1]  # a slow disk
ingest.convert_case(sys.argv[1], sys.argv[2], memory="32MB")
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_conversion_killed_at_a_random_point_resumes_to_the_clean_result(tmp_path, seed, monkeypatch):
    arrays = _case(tmp_path / "case")
    out = tmp_path / "s.zarr"
    proc = _child(_SLOW_CONVERT, tmp_path / "case", out)
    _wait_for(lambda: any(_attrs(out / "descriptors" / n).get("rows_written", 0) > 0 for n in arrays), proc)
    time.sleep(np.random.default_rng(seed).uniform(0.0, 0.15))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed = CaseStore(out)
    assert killed.descriptor_names() != ["narrow", "wide"]  # it was killed before the end
    done = {n: _attrs(out / "descriptors" / n).get("rows_written", 0) for n in arrays}

    src_cls = type(open_source(tmp_path / "case" / "descriptors" / "wide.npy"))
    read, starts = src_cls.read_rows, []
    monkeypatch.setattr(src_cls, "read_rows", lambda self, a, b: starts.append((self.path.stem, a)) or read(self, a, b))
    store = convert_case(tmp_path / "case", out, memory="32MB")
    for name in arrays:
        if 0 < done[name] < len(arrays[name]):
            assert min(a for n, a in starts if n == name) == done[name]  # resumed, not restarted
    clean = convert_case(tmp_path / "case", tmp_path / "clean.zarr", memory="32MB")
    assert store.descriptor_names() == clean.descriptor_names() == ["narrow", "wide"]
    np.testing.assert_array_equal(store.ids[:], clean.ids[:])
    for name in arrays:
        np.testing.assert_array_equal(store.descriptor(name)[:], clean.descriptor(name)[:])
        assert store.descriptor(name).attrs["source_sha256"] == clean.descriptor(name).attrs["source_sha256"]


# -- a full disk ------------------------------------------------------------------------------


def _full_disk_after(monkeypatch, n_writes: int, where: str = "") -> None:
    """zarr's file writes under a path containing ``where`` fail with ENOSPC after ``n_writes``."""
    put, count = zarr_local._put, {"n": 0}

    def put_or_fail(path, value, exclusive=False):
        if where in str(path):
            count["n"] += 1
            if count["n"] > n_writes:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", put_or_fail)


def test_full_disk_during_conversion_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    arrays = _case(tmp_path / "case")
    _full_disk_after(monkeypatch, 2, where="descriptors/wide/c")  # the third chunk of 'wide'
    assert main(["convert", str(tmp_path / "case"), "-o", str(tmp_path / "s.zarr"), "--memory", "32MB",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device while writing descriptors/wide rows 2048-3072" in err[0]
    assert "s.zarr/descriptors/wide/c/2/0" in err[0]  # the path that failed
    partial = CaseStore(tmp_path / "s.zarr")
    assert "wide" not in partial.descriptor_names()  # the half-written set does not look complete
    assert partial.root["descriptors"]["wide"].attrs["rows_written"] == 2048
    monkeypatch.undo()
    store = convert_case(tmp_path / "case", tmp_path / "s.zarr", memory="32MB")
    np.testing.assert_array_equal(store.descriptor("wide")[:], arrays["wide"])


# -- studies ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_case(demo_case) -> Path:
    return demo_case(1500)


def _earlier_run(store: CaseStore) -> str:
    """A complete run to check the faults never touch (written through the run API)."""
    run = store.new_run({"earlier": True})
    run.create_array("vdc_color/labels", (store.n_rows,), "int32")[:] = np.arange(store.n_rows) % 7
    run.complete()
    return run.run_id


def _assert_earlier_run_intact(store: CaseStore, run_id: str) -> None:
    np.testing.assert_array_equal(store.run(run_id).array("vdc_color/labels")[:], np.arange(store.n_rows) % 7)


_KILLABLE_STUDY = """
import sys, time
from streamclust.study import driver, steps
labels = steps.store_labels
def slow_labels(*args, **kwargs):  # the study is killed while it labels (or before)
    time.sleep(60)
    return labels(*args, **kwargs)
steps.store_labels = slow_labels
driver.run_study(sys.argv[1], sys.argv[2], descriptors=["vdc_color", "osnet"], k="3:4", n_components=8,
                report=False)
"""


@pytest.mark.parametrize("seed", [0])
def test_study_killed_mid_write_leaves_store_and_earlier_runs_intact(small_case, tmp_path, seed):
    store_path = small_case / "case.zarr"
    store = CaseStore(store_path, mode="r+")
    earlier = _earlier_run(store)
    before = {n: store.descriptor(n)[:100] for n in store.descriptor_names()}
    known = {r.run_id for r in store.runs(include_incomplete=True)}
    proc = _child(_KILLABLE_STUDY, store_path, tmp_path / "out")

    def reduced_written() -> bool:
        runs = [p for p in (store_path / "runs").iterdir() if p.name not in known and p.is_dir()]
        return bool(runs) and (runs[0] / "vdc_color" / "reduced" / "zarr.json").exists()

    _wait_for(reduced_written, proc)
    time.sleep(np.random.default_rng(seed).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    store = CaseStore(store_path)
    assert earlier in [r.run_id for r in store.runs()]
    killed = [r for r in store.runs(include_incomplete=True) if r.run_id not in known]
    assert len(killed) == 1 and killed[0].status == "running"  # never reported complete
    assert killed[0].run_id not in [r.run_id for r in store.runs()]
    _assert_earlier_run_intact(store, earlier)
    for name, rows in before.items():
        np.testing.assert_array_equal(store.descriptor(name)[:100], rows)
    assert not (tmp_path / "out" / "results.csv").exists() and not (tmp_path / "out" / "summary.json").exists()


def test_full_disk_while_a_study_writes_the_store(small_case, tmp_path, monkeypatch):
    store = CaseStore(small_case / "case.zarr", mode="r+")
    earlier = _earlier_run(store)
    known = {r.run_id for r in store.runs(include_incomplete=True)}
    _full_disk_after(monkeypatch, 0, where="/labels/")
    with pytest.raises(StoreError, match=r"/labels/.*: no space left on device while writing study run") as info:
        run_study(small_case / "case.zarr", tmp_path / "out", descriptors=["vdc_color"], k="3:4",
                  n_components=8, report=False)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    store = CaseStore(small_case / "case.zarr")
    failed = [r for r in store.runs(include_incomplete=True) if r.run_id not in known]
    assert [r.status for r in failed] == ["failed"]
    assert list(failed[0].group.members()) == []  # its arrays were deleted: the space is given back
    _assert_earlier_run_intact(store, earlier)


def test_full_disk_while_writing_results_csv_removes_every_partial_output(small_case, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # not a study output: stays
    to_csv = pd.DataFrame.to_csv

    def full_disk(self, path_or_buf=None, *args, **kwargs):
        name = str(getattr(path_or_buf, "name", ""))
        if name.endswith(".tmp") and "/.results.csv." in name:
            path_or_buf.write("path,cluster\nhalf,")  # a half-written file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", path_or_buf.name)
        return to_csv(self, path_or_buf, *args, **kwargs)

    known = {r.run_id for r in CaseStore(small_case / "case.zarr").runs(include_incomplete=True)}
    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(StoreError, match=r"\.results\.csv\.\w+\.tmp: no space left on device .* partial outputs "
                                         r"were removed"):
        run_study(small_case / "case.zarr", out, descriptors=["vdc_color"], k="3:4", n_components=8,
                  report=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no CSV, no temporary, no models/<set>
    new = [r for r in CaseStore(small_case / "case.zarr").runs(include_incomplete=True) if r.run_id not in known]
    assert [r.status for r in new] == ["failed"]


def test_failed_study_keeps_outputs_it_did_not_write(small_case, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "models" / "other").mkdir(parents=True)
    (out / "models" / "other" / "model.json").write_text("{}")
    (out / "summary.json").write_text("{}")
    monkeypatch.setattr(study_steps, "store_labels", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_study(small_case / "case.zarr", out, descriptors=["vdc_color"], k="3:4", n_components=8, report=False)
    assert (out / "summary.json").read_text() == "{}" and (out / "models" / "other" / "model.json").exists()


# -- two writers on one store ---------------------------------------------------------------

_RUN_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from streamclust.io.store import CaseStore
store_path, tag, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
store = CaseStore(store_path, mode="r+")
for i in range(15):
    run = store.new_run({"writer": tag, "i": i})
    run.create_array("s/labels", (4096,), "int32", chunk_rows=512)[:] = np.full(4096, tag * 100 + i)
    run.complete({"writer": tag, "i": i})
    print(run.run_id, flush=True)
"""


def test_two_processes_writing_runs_into_one_store_do_not_collide(tmp_path):
    store = CaseStore(tmp_path / "s.zarr", mode="a")
    store.write_ids(iter([np.array([f"{i}.jpg" for i in range(4096)])]), 4096, {"source": "test"})
    assert "runs" not in store.root  # both writers race to create it
    go = tmp_path / "go"
    procs = [_child(_RUN_WRITER, tmp_path / "s.zarr", tag, go) for tag in (1, 2)]
    time.sleep(2.0)  # both started and waiting
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ids = [line for out, _ in outs for line in out.split()]
    assert len(ids) == 30 and len(set(ids)) == 30
    runs = CaseStore(tmp_path / "s.zarr").runs()
    assert sorted(r.run_id for r in runs) == sorted(ids)
    for run in runs:
        writer, i = run.group.attrs["writer"], run.group.attrs["i"]
        assert run.group.attrs["params"] == {"writer": writer, "i": i}
        np.testing.assert_array_equal(run.array("s/labels")[:], writer * 100 + i)


def test_runs_group_created_by_another_study_meanwhile(tmp_path, monkeypatch):
    """The window two first studies race through: 'runs' is missing when checked, present when created."""
    store = CaseStore(tmp_path / "s.zarr", mode="a")
    other = CaseStore(tmp_path / "s.zarr", mode="r+")
    require = zarr.Group.require_group

    def lose_the_race(self, name, **kwargs):
        if name == "runs" and "runs" not in other.root:
            other.root.create_group("runs")
            raise zarr.errors.ContainsGroupError(f"a group exists at path '{name}'")
        return require(self, name, **kwargs)

    monkeypatch.setattr(zarr.Group, "require_group", lose_the_race)
    run = store.new_run({})
    assert run.group.path == f"runs/{run.run_id}"


@pytest.mark.slow
def test_two_real_studies_at_once_on_one_store(small_case, tmp_path):
    code = ("import sys; from streamclust.study import run_study; "
            "r = run_study(sys.argv[1], sys.argv[2], descriptors=['vdc_color'], k='3:4', n_components=8, "
            "report=False); print(r.run_id)")
    known = {r.run_id for r in CaseStore(small_case / "case.zarr").runs(include_incomplete=True)}
    procs = [_child(code, small_case / "case.zarr", tmp_path / f"out{i}") for i in (0, 1)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ids = {o[0].split()[-1] for o in outs}
    store = CaseStore(small_case / "case.zarr")
    new = {r.run_id: r for r in store.runs() if r.run_id not in known}
    assert set(new) == ids and len(ids) == 2
    a, b = (new[i].array("vdc_color/labels")[:] for i in sorted(ids))
    np.testing.assert_array_equal(a, b)  # same seed, same labels: neither run was disturbed
    for i in (0, 1):
        res = pd.read_csv(tmp_path / f"out{i}" / "results.csv")
        assert len(res) == store.n_rows


def test_failed_rerun_leaves_the_previous_study_outputs_untouched(small_case, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_study(small_case / "case.zarr", out, descriptors=["vdc_color"], k="3:4", n_components=8, report=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"metrics.csv", "results.csv", "summary.json"} <= {str(p) for p in before}

    def fail(*args, **kwargs):  # metrics.csv, clusters.csv ... are written by then
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(study_driver, "write_results", fail)
    with pytest.raises(OSError, match="Input/output error"):
        run_study(small_case / "case.zarr", out, descriptors=["vdc_color"], k="3:4", n_components=8,
                  random_state=1, report=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # byte for byte, and no .partial-* folder left
