"""Issue #14, items 1, 4 and 6 (parameters): outputs that would overwrite or break an input, a store or a
model are refused before any work; temporaries are never written through a link; every CSV cell that
a spreadsheet would run as a formula is neutralised; bad parameters are one-line refusals naming the
parameter, before any work, from the CLI and the API.  No case may end in an ``internal error`` line."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamclust.cli import main
from streamclust.core import files
from streamclust.core.files import FORMULA_STARTS, neutralise_formulas, write_atomic, write_csv_frames
from streamclust.errors import InputError, StoreError
from streamclust.io.ingest import convert_case
from streamclust.io.store import CaseStore
from streamclust.model.assign import assign_new
from streamclust.study import run_study

SET = "@vdc"  # a set name that starts like a formula: it begins every sentence and fills the `set` columns
#: One image path per formula-leading character (rows 0-5), and metadata values starting likewise.
HOSTILE_PATHS = [f"{c}1+1/{i}.jpg" for i, c in enumerate(FORMULA_STARTS)]
HOSTILE_VALUES = ["=1+1", "+cmd", "-2", "@x", "\tx", "\rx"]


@pytest.fixture(scope="module")
def hostile(demo_case, tmp_path_factory) -> Path:
    """A 300-row case whose set is named ``@vdc``, whose first six paths and whose metadata values start
    with each formula character, converted, studied (``study/``) and assigned (``assigned.csv``)."""
    demo = demo_case(300) / "case"
    root = tmp_path_factory.mktemp("hostile")
    case = root / "case"
    (case / "descriptors").mkdir(parents=True)
    shutil.copy(demo / "descriptors" / "vdc_color.pickle", case / "descriptors" / f"{SET}.pickle")
    paths = [p.replace("\\", "/") for p in pd.read_csv(demo / "images_paths.csv")["paths"]]
    paths[:len(HOSTILE_PATHS)] = HOSTILE_PATHS
    with open(case / "images_paths.csv", "w", newline="") as f:
        csv.writer(f).writerows([["paths"], *([p] for p in paths)])
    pd.DataFrame({"path": paths, "colour": [HOSTILE_VALUES[i % 6] for i in range(len(paths))]}).to_csv(
        root / "meta.csv", index=False)
    convert_case(case, root / "case.zarr")
    run_study(root / "case.zarr", root / "study", k="3:4", n_components=8, report=False, n_top_outliers=300,
              metadata=root / "meta.csv")
    assign_new(root / "study" / "models" / SET, root / "case.zarr", root / "assigned.csv")
    return root


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """``(exit status, stderr)`` of the CLI run in this process (argparse's refusals exit 2 itself)."""
    try:
        status = main([*argv, "--quiet"])
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


def _runs(store: Path) -> set[str]:
    return {r.run_id for r in CaseStore(store).runs(include_incomplete=True)}


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) -> its bytes."""
    found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in found}


# -- CSV cells that start like formulas ------------------------------------------------------------------


def test_every_csv_neutralises_formula_cells_and_parquet_keeps_them_raw(hostile):
    """Paths, metadata values, set names and sentences starting with = + - @ TAB CR reach every CSV of
    the study and of assign with a ``'`` in front; numbers (negative ones too) stay numbers; the CR
    never splits a row; results.parquet keeps the raw text."""
    written = sorted((hostile / "study").glob("*.csv")) + [hostile / "assigned.csv"]
    assert {p.name for p in written} >= {"results.csv", "outliers.csv", "clusters.csv", "metrics.csv",
                                         "algorithms.csv", "comparison.csv", "assigned.csv"}
    cells: dict[str, list[str]] = {}
    for path in written:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        assert len({len(r) for r in rows}) <= 1, f"{path.name}: a row was split"
        cells[path.name] = [c for r in rows for c in r]
        running = [c for c in cells[path.name] if c.startswith(FORMULA_STARTS) and not _is_number(c)]
        assert running == [], path.name
    for name in ("results.csv", "outliers.csv", "assigned.csv"):
        assert {f"'{p}" for p in HOSTILE_PATHS} <= set(cells[name]), name
    assert sum(1 for _ in open(hostile / "study" / "results.csv", newline="")) > 300  # one line per row at least
    assert len(pd.read_csv(hostile / "study" / "results.csv")) == 300
    for name in ("metrics.csv", "clusters.csv", "outliers.csv"):
        assert f"'{SET}" in cells[name], name
    sentences = pd.read_csv(hostile / "assigned.csv")["cluster_sentence"]
    assert sentences.str.startswith(f"'{SET}: Cluster").all()
    top = pd.read_csv(hostile / "study" / "clusters.csv")["top_color"]
    assert top.isin([f"'{v}" for v in HOSTILE_VALUES]).all() and len(top) > 0
    assert pd.read_parquet(hostile / "study" / "results.parquet")["path"][:6].tolist() == HOSTILE_PATHS


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_neutralise_formulas_changes_text_cells_and_labels_only():
    frame = pd.DataFrame({"text": [*HOSTILE_VALUES, "a=b", None, np.nan],
                          "score": [-1.5, -2.0, 0.5, -0.0, 1e-9, 3.0, -7.0, 8.0, 9.0],
                          "label": [-1, -2, 3, 4, 5, 6, 7, 8, 9],
                          "flag": [True, False] * 4 + [True],
                          "mixed": [-1, "-x", None, 2.5, "ok", "@", "", "+", float("nan")]},
                         index=pd.Index([f"-{i}" for i in range(9)], name="=name"))
    frame = frame.rename(columns={"mixed": "+mixed"})
    before = frame.copy()
    safe = neutralise_formulas(frame)
    pd.testing.assert_frame_equal(frame, before)  # the caller's frame (results.parquet's) keeps its values
    assert safe["text"].tolist()[:7] == [f"'{v}" for v in HOSTILE_VALUES] + ["a=b"]
    assert safe["text"][7:].isna().all()
    for column in ("score", "label", "flag"):
        pd.testing.assert_series_equal(safe[column], frame[column], check_index=False)
    assert safe["'+mixed"].tolist()[:8] == [-1, "'-x", None, 2.5, "ok", "'@", "", "'+"]
    assert list(safe.index) == [f"'-{i}" for i in range(9)] and safe.index.name == "'=name"
    text = safe.to_csv()
    assert "\n'-0,'=1+1,-1.5,-1,True,-1\n" in text  # numbers unquoted, unprefixed
    assert neutralise_formulas(pd.DataFrame({"x": ["a", "b"], "y": [-1.0, 2.0]})).equals(
        pd.DataFrame({"x": ["a", "b"], "y": [-1.0, 2.0]}))


def test_a_carriage_return_inside_a_cell_never_starts_a_new_row(tmp_path):
    """Python's csv writer before 3.11.9 leaves a bare CR unquoted; readers end the row there and
    take what follows (here a formula) for a new cell."""
    write_csv_frames(tmp_path / "a.csv", [pd.DataFrame({"path": ["x\r=cmd()", "y"], "score": [-1.0, 2.0]})])
    with open(tmp_path / "a.csv", newline="") as f:
        assert list(csv.reader(f)) == [["path", "score"], ["x\r=cmd()", "-1"], ["y", "2"]]


# -- temporary files -------------------------------------------------------------------------------------


def test_a_link_at_the_old_predictable_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".out.csv.tmp").symlink_to(victim)  # the name the issue saw assign write through
    write_csv_frames(tmp_path / "out.csv", [pd.DataFrame({"x": [1]})])
    assert victim.read_text() == "precious" and (tmp_path / ".out.csv.tmp").is_symlink()
    assert (tmp_path / "out.csv").read_text() == "x\n1\n"


def test_a_temporary_swapped_for_a_link_is_refused_and_its_target_untouched(tmp_path, monkeypatch):
    """Another user of a shared folder replaces the new temporary file by a link to a file of the
    writer's: nothing is written through the link, and the output is not replaced by it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    create = tempfile.mkstemp

    def swapped(*args, **kwargs):
        fd, name = create(*args, **kwargs)
        os.unlink(name)
        os.symlink(victim, name)
        return fd, name

    monkeypatch.setattr(files.tempfile, "mkstemp", swapped)
    (tmp_path / "out.json").write_text("old")
    with pytest.raises(StoreError, match=r"\.out\.json\.\w+\.tmp: was replaced by another file .*out\.json is left"):
        write_atomic(tmp_path / "out.json", "new")
    assert victim.read_text() == "precious" and oct(victim.stat().st_mode & 0o777) == oct(0o600)
    assert (tmp_path / "out.json").read_text() == "old" and not (tmp_path / "out.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim.txt"]


