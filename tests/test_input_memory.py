"""Memory bounded by the budget (``--memory``, 1 GiB by default) on small hostile inputs (issue #14, item 3).

Each hostile file is built cheaply: sparse files (a hole made by ``truncate`` or ``seek`` takes no disk
and reads as zeros), a deflate stream repeated after full flushes for the ``.npz`` bomb, a patched
pickle.  The command or reader runs in a child process whose peak resident size (``ru_maxrss`` from
``wait4``: VmHWM) is measured; every child runs under a 3 GiB data limit, so that a regression fails
here with a MemoryError instead of exhausting the machine.  The bound is 1.2 GB at the default budget.
Two cases need a real read larger than the budget (a Parquet row group, a ``.npy`` read whole): they
run ``--memory 64MB`` and bound the peak *above the same command on a tiny file* by that budget.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import resource
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import streamclust
from streamclust.analysis.metadata import read_metadata
from streamclust.errors import InputError
from streamclust.io.sources import open_source
from streamclust.io.store import CaseStore

_ENV = {**os.environ, "PYTHONPATH": str(Path(streamclust.__file__).resolve().parents[1])}
#: Peak resident size allowed at the default 1 GiB budget, in MB.
_BOUND_MB = 1200
_WIDE = (600, 400_000)  # float32: 960 MB, the wide array


def _limit_data() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))


#: Runs ``-m MODULE ARGS`` or ``-c CODE ARGS`` and writes the process's VmHWM (kB) to a file at exit.
#: The peak is read in the child: ``ru_maxrss`` from ``wait4`` would include the test process's own
#: resident size, which the child has between fork and exec.
_MEASURED = """
import atexit, runpy, sys
out, how, target, *args = sys.argv[1:]

def report():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(out, "w") as f:
        f.write(kb)

