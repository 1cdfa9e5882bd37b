"""Tests of streamclust.io.pickle_stream: pickled arrays read without unpickling."""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import struct
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamclust.errors import InputError, UnsafePickleError
from streamclust.io.pickle_stream import open_pickled_array, write_pickled_array

SHAPE = (37, 11)
DTYPES = ["float16", "float32", "float64", ">f4"]
PROTOCOLS = [2, 3, 4, 5]


def _array(dtype: str = "float64", *, fortran: bool = False, shape=SHAPE) -> np.ndarray:
    arr = np.random.default_rng(7).normal(size=shape).astype(dtype)
    return np.asfortranarray(arr) if fortran else arr


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- a tiny assembler, to craft pickles opcode by opcode ------------------------

_OPS = {op.name: op for op in pickletools.opcodes}


def _ops(data: bytes) -> list[tuple[str, object]]:
    """The opcodes of a (small, trusted) pickle, without FRAMEs."""
    return [(op.name, arg) for op, arg, _ in pickletools.genops(data) if op.name != "FRAME"]


def _asm(ops: list[tuple[str, object]]) -> bytes:
    """Encode opcodes (no frames: they are optional for readers)."""
    out = bytearray()
    for name, arg in ops:
        out += _OPS[name].code.encode("latin-1")
        if name in ("PROTO", "BININT1", "BINPUT", "BINGET"):
            out += bytes([arg])
        elif name == "BININT2":
            out += struct.pack("<H", arg)
        elif name == "BININT":
            out += struct.pack("<i", arg)
        elif name == "SHORT_BINUNICODE":
            out += bytes([len(arg.encode())]) + arg.encode()
        elif name == "BINUNICODE":
            out += struct.pack("<I", len(arg.encode())) + arg.encode()
        elif name == "SHORT_BINBYTES":
            out += bytes([len(arg)]) + arg
        elif name == "BINBYTES":
            out += struct.pack("<I", len(arg)) + arg
        elif name in ("BINBYTES8", "BYTEARRAY8"):
            out += struct.pack("<Q", len(arg)) + bytes(arg)
        elif name == "GLOBAL":
            out += arg.replace(" ", "\n").encode() + b"\n"
        else:
            assert arg is None, name
    return bytes(out)


def _numpy1(data: bytes) -> bytes:
    """A pickle as numpy 1.x writes it: ``numpy.core`` instead of ``numpy._core``."""
    ops = [
        (name, arg.replace("numpy._core", "numpy.core") if isinstance(arg, str) else arg)
        for name, arg in _ops(data)
    ]
    return _asm(ops)


# -- round trips ----------------------------------------------------------------


def _check_reads(pa, arr: np.ndarray) -> None:
    n = arr.shape[0]
    assert len(pa) == n
    for start, stop in [(0, n), (0, 0), (5, 5), (0, 1), (3, 17), (n - 1, n), (n, n), (10, n)]:
        rows = pa.read_rows(start, stop)
        assert rows.shape == (stop - start, arr.shape[1])
        assert rows.dtype == pa.dtype
        assert rows.flags.c_contiguous
        np.testing.assert_array_equal(rows, arr[start:stop], strict=True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fortran", [False, True], ids=["C", "F"])
def test_round_trip(tmp_path, protocol, dtype, fortran):
    arr = _array(dtype, fortran=fortran)
    path = _write(tmp_path / "a.pickle", pickle.dumps(arr, protocol=protocol))
    pa = open_pickled_array(path)
    assert pa.shape == SHAPE
    assert pa.dtype == np.dtype(dtype)
    assert pa.fortran_order is fortran
    assert pa.protocol == protocol
    assert pa.path == path
    _check_reads(pa, arr)
    if protocol == 2:
        assert pa.storage == "latin1-text" and pa.data_offset is None
    else:
        assert pa.storage == "raw"
        raw = path.read_bytes()[pa.data_offset : pa.data_offset + arr.nbytes]
        assert raw == arr.tobytes(order="A")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("dtype", ["int8", "uint16", "<i4", ">i8", "uint64", "bool"])
def test_round_trip_integer_dtypes(tmp_path, protocol, dtype):
    arr = (_array() * 50).astype(dtype)
    pa = open_pickled_array(_write(tmp_path / "a.pickle", pickle.dumps(arr, protocol=protocol)))
    assert pa.dtype == np.dtype(dtype)
    _check_reads(pa, arr)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (1, 9), (9, 1), (300, 100)])
