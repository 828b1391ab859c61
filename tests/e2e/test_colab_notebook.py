"""The Colab demo's code cells run on CPU, shrunk to the smallest smoke run.

Cells tagged (or starting with the comment) `colab-only` / `tpu-only` are
skipped: they install packages or need a TPU. The rest run in order, in one
fresh interpreter, as a notebook kernel would run them.
"""
import json
import os
import subprocess
import sys

import pytest
from tests._paths import REPO

pytestmark = pytest.mark.e2e  # slow: the quick loop is pytest -m "not e2e"

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = os.path.join(REPO, "launch", "colab_tpu_demo.ipynb")
SKIP = ("colab-only", "tpu-only")
# The least that still runs every stage of the smoke preset once, with its evaluations.
TINY = {"data.num_captions": 16, "data.num_instructions": 16, "data.num_heldout": 8,
        **{f"{s}.{k}": v for s in ("stage0", "stage1", "tune")
           for k, v in (("total_steps", 1), ("global_batch", 2), ("eval_batches", 1), ("log_every", 1))}}


def _overrides() -> dict:
    """TINY, plus no distillation rounds where the preset has them (the rounds have their own tests)."""
    from comd_jax import config as config_lib

    return {**TINY, "distill.rounds": 0} if "distill" in config_lib.preset("smoke") else dict(TINY)


def _runnable_cells(nb) -> list:
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", []))
        first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
        if tags & set(SKIP) or any(first.startswith(f"# {m}") for m in SKIP):
            continue
        assert not any(l.lstrip().startswith(("!", "%")) for l in cell.source.splitlines()), \
            f"shell/magic line in a cell the CPU test runs; tag it colab-only:\n{cell.source}"
        cells.append(cell.source)
    return cells


def test_notebook_is_valid_and_marks_its_install_and_tpu_cells():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    tagged = [set(c.metadata.get("tags", [])) for c in nb.cells if c.cell_type == "code"]
    assert {"colab-only"} in tagged and {"tpu-only"} in tagged


def test_notebook_code_cells_run_on_cpu(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    script = "\n\n".join(_runnable_cells(nb))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COMD_REPO": REPO, "COMD_DEMO_WORKDIR": str(tmp_path / "run"),
           "COMD_DEMO_OVERRIDES": json.dumps(_overrides()),
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| tune |" in proc.stdout  # the summary table, one row per stage
    assert "no report yet" in proc.stdout  # the missing report is said, not a crash
    assert (tmp_path / "run" / "summary.json").exists()


def test_stage_table_after_a_comd_run_comes_from_the_report(tmp_path, capsys):
    """A CoMD run (the smoke preset's rounds) writes report/results.json and no summary.json;
    the stage table must read it rather than say the run did not finish."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(source for source in _runnable_cells(nb) if "def summary_table" in source)
    (tmp_path / "report").mkdir()
    stage = lambda name: {"stage": name, "eval_before": {"loss": 7.0, "accuracy": 0.0},
                          "eval_after": {"loss": 0.5, "accuracy": 0.75}}
    (tmp_path / "report" / "results.json").write_text(json.dumps(
        {"rounds": [], "teacher_stages": [stage("teacher_tune")], "student_stages": [stage("tune")]}))
    exec(cell, {"json": json, "os": os, "WORKDIR": str(tmp_path)})
    out = capsys.readouterr().out
    assert "| teacher_tune | 7.000 → 0.500 | 0.00 → 0.75 |" in out and "| tune |" in out
    assert "did not finish" not in out
