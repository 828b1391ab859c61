"""The job set-up every entry point shares, written once: the config's mesh over the job's
devices, the training data (the offline world is built here) with its tokenizer and image
processor, and a checkpoint's own tokenizer and processor where it brings them.

- `mesh_of(config)`: (mesh, recipe) from `config.mesh`;
- `Job.start(config, workdir)`: what a training run and every part of a CoMD run share;
- `tokenizer_and_processor(config, workdir, checkpoint)`: what a model loaded from `checkpoint`
  reads its prompts with (the server's teacher, an evaluated checkpoint)."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import jax

from comd_jax import config as config_lib
from comd_jax import sharding as shd
from comd_jax import stages as stages_lib


def mesh_of(config) -> tuple:
    """(mesh, recipe) from `config.mesh` over every device of the job (all hosts)."""
    mesh_cfg = config_lib.mesh_config(config.mesh)
    return shd.make_mesh(mesh_cfg.shape(jax.device_count())), mesh_cfg.recipe


def tokenizer_and_processor(config, workdir: str, checkpoint: Optional[str]) -> tuple:
    """(tokenizer, image processor) for a model from `checkpoint`: a transformers directory saved
    with its own (LLaVA-13B) brings them, and they win over the training data's, whose
    vocabulary may differ; otherwise the data's (the offline world: built on first use)."""
    from transformers import AutoTokenizer

    from comd_jax.data.images import ImageProcessorConfig

    own = checkpoint if checkpoint and "://" not in checkpoint and os.path.isdir(checkpoint) else None
    own_tokenizer = bool(own) and os.path.isfile(os.path.join(own, "tokenizer_config.json"))
    own_processor = bool(own) and os.path.isfile(os.path.join(own, "preprocessor_config.json"))
    data = None if own_tokenizer and own_processor else stages_lib.stage_data(config, workdir)
    tokenizer = AutoTokenizer.from_pretrained(own if own_tokenizer else data.tokenizer_dir)
    return tokenizer, ImageProcessorConfig.from_pretrained(own) if own_processor else data.image_processor


@dataclasses.dataclass(frozen=True)
class Job:
    config: object  # the run's validated config (comd_jax.experiment.Experiment)
    workdir: str
    mesh: object
    recipe: str
    data: stages_lib.StageData
    tokenizer: object

    @classmethod
    def start(cls, config, workdir: str) -> "Job":
        """The mesh over this job's devices and the data's tokenizer (the offline world is built here)."""
        from transformers import AutoTokenizer

        from comd_jax import experiment

        config = experiment.validated(config)
        mesh, recipe = mesh_of(config)
        data = stages_lib.stage_data(config, workdir)
        return cls(config, workdir, mesh, recipe, data, AutoTokenizer.from_pretrained(data.tokenizer_dir))

    def model(self, model_cfg, params):
        """Our model over `params`, laid out by the job's sharding rules."""
        from comd_jax.models import build

        graphdef, abstract = build.abstract_model(model_cfg, shd.rules_for(self.recipe))
        return build.merge(graphdef, abstract, params)

    def answerer(self, model, progress: Optional[str] = None):
        """Greedy answers with the distillation's length and batch (`distill.answer_max_tokens`, `gen_batch`)."""
        from comd_jax.eval.answerer import GreedyAnswerer

        d = self.config.distill
        return GreedyAnswerer(model, self.tokenizer, self.data.image_processor, max_new_tokens=d.answer_max_tokens,
                              batch_size=d.gen_batch, progress=progress)
