"""A study that cannot fit its memory budget says so before any work, with the fix."""

from __future__ import annotations

import re

import pytest

from streamclust.cli import main
from streamclust.errors import MemoryBudgetError
from streamclust.io.store import CaseStore
from streamclust.study import LIBRARY_BASELINE, run_study
from streamclust.study.rules import block_budget


@pytest.fixture(scope="module")
def store(demo_case):
    return str(demo_case(300) / "case.zarr")


def test_study_refuses_a_budget_below_its_needs_up_front(store, tmp_path):
    before = {r.run_id for r in CaseStore(store).runs(include_incomplete=True)}  # the store is shared
    with pytest.raises(MemoryBudgetError, match=r"memory=668 MiB .*'efficientnet-b7' \(2560 features\)") as info:
        run_study(store, tmp_path / "out", memory="700MB")
    assert {r.run_id for r in CaseStore(store).runs(include_incomplete=True)} == before  # no run started
    assert not (tmp_path / "out").exists()
    # the minimum named in the message is enough; leaving the wide set out is too
    need = int(re.search(r"give at least memory='(\d+)MiB'", str(info.value)).group(1))
    dims = {"efficientnet-b7": 2560, "osnet": 512}
    assert block_budget(f"{need}MiB", dims) == (need << 20) - LIBRARY_BASELINE
    with pytest.raises(MemoryBudgetError):
        block_budget(f"{need - 1}MiB", dims)
    assert block_budget("700MB", {"osnet": 512}) == 700 * 10**6 - LIBRARY_BASELINE


def test_cli_budget_error_is_one_line(store, tmp_path, capsys):
    assert main(["study", str(store), "-o", str(tmp_path / "o"), "--memory", "700MB", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--memory" in err and "--descriptors" in err, err