# -- output paths ----------------------------------------------------------------------------------------


def _npy_input(root: Path) -> Path:
    path = root / "new.npy"
    if not path.exists():
        d = CaseStore(root / "case.zarr").descriptor(SET).shape[1]
        np.save(path, np.random.default_rng(0).normal(size=(20, d)).astype(np.float32))
    return path


#: name -> (argv built from the hostile case's root and a scratch folder, protected path, words in the error)
OUTPUT_CASES = {
    "assign -o MODEL/model.json": (lambda r, t: ["assign", f"{r}/study/models/{SET}", f"{r}/case.zarr",
                                                 "-o", f"{r}/study/models/{SET}/model.json"],
                                   lambda r, t: r / "study" / "models" / SET, "lies inside the input"),
    "assign -o the input .npy": (lambda r, t: ["assign", f"{r}/study/models/{SET}", str(_npy_input(r)),
                                               "-o", str(_npy_input(r))],
                                 lambda r, t: r / "new.npy", "is the input"),
    "assign -o STORE/zarr.json": (lambda r, t: ["assign", f"{r}/study/models/{SET}", f"{r}/case.zarr",
                                                "-o", f"{r}/case.zarr/zarr.json"],
                                  lambda r, t: r / "case.zarr" / "zarr.json", "lies inside the input"),
    "assign -o a link to MODEL/model.json": (lambda r, t: ["assign", f"{r}/study/models/{SET}", f"{r}/case.zarr",
                                                           "-o", str(_link(t, r / "study" / "models" / SET))],
                                             lambda r, t: r / "study" / "models" / SET, "the input"),
    "assign -o an existing folder": (lambda r, t: ["assign", f"{r}/study/models/{SET}", f"{r}/case.zarr",
                                                   "-o", str(t)],
                                     lambda r, t: t, "is a folder"),
    "convert -o STORE/descriptors": (lambda r, t: ["convert", f"{r}/case", "-o", f"{r}/case.zarr/descriptors"],
                                     lambda r, t: r / "case.zarr", "lies inside the Zarr store"),
    "convert -o CASE/descriptors": (lambda r, t: ["convert", f"{r}/case", "-o", f"{r}/case/descriptors"],
                                    lambda r, t: r / "case" / "descriptors", "not a Zarr store"),
    "convert -o an existing file": (lambda r, t: ["convert", f"{r}/case", "-o", str(_file(t))],
                                    lambda r, t: t, "is an existing file"),
    "convert -o a folder of other files": (lambda r, t: ["convert", f"{r}/case", "-o", str(_file(t).parent)],
                                           lambda r, t: t, "not a Zarr store"),
    "study -o an existing file": (lambda r, t: ["study", f"{r}/case.zarr", "-o", str(_file(t)), "--k", "3:4"],
                                  lambda r, t: t, "is an existing file"),
    "study -o inside the store": (lambda r, t: ["study", f"{r}/case.zarr", "-o", f"{r}/case.zarr/runs", "--k", "3:4"],
                                  lambda r, t: r / "case.zarr", "lies inside the input"),
    "study -o a model folder": (lambda r, t: ["study", f"{r}/case.zarr", "-o", f"{r}/study/models/{SET}",
                                              "--k", "3:4"],
                                lambda r, t: r / "study" / "models" / SET, "is the model folder"),
    "demo --out an existing file": (lambda r, t: ["demo", "--rows", "50", "--no-images", "--out", str(_file(t))],
                                    lambda r, t: t, "is an existing file"),
}