def test_round_trip_shapes(tmp_path, protocol, shape):
    arr = _array("float32", shape=shape)
    pa = open_pickled_array(_write(tmp_path / "a.pickle", pickle.dumps(arr, protocol=protocol)))
    assert pa.shape == shape
    np.testing.assert_array_equal(pa.read_rows(0, shape[0]), arr)
    np.testing.assert_array_equal(pa.read_rows(shape[0] // 2, shape[0]), arr[shape[0] // 2 :])


def test_protocol2_text_with_many_checkpoints(tmp_path):
    # Bytes >= 0x80 take two bytes of UTF-8: the row index must map them right.
    arr = np.random.default_rng(1).integers(0, 256, size=(3000, 97), dtype=np.uint8)
    for fortran in (False, True):
        a = np.asfortranarray(arr) if fortran else arr
        path = _write(tmp_path / "p2.pickle", pickle.dumps(a, protocol=2))
        pa = open_pickled_array(path)
        assert pa.storage == "latin1-text"
        for start, stop in [(0, 3000), (1234, 2345), (2999, 3000), (0, 1)]:
            np.testing.assert_array_equal(pa.read_rows(start, stop), arr[start:stop])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("fortran", [False, True], ids=["C", "F"])
def test_numpy1_global_names(tmp_path, protocol, fortran):
    arr = _array("float32", fortran=fortran)
    data = _numpy1(pickle.dumps(arr, protocol=protocol))
    assert b"numpy.core" in data and b"numpy._core" not in data
    pa = open_pickled_array(_write(tmp_path / "np1.pickle", data))
    assert pa.fortran_order is fortran
    _check_reads(pa, arr)


def test_readonly_array_protocol5(tmp_path):
    arr = _array()
    arr.flags.writeable = False
    pa = open_pickled_array(_write(tmp_path / "ro.pickle", pickle.dumps(arr, protocol=5)))
    _check_reads(pa, arr)


def test_non_contiguous_array_protocol5(tmp_path):
    arr = _array(shape=(40, 22))[:, ::2]
    pa = open_pickled_array(_write(tmp_path / "nc.pickle", pickle.dumps(arr, protocol=5)))
    _check_reads(pa, arr)


def test_pickled_array_is_picklable(tmp_path):
    arr = _array()
    pa = open_pickled_array(_write(tmp_path / "a.pickle", pickle.dumps(arr)))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pa)).read_rows(2, 9), arr[2:9])


def test_read_rows_out_of_range(tmp_path):
    pa = open_pickled_array(_write(tmp_path / "a.pickle", pickle.dumps(_array())))
    for start, stop in [(-1, 3), (5, 4), (0, SHAPE[0] + 1)]:
        with pytest.raises(InputError, match="outside its 37 rows"):
            pa.read_rows(start, stop)


def test_file_truncated_after_open(tmp_path):
    path = _write(tmp_path / "a.pickle", pickle.dumps(_array(), protocol=4))
    pa = open_pickled_array(path)
    path.write_bytes(path.read_bytes()[: pa.data_offset + 100])
    with pytest.raises(InputError, match="shorter than when it was opened"):
        pa.read_rows(0, SHAPE[0])


# -- writer ---------------------------------------------------------------------


