"""The command line: help that teaches, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from streamclust.cli import build_parser, main


@pytest.mark.parametrize("command", ["convert", "study", "assign", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--memory" in text and len(text.splitlines()) > 8


def test_study_help_names_every_algorithm_and_outlier_score(capsys):
    """The CLI spells the choices out (it imports no estimator to parse arguments): they must
    follow the study's registry and rules."""
    from streamclust.study import ALGORITHMS, OUTLIER_SCORES

    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"clustering algorithms compared on every set: {', '.join(ALGORITHMS)} " in text
    assert "{" + ",".join(OUTLIER_SCORES) + "}" in text


def test_python_dash_m_streamclust_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "streamclust", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("streamclust ")


def test_top_level_help_shows_typical_use():
    assert "typical use" in build_parser().format_help()


def test_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamclust.cli", "study", str(tmp_path / "nope.zarr"),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no streamclust store" in lines[0] and "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamclust.cli", "study", str(tmp_path / "nope.zarr"),
                           "-o", str(tmp_path / "out"), "--debug"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_bad_k_and_memory_are_named(tmp_path, capsys):
    case = tmp_path / "case"
    (case / "descriptors").mkdir(parents=True)
    np.save(case / "descriptors" / "a.npy", np.random.default_rng(0).normal(size=(50, 4)).astype("f4"))
    pd.DataFrame({"paths": [f"{i}.jpg" for i in range(50)]}).to_csv(case / "images_paths.csv", index=False)
    assert main(["convert", str(case), "-o", str(tmp_path / "s.zarr"), "--quiet"]) == 0
    assert main(["study", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "o"), "--k", "x:y", "--quiet"]) == 2
    assert "k='x:y'" in capsys.readouterr().err
    assert main(["study", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "o"), "--memory", "lots"]) == 2
    assert "memory='lots'" in capsys.readouterr().err
    assert main(["study", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "o"), "--k", "60", "--quiet"]) == 2
    assert "n_samples=50 should be >= n_clusters=60" in capsys.readouterr().err


def test_convert_script_is_a_thin_wrapper(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/convert_to_zarr.py", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "NAME=FILE" in proc.stdout


def test_bad_mix_names_the_parameter_and_the_sets(tmp_path, capsys):
    case = tmp_path / "case"
    (case / "descriptors").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.save(case / "descriptors" / f"{name}.npy", rng.normal(size=(50, 4)).astype("f4"))
    pd.DataFrame({"paths": [f"{i}.jpg" for i in range(50)]}).to_csv(case / "images_paths.csv", index=False)
    assert main(["convert", str(case), "-o", str(tmp_path / "s.zarr"), "--quiet"]) == 0
    study = ["study", str(tmp_path / "s.zarr"), "-o", str(tmp_path / "o"), "--quiet"]
    assert main([*study, "--mix", "a+c"]) == 2
    err = capsys.readouterr().err
    assert "--mix" in err and "'c'" in err and "available sets: a, b" in err
    assert main([*study, "--mix", "a+b:1"]) == 2
    assert "--mix" in capsys.readouterr().err
    assert main([*study, "--mix", "a"]) == 2
    assert "two or more" in capsys.readouterr().err


def test_bash_completion_completes_commands_and_each_commands_options(tmp_path):
    script = tmp_path / "complete.sh"
    script.write_text(subprocess.run([sys.executable, "-m", "streamclust", "completion", "bash"],
                                     capture_output=True, text=True, check=True).stdout)

    def complete(*words: str) -> list[str]:
        probe = (f"source {script}; COMP_WORDS=(streamclust {' '.join(words)}); COMP_CWORD={len(words)}; "
                 "_streamclust; echo ${COMPREPLY[@]}")
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("st") == ["study"]
    assert set(complete("study", "--out")) == {"--out", "--outlier-score", "--outlier-truth"}
    assert complete("assign", "--fail") == ["--fail-on-drift"]
    assert "--umap" not in complete("convert", "--")  # each command its own options


def test_zsh_completion_loads_bash_completion_first(capsys):
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("autoload -U +X bashcompinit && bashcompinit\n")


def test_study_json_prints_the_summary_and_quiet_prints_warnings_only(demo_case, tmp_path, capsys):
    import json
    import shutil

    store = tmp_path / "case.zarr"  # a copy: the shared case keeps no run of this test
    shutil.copytree(demo_case(300) / "case.zarr", store)
    args = ["study", str(store), "--descriptors", "vdc_color", "--k", "3:4", "--components", "8",
            "--no-report", "--algorithms", "kmeans"]
    assert main([*args, "-o", str(tmp_path / "a"), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # stdout is the JSON alone
    assert summary == json.loads((tmp_path / "a" / "summary.json").read_text())
    assert "vdc_color: k=" in err  # the step lines went to stderr
    assert main([*args, "-o", str(tmp_path / "b"), "--quiet"]) == 0
    out, err = capsys.readouterr()  # no step line, no table: warnings only (here k at the edge of 3..4)
    assert err == "" and all("widen the range" in line for line in out.splitlines())
    assert main([*args, "-o", str(tmp_path / "c")]) == 0
    out, _ = capsys.readouterr()
    assert "vdc_color: PCA 128 -> 8 dims" in out and "recommended set: vdc_color" in out
