"""Training stages in sequence, each resumable from its own checkpoints: what the
plain run (`comd_jax.run`), the CoMD driver's student warm-up and the offline
world's teacher all call. A finished stage is restored rather than retrained, and
its parameters start the next stage."""
from __future__ import annotations

import hashlib
from typing import Optional

import jax
import numpy as np
from flax.traverse_util import flatten_dict
from jax.experimental import multihost_utils

from comd_jax import config as config_lib
from comd_jax import stages as stages_lib
from comd_jax.train.trainer import StageConfig, train_stage


def stage_config(name: str, section, kd=None) -> StageConfig:
    """`kd`: a train.kd.KDConfig (the distillation rounds' `distill.kd`), or None."""
    return StageConfig(kd=kd,
        name=name, optim=config_lib.optim_config(section), global_batch=section.global_batch,
        grad_accum_steps=section.grad_accum_steps, log_every=section.log_every, eval_every=section.eval_every,
        eval_batches=section.eval_batches, save_every=section.save_every,
        keep_checkpoints=section.keep_checkpoints,
        head_capacity_steps=section.head_capacity_steps)


def _flops_per_step(model_cfg, section) -> float:
    from comd_jax.train.flops import train_step_flops

    return float(train_step_flops(model_cfg, section.global_batch, section.length_buckets[0],
                                  section.max_images)["total"])


def params_fingerprint(params: dict) -> str:
    """sha256 over every parameter's path, dtype, shape and bytes: equal iff bit-identical."""
    digest = hashlib.sha256()
    for path, leaf in sorted(flatten_dict(params).items(), key=lambda kv: kv[0]):
        host = np.asarray(multihost_utils.process_allgather(leaf, tiled=True)
                          if jax.process_count() > 1 else jax.device_get(leaf))
        digest.update(f"{'/'.join(map(str, path))}|{host.dtype}|{host.shape}|".encode())
        digest.update(np.ascontiguousarray(host).tobytes())
    return digest.hexdigest()


def check_tokenizer(tokenizer, model_cfg, section_name: str = "model"):
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if model_cfg.vision is not None and image_id != model_cfg.image_token_id:
        raise ValueError(f"config.{section_name}.image_token_id={model_cfg.image_token_id} but the tokenizer's "
                         f"<image> is {image_id}")
    if len(tokenizer) > model_cfg.text.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, config.{section_name}.text.vocab_size is "
                         f"{model_cfg.text.vocab_size}")


def train_stages(config, workdir: str, model_cfg, stage_names, data, tokenizer, mesh, recipe: str,
                 params=None, prefix: str = "", seed: Optional[int] = None) -> tuple:
    """Train `model_cfg` through the named stage sections in order; (params, summaries).

    Each stage resumes from its own checkpoints under `workdir/checkpoints/<prefix><stage>`.
    `seed` (default `config.seed`) drives init, data order and dropout of these stages."""
    seed = config.seed if seed is None else seed
    summaries = []
    for name in stage_names:
        section = config[name]
        stage = stage_config(prefix + name, section)
        train_data = stages_lib.train_pipeline(data, section, tokenizer, model_cfg.num_image_tokens,
                                               seed=seed)
        # No held-out set named (the paper preset's stages, until the user gives one): no held-out loss.
        eval_data = stages_lib.eval_batches(data, section, tokenizer, model_cfg.num_image_tokens) \
            if section.eval_data else None
        with train_data:
            state, summary = train_stage(stage, model_cfg, mesh, recipe, seed, workdir,
                                         train_data, eval_data, init_params=params,
                                         flops_per_step=_flops_per_step(model_cfg, section))
        params = state.params
        summary["params_sha256"] = params_fingerprint(params)
        summaries.append(summary)
    return params, summaries