def _blocks(arr: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    start = 0
    for size in sizes:
        yield arr[start : start + size]
        start += size


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize("dtype", DTYPES + ["int16", "uint8"])
@pytest.mark.parametrize("fortran", [False, True], ids=["C", "F"])
def test_writer_matches_pickle(tmp_path, protocol, dtype, fortran):
    arr = _array(dtype, fortran=fortran)
    path = tmp_path / "w.pickle"
    write_pickled_array(
        path, arr.shape, dtype, _blocks(arr, [10, 0, 1, 26]),
        fortran_order=fortran, protocol=protocol,
    )
    data = path.read_bytes()
    assert data == pickle.dumps(arr, protocol=protocol)
    np.testing.assert_array_equal(pickle.loads(data), arr)
    assert not (tmp_path / "w.pickle.partial").exists()


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize(
    "shape",
    # around pickle's 64 KiB frame target, and payloads written outside frames
    [(65536 - 200, 1), (65536 - 130, 1), (65536 - 100, 1), (65536, 1), (300, 300), (0, 7)],
)
def test_writer_frames_match_pickle(tmp_path, protocol, shape):
    arr = np.arange(shape[0] * shape[1], dtype=np.uint8).reshape(shape)
    path = tmp_path / "w.pickle"
    write_pickled_array(path, shape, np.uint8, [arr[:1000], arr[1000:]], protocol=protocol)
    assert path.read_bytes() == pickle.dumps(arr, protocol=protocol)


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (0, 4)])
def test_writer_fortran_order_of_a_vector(tmp_path, shape):
    # numpy pickles arrays that are both C- and F-contiguous as C-ordered.
    arr = np.asfortranarray(_array(shape=shape))
    path = tmp_path / "w.pickle"
    write_pickled_array(path, shape, arr.dtype, [arr], fortran_order=True)
    assert path.read_bytes() == pickle.dumps(arr, protocol=4)


def test_writer_output_is_read_back(tmp_path):
    arr = _array("float32", shape=(500, 64))
    path = tmp_path / "w.pickle"
    write_pickled_array(path, arr.shape, arr.dtype, _blocks(arr, [128] * 4), protocol=5)
    pa = open_pickled_array(path)
    np.testing.assert_array_equal(pa.read_rows(100, 450), arr[100:450])


@pytest.mark.parametrize(
    ("shape", "dtype", "blocks", "match"),
    [
        ((4, 3), "f4", [np.zeros((3, 3), "f4")], "hold 3 rows"),
        ((4, 3), "f4", [np.zeros((3, 3), "f4")] * 2, "more than the 4 rows"),
        ((4, 3), "f4", [np.zeros((4, 3), "f8")], "dtype '<f8'"),
        ((4, 3), "f4", [np.zeros((4, 2), "f4")], r"shape \(4, 2\)"),
        ((4, 3), "f4", [np.zeros(12, "f4")], r"shape \(12,\)"),
        ((4, -3), "f4", [], "negative"),
        ((4, 3, 1), "f4", [], "n_rows, n_cols"),
        ((4, 3), "O", [], "cannot write dtype"),
        ((4, 3), "c8", [], "cannot write dtype"),
    ],
)
def test_writer_rejects_inconsistent_blocks(tmp_path, shape, dtype, blocks, match):
    path = tmp_path / "w.pickle"
    path.write_bytes(b"previous")
    with pytest.raises(InputError, match=match):
        write_pickled_array(path, shape, dtype, blocks)
    assert path.read_bytes() == b"previous"
    assert not (tmp_path / "w.pickle.partial").exists()


def test_writer_removes_partial_file_when_blocks_fail(tmp_path):
    def failing() -> Iterator[np.ndarray]:
        yield np.zeros((2, 3), "f4")
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_pickled_array(tmp_path / "w.pickle", (4, 3), "f4", failing())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("protocol", [2, 6])
def test_writer_rejects_protocol(tmp_path, protocol):
    with pytest.raises(InputError, match="use 3, 4 or 5"):
        write_pickled_array(tmp_path / "w.pickle", (1, 1), "f4", [], protocol=protocol)


def test_memory_is_bounded(tmp_path):
    n_rows, n_cols = 25_600, 1024  # float64: 200 MiB
    block_rows = 800  # 6.25 MiB per block
    path = tmp_path / "big.pickle"

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, n_rows, block_rows):
            yield np.broadcast_to(
                np.arange(start, start + block_rows, dtype=np.float64)[:, None],
                (block_rows, n_cols),
            )

    tracemalloc.start()
    try:
        write_pickled_array(path, (n_rows, n_cols), np.float64, blocks(), protocol=4)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pa = open_pickled_array(path)
        checksum = 0.0
        for start in range(0, n_rows, block_rows):
            rows = pa.read_rows(start, start + block_rows)
            checksum += float(rows[:, -1].sum())
            del rows
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    path.unlink()  # do not keep 200 MiB in pytest's kept temporary directories
    assert size > 200 * 2**20
    assert checksum == n_rows * (n_rows - 1) / 2
    assert write_peak < size / 8
    assert read_peak < size / 8


