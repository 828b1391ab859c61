"""A non-editable `pip install .` into a fresh venv runs the smoke preset from another directory:
the presets, the shipped teacher, the launcher and the teacher server's child process all come
from the installed package, with no checkout on the path."""
import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from tests._paths import CACHE_ENV, REPO

pytestmark = pytest.mark.e2e

# What a source distribution holds; the rest of a working tree (runs, caches) stays behind.
SOURCE = ("setup.py", "setup.cfg", "constraints.txt", "README.md", "comd_jax")


def _copy_source(dest):
    dest.mkdir()
    for name in SOURCE:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dest / name)
    return dest


def test_a_non_editable_install_runs_the_smoke_preset_from_another_directory(tmp_path):
    source = _copy_source(tmp_path / "source")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    # The dependencies (and pip) come from this interpreter's site-packages as a plain path, so
    # its .pth files, the checkout's editable finder among them, do not run in the venv.
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "jax"))]
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write("\n".join(ours) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    if os.environ.get(CACHE_ENV):  # the session's compilation cache, as every launched run has it
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ[CACHE_ENV]
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr[-4000:]
    shutil.rmtree(source)  # nothing may read the source tree from here on

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import comd_jax.configs, comd_jax.distill.teacher_manifest as m; "
                            "m.verify(); print(comd_jax.__file__)"],
                           env=env, capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert where.returncode == 0, where.stderr[-4000:]  # the shipped teacher came along, sha256 intact
    assert where.stdout.strip().startswith(str(env_dir)), where.stdout  # not the checkout's editable copy

    run = subprocess.run([python, "-m", "comd_jax.train", "--config=configs/comd.py:smoke", "--workdir=run"],
                         env=env, capture_output=True, text=True, cwd=elsewhere, timeout=1200)
    assert run.returncode == 0, run.stderr[-6000:]
    results = json.load(open(elsewhere / "run" / "report" / "results.json"))
    assert [r["round"] for r in results["rounds"]] == [0] and results["teacher"]["world"]["mean"] >= 0
    # The config the teacher server's child read back is the installed package's snapshot.
    assert json.load(open(elsewhere / "run" / "config.json"))["preset"] == "smoke"
    assert not (elsewhere / "configs").exists()
