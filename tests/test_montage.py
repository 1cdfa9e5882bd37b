"""Tests of streamclust.report.images (safe image reading) and streamclust.report.montages
(row picking, montages)."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from streamclust.errors import InputError
from streamclust.estimators.blockwise import top_outlier_rows
from streamclust.report.images import (
    ImageSource,
    UnsafePathError,
    ZipImageSource,
    safe_relpath,
)
from streamclust.report.montages import (
    montage,
    pick_montage_rows,
    random_row_keys,
    squared_distances,
)


def _jpeg(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "../x.jpg", "a/../../x.jpg", "a/..", "..\\x.jpg", "a\\..\\..\\etc\\passwd",
    "/etc/passwd", "\\\\server\\share\\x.jpg", "\\x.jpg",
    "C:\\x", "C:x.jpg", "c:/windows/x.jpg", "", ".", "./", "a\x00b.jpg", None, 5,
])
def test_safe_relpath_refuses(path):
    with pytest.raises(UnsafePathError):
        safe_relpath(path)


@pytest.mark.parametrize("path, expected", [
    ("veriwild\\1\\00001\\000001.jpg", "veriwild/1/00001/000001.jpg"),
    ("./a//b/./c.jpg", "a/b/c.jpg"),
    ("a/b..c/x.jpg", "a/b..c/x.jpg"),
])
def test_safe_relpath_normalises(path, expected):
    assert safe_relpath(path) == expected


def test_folder_refuses_unsafe_paths_and_symlink_escape(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ok.jpg").write_bytes(_jpeg())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(_jpeg((0, 0, 255)))
    (root / "a" / "escape.jpg").symlink_to(secret)
    (root / "a" / "escape_dir").symlink_to(tmp_path)
    (root / "a" / "inside.jpg").symlink_to(root / "a" / "ok.jpg")  # inside the root: fine
    src = ImageSource.open(root)

    assert src.read("a/ok.jpg").size == (64, 48)
    assert src.read("a\\ok.jpg") is not None  # backslashes normalised
    assert src.read("a/inside.jpg") is not None
    for bad in ["../secret.jpg", "a/../../secret.jpg", str(secret), "C:\\secret.jpg",
                "a/escape.jpg", "a/escape_dir/secret.jpg", "a/missing.jpg", "a"]:
        assert src.read(bad) is None, bad
    reasons = dict(src.skipped)
    assert reasons["../secret.jpg"].startswith("unsafe path")
    assert reasons[str(secret)].startswith("unsafe path")
    assert reasons["C:\\secret.jpg"].startswith("unsafe path")
    assert "outside the image root" in reasons["a/escape.jpg"]
    assert "outside the image root" in reasons["a/escape_dir/secret.jpg"]
    assert reasons["a/missing.jpg"].startswith("missing")
    assert reasons["a"] == "not a regular file"


def test_folder_file_over_size_cap_is_skipped(tmp_path):
    (tmp_path / "big.jpg").write_bytes(_jpeg() + bytes(5000))
    src = ImageSource.open(tmp_path, max_bytes=2000)
    assert src.read("big.jpg") is None
    assert "too large" in src.skipped[0][1]


def test_zip_refuses_unsafe_entry_names(tmp_path):
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("veriwild/1/00001/000001.jpg", _jpeg())
        zf.writestr("../evil.jpg", _jpeg())
        zf.writestr("a/../../evil2.jpg", _jpeg())
        zf.writestr("/abs.jpg", _jpeg())
        zf.writestr("C:/drive.jpg", _jpeg())
        zf.writestr("win\\style\\x.jpg", _jpeg((0, 255, 0)))
    src = ImageSource.open(path)
    assert isinstance(src, ZipImageSource)
    assert src.read("veriwild\\1\\00001\\000001.jpg") is not None
    assert src.read("win/style/x.jpg") is not None  # backslash entry, normalised
    for bad in ["../evil.jpg", "evil.jpg", "evil2.jpg", "a/../../evil2.jpg", "/abs.jpg", "abs.jpg",
                "C:/drive.jpg", "drive.jpg"]:
        assert src.read(bad) is None, bad
    refused = {name for name, _ in src.refused_entries}
    assert refused == {"../evil.jpg", "a/../../evil2.jpg", "/abs.jpg", "C:/drive.jpg"}
    src.close()


def _write_zeros_bomb(path, name: str, size: int, declared: int | None = None) -> None:
    """A zip with ONE deflated member of ``size`` zero bytes, built without
    compressing ``size`` bytes: after a full flush, deflate emits the same bytes
    for every further 1 MiB of zeros, so the stream is one chunk repeated."""
    chunk = 1 << 20
    assert size % chunk == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH) == again
    tail = c.flush(zlib.Z_FINISH)
    n = size // chunk
    crc = 0
    zeros = bytes(chunk)
    for _ in range(n):
        crc = zlib.crc32(zeros, crc)
    csize = len(first) + (n - 1) * len(again) + len(tail)
    usize = size if declared is None else declared
    fname = name.encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize, usize,
                            len(fname), 0) + fname)
        f.write(first)
        for _ in range(n - 1):
            f.write(again)
        f.write(tail)
        cd_offset = f.tell()
        cd = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, csize, usize,
                         len(fname), 0, 0, 0, 0, 0, 0) + fname
        f.write(cd)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(cd), cd_offset, 0))


def test_zip_bomb_is_skipped_without_reading_it(tmp_path):
    path = tmp_path / "bomb.zip"
    _write_zeros_bomb(path, "veriwild/bomb.jpg", 1 << 30)  # 1 GiB of zeros
    assert path.stat().st_size < 2 << 20
    with zipfile.ZipFile(path) as zf:  # it is a real, valid bomb
        info = zf.getinfo("veriwild/bomb.jpg")
        assert info.file_size == 1 << 30
        with zf.open(info) as f:
            assert f.read(1000) == bytes(1000)
    src = ImageSource.open(path)
    tracemalloc.start()
    try:
        assert src.read("veriwild/bomb.jpg") is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert "declared 1,073,741,824 bytes" in src.skipped[0][1]


def test_zip_bomb_with_lying_header_is_bounded(tmp_path):
    path = tmp_path / "liar.zip"
    _write_zeros_bomb(path, "liar.jpg", 64 << 20, declared=1000)  # claims 1000 bytes
    src = ImageSource.open(path, max_bytes=4 << 20)
    tracemalloc.start()
    try:
        assert src.read("liar.jpg") is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # at most max_bytes + 1 bytes are inflated, whatever the header declares: memory stays a
    # small multiple of the cap, never 64 MiB
    assert peak < 3 * (4 << 20)
    assert src.skipped[0][1] == "file too large: more than 4,194,304 bytes when inflated"


def test_corrupt_truncated_and_huge_images_are_skipped_and_reported(tmp_path):
    good = _jpeg()
    huge = io.BytesIO()
    Image.new("L", (6000, 5000)).save(huge, format="PNG")  # 30 Mpx, compresses to ~30 kB
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("good.jpg", good)
        zf.writestr("truncated.jpg", good[: len(good) // 2])
        zf.writestr("garbage.jpg", b"this is not a picture" * 50)
        zf.writestr("empty.jpg", b"")
        zf.writestr("huge.png", huge.getvalue())
    src = ImageSource.open(path, max_pixels=10_000_000)
    assert src.read("good.jpg") is not None
    for name in ["truncated.jpg", "garbage.jpg", "empty.jpg", "huge.png"]:
        assert src.read(name) is None, name
    reasons = dict(src.skipped)
    assert set(reasons) == {"truncated.jpg", "garbage.jpg", "empty.jpg", "huge.png"}
    assert reasons["huge.png"].startswith("image too large")
    assert all(r.startswith("corrupt image") for k, r in reasons.items() if k != "huge.png")


def test_open_refuses_missing_and_non_zip(tmp_path):
    with pytest.raises(InputError):
        ImageSource.open(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputError):
        ImageSource.open(tmp_path / "x.txt")


def test_montage_draws_grid_with_missing_tiles(tmp_path):
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(5):
            zf.writestr(f"v/{i}.jpg", _jpeg((40 * i, 100, 200 - 30 * i)))
        zf.writestr("bad.jpg", b"nope")
    src = ImageSource.open(path)
    paths = [f"v/{i}.jpg" for i in range(5)] + ["bad.jpg", "../x.jpg"]
    img = montage(src, paths, ncols=4, tile=(96, 72), labels=[f"row {i}" for i in range(7)],
                  title="cluster 3")
    assert img.mode == "RGB"
    assert img.width == 4 * 100 + 4 and img.height > 2 * 72
    assert [p for p, _ in src.skipped] == ["bad.jpg", "../x.jpg"]
    # the first tile holds the first picture (centre pixel close to its colour)
    px = np.asarray(img)[22 + 4 + 36, 4 + 48]
    assert np.abs(px.astype(int) - [0, 100, 200]).max() < 30


# --------------------------------------------------------------------------
# Row picking
# --------------------------------------------------------------------------
def _brute_force_picks(X, labels, centers, n_nearest, n_random, n_border, seed):
    X = np.asarray(X, np.float64)
    d2 = squared_distances(X, centers)
    rows = np.arange(len(X))
    own = np.sqrt(d2[rows, labels])
    two = np.sqrt(np.sort(d2, axis=1)[:, :2])
    margin = two[:, 1] - two[:, 0]
    key = random_row_keys(rows, seed).astype(np.float64) / 2.0**64
    out = []
    for c in range(len(centers)):
        m = labels == c
        for kind, val, n in (("nearest", own, n_nearest), ("random", key, n_random),
                             ("border", margin, n_border)):
            r = rows[m]
            order = np.lexsort((r, val[m]))[:n]
            out += [(c, kind, i, int(r[j]), float(val[m][j])) for i, j in enumerate(order)]
    return pd.DataFrame(out, columns=["cluster", "kind", "rank", "row", "value"])


def test_pick_montage_rows_equals_brute_force_on_zarr(tmp_path):
    rng = np.random.default_rng(0)
    n, d, k = 12_345, 12, 6
    centers = rng.normal(0, 3, (k, d))
    X = (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)
    labels = squared_distances(X, centers).argmin(axis=1).astype(np.int32)
    labels[rng.random(n) < 0.05] = rng.integers(0, k)  # some rows not in their nearest cluster
    zX = zarr.create_array(str(tmp_path / "X.zarr"), shape=X.shape, chunks=(1000, d), dtype="float32")
    zX[:] = X
    zl = zarr.create_array(str(tmp_path / "l.zarr"), shape=(n,), chunks=(1000,), dtype="int32")
    zl[:] = labels
    expected = _brute_force_picks(X, labels, centers, 7, 5, 9, seed=42)
    for block_rows in (777, 4096, None):
        got = pick_montage_rows(zX, zl, centers, n_nearest=7, n_random=5, n_border=9,
                                random_state=42, block_rows=block_rows)
        pd.testing.assert_frame_equal(got[["cluster", "kind", "rank", "row"]],
                                      expected[["cluster", "kind", "rank", "row"]])
        np.testing.assert_allclose(got["value"], expected["value"], rtol=1e-9, atol=1e-12)
    # numpy input gives the same; another seed another random draw
    got_np = pick_montage_rows(X, labels, centers, n_nearest=7, n_random=5, n_border=9, random_state=42)
    pd.testing.assert_frame_equal(got_np[["row"]], expected[["row"]])
    other = pick_montage_rows(X, labels, centers, n_nearest=7, n_random=5, n_border=9, random_state=1)
    assert not np.array_equal(other[other.kind == "random"].row, expected[expected.kind == "random"].row)


def test_random_row_keys_are_uniform():
    keys = random_row_keys(np.arange(100_000), 7).astype(np.float64) / 2.0**64
    hist, _ = np.histogram(keys, bins=10, range=(0, 1))
    assert np.all(np.abs(hist - 10_000) < 500)


def test_pick_montage_rows_small_clusters_and_negative_labels():
    X = np.array([[0.0, 0], [0.1, 0], [5, 5], [5.2, 5], [9, 9]])
    labels = np.array([0, 0, 1, 1, -1])
    got = pick_montage_rows(X, labels, np.array([[0.0, 0], [5, 5]]), n_nearest=8, n_random=8, n_border=8)
    assert set(got.row) == {0, 1, 2, 3}
    assert (got.groupby(["cluster", "kind"]).size() == 2).all()
    with pytest.raises(InputError):
        pick_montage_rows(X, np.array([0, 0, 1, 1, 2]), np.array([[0.0, 0], [5, 5]]))


def test_top_outlier_rows_blockwise(tmp_path):
    rng = np.random.default_rng(3)
    s = rng.normal(size=10_001).astype(np.float32)
    s[[5, 77]] = np.nan
    s[[10, 20]] = 9.0  # a tie: lower row first
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=s.shape, chunks=(1234,), dtype="float32")
    z[:] = s
    got = top_outlier_rows(z, 25, block_rows=999)
    ok = np.flatnonzero(~np.isnan(s))
    order = ok[np.lexsort((ok, -s[ok]))][:25]
    assert got["row"].tolist() == order.tolist()
    assert got["row"].tolist()[:2] == [10, 20]
    np.testing.assert_array_equal(got["score"].to_numpy(), s[order].astype(np.float64))
    assert top_outlier_rows(s, 0).empty