atexit.register(report)
sys.argv = [target, *args]
if how == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<test>", "exec"), {"__name__": "__main__"})
"""


def _peak(how: str, target: str, *args: str, timeout: float = 120.0) -> tuple[int, str, float]:
    """Run ``python -m MODULE ARGS`` or ``python -c CODE ARGS`` in a child:
    ``(exit code, stderr, peak resident size in MB)``; the peak is infinite when it was killed."""
    with tempfile.NamedTemporaryFile(suffix=".hwm") as hwm:
        proc = subprocess.run([sys.executable, "-c", _MEASURED, hwm.name, how, target, *args], env=_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout,
                              preexec_fn=_limit_data)
        kb = Path(hwm.name).read_text()
    return proc.returncode, proc.stderr, int(kb) / 1024 if kb else float("inf")


def _convert(case: Path, out: Path, *extra: str) -> tuple[int, str, float]:
    return _peak("-m", "streamclust", "convert", str(case), "-o", str(out), "--quiet", *extra)


def _case(root: Path, n_rows: int) -> Path:
    """A case folder with ``n_rows`` image paths and an empty ``descriptors/``."""
    (root / "descriptors").mkdir(parents=True)
    with open(root / "images_paths.csv", "w") as f:
        f.write("paths\n")
        f.writelines(f"img{i}.jpg\n" for i in range(n_rows))
    return root


def _npy_header(shape: tuple[int, int], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _sparse_npy(path: Path, shape: tuple[int, int]) -> None:
    header = _npy_header(shape)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + shape[0] * shape[1] * 4)


def _npz_bomb(path: Path, shape: tuple[int, int]) -> None:
    """An ``.npz`` of one float32 member of zeros: about 1 MB that inflates to ``4 * rows * cols`` bytes.

    After a full flush a deflate stream restarts from an empty history, so 16 MiB of zeros
    compressed once is repeated as is; the zip is written by hand (zipfile would deflate it all).
    """
    header = _npy_header(shape)
    n_data = shape[0] * shape[1] * 4
    zeros = bytes(1 << 24)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    piece = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(n_data, len(zeros))
    tail = deflate.compress(bytes(rest)) + deflate.flush()
    crc = zlib.crc32(header)
    for _ in range(full):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest), crc)
    name = b"x.npy"
    sizes = (crc, len(head) + len(piece) * full + len(tail), len(header) + n_data, len(name))
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, *sizes, 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, *sizes, 0, 0, 0, 0, 0, 0) + name
    with open(path, "wb") as f:
        f.write(local + head)
        for _ in range(full):
            f.write(piece)
        f.write(tail)
        at = f.tell()
        f.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), at, 0))


def _sparse_pickle(path: Path, shape: tuple[int, int]) -> None:
    """A protocol-5 pickle of a float32 array of ``shape`` whose buffer is a hole of the file
    (``pickle.load`` reads it as zeros)."""
    template = pickle.dumps(np.zeros((2, 16384), np.float32), protocol=5)  # a 128 KiB buffer, out of any frame
    ops = list(pickletools.genops(template))
    i = next(i for i, (op, _, _) in enumerate(ops) if op.name == "BYTEARRAY8")
    j = next(j for j, (op, arg, _) in enumerate(ops) if op.name == "BININT1" and arg == 2
             and ops[j + 1][0].name == "BININT2" and ops[j + 1][1] == 16384)
    shape_start, shape_end = ops[j][2], ops[j + 2][2]
    new_shape = b"J" + struct.pack("<i", shape[0]) + b"J" + struct.pack("<i", shape[1])
    suffix = template[ops[i + 1][2]:shape_start] + new_shape + template[shape_end:]
    assert suffix[0] == 0x95  # the FRAME holding the shape: its length grows with it
    length = struct.unpack("<Q", suffix[1:9])[0] + len(new_shape) - (shape_end - shape_start)
    n_data = shape[0] * shape[1] * 4
    with open(path, "wb") as f:
        f.write(template[: ops[i][2]] + b"\x96" + struct.pack("<Q", n_data))
        f.seek(n_data, os.SEEK_CUR)
        f.write(suffix[:1] + struct.pack("<Q", length) + suffix[9:])


_WIDE_FILES = {"npy": _sparse_npy, "npz": _npz_bomb, "pickle": _sparse_pickle}


@pytest.mark.parametrize("fmt", sorted(_WIDE_FILES))
def test_wide_rows_are_refused_before_a_block_is_read(tmp_path, fmt):
    """600 x 400,000 float32 (960 MB; the .npz is a 1 MB bomb): one store chunk (all 600 rows)
    cannot be converted within 1 GiB.  Before: exit 0 after peaks of 2.3 GB (npy), 1.9 GB (npz), 1.4 GB
    (pickle); after: 48 MB."""
    case = _case(tmp_path / "case", _WIDE[0])
    _WIDE_FILES[fmt](case / "descriptors" / f"wide.{fmt}", _WIDE)
    code, err, peak = _convert(case, tmp_path / "s.zarr")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"wide.{fmt}: rows of 400,000 values" in lines[0] and "memory budget (1,024 MiB)" in lines[0]
    assert "give --memory" in lines[0]
    assert peak < _BOUND_MB, peak
    assert not (tmp_path / "s.zarr").exists()  # refused before anything is written


@pytest.mark.parametrize("fmt", ["npy", "pickle"])
def test_one_row_larger_than_a_read_is_refused_at_open(tmp_path, fmt):
    """2 x 50M float32 (sparse, 400 MB): one row is 400 MB as float64, more than one read may take
    (32 MiB at 1 GiB).  Before: opened, and the conversion read blocks of whole rows."""
    path = tmp_path / f"long.{fmt}"
    _WIDE_FILES[fmt](path, (2, 50_000_000))
    with pytest.raises(InputError, match=rf"long\.{fmt}: one row of 50,000,000 values takes 381\.5 MiB as "
                                         r"float64, more than the 32\.0 MiB one read may take under a memory "
                                         r"budget of 1,024 MiB"):
        open_source(path)


def test_npz_member_shorter_than_its_header_is_refused_at_open(tmp_path):
    """Before: opened, and refused only when the rows were read (after the store's ids were written)."""
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", _npy_header((1000, 4)) + bytes(16))
    with pytest.raises(InputError, match=r"short\.npz:x is truncated: its header declares shape \(1000, 4\)"):
        open_source(path)


@pytest.mark.parametrize("suffix", ["csv", "txt"])
def test_sparse_1gb_descriptor_text_is_refused_at_its_long_line(tmp_path, suffix):
    """A 1 GB sparse file: one line of numbers, then a hole (NUL bytes, no newline).  Before: the
    line count read it whole, then pandas parsed it: killed past 3.4 GB."""
    case = _case(tmp_path / "case", 2)
    path = case / "descriptors" / f"sparse.{suffix}"
    with open(path, "wb") as f:
        f.write(b"1,2,3\n" if suffix == "csv" else b"1 2 3\n")
        f.truncate(10**9)
    code, err, peak = _convert(case, tmp_path / "s.zarr")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"sparse.{suffix}: line 2 is longer than 8,388,608 bytes" in lines[0] and "1,024 MiB" in lines[0]
    assert peak < _BOUND_MB, peak


def test_csv_line_of_2_5m_values_converts_within_the_budget(tmp_path):
    """Two rows of 2.5M values (10 MB): one line parses to 20 MB, which the budget admits.  Before:
    pandas built an object per column: killed past 3.4 GB after 170 s."""
    case = _case(tmp_path / "case", 2)
    d = 2_500_000
    with open(case / "descriptors" / "wide.csv", "w") as f:
        f.write(",".join(["1"] * d) + "\n" + ",".join(["2"] * d) + "\n")
    code, err, peak = _convert(case, tmp_path / "s.zarr")
    assert code == 0, err
    assert peak < _BOUND_MB, peak
    stored = CaseStore(tmp_path / "s.zarr").descriptor("wide")
    assert stored.shape == (2, d)
    np.testing.assert_array_equal(stored[:, -3:], [[1, 1, 1], [2, 2, 2]])


def test_first_line_of_separators_is_refused_without_splitting_it(tmp_path):
    """20 MB of commas on one line.  Before: read with readline and split into 20M strings."""
    path = tmp_path / "commas.csv"
    path.write_bytes(b"," * 20_000_000 + b"\n")
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"commas\.csv: line 1 is longer than 8,388,608 bytes"):
            open_source(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # one 1 MiB read and its newline positions


def test_csv_rows_are_parsed_exactly_and_a_bad_line_is_named(tmp_path):
    """numpy's parser gives pandas' values; a bad cell or a short line is named by its line number."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 7))
    path = tmp_path / "a.csv"
    pd.DataFrame(a).to_csv(path, index=False)
    src = open_source(path, memory="8MiB")  # 64 KiB lines and reads: many blocks
    np.testing.assert_array_equal(src.read_rows(0, 50), pd.read_csv(path).to_numpy())
    # a last line without a newline that runs over the edge of a 64 KiB read
    lines = [",".join(["0.125"] * 7)] * (65_536 // 42) + [",".join(["0.5"] * 300)]
    (tmp_path / "edge.txt").write_text("\n".join(lines).replace(",", " "))
    rows = open_source(tmp_path / "edge.txt", memory="8MiB")
    assert rows.shape == (len(lines), 7)
    with pytest.raises(InputError, match=rf"edge\.txt: line {len(lines):,} has 300 values, expected 7"):
        rows.read_rows(0, len(lines))
    text = path.read_text().splitlines()
    text[31] = text[31].replace(",", ",x", 1)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=r"a\.csv: line 32 is not a row of 7 numbers \(could not convert string"):
        open_source(path).read_rows(0, 50)
    text[31] = "1,2"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=r"a\.csv: line 32 has 2 values, expected 7"):
        open_source(path).read_rows(0, 50)


def test_parquet_page_larger_than_a_read_is_refused_before_it_is_inflated(tmp_path):
    """One 48 MiB page (zeros: a small file), more than one read may hold (32 MiB at 1 GiB).
    Before: opened; pyarrow would inflate the page whole when read."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"x": np.zeros(12 << 20, np.float32)}), path, use_dictionary=False,
                   compression="zstd", row_group_size=12 << 20, data_page_size=1 << 30,
                   max_rows_per_page=12 << 20, write_statistics=False)
    assert path.stat().st_size < 4 << 20
    with pytest.raises(InputError, match=r"bomb\.parquet: row group 0, column 'x' has a page of 50,331,6\d\d bytes"):
        open_source(path)