# -- refusing code and other objects --------------------------------------------


class _Exploit:
    def __init__(self, func: Callable, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Subclass(np.ndarray):
    pass


def _hidden_system_call(pwned: Path) -> bytes:
    """A valid array pickle whose dtype slot calls ``os.system`` instead."""
    ops = _ops(pickle.dumps(_array(), protocol=4))
    start = ops.index(("SHORT_BINUNICODE", "dtype")) - 1  # BINGET of 'numpy'
    stop = ops.index(("TUPLE3", None), start) + 1  # the dtype's arguments
    attack = [
        ("SHORT_BINUNICODE", "os"),
        ("SHORT_BINUNICODE", "system"),
        ("STACK_GLOBAL", None),
        ("SHORT_BINUNICODE", f"touch {pwned}"),
        ("TUPLE1", None),
    ]
    return _asm(ops[:start] + attack + ops[stop:])


def _unsafe_payloads(pwned: Path) -> dict[str, bytes]:
    return {
        "os.system": pickle.dumps(_Exploit(os.system, (f"touch {pwned}",))),
        "eval": pickle.dumps(_Exploit(builtins.eval, (f"open({str(pwned)!r}, 'w')",))),
        "subprocess": pickle.dumps(_Exploit(subprocess.call, (["touch", str(pwned)],))),
        "system-protocol-0": pickle.dumps(_Exploit(os.system, (f"touch {pwned}",)), 0),
        "hidden-global": _hidden_system_call(pwned),
        "subclass": pickle.dumps(_array().view(_Subclass)),
        "object-dtype": pickle.dumps(np.array([[1, "a"], [2, "b"]], dtype=object)),
        "structured-dtype": pickle.dumps(np.zeros((3, 2), dtype=[("a", "f4")])),
        "dict": pickle.dumps({"descriptors": _array()}),
        "list-of-str": pickle.dumps(["a", "b"]),
        "float": pickle.dumps(1.5),
        "numpy-scalar": pickle.dumps(np.float32(2)),
        "tuple-of-arrays": pickle.dumps((_array(), _array())),
        "masked-array": pickle.dumps(np.ma.masked_array(_array())),
        "complex": pickle.dumps(np.zeros((2, 2), np.complex64)),
    }


_UNSAFE_NAMES = list(_unsafe_payloads(Path("x")))


@pytest.mark.parametrize("payload", _UNSAFE_NAMES)
def test_unsafe_pickles_are_refused(tmp_path, payload):
    pwned = tmp_path / "pwned"
    path = _write(tmp_path / "descriptors.pickle", _unsafe_payloads(pwned)[payload])
    with pytest.raises(UnsafePickleError, match="descriptors.pickle: refuses") as info:
        open_pickled_array(path)
    assert str(path) in str(info.value)
    assert not pwned.exists()


@pytest.mark.parametrize("payload", _UNSAFE_NAMES)
def test_unsafe_pickles_are_refused_by_restricted_loader(tmp_path, payload):
    pwned = tmp_path / "pwned"
    path = _write(tmp_path / "descriptors.pickle", _unsafe_payloads(pwned)[payload])
    with pytest.raises(InputError, match="descriptors.pickle") as info:
        open_pickled_array(path, allow_restricted=True)
    if payload in ("os.system", "eval", "subprocess", "system-protocol-0", "subclass"):
        assert isinstance(info.value, UnsafePickleError)
        assert "restricted loader refuses global" in str(info.value)
    assert not pwned.exists()


def test_refusal_names_the_global(tmp_path):
    path = _write(tmp_path / "osnet.pickle", pickle.dumps(_Exploit(os.system, ("true",))))
    with pytest.raises(UnsafePickleError, match=r"refuses global '(posix|os) system' at byte"):
        open_pickled_array(path)


def test_out_of_band_buffers_are_refused(tmp_path):
    data = pickle.dumps(_array(), protocol=5, buffer_callback=lambda buffer: False)
    with pytest.raises(InputError, match="out-of-band"):
        open_pickled_array(_write(tmp_path / "oob.pickle", data))


# -- malformed files --------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_truncation_is_an_input_error(tmp_path, protocol):
    data = pickle.dumps(_array("float32", shape=(3, 4)), protocol=protocol)
    path = tmp_path / "t.pickle"
    for size in range(len(data)):
        path.write_bytes(data[:size])
        with pytest.raises(InputError, match="t.pickle"):
            open_pickled_array(path)


@pytest.mark.parametrize("opcode", ["BINBYTES8", "BYTEARRAY8"])
def test_huge_declared_length_is_not_allocated(tmp_path, opcode):
    ops = _ops(pickle.dumps(_array(shape=(64, 128)), protocol=4 if opcode == "BINBYTES8" else 5))
    index = next(i for i, (name, _) in enumerate(ops) if name in ("BINBYTES", "BYTEARRAY8"))
    payload = ops[index][1]
    head = _asm(ops[:index]) + _OPS[opcode].code.encode("latin-1") + struct.pack("<Q", 2**40)
    path = _write(tmp_path / "huge.pickle", head + payload + _asm(ops[index + 1 :]))
    tracemalloc.start()
    try:
        for restricted in (False, True):
            with pytest.raises(InputError, match=r"huge.pickle: .*1099511627776"):
                open_pickled_array(path, allow_restricted=restricted)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def _with_shape(data: bytes, rows: int) -> bytes:
    ops = _ops(data)
    index = ops.index(("BININT1", SHAPE[0]))
    return _asm(ops[:index] + [("BININT1", rows)] + ops[index + 1 :])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: b"", "empty file"),
        (lambda: np.random.default_rng(3).bytes(4000), "not a valid pickle|refuses"),
        (lambda: b"\xff" + pickle.dumps(_array()), r"unknown opcode byte 0xff at byte 0"),
        (lambda: _with_shape(pickle.dumps(_array(), protocol=4), 36), "needs 3168 bytes"),
        (lambda: _with_shape(pickle.dumps(_array(), protocol=5), 38), "needs 3344 bytes"),
        (lambda: _with_shape(pickle.dumps(_array(), protocol=2), 36), "needs 3168 bytes"),
        (lambda: pickle.dumps(np.zeros((2, 3, 4))), r"expected a 2-D array, got shape \(2, 3,"),
        (lambda: pickle.dumps(np.zeros(5)), "expected a 2-D array"),
        (lambda: pickle.dumps(np.array(1.0)), "expected a 2-D array"),
        (lambda: pickle.dumps(_array())[:-1] + b"N.", "STOP with 2 items"),
        (lambda: b"\x80\x09" + pickle.dumps(_array())[2:], "unsupported pickle protocol 9"),
    ],
    ids=["empty", "random", "bad-opcode", "p4-shape", "p5-shape", "p2-shape", "3d", "1d",
         "0d", "extra-item", "protocol-9"],
)
def test_malformed_files(tmp_path, make, match):
    path = _write(tmp_path / "bad.pickle", make())
    with pytest.raises(InputError, match=match) as info:
        open_pickled_array(path)
    assert "bad.pickle" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        open_pickled_array(tmp_path / "missing.pickle")


