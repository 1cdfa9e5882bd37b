"""Hostile and malformed descriptor files through the public entry points (open_source, convert, CLI).

tests/test_pickle_stream.py covers the pickle parser itself; this file adds code-running globals
that live inside numpy or the import machinery, absurd declared shapes, the end-to-end CLI path,
and a fuzz test over EVERY reader format with a hard time limit per example.
"""

from __future__ import annotations

import builtins
import importlib
import io
import pickle
import pickletools
import signal
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import numpy.testing._private.utils as np_test_utils
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamclust.cli import main
from streamclust.errors import InputError, UnsafePickleError
from streamclust.io.pickle_stream import open_pickled_array
from streamclust.io.sources import open_source
from streamclust.io.store import CaseStore


class _Call:
    """Pickles as ``func(*args)``: what a hostile file makes ``pickle.load`` run."""

    def __init__(self, func, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile(pwned: Path) -> dict[str, bytes]:
    touch = f"open({str(pwned)!r}, 'w').close()"
    return {
        "__import__": pickle.dumps(_Call(builtins.__import__, ("os",))),
        "importlib.import_module": pickle.dumps(_Call(importlib.import_module, ("subprocess",))),
        "exec": pickle.dumps(_Call(builtins.exec, (touch,))),
        "getattr": pickle.dumps(_Call(getattr, (np.float32, "__subclasses__"))),
        # code-running callables INSIDE numpy: the allow-list is of functions, not of modules
        "numpy-runstring": pickle.dumps(_Call(np_test_utils.runstring, (touch, {}))),
        "numpy.load": pickle.dumps(_Call(np.load, (str(pwned),))),
        "nested-containers": pickle.dumps({"sets": [(np.zeros((2, 2), np.float32),)]}, protocol=4),
        "object-dtype-2d": pickle.dumps(np.array([[object(), 1]], dtype=object)),
    }


@pytest.mark.parametrize("name", list(_hostile(Path("x"))))
@pytest.mark.parametrize("restricted", [False, True])
def test_code_and_other_objects_are_refused_without_running(tmp_path, name, restricted):
    pwned = tmp_path / "pwned"
    path = tmp_path / "osnet.pickle"
    path.write_bytes(_hostile(pwned)[name])
    with pytest.raises(InputError, match="osnet.pickle") as info:
        open_source(path, allow_restricted_pickle=restricted)
    if name not in ("nested-containers", "object-dtype-2d") or not restricted:
        assert isinstance(info.value, UnsafePickleError)
    assert not pwned.exists()


def test_cli_convert_refuses_a_hostile_pickle_in_one_line_and_writes_no_set(tmp_path, capsys):
    pwned = tmp_path / "pwned"
    case = tmp_path / "case"
    (case / "descriptors").mkdir(parents=True)
    pd.DataFrame({"paths": ["a.jpg", "b.jpg"]}).to_csv(case / "images_paths.csv", index=False)
    np.save(case / "descriptors" / "good.npy", np.ones((2, 3), np.float32))
    (case / "descriptors" / "osnet.pickle").write_bytes(_hostile(pwned)["exec"])
    assert main(["convert", str(case), "-o", str(tmp_path / "s.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "osnet.pickle: refuses global" in err[0]
    assert not pwned.exists()
    assert not (tmp_path / "s.zarr").exists()  # refused while opening the sources, before any write


def _with_shape(rows: int, cols: int, protocol: int = 4) -> bytes:
    """A valid float32 array pickle whose declared shape is replaced by (rows, cols)."""
    data = pickle.dumps(np.zeros((3, 4), np.float32), protocol=protocol)
    ops = list(pickletools.genops(data))
    i = next(i for i, (op, arg, _) in enumerate(ops)
             if op.name == "BININT1" and arg == 3 and ops[i + 1][0].name == "BININT1" and ops[i + 1][1] == 4)
    start, end = ops[i][2], ops[i + 2][2]

    def long1(value: int) -> bytes:
        raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + struct.pack("<B", len(raw)) + raw

    return data[:start] + long1(rows) + long1(cols) + data[end:]


@pytest.mark.parametrize("shape", [(2**39, 2**39), (2**40, 2**40), (2**62, 1), (1, 2**62)])
def test_absurd_declared_shapes_are_refused_without_allocation(tmp_path, shape):
    path = tmp_path / "absurd.pickle"
    path.write_bytes(_with_shape(*shape))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"absurd\.pickle: .*(needs \d+ bytes|absurd dimension)"):
            open_pickled_array(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# -- fuzzing every reader -----------------------------------------------------------------


def _bases() -> dict[str, bytes]:
    a = np.arange(15, dtype=np.float32).reshape(5, 3)
    out = {}
    buf = io.BytesIO()
    np.save(buf, a)
    out["npy"] = buf.getvalue()
    for name, save in (("npz", np.savez), ("zipped.npz", np.savez_compressed)):
        buf = io.BytesIO()
        save(buf, a)
        out[name] = buf.getvalue()
    out["csv"] = pd.DataFrame(a).to_csv(index=False).encode()
    out["txt"] = b"1 2 3\n4 5 6\n7 8 9\n"
    buf = io.BytesIO()
    pd.DataFrame(a, columns=["x", "y", "z"]).to_parquet(buf)
    out["parquet"] = buf.getvalue()
    out["pickle"] = pickle.dumps(a, protocol=5)
    return out


_BASES = _bases()


@st.composite
def _mutated_file(draw) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(_BASES)))
    data = bytearray(_BASES[kind])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "delete", "insert", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if op == "set" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[i:]
    return kind.rsplit(".", 1)[-1], bytes(data)


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("one example ran for more than 5 s")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-formats")


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=_mutated_file())
def test_fuzz_every_format_raises_only_input_errors_and_never_hangs(fuzz_dir, case):
    suffix, data = case
    path = fuzz_dir / f"fuzz.{suffix}"
    path.write_bytes(data)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, 5.0)  # a hard bound: hypothesis' deadline only reports afterwards
    try:
        src = open_source(path)
        rows = src.read_rows(0, src.shape[0])
    except InputError:
        return
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert rows.shape == tuple(src.shape)


def test_fuzz_store_left_untouched_by_a_malformed_file(tmp_path):
    """A malformed file among good ones: the conversion is refused before anything is written."""
    case = tmp_path / "case"
    (case / "descriptors").mkdir(parents=True)
    pd.DataFrame({"paths": [f"{i}.jpg" for i in range(5)]}).to_csv(case / "images_paths.csv", index=False)
    (case / "descriptors" / "a.npz").write_bytes(_BASES["zipped.npz"][:-30])
    assert main(["convert", str(case), "-o", str(tmp_path / "s.zarr"), "--quiet"]) == 2
    assert not (tmp_path / "s.zarr").exists()
    np.save(case / "descriptors" / "a.npy", np.ones((5, 2), np.float32))
    (case / "descriptors" / "a.npz").unlink()
    assert main(["convert", str(case), "-o", str(tmp_path / "s.zarr"), "--quiet"]) == 0
    assert CaseStore(tmp_path / "s.zarr").descriptor_names() == ["a"]