def _link(folder: Path, target_dir: Path) -> Path:
    link = folder / "link.csv"
    link.symlink_to(target_dir / "model.json")
    return link


def _file(folder: Path) -> Path:
    path = folder / "existing.txt"
    path.write_text("mine")
    return path


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_outputs_that_would_damage_an_input_a_store_or_a_model_are_refused_before_any_work(hostile, tmp_path,
                                                                                           capsys, case):
    argv_of, protected_of, words = OUTPUT_CASES[case]
    argv = argv_of(hostile, tmp_path)
    protected = protected_of(hostile, tmp_path)
    before, runs = _snapshot(protected), _runs(hostile / "case.zarr")
    status, err = _cli(argv, capsys)
    assert status == 2 and "internal error" not in err, err
    assert err.count("\n") == 1 and argv[argv.index("-o" if "-o" in argv else "--out") + 1] in err and words in err
    assert _snapshot(protected) == before
    assert _runs(hostile / "case.zarr") == runs  # no study started
    assert not (tmp_path / "case").exists()  # no demo case generated


def test_the_api_entry_points_refuse_such_outputs_too(hostile, tmp_path):
    model = hostile / "study" / "models" / SET
    model_json = (model / "model.json").read_bytes()
    with pytest.raises(InputError, match="model.json: the output lies inside the input"):
        assign_new(model, hostile / "case.zarr", model / "model.json")
    with pytest.raises(InputError, match="descriptors: the output lies inside the Zarr store"):
        convert_case(hostile / "case", hostile / "case.zarr" / "descriptors")
    with pytest.raises(InputError, match="the output lies inside the input"):
        run_study(hostile / "case.zarr", hostile / "case.zarr" / "runs", k="3:4")
    assert (model / "model.json").read_bytes() == model_json


