"""One trainer for every stage: stage-1 pre-training, instruction tuning, and the
distillation rounds' tuning. The config decides which parts train (path labels),
the schedule, batch, accumulation and cadences; the loop only feeds the step.

Resume is exact: a checkpoint holds params, optimizer state and step (Orbax)
plus the data iterator's position and the RNG seed (JSON side-car); the step's
rng is `fold_in(seed key, step)`, so a killed run restarted from its latest
checkpoint replays the same batches with the same randomness.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Iterable, Optional

import jax
from flax.traverse_util import flatten_dict

from comd_jax.models.config import VLMConfig
from comd_jax.train.checkpoint import StageCheckpoints
from comd_jax.train.kd import KDConfig
from comd_jax.train.metrics import MetricsLogger, Throughput
from comd_jax.train.optim import FROZEN, TRAIN, OptimConfig, count
from comd_jax.train.state import Setup, TrainState, create_setup, init_state
from comd_jax.train.step import batch_shardings, build_eval_step, build_train_step, host_batch


@dataclasses.dataclass(frozen=True)
class StageConfig:
    name: str
    optim: OptimConfig
    global_batch: int
    grad_accum_steps: int = 1
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 8
    save_every: int = 50
    keep_checkpoints: int = 2
    async_checkpoints: bool = True
    head_capacity_steps: int = 0  # 0: every position; e.g. 8: last block + LM head only at targets (train/targets.py)
    kd: Optional[KDConfig] = None  # the teacher's top-k scores in the loss (train/kd.py); the data must carry them

    @property
    def total_steps(self) -> int:
        return self.optim.total_steps

    def __post_init__(self):
        if self.global_batch % self.grad_accum_steps:
            raise ValueError(f"{self.name}: global_batch {self.global_batch} is not divisible by "
                             f"grad_accum_steps {self.grad_accum_steps}")


def _parts(params: dict) -> dict:
    sizes: dict = {}
    for path, leaf in flatten_dict(params).items():
        sizes[path[0]] = sizes.get(path[0], 0) + math.prod(leaf.shape)
    return sizes


def describe(setup: Setup, stage: StageConfig, start_step: int) -> str:
    parts = _parts(setup.abstract_state.params)
    trainable = count(setup.abstract_state.params, setup.labels, TRAIN)
    frozen = count(setup.abstract_state.params, setup.labels, FROZEN)
    mesh = dict(setup.mesh.shape)
    lines = [
        f"[{stage.name}] model: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in parts.items()),
        f"[{stage.name}] trainable {trainable / 1e6:.2f}M, frozen {frozen / 1e6:.2f}M "
        f"(patterns {list(stage.optim.trainable)})",
        f"[{stage.name}] mesh {mesh} on {jax.device_count()} {jax.devices()[0].platform} device(s); "
        f"global batch {stage.global_batch} ({stage.grad_accum_steps} microbatch(es)); "
        f"steps {start_step}->{stage.total_steps}; lr {stage.optim.learning_rate} {stage.optim.schedule}",
    ]
    return "\n".join(lines)


def evaluate(eval_step, params, batches: Iterable[dict], setup: Setup, capacity_steps: int = 0) -> dict:
    """Held-out loss and token accuracy over the given batches."""
    shardings = batch_shardings(setup)
    totals = {"nll_sum": 0.0, "target_tokens": 0.0, "correct": 0.0}
    for batch in batches:
        device_batch = {k: jax.make_array_from_process_local_data(shardings[k], v)
                        for k, v in host_batch(batch, setup, capacity_steps).items()}
        out = jax.device_get(eval_step(params, device_batch))
        for k in totals:
            totals[k] += float(out[k])
    n = max(totals["target_tokens"], 1.0)
    return {"loss": totals["nll_sum"] / n, "accuracy": totals["correct"] / n, "tokens": totals["target_tokens"]}


def train_stage(stage: StageConfig, model_cfg: VLMConfig, mesh, recipe: str, seed: int, workdir: str,
                train_data, eval_data: Optional[Callable[[], Iterable[dict]]] = None,
                init_params: Optional[dict] = None, flops_per_step: float = 0.0) -> tuple:
    """Train one stage to `stage.total_steps`, resuming from its latest checkpoint.

    `train_data`: an iterator of host-local numpy batches with get_state()/set_state().
    `eval_data`: returns a fresh iterable of held-out batches.
    Returns (final TrainState, summary dict).
    """
    setup = create_setup(model_cfg, stage.optim, mesh, recipe)
    ckpts = StageCheckpoints(os.path.join(workdir, "checkpoints", stage.name), save_every=stage.save_every,
                             keep=stage.keep_checkpoints, async_save=stage.async_checkpoints)
    start = ckpts.latest_step()
    if start is not None:
        state, meta = ckpts.restore(start, setup.abstract_state, setup.state_shardings)
        if meta.get("seed") != seed:
            raise ValueError(f"{ckpts.directory}: checkpoint seed {meta.get('seed')} != config seed {seed}")
        train_data.set_state(meta["data"])
    else:
        start = 0
        state = init_state(setup, seed, params=init_params)
    logger = MetricsLogger(os.path.join(workdir, "tensorboard", stage.name), stage.total_steps, start, stage.name)
    logger.print(describe(setup, stage, start))
    eval_step = build_eval_step(setup)
    summary: dict = {"stage": stage.name, "resumed_from": start}
    if start == 0 and eval_data is not None:
        summary["eval_before"] = evaluate(eval_step, state.params, eval_data(), setup, stage.head_capacity_steps)
        logger.scalars(0, summary["eval_before"], "eval")
        logger.print(f"[{stage.name}] held-out before: loss {summary['eval_before']['loss']:.4f}")
    train_step = build_train_step(setup, stage.grad_accum_steps, kd=stage.kd)
    shardings = batch_shardings(setup, stage.kd)
    base_key = jax.random.key(seed)
    throughput = Throughput(flops_per_step, mesh.size)
    pending = []
    for step in range(start, stage.total_steps):
        batch = next(train_data)
        device_batch = {k: jax.make_array_from_process_local_data(shardings[k], v)
                        for k, v in host_batch(batch, setup, stage.head_capacity_steps, stage.kd).items()}
        state, metrics = train_step(state, device_batch, jax.random.fold_in(base_key, step))
        pending.append(metrics)
        done = step + 1
        ckpts.save(done, state, {"data": train_data.get_state(), "seed": seed, "stage": stage.name})
        if done % stage.log_every == 0 or done == stage.total_steps:
            host = jax.device_get(pending)
            for m in host:
                throughput.add(float(m["target_tokens"]))
            last = {k: float(v) for k, v in host[-1].items()}
            last.update(throughput.summary())
            logger.scalars(done, last)
            logger.progress(len(host), {"loss": last["loss"], "lr": last["learning_rate"],
                                        **({"kd": last["kd_loss"]} if "kd_loss" in last else {})})
            summary["last_train"] = last
            pending = []
            throughput.reset()
        if eval_data is not None and stage.eval_every and done % stage.eval_every == 0 \
                and done != stage.total_steps:
            result = evaluate(eval_step, state.params, eval_data(), setup, stage.head_capacity_steps)
            logger.scalars(done, result, "eval")
    ckpts.save(stage.total_steps, state, {"data": train_data.get_state(), "seed": seed, "stage": stage.name},
               force=ckpts.latest_step() != stage.total_steps)
    if eval_data is not None:
        summary["eval_after"] = evaluate(eval_step, state.params, eval_data(), setup, stage.head_capacity_steps)
        logger.scalars(stage.total_steps, summary["eval_after"], "eval")
    ckpts.close()
    logger.print(f"[{stage.name}] done at step {stage.total_steps}: "
                 + ", ".join(f"{k} {v['loss']:.4f}" for k, v in summary.items() if k.startswith("eval_")))
    logger.close()
    return state, summary
