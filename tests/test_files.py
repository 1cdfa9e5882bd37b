"""Atomic output files: whole or not at all, with the permissions the umask gives."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from streamclust.core.files import atomic_output, write_atomic, write_csv_frames


@pytest.fixture(params=[0o022, 0o077, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_get_the_umask_permissions_not_the_temporary_files(tmp_path, umask):
    write_atomic(tmp_path / "a.json", "{}")
    write_csv_frames(tmp_path / "b.csv", [pd.DataFrame({"x": [1.0]})])
    for name in ("a.json", "b.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_study_output_honours_the_umask(demo_case, tmp_path, mask):
    """Colleagues sharing the folder read what the umask lets them read: every file of the study's
    output folder (CSVs, summary.json, report, models) gets 0o666 less the umask."""
    import shutil

    from streamclust.study import run_study

    store = tmp_path / "case.zarr"  # a copy: the shared case keeps no run of this test
    shutil.copytree(demo_case(300) / "case.zarr", store)
    old = os.umask(mask)
    try:
        run_study(store, tmp_path / "out", descriptors=["vdc_color"], k="3:4", n_components=8)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) > 10 and {p.suffix for p in files} >= {".csv", ".json", ".npy", ".html", ".png"}
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o666 & ~mask}
    assert wrong == {}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")

    def frames():
        yield pd.DataFrame({"x": [0.123456789, 2.0]})
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_csv_frames(target, frames())
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]
    write_csv_frames(target, iter([pd.DataFrame({"x": [0.123456789]}), pd.DataFrame({"x": [2.0]})]))
    assert target.read_text() == "x\n0.123457\n2\n"  # one header, %.6g


def test_the_open_file_names_its_temporary_path(tmp_path):
    with atomic_output(tmp_path / "out.bin") as f:
        assert os.path.dirname(f.name) == str(tmp_path) and f.name.endswith(".tmp")
        f.write(b"x")
    assert (tmp_path / "out.bin").read_bytes() == b"x"
