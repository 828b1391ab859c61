"""`comd_jax.run(config, workdir)`: what `launch/train.py` calls.

Runs the config's training stages in order, each resumable from its own
checkpoints; a finished stage is restored rather than retrained, and its
parameters start the next stage.
"""
from __future__ import annotations

import json

import jax
from etils import epath

from comd_jax import config as config_lib
from comd_jax import pretrained
from comd_jax.train.sequence import check_tokenizer, train_stages


def run(config, workdir: str) -> dict:
    """The training stages; then, when the config has distillation rounds, the CoMD loop.
    A relative local `workdir` is taken from the current directory (Orbax needs it absolute)."""
    from comd_jax import experiment, paths

    config = experiment.validated(config)
    workdir = paths.absolute(workdir)
    if "distill" in config and config.distill.rounds > 0:
        from comd_jax.distill.driver import run_comd

        return run_comd(config, workdir)
    out = run_stages(config, workdir)
    if config.world_teacher_out:  # configs/comd.py:teacher: the trained model, exported and scored
        from comd_jax.distill import world_teacher

        if jax.process_index() == 0:
            world_teacher.export_and_measure(config, workdir, config.world_teacher_out)
    return out


def run_stages(config, workdir: str) -> dict:
    from comd_jax import experiment
    from comd_jax.job import Job

    config = experiment.validated(config)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local folder or gs://bucket/run
    model_cfg = config_lib.model_config(config.model)
    job = Job.start(config, workdir)
    check_tokenizer(job.tokenizer, model_cfg)
    params = pretrained.student_params(config, model_cfg, job.mesh, job.recipe)
    params, summaries = train_stages(config, workdir, model_cfg, config.stages, job.data, job.tokenizer, job.mesh,
                                     job.recipe, params=params)
    if jax.process_index() == 0:
        epath.Path(workdir, "summary.json").write_text(json.dumps(summaries, indent=2))
    return {"stages": summaries, "params": params}