def _parquet_of_lists(path: Path, n_rows: int, d: int) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    values = pa.array((np.arange(n_rows * d) % 1000).astype(np.float32))
    table = pa.table({"v": pa.FixedSizeListArray.from_arrays(values, d)})
    pq.write_table(table, path, row_group_size=n_rows, use_dictionary=False)  # one row group


def _npy_of(path: Path, n_rows: int, d: int) -> None:
    """A float32 ``.npy`` of real data (the holes of a sparse file map no pages)."""
    with open(path, "wb") as f:
        f.write(_npy_header((n_rows, d)))
        for start in range(0, n_rows, 1024):
            f.write(np.full((min(1024, n_rows - start), d), 0.5, np.float32).tobytes())


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_a_file_larger_than_the_budget_converts_within_it(tmp_path, fmt):
    """A 96 MiB Parquet row group (one list column), a 256 MiB .npy, converted with --memory 96MB:
    the peak above the same conversion of a tiny file stays under the budget.  Before: pyarrow
    decoded the whole row group and batches of 65,536 rows; the .npy was memory-mapped, and every
    page read stayed in the resident size (+587 MB and +287 MB above the tiny file; after: +54, +41)."""
    write, n_rows = (_parquet_of_lists, 24_576) if fmt == "parquet" else (_npy_of, 65_536)
    peaks = []
    for name, n in (("tiny", 16), ("big", n_rows)):
        case = _case(tmp_path / name, n)
        write(case / "descriptors" / f"a.{fmt}", n, 1024)
        code, err, peak = _convert(case, tmp_path / f"{name}.zarr", "--memory", "96MB")
        assert code == 0, err
        peaks.append(peak)
    assert peaks[1] - peaks[0] < 96, peaks
    stored = CaseStore(tmp_path / "big.zarr").descriptor("a")
    assert stored.shape == (n_rows, 1024)
    if fmt == "parquet":
        np.testing.assert_array_equal(stored[-1, :4], (np.arange(4) + (n_rows - 1) * 1024) % 1000)