def test_negative_dimension(tmp_path):
    ops = _ops(pickle.dumps(_array(), protocol=4))
    index = ops.index(("BININT1", SHAPE[0]))
    data = _asm(ops[:index] + [("BININT", -37)] + ops[index + 1 :])
    with pytest.raises(InputError, match="negative or absurd"):
        open_pickled_array(_write(tmp_path / "neg.pickle", data))


# -- fuzzing ----------------------------------------------------------------------


_BASES = [
    pickle.dumps(_array("float32", fortran=fortran, shape=(5, 3)), protocol=protocol)
    for protocol in PROTOCOLS
    for fortran in (False, True)
]


@st.composite
def _mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_BASES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "delete", "insert", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if kind == "set" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[i:]
    return bytes(data)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(
    max_examples=200,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=_mutated(), restricted=st.booleans())
def test_fuzz_only_input_errors(fuzz_dir, data, restricted):
    path = _write(fuzz_dir / "fuzz.pickle", data)
    try:
        pa = open_pickled_array(path, allow_restricted=restricted)
        rows = pa.read_rows(0, len(pa))
    except InputError:
        return
    assert rows.shape == pa.shape
    assert rows.dtype == pa.dtype


# -- the restricted loader --------------------------------------------------------


def test_dataframe_needs_the_restricted_loader(tmp_path):
    import pandas as pd
    values = _array(shape=(6, 3))
    frame = pd.DataFrame(values, columns=["a", "b", "c"])
    path = _write(tmp_path / "frame.pickle", pickle.dumps(frame))
    hint = "allow_restricted=True / --allow-restricted-pickle"
    with pytest.raises(UnsafePickleError, match=hint):
        open_pickled_array(path)
    pa = open_pickled_array(path, allow_restricted=True)
    assert pa.storage == "memory" and pa.data_offset is None
    assert pa.shape == (6, 3) and pa.dtype == np.float64
    np.testing.assert_array_equal(pa.read_rows(0, 6), values)
    np.testing.assert_array_equal(pa.read_rows(2, 4), values[2:4])
    assert pa.read_rows(2, 4).flags.c_contiguous


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_restricted_loader_reads_range_indexed_frames(tmp_path, protocol):
    import pandas as pd
    values = _array("float32", shape=(5, 4))
    path = _write(tmp_path / "frame.pickle", pickle.dumps(pd.DataFrame(values), protocol=protocol))
    pa = open_pickled_array(path, allow_restricted=True)
    assert pa.protocol == protocol
    np.testing.assert_array_equal(pa.read_rows(0, 5), values)