# -- parameters ------------------------------------------------------------------------------------------

STUDY = ["--k", "3:4", "--algorithms", "kmeans"]  # small, should a case be accepted
#: (argv after the store and -o for study, or whole for demo/assign, words the error names)
PARAMETER_CASES = {
    "--components 0": (["--components", "0"], "n_components=0"),
    "--components -5": (["--components", "-5"], "n_components=-5"),
    "--components nan": (["--components", "nan"], "n_components=nan"),
    "--components inf": (["--components", "inf"], "n_components=inf"),
    "--components 1.5": (["--components", "1.5"], "n_components=1.5"),
    "--components abc": (["--components", "abc"], "n_components='abc'"),
    "--n-init 0": (["--n-init", "0"], "n_init=0"),
    "--n-init -2": (["--n-init", "-2"], "n_init=-2"),
    "--k 0": (["--k", "0"], "k='0'"),
    "--k 5:2": (["--k", "5:2"], "k='5:2'"),
    "--k a:b": (["--k", "a:b"], "k='a:b'"),
    "--seed -1": (["--seed", "-1"], "seed=-1"),
    "--seed 2**32": (["--seed", str(2**32)], "seed=4294967296"),
    "--memory 0": (["--memory", "0"], "memory='0'"),
    "--memory -1": (["--memory", "-1"], "memory='-1'"),
    "--memory abc": (["--memory", "abc"], "memory='abc'"),
    "--descriptors unknown": (["--descriptors", "nope"], "descriptor set(s) ['nope']"),
    "--algorithms unknown": (["--algorithms", "kmeans,foo"], "algorithm(s) ['foo']"),
    "--mix one set": (["--mix", SET], "(--mix) should join two or more"),
    "--mix unknown set": (["--mix", f"{SET}+nope"], "(--mix): unknown descriptor set(s) 'nope'"),
    "--mix bad weights": (["--mix", f"{SET}+x:a,b"], "(--mix)"),
    "--images not a zip": (["--images", "{root}/meta.csv"], "meta.csv: not a zip file nor a folder of images"),
    "--metadata missing": (["--metadata", "{root}/missing.csv"], "metadata"),
    "--outlier-truth missing": (["--outlier-truth", "{root}/missing.csv"], "outlier"),
    "demo --rows 0": (["demo", "--rows", "0"], "rows"),
    "demo --rows -5": (["demo", "--rows", "-5"], "rows"),
    "demo --k 5:2": (["demo", "--rows", "50", "--no-images", "--k", "5:2"], "k='5:2'"),
    "demo --seed -1": (["demo", "--rows", "50", "--no-images", "--seed", "-1"], "seed=-1"),
    "demo --memory abc": (["demo", "--rows", "50", "--no-images", "--memory", "abc"], "memory='abc'"),
    "assign --memory 0": (["assign", "{root}/study/models/" + SET, "{root}/case.zarr", "-o", "{out}/a.csv",
                           "--memory", "0"], "memory='0'"),
}