def test_paths_csv_with_a_giant_line_is_refused_by_number(tmp_path):
    """images_paths.csv of 1 GB (sparse): two paths, then a hole.  Before: the csv module read
    the line whole and refused it only past its field limit: 1.96 GB peak."""
    case = _case(tmp_path / "case", 2)
    np.save(case / "descriptors" / "a.npy", np.zeros((2, 4), np.float32))
    with open(case / "images_paths.csv", "r+b") as f:
        f.truncate(10**9)
    code, err, peak = _convert(case, tmp_path / "s.zarr")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "images_paths.csv: line 4 is longer than 1,048,576 characters" in lines[0]
    assert peak < _BOUND_MB, peak


# -- the --metadata reader ----------------------------------------------------------------------

_READ_METADATA = """
import sys
import numpy as np
from streamclust.analysis.metadata import read_metadata
from streamclust.errors import InputError
try:
    read_metadata(sys.argv[1], np.array([f"img{i}.jpg" for i in range(300)]))
except InputError as exc:
    sys.exit(f"InputError: {exc}")
"""


@pytest.mark.parametrize("kind", ["csv", "vehicle_info"])
def test_sparse_1gb_metadata_is_refused_at_its_long_line(tmp_path, kind):
    """A 1 GB sparse metadata file: a header, a row, then a hole.  Before: the header reader or
    pandas held the 1 GB line: killed past 3.4 GB."""
    path = tmp_path / ("meta.csv" if kind == "csv" else "vehicle_info.txt")
    with open(path, "wb") as f:
        f.write(b"path,color\nimg0.jpg,red\n" if kind == "csv" else
                b"id/image;Camera ID;Time;Model;Type;Color\n00001/000001;c1;2018-01-01 00:00:00;A;B;C\n")
        f.truncate(10**9)
    code, err, peak = _peak("-c", _READ_METADATA, str(path))
    assert code == 1 and f"InputError: {path}: line 3 is longer than 8,388,608 bytes" in err, err
    assert peak < _BOUND_MB, peak