def test_restricted_loader_reads_list_of_rows(tmp_path):
    rows = [np.arange(4.0), np.ones(4), np.zeros(4)]
    path = _write(tmp_path / "rows.pickle", pickle.dumps(rows))
    with pytest.raises(UnsafePickleError, match="allow_restricted"):
        open_pickled_array(path)
    pa = open_pickled_array(path, allow_restricted=True)
    np.testing.assert_array_equal(pa.read_rows(0, 3), np.stack(rows))


def test_restricted_loader_reads_numpy1_names(tmp_path):
    arr = _array()
    data = _numpy1(pickle.dumps([arr[0], arr[1]], protocol=4))
    pa = open_pickled_array(_write(tmp_path / "np1.pickle", data), allow_restricted=True)
    np.testing.assert_array_equal(pa.read_rows(0, 2), arr[:2])


def test_plain_array_with_restricted_flag_is_still_streamed(tmp_path):
    arr = _array()
    path = _write(tmp_path / "a.pickle", pickle.dumps(arr))
    pa = open_pickled_array(path, allow_restricted=True)
    assert pa.storage == "raw"
    _check_reads(pa, arr)


def test_restricted_loader_checks_dtype_states(tmp_path):
    # numpy's dtype.__setstate__ crashes the interpreter on this short state.
    ops = _ops(pickle.dumps(_array(), protocol=4))
    index = ops.index(("SHORT_BINUNICODE", "<"))
    assert ops[index + 2 : index + 4] == [("NONE", None), ("NONE", None)]
    path = _write(tmp_path / "state.pickle", _asm(ops[: index + 2] + ops[index + 4 :]))
    with pytest.raises(UnsafePickleError, match="state.pickle: refuses dtype 'f8' with state"):
        open_pickled_array(path)
    with pytest.raises(UnsafePickleError, match="restricted loader refuses dtype '<f8'"):
        open_pickled_array(path, allow_restricted=True)


def test_restricted_loader_refuses_ragged_rows(tmp_path):
    path = _write(tmp_path / "ragged.pickle", pickle.dumps([np.zeros(3), np.zeros(4)]))
    with pytest.raises(InputError, match="not a 2-D array"):
        open_pickled_array(path, allow_restricted=True)
