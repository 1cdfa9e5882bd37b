"""The case folder's metadata and images: found and recorded by convert, used by default by the study
(overridable, can be disabled, a vanished file said), and images found by their longest common path
suffix when the zip's top folder differs from images_paths.csv's (issue #15, item 2)."""

from __future__ import annotations

import io
import json
import logging
import shutil
import zipfile
from html import escape
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from streamclust.cli import main
from streamclust.errors import InputError
from streamclust.io.ingest import (
    CASE_FILES_ATTR,
    convert_case,
    find_case_images,
    find_case_metadata,
    recorded_case_files,
)
from streamclust.io.store import CaseStore
from streamclust.report.images import ImageSource, SuffixIndex
from streamclust.study import run_study
from streamclust.study.case_files import choose_images, choose_metadata

N_ROWS = 300
#: A small, fast study: one set, two k, k-means alone.
STUDY = {"descriptors": ["vdc_color"], "k": "3:4", "n_components": 8, "algorithms": "kmeans"}


def _jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="JPEG")
    return buf.getvalue()


def _write_zip(path: Path, names: list[str]) -> None:
    colours = [_jpeg((40 * i, 120, 200 - 40 * i)) for i in range(5)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i, name in enumerate(names):
            zf.writestr(name, colours[i % 5])


def _csv_paths(case: Path) -> list[str]:
    """The paths of images_paths.csv as written (Windows separators: ``veriwild\\1\\00001\\000001.jpg``)."""
    return pd.read_csv(case / "images_paths.csv")["paths"].tolist()


@pytest.fixture(scope="module")
def case(demo_case, tmp_path_factory) -> Path:
    """A copy of the shared demo case's raw files (with vehicle_info.txt) plus an images.zip whose
    members sit under another top folder than the CSV paths: ``images/00001/000001.jpg`` for
    ``veriwild\\1\\00001\\000001.jpg``."""
    root = tmp_path_factory.mktemp("case-folder") / "case"
    shutil.copytree(demo_case(N_ROWS) / "case", root)  # a copy: the shared case stays as it is
    _write_zip(root / "images.zip", ["images/" + "/".join(p.split("\\")[2:]) for p in _csv_paths(root)])
    return root


@pytest.fixture(scope="module")
def store(case) -> Path:
    out = case.parent / "case.zarr"
    convert_case(case, out)
    return out


# --------------------------------------------------------------------------- convert
def test_convert_records_the_metadata_file_and_image_source(case, store, tmp_path, caplog):
    recorded = recorded_case_files(CaseStore(store))
    assert recorded == {"case_dir": str(case.resolve()), "metadata": str((case / "vehicle_info.txt").resolve()),
                        "images": str((case / "images.zip").resolve())}
    with caplog.at_level(logging.INFO, logger="streamclust"):  # converting again says what it found
        convert_case(case, tmp_path / "again.zarr")
    said = [r.getMessage() for r in caplog.records if r.name == "streamclust.io.ingest"]
    assert f"metadata: {(case / 'vehicle_info.txt').resolve()} recorded for the study" in said
    assert f"images: {(case / 'images.zip').resolve()} recorded for the study" in said


def test_a_case_without_them_records_none_and_says_so(demo_case, tmp_path, caplog):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copytree(demo_case(N_ROWS) / "case" / "descriptors", bare / "descriptors")
    shutil.copy(demo_case(N_ROWS) / "case" / "images_paths.csv", bare)
    with caplog.at_level(logging.INFO, logger="streamclust"):
        convert_case(bare, tmp_path / "bare.zarr")
    recorded = recorded_case_files(CaseStore(tmp_path / "bare.zarr"))
    assert recorded is not None and recorded["metadata"] is None and recorded["images"] is None
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "metadata: none found in" in said and "images: none found in" in said


def test_image_source_discovery_order(tmp_path, caplog):
    root = tmp_path / "c"
    (root / "veriwild" / "1").mkdir(parents=True)
    (root / "veriwild" / "1" / "a.jpg").write_bytes(_jpeg((1, 2, 3)))
    assert find_case_images(root, "veriwild/1/a.jpg") == root.resolve()  # the paths lead under the folder
    assert find_case_images(root, "veriwild/1/b.jpg") is None
    assert find_case_images(root, "../c/veriwild/1/a.jpg") is None  # never a path out of the folder
    (root / "images").mkdir()
    assert find_case_images(root, "veriwild/1/a.jpg") == (root / "images").resolve()
    _write_zip(root / "veriwild.zip", ["x.jpg"])  # the real case's name
    assert find_case_images(root) == (root / "veriwild.zip").resolve()
    _write_zip(root / "other.zip", ["x.jpg"])
    with caplog.at_level(logging.WARNING, logger="streamclust"):
        assert find_case_images(root) is None  # which of two zips holds the images is not guessed
    assert "several zip files (other.zip, veriwild.zip)" in caplog.text and "--images" in caplog.text
    _write_zip(root / "images.zip", ["x.jpg"])
    assert find_case_images(root) == (root / "images.zip").resolve()


def test_metadata_discovery_order(tmp_path):
    assert find_case_metadata(tmp_path) is None
    (tmp_path / "metadata.parquet").write_bytes(b"")
    assert find_case_metadata(tmp_path) == (tmp_path / "metadata.parquet").resolve()
    (tmp_path / "metadata.csv").write_text("path,color\n")
    assert find_case_metadata(tmp_path) == (tmp_path / "metadata.csv").resolve()
    (tmp_path / "train_test_split").mkdir()
    (tmp_path / "train_test_split" / "vehicle_info.txt").write_text("id/image;Camera ID\n")
    assert find_case_metadata(tmp_path) == (tmp_path / "train_test_split" / "vehicle_info.txt").resolve()
    (tmp_path / "vehicle_info.txt").write_text("id/image;Camera ID\n")
    assert find_case_metadata(tmp_path) == (tmp_path / "vehicle_info.txt").resolve()


# --------------------------------------------------------------------------- study
def test_study_uses_the_recorded_files_by_default(case, store, tmp_path, caplog):
    """No metadata= nor images=: the sentences come from vehicle_info.txt and the montages from the
    zip, whose members are found under their other top folder; the log and summary.json say which
    files were used and how many paths they cover."""
    out = tmp_path / "study"
    lines: list[str] = []
    run_study(store, out, **STUDY, log=lines.append)
    metadata, images = (case / "vehicle_info.txt").resolve(), (case / "images.zip").resolve()
    assert f"metadata: {N_ROWS} of {N_ROWS} paths found in {metadata} (100.0%); recorded by convert" in lines
    assert (f"images: {N_ROWS} of {N_ROWS} paths found in {images} (100.0%; {N_ROWS} by a common path suffix); "
            "recorded by convert") in lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metadata"]["path"] == str(metadata) and summary["metadata"]["share"] == 1.0
    assert summary["images"] == {"path": str(images), "origin": "recorded", "found": N_ROWS, "n_paths": N_ROWS,
                                 "share": 1.0, "text": next(line for line in lines if line.startswith("images:"))}
    html = (out / "report.html").read_text()
    k = summary["sets"][0]["k"]
    assert all(f"report_files/vdc_color-cluster{c}.jpg" in html for c in range(k))  # a montage per cluster
    assert "could not be shown" not in html  # every tile read
    sentences = pd.read_csv(out / "clusters.csv")["sentence"]
    assert all("no metadata" not in s for s in sentences) and all(escape(s) in html for s in sentences)


def test_the_demo_relies_on_the_recorded_files(case, tmp_path, monkeypatch, capsys):
    """``streamclust demo`` passes the study no metadata nor images: it finds those convert recorded.
    (The demo's case is this module's, copied in place; its study is cut to one set to stay fast.)"""
    import streamclust.datasets.synthetic
    import streamclust.study

    def make_case(out, **_):
        shutil.copytree(case, out)
        return out

    calls = []
    real = streamclust.study.run_study

    def one_set_study(store, out, **kwargs):
        calls.append(kwargs)
        return real(store, out, **{**kwargs, "descriptors": ["vdc_color"], "n_components": 8, "algorithms": "kmeans"})

    monkeypatch.setattr(streamclust.datasets.synthetic, "make_demo_case", make_case)
    monkeypatch.setattr(streamclust.study, "run_study", one_set_study)
    assert main(["demo", "--rows", str(N_ROWS), "--out", str(tmp_path / "demo"), "--k", "3:4"]) == 0
    (kwargs,) = calls
    assert kwargs["metadata"] is None and kwargs["images"] is None  # the recorded ones
    printed = capsys.readouterr().out
    demo_case_dir = (tmp_path / "demo" / "case").resolve()
    assert f"paths found in {demo_case_dir / 'vehicle_info.txt'} (100.0%); recorded by convert" in printed
    assert f"paths found in {demo_case_dir / 'images.zip'} (100.0%; {N_ROWS} by a common path suffix)" in printed
    assert (tmp_path / "demo" / "study" / "report_files" / "vdc_color-cluster0.jpg").is_file()


def test_no_metadata_and_no_images_disable_them(store, tmp_path, capsys):
    out = tmp_path / "off"
    args = ["study", str(store), "-o", str(out), "--descriptors", "vdc_color", "--k", "3:4", "--components", "8",
            "--algorithms", "kmeans"]
    assert main([*args, "--no-metadata", "--no-images"]) == 0
    printed = capsys.readouterr().out
    assert "metadata: none (--no-metadata given)" in printed and "images: none (--no-images given)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["metadata"]["origin"], summary["images"]["origin"]) == ("disabled", "disabled")
    assert summary["metadata"]["path"] is None and summary["images"]["path"] is None
    assert not list((out / "report_files").glob("*-cluster[0-9]*"))  # no montage, of any format
    assert pd.read_csv(out / "clusters.csv")["sentence"].str.contains("no metadata").all()
    with pytest.raises(SystemExit) as exc:  # a file and "none" at once is refused by the parser
        main([*args, "--metadata", "x.txt", "--no-metadata"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_given_files_override_the_recorded_ones(case, store, tmp_path):
    other = tmp_path / "colours.csv"
    truth = pd.read_csv(case / "truth.csv")
    truth[["path", "color"]].iloc[:200].to_csv(other, index=False)  # two thirds of the images
    flat = tmp_path / "flat.zip"  # the file names alone: wholly a suffix of the CSV paths
    _write_zip(flat, [p.split("\\")[-1] for p in _csv_paths(case)][:200])
    metadata, attributes = choose_metadata(CaseStore(store), other)
    assert metadata.origin == "given" and metadata.path == other and list(attributes.columns) == ["color"]
    assert metadata.found == 200 and "the others have no attributes" in metadata.text
    images = choose_images(CaseStore(store), flat)
    assert (images.origin, images.found, images.n_paths) == ("given", 200, N_ROWS)
    assert images.text.startswith(f"images: 200 of {N_ROWS} paths found in {flat} (66.7%; 200 by a common path "
                                  "suffix; not found, e.g. veriwild/1/")


def test_a_given_file_that_is_wrong_is_refused(store, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no such metadata file"):
        choose_metadata(CaseStore(store), tmp_path / "missing.txt")
    with pytest.raises(InputError, match=r"notes.txt: not a zip file nor a folder"):
        choose_images(CaseStore(store), tmp_path / "notes.txt")
    with pytest.raises(InputError, match=r"images=True: give a file, None .* or False for none"):
        choose_images(CaseStore(store), True)


def test_recorded_files_deleted_since_are_said_and_the_study_completes(case, tmp_path, caplog):
    moved = tmp_path / "case"
    shutil.copytree(case, moved)
    convert_case(moved, tmp_path / "moved.zarr")
    (moved / "vehicle_info.txt").unlink()
    (moved / "images.zip").unlink()
    with caplog.at_level(logging.INFO, logger="streamclust"):
        result = run_study(tmp_path / "moved.zarr", tmp_path / "study", **STUDY)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("vehicle_info.txt", "images.zip"):
        assert any(f"{(moved / name).resolve()}, recorded by convert, is missing now" in w for w in warned), name
    assert result.sets["vdc_color"].k in (3, 4) and (tmp_path / "study" / "report.html").is_file()
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert (summary["metadata"]["origin"], summary["images"]["origin"]) == ("missing", "missing")


def test_a_store_converted_before_the_record_studies_without_them(store, tmp_path, caplog):
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    del CaseStore(old, mode="r+").root.attrs[CASE_FILES_ATTR]
    with caplog.at_level(logging.INFO, logger="streamclust"):
        metadata, attributes = choose_metadata(CaseStore(old), None)
    assert metadata.path is None and attributes is None and metadata.origin == "not recorded"
    assert "the store records no case folder files" in caplog.text and "--metadata FILE" in caplog.text
    assert all(r.levelno == logging.INFO for r in caplog.records)


def test_a_recorded_zip_holding_none_of_the_paths_is_left_out(store, tmp_path, caplog):
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    elsewhere = tmp_path / "elsewhere.zip"
    _write_zip(elsewhere, ["unrelated/a.jpg"])
    s = CaseStore(other, mode="r+")
    s.root.attrs[CASE_FILES_ATTR] = {**s.root.attrs[CASE_FILES_ATTR], "images": str(elsewhere)}
    with caplog.at_level(logging.INFO, logger="streamclust"):
        images = choose_images(CaseStore(other), None)
    assert images.path is None and images.origin == "unusable" and images.found == 0
    (record,) = [r for r in caplog.records if r.getMessage().startswith("images:")]
    assert record.levelno == logging.WARNING and "so the report has no montages" in record.getMessage()


# --------------------------------------------------------------------------- suffix matching
def test_zip_members_under_another_top_folder_are_read(tmp_path):
    path = tmp_path / "imgs.zip"
    _write_zip(path, ["images/00001/000001.jpg", "images/00001/000002.jpg", "images/00002/000003.jpg"])
    with ImageSource.open(path) as src:
        for p in ("veriwild\\1\\00001\\000001.jpg", "veriwild/1/00001/000002.jpg", "00002/000003.jpg"):
            assert src.read(p) is not None, p
        assert src.read("veriwild/1/00002/000001.jpg") is None  # the file name alone, in another folder
        match = src.match_paths(["veriwild\\1\\00001\\000001.jpg", "images/00001/000002.jpg",
                                 "veriwild/1/00002/000001.jpg", "../x.jpg"])
    assert (match.exact, match.by_suffix, match.unsafe, match.n_paths, match.found) == (1, 1, 1, 4, 2)
    assert match.text().startswith(f"2 of 4 paths found in {path} (50.0%; 1 by a common path suffix; 1 refused "
                                   "as unsafe; not found, e.g. veriwild/1/00002/000001.jpg)")


def test_an_ambiguous_suffix_is_not_matched_and_is_said(tmp_path):
    path = tmp_path / "imgs.zip"
    _write_zip(path, ["a/00001/000001.jpg", "b/00001/000001.jpg", "a/00001/000002.jpg"])
    with ImageSource.open(path) as src:
        assert src.read("veriwild/1/00001/000001.jpg") is None
        assert src.skipped == [("veriwild/1/00001/000001.jpg",
                                "missing: ambiguous, 2 entries end with '00001/000001.jpg'")]
        assert src.read("a/00001/000001.jpg") is not None  # its exact name still reads
        assert src.read("veriwild/1/00001/000002.jpg") is not None
        match = src.match_paths(["veriwild/1/00001/000001.jpg", "veriwild/1/00001/000002.jpg"])
    assert (match.by_suffix, match.ambiguous, match.found) == (1, 1, 1)
    assert "1 ambiguous (two or more entries share their longest suffix), e.g. veriwild/1/00001/000001.jpg: " \
           "2 entries" in match.text()


def test_suffix_matching_keeps_to_the_root(tmp_path):
    """Unsafe zip members are never a match; in a folder, an entry reached by suffix is read under the
    same rules as any other (a symlink leading out of the root is refused)."""
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../00001/000001.jpg", _jpeg((0, 0, 0)))
        zf.writestr("/abs/00001/000002.jpg", _jpeg((0, 0, 0)))
    with ImageSource.open(path) as src:
        assert src.read("veriwild/1/00001/000001.jpg") is None
        assert src.read("veriwild/1/00001/000002.jpg") is None
        assert src.match_paths(["veriwild/1/00001/000001.jpg", "veriwild/1/00001/000002.jpg"]).found == 0
    root = tmp_path / "images"
    (root / "00001").mkdir(parents=True)
    (root / "00001" / "000001.jpg").write_bytes(_jpeg((9, 9, 9)))
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(_jpeg((0, 0, 255)))
    (root / "00001" / "000002.jpg").symlink_to(secret)
    (root / "linked").symlink_to(tmp_path)  # a symlinked folder is not walked
    src = ImageSource.open(root)
    assert src.read("veriwild\\1\\00001\\000001.jpg") is not None
    assert src.read("veriwild/1/00001/000002.jpg") is None
    assert "outside the image root" in src.skipped[-1][1]
    assert src.read("x/secret.jpg") is None and src.skipped[-1][1].startswith("missing")
    assert len(src.suffix_index) == 2


def test_suffix_index_picks_the_longest_common_suffix():
    index = SuffixIndex(["images/00001/000001.jpg", "x/1/00001/000001.jpg", "flat.jpg", "a/7.jpg", "b/7.jpg"])
    assert index.resolve("veriwild/1/00001/000001.jpg") == ("x/1/00001/000001.jpg", 3, 1)  # 3 beats 2
    assert index.resolve("images/00001/000001.jpg") == ("images/00001/000001.jpg", 3, 1)
    assert index.resolve("q/00001/000001.jpg") == (None, 2, 2)  # tie
    assert index.resolve("q/r/flat.jpg") == ("flat.jpg", 1, 1)  # the entry is wholly a suffix
    assert index.resolve("7.jpg") == (None, 1, 2)
    assert index.resolve("none.jpg") == (None, 0, 0)
