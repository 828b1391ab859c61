"""launch/tpu's shell scripts without gcloud: they parse, and `run_finished` (env.sh), what
relaunch.sh stops on, sees a finished run of either kind — WORKDIR/summary.json (training
stages) or WORKDIR/report/results.json (a CoMD run) — in a gs:// WORKDIR and in a mounted one
(looked at on worker 0). A stub `gcloud` stands in: `storage ls gs://B/...` looks under a
local folder, `ssh --worker=0 --command=C` runs C here and logs it."""
from __future__ import annotations

import glob
import os
import stat
import subprocess

import pytest
from tests._paths import REPO

TPU = os.path.join(REPO, "launch", "tpu")

GCLOUD = r"""#!/usr/bin/env bash
echo "$*" >> "$GCLOUD_LOG"
case "$1 $2" in
  "storage ls") path="$FAKE_GCS/${3#gs://}"; [[ -e "$path" ]]; exit ;;
  "config get-value") echo stub-project; exit 0 ;;
esac
if [[ "$*" == *"queued-resources"*"describe"* ]]; then echo "$QR_STATE"; exit 0; fi
if [[ "$*" == *" ssh "* ]]; then
  [[ -n "${SSH_DOWN:-}" ]] && exit 255
  for arg in "$@"; do
    [[ "$arg" == --command=* ]] && HOME="$FAKE_HOME" exec bash -c "${arg#--command=}"
  done
fi
echo "stub gcloud: unexpected call: $*" >&2
exit 2
"""


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(GCLOUD)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "gcs").mkdir()
    (tmp_path / "home").mkdir()
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PROJECT": "p",
            "GCLOUD_LOG": str(tmp_path / "gcloud.log"), "FAKE_GCS": str(tmp_path / "gcs"),
            "FAKE_HOME": str(tmp_path / "home")}


def finished(env, workdir: str, **extra) -> bool:
    proc = subprocess.run(["bash", "-c", f'source {TPU}/env.sh && run_finished'],
                          env={**env, "WORKDIR": workdir, **extra}, capture_output=True, text=True, timeout=30)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


@pytest.mark.parametrize("script", sorted(glob.glob(os.path.join(TPU, "*.sh")))
                         + [os.path.join(REPO, "launch", "gpu", "train.sbatch")])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", script], check=True, timeout=30)


@pytest.mark.parametrize("last_file", ["summary.json", "report/results.json"])
def test_a_finished_run_in_a_bucket(env, last_file):
    assert not finished(env, "gs://bucket/run")
    touch(os.path.join(env["FAKE_GCS"], "bucket", "run", "report", "report.md"))  # a CoMD run mid-report
    assert not finished(env, "gs://bucket/run")
    touch(os.path.join(env["FAKE_GCS"], "bucket", "run", last_file))
    assert finished(env, "gs://bucket/run")
    assert " ssh " not in open(env["GCLOUD_LOG"]).read()


@pytest.mark.parametrize("last_file", ["summary.json", "report/results.json"])
def test_a_finished_run_on_a_mount_is_looked_for_on_worker_0(env, tmp_path, last_file):
    workdir = str(tmp_path / "mnt" / "bucket" / "run")
    assert not finished(env, workdir)
    touch(os.path.join(workdir, last_file))
    assert finished(env, workdir)
    assert not finished(env, workdir, SSH_DOWN="1")  # an unreachable worker: not finished, ask again
    assert "--worker=0" in open(env["GCLOUD_LOG"]).read().splitlines()[-1]
    # A relative WORKDIR is where train.sh's run put it: under ~/REMOTE_DIR on the worker.
    touch(os.path.join(env["FAKE_HOME"], "comd_jax", "rel", last_file))
    assert finished(env, "rel")


def test_relaunch_stops_when_a_comd_run_has_finished(env, tmp_path):
    workdir = str(tmp_path / "mnt" / "run")
    touch(os.path.join(workdir, "report", "results.json"))
    proc = subprocess.run([os.path.join(TPU, "relaunch.sh")], env={**env, "SPOT": "1", "WORKDIR": workdir,
                                                                   "QR_STATE": "ACTIVE", "INTERVAL": "1"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "training finished" in proc.stdout