def test_metadata_table_over_half_the_budget_is_refused_before_parsing(tmp_path):
    """4M rows of 8 empty cells (32 MB): pandas would hold 32M cells.  Before: parsed whole
    (about 1 GB), then refused for matching no image."""
    path = tmp_path / "meta.csv"
    with open(path, "w") as f:
        f.write("path,a,b,c,d,e,f,g\n")
        f.write(",,,,,,,\n" * 4_000_000)
    code, err, peak = _peak("-c", _READ_METADATA, str(path))
    assert code == 1 and "4,000,001 lines x 8 columns" in err and "more than half the memory budget (1,024 MiB)" in err
    assert peak < _BOUND_MB, peak


def test_metadata_with_thousands_of_columns_is_refused(tmp_path):
    """Before: read, at about 8 ms and 10 kB per column (60,000 columns: 490 s, 680 MB)."""
    path = tmp_path / "meta.csv"
    path.write_text("path," + ",".join(f"c{i}" for i in range(4999)) + "\nimg0.jpg" + "," * 4999 + "\n")
    with pytest.raises(InputError, match=r"meta\.csv: has 5,000 columns; a metadata file has one column per "
                                         r"attribute \(at most 1,000\)"):
        read_metadata(path, np.array(["img0.jpg"]))


def test_study_passes_its_budget_to_the_metadata_reader(demo_case, tmp_path, monkeypatch):
    """run_study hands its ``memory`` to read_metadata (which the CLI's --memory sets)."""
    from streamclust.study import case_files, driver

    seen = []

    def refuse(path, ids, **options):
        seen.append(options.get("memory"))
        raise InputError(f"{path}: refused by the test.")

    monkeypatch.setattr(case_files, "read_metadata", refuse)
    meta = tmp_path / "meta.csv"
    meta.write_text("path,color\nimg.jpg,red\n")
    with pytest.raises(InputError, match="refused by the test"):
        driver.run_study(demo_case(600) / "case.zarr", tmp_path / "out", k=2, memory="3GiB", metadata=meta)
    assert seen == ["3GiB"]


_RETAINED_BY_METADATA = """
import os, sys
import numpy as np
from streamclust.analysis.metadata import read_metadata

def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

path, n = sys.argv[1], int(sys.argv[2])
ids = np.array([f"{i // 10:05d}/{i:06d}.jpg" for i in range(n)], dtype=object)
before = resident_mib()
frame = read_metadata(path, ids)
assert frame["color"].notna().all()
print(resident_mib() - before)
"""


def test_metadata_read_leaves_little_resident_once_parsed(tmp_path):
    """A 300,000-row ``vehicle_info.txt``: pandas parses its strings into pyarrow's memory pool, which
    kept ~170 MiB of freed pages resident after the read (the whole study's floor; 416,314 rows:
    +156 MiB on every later step).  ``read_metadata`` now hands them back: ~20 MiB stay (the frame)."""
    n = 300_000
    path = tmp_path / "vehicle_info.txt"
    with open(path, "w") as f:
        f.write("id/image;Camera ID;Time;Model;Type;Color\n")
        f.writelines(f"{i // 10:05d}/{i:06d};c{i % 170:03d};2018-03-04 09:33:10; Model {i % 40}; sedan; white\n"
                     for i in range(n))
    proc = subprocess.run([sys.executable, "-c", _RETAINED_BY_METADATA, str(path), str(n)], env=_ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    retained = float(proc.stdout.split()[-1])
    assert retained < 60, f"{retained:.0f} MiB resident after the read"
