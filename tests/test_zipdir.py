"""The compact zip directory: same members and bytes as zipfile, zip64 included, far less memory."""

from __future__ import annotations

import tracemalloc
import zipfile

import pytest

from streamclust.report.zipdir import BadZip, ZipDirectory


def _same_as_zipfile(path, max_bytes=1 << 20):
    zd = ZipDirectory(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            assert zd.names == [i.filename for i in infos]
            for i, info in enumerate(infos):
                assert zd.find(info.filename) is not None
                assert (int(zd.file_size[i]), int(zd.compress_size[i])) == (info.file_size, info.compress_size)
                assert zd.is_dir(i) == info.is_dir()
                if not info.is_dir() and info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    assert zd.read(i, max_bytes) == (zf.read(info), None)
    finally:
        zd.close()

@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_members_and_bytes_equal_zipfile(tmp_path, method):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("images/00001/000001.jpg", b"\xff\xd8" + bytes(range(256)) * 40)
        zf.writestr("images/", b"")
        zf.writestr("caf\u00e9/\u00fcber.jpg", b"utf-8 name")  # flagged UTF-8
        zf.writestr("win\\style\\x.jpg", b"backslashes")
        zf.writestr("empty.jpg", b"")
        with zf.open("big64.jpg", "w", force_zip64=True) as f:  # zip64 extra fields
            f.write(b"z" * 5000)
    _same_as_zipfile(path)

def test_zip64_directory_of_more_than_65535_members_and_prepended_bytes(tmp_path):
    """Over 65,535 members the count lives in the zip64 end record (as in the 416,314-image
    case); bytes before the archive (a self-extractor stub) shift every offset."""
    plain = tmp_path / "many.zip"
    with zipfile.ZipFile(plain, "w", zipfile.ZIP_STORED) as zf:
        for i in range(70_000):
            zf.writestr(f"i/{i:06d}.jpg", i.to_bytes(4, "little"))
    zd = ZipDirectory(plain)
    assert len(zd) == 70_000 and zd.read(zd.find("i/069999.jpg"), 100) == ((69_999).to_bytes(4, "little"), None)
    zd.close()
    stub = tmp_path / "stub.zip"
    stub.write_bytes(b"#!/bin/sh\nexit 0\n" * 10 + plain.read_bytes())
    zd = ZipDirectory(stub)
    assert zd.read(zd.find("i/000123.jpg"), 100) == ((123).to_bytes(4, "little"), None)
    zd.close()

def test_directory_takes_a_fraction_of_zipfiles_memory(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(20_000):
            zf.writestr(f"images/{i // 100:05d}/{i:06d}.jpg", b"x")
    peaks = []
    for opener in (zipfile.ZipFile, ZipDirectory):
        tracemalloc.start()
        obj = opener(path)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        obj.close()
        peaks.append(held)
    assert peaks[1] < peaks[0] / 2.5, peaks  # measured: 10.8 MB vs 3.7 MB

def test_damaged_members_are_refused_with_a_reason(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("good.jpg", b"a" * 1000)
        zf.writestr("flipped.jpg", b"b" * 1000)
        zf.writestr("bz.jpg", b"c" * 1000, compress_type=zipfile.ZIP_BZIP2)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("flipped.jpg")
        data_at = info.header_offset + 30 + len(info.filename)
    raw[data_at + 2] ^= 0xFF  # damage the deflate stream
    path.write_bytes(bytes(raw))
    zd = ZipDirectory(path)
    assert zd.read(zd.find("good.jpg"), 1 << 20) == (b"a" * 1000, None)
    data, why = zd.read(zd.find("flipped.jpg"), 1 << 20)
    assert data is None and why.startswith("damaged zip entry")
    assert zd.read(zd.find("bz.jpg"), 1 << 20) == (None, "unsupported zip compression method 12")
    assert zd.read(zd.find("good.jpg"), 999) == (None, "file too large: declared 1,000 bytes > cap 999 (not read)")
    zd.close()

def test_local_header_naming_another_file_is_refused(tmp_path):
    path = tmp_path / "l.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.jpg", b"first")
        zf.writestr("b.jpg", b"secnd")
    raw = path.read_bytes()
    raw = raw.replace(b"b.jpg", b"c.jpg", 1)  # the first b.jpg is its local header's name
    path.write_bytes(raw)
    zd = ZipDirectory(path)
    assert zd.read(zd.find("b.jpg"), 100) == (None, "damaged zip entry (its local header names another file)")
    zd.close()

def test_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(BadZip, match="not a zip file"):
        ZipDirectory(path)
    whole = tmp_path / "t.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        zf.writestr("a.jpg", b"x" * 100)
    cut = tmp_path / "cut.zip"
    data = whole.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    cut.write_bytes(data[eocd - 20:])  # the directory is gone, its end record remains
    with pytest.raises(BadZip, match="damaged central directory"):
        ZipDirectory(cut)


def test_name_flagged_utf8_that_is_not_is_refused_naming_the_member(tmp_path):
    path = tmp_path / "u.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.jpg", b"first")
        zf.writestr("b\u00e9.jpg", b"secnd")  # non-ASCII: written with the UTF-8 flag
    raw = path.read_bytes()
    cd = raw.rfind("b\u00e9.jpg".encode())  # the central directory's copy of the name
    raw = raw[:cd + 1] + b"\xff\xfe" + raw[cd + 3:]  # same length, not UTF-8
    path.write_bytes(raw)
    with pytest.raises(BadZip, match=r"member 1's name b'b\\xff\\xfe.jpg' is flagged UTF-8 but is not UTF-8"):
        ZipDirectory(path)
