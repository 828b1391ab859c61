"""From an experiment config and checkpoint paths to ready Answerers (what launch/eval.py needs).

One process: the model sits on one device, as it always has. Several processes
(a multi-host job): the model is sharded over `config.mesh` across every host's
devices, every process runs the same generation (it is collective), and only
process 0 calls the judge and writes the results; the others score against a
stand-in judge whose numbers are dropped.
"""
from __future__ import annotations

import dataclasses
import os

from comd_jax import multihost
from comd_jax.eval.answerer import GreedyAnswerer
from comd_jax.checkpoints import load_model


def infer_workdir(checkpoint: str, fallback: str) -> str:
    """WORKDIR from WORKDIR/checkpoints/<stage>[/<step>]; else `fallback`."""
    parts = os.path.abspath(checkpoint).split(os.sep)
    if "checkpoints" in parts:
        return os.sep.join(parts[:len(parts) - 1 - parts[::-1].index("checkpoints")]) or os.sep
    return fallback


def world_spec(config):
    """The config's offline world (None unless config.data.kind == 'world')."""
    if config.data.kind != "world":
        return None
    from comd_jax import stages

    return stages.world_spec(config.data)


def make_answerer(config, model_section, checkpoint: str, workdir: str, *, max_new_tokens: int = 64,
                  batch_size: int = 8) -> GreedyAnswerer:
    from comd_jax import config as config_lib
    from comd_jax.job import mesh_of, tokenizer_and_processor

    model = load_model(config_lib.model_config(model_section), checkpoint, *mesh_of(config))
    tokenizer, image_config = tokenizer_and_processor(config, workdir, checkpoint)
    return GreedyAnswerer(model, tokenizer, image_config, template=config.tune.template,
                          max_new_tokens=max_new_tokens, batch_size=batch_size)


class _UnusedJudge:
    """What processes other than 0 judge with: their generation must run (it is collective),
    their scores are never written."""

    def complete(self, messages) -> str:
        return "5 5"


def evaluate_checkpoint(config, checkpoint: str, benchmark: str, output: str, settings=None, *,
                        teacher_checkpoint: str = "", workdir: str = "", max_new_tokens: int = 64,
                        batch_size: int = 8) -> dict:
    """Student (and optionally teacher) from checkpoints → run_benchmark → files in `output`."""
    from comd_jax.eval.suite import EvalSettings, run_benchmark

    from comd_jax import experiment

    config = experiment.validated(config)
    settings = settings or EvalSettings()
    if settings.world_spec is None:
        settings = dataclasses.replace(settings, world_spec=world_spec(config))
    workdir = workdir or infer_workdir(checkpoint, output)
    kw = dict(max_new_tokens=max_new_tokens, batch_size=batch_size)
    answerers = {"student": make_answerer(config, config.model, checkpoint, workdir, **kw)}
    if teacher_checkpoint:
        answerers["teacher"] = make_answerer(config, config.teacher, teacher_checkpoint, workdir, **kw)
    if multihost.is_writer():
        return run_benchmark(benchmark, answerers, settings, output)
    # Missing judge settings fail here as they do on process 0 (judge=None checks them).
    judge = _UnusedJudge() if settings.judge_url and settings.judge_model else None
    return run_benchmark(benchmark, answerers, settings, None, judge=judge)
