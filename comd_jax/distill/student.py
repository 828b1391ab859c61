"""The student CoMD distils into: trained and asked in this process, over the job's mesh."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import jax

from comd_jax import config as config_lib
from comd_jax import pretrained
from comd_jax.distill import kd_scores
from comd_jax.job import Job
from comd_jax.train.sequence import check_tokenizer, params_fingerprint, stage_config, train_stages


def kd_config(config):
    """The rounds' `train.kd.KDConfig` from `config.distill`, or None for `kd='none'`."""
    from comd_jax.train.kd import KDConfig

    d = config.distill
    if d.kd == "none":
        return None
    return KDConfig(mode=d.kd, alpha=d.kd_alpha, temperature=d.kd_temperature, top_k=d.kd_top_k,
                    ce_weight=d.kd_ce_weight)


class LocalStudent:
    """`config.model`, started from `config.init_from` (or random), warmed up by `config.stages`,
    then tuned once a round with `config.round_tune` on the pool (images under `image_root`).
    Every round's parameters live in that round's Orbax checkpoints, so a resumed run restores
    the one it needs."""

    def __init__(self, job: Job, image_root: str):
        self.job, self.image_root = job, image_root
        self.cfg = config_lib.model_config(job.config.model)
        check_tokenizer(job.tokenizer, self.cfg)
        self._params, self._round = None, None  # the parameters held, and the round they are from (-1: warm-up)
        self._processor = None  # the tuning pipeline's, for `sample_tokens`

    def warm_up(self) -> list:
        job = self.job
        init = pretrained.student_params(job.config, self.cfg, job.mesh, job.recipe)
        self._params, summaries = train_stages(job.config, job.workdir, self.cfg, job.config.stages, job.data,
                                               job.tokenizer, job.mesh, job.recipe, params=init)
        self._round = -1
        return summaries

    def params(self, round_index: int):
        """After round `round_index`'s tuning (-1: the warm-up), restored from its checkpoint on resume."""
        if self._round != round_index:
            if round_index < 0:
                raise RuntimeError("the student's warm-up parameters are gone; call warm_up() first")
            from comd_jax.checkpoints import restore_params

            self._params = restore_params(os.path.join(self.job.workdir, "checkpoints", f"round{round_index}_tune"),
                                          self.cfg, self.job.mesh, self.job.recipe)
            self._round = round_index
        return self._params

    def tune(self, round_index: int, train_json: str) -> None:
        from comd_jax.data import pipeline
        from comd_jax.data.llava_json import LlavaJsonSource
        from comd_jax.train.trainer import train_stage

        job, section = self.job, self.job.config.round_tune
        kd = kd_config(job.config)
        scores = kd_scores.load_for(train_json) if kd is not None else None
        if kd is not None and scores is None:
            raise FileNotFoundError(f"{kd_scores.kd_path(train_json)}: distill.kd={kd.mode!r} but the round has no "
                                    "teacher scores beside its training file")
        cfg = pipeline.PipelineConfig(batch_size=section.global_batch // jax.process_count(),
                                      length_buckets=tuple(section.length_buckets), max_images=section.max_images,
                                      seed=job.config.seed + round_index, strict=section.strict_data,
                                      kd_k=kd.top_k if kd is not None else 0)
        pipe = pipeline.make_pipeline(LlavaJsonSource(train_json, self.image_root), template=section.template,
                                      tokenizer=job.tokenizer, image_config=job.data.image_processor,
                                      num_image_tokens=self.cfg.num_image_tokens, config=cfg, teacher_scores=scores)
        init = self.params(round_index - 1)
        with pipe:
            result, _ = train_stage(stage_config(f"round{round_index}_tune", section, kd), self.cfg, job.mesh,
                                    job.recipe, job.config.seed, job.workdir, pipe, init_params=init)
        self._params, self._round = result.params, round_index

    def sample_tokens(self, entry):
        """(input_ids, loss_mask) of a pool entry's training sample, exactly as `tune` tokenizes it
        (what the teacher's scores are checked against)."""
        from comd_jax.data.processing import ExampleProcessor
        from comd_jax.data.records import RawExample

        section = self.job.config.round_tune
        if self._processor is None:
            self._processor = ExampleProcessor(template=section.template, tokenizer=self.job.tokenizer,
                                               image_config=self.job.data.image_processor,
                                               num_image_tokens=self.cfg.num_image_tokens,
                                               max_length=max(section.length_buckets), max_images=section.max_images)
        sample = entry.as_llava()
        tokens = self._processor.tokenize(RawExample(entry.id, f"pool entry {entry.id}", sample["conversations"],
                                                     (entry.image,) if entry.image else ()))
        return tokens.input_ids, tokens.loss_mask

    def model(self, round_index: int):
        return self.job.model(self.cfg, self.params(round_index))

    def answerer(self, round_index: int, progress: Optional[str] = None):
        return self.job.answerer(self.model(round_index), progress=progress)

    def answer(self, round_index: int, entries: Sequence) -> list:
        from comd_jax.eval.answerer import Request

        model = self.answerer(round_index, progress=f"round{round_index}_assess: student")
        return model.answer([Request(tuple(e.turns()), (os.path.join(self.image_root, e.image),) if e.image else ())
                             for e in entries])

    def fingerprint(self, round_index: int) -> str:
        return params_fingerprint(self.params(round_index))