@pytest.mark.parametrize("case", PARAMETER_CASES)
def test_cli_refuses_bad_parameters_in_one_line_before_any_work(hostile, tmp_path, capsys, case):
    args, words = PARAMETER_CASES[case]
    out = tmp_path / "out"
    args = [a.format(root=hostile, out=out) for a in args]
    if args[0] == "demo":
        argv = [*args, "--out", str(out)]
    elif args[0] == "assign":
        argv = args
    else:
        argv = ["study", str(hostile / "case.zarr"), "-o", str(out), *STUDY, *args]
    runs = _runs(hostile / "case.zarr")
    status, err = _cli(argv, capsys)
    assert status == 2 and "internal error" not in err, err
    assert err.strip().count("\n") == 0 or err.startswith("usage:"), err  # argparse adds its usage line
    assert words in err, err
    assert not out.exists() and _runs(hostile / "case.zarr") == runs


@pytest.mark.parametrize(("keyword", "value", "words"), [
    ("n_components", 0, "n_components=0"), ("n_components", -5, "n_components=-5"),
    ("n_components", float("nan"), "n_components=nan"), ("n_components", float("inf"), "n_components=inf"),
    ("n_components", 1.5, "n_components=1.5"), ("n_components", True, "n_components=True"),
    ("n_init", 0, "n_init=0"), ("n_init", 1.5, "n_init=1.5"),
    ("random_state", -1, "random_state=-1"), ("random_state", 1.5, "random_state=1.5"),
    ("outlier_neighbors", 0, "outlier_neighbors=0"),
    ("images", "meta.csv", "not a zip file nor a folder of images"),
    ("metadata", "missing.csv", "metadata"),
])
def test_run_study_refuses_bad_parameters_before_any_work(hostile, tmp_path, keyword, value, words):
    value = hostile / value if keyword in ("images", "metadata") else value
    runs = _runs(hostile / "case.zarr")
    with pytest.raises(InputError) as caught:
        run_study(hostile / "case.zarr", tmp_path / "out", k="3:4", report=keyword == "images", **{keyword: value})
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists() and _runs(hostile / "case.zarr") == runs


def test_a_store_may_live_inside_its_case_folder(hostile, tmp_path):
    """Only the case's input files are protected, not its folder: ``convert CASE -o CASE/case.zarr`` works."""
    case = tmp_path / "case"
    shutil.copytree(hostile / "case", case)
    convert_case(case, case / "case.zarr")
    assert CaseStore(case / "case.zarr").descriptor_names() == [SET]


@pytest.mark.parametrize("name", ["sub/dir", "..", "zarr.json", ".hidden", ""])
def test_convert_refuses_a_bad_set_name_before_any_work(tmp_path, capsys, name):
    """``--descriptor sub/dir=FILE`` used to be stored nested and invisible; argparse now refuses it in one line."""
    status, err = _cli(["convert", str(tmp_path / "case"), "-o", str(tmp_path / "s.zarr"),
                        "--descriptor", f"{name}=x.npy"], capsys)
    assert status == 2 and "--descriptor" in err and "internal error" not in err
    assert not (tmp_path / "s.zarr").exists()
