"""Multi-host start-up: decide how to call `jax.distributed.initialize`, then call it once.

`plan(...)` is pure (flags + an environment mapping in, a `Plan` out) so the
choice is unit-tested without touching JAX; `initialize(plan)` acts on it and
must run before anything touches a JAX backend.

How the mode is chosen (`mode="auto"`):
1. `coordinator_address` given (flags) → explicit; `num_processes` and
   `process_id` come from flags, else from SLURM's variables.
2. Inside a SLURM step with more than one task → explicit from SLURM:
   coordinator = first host of the job's node list, process count =
   SLURM_NTASKS, id = SLURM_PROCID; with several tasks per node each task
   takes its own GPU (SLURM_LOCALID).
3. A multi-host TPU slice (the runtime lists several workers in
   TPU_WORKER_HOSTNAMES) → `initialize()` with no arguments: JAX reads the
   coordinator and ids from the TPU metadata.
4. Otherwise: one process, nothing to do.
GCE TPU VMs do not always export the worker list, so `launch/tpu/` passes
`--distributed=tpu` rather than relying on step 3.

The launchers share the flags: `define_flags()` declares --distributed,
--coordinator_address, --num_processes and --process_id; `plan_from_flags`
reads them into a `Plan` (pure); `initialize_from_flags` joins the job.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping, Optional

MODES = ("auto", "none", "tpu", "slurm", "flags")
DEFAULT_PORT = 12355  # coordinator port when only a host is known (SLURM)


@dataclasses.dataclass(frozen=True)
class Plan:
    kind: str  # "single" (no-op) | "tpu" (initialize()) | "explicit" (initialize(args))
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[tuple] = None
    source: str = ""  # what decided it, for the start-up log line

    def describe(self) -> str:
        if self.kind == "single":
            return "jax.distributed: single process"
        if self.kind == "tpu":
            return "jax.distributed: TPU slice, coordinator and ids from the TPU metadata"
        local = f", local devices {list(self.local_device_ids)}" if self.local_device_ids else ""
        return (f"jax.distributed: process {self.process_id} of {self.num_processes}, coordinator "
                f"{self.coordinator_address} (from {self.source}){local}")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003' (zero padding kept)."""
    match = re.match(r"\s*([^,\[]+)(?:\[([^\]]+)\])?", nodelist or "")
    if not match or not match.group(1).strip():
        raise ValueError(f"cannot read a host from SLURM node list {nodelist!r}")
    prefix, ranges = match.group(1).strip(), match.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0].strip()


def _int(env: Mapping[str, str], *names: str) -> Optional[int]:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            # SLURM_TASKS_PER_NODE looks like '4(x2),3': the first count is this layout's widest.
            return int(re.match(r"\d+", value).group(0))
    return None


def _slurm_tasks(env: Mapping[str, str]) -> Optional[int]:
    # Step variables first: inside `srun` they describe this step, not the whole allocation.
    return _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")


def _slurm_plan(env: Mapping[str, str], coordinator: str, port: int) -> Plan:
    tasks, proc = _slurm_tasks(env), _int(env, "SLURM_PROCID")
    if tasks is None or proc is None:
        raise ValueError("SLURM start-up needs SLURM_NTASKS and SLURM_PROCID: run the command under `srun`")
    if not coordinator:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise ValueError("SLURM start-up needs SLURM_JOB_NODELIST (or pass --coordinator_address)")
        coordinator = f"{first_host(nodes)}:{port}"
    per_node = _int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    local = None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if per_node and per_node > 1 and env.get("SLURM_LOCALID", "").strip() and len(visible) != 1:
        # One task per GPU, all GPUs visible: task i of a node drives GPU i. (With
        # --gpus-per-task=1 SLURM already shows each task only its own GPU.)
        local = (int(env["SLURM_LOCALID"]),)
    return Plan("explicit", coordinator, tasks, proc, local, source="SLURM")


