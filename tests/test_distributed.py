"""Multi-host start-up: the choice of how to call jax.distributed.initialize,
from flags and SLURM/TPU environment variables, without initializing anything;
and the start-up flags every launcher shares."""
import os
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from comd_jax import distributed as dist
from tests._paths import REPO

SLURM_2x4 = {  # 2 nodes, one task per GPU (4 per node); this is task 5 = node 2, GPU 1
    "SLURM_JOB_ID": "77", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_TASKS_PER_NODE": "4(x2)",
}
SLURM_PER_NODE = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
                  "SLURM_JOB_NODELIST": "a100-n1,a100-n[2-4]", "SLURM_NTASKS_PER_NODE": "1"}


@pytest.mark.parametrize("nodelist, host", [
    ("node1", "node1"), ("gpu[007-008]", "gpu007"), ("gpu[3,5-6],cpu1", "gpu3"),
    ("a100-n1,a100-n[2-4]", "a100-n1"), ("rack2-[10-12]", "rack2-10")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert dist.first_host(nodelist) == host


def test_single_process_is_a_noop_plan():
    assert dist.plan(env={}).kind == "single"
    assert dist.plan(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).kind == "single"  # one-task salloc
    assert dist.plan("none", env=SLURM_2x4).kind == "single"
    p = dist.initialize(dist.plan(env={}))  # truly a no-op: no coordinator is contacted
    assert p.kind == "single"


def test_slurm_one_task_per_gpu():
    p = dist.plan(env=SLURM_2x4)
    assert (p.kind, p.coordinator_address, p.num_processes, p.process_id) == ("explicit", "gpu007:12355", 8, 5)
    assert p.local_device_ids == (1,)
    # --gpus-per-task=1: SLURM shows each task one GPU, which JAX then numbers 0.
    assert dist.plan(env={**SLURM_2x4, "CUDA_VISIBLE_DEVICES": "1"}).local_device_ids is None


def test_slurm_one_task_per_node_sees_all_its_gpus():
    p = dist.plan(env=SLURM_PER_NODE, port=2222)
    assert (p.coordinator_address, p.num_processes, p.process_id, p.local_device_ids) == \
        ("a100-n1:2222", 4, 2, None)


def test_step_variables_win_over_the_allocation():
    env = {**SLURM_PER_NODE, "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "a100-n[3-4]"}
    p = dist.plan(env=env)
    assert (p.coordinator_address, p.num_processes) == ("a100-n3:12355", 2)


def test_flags_alone_and_flags_over_slurm():
    p = dist.plan("auto", "10.0.0.2:1234", 3, 1, env={})
    assert (p.kind, p.coordinator_address, p.num_processes, p.process_id, p.source) == \
        ("explicit", "10.0.0.2:1234", 3, 1, "flags")
    p = dist.plan("auto", "head:999", env=SLURM_2x4)  # address from the flag, counts from SLURM
    assert (p.coordinator_address, p.num_processes, p.process_id) == ("head:999", 8, 5)


def test_tpu_modes():
    assert dist.plan("tpu", env={}).kind == "tpu"
    assert dist.plan(env={"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"}).kind == "tpu"
    assert dist.plan(env={"TPU_WORKER_HOSTNAMES": "localhost"}).kind == "single"


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="flags", coordinator_address="h:1", num_processes=2, process_id=2), "must be in"),
    (dict(mode="flags", num_processes=2, process_id=0), "coordinator_address"),
    (dict(mode="auto", coordinator_address="h:1"), "num_processes"),
    (dict(mode="slurm"), "srun"),
    (dict(mode="bogus"), "choose one of"),
])
def test_bad_settings_say_what_is_missing(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dist.plan(env={}, **kwargs)


# -- the launchers' shared start-up flags ---------------------------------------------------------
LAUNCHERS = ("train.py", "eval.py", "serve_teacher.py")


def parsed(*argv):
    fv = absl_flags.FlagValues()
    dist.define_flags(fv)
    fv(["prog", *argv])
    return fv


def test_flags_to_plan():
    assert dist.plan_from_flags(parsed(), env={}).kind == "single"
    p = dist.plan_from_flags(parsed("--coordinator_address=10.0.0.2:1234", "--num_processes=3", "--process_id=2"),
                             env={})
    assert (p.kind, p.coordinator_address, p.num_processes, p.process_id) == ("explicit", "10.0.0.2:1234", 3, 2)
    assert dist.multiprocess(p)
    assert dist.plan_from_flags(parsed("--distributed=none"), env=SLURM_2x4).kind == "single"
    assert dist.multiprocess(dist.plan_from_flags(parsed(), env=SLURM_2x4))
    assert dist.multiprocess(dist.plan_from_flags(parsed("--distributed=tpu"), env={}))
    one = dist.plan_from_flags(parsed("--coordinator_address=h:1", "--num_processes=1", "--process_id=0"), env={})
    assert one.kind == "explicit" and not dist.multiprocess(one)
    with pytest.raises(absl_flags.IllegalFlagValueError):
        parsed("--distributed=mpi")


def launch(script, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize("script", LAUNCHERS)
def test_every_launcher_takes_the_start_up_flags(script):
    out = launch(script, "--helpfull").stdout
    for name in ("--distributed", "--coordinator_address", "--num_processes", "--process_id"):
        assert name in out, (script, name)


def test_serve_refuses_a_multi_process_job_before_loading_anything():
    proc = launch("serve_teacher.py", f"--config={REPO}/configs/comd.py:smoke", "--coordinator_address=127.0.0.1:1",
                  "--num_processes=2", "--process_id=1")
    assert proc.returncode != 0
    assert "serves from one process on one host" in proc.stderr and "process 1 of 2" in proc.stderr


def test_eval_reads_the_start_up_flags_first():
    proc = launch("eval.py", f"--config={REPO}/configs/comd.py:smoke", "--checkpoint=/nonexistent",
                  "--num_processes=2", "--process_id=0")
    assert proc.returncode != 0 and "need --coordinator_address" in proc.stderr


def test_the_teacher_server_child_is_one_process():
    from comd_jax.serve.client import ServerProcess

    assert "--distributed=none" in ServerProcess("cfg.py", workdir="w", port=1).args
