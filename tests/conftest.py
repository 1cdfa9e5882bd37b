"""Shared fixtures: demo cases built once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from streamclust.datasets import make_demo_case
from streamclust.io.ingest import convert_case


@pytest.fixture(scope="session")
def demo_case(tmp_path_factory) -> Callable[..., Path]:
    """``demo_case(n_rows, seed=0)`` -> a folder with ``case/`` (the raw files of a demo case of
    ``n_rows`` images, without images.zip) and ``case.zarr`` (converted).

    Built once per session for each ``(n_rows, seed)``; tests that ask for the same one share it.
    Studies add runs to the store and read theirs back by run id, so sharing is safe.  A test that
    damages or rewrites the store, or counts its runs, copies it first (or compares with the runs
    there before it); a test that only adds a run it does not need kept should study a copy too.
    """
    built: dict[tuple[int, int], Path] = {}

    def build(n_rows: int, seed: int = 0) -> Path:
        if (n_rows, seed) not in built:
            root = tmp_path_factory.mktemp(f"demo-{n_rows}-seed{seed}")
            make_demo_case(root / "case", n_rows=n_rows, seed=seed, images=False)
            convert_case(root / "case", root / "case.zarr")
            built[n_rows, seed] = root
        return built[n_rows, seed]

    return build