def _flags_plan(env, coordinator: str, num_processes: int, process_id: int, port: int) -> Plan:
    if num_processes > 0 and process_id >= 0:
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
        if not coordinator:
            raise ValueError("--num_processes/--process_id need --coordinator_address=HOST:PORT")
        return Plan("explicit", coordinator, num_processes, process_id, source="flags")
    if "SLURM_PROCID" in env:  # address from flags, counts from SLURM
        slurm = _slurm_plan(env, coordinator, port)
        return dataclasses.replace(slurm, num_processes=num_processes or slurm.num_processes,
                                   process_id=process_id if process_id >= 0 else slurm.process_id,
                                   source="flags + SLURM")
    raise ValueError("--coordinator_address needs --num_processes and --process_id (or run under SLURM's srun)")


def _multihost_tpu(env: Mapping[str, str]) -> bool:
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return len(hosts) > 1


def plan(mode: str = "auto", coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
         env: Optional[Mapping[str, str]] = None, port: int = DEFAULT_PORT) -> Plan:
    """How this process should join the job (see the module docstring)."""
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}; choose one of {MODES}")
    if mode == "none":
        return Plan("single", source="--distributed=none")
    if mode == "tpu":
        return Plan("tpu", source="--distributed=tpu")
    if mode == "flags" or (mode == "auto" and (coordinator_address or num_processes > 1)):
        return _flags_plan(env, coordinator_address, num_processes, process_id, port)
    if mode == "slurm":
        return _slurm_plan(env, coordinator_address, port)
    if "SLURM_PROCID" in env and (_slurm_tasks(env) or 1) > 1:
        return _slurm_plan(env, coordinator_address, port)
    if _multihost_tpu(env):
        return Plan("tpu", source="TPU_WORKER_HOSTNAMES")
    return Plan("single", source="auto")


def initialize(p: Plan) -> Plan:
    """Join the job as `p` says; a no-op for one process or when already joined."""
    import jax

    if p.kind == "single" or jax.distributed.is_initialized():
        return p
    if p.kind == "tpu":
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=p.coordinator_address, num_processes=p.num_processes,
                                   process_id=p.process_id,
                                   local_device_ids=list(p.local_device_ids) if p.local_device_ids else None)
    return p


# -- the launchers' flags (launch/train.py, launch/eval.py, launch/serve_teacher.py) ----------


def define_flags(flag_values=None) -> None:
    """Declare the multi-host start-up flags (on absl's global FLAGS unless given)."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_enum("distributed", "auto", list(MODES),
                      "How processes join: auto (flags, else SLURM, else a multi-host TPU slice, else one "
                      "process), tpu (jax.distributed.initialize() from TPU metadata), slurm, flags, none.",
                      flag_values=fv)
    flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 (GPU clusters).", flag_values=fv)
    flags.DEFINE_integer("num_processes", 0, "Processes in the job (0: from SLURM).", flag_values=fv)
    flags.DEFINE_integer("process_id", -1, "This process's index (-1: from SLURM).", flag_values=fv)


def plan_from_flags(flag_values=None, env: Optional[Mapping[str, str]] = None) -> Plan:
    """`plan(...)` from the flags `define_flags` declared (pure: nothing is initialized)."""
    from absl import flags

    f = flags.FLAGS if flag_values is None else flag_values
    return plan(f.distributed, f.coordinator_address, f.num_processes, f.process_id, env=env)


def multiprocess(p: Plan) -> bool:
    """Whether `p` joins a job of more than one process."""
    return p.kind == "tpu" or (p.kind == "explicit" and (p.num_processes or 0) > 1)


def initialize_from_flags(flag_values=None) -> Plan:
    """Join the job the flags describe (before anything touches a JAX backend); logs the plan
    when it is not a single process."""
    p = initialize(plan_from_flags(flag_values))
    if p.kind != "single":
        from absl import logging

        logging.warning(p.describe())
    return p
